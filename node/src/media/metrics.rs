//! The media side's metrics: what it fetched, served and refused, and how complete its preseed is.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Media, lock};

#[derive(Debug, Default)]
pub(super) struct MediaMetrics {
    pub(super) fetched: Counter,
    wire_sent: Counter,
    wire_received: Counter,
    pub(super) served: Counter,
    pub(super) refused: Counter,
    pub(super) damaged: Counter,
    pub(super) fallbacks: Counter,
    pub(super) completeness: Gauge<f64, AtomicU64>,
    pub(super) missing: Gauge,
    held: Gauge,
}

impl MediaMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "popmesh_media_fetched_bytes",
            "Blob payload bytes fetched from site peers",
            m.fetched.clone(),
        );
        registry.register(
            "popmesh_media_wire_sent_bytes",
            "Bytes the blob endpoint sent (QUIC datagrams, to peers fetching from this device)",
            m.wire_sent.clone(),
        );
        registry.register(
            "popmesh_media_wire_received_bytes",
            "Bytes the blob endpoint received (QUIC datagrams)",
            m.wire_received.clone(),
        );
        registry.register(
            "popmesh_media_served_bytes",
            "Blob bytes served to local HTTP clients (kiosk browsers)",
            m.served.clone(),
        );
        registry.register(
            "popmesh_media_refused_connections",
            "Blob connections refused because the peer is not an admitted site device",
            m.refused.clone(),
        );
        registry.register(
            "popmesh_media_damaged_blobs",
            "Local blob copies that failed their hash check and were fetched again",
            m.damaged.clone(),
        );
        registry.register(
            "popmesh_media_fallbacks",
            "Requests answered with the manifest's fallback entry",
            m.fallbacks.clone(),
        );
        registry.register(
            "popmesh_media_preseed_completeness",
            "Fraction of the bytes the manifests ask this device to preseed that it holds (1 when complete)",
            m.completeness.clone(),
        );
        registry.register(
            "popmesh_media_blobs_missing",
            "Manifest entries this device does not hold yet (in full, or the slices its role preseeds)",
            m.missing.clone(),
        );
        registry.register(
            "popmesh_media_blobs_held",
            "Blobs this device keeps (tagged)",
            m.held.clone(),
        );
        m
    }
}

impl Media {
    /// Copies the endpoint's byte counters into the node's metrics.
    pub fn refresh_metrics(&self) {
        let socket = &self.endpoint.metrics().socket;
        let sent = socket.send_ipv4.get() + socket.send_ipv6.get();
        let received = socket.recv_data_ipv4.get() + socket.recv_data_ipv6.get();
        let mut seen = lock(&self.wire_seen);
        self.metrics.wire_sent.inc_by(sent.saturating_sub(seen.0));
        self.metrics
            .wire_received
            .inc_by(received.saturating_sub(seen.1));
        *seen = (sent.max(seen.0), received.max(seen.1));
        self.metrics.held.set(lock(&self.tagged).len() as i64);
    }
}
