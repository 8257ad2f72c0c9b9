//! What the node's operations take and give as JSON (the HTTP layer serializes these).

use super::*;

/// What happened to one telemetry event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Counted {
    /// Counted, by this much (more than asked when it stands for sampled-out events).
    Counted(i64),
    /// Left out by overload sampling; a kept event of the same counter stands for it.
    SampledOut,
    /// About an attendee who has not consented to analytics on this device: not counted.
    NoConsent,
}

/// A document changed on this device (a local write or a synced one).
#[derive(Debug, Clone, Serialize)]
pub struct DocEvent {
    pub doc: String,
    pub id: String,
    pub kind: &'static str,
    pub heads: Vec<String>,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DocJson {
    pub name: String,
    pub id: String,
    pub kind: &'static str,
    pub heads: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReceiptJson {
    pub token: String,
    pub show: String,
    pub device: String,
    pub seq: u64,
    pub amount_minor: u64,
    pub currency: String,
    pub idempotency_key: String,
    pub issued_at: u64,
    pub signature: String,
    pub reconciled: bool,
    pub verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_error: Option<String>,
}

impl ReceiptJson {
    pub fn new(r: &Receipt, reconciled: bool, verified: Result<(), String>) -> Self {
        Self {
            token: r.token.to_string(),
            show: r.show.clone(),
            device: r.device.to_hex(),
            seq: r.seq,
            amount_minor: r.amount_minor,
            currency: r.currency.clone(),
            idempotency_key: r.idempotency_key.clone(),
            issued_at: r.issued_at.0,
            signature: r.signature.iter().map(|b| format!("{b:02x}")).collect(),
            reconciled,
            verified: verified.is_ok(),
            verify_error: verified.err(),
        }
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowSpec {
    pub id: String,
    pub name: String,
    pub currency: String,
    pub slots: Vec<SlotSpec>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotSpec {
    pub id: String,
    pub label: String,
    pub starts_at: u64,
    pub capacity: u64,
    /// Seats escrowed to devices (by device id or name); all to this device when empty.
    #[serde(default)]
    pub grants: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceSeats {
    pub grant: u64,
    pub sold: u64,
    pub available: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Availability {
    pub show: String,
    pub slot: String,
    pub label: String,
    pub starts_at: u64,
    pub capacity: u64,
    pub sold: u64,
    pub remaining: u64,
    /// Seats this device can still sell from its own quota, offline.
    pub available_here: u64,
    pub devices: BTreeMap<String, DeviceSeats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerJson {
    pub device: String,
    pub name: Option<String>,
    pub role: Option<Role>,
    pub admitted: bool,
    pub connections: usize,
    pub connected_for_ms: u64,
    /// Open documents whose latest heads the peer has not acknowledged (None before its sync session is up).
    pub documents_behind: Option<usize>,
    pub last_heard_ms_ago: Option<u64>,
    /// Why the link exists: `planned` (the site's topology: a hub or a ring neighbour), `bootstrap`,
    /// `their_plan` (the peer's topology names this device), or `discovered` (before the directory is read).
    pub why: popmesh_transport::LinkReason,
}

#[derive(Debug, Clone, Serialize)]
pub struct DocsJson {
    pub open: usize,
    pub registered: usize,
    pub by_kind: BTreeMap<&'static str, usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreJson {
    pub path: String,
    pub bytes: u64,
    pub acknowledged_writes: u64,
    /// False while the data file refuses writes (then payments and bookings answer 503).
    pub healthy: bool,
    /// Why it refuses them (`disk_full` or `io`, and the reason).
    pub fault: Option<crate::store::StoreFault>,
    pub free_bytes: Option<u64>,
    /// Free space is below the reserve kept for money: media preseed and uploads have stopped.
    pub below_reserve: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub device: String,
    pub name: String,
    pub role: Role,
    pub site: String,
    pub site_name: String,
    pub directory: Option<String>,
    pub directory_synced: bool,
    pub enrolled: bool,
    pub listening: Vec<String>,
    pub peers: Vec<PeerJson>,
    pub documents: DocsJson,
    pub shows: Vec<String>,
    pub store: StoreJson,
    /// Whether money requests may be answered: the directory is read and every ledger page of this device is
    /// open (until then they answer 503).
    pub ready: bool,
    /// What is still loading before the node is ready.
    pub loading: Vec<String>,
    pub media: PreseedReport,
    /// The UDP port of this device's blob endpoint.
    pub media_port: Option<u16>,
    pub uptime_ms: u64,
}

/// What `POST /v1/manifests/{name}` publishes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSpec {
    #[serde(default)]
    pub entries: Vec<EntrySpec>,
    /// The entry to serve when a requested blob cannot be had from any peer.
    #[serde(default)]
    pub fallback: Option<String>,
    /// Role -> byte ranges of every entry that role preseeds.
    #[serde(default)]
    pub slices: BTreeMap<String, Vec<ByteRange>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntrySpec {
    pub name: String,
    pub hash: String,
    pub size: u64,
    pub mime: String,
    pub ttl_ms: u64,
}
