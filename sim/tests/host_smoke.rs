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

    // Storage holds the document: a rebooted host finds it without any peer.
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
