//! Two hosts sync a document over hand-carried wire messages.

use automerge::{Automerge, ReadDoc as _, transaction::Transactable as _};
use popmesh_sim::host::{Host, Side, Storage};
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use samod_core::UnixTimestamp;

fn shuttle(
    a: &mut Host,
    b: &mut Host,
    ab: (samod_core::ConnectionId, samod_core::ConnectionId),
    now: UnixTimestamp,
) {
    loop {
        let from_a = a.take_outbox();
        let from_b = b.take_outbox();
        if from_a.is_empty() && from_b.is_empty() {
            return;
        }
        for (conn, msg) in from_a {
            assert_eq!(conn, ab.0);
            b.receive(ab.1, msg, now);
        }
        for (conn, msg) in from_b {
            assert_eq!(conn, ab.1);
            a.receive(ab.0, msg, now);
        }
    }
}

#[test]
fn a_document_created_on_one_host_is_found_and_edited_on_another() {
    let now = UnixTimestamp::from_millis(1_000);
    let mut a = Host::boot("a", Storage::default(), StdRng::seed_from_u64(1), now);
    let mut b = Host::boot("b", Storage::default(), StdRng::seed_from_u64(2), now);
    let mut content = Automerge::new();
    let mut tx = content.transaction();
    tx.put(automerge::ROOT, "hello", "world").expect("put");
    tx.commit();
    let id = a.create_document(content, now).expect("create");

    let ca = a.open_connection(Side::Dialer, now);
    let cb = b.open_connection(Side::Listener, now);
    shuttle(&mut a, &mut b, (ca, cb), now);
    b.find_document(&id, now);
    shuttle(&mut a, &mut b, (ca, cb), now);
    assert!(b.is_open(&id), "b found the document");
    let hello = b.read(&id, |doc| {
        doc.get(automerge::ROOT, "hello")
            .expect("read")
            .map(|(v, _)| v.to_string())
    });
    assert_eq!(hello.expect("open"), Some("\"world\"".to_owned()));

    b.change(&id, now, |doc| {
        let mut tx = doc.transaction();
        tx.put(automerge::ROOT, "reply", "hi").expect("put");
        tx.commit();
    })
    .expect("change");
    shuttle(&mut a, &mut b, (ca, cb), now);
    let reply = a
        .read(&id, |doc| {
            doc.get(automerge::ROOT, "reply").expect("read").is_some()
        })
        .expect("open");
    assert!(reply, "a sees b's change");

    // After the flush tick, storage holds the document: a rebooted host finds it without any peer.
    a.storage().flush();
    let storage = a.crash();
    let mut a2 = Host::boot("a", storage, StdRng::seed_from_u64(3), now);
    a2.find_document(&id, now);
    assert!(a2.is_open(&id), "reloaded from storage");
    let reply = a2
        .read(&id, |doc| {
            doc.get(automerge::ROOT, "reply").expect("read").is_some()
        })
        .expect("open");
    assert!(reply, "b's change was stored on a");
}

#[test]
fn a_crash_before_the_flush_tick_loses_what_was_only_written_lazily_but_never_an_acknowledged_write()
 {
    let now = UnixTimestamp::from_millis(1_000);
    let mut a = Host::boot("a", Storage::default(), StdRng::seed_from_u64(1), now);
    let mut durability = popmesh_device::Durability::default();
    // Every document popmesh creates has content (its kind and schema) from its first change.
    let mut content = Automerge::new();
    let mut tx = content.transaction();
    tx.put(automerge::ROOT, "kind", "test").expect("put");
    tx.commit();
    let (id, stored) = a.create_acked(content, now).expect("create");
    stored.expect("the disk works");
    let put = |key: &'static str| {
        move |doc: &mut Automerge| {
            let mut tx = doc.transaction();
            tx.put(automerge::ROOT, key, true).expect("put");
            tx.commit();
        }
    };
    // One change acknowledged (fsync'd), one only made (samod's lazy write, not flushed yet).
    let ((), acked) = a
        .change_acked(&mut durability, &id, now, put("acked"))
        .expect("open");
    acked.expect("the disk works");
    a.change(&id, now, put("lazy")).expect("open");
    let mut a2 = Host::boot("a", a.crash(), StdRng::seed_from_u64(3), now);
    a2.find_document(&id, now);
    let has = |h: &Host, key: &str| {
        h.read(&id, |doc| {
            doc.get(automerge::ROOT, key).expect("read").is_some()
        })
        .expect("open")
    };
    assert!(
        has(&a2, "acked"),
        "the acknowledged change survived the crash"
    );
    assert!(!has(&a2, "lazy"), "the lazy one did not");

    // A full disk: the acknowledged write is refused, and the store refuses everything until it recovers.
    a2.storage()
        .set_disk(Some(popmesh_sim::host::DiskFault::Full));
    let ((), refused) = a2
        .change_acked(&mut durability, &id, now, put("refused"))
        .expect("open");
    assert!(refused.is_err());
    assert!(
        durability.is_undurable(&id),
        "the next write saves the document whole"
    );
    a2.storage().set_disk(None);
    assert!(
        a2.storage().recover(),
        "the store reopens once the disk works"
    );
    let ((), healed) = a2
        .change_acked(&mut durability, &id, now, |_| ())
        .expect("open");
    healed.expect("the disk works again");
    let on_disk = a2.storage().on_disk(&id).expect("on disk");
    assert!(
        on_disk
            .get(automerge::ROOT, "refused")
            .expect("read")
            .is_some(),
        "saved whole"
    );
}
