//! The mesh's rules for links between two devices: who dials first, who opens the sync session, which redundant
//! connection each side closes, how long to wait before dialing again, and how long a refused peer stays blocked.
//!
//! Time is passed in (`T` is the shell's clock: `std::time::Instant` in the node's swarm task, simulated time in
//! the simulator), so both run these rules, not two copies of them. Which peers to link to at all is [`planned`]:
//! [`crate::topology::Topology`] (relays, and each member's relays and ring neighbours) over the devices this
//! device's directory trusts now.

use std::collections::BTreeSet;
use std::ops::Add;
use std::time::Duration;

use popmesh_crdt::directory::DirectoryView;
use popmesh_crdt::{DeviceId, UnixMillis};

use crate::topology::Topology;

/// The peers `me` holds links to in the site's [`Topology`] over the devices `view` trusts at `now` (a revoked or
/// expired device is planned by no one, and the graph closes over it). `None` without a directory: then the
/// device links with every peer it discovers, as it must to find one.
pub fn planned(
    me: DeviceId,
    view: Option<&DirectoryView>,
    now: UnixMillis,
) -> Option<BTreeSet<DeviceId>> {
    Some(Topology::of_view(view?, now).links(&me))
}

/// The first wait before dialing again after a failure; it doubles per failure up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// How long the larger of two devices waits before it dials a peer it discovered, giving the smaller a head start
/// (so most pairs open one connection, not two).
pub const FALLBACK_DIAL: Duration = Duration::from_secs(3);
/// How long a peer the gate refused (or that never said hello) is blocked.
pub const BLOCK_FOR: Duration = Duration::from_secs(60);
/// How long a connected peer has to say hello.
pub const HELLO_GRACE: Duration = Duration::from_secs(15);

/// Whether this device dials `peer` at once on discovery (the smaller id does), and opens the one sync session.
pub fn dials_first<K: Ord>(me: &K, peer: &K) -> bool {
    me < peer
}

/// How long after discovering `peer` this device first dials it.
pub fn first_dial_after<K: Ord>(me: &K, peer: &K) -> Duration {
    if dials_first(me, peer) {
        Duration::ZERO
    } else {
        FALLBACK_DIAL
    }
}

/// How many of its own dials to `peer` this side keeps open (it closes the rest), given whether a connection
/// `peer` dialed is open too. Both sides decide alike without talking: the smaller keeps one of its own, the
/// larger keeps one of its own only if the smaller's is not there, so exactly one connection survives.
pub fn own_dials_to_keep<K: Ord>(me: &K, peer: &K, theirs_open: bool) -> usize {
    usize::from(dials_first(me, peer) || !theirs_open)
}

/// When to dial a peer (or an address) next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff<T> {
    pub next_at: T,
    delay: Duration,
}

impl<T: Copy + Ord + Add<Duration, Output = T>> Backoff<T> {
    /// A peer first seen at `now`, to be dialed `after` that.
    pub fn new(now: T, after: Duration) -> Self {
        Self {
            next_at: now + after,
            delay: BACKOFF_MIN,
        }
    }

    pub fn due(&self, now: T) -> bool {
        self.next_at <= now
    }

    /// A dial failed (or was just made: the next one waits): wait the current delay, and double it.
    pub fn failed(&mut self, now: T) {
        self.next_at = now + self.delay;
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
    }

    /// A connection closed: dial again after the current delay, without growing it.
    pub fn closed(&mut self, now: T) {
        self.next_at = now + self.delay;
    }

    /// A connection is up: the next failure starts from the shortest wait again.
    pub fn connected(&mut self) {
        self.delay = BACKOFF_MIN;
    }

    /// The wait the next failure will cause.
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_devices_agree_on_one_connection_whoever_dialed() {
        let (a, b) = (1u8, 2u8);
        // Both dialed: the smaller keeps its own, the larger closes its own.
        assert_eq!(own_dials_to_keep(&a, &b, true), 1);
        assert_eq!(own_dials_to_keep(&b, &a, true), 0);
        // Only the larger dialed: it keeps it.
        assert_eq!(own_dials_to_keep(&b, &a, false), 1);
        assert_eq!(first_dial_after(&a, &b), Duration::ZERO);
        assert_eq!(first_dial_after(&b, &a), FALLBACK_DIAL);
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_a_connection_resets_it() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        let mut now = Duration::ZERO;
        for _ in 0..10 {
            b.failed(now);
            now = b.next_at;
        }
        assert_eq!(b.delay(), BACKOFF_MAX);
        b.connected();
        b.closed(now);
        assert_eq!(b.next_at, now + BACKOFF_MIN);
    }
}
