//! Dialing and backoff: bootstrap addresses and discovered peers, each redialed with backoff while not connected.

use std::time::Instant;

use libp2p::swarm::ConnectionId;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId};

use super::{Backoff, SwarmTask};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DialState {
    Idle,
    Dialing(ConnectionId),
    Connected(ConnectionId),
}

pub(super) struct Bootstrap {
    pub(super) addr: Multiaddr,
    pub(super) state: DialState,
    pub(super) backoff: Backoff<Instant>,
    /// The peer this address led to last time.
    pub(super) peer: Option<PeerId>,
}

/// Addresses a peer was discovered at (mDNS, identify), and when to try it next.
pub(super) struct Known {
    pub(super) addrs: Vec<Multiaddr>,
    pub(super) backoff: Backoff<Instant>,
}

impl SwarmTask {
    /// Dials bootstrap addresses whose peer is not connected, when their backoff allows, until this device holds a
    /// planned link.
    pub(super) fn dial_bootstrap(&mut self, now: Instant) {
        let connected: Vec<PeerId> = self.conns.keys().copied().collect();
        // Linked into the site's plan: the bootstrap addresses are not needed (nor kept, see `prune`).
        let in_the_plan = self.in_the_plan();
        for i in 0..self.bootstrap.len() {
            let b = &self.bootstrap[i];
            let satisfied = in_the_plan
                || b.peer
                    .is_some_and(|p| connected.contains(&p) || self.blocked.contains_key(&p));
            if b.state != DialState::Idle || satisfied || !b.backoff.due(now) {
                continue;
            }
            let opts = DialOpts::unknown_peer_id().address(b.addr.clone()).build();
            let id = opts.connection_id();
            let addr = b.addr.clone();
            match self.swarm.dial(opts) {
                Ok(()) => self.bootstrap[i].state = DialState::Dialing(id),
                Err(e) => {
                    tracing::debug!(%addr, "bootstrap dial refused: {e}");
                    self.bootstrap[i].backoff.failed(now);
                }
            }
        }
    }

    /// Dials discovered (or planned) peers this device should be connected to, when their backoff allows.
    pub(super) fn dial_known(&mut self, now: Instant) {
        let due: Vec<(PeerId, Vec<Multiaddr>)> = self
            .known
            .iter()
            .filter(|(p, k)| {
                k.backoff.due(now)
                    && !self.conns.contains_key(p)
                    && !self.blocked.contains_key(p)
                    && self.wanted(p)
                    && !k.addrs.is_empty()
            })
            .map(|(p, k)| (*p, k.addrs.clone()))
            .collect();
        for (peer, addrs) in due {
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Some(k) = self.known.get_mut(&peer) {
                k.backoff.failed(now);
            }
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%peer, "dial refused: {e}");
            }
        }
    }
}
