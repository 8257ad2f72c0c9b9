//! One connection per pair: the connections open to each peer, and this side's redundant dials closed.

use libp2p::PeerId;
use libp2p::swarm::ConnectionId;

use super::SwarmTask;

pub(super) struct Conn {
    pub(super) id: ConnectionId,
    pub(super) dialed_by_me: bool,
    /// The remote IP address of the connection.
    pub(super) remote_ip: Option<std::net::IpAddr>,
}

impl SwarmTask {
    /// Closes this side's redundant dials to `peer` (see the module notes for why both sides agree).
    pub(super) fn drop_duplicates(&mut self, peer: PeerId) {
        let Some(list) = self.conns.get(&peer) else {
            return;
        };
        let theirs = list.iter().any(|c| !c.dialed_by_me);
        let mine: Vec<ConnectionId> = list
            .iter()
            .filter(|c| c.dialed_by_me)
            .map(|c| c.id)
            .collect();
        let keep = popmesh_device::links::own_dials_to_keep(&self.local, &peer, theirs);
        let close = mine.get(keep..).unwrap_or_default();
        for id in close {
            tracing::debug!(%peer, "closing a duplicate connection");
            self.swarm.close_connection(*id);
        }
    }
}
