//! The site's shape: which devices relay, which links each device holds, and which documents each device holds.
//!
//! A site of hundreds of devices cannot be a star (one hub relaying every change to every device) or a full mesh
//! (every change crossing N(N-1)/2 links). popmesh keeps every device's work bounded, whatever N:
//!
//! - **Relays.** The edge boxes are relays; when the site has fewer than it needs (one relay per
//!   [`RELAY_MEMBERS_TARGET`] members' worth of attachments, at least [`RELAYS_MIN`]), the rule elects more among
//!   kiosks and POS terminals, by a hash of their ids (so an election is the same on every device and moves little
//!   when one device joins). Relays hold every document and link among themselves: a full mesh up to
//!   [`RELAY_PEERS_MAX`] peers, past that a ring with power-of-two chords (i±1, i±2, i±4, ...), so the relay
//!   graph's diameter grows with log(relays) and no relay holds more than [`RELAY_PEERS_MAX`] relay links.
//! - **Members.** Every other kiosk or POS links to [`RELAYS_PER_MEMBER`] relays, chosen by rendezvous hashing
//!   with a capacity of [`RELAY_MEMBERS_MAX`] per relay (so the choice is spread and bounded), and to its
//!   [`MEMBER_RING_K`] ring neighbour on each side among members, so losing both its relays does not cut it off
//!   from the devices around it. The origin is a member that joins late over the WAN: it links to
//!   [`RELAYS_FOR_ORIGIN`] relays and no ring, and holds every document.
//! - **Documents.** A member holds the shared documents (directory, slots, access lists, manifests), its own
//!   ledger pages and telemetry, and the telemetry of the relays and of the devices it links to (where their mesh
//!   addresses are published). Another kiosk's receipts and counters are not its business: they travel through the
//!   relays to the origin. Both shells ask [`Topology::holds`] what to open and what to announce to each peer.
//! - **Small sites** (at most [`SMALL_SITE`] devices) are a full mesh in which everyone holds everything.
//!
//! What was taken from elsewhere: HyParView's bounded active view (a named degree limit per device, the rest of the
//! site known but not linked), gossipsub's mesh degree bounds (a target and a hard maximum per relay), and
//! Corrosion's split between a cheap membership view (here the signed directory every device already holds) and
//! data that flows along the links. What was not: PlumTree's lazy push and HyParView's shuffles exist to survive
//! unknown, churning membership; popmesh's membership is the directory, which every device holds signed, so every
//! device computes the same graph without a message, and Automerge sync already sends only what a peer lacks.

use std::collections::{BTreeMap, BTreeSet};

use popmesh_crdt::directory::DirectoryView;
use popmesh_crdt::docs::DocName;
use popmesh_crdt::{DeviceId, Role, UnixMillis};

use crate::authorship::DocKind;

/// A site of at most this many devices is a full mesh in which every device holds every document.
pub const SMALL_SITE: usize = 5;
/// The fewest relays a site larger than [`SMALL_SITE`] has.
pub const RELAYS_MIN: usize = 2;
/// Relays each kiosk or POS that is not a relay links to.
pub const RELAYS_PER_MEMBER: usize = 2;
/// Relays the origin links to.
pub const RELAYS_FOR_ORIGIN: usize = 3;
/// Ring neighbours on each side a member links to, among members.
pub const MEMBER_RING_K: usize = 1;
/// Member attachments a relay is sized for: the site has one relay per this many.
pub const RELAY_MEMBERS_TARGET: usize = 16;
/// The most members (and the origin) attached to one relay.
pub const RELAY_MEMBERS_MAX: usize = 24;
/// The most relay links one relay holds.
pub const RELAY_PEERS_MAX: usize = 12;
/// The most links a member (a kiosk or POS that is not a relay) holds.
pub const MEMBER_DEGREE_MAX: usize = RELAYS_PER_MEMBER + 2 * MEMBER_RING_K;
/// The most links a relay holds.
pub const RELAY_DEGREE_MAX: usize = RELAY_MEMBERS_MAX + RELAY_PEERS_MAX;

/// What part a device plays in the site's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// Holds every document and carries changes between members (an edge box, or an elected kiosk or POS).
    Relay,
    /// The origin: holds every document, links to a few relays.
    Origin,
    /// A kiosk or POS: holds the shared documents and its own.
    Member,
}

impl Part {
    pub const fn as_str(self) -> &'static str {
        match self {
            Part::Relay => "relay",
            Part::Origin => "origin",
            Part::Member => "member",
        }
    }
}

/// The whole site's shape, computed from the devices the directory trusts. Every device computes the same one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    parts: BTreeMap<DeviceId, Part>,
    links: BTreeMap<DeviceId, BTreeSet<DeviceId>>,
    small: bool,
}

/// A cheap, well-spread 64-bit score (splitmix64's finalizer): device ids are public keys, already uniform.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn word(d: &DeviceId) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.0[..8]);
    u64::from_le_bytes(b)
}

/// The rendezvous score of `relay` for `member`: each member ranks the relays differently, and a relay joining
/// or leaving moves only the members that ranked it.
fn affinity(member: &DeviceId, relay: &DeviceId) -> u64 {
    mix(word(member) ^ mix(word(relay) ^ 0x5bd1_e995))
}

impl Topology {
    /// The shape of a site of `devices` (each once; order does not matter).
    pub fn of(devices: &[(DeviceId, Role)]) -> Self {
        let roles: BTreeMap<DeviceId, Role> = devices.iter().copied().collect();
        let mut links: BTreeMap<DeviceId, BTreeSet<DeviceId>> =
            roles.keys().map(|d| (*d, BTreeSet::new())).collect();
        if roles.len() <= SMALL_SITE {
            let all: Vec<DeviceId> = roles.keys().copied().collect();
            for (d, peers) in &mut links {
                peers.extend(all.iter().filter(|p| *p != d));
            }
            let parts = roles
                .iter()
                .map(|(d, r)| {
                    (
                        *d,
                        if *r == Role::Origin {
                            Part::Origin
                        } else {
                            Part::Relay
                        },
                    )
                })
                .collect();
            return Self {
                parts,
                links,
                small: true,
            };
        }
        let origins: Vec<DeviceId> = roles
            .iter()
            .filter(|(_, r)| **r == Role::Origin)
            .map(|(d, _)| *d)
            .collect();
        let edges: Vec<DeviceId> = roles
            .iter()
            .filter(|(_, r)| **r == Role::Edge)
            .map(|(d, _)| *d)
            .collect();
        let mut candidates: Vec<DeviceId> = roles
            .iter()
            .filter(|(_, r)| matches!(r, Role::Kiosk | Role::Pos))
            .map(|(d, _)| *d)
            .collect();
        // Attachments the relays must carry: each member's, and each origin's.
        let attachments = candidates.len() * RELAYS_PER_MEMBER + origins.len() * RELAYS_FOR_ORIGIN;
        let needed = attachments.div_ceil(RELAY_MEMBERS_TARGET).max(RELAYS_MIN);
        let mut relays = edges;
        if relays.len() < needed {
            candidates.sort_by_key(|d| (mix(word(d)), *d));
            let elected = needed - relays.len();
            relays.extend(candidates.drain(..elected.min(candidates.len())));
        }
        relays.sort();
        let members: BTreeSet<DeviceId> = candidates.into_iter().collect();
        let mut parts = BTreeMap::new();
        for r in &relays {
            parts.insert(*r, Part::Relay);
        }
        for m in &members {
            parts.insert(*m, Part::Member);
        }
        for o in &origins {
            parts.insert(*o, Part::Origin);
        }
        let mut link = |a: DeviceId, b: DeviceId| {
            if a != b {
                links.entry(a).or_default().insert(b);
                links.entry(b).or_default().insert(a);
            }
        };
        // Relays among themselves: a full mesh while it fits, else a ring with power-of-two chords.
        let n = relays.len();
        if n <= RELAY_PEERS_MAX + 1 {
            for (i, a) in relays.iter().enumerate() {
                for b in &relays[i + 1..] {
                    link(*a, *b);
                }
            }
        } else {
            // Steps 1, 2, 4, ... while each adds two distinct peers within the bound.
            let steps: Vec<usize> = std::iter::successors(Some(1usize), |s| Some(s * 2))
                .take_while(|s| *s * 2 < n)
                .take(RELAY_PEERS_MAX / 2)
                .collect();
            for i in 0..n {
                for s in &steps {
                    link(relays[i], relays[(i + s) % n]);
                }
            }
        }
        // Members and origins to relays: rendezvous hashing, bounded per relay.
        let mut load: BTreeMap<DeviceId, usize> = relays.iter().map(|r| (*r, 0)).collect();
        let attach: Vec<(DeviceId, usize)> = origins
            .iter()
            .map(|o| (*o, RELAYS_FOR_ORIGIN))
            .chain(members.iter().map(|m| (*m, RELAYS_PER_MEMBER)))
            .collect();
        for (device, want) in attach {
            let mut ranked: Vec<DeviceId> = relays.clone();
            ranked.sort_by_key(|r| (std::cmp::Reverse(affinity(&device, r)), *r));
            let mut taken = 0;
            for r in ranked {
                if taken == want {
                    break;
                }
                let l = load.get_mut(&r).expect("every relay has a load");
                if *l < RELAY_MEMBERS_MAX {
                    *l += 1;
                    taken += 1;
                    link(device, r);
                }
            }
        }
        // Members' ring.
        let ring: Vec<DeviceId> = members.iter().copied().collect();
        let m = ring.len();
        if m >= 2 {
            for (i, a) in ring.iter().enumerate() {
                for step in 1..=MEMBER_RING_K.min((m - 1) / 2).max(1) {
                    link(*a, ring[(i + step) % m]);
                }
            }
        }
        Self {
            parts,
            links,
            small: false,
        }
    }

    /// The shape over the devices `view` trusts at `now` (a revoked or expired device has no part, and the
    /// graph closes over it).
    pub fn of_view(view: &DirectoryView, now: UnixMillis) -> Self {
        let devices: Vec<(DeviceId, Role)> = view
            .trusted_devices(now)
            .into_iter()
            .map(|(d, r, _)| (d, r))
            .collect();
        Self::of(&devices)
    }

    /// The part `device` plays, if the site trusts it.
    pub fn part(&self, device: &DeviceId) -> Option<Part> {
        self.parts.get(device).copied()
    }

    /// The peers `device` links to (empty for a device the site does not trust).
    pub fn links(&self, device: &DeviceId) -> BTreeSet<DeviceId> {
        self.links.get(device).cloned().unwrap_or_default()
    }

    /// The relays, in id order.
    pub fn relays(&self) -> impl Iterator<Item = &DeviceId> {
        self.parts
            .iter()
            .filter(|(_, p)| **p == Part::Relay)
            .map(|(d, _)| d)
    }

    /// Whether every device holds no more links than its part's bound ([`Topology::degree_max`]).
    pub fn within_bounds(&self) -> bool {
        self.links
            .iter()
            .all(|(d, peers)| self.degree_max(d).is_none_or(|max| peers.len() <= max))
    }

    /// The most links `device` may hold for its part (`None` if the site does not trust it): every other device
    /// in a small site, else [`RELAY_DEGREE_MAX`], [`RELAYS_FOR_ORIGIN`] or [`MEMBER_DEGREE_MAX`].
    pub fn degree_max(&self, device: &DeviceId) -> Option<usize> {
        let part = self.part(device)?;
        Some(if self.small {
            SMALL_SITE - 1
        } else {
            match part {
                Part::Relay => RELAY_DEGREE_MAX,
                Part::Origin => RELAYS_FOR_ORIGIN,
                Part::Member => MEMBER_DEGREE_MAX,
            }
        })
    }

    /// Whether `holder` keeps documents of `kind` (and so opens them, and is told of them). A device the site
    /// does not trust (not in this directory yet) is told everything it may read, as before the site had a shape.
    pub fn holds_kind(&self, holder: &DeviceId, kind: DocKind) -> bool {
        match self.part(holder) {
            None | Some(Part::Relay | Part::Origin) => true,
            Some(Part::Member) => match kind {
                DocKind::Ledger(owner) => owner == *holder,
                DocKind::Telemetry(owner) => {
                    owner == *holder
                        || self.part(&owner) == Some(Part::Relay)
                        || self.links.get(holder).is_some_and(|l| l.contains(&owner))
                }
                DocKind::Slot | DocKind::Access | DocKind::Directory | DocKind::Manifest => true,
                // Not known yet (just created, not named): a member asks for it once it is registered.
                DocKind::Unknown => false,
            },
        }
    }

    /// [`Topology::holds_kind`] by the document's name.
    pub fn holds(&self, holder: &DeviceId, name: &DocName) -> bool {
        self.holds_kind(holder, DocKind::of(name))
    }
}

#[cfg(test)]
#[path = "topology_tests.rs"]
mod tests;
