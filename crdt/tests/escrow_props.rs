//! Property: however devices are partitioned and however their replicas merge, no seat is ever oversold, and
//! replicas that end up with the same operations converge to identical state.
//!
//! Each case builds a slot shared by a few devices, then plays a random history: devices sell and move quota on
//! their own replica, and pairs of replicas exchange changes by merge or by the Automerge sync protocol, in random
//! order and direction. After every step every replica is checked against the escrow invariant; at the end all
//! replicas are synced and must agree on heads and on the materialized slot.

use std::collections::BTreeMap;

use popmesh_crdt::escrow::{EscrowError, Slot};
use popmesh_crdt::{DeviceId, Doc, SecretKey, UnixMillis, actor_id};
use proptest::prelude::*;

const DEVICES: usize = 4;

#[derive(Debug, Clone)]
enum Step {
    Sell {
        device: usize,
        seats: u64,
    },
    Transfer {
        from: usize,
        to: usize,
        seats: u64,
    },
    /// Replica `to` takes everything `from` has (one direction of a partition healing).
    Merge {
        from: usize,
        to: usize,
    },
    /// Both replicas run the sync protocol to quiescence.
    Sync {
        a: usize,
        b: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..DEVICES, 1..4u64).prop_map(|(device, seats)| Step::Sell { device, seats }),
        2 => (0..DEVICES, 0..DEVICES, 1..5u64).prop_map(|(from, to, seats)| Step::Transfer { from, to, seats }),
        2 => (0..DEVICES, 0..DEVICES).prop_map(|(from, to)| Step::Merge { from, to }),
        1 => (0..DEVICES, 0..DEVICES).prop_map(|(a, b)| Step::Sync { a, b }),
    ]
}

fn devices() -> Vec<DeviceId> {
    (0..DEVICES)
        .map(|i| SecretKey::from_seed([i as u8 + 1; 32]).public())
        .collect()
}

/// A slot of `capacity` seats with `grants` handed out, replicated to every device.
fn replicas(capacity: u64, grants: &[u64]) -> Vec<Doc<Slot>> {
    let ids = devices();
    let grants: BTreeMap<DeviceId, u64> = ids.iter().copied().zip(grants.iter().copied()).collect();
    let origin =
        Doc::<Slot>::create_slot(actor_id(ids[0], 0), "show-1", "slot-1", capacity, &grants)
            .expect("grants fit the capacity");
    let mut all: Vec<Doc<Slot>> = ids[1..]
        .iter()
        .map(|d| origin.fork_as(actor_id(*d, 0)))
        .collect();
    all.insert(0, origin);
    all
}

fn pair(all: &mut [Doc<Slot>], a: usize, b: usize) -> (&mut Doc<Slot>, &mut Doc<Slot>) {
    assert_ne!(a, b);
    if a < b {
        let (lo, hi) = all.split_at_mut(b);
        (&mut lo[a], &mut hi[0])
    } else {
        let (lo, hi) = all.split_at_mut(a);
        (&mut hi[0], &mut lo[b])
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_seat_is_oversold_whatever_the_partitions_and_merge_order(
        capacity in 4..20u64,
        shares in proptest::collection::vec(0..6u64, DEVICES),
        history in proptest::collection::vec(step(), 1..40),
    ) {
        // Grants never exceed the capacity: scale them down if the draw did.
        let mut grants = shares.clone();
        while grants.iter().sum::<u64>() > capacity {
            let i = grants.iter().position(|g| *g > 0).expect("some grant is positive");
            grants[i] -= 1;
        }
        let ids = devices();
        let mut all = replicas(capacity, &grants);
        let mut acked_seats = 0u64;
        for (n, step) in history.iter().enumerate() {
            let at = UnixMillis(n as u64);
            match *step {
                Step::Sell { device, seats } => {
                    match all[device].sell(ids[device], &format!("b{n}"), seats, at) {
                        Ok(_) => acked_seats += seats,
                        Err(EscrowError::QuotaSpent { .. }) => {}
                        Err(other) => prop_assert!(false, "unexpected error: {other}"),
                    }
                }
                Step::Transfer { from, to, seats } if from != to => {
                    match all[from].transfer(ids[from], ids[to], &format!("t{n}"), seats, at) {
                        Ok(()) | Err(EscrowError::QuotaSpent { .. }) => {}
                        Err(other) => prop_assert!(false, "unexpected error: {other}"),
                    }
                }
                Step::Merge { from, to } if from != to => {
                    let (dst, src) = pair(&mut all, to, from);
                    dst.merge(src).expect("merge");
                }
                Step::Sync { a, b } if a != b => {
                    let (x, y) = pair(&mut all, a, b);
                    x.sync_with(y).expect("sync");
                }
                _ => {}
            }
            for (i, replica) in all.iter().enumerate() {
                let view = replica.view().expect("hydrate");
                prop_assert!(view.check_invariant().is_ok(), "replica {i} after step {n} ({step:?}): {:?}", view.check_invariant());
            }
        }
        // Heal everything: a ring of syncs twice round reaches every replica.
        for _ in 0..2 {
            for i in 0..DEVICES {
                let (x, y) = pair(&mut all, i, (i + 1) % DEVICES);
                x.sync_with(y).expect("sync");
            }
        }
        let first_heads = all[0].heads();
        let first_view = all[0].view().expect("hydrate");
        for replica in all.iter_mut() {
            prop_assert_eq!(replica.heads(), first_heads.clone());
            prop_assert_eq!(replica.view().expect("hydrate"), first_view.clone());
        }
        // Nothing acknowledged was lost, and the merged total stays within capacity.
        prop_assert_eq!(first_view.total_sold(), acked_seats);
        prop_assert!(acked_seats <= capacity);
        prop_assert!(first_view.check_invariant().is_ok());
    }
}

#[test]
fn kiosk_a_runs_low_kiosk_b_sends_quota_and_a_sells_it_offline() {
    let ids = devices();
    let mut all = replicas(10, &[2, 8]);
    assert!(matches!(
        all[0].sell(ids[0], "walk-in-1", 3, UnixMillis(1)),
        Err(EscrowError::QuotaSpent {
            available: 2,
            requested: 3
        })
    ));
    all[1]
        .transfer(ids[1], ids[0], "top-up-1", 4, UnixMillis(2))
        .expect("B has 8");
    let (a, b) = pair(&mut all, 0, 1);
    a.merge(b).expect("merge");
    a.sell(ids[0], "walk-in-1", 3, UnixMillis(3))
        .expect("A now has 6");
    let view = all[0].view().expect("view");
    assert_eq!(view.available(&ids[0].to_hex()), 3);
    assert_eq!(view.available(&ids[1].to_hex()), 4);
    assert_eq!(view.remaining(), 7);
}

#[test]
fn a_device_that_sells_beyond_its_quota_is_caught_by_the_checker() {
    // A broken device bypasses `sell` and writes a sale straight into the document.
    let ids = devices();
    let mut all = replicas(4, &[2, 2]);
    use automerge::transaction::Transactable as _;
    let mut doc = all[0].automerge_mut().transaction();
    let devices = match automerge::ReadDoc::get(&doc, automerge::ROOT, "devices").expect("read") {
        Some((_, id)) => id,
        None => panic!("slot has a devices map"),
    };
    let mine = doc
        .put_object(&devices, ids[0].to_hex(), automerge::ObjType::Map)
        .expect("put");
    let sales = doc
        .put_object(&mine, "sales", automerge::ObjType::Map)
        .expect("put");
    doc.put_object(&mine, "transfers", automerge::ObjType::Map)
        .expect("put");
    let sale = doc
        .put_object(&sales, "forged", automerge::ObjType::Map)
        .expect("put");
    doc.put(&sale, "seats", 3_u64).expect("put");
    doc.put(&sale, "at", 0_u64).expect("put");
    doc.commit();
    assert!(all[0].view().expect("view").check_invariant().is_err());
}

#[test]
fn a_slot_held_by_a_sync_engine_sells_through_a_borrowed_handle() {
    // samod's document actors own the `Automerge` and lend it out; the same escrow code runs on the loan.
    let ids = devices();
    let mut all = replicas(10, &[5, 5]);
    let mut owned: automerge::Automerge = all.remove(0).into_automerge();
    {
        // A document loaded by the engine writes as a random actor until we name the device.
        owned.set_actor(automerge::ActorId::random());
        assert!(matches!(
            Doc::<Slot, &mut automerge::Automerge>::attach(&mut owned)
                .expect("a slot document")
                .sell(ids[0], "walk-in-0", 1, UnixMillis(1)),
            Err(EscrowError::Doc(popmesh_crdt::DocError::NotADeviceActor(_)))
        ));
        let mut lent =
            Doc::<Slot, &mut automerge::Automerge>::attach_as(&mut owned, actor_id(ids[0], 3))
                .expect("a slot document");
        lent.sell(ids[0], "walk-in-1", 2, UnixMillis(1))
            .expect("quota");
        assert!(matches!(
            lent.sell(ids[0], "walk-in-2", 4, UnixMillis(2)),
            Err(EscrowError::QuotaSpent { available: 3, .. })
        ));
    }
    let back = Doc::<Slot>::attach(owned).expect("still a slot");
    assert_eq!(back.view().expect("view").sold(&ids[0].to_hex()), 2);
    assert!(
        Doc::<popmesh_crdt::ledger::Ledger>::attach(back.into_automerge()).is_err(),
        "not a ledger"
    );
}
