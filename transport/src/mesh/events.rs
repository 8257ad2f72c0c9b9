//! What the swarm reports: listen addresses, mDNS and identify discoveries, connections opened and closed, and dial
//! errors, each folded into the swarm task's state.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::core::ConnectedPoint;
use libp2p::metrics::Recorder as _;
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, identify, mdns};

use super::connections::Conn;
use super::dial::{DialState, Known};
use super::swarm::BehaviourEvent;
use super::{Backoff, SwarmTask, rules};

impl SwarmTask {
    pub(super) fn on_event(
        &mut self,
        event: SwarmEvent<BehaviourEvent>,
        connected_at: &mut HashMap<PeerId, Instant>,
    ) {
        self.p2p_metrics.record(&event);
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.lock().listening.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.lock().listening.retain(|a| a != &address);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if peer == self.local {
                        continue;
                    }
                    let first = !self.known.contains_key(&peer);
                    let after = rules::first_dial_after(&self.local, &peer);
                    let known = self.known.entry(peer).or_insert_with(|| Known {
                        addrs: Vec::new(),
                        backoff: Backoff::new(Instant::now(), after),
                    });
                    if !known.addrs.contains(&addr) {
                        known.addrs.push(addr);
                    }
                    if first {
                        tracing::info!(%peer, "discovered by mDNS");
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Expired(gone))) => {
                for (peer, addr) in gone {
                    if let Some(k) = self.known.get_mut(&peer) {
                        k.addrs.retain(|a| a != &addr);
                        if k.addrs.is_empty() {
                            self.known.remove(&peer);
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => {
                self.p2p_metrics.record(&event);
                if let identify::Event::Received { peer_id, info, .. } = event
                    && let Some(k) = self.known.get_mut(&peer_id)
                {
                    for addr in info.listen_addrs {
                        if !k.addrs.contains(&addr) {
                            k.addrs.push(addr);
                        }
                    }
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let dialed_by_me = matches!(endpoint, ConnectedPoint::Dialer { .. });
                for b in &mut self.bootstrap {
                    if b.state == DialState::Dialing(connection_id) {
                        b.state = DialState::Connected(connection_id);
                        b.peer = Some(peer_id);
                        b.backoff.connected();
                    }
                }
                if let Some(k) = self.known.get_mut(&peer_id) {
                    k.backoff.connected();
                }
                connected_at.entry(peer_id).or_insert_with(Instant::now);
                let remote = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => address,
                    ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr,
                };
                let remote_ip = remote.iter().find_map(|p| match p {
                    libp2p::multiaddr::Protocol::Ip4(ip) => Some(std::net::IpAddr::V4(ip)),
                    libp2p::multiaddr::Protocol::Ip6(ip) => Some(std::net::IpAddr::V6(ip)),
                    _ => None,
                });
                self.conns.entry(peer_id).or_default().push(Conn {
                    id: connection_id,
                    dialed_by_me,
                    remote_ip,
                });
                self.drop_duplicates(peer_id);
                if rules::dials_first(&self.local, &peer_id)
                    && !self.sessions.contains_key(&peer_id)
                {
                    self.open_session(peer_id);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                for b in &mut self.bootstrap {
                    if b.state == DialState::Connected(connection_id) {
                        b.state = DialState::Idle;
                        b.backoff.closed(Instant::now());
                    }
                }
                if let Some(list) = self.conns.get_mut(&peer_id) {
                    list.retain(|c| c.id != connection_id);
                }
                if num_established == 0 {
                    tracing::info!(%peer_id, ?cause, "peer disconnected");
                    self.conns.remove(&peer_id);
                    connected_at.remove(&peer_id);
                    self.admitted.remove(&peer_id);
                    if let Some(session) = self.sessions.remove(&peer_id) {
                        session.close();
                    }
                    if let Some(k) = self.known.get_mut(&peer_id) {
                        k.backoff.closed(Instant::now());
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                tracing::debug!(?peer_id, "dial failed: {error}");
                for b in &mut self.bootstrap {
                    if b.state == DialState::Dialing(connection_id) {
                        b.state = DialState::Idle;
                        b.backoff.failed(Instant::now());
                    }
                }
                if let Some(k) = peer_id.and_then(|p| self.known.get_mut(&p)) {
                    k.backoff.failed(Instant::now());
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                // A transport error here is most often a device without the site key: the pnet/noise handshake
                // fails. Denials (a blocked peer trying again) were counted when the peer was refused.
                tracing::debug!("inbound connection failed: {error}");
                if matches!(error, libp2p::swarm::ListenError::Transport(_)) {
                    self.metrics.reject("handshake");
                }
            }
            _ => {}
        }
    }
}
