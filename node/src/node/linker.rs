//! The node runs the site's topology (issue 14, "the node runs the topology").
//!
//! Every device publishes the addresses its mesh listens on in its own telemetry document, which syncs to every
//! device; so a device that was given one bootstrap address (venue Wi-Fi that blocks multicast) still learns where
//! every other device is. From the directory and those addresses the linker plans this device's links with the
//! same rule the simulator runs, `popmesh_device::topology::Topology` (relays among themselves, each member to two
//! relays and its ring neighbours), and hands the plan to the mesh, which dials what is planned and lets go of
//! what is not. With the edge box gone, the elected relays and the ring still join every other device.

use std::collections::HashMap;
use std::time::Duration;

use automerge::Automerge;
use popmesh_crdt::docs::DocName;
use popmesh_crdt::telemetry::Telemetry;
use popmesh_crdt::{DeviceId, Doc};

use super::{Node, Unavailable, clock, internal, lock, read, stopped};

/// How often the plan is recomputed.
pub const PLAN_EVERY: Duration = Duration::from_secs(2);

/// The addresses of this device's mesh worth telling others: no unspecified address, and loopback only when the
/// device has nothing else (a site on one machine).
pub fn dialable(listening: &[libp2p::Multiaddr]) -> Vec<String> {
    use libp2p::multiaddr::Protocol;
    let ip_of = |a: &libp2p::Multiaddr| {
        a.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(std::net::IpAddr::V4(ip)),
            Protocol::Ip6(ip) => Some(std::net::IpAddr::V6(ip)),
            _ => None,
        })
    };
    let usable: Vec<&libp2p::Multiaddr> = listening
        .iter()
        .filter(|a| ip_of(a).is_some_and(|ip| !ip.is_unspecified()))
        .collect();
    let outside: Vec<&libp2p::Multiaddr> = usable
        .iter()
        .copied()
        .filter(|a| ip_of(a).is_some_and(|ip| !ip.is_loopback()))
        .collect();
    let chosen = if outside.is_empty() { usable } else { outside };
    let mut out: Vec<String> = chosen.iter().map(|a| a.to_string()).collect();
    out.sort();
    out.dedup();
    out
}

impl Node {
    /// Writes this device's mesh addresses into its telemetry document when they changed.
    async fn publish_addrs(&self) -> Result<(), Unavailable> {
        let mine = dialable(&self.mesh.listening());
        if mine.is_empty() || lock(&self.addrs_written).as_ref() == Some(&mine) {
            return Ok(());
        }
        let handle = self.telemetry_handle().await?;
        let (actor, addrs) = (self.actor(), mine.clone());
        self.change(&handle, move |am| {
            Doc::<Telemetry, &mut Automerge>::attach_as(am, actor)?.set_addrs(addrs)
        })
        .await?
        .map_err(internal)?;
        *lock(&self.addrs_written) = Some(mine);
        Ok(())
    }

    /// The links this device should hold: the topology over the devices the site trusts now, each with the
    /// addresses it published.
    async fn plan(&self) -> Result<HashMap<libp2p::PeerId, Vec<libp2p::Multiaddr>>, Unavailable> {
        let view = self.view()?;
        // Recomputed each round: certificates expire with time, not only with changes.
        let shape = popmesh_device::topology::Topology::of_view(&view, clock::now());
        let wanted = shape.links(&self.me());
        self.gate.set_shape(shape);
        let telemetry: HashMap<DeviceId, samod::DocHandle> = read(&self.docs)
            .values()
            .filter_map(|(name, h)| match name {
                DocName::Telemetry { device } if wanted.contains(device) => {
                    Some((*device, h.clone()))
                }
                _ => None,
            })
            .collect();
        let mut plan = HashMap::new();
        for device in wanted {
            let Ok(peer) = popmesh_transport::identity::peer_id(&device) else {
                continue;
            };
            let addrs: Vec<String> = match telemetry.get(&device) {
                Some(h) => h
                    .with_document_async(|am| {
                        Doc::<Telemetry, &mut Automerge>::attach(am)
                            .map(|d| d.addrs())
                            .unwrap_or_default()
                    })
                    .await
                    .map_err(stopped)?,
                None => Vec::new(),
            };
            let addrs = addrs
                .iter()
                .take(popmesh_crdt::telemetry::ADDRS_MAX)
                .filter_map(|a| a.parse::<libp2p::Multiaddr>().ok())
                .collect();
            plan.insert(peer, addrs);
        }
        Ok(plan)
    }

    /// One round: publish this device's addresses, plan, hand the plan to the mesh.
    pub(crate) async fn relink(&self) -> Result<usize, Unavailable> {
        if let Err(e) = self.publish_addrs().await {
            tracing::debug!("mesh addresses not published yet: {e}");
        }
        let plan = self.plan().await?;
        let n = plan.len();
        self.mesh.set_plan(plan).await;
        Ok(n)
    }
}

/// Runs [`Node::relink`] every [`PLAN_EVERY`].
pub(crate) async fn linker(node: std::sync::Arc<Node>) {
    let mut tick = tokio::time::interval(PLAN_EVERY);
    loop {
        tick.tick().await;
        if let Err(e) = node.relink().await {
            tracing::debug!("no link plan yet: {e}");
        }
    }
}
