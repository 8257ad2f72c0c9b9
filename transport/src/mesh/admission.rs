//! Admission and refusal: refused or revoked peers are disconnected, counted and blocked for [`BLOCK_FOR`]; peers
//! that never say hello are refused; blocks expire.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::PeerId;

use super::{BLOCK_FOR, HELLO_GRACE, SwarmTask};
use crate::identity::device_of_peer;

impl SwarmTask {
    /// Disconnects `peer`: counts the refusal under `reason`, closes its session and blocks it for [`BLOCK_FOR`].
    pub(super) fn refuse(&mut self, peer: PeerId, reason: &str) {
        self.metrics.reject(reason);
        self.admitted.remove(&peer);
        if let Some(session) = self.sessions.remove(&peer) {
            session.close();
        }
        self.blocked.insert(peer, Instant::now() + BLOCK_FOR);
        self.swarm.behaviour_mut().blocked.block_peer(peer);
    }

    /// Asks the gate again about every admitted peer, and refuses those it no longer admits.
    pub(super) fn reverify(&mut self) {
        let refused: Vec<(PeerId, String)> = self
            .admitted
            .iter()
            .filter_map(|(peer, hello)| {
                let device = device_of_peer(peer)?;
                self.gate.admit(device, hello).err().map(|r| (*peer, r))
            })
            .collect();
        for (peer, reason) in refused {
            tracing::warn!(%peer, "admitted peer no longer trusted: {reason}");
            self.refuse(peer, "not_enrolled");
        }
    }

    /// Unblocks refused peers whose time is up (a revoked peer is refused again on its next hello).
    pub(super) fn unblock_expired(&mut self, now: Instant) {
        let expired: Vec<PeerId> = self
            .blocked
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in expired {
            self.blocked.remove(&peer);
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
        }
    }

    /// Disconnects (and refuses) peers that connected but never said hello within [`HELLO_GRACE`].
    pub(super) fn disconnect_silent(
        &mut self,
        connected_at: &HashMap<PeerId, Instant>,
        now: Instant,
    ) {
        let silent: Vec<PeerId> = connected_at
            .iter()
            .filter(|(p, at)| {
                !self.admitted.contains_key(p) && now.duration_since(**at) > HELLO_GRACE
            })
            .map(|(p, _)| *p)
            .collect();
        for peer in silent {
            tracing::warn!(%peer, "no hello within {HELLO_GRACE:?}; disconnecting");
            self.refuse(peer, "no_hello");
        }
    }
}
