//! The mesh's own metrics (peers admitted, connections, refusals by reason, sync traffic), registered beside
//! libp2p-metrics in the node's one registry.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::link::LinkCounters;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// The mesh's own metrics, registered beside libp2p-metrics in the node's one registry.
#[derive(Debug, Clone)]
pub(super) struct MeshMetrics {
    pub(super) peers_admitted: Gauge,
    pub(super) connections: Gauge,
    rejected: Family<ReasonLabel, Counter>,
    pub(super) links: Arc<LinkCounters>,
}

impl MeshMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let peers_admitted = Gauge::default();
        let connections = Gauge::default();
        let rejected = Family::<ReasonLabel, Counter>::default();
        let messages = Family::<DirectionLabel, Counter>::default();
        let bytes = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "popmesh_peers_connected",
            "Peers connected and admitted to the site",
            peers_admitted.clone(),
        );
        registry.register(
            "popmesh_connections",
            "Open libp2p connections, admitted or not",
            connections.clone(),
        );
        registry.register(
            "popmesh_peers_rejected",
            "Peers disconnected because they were not admitted, by reason",
            rejected.clone(),
        );
        registry.register(
            "popmesh_sync_messages",
            "Document sync messages, by direction",
            messages.clone(),
        );
        registry.register(
            "popmesh_sync_bytes",
            "Document sync bytes, by direction",
            bytes.clone(),
        );
        let dir = |d| DirectionLabel { direction: d };
        // Each lookup in its own call: `get_or_create` holds the family's lock until its guard drops, so four in one
        // struct expression would deadlock on the second.
        let counter =
            |family: &Family<DirectionLabel, Counter>, d| family.get_or_create(&dir(d)).clone();
        let links = Arc::new(LinkCounters {
            messages_in: counter(&messages, "in"),
            messages_out: counter(&messages, "out"),
            bytes_in: counter(&bytes, "in"),
            bytes_out: counter(&bytes, "out"),
        });
        Self {
            peers_admitted,
            connections,
            rejected,
            links,
        }
    }

    pub(super) fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
}
