//! The node's link plan, kept by the swarm task: which peers to hold links to, and the links to let go.
//!
//! The node decides the plan (`popmesh_device::topology::Topology` over the directory: relays, and each member's
//! relays and ring neighbours), from addresses every device publishes in its telemetry document, so discovery by mDNS and by one
//! bootstrap address lead to the same mesh. The swarm task keeps it:
//! - **Dial what is planned.** A planned peer that is not connected is dialed at the addresses the plan gives; of
//!   two peers the smaller dials at once, the larger [`super::FALLBACK_DIAL`] later, with backoff.
//! - **Let go of what is not.** A link this side dialed to a peer the plan does not name is closed once it has
//!   lived [`PRUNE_AFTER`]; links the other side dialed are the other side's to keep (both sides compute the same
//!   rule, so they agree without a message). A link to a bootstrap peer the plan does not name is kept only until
//!   this device holds a planned link: the bootstrap address is a way in, not a place in the site's shape (else
//!   the edge box every device was given would hold a link to each of hundreds).
//! - Until the node sends a plan (it has no directory yet), every discovered peer is dialed as before.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

use super::{Backoff, Known, SwarmTask, rules};

/// How long a link the plan does not name may live before this side closes it.
pub const PRUNE_AFTER: Duration = Duration::from_secs(10);

/// Why a link exists, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkReason {
    /// The node's plan names the peer (a hub, or a ring neighbour).
    Planned,
    /// A bootstrap address led to it.
    Bootstrap,
    /// The peer dialed this device (its plan names this device).
    TheirPlan,
    /// No plan yet: discovered and dialed.
    Discovered,
}

impl SwarmTask {
    /// Takes the node's plan: peer -> addresses to reach it at.
    pub(super) fn set_plan(&mut self, plan: HashMap<PeerId, Vec<Multiaddr>>) {
        let now = Instant::now();
        for (peer, addrs) in &plan {
            if *peer == self.local {
                continue;
            }
            let after = rules::first_dial_after(&self.local, peer);
            let known = self.known.entry(*peer).or_insert_with(|| Known {
                addrs: Vec::new(),
                backoff: Backoff::new(now, after),
            });
            // What the peer publishes now, plus what mDNS or identify found (bounded: the plan replaces its own).
            if !addrs.is_empty() {
                known.addrs.retain(|a| !addrs.contains(a));
                known.addrs.truncate(8);
                known.addrs.extend(addrs.iter().cloned());
            }
        }
        self.plan = Some(plan);
    }

    /// Whether the plan (if any) wants a link to `peer`.
    pub(super) fn wanted(&self, peer: &PeerId) -> bool {
        self.plan.as_ref().is_none_or(|p| p.contains_key(peer))
    }

    pub(super) fn is_bootstrap_peer(&self, peer: &PeerId) -> bool {
        self.bootstrap.iter().any(|b| b.peer == Some(*peer))
    }

    /// Whether this device holds a link its plan names (then it needs no bootstrap link to stay in the site).
    pub(super) fn in_the_plan(&self) -> bool {
        self.plan
            .as_ref()
            .is_some_and(|p| self.conns.keys().any(|peer| p.contains_key(peer)))
    }

    /// Why the link to `peer` exists.
    pub(super) fn reason(&self, peer: &PeerId) -> LinkReason {
        if self.plan.is_some() && self.wanted(peer) {
            LinkReason::Planned
        } else if self.is_bootstrap_peer(peer) {
            LinkReason::Bootstrap
        } else if self.plan.is_none() {
            LinkReason::Discovered
        } else {
            LinkReason::TheirPlan
        }
    }

    /// Closes the links this side dialed to peers the plan does not name, once they have lived [`PRUNE_AFTER`].
    pub(super) fn prune(&mut self, connected_at: &HashMap<PeerId, Instant>, now: Instant) {
        if self.plan.is_none() {
            return;
        }
        let in_the_plan = self.in_the_plan();
        let unwanted: Vec<PeerId> = self
            .conns
            .iter()
            .filter(|(peer, list)| {
                !self.wanted(peer)
                    && (in_the_plan || !self.is_bootstrap_peer(peer))
                    && list.iter().all(|c| c.dialed_by_me)
                    && connected_at
                        .get(*peer)
                        .is_some_and(|at| now.duration_since(*at) > PRUNE_AFTER)
            })
            .map(|(peer, _)| *peer)
            .collect();
        for peer in unwanted {
            tracing::info!(%peer, "closing a link the site's topology does not name");
            if let Some(list) = self.conns.get(&peer) {
                for c in list {
                    self.swarm.close_connection(c.id);
                }
            }
        }
    }
}
