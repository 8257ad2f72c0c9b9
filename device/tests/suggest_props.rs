//! Every kiosk sees the same crowd: each device counts what it showed and what was booked in its own telemetry
//! document, the documents reach the other devices as Automerge changes in any order (shuffled, interleaved,
//! devices merged in any order), and every device's posterior is the same, and equal to the sum of what was
//! counted. So the site-wide suggestion evidence is the merge of the devices' tallies, whatever the mesh did.

use std::collections::BTreeMap;

use automerge::{Automerge, Change};
use popmesh_crdt::telemetry::{Tally, TallyKey, Telemetry};
use popmesh_crdt::{DeviceId, Doc, actor_id};
use popmesh_device::suggest::Posterior;
use proptest::prelude::*;

fn key(i: u8) -> TallyKey {
    let slots = ["jazz", "magic", "poetry"];
    let zones = ["foyer", "bar"];
    TallyKey::new(
        "fri",
        slots[usize::from(i % 3)],
        zones[usize::from(i / 3 % 2)],
        10 + i / 6 % 2,
    )
    .expect("valid")
}

/// One device's flush windows: per window, (key index, shown, booked) increments.
fn windows() -> impl Strategy<Value = Vec<Vec<(u8, u64, u64)>>> {
    prop::collection::vec(
        prop::collection::vec((0u8..12, 0u64..50, 0u64..10), 1..5),
        1..5,
    )
}

fn increments(window: &[(u8, u64, u64)]) -> BTreeMap<TallyKey, Tally> {
    let mut out: BTreeMap<TallyKey, Tally> = BTreeMap::new();
    for (k, shown, booked) in window {
        let t = out.entry(key(*k)).or_default();
        *t = t.plus(Tally {
            shown: *shown,
            booked: *booked,
        });
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_posterior_is_the_same_on_every_device_whatever_order_the_tallies_merged_in(
        devices in prop::collection::vec(windows(), 1..5),
        orders in prop::collection::vec(any::<u64>(), 2..5),
    ) {
        let mut expected = Posterior::default();
        let mut histories: Vec<Vec<Change>> = Vec::new();
        for (i, windows) in devices.iter().enumerate() {
            let device = DeviceId([i as u8 + 1; 32]);
            let mut doc = Doc::<Telemetry>::create_telemetry(actor_id(device, 0), device).expect("create");
            for window in windows {
                let inc = increments(window);
                doc.flush_tallies(&inc).expect("flush");
                expected.add(&inc);
            }
            histories.push(doc.automerge_mut().get_changes(&[]));
        }
        let mut seen = Vec::new();
        for order in orders {
            // This replica receives every device's changes shuffled and interleaved, then adds the documents up
            // in an order of its own.
            let mut rng = popmesh_device::suggest::SplitMix(order);
            let mut arrivals: Vec<(usize, Change)> = histories
                .iter()
                .enumerate()
                .flat_map(|(d, h)| h.iter().cloned().map(move |c| (d, c)))
                .collect();
            for i in (1..arrivals.len()).rev() {
                arrivals.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
            let mut replicas: Vec<Automerge> = histories.iter().map(|_| Automerge::new()).collect();
            for (d, change) in arrivals {
                replicas[d].apply_changes([change]).expect("apply");
            }
            let mut posterior = Posterior::default();
            let mut devices: Vec<usize> = (0..replicas.len()).collect();
            devices.rotate_left((order % replicas.len() as u64) as usize);
            for d in devices {
                let doc = Doc::<Telemetry, &Automerge>::attach(&replicas[d]).expect("attach");
                posterior.add(&doc.tallies());
            }
            seen.push(posterior);
        }
        for posterior in &seen {
            prop_assert_eq!(posterior.tallies(), expected.tallies());
        }
    }
}
