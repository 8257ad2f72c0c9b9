//! Which peers a device keeps a connection to: a bounded-degree site mesh instead of a full one.
//!
//! In a full mesh every change costs a sync exchange on every one of the N(N-1)/2 links; at 20 devices that is
//! 190 links, at 100 devices 4,950. Documents still reach everyone through relaying (every peer syncs every
//! document it holds with every peer it is connected to), so popmesh connects each device to the site's hubs (edge
//! boxes and the origin, which are built for it) and to its `ring_k` neighbours on each side of a ring ordered by
//! device id. The rule is symmetric and every device computes the same answer from the same directory.

use std::collections::BTreeSet;

use crate::identity::{DeviceId, Role};

/// Neighbours on each side of the ring, by default.
pub const RING_K_DEFAULT: usize = 2;

/// Is this role a hub that every device connects to?
pub fn is_hub(role: Role) -> bool {
    matches!(role, Role::Edge | Role::Origin)
}

/// The peers `me` should be connected to, out of `devices` (which should include `me`).
pub fn neighbours(me: DeviceId, devices: &[(DeviceId, Role)], ring_k: usize) -> BTreeSet<DeviceId> {
    let my_role = devices.iter().find(|(d, _)| *d == me).map(|(_, r)| *r);
    if my_role.is_some_and(is_hub) {
        return devices
            .iter()
            .map(|(d, _)| *d)
            .filter(|d| *d != me)
            .collect();
    }
    let mut out: BTreeSet<DeviceId> = devices
        .iter()
        .filter(|(d, r)| is_hub(*r) && *d != me)
        .map(|(d, _)| *d)
        .collect();
    let mut ring: Vec<DeviceId> = devices
        .iter()
        .filter(|(_, r)| !is_hub(*r))
        .map(|(d, _)| *d)
        .collect();
    ring.sort();
    ring.dedup();
    if let Some(pos) = ring.iter().position(|d| *d == me) {
        let n = ring.len();
        for step in 1..=ring_k.min(n.saturating_sub(1)) {
            out.insert(ring[(pos + step) % n]);
            out.insert(ring[(pos + n - step) % n]);
        }
    }
    out.remove(&me);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(n: u8) -> Vec<(DeviceId, Role)> {
        (0..n)
            .map(|i| {
                let role = match i {
                    0 => Role::Edge,
                    1 => Role::Origin,
                    _ => Role::Kiosk,
                };
                (DeviceId([i; 32]), role)
            })
            .collect()
    }

    #[test]
    fn the_mesh_is_symmetric_bounded_and_connected() {
        let devices = site(40);
        for (me, role) in &devices {
            let mine = neighbours(*me, &devices, 2);
            if !is_hub(*role) {
                assert!(mine.len() <= 2 + 4, "degree {} for {me:?}", mine.len());
            }
            for peer in &mine {
                assert!(
                    neighbours(*peer, &devices, 2).contains(me),
                    "{me:?} -> {peer:?} is one-way"
                );
            }
        }
        // Everyone reaches everyone through the hubs.
        let edge = devices[0].0;
        assert_eq!(neighbours(edge, &devices, 2).len(), 39);
    }

    #[test]
    fn a_small_site_is_a_full_mesh() {
        let devices = site(5);
        for (me, _) in &devices {
            assert_eq!(neighbours(*me, &devices, 2).len(), 4);
        }
    }
}
