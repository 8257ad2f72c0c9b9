//! Property: replicas that receive the same operations, in any order and through any merge pattern, converge to
//! identical state.
//!
//! Three devices edit the site directory concurrently (enrolling devices, revoking them, adding shows and slots)
//! while merging with each other at random. Then every change any of them made is delivered to fresh replicas in
//! several random orders; every replica must end with the same heads, the same stored record and the same set of
//! trusted devices as the replicas that saw the live history.

use automerge::Automerge;
use popmesh_crdt::directory::{Directory, ShowRecord, SlotRecord};
use popmesh_crdt::enrollment::{RevocationTarget, SiteAuthority};
use popmesh_crdt::{DeviceId, Doc, Role, SecretKey, UnixMillis, actor_id};
use proptest::prelude::*;

const WRITERS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Enroll { writer: usize, device: u8 },
    Revoke { writer: usize, device: u8 },
    AddShow { writer: usize, show: u8 },
    AddSlot { writer: usize, show: u8, slot: u8 },
    Merge { from: usize, to: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..WRITERS, 0..8u8).prop_map(|(writer, device)| Op::Enroll { writer, device }),
        1 => (0..WRITERS, 0..8u8).prop_map(|(writer, device)| Op::Revoke { writer, device }),
        1 => (0..WRITERS, 0..3u8).prop_map(|(writer, show)| Op::AddShow { writer, show }),
        2 => (0..WRITERS, 0..3u8, 0..4u8).prop_map(|(writer, show, slot)| Op::AddSlot { writer, show, slot }),
        3 => (0..WRITERS, 0..WRITERS).prop_map(|(from, to)| Op::Merge { from, to }),
    ]
}

fn device(n: u8) -> DeviceId {
    SecretKey::from_seed([100 + n; 32]).public()
}

/// A seeded Fisher-Yates shuffle, so a failing case replays exactly.
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = (seed >> 33) as usize % (i + 1);
        items.swap(i, j);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn directory_replicas_converge_whatever_the_delivery_order(
        ops in proptest::collection::vec(op(), 1..30),
        orders in proptest::collection::vec(any::<u64>(), 3),
    ) {
        let authority = SiteAuthority::new(SecretKey::from_seed([1; 32]));
        let writer_ids: Vec<DeviceId> = (0..WRITERS).map(|i| SecretKey::from_seed([50 + i as u8; 32]).public()).collect();
        let root = Doc::<Directory>::create_site(actor_id(writer_ids[0], 0), authority.public(), "Harbour Market")
            .expect("create");
        let mut writers: Vec<Doc<Directory>> = writer_ids[1..].iter().map(|w| root.fork_as(actor_id(*w, 0))).collect();
        writers.insert(0, root);

        for (n, op) in ops.iter().enumerate() {
            let at = UnixMillis(n as u64);
            match *op {
                Op::Enroll { writer, device: d } => {
                    let cert = authority.enroll(device(d), Role::Kiosk, &format!("kiosk-{d}"), UnixMillis(0), UnixMillis(1_000_000));
                    writers[writer].add_device(&cert).expect("authority cert verifies");
                }
                Op::Revoke { writer, device: d } => {
                    let revocation = authority.revoke(RevocationTarget::Device(device(d)), at, "lost");
                    writers[writer].add_revocation(&revocation).expect("authority revocation verifies");
                }
                Op::AddShow { writer, show } => {
                    let record = ShowRecord { name: format!("Show {show}"), currency: "EUR".into(), slots: Default::default() };
                    writers[writer].add_show(&format!("show-{show}"), &record).expect("room for shows");
                }
                Op::AddSlot { writer, show, slot } => {
                    let record = SlotRecord { label: format!("{slot}pm"), starts_at: u64::from(slot), capacity: 40 };
                    // Adding a slot to a show this replica has not seen yet is refused, and that is fine.
                    let _ = writers[writer].add_slot(&format!("show-{show}"), &format!("slot-{slot}"), &record);
                }
                Op::Merge { from, to } if from != to => {
                    let mut src = writers[from].clone();
                    writers[to].merge(&mut src).expect("merge");
                }
                Op::Merge { .. } => {}
            }
        }

        // Every change anybody made.
        let mut everything = writers[0].clone();
        for w in writers.iter_mut().skip(1) {
            everything.merge(w).expect("merge");
        }
        let all_changes: Vec<automerge::Change> =
            everything.automerge().get_changes(&[]);
        let expected_record = everything.record().expect("hydrate");
        let expected_trusted = everything.view().expect("view").trusted_devices(UnixMillis(500));
        let expected_heads = everything.heads();

        for seed in orders {
            let mut changes = all_changes.clone();
            shuffle(&mut changes, seed);
            let mut fresh = Automerge::new().with_actor(actor_id(DeviceId([9; 32]), 0));
            // Automerge holds back a change until its dependencies arrive, so any order is accepted.
            fresh.apply_changes(changes).expect("apply");
            let fresh = Doc::<Directory>::attach(fresh).expect("a directory");
            prop_assert_eq!(fresh.heads(), expected_heads.clone());
            prop_assert_eq!(fresh.record().expect("hydrate"), expected_record.clone());
            prop_assert_eq!(fresh.view().expect("view").trusted_devices(UnixMillis(500)), expected_trusted.clone());
        }
    }
}
