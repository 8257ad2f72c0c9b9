//! The node's own Prometheus metrics.

use super::*;

/// The node's own gauges (the mesh registers its own, and libp2p-metrics its own, in the same registry).
#[derive(Debug, Default, Clone)]
pub(super) struct NodeMetrics {
    pub(super) documents: Gauge,
    pub(super) receipts: Gauge,
    pub(super) unreconciled_minor: Gauge,
    pub(super) acked_writes: Gauge,
    pub(super) sampled_out: Counter,
    pub(super) no_consent: Counter,
    pub(super) incidents_open: Gauge,
    pub(super) uplink_backlog: Gauge,
    pub(super) store_failed: Gauge,
    pub(super) store_free_bytes: Gauge,
    pub(super) money_loading: Gauge,
    pub(super) clients_unauthorized: Counter,
    pub(super) clients_role_refused: Counter,
}

impl NodeMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "popmesh_documents",
            "Documents open on this device",
            m.documents.clone(),
        );
        registry.register(
            "popmesh_receipts",
            "Receipts this device holds, from every device",
            m.receipts.clone(),
        );
        registry.register(
            "popmesh_unreconciled_minor",
            "Sum of receipts not yet reconciled, in minor units (all currencies added)",
            m.unreconciled_minor.clone(),
        );
        registry.register(
            "popmesh_acknowledged_writes",
            "Writes made durable before the API acknowledged them, since start",
            m.acked_writes.clone(),
        );
        registry.register(
            "popmesh_telemetry_sampled_out",
            "Telemetry events left out by overload sampling (counted through the kept ones)",
            m.sampled_out.clone(),
        );
        registry.register(
            "popmesh_telemetry_no_consent",
            "Telemetry events for attendees who did not consent to analytics, not counted",
            m.no_consent.clone(),
        );
        registry.register(
            "popmesh_incidents_open",
            "Peers this device reached before and cannot reach now",
            m.incidents_open.clone(),
        );
        registry.register(
            "popmesh_uplink_backlog_bytes",
            "Sync bytes queued on the links to the origin (media waits while there are any)",
            m.uplink_backlog.clone(),
        );
        registry.register(
            "popmesh_store_failed",
            "1 while the data file refuses writes (a full or failing disk): payments and bookings answer 503",
            m.store_failed.clone(),
        );
        registry.register(
            "popmesh_store_free_bytes",
            "Free bytes on the data file's disk (media stops below the reserve kept for money)",
            m.store_free_bytes.clone(),
        );
        registry.register(
            "popmesh_ledger_pages_loading",
            "This device's ledger pages not open yet: money requests answer 503 until it is 0",
            m.money_loading.clone(),
        );
        registry.register(
            "popmesh_api_unauthorized",
            "API requests refused for a missing, malformed, expired or revoked client token",
            m.clients_unauthorized.clone(),
        );
        registry.register(
            "popmesh_api_role_refused",
            "API requests refused because the client token's role may not call the route",
            m.clients_role_refused.clone(),
        );
        m
    }
}

impl Node {
    /// Counts a request the API's client gate refused (`role`: a valid token whose role may not call the route).
    pub(crate) fn note_client_refused(&self, role: bool) {
        if role {
            self.metrics.clients_role_refused.inc();
        } else {
            self.metrics.clients_unauthorized.inc();
        }
    }
}
