//! Stories of the site's shape: bounds at every size, a festival that loses a device, a kiosk joining, what a
//! kiosk holds.

use std::collections::{BTreeSet, VecDeque};

use super::*;

/// A site of `n` devices: `edges` edge boxes, one origin, the rest kiosks and POS terminals.
fn site(n: usize, edges: usize) -> Vec<(DeviceId, Role)> {
    (0..n)
        .map(|i| {
            let role = if i < edges {
                Role::Edge
            } else if i == edges {
                Role::Origin
            } else if i % 3 == 0 {
                Role::Pos
            } else {
                Role::Kiosk
            };
            (key(i as u32), role)
        })
        .collect()
}

fn key(i: u32) -> DeviceId {
    let mut seed = [7u8; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    popmesh_crdt::DeviceKey::from_seed(seed).public()
}

/// Hops from `from` to every device, over the links (`skip` is down).
fn hops(t: &Topology, from: DeviceId, skip: &BTreeSet<DeviceId>) -> Vec<usize> {
    let mut seen = BTreeMap::from([(from, 0usize)]);
    let mut queue = VecDeque::from([from]);
    while let Some(d) = queue.pop_front() {
        let h = seen[&d];
        for p in t.links(&d) {
            if !skip.contains(&p) && !seen.contains_key(&p) {
                seen.insert(p, h + 1);
                queue.push_back(p);
            }
        }
    }
    seen.into_values().collect()
}

#[test]
fn at_every_size_each_device_stays_within_its_bound_and_links_are_mutual() {
    for (n, edges) in [
        (6, 1),
        (10, 1),
        (30, 1),
        (30, 4),
        (100, 2),
        (300, 1),
        (300, 12),
    ] {
        let devices = site(n, edges);
        let t = Topology::of(&devices);
        assert!(
            t.within_bounds(),
            "{n} devices, {edges} edge boxes: a bound is broken"
        );
        for (d, _) in &devices {
            for p in t.links(d) {
                assert!(t.links(&p).contains(d), "{n}: a one-way link");
            }
            if t.part(d) == Some(Part::Member) {
                let relays = t
                    .links(d)
                    .iter()
                    .filter(|p| t.part(p) == Some(Part::Relay))
                    .count();
                assert_eq!(
                    relays, RELAYS_PER_MEMBER,
                    "{n}: a member with {relays} relays"
                );
            }
        }
        let relays = t.relays().count();
        assert!(relays >= edges.max(RELAYS_MIN), "{n}: {relays} relays");
        // The site is connected, within a few hops.
        let far = hops(&t, devices[0].0, &BTreeSet::new());
        assert_eq!(far.len(), n, "{n}: not every device is reached");
        let diameter = far.into_iter().max().unwrap_or_default();
        assert!(diameter <= 8, "{n}: {diameter} hops to the farthest device");
    }
}

#[test]
fn a_festival_of_300_devices_with_one_edge_box_elects_relays_and_no_device_carries_the_site() {
    let devices = site(300, 1);
    let t = Topology::of(&devices);
    let relays: Vec<DeviceId> = t.relays().copied().collect();
    // 298 members and the origin need 2 * 298 + 3 attachments: one relay per 16.
    assert_eq!(
        relays.len(),
        (298 * 2 + 3usize).div_ceil(RELAY_MEMBERS_TARGET)
    );
    let max = devices
        .iter()
        .map(|(d, _)| t.links(d).len())
        .max()
        .unwrap_or_default();
    assert!(max <= RELAY_DEGREE_MAX, "a device holds {max} links");
    // Any one device down (even the edge box): every other device is still reached.
    for (down, _) in devices.iter().step_by(7) {
        let skip = BTreeSet::from([*down]);
        let from = devices
            .iter()
            .find(|(d, _)| d != down)
            .expect("the site has one")
            .0;
        assert_eq!(
            hops(&t, from, &skip).len(),
            299,
            "losing one device cuts the site"
        );
    }
}

#[test]
fn one_kiosk_joining_moves_few_links() {
    let mut devices = site(100, 2);
    let before = Topology::of(&devices);
    devices.push((key(9_999), Role::Kiosk));
    let after = Topology::of(&devices);
    let changed = devices[..100]
        .iter()
        .filter(|(d, _)| before.links(d) != after.links(d))
        .count();
    assert!(
        changed <= 12,
        "{changed} of 100 devices re-linked for one kiosk"
    );
}

#[test]
fn a_kiosk_holds_the_shared_documents_and_its_own_not_the_others_receipts() {
    let devices = site(30, 1);
    let t = Topology::of(&devices);
    let member = devices
        .iter()
        .map(|(d, _)| *d)
        .find(|d| t.part(d) == Some(Part::Member))
        .expect("the site has one");
    let other = devices
        .iter()
        .map(|(d, _)| *d)
        .find(|d| *d != member && t.part(d) == Some(Part::Member) && !t.links(&member).contains(d))
        .expect("the site has one");
    let relay = *t.relays().next().expect("the site has one");
    let origin = devices
        .iter()
        .find(|(_, r)| *r == Role::Origin)
        .expect("the site has one")
        .0;
    let ledger = |device| DocName::Ledger {
        show: "s".into(),
        device,
        page: 0,
    };
    let telemetry = |device| DocName::Telemetry { device };
    let slot = DocName::Slot {
        show: "s".into(),
        slot: "a".into(),
    };
    assert!(t.holds(&member, &slot) && t.holds(&member, &DocName::Directory));
    assert!(t.holds(&member, &ledger(member)) && t.holds(&member, &telemetry(member)));
    assert!(
        !t.holds(&member, &ledger(other)),
        "another kiosk's receipts"
    );
    assert!(
        !t.holds(&member, &telemetry(other)),
        "another kiosk's counters"
    );
    assert!(t.holds(&member, &telemetry(relay)), "a relay's addresses");
    for peer in t.links(&member) {
        assert!(
            t.holds(&member, &telemetry(peer)),
            "a linked peer's addresses"
        );
    }
    for holder in [relay, origin] {
        assert!(t.holds(&holder, &ledger(other)) && t.holds(&holder, &telemetry(other)));
    }
}

#[test]
fn a_small_site_is_a_full_mesh_where_everyone_holds_everything() {
    let devices = site(SMALL_SITE, 1);
    let t = Topology::of(&devices);
    for (d, _) in &devices {
        assert_eq!(t.links(d).len(), SMALL_SITE - 1);
        let other = devices
            .iter()
            .find(|(o, _)| o != d)
            .expect("the site has one")
            .0;
        assert!(t.holds(
            d,
            &DocName::Ledger {
                show: "s".into(),
                device: other,
                page: 0
            }
        ));
    }
}
