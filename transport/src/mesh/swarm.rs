//! The libp2p side of the mesh: the behaviour (block list, connection limits, identify, mDNS, streams) and the
//! swarm built around it (TCP, the site's pre-shared key, noise, yamux).

use std::time::Duration;

use libp2p::core::Transport as _;
use libp2p::core::transport::upgrade::Version;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{Swarm, allow_block_list, connection_limits, identify, mdns};
use libp2p::{noise, tcp, yamux};
use popmesh_crdt::SecretKey;
use prometheus_client::registry::Registry;

use super::{MeshConfig, MeshError};
use crate::identity::libp2p_keypair;

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    pub(super) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    pub(super) stream: libp2p_stream::Behaviour,
}

/// Builds the swarm: TCP under the site's pre-shared key, noise and yamux, with the behaviour above.
pub(super) fn build(
    key: &SecretKey,
    config: &MeshConfig,
    registry: &mut Registry,
) -> Result<Swarm<Behaviour>, MeshError> {
    let psk = PreSharedKey::new(config.network_key);
    let mdns_on = config.mdns;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(libp2p_keypair(key))
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key)?;
            Ok(
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                    .upgrade(Version::V1Lazy)
                    .authenticate(noise)
                    .multiplex(yamux::Config::default())
                    .timeout(Duration::from_secs(10)),
            )
        })
        .map_err(|e| MeshError::Transport(e.to_string()))?
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key| {
            let local = key.public().to_peer_id();
            let mdns = if mdns_on {
                let cfg = mdns::Config {
                    query_interval: Duration::from_secs(5),
                    ..Default::default()
                };
                Some(mdns::tokio::Behaviour::new(cfg, local)?)
            } else {
                None
            };
            Ok(Behaviour {
                blocked: Default::default(),
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_pending_incoming(Some(64))
                        .with_max_established(Some(512))
                        .with_max_established_per_peer(Some(4)),
                ),
                identify: identify::Behaviour::new(identify::Config::new(
                    "/popmesh/1".into(),
                    key.public(),
                )),
                mdns: Toggle::from(mdns),
                stream: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| MeshError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build();
    Ok(swarm)
}
