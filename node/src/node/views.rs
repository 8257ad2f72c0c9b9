//! What the node's read operations give: its status, a slot's availability, what happened to a telemetry event,
//! document changes. Plain data (the HTTP layer serializes it as it is); what requests carry is the HTTP layer's
//! (`api/wire.rs`), and the node takes it as domain inputs (`NewShow`, `ManifestUpdate`).

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
pub struct DocInfo {
    pub name: String,
    pub id: String,
    pub kind: &'static str,
    pub heads: Vec<String>,
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
pub struct PeerStatus {
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
pub struct DocCounts {
    pub open: usize,
    pub registered: usize,
    pub by_kind: BTreeMap<&'static str, usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreStatus {
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
    pub peers: Vec<PeerStatus>,
    /// This device's part in the site's shape (`relay`, `member`, `origin`; `None` before it reads a directory
    /// that trusts it) and the most links that part may hold (`popmesh_device::topology`).
    pub part: Option<&'static str>,
    pub links_max: Option<usize>,
    pub documents: DocCounts,
    pub shows: Vec<String>,
    pub store: StoreStatus,
    /// Whether money requests may be answered: the directory is read and every ledger page of this device is
    /// open (until then they answer 503).
    pub ready: bool,
    /// What is still loading before the node is ready.
    pub loading: Vec<String>,
    pub media: PreseedReport,
    /// The UDP port of this device's blob endpoint.
    pub media_port: Option<u16>,
    pub uptime_ms: u64,
    /// Sync messages from site peers refused before they were applied, newest last (the latest 32): a device
    /// writing into another device's receipts, seats or registrations (`popmesh_device::authorship`).
    pub refused_changes: Vec<super::authorship::Refused>,
}
