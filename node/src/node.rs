//! The daemon: one device's samod repo on its data file, joined to the site mesh, and the operations the local API
//! offers on top of the domain core.
//!
//! Lifecycle: open the data file, draw a fresh Automerge actor epoch (so a crash that lost unsynced local changes
//! never reuses their sequence numbers), start samod and the mesh, then let the *librarian* find the site directory
//! (known locally, or learned from the first admitted peer's hello), add this device's certificate to it, and open
//! every document it registers, again whenever it changes.
//!
//! Every write the API acknowledges is made durable with [`Store::put_ack`] before the answer goes out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use automerge::Automerge;
use popmesh_crdt::directory::{Directory, DirectoryView};
use popmesh_crdt::docs::DocName;
use popmesh_crdt::enrollment::{EnrollmentCert, Revocation, RevocationTarget};
use popmesh_crdt::escrow::{EscrowError, SaleOutcome, Slot};
use popmesh_crdt::ledger::{Ledger, LedgerView};
use popmesh_crdt::privacy::{AttendeeProfile, check_pseudonym};
use popmesh_crdt::receipt::Receipt;
use popmesh_crdt::report::{ReportReceipt, ShowData, ShowReport};
use popmesh_crdt::risk::RiskLimits;
use popmesh_crdt::telemetry::{
    CounterBuffer, Incident, RehearsalAnswer, RehearsalCall, Sampled, Sampler, SamplingPolicy,
    Telemetry, TelemetryRecord, check_counter_name,
};
use popmesh_crdt::{DeviceId, Doc, Role, actor_id};
use popmesh_device::gate;
use popmesh_transport::{Gate, Hello, LinkPolicy, Mesh, MeshConfig};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use samod::{DocHandle, DocumentId};
use serde::{Deserialize, Serialize};

mod desk;
mod guard;
mod linker;
mod receipts;
mod shows;

pub use receipts::{RECEIPTS_PAGE_DEFAULT, RECEIPTS_PAGE_MAX, ReceiptPage, ReceiptQuery};

use crate::clock;
use crate::media::{BlobPeer, Media, MediaOptions, PreseedReport};
use crate::site::DataDir;
use crate::store::{EngineStorage, FLUSH_EVERY, Store};
use popmesh_crdt::access::{Access, Pass, PassKind};
use popmesh_crdt::manifest::{ByteRange, Manifest, ManifestError, ManifestRecord, MediaEntry};
use popmesh_crdt::receipt::ReceiptToken;
use popmesh_crdt::settlement::{self, Reconciliation, SettlementRow, SiteReceipt};

/// How often buffered telemetry increments become one Automerge change.
const TELEMETRY_WINDOW_MS: u64 = 5_000;
/// Change events a slow `/v1/events` subscriber may fall behind by before it is told it lagged.
const EVENTS_QUEUE: usize = 4096;
/// How often the librarian looks for documents it could not open yet.
const LIBRARIAN_EVERY: Duration = Duration::from_millis(500);
/// How often the origin confirms the check-ins it has merged.
const CONFIRM_EVERY: Duration = Duration::from_secs(2);
/// How often the watchman compares the peers in reach with those that were, to record incidents.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// How often the media side learns which peers the mesh admits (and so who may fetch blobs).
const BLOB_PEERS_EVERY: Duration = Duration::from_millis(250);

/// What went wrong with a request, in terms the API maps to a status code.
#[derive(Debug)]
pub enum Failure {
    /// The request is malformed (400).
    BadRequest(String),
    /// This device may not do that (403).
    Forbidden(String),
    /// No such show, slot or device (404).
    NotFound(String),
    /// The request conflicts with the site's state: quota spent, idempotency key reused (409).
    Conflict(String),
    /// Well formed, but refused by a business rule: over the risk limits (422).
    Refused(String),
    /// Not possible yet: the directory is not synced, the store failed (503).
    Unavailable(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (Failure::BadRequest(m)
        | Failure::Forbidden(m)
        | Failure::NotFound(m)
        | Failure::Conflict(m)
        | Failure::Refused(m)
        | Failure::Unavailable(m)) = self;
        f.write_str(m)
    }
}

fn internal(e: impl std::fmt::Display) -> Failure {
    Failure::Unavailable(format!("internal error: {e}"))
}

fn stopped(_: samod::Stopped) -> Failure {
    Failure::Unavailable("the document engine is shutting down".into())
}

/// Admission against this device's replica of the directory (`popmesh_device::gate::admit`).
struct SiteGate {
    site_hex: String,
    authority: DeviceId,
    cert: Vec<u8>,
    directory: RwLock<Option<DocumentId>>,
    view: RwLock<Option<DirectoryView>>,
    learned: tokio::sync::Notify,
    /// The UDP port of this device's blob endpoint, said in every hello.
    blob_port: Option<u16>,
    role: Role,
    /// Document id -> the class its sync messages travel in on every link (`popmesh_device::gate::class_of`).
    priorities: Arc<RwLock<std::collections::HashMap<String, u8>>>,
    /// `[uplink] limit_kib_s`, in bytes per second, for links to the origin.
    uplink_limit: Option<u64>,
    /// Bytes queued on each uplink (links to the origin, or every link when this device is the origin).
    uplinks: Mutex<Vec<std::sync::Weak<std::sync::atomic::AtomicU64>>>,
}

/// Who may read and write which document through samod.
///
/// Site devices (peer ids that are device ids, bound to the noise-authenticated key on every mesh link) read and
/// write everything. Anyone else is a kiosk screen on `/v1/sync`: it may read the documents a screen shows
/// (manifests and slots), never write them (its changes are ignored), and gets nothing else. A screen cannot pose
/// as a device: `/v1/sync` refuses peer ids that look like device ids.
fn share_policy(
    screen_docs: Arc<RwLock<std::collections::HashSet<String>>>,
) -> impl Fn(
    samod::DocumentId,
    samod::PeerId,
) -> futures::stream::Iter<std::array::IntoIter<samod::ShareConfig, 1>>
+ Clone
+ Send
+ 'static {
    move |doc: samod::DocumentId, peer: samod::PeerId| {
        let readable = read(&screen_docs).contains(&doc.to_string());
        let config = match gate::share(peer.as_str(), readable) {
            gate::Share::ReadWrite => samod::ShareConfig::read_write(),
            gate::Share::ReadOnly => samod::ShareConfig::read_only().with_announce(false),
            gate::Share::None => samod::ShareConfig::none(),
        };
        futures::stream::iter([config])
    }
}

pub use popmesh_device::gate::is_device_peer;

impl SiteGate {
    /// Reads the directory from this device's store, if it is there (no peer is linked yet: a directory that is
    /// not on disk is not found, and the gate starts without a view).
    async fn preload(&self, repo: &samod::Repo, id: &DocumentId) {
        let found = tokio::time::timeout(Duration::from_secs(5), repo.find(id.clone())).await;
        let Ok(Ok(Some(handle))) = found else {
            return;
        };
        let view = handle
            .with_document_async(|am| {
                Doc::<Directory, &mut Automerge>::attach(am)
                    .map_err(|e| e.to_string())
                    .and_then(|d| d.view().map_err(|e| e.to_string()))
            })
            .await;
        if let Ok(Ok(view)) = view {
            *write(&self.view) = Some(view);
        }
    }

    /// Bytes waiting on the links to the origin.
    fn uplink_backlog(&self) -> u64 {
        let mut links = lock(&self.uplinks);
        links.retain(|w| w.strong_count() > 0);
        links
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .map(|b| b.load(Ordering::Relaxed))
            .fold(0u64, u64::saturating_add)
    }
}

impl Gate for SiteGate {
    fn hello(&self) -> Hello {
        let directory = read(&self.directory).as_ref().map(|d| d.to_string());
        Hello::new(self.site_hex.clone(), &self.cert, directory).with_blobs(self.blob_port)
    }

    fn admit(&self, device: DeviceId, hello: &Hello) -> Result<(), String> {
        let cert = hello.cert_bytes()?;
        let claim = gate::Claim {
            version: hello.v,
            site: &hello.site,
            cert: &cert,
        };
        gate::admit(
            &self.authority,
            &device,
            claim,
            clock::now(),
            read(&self.view).as_ref(),
            popmesh_device::Mutations::none(),
        )
        .map_err(|e| e.to_string())?;
        // A new device learns where the directory is from the first peer it admits.
        if let Some(id) = &hello.directory {
            let mut mine = write(&self.directory);
            if mine.is_none()
                && let Ok(id) = id.parse::<DocumentId>()
            {
                *mine = Some(id);
                self.learned.notify_one();
            }
        }
        Ok(())
    }

    fn link_policy(&self, _device: DeviceId, hello: &Hello) -> LinkPolicy {
        let peer_role = hello
            .cert_bytes()
            .ok()
            .and_then(|b| EnrollmentCert::from_bytes(&b).ok())
            .map(|c| c.role);
        let priorities = self.priorities.clone();
        let classify = move |message: &[u8]| -> u8 {
            match popmesh_transport::outbox::document_id(message) {
                // Handshakes and peer messages go first.
                None => 0,
                Some(id) => read(&priorities).get(id).copied().unwrap_or(1),
            }
        };
        let uplink = self.role == Role::Origin || peer_role == Some(Role::Origin);
        let backlog = uplink.then(|| {
            let b = Arc::new(std::sync::atomic::AtomicU64::new(0));
            lock(&self.uplinks).push(Arc::downgrade(&b));
            b
        });
        LinkPolicy {
            classify: Some(Arc::new(classify)),
            limit: if uplink { self.uplink_limit } else { None },
            backlog,
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|e| e.into_inner())
}

/// The node's own gauges (the mesh registers its own, and libp2p-metrics its own, in the same registry).
#[derive(Debug, Default, Clone)]
struct NodeMetrics {
    documents: Gauge,
    receipts: Gauge,
    unreconciled_minor: Gauge,
    acked_writes: Gauge,
    sampled_out: Counter,
    no_consent: Counter,
    incidents_open: Gauge,
    uplink_backlog: Gauge,
    store_failed: Gauge,
    store_free_bytes: Gauge,
    money_loading: Gauge,
}

impl NodeMetrics {
    fn register(registry: &mut Registry) -> Self {
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
        m
    }
}

/// How `popmesh run` was asked to start.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub mesh: MeshConfig,
    pub limits: RiskLimits,
    pub escrow: crate::config::Escrow,
    /// Receipts per ledger page (one document per page).
    pub receipts_per_page: usize,
    pub media: MediaOptions,
    /// Overload sampling for telemetry.
    pub telemetry: SamplingPolicy,
    /// Bytes per second the link to the origin may carry (none: no cap).
    pub uplink_limit: Option<u64>,
    /// The operator console's alert thresholds.
    pub alerts: crate::config::Alerts,
    /// Where the origin writes the show data (`[warehouse]`).
    pub warehouse: crate::config::Warehouse,
}

/// A running node.
pub struct Node {
    pub dir: DataDir,
    repo: samod::Repo,
    engine: EngineStorage,
    store: Store,
    mesh: Mesh,
    gate: Arc<SiteGate>,
    media: Arc<Media>,
    epoch: u32,
    limits: RiskLimits,
    escrow: crate::config::Escrow,
    receipts_per_page: usize,
    /// Numbers this run's automatic quota transfers (with the epoch, a unique transfer id).
    transfers: std::sync::atomic::AtomicU64,
    /// Open documents by id, with their registered names.
    docs: RwLock<BTreeMap<DocumentId, (DocName, DocHandle)>>,
    directory: RwLock<Option<DocHandle>>,
    /// Serializes creating and registering this device's own documents.
    creating: tokio::sync::Mutex<()>,
    /// The payment desk: its core (`popmesh_device::desk`), waiting clients and ledger pages.
    desk: desk::DeskShell,
    telemetry: Mutex<CounterBuffer>,
    sampler: Mutex<Sampler>,
    /// Peers this device has reached, and the incidents open for those it cannot reach now.
    reached: Mutex<BTreeSet<DeviceId>>,
    /// The rehearsal call this device last answered.
    answered: Mutex<Option<String>>,
    /// Set when any telemetry document changes (where rehearsal calls arrive), so the watchman reads them only then.
    telemetry_changed: Arc<AtomicBool>,
    /// The peers in reach last written to this device's telemetry document.
    sees_written: Mutex<Option<BTreeSet<DeviceId>>>,
    incidents: tokio::sync::Mutex<BTreeMap<DeviceId, Incident>>,
    /// Document changes (local or synced), for `GET /v1/events`.
    events: tokio::sync::broadcast::Sender<DocEvent>,
    metrics: NodeMetrics,
    pub registry: Mutex<Registry>,
    started: Instant,
    /// Wakes the preseeder (a manifest was published here).
    preseed_now: tokio::sync::Notify,
    pub(crate) alerts: crate::config::Alerts,
    /// Documents kiosk screens may read over `/v1/sync` (manifests and slots), by id.
    screen_docs: Arc<RwLock<std::collections::HashSet<String>>>,
    /// Where kiosk screens' WebSocket connections are handed to samod.
    screens: samod::AcceptorHandle,
    /// The background tasks, stopped by [`Node::shutdown`].
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Documents whose acknowledged write failed, and heads known to be on disk (see `change_then`).
    durability: Mutex<popmesh_device::Durability<DocumentId>>,
    /// The mesh addresses last written to this device's telemetry document (see `linker.rs`).
    addrs_written: Mutex<Option<Vec<String>>>,
    /// Decoded ledger pages by document, with the heads they were read at (see `receipts.rs`).
    ledger_cache: Mutex<BTreeMap<DocumentId, receipts::CachedPage>>,
    /// The warehouse sink (the origin, with `[warehouse] postgres_url`).
    warehouse: Option<Arc<crate::warehouse::Sink>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("device", &self.dir.device())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the data file, starts samod and the mesh, and spawns the background tasks.
    pub async fn start(dir: DataDir, options: RunOptions) -> anyhow::Result<Arc<Self>> {
        let store = Store::open(&DataDir::store_path(&dir.root))?;
        let epoch = next_epoch(&store)?;
        let directory_id = match &dir.site.directory {
            Some(id) => Some(id.clone()),
            None => store.meta("directory")?,
        }
        .map(|id| {
            id.parse::<DocumentId>()
                .map_err(|e| anyhow::anyhow!("directory document id {id:?}: {e}"))
        })
        .transpose()?;
        let engine = EngineStorage::new(store.clone());
        let screen_docs: Arc<RwLock<std::collections::HashSet<String>>> = Arc::default();
        let repo = samod::Repo::build_tokio()
            .with_storage(engine.clone())
            .with_peer_id(samod::PeerId::from_string(dir.device().to_hex()))
            .with_share_policy(share_policy(screen_docs.clone()))
            .load()
            .await;
        let mut registry = Registry::with_labels(
            [(
                std::borrow::Cow::Borrowed("device"),
                std::borrow::Cow::Owned(dir.device().short()),
            )]
            .into_iter(),
        );
        let media = Media::start(
            &dir.root.join("blobs"),
            &dir.key,
            dir.cert.role,
            store.clone(),
            options.media,
            &mut registry,
        )
        .await?;
        let gate = Arc::new(SiteGate {
            site_hex: dir.site_id().to_hex(),
            authority: dir.authority,
            cert: dir.cert.to_bytes(),
            directory: RwLock::new(directory_id.clone()),
            view: RwLock::new(None),
            learned: tokio::sync::Notify::new(),
            blob_port: media.port(),
            role: dir.cert.role,
            priorities: Arc::new(RwLock::new(std::collections::HashMap::new())),
            uplink_limit: options.uplink_limit,
            uplinks: Mutex::new(Vec::new()),
        });
        // A device whose data file holds the directory reads it before the mesh starts, so its gate never admits
        // a peer on the certificate chain alone after a restart (a revoked device would get in until the
        // librarian caught up; the simulator found this). Only a device with no directory yet decides on the chain.
        if let Some(id) = &directory_id {
            gate.preload(&repo, id).await;
        }
        let metrics = NodeMetrics::register(&mut registry);
        let warehouse = crate::warehouse::Sink::for_node(
            &dir,
            &options.warehouse,
            &options.telemetry.conversion,
            &store,
            &mut registry,
        )?;
        let mesh = Mesh::start(
            &dir.key,
            options.mesh,
            repo.clone(),
            gate.clone(),
            &mut registry,
        )?;
        let screens = repo
            .make_acceptor(
                samod::Url::parse("ws://kiosk-screens").map_err(|e| anyhow::anyhow!("{e}"))?,
            )
            .map_err(|_| anyhow::anyhow!("the document engine stopped while starting"))?;
        let now = clock::now();
        let node = Arc::new(Self {
            dir,
            repo,
            engine,
            store,
            mesh,
            gate,
            media,
            epoch,
            limits: options.limits,
            escrow: options.escrow,
            receipts_per_page: options.receipts_per_page,
            transfers: std::sync::atomic::AtomicU64::new(0),
            docs: RwLock::new(BTreeMap::new()),
            directory: RwLock::new(None),
            creating: tokio::sync::Mutex::new(()),
            desk: desk::DeskShell::default(),
            telemetry: Mutex::new(CounterBuffer::new(TELEMETRY_WINDOW_MS, now)),
            sampler: Mutex::new(Sampler::new(options.telemetry)),
            reached: Mutex::new(BTreeSet::new()),
            sees_written: Mutex::new(None),
            answered: Mutex::new(None),
            telemetry_changed: Arc::new(AtomicBool::new(true)),
            incidents: tokio::sync::Mutex::new(BTreeMap::new()),
            events: tokio::sync::broadcast::channel(EVENTS_QUEUE).0,
            metrics,
            registry: Mutex::new(registry),
            started: Instant::now(),
            preseed_now: tokio::sync::Notify::new(),
            tasks: Mutex::new(Vec::new()),
            screen_docs,
            screens,
            alerts: options.alerts,
            addrs_written: Mutex::new(None),
            durability: Mutex::default(),
            ledger_cache: Mutex::new(BTreeMap::new()),
            warehouse,
        });
        node.spawn_task(librarian(node.clone()));
        node.spawn_task(flusher(node.clone()));
        let weak = Arc::downgrade(&node);
        node.media.set_gate(Box::new(move |device: &DeviceId| {
            weak.upgrade().is_some_and(|node| node.admits_now(device))
        }));
        node.spawn_task(blob_peers(node.clone()));
        node.spawn_task(preseeder(node.clone()));
        node.spawn_task(watchman(node.clone()));
        node.spawn_task(linker::linker(node.clone()));
        if node.dir.cert.role == Role::Origin {
            node.spawn_task(confirmer(node.clone()));
        }
        if let Some(sink) = node.warehouse.clone() {
            node.spawn_task(crate::warehouse::follow(node.clone(), sink));
        }
        if node.escrow.rebalance_every_secs > 0 {
            node.spawn_task(rebalancer(node.clone()));
        }
        Ok(node)
    }

    fn spawn_task(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        lock(&self.tasks).push(tokio::spawn(task).abort_handle());
    }

    /// Stops the background tasks and the mesh (peers see this device leave), stops samod (which finishes its
    /// storage writes) and makes everything durable.
    pub async fn shutdown(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        self.mesh.stop().await;
        self.media.shutdown().await;
        self.repo.stop().await;
        self.engine.release();
        if let Err(e) = self.store.flush() {
            tracing::error!("final flush failed: {e}");
        }
    }

    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// Whether `device` may have blobs from this device at this instant: the mesh admits it and the directory this
    /// device holds has not revoked it.
    fn admits_now(&self, device: &DeviceId) -> bool {
        let hex = device.to_hex();
        let admitted = self
            .mesh
            .peers()
            .iter()
            .any(|p| p.admitted && p.device == hex);
        let revoked = read(&self.gate.view).as_ref().is_some_and(|v| {
            v.revocation_of(popmesh_crdt::enrollment::RevocationTarget::Device(*device))
                .is_some()
        });
        admitted && !revoked
    }

    pub fn media(&self) -> &Arc<Media> {
        &self.media
    }

    /// Every media manifest this device holds, by name.
    pub async fn manifests(&self) -> Vec<(String, ManifestRecord)> {
        let docs: Vec<(String, DocHandle)> = read(&self.docs)
            .values()
            .filter_map(|(n, h)| match n {
                DocName::Manifest { show } => Some((show.clone(), h.clone())),
                _ => None,
            })
            .collect();
        let mut out = Vec::with_capacity(docs.len());
        for (name, handle) in docs {
            let record = handle
                .with_document_async(|am| {
                    Doc::<Manifest, &mut Automerge>::attach(am).and_then(|d| d.record())
                })
                .await;
            match record {
                Ok(Ok(r)) => out.push((name, r)),
                Ok(Err(e)) => tracing::warn!(manifest = %name, "manifest does not read: {e}"),
                Err(_) => {}
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Publishes media entries (and optionally the fallback and per-role slices) in the manifest `name`, creating
    /// it the first time. Edge boxes and the origin publish; the entries' blobs must be on this device.
    pub async fn publish_manifest(&self, name: &str, spec: ManifestSpec) -> Result<(), Failure> {
        self.edge_or_origin(
            "publish manifests",
            "publish from the site's edge box or the origin",
        )?;
        let doc_name = DocName::Manifest {
            show: name.to_owned(),
        };
        if name.is_empty()
            || !doc_name
                .to_string()
                .parse::<DocName>()
                .is_ok_and(|n| n == doc_name)
        {
            return Err(Failure::BadRequest(format!(
                "manifest name {} must be one non-empty path segment",
                popmesh_crdt::naming::shown(name)
            )));
        }
        let now = clock::now().0;
        let mut entries = Vec::with_capacity(spec.entries.len());
        for e in &spec.entries {
            let hash = crate::media::parse_hash(&e.hash).ok_or_else(|| {
                Failure::BadRequest(format!(
                    "entry {:?}: hash {:?} is not 64 lowercase hex digits",
                    e.name, e.hash
                ))
            })?;
            match self.media.local_size(hash).await {
                Some(size) if size == e.size => {}
                Some(size) => {
                    return Err(Failure::BadRequest(format!(
                        "entry {:?}: blob {} has {size} bytes, not {}",
                        e.name, e.hash, e.size
                    )));
                }
                None => {
                    return Err(Failure::BadRequest(format!(
                        "entry {:?}: blob {} is not on this device; add it with `popmesh blob add` first",
                        e.name, e.hash
                    )));
                }
            }
            entries.push((
                e.name.clone(),
                MediaEntry {
                    hash: e.hash.clone(),
                    size: e.size,
                    mime: e.mime.clone(),
                    ttl_ms: e.ttl_ms,
                    added_at: now,
                    added_by: self.me().to_hex(),
                },
            ));
        }
        let apply = move |d: &mut Doc<Manifest, &mut Automerge>| -> Result<(), ManifestError> {
            for (name, entry) in &entries {
                d.publish(name, entry)?;
            }
            for (role, ranges) in &spec.slices {
                d.set_slices(role, ranges)?;
            }
            if let Some(fallback) = &spec.fallback {
                d.set_fallback(fallback)?;
            }
            Ok(())
        };
        // Whole or nothing: the request is tried on a copy first (of the manifest as it is here, or a new one), so
        // a bad fallback or slice after good entries writes nothing.
        let actor = self.actor();
        let trial = match self.handle_by_name(&doc_name) {
            Some(h) => h
                .with_document_async(|am| am.fork())
                .await
                .map_err(stopped)?,
            None => Doc::create_manifest(actor.clone(), name)
                .map(Doc::into_automerge)
                .map_err(internal)?,
        };
        {
            let mut trial = trial;
            let mut d = Doc::<Manifest, &mut Automerge>::attach_as(&mut trial, actor.clone())
                .map_err(internal)?;
            apply(&mut d).map_err(|e| Failure::BadRequest(e.to_string()))?;
        }
        self.writable()?;
        let handle = self
            .own_document(doc_name, {
                let name = name.to_owned();
                move |actor| {
                    Doc::create_manifest(actor, &name)
                        .map(Doc::into_automerge)
                        .map_err(internal)
                }
            })
            .await?;
        self.change(&handle, move |am| {
            let mut d = Doc::<Manifest, &mut Automerge>::attach_as(am, actor)?;
            apply(&mut d)
        })
        .await?
        .map_err(|e| Failure::BadRequest(e.to_string()))?;
        self.preseed_now.notify_one();
        Ok(())
    }

    /// Refuses what only an edge box or the origin may do: "a kiosk may not `what`; `instead`".
    fn edge_or_origin(&self, what: &str, instead: &str) -> Result<(), Failure> {
        if matches!(self.dir.cert.role, Role::Edge | Role::Origin) {
            return Ok(());
        }
        Err(Failure::Forbidden(format!(
            "a {} may not {what}; {instead}",
            self.dir.cert.role
        )))
    }

    fn me(&self) -> DeviceId {
        self.dir.device()
    }

    fn actor(&self) -> automerge::ActorId {
        actor_id(self.me(), self.epoch)
    }

    fn directory_handle(&self) -> Result<DocHandle, Failure> {
        read(&self.directory).clone().ok_or_else(|| {
            Failure::Unavailable(
                "this device has not received the site directory yet; is a site peer reachable?"
                    .into(),
            )
        })
    }

    pub fn view(&self) -> Result<DirectoryView, Failure> {
        self.directory_handle()?;
        read(&self.gate.view)
            .clone()
            .ok_or_else(|| Failure::Unavailable("the site directory is not readable yet".into()))
    }

    /// Records an open document and forwards its changes to `/v1/events` subscribers.
    fn track(&self, id: DocumentId, name: DocName, handle: DocHandle) {
        {
            let mut docs = write(&self.docs);
            if docs.contains_key(&id) {
                return;
            }
            docs.insert(id.clone(), (name.clone(), handle.clone()));
            write(&self.gate.priorities).insert(id.to_string(), gate::class_of(&name));
            if gate::screen_may_read(&name) {
                write(&self.screen_docs).insert(id.to_string());
            }
        }
        if matches!(name, DocName::Manifest { .. }) {
            // A manifest just opened (synced in from a peer): preseed it now, not at the next tick.
            self.preseed_now.notify_one();
        }
        let events = self.events.clone();
        let (doc, kind) = (name.to_string(), kind_of(&name));
        let telemetry_changed = self.telemetry_changed.clone();
        if kind == "telemetry" {
            telemetry_changed.store(true, Ordering::Release);
        }
        tokio::spawn(async move {
            let mut changes = Box::pin(handle.changes());
            while let Some(change) = futures::StreamExt::next(&mut changes).await {
                if kind == "telemetry" {
                    telemetry_changed.store(true, Ordering::Release);
                }
                let heads = change.new_heads.iter().map(|h| h.to_string()).collect();
                // No subscribers is fine: the event is simply not wanted.
                let _ = events.send(DocEvent {
                    doc: doc.clone(),
                    id: id.to_string(),
                    kind,
                    heads,
                    at_ms: clock::now().0,
                });
            }
        });
    }

    /// Subscribes to document changes.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<DocEvent> {
        self.events.subscribe()
    }

    /// Every open document with its handle (what the warehouse follows).
    pub(crate) fn document_handles(&self) -> Vec<(DocumentId, DocName, DocHandle)> {
        read(&self.docs)
            .iter()
            .map(|(id, (n, h))| (id.clone(), n.clone(), h.clone()))
            .collect()
    }

    /// The warehouse sink, at an origin with `[warehouse] postgres_url`.
    pub fn warehouse(&self) -> Option<&Arc<crate::warehouse::Sink>> {
        self.warehouse.as_ref()
    }

    /// Every open document with its heads, for `GET /v1/documents`.
    pub async fn documents(&self) -> Vec<DocJson> {
        let docs: Vec<(DocumentId, DocName, DocHandle)> = read(&self.docs)
            .iter()
            .map(|(id, (n, h))| (id.clone(), n.clone(), h.clone()))
            .collect();
        let mut out = Vec::with_capacity(docs.len());
        for (id, name, handle) in docs {
            if let Ok(heads) = handle.with_document_async(|am| am.get_heads()).await {
                out.push(DocJson {
                    name: name.to_string(),
                    id: id.to_string(),
                    kind: kind_of(&name),
                    heads: heads.iter().map(|h| h.to_string()).collect(),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn handle_by_name(&self, name: &DocName) -> Option<DocHandle> {
        read(&self.docs)
            .values()
            .find(|(n, _)| n == name)
            .map(|(_, h)| h.clone())
    }

    /// Runs `f` on a document and makes whatever it changed durable before returning.
    async fn change<T: Send + 'static>(
        &self,
        handle: &DocHandle,
        f: impl FnOnce(&mut Automerge) -> T + Send + 'static,
    ) -> Result<T, Failure> {
        self.change_then(handle, f, |_| false).await
    }

    /// [`Node::change`], saving more than the new changes when the answer needs it: the whole document when an
    /// earlier acknowledged write to it failed, and, for a replay (`replay(&out)`: the answer rests on what the
    /// document already held), whatever of it is not known to be on disk. So no answer ever rests on anything
    /// that is not on disk. Heads known durable are kept per document, so a replay saves at most what changed
    /// since the last durable write.
    ///
    /// The change is made on the live document (samod may sync it before the disk answers): a copy merged after
    /// the fsync would give a change that failed to be acknowledged, yet reached the disk, a sequence number the
    /// next change reuses, and Automerge refuses the second on load.
    async fn change_then<T: Send + 'static>(
        &self,
        handle: &DocHandle,
        f: impl FnOnce(&mut Automerge) -> T + Send + 'static,
        replay: impl FnOnce(&T) -> bool + Send + 'static,
    ) -> Result<T, Failure> {
        let id = handle.document_id().clone();
        let known = lock(&self.durability).snapshot(&id);
        let (out, bytes, plan, after) = handle
            .with_document_async(move |am| {
                let before = am.get_heads();
                let out = f(am);
                let plan = known.plan(&before, replay(&out));
                let bytes = match &plan.save {
                    popmesh_device::Save::Whole => am.save(),
                    popmesh_device::Save::After(heads) => am.save_after(heads),
                };
                (out, bytes, plan, am.get_heads())
            })
            .await
            .map_err(stopped)?;
        let acked = if bytes.is_empty() {
            Ok(())
        } else {
            self.ack(&id, bytes).await
        };
        // On failure the change is in memory (and may sync) but not on disk: nothing may be answered from this
        // document until a whole save of it is durable.
        lock(&self.durability).handle_saved(&id, &plan, after, acked.is_ok());
        acked.map(|()| out)
    }

    async fn ack(&self, doc: &DocumentId, bytes: Vec<u8>) -> Result<(), Failure> {
        let store = self.store.clone();
        let doc = doc.to_string();
        tokio::task::spawn_blocking(move || store.put_ack(&doc, &bytes))
            .await
            .map_err(internal)?
            .map_err(|e| {
                Failure::Unavailable(format!(
                    "could not make the write durable, so it was not acknowledged: {e}"
                ))
            })?;
        Ok(())
    }

    async fn change_directory<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Doc<Directory, &mut Automerge>) -> T + Send + 'static,
    ) -> Result<T, Failure> {
        let handle = self.directory_handle()?;
        let actor = self.actor();
        let out = self
            .change(&handle, move |am| {
                Doc::<Directory, &mut Automerge>::attach_as(am, actor).map(|mut d| f(&mut d))
            })
            .await?;
        out.map_err(internal)
    }

    /// This device's own document `name`, created and registered in the directory the first time.
    async fn own_document(
        &self,
        name: DocName,
        make: impl FnOnce(automerge::ActorId) -> Result<Automerge, Failure>,
    ) -> Result<DocHandle, Failure> {
        if let Some(h) = self.handle_by_name(&name) {
            return Ok(h);
        }
        let _guard = self.creating.lock().await;
        if let Some(h) = self.handle_by_name(&name) {
            return Ok(h);
        }
        let view = self.view()?;
        if let Some(id) = view.documents.get(&name.to_string()) {
            // Registered (by an earlier run) but not open yet: open it.
            let id: DocumentId = id.parse().map_err(internal)?;
            let handle = self
                .repo
                .find(id.clone())
                .await
                .map_err(stopped)?
                .ok_or_else(|| {
                    Failure::Unavailable(format!("document {name} is registered but not found"))
                })?;
            self.track(id, name, handle.clone());
            return Ok(handle);
        }
        let content = make(self.actor())?;
        let bytes = content.save();
        let handle = self.repo.create(content).await.map_err(stopped)?;
        let id = handle.document_id().clone();
        self.ack(&id, bytes).await?;
        let key = id.to_string();
        let doc_name = name.clone();
        self.change_directory(move |d| d.register_document(&doc_name, &key))
            .await?
            .map_err(internal)?;
        tracing::info!(%name, %id, "created document");
        self.track(id, name, handle.clone());
        Ok(handle)
    }

    /// `show` if the site has it, or the show on now when none is named.
    fn existing_show(&self, view: &DirectoryView, show: Option<String>) -> Result<String, Failure> {
        let show = match show {
            Some(s) => s,
            None => self.default_show(view)?,
        };
        if view.shows.contains_key(&show) {
            Ok(show)
        } else {
            Err(Failure::NotFound(format!(
                "show {} does not exist at this site",
                popmesh_crdt::naming::shown(&show)
            )))
        }
    }

    fn default_show(&self, view: &DirectoryView) -> Result<String, Failure> {
        // The show whose latest slot starts last: the one on tonight.
        view.shows
            .iter()
            .max_by_key(|(id, show)| {
                (
                    show.slots.values().map(|s| s.starts_at).max(),
                    (*id).clone(),
                )
            })
            .map(|(id, _)| id.clone())
            .ok_or_else(|| {
                Failure::Conflict(
                    "no show is open at this site yet; create one with POST /v1/shows".into(),
                )
            })
    }

    // ----- operations the API offers -----

    /// Every receipt this device holds, from every device's ledger, checked against the directory: every page
    /// of [`Node::receipts_page`] (for the demo and tests; clients page through `GET /v1/receipts`).
    pub async fn receipts(&self) -> Result<Vec<ReceiptJson>, Failure> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .receipts_page(receipts::ReceiptQuery {
                    after,
                    limit: Some(receipts::RECEIPTS_PAGE_MAX),
                    ..receipts::ReceiptQuery::default()
                })
                .await?;
            out.extend(page.receipts);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Signs a pass for the show on now (or `show`): edge boxes and the origin issue, every device checks offline.
    pub async fn issue_pass(
        &self,
        show: Option<String>,
        kind: PassKind,
        subject: &str,
        valid_secs: u64,
    ) -> Result<Pass, Failure> {
        self.edge_or_origin("issue passes", "the edge box or the origin does")?;
        let view = self.view()?;
        let show = match show {
            Some(s) if view.shows.contains_key(&s) => s,
            Some(s) => {
                return Err(Failure::NotFound(format!(
                    "no show {}",
                    popmesh_crdt::naming::shown(&s)
                )));
            }
            None => self.default_show(&view)?,
        };
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(internal)?;
        Pass::issue(
            &self.dir.key,
            self.dir.site_id(),
            id,
            &show,
            kind,
            subject,
            clock::now(),
            valid_secs.saturating_mul(1000),
        )
        .map_err(|e| Failure::BadRequest(e.to_string()))
    }

    fn access_handle(&self, show: &str) -> Result<DocHandle, Failure> {
        self.handle_by_name(&DocName::Access {
            show: show.to_owned(),
        })
        .ok_or_else(|| {
            Failure::Unavailable(format!(
                "the access list of show {} has not reached this device yet",
                popmesh_crdt::naming::shown(show)
            ))
        })
    }

    /// Checks a pass offline at this device's door and records the check-in durably. A refusal says why.
    pub async fn check_in(&self, text: &str, show: Option<String>) -> Result<Pass, Failure> {
        let pass = Pass::from_text(text).map_err(|e| Failure::BadRequest(e.to_string()))?;
        self.writable()?;
        let view = self.view()?;
        let show = self.existing_show(&view, show)?;
        let handle = self.access_handle(&show)?;
        let (me, actor, now) = (self.me(), self.actor(), clock::now());
        let checked = pass.clone();
        let outcome = self
            .change(&handle, move |am| {
                let mut d = Doc::<Access, &mut Automerge>::attach_as(am, actor)
                    .map_err(|e| Failure::Unavailable(e.to_string()))?;
                let record = d.record().map_err(internal)?;
                checked
                    .check(&view, &record, &show, now)
                    .map_err(|e| Failure::Forbidden(format!("refused: {e}")))?;
                d.check_in(&me, &checked, now).map_err(internal)
            })
            .await?;
        outcome?;
        Ok(pass)
    }

    /// Revokes a pass (by its text or its id) on this site: every device refuses it once the revocation syncs.
    pub async fn revoke_pass(&self, pass: &str, reason: &str) -> Result<(), Failure> {
        self.edge_or_origin("revoke passes", "the edge box or the origin does")?;
        if reason.is_empty() || reason.len() > 200 || reason.chars().any(char::is_control) {
            return Err(Failure::BadRequest(
                "reason must be 1 to 200 bytes of text without control characters".into(),
            ));
        }
        let (id, show) = match Pass::from_text(pass) {
            Ok(p) => (p.id_hex(), Some(p.show)),
            Err(_) if pass.len() == 32 && pass.bytes().all(|b| b.is_ascii_hexdigit()) => {
                (pass.to_ascii_lowercase(), None)
            }
            Err(e) => {
                return Err(Failure::BadRequest(format!(
                    "pass: give the pass text or its 32-hex-digit id ({e})"
                )));
            }
        };
        let view = self.view()?;
        let shows: Vec<String> = match show {
            Some(s) => vec![s],
            None => view.shows.keys().cloned().collect(),
        };
        for show in shows {
            let Ok(handle) = self.access_handle(&show) else {
                continue;
            };
            let (me, actor, now, id, reason) = (
                self.me(),
                self.actor(),
                clock::now(),
                id.clone(),
                reason.to_owned(),
            );
            self.change(&handle, move |am| {
                Doc::<Access, &mut Automerge>::attach_as(am, actor)
                    .and_then(|mut d| d.revoke(&me, &id, &reason, now))
            })
            .await?
            .map_err(internal)?;
        }
        Ok(())
    }

    /// At the origin: confirms every check-in it has merged, retiring the passes they used.
    pub async fn confirm_checkins(&self) -> Result<usize, Failure> {
        let handles: Vec<DocHandle> = read(&self.docs)
            .values()
            .filter(|(n, _)| matches!(n, DocName::Access { .. }))
            .map(|(_, h)| h.clone())
            .collect();
        let mut total = 0;
        for handle in handles {
            let pending = handle
                .with_document_async(|am| {
                    Doc::<Access, &mut Automerge>::attach(am)
                        .and_then(|d| d.record())
                        .map(|r| {
                            r.checkins
                                .values()
                                .flat_map(|l| l.keys())
                                .any(|id| !r.confirmed.contains_key(id))
                        })
                })
                .await
                .map_err(stopped)?
                .unwrap_or(false);
            if !pending {
                continue;
            }
            let (actor, now) = (self.actor(), clock::now());
            total += self
                .change(&handle, move |am| {
                    Doc::<Access, &mut Automerge>::attach_as(am, actor)
                        .and_then(|mut d| d.confirm_checkins(now))
                })
                .await?
                .map_err(internal)?;
        }
        Ok(total)
    }

    /// The origin reconciles every receipt it holds (every device, every ledger page) against the processor's
    /// settlement batch `batch`, and marks the matched receipts reconciled in their ledgers, durably, so the site
    /// learns they are settled (and their devices' stored offline totals free up). Receipts that do not verify are
    /// reported with the reason and never matched. A second run over the same batch writes nothing.
    pub async fn reconcile(
        &self,
        batch: &str,
        rows: &[SettlementRow],
    ) -> Result<(Reconciliation, usize), Failure> {
        if self.dir.cert.role != Role::Origin {
            return Err(Failure::Forbidden(format!(
                "a {} may not reconcile; the origin does",
                self.dir.cert.role
            )));
        }
        // Every ledger page the directory registers must be here: a receipt still syncing is not "missing".
        self.all_pages_open(None)?;
        let view = self.view()?;
        let ledgers: Vec<DocHandle> = read(&self.docs)
            .values()
            .filter(|(n, _)| matches!(n, DocName::Ledger { .. }))
            .map(|(_, h)| h.clone())
            .collect();
        let mut receipts = Vec::new();
        let mut home: BTreeMap<String, DocHandle> = BTreeMap::new();
        for handle in ledgers {
            let Some(ledger) = read_ledger(&handle).await? else {
                continue;
            };
            for r in &ledger.receipts {
                receipts.push(SiteReceipt {
                    token: r.token.to_string(),
                    show: r.show.clone(),
                    device: r.device.to_hex(),
                    amount_minor: r.amount_minor,
                    currency: r.currency.clone(),
                    verified: r.verify(&view).map_err(|e| e.to_string()),
                    reconciled: ledger.is_reconciled(&r.token),
                    issuer_revoked: view
                        .revocation_of(RevocationTarget::Device(r.device))
                        .is_some(),
                });
                home.insert(r.token.to_string(), handle.clone());
            }
            for (token, e) in &ledger.malformed {
                receipts.push(SiteReceipt {
                    token: token.clone(),
                    show: ledger.show.clone(),
                    device: ledger.device.to_hex(),
                    amount_minor: 0,
                    currency: String::new(),
                    verified: Err(format!("malformed receipt: {e}")),
                    reconciled: false,
                    issuer_revoked: false,
                });
            }
        }
        let report = settlement::reconcile(&receipts, rows);
        if let Some(sink) = &self.warehouse {
            sink.note_reconciliation(batch, &report).await;
        }
        let mut by_ledger: BTreeMap<DocumentId, (DocHandle, Vec<ReceiptToken>)> = BTreeMap::new();
        for m in report.to_mark() {
            if let (Some(handle), Some(token)) = (home.get(&m.token), ReceiptToken::parse(&m.token))
            {
                by_ledger
                    .entry(handle.document_id().clone())
                    .or_insert_with(|| (handle.clone(), Vec::new()))
                    .1
                    .push(token);
            }
        }
        let mut marked = 0;
        let now = clock::now();
        for (_, (handle, tokens)) in by_ledger {
            let (actor, batch) = (self.actor(), batch.to_owned());
            let n = tokens.len();
            self.change(&handle, move |am| {
                let mut d = Doc::<Ledger, &mut Automerge>::attach_as(am, actor)?;
                for token in &tokens {
                    d.mark_reconciled(token, &batch, now)?;
                }
                Ok::<_, popmesh_crdt::DocError>(())
            })
            .await?
            .map_err(internal)?;
            marked += n;
        }
        tracing::info!(
            batch,
            matched = report.matched.len(),
            marked,
            clean = report.clean(),
            "reconciled the settlement batch"
        );
        Ok((report, marked))
    }

    /// Sets the gauges `/metrics` reports, from counters and lengths (no receipt is read or verified).
    pub async fn refresh_gauges(&self) -> Result<(), Failure> {
        self.metrics
            .store_failed
            .set(i64::from(self.store.has_failed()));
        if let Some(free) = self.store.free_bytes() {
            self.metrics
                .store_free_bytes
                .set(i64::try_from(free).unwrap_or(i64::MAX));
        }
        if let Ok(loading) = self.ledgers_loading() {
            self.metrics.money_loading.set(loading.len() as i64);
        }
        let (ledgers, open): (Vec<DocHandle>, usize) = {
            let docs = read(&self.docs);
            let ledgers = docs
                .values()
                .filter(|(n, _)| matches!(n, DocName::Ledger { .. }))
                .map(|(_, h)| h.clone())
                .collect();
            (ledgers, docs.len())
        };
        let (mut receipts, mut unreconciled) = (0u64, 0u64);
        for handle in ledgers {
            let (count, held) = handle
                .with_document_async(|am| {
                    let d = Doc::<Ledger, &mut Automerge>::attach(am)?;
                    Ok::<_, popmesh_crdt::DocError>((d.receipt_count()?, d.unreconciled_minor()?))
                })
                .await
                .map_err(stopped)?
                .map_err(internal)?;
            receipts = receipts.saturating_add(count as u64);
            unreconciled = unreconciled.saturating_add(held);
        }
        self.metrics.documents.set(open as i64);
        self.metrics.receipts.set(receipts as i64);
        self.metrics.unreconciled_minor.set(unreconciled as i64);
        self.metrics.acked_writes.set(self.store.acks() as i64);
        self.media.refresh_metrics();
        Ok(())
    }

    fn slot_handle(
        &self,
        view: &DirectoryView,
        show: &str,
        slot: &str,
    ) -> Result<DocHandle, Failure> {
        let known = view
            .shows
            .get(show)
            .is_some_and(|s| s.slots.contains_key(slot));
        if !known {
            return Err(Failure::NotFound(format!(
                "show {} has no slot {}",
                popmesh_crdt::naming::shown(show),
                popmesh_crdt::naming::shown(slot)
            )));
        }
        self.handle_by_name(&DocName::Slot {
            show: show.into(),
            slot: slot.into(),
        })
        .ok_or_else(|| {
            Failure::Unavailable(format!(
                "slot {show}/{slot} has not synced to this device yet"
            ))
        })
    }

    /// Books `seats` in a slot against this device's escrow quota. Returns whether the booking is new.
    pub async fn book(
        &self,
        show: &str,
        slot: &str,
        booking: &str,
        seats: u64,
        attendee: Option<String>,
    ) -> Result<bool, Failure> {
        self.writable()?;
        let view = self.view()?;
        let handle = self.slot_handle(&view, show, slot)?;
        let (me, actor, at, booking) = (self.me(), self.actor(), clock::now(), booking.to_owned());
        let outcome = self
            .change(&handle, move |am| {
                Doc::<Slot, &mut Automerge>::attach_as(am, actor)
                    .map_err(EscrowError::Doc)
                    .and_then(|mut d| d.sell_to(me, &booking, seats, at, attendee.as_deref()))
            })
            .await?;
        escrow_outcome(outcome.map(|o| o == SaleOutcome::Recorded))
    }

    /// Gives `seats` of this device's quota in a slot to another device.
    pub async fn transfer(
        &self,
        show: &str,
        slot: &str,
        to: DeviceId,
        transfer: &str,
        seats: u64,
    ) -> Result<(), Failure> {
        self.writable()?;
        let view = self.view()?;
        self.check_trusted(&view, to, "to")?;
        let handle = self.slot_handle(&view, show, slot)?;
        let (me, actor, at, transfer) =
            (self.me(), self.actor(), clock::now(), transfer.to_owned());
        let outcome = self
            .change(&handle, move |am| {
                Doc::<Slot, &mut Automerge>::attach_as(am, actor)
                    .map_err(EscrowError::Doc)
                    .and_then(|mut d| d.transfer(me, to, &transfer, seats, at))
            })
            .await?;
        escrow_outcome(outcome)
    }

    /// Gives seats from this device's quota in each slot to a connected device running low, by the policy in
    /// `popmesh_crdt::escrow::plan_rebalance` (only the giver writes a transfer). Returns the transfers made.
    pub async fn rebalance(&self) -> Result<usize, Failure> {
        let connected: Vec<DeviceId> = self
            .mesh
            .peers()
            .into_iter()
            .filter(|p| p.admitted)
            .filter_map(|p| DeviceId::from_hex(&p.device).ok())
            .collect();
        if connected.is_empty() {
            return Ok(0);
        }
        let slots: Vec<DocHandle> = read(&self.docs)
            .values()
            .filter(|(n, _)| matches!(n, DocName::Slot { .. }))
            .map(|(_, h)| h.clone())
            .collect();
        let mut made = 0;
        for handle in slots {
            let n = self.transfers.fetch_add(1, Ordering::Relaxed);
            let id = format!("rb-{}-{n}", self.epoch);
            let (me, actor, at, low) =
                (self.me(), self.actor(), clock::now(), self.escrow.low_water);
            let connected = connected.clone();
            let moved = self
                .change(&handle, move |am| {
                    let mut doc = Doc::<Slot, &mut Automerge>::attach_as(am, actor)
                        .map_err(EscrowError::Doc)?;
                    let view = doc.view()?;
                    let plan = popmesh_device::rebalancer::plan(
                        &view,
                        &me,
                        &connected,
                        low,
                        popmesh_device::Mutations::none(),
                    );
                    match plan {
                        Some(t) => doc
                            .transfer(me, t.to, &id, t.seats, at)
                            .map(|()| Some((t.to, t.seats))),
                        None => Ok(None),
                    }
                })
                .await?;
            match moved {
                Ok(Some((to, seats))) => {
                    tracing::info!(to = %to.short(), seats, "gave quota to a device running low");
                    made += 1;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("rebalancing a slot failed: {e}"),
            }
        }
        Ok(made)
    }

    /// A slot's availability as this device sees it.
    pub async fn availability(&self, show: &str, slot: &str) -> Result<Availability, Failure> {
        let view = self.view()?;
        let handle = self.slot_handle(&view, show, slot)?;
        let record = view.shows[show].slots[slot].clone();
        let slot_view = handle
            .with_document_async(|am| {
                Doc::<Slot, &mut Automerge>::attach(am)
                    .map_err(|e| e.to_string())
                    .and_then(|d| d.view().map_err(|e| e.to_string()))
            })
            .await
            .map_err(stopped)?
            .map_err(internal)?;
        let me = self.me().to_hex();
        let devices = slot_view
            .devices()
            .into_iter()
            .map(|d| {
                let entry = DeviceSeats {
                    grant: slot_view.grant(&d),
                    sold: slot_view.sold(&d),
                    available: slot_view.available(&d),
                };
                (d, entry)
            })
            .collect();
        Ok(Availability {
            show: show.into(),
            slot: slot.into(),
            label: record.label,
            starts_at: record.starts_at,
            capacity: record.capacity,
            sold: slot_view.total_sold(),
            remaining: slot_view.remaining(),
            available_here: slot_view.available(&me),
            devices,
        })
    }

    /// A device named by hex id or by its certificate's name, which must be enrolled at this site and trusted now
    /// (not revoked, not expired): seats or money given to anything else would be gone.
    pub fn resolve_device(&self, view: &DirectoryView, who: &str) -> Result<DeviceId, Failure> {
        self.resolve_device_as(view, who, "device")
    }

    /// [`Node::resolve_device`] for the request field `field`, which the error names.
    pub fn resolve_device_as(
        &self,
        view: &DirectoryView,
        who: &str,
        field: &str,
    ) -> Result<DeviceId, Failure> {
        let shown = popmesh_crdt::naming::shown(who);
        let device = match DeviceId::from_hex(who) {
            Ok(id) => id,
            // By name: among the devices trusted now (a stolen `pos-1` revoked, its replacement enrolled as `pos-1`).
            Err(_) => view
                .trusted_devices(clock::now())
                .into_iter()
                .find(|(_, _, name)| name == who)
                .map(|(device, _, _)| device)
                .ok_or_else(|| {
                    Failure::NotFound(format!(
                        "{field}: no device named {shown} is enrolled at this site"
                    ))
                })?,
        };
        self.check_trusted(view, device, field)?;
        Ok(device)
    }

    /// Refuses a reference to a device that is not enrolled, or no longer trusted.
    fn check_trusted(
        &self,
        view: &DirectoryView,
        device: DeviceId,
        field: &str,
    ) -> Result<(), Failure> {
        view.verify_device(&device, clock::now())
            .map(|_| ())
            .map_err(|e| {
                Failure::NotFound(format!(
                    "{field}: device {} is not a device this site trusts now: {e}",
                    device.to_hex()
                ))
            })
    }

    /// Records an authority-signed revocation and drops the revoked peers at once.
    pub async fn revoke(&self, revocation: Revocation) -> Result<(), Failure> {
        revocation
            .verify(&self.dir.authority, self.dir.site_id())
            .map_err(|e| Failure::BadRequest(format!("revocation refused: {e}")))?;
        // A second revocation of the same device may only narrow what is honoured, never widen it.
        if let Ok(view) = self.view()
            && let Some(before) = view.revocation_of(revocation.target)
        {
            let widens = revocation
                .honoured
                .iter()
                .any(|(show, seq)| before.honoured.get(show).is_none_or(|was| seq > was));
            if widens {
                return Err(Failure::Conflict(
                    "this device is already revoked; a new revocation may not honour more of its receipts".into(),
                ));
            }
        }
        self.change_directory(move |d| d.add_revocation(&revocation))
            .await?
            .map_err(|e| Failure::BadRequest(e.to_string()))?;
        self.refresh_view().await;
        self.mesh.reverify().await;
        Ok(())
    }

    /// Counts telemetry; buffered and written as one change per counter per window. An event about an attendee
    /// counts only if they consented to analytics on this device; under overload, events that are not
    /// conversion signals are sampled ([`Sampler`]).
    pub fn count(
        &self,
        counter: &str,
        by: i64,
        attendee: Option<&str>,
    ) -> Result<Counted, Failure> {
        let bad = |e: String| Failure::BadRequest(e);
        check_counter_name(counter).map_err(|e| bad(e.to_string()))?;
        popmesh_crdt::telemetry::check_increment(by).map_err(|e| bad(e.to_string()))?;
        if let Some(who) = attendee {
            check_pseudonym(who).map_err(|e| bad(format!("attendee: {e}")))?;
            if !self.profile(who)?.is_some_and(|p| p.counts_analytics()) {
                self.metrics.no_consent.inc();
                return Ok(Counted::NoConsent);
            }
        }
        let by = match lock(&self.sampler).sample(counter, by, clock::now()) {
            Sampled::Count(by) => by,
            Sampled::Skip => {
                self.metrics.sampled_out.inc();
                return Ok(Counted::SampledOut);
            }
        };
        lock(&self.telemetry)
            .handle_increment(counter, by)
            .map_err(|e| bad(e.to_string()))?;
        Ok(Counted::Counted(by))
    }

    /// What an attendee told this device (kept here only; see `popmesh_crdt::privacy`).
    pub fn profile(&self, attendee: &str) -> Result<Option<AttendeeProfile>, Failure> {
        check_pseudonym(attendee).map_err(|e| Failure::BadRequest(e.to_string()))?;
        let Some(text) = self
            .store
            .meta(&format!("profile/{attendee}"))
            .map_err(internal)?
        else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| internal(format!("stored profile of {attendee}: {e}")))
    }

    /// Folds one visit's answers into an attendee's profile on this device, durably. Nothing of it syncs.
    pub fn update_profile(
        &self,
        attendee: &str,
        update: &AttendeeProfile,
    ) -> Result<AttendeeProfile, Failure> {
        let mut profile = self.profile(attendee)?.unwrap_or_default();
        profile
            .merge(update, clock::now().0)
            .map_err(|e| Failure::BadRequest(e.to_string()))?;
        let text = serde_json::to_string(&profile).map_err(internal)?;
        self.store
            .set_meta(&format!("profile/{attendee}"), &text)
            .map_err(internal)?;
        Ok(profile)
    }

    /// Every device's counters, summed.
    pub async fn counters(&self) -> Result<BTreeMap<String, i64>, Failure> {
        let handles: Vec<DocHandle> = read(&self.docs)
            .values()
            .filter(|(n, _)| matches!(n, DocName::Telemetry { .. }))
            .map(|(_, h)| h.clone())
            .collect();
        let mut total = BTreeMap::new();
        for h in handles {
            let counters = h
                .with_document_async(|am| {
                    Doc::<Telemetry, &mut Automerge>::attach(am).and_then(|d| d.counters())
                })
                .await
                .map_err(stopped)?;
            for (k, v) in counters.unwrap_or_default() {
                {
                    let slot = total.entry(k).or_insert(0i64);
                    *slot = slot.saturating_add(v);
                }
            }
        }
        for (k, v) in lock(&self.telemetry).pending() {
            {
                let slot = total.entry(k.clone()).or_insert(0i64);
                *slot = slot.saturating_add(*v);
            }
        }
        Ok(total)
    }

    /// This device's telemetry document, created on first use.
    async fn telemetry_handle(&self) -> Result<DocHandle, Failure> {
        let me = self.me();
        self.own_document(DocName::Telemetry { device: me }, move |actor| {
            Doc::create_telemetry(actor, me)
                .map(Doc::into_automerge)
                .map_err(internal)
        })
        .await
    }

    async fn flush_telemetry(&self) -> Result<(), Failure> {
        let Some(increments) = lock(&self.telemetry).poll_flush(clock::now()) else {
            return Ok(());
        };
        if increments.is_empty() {
            return Ok(());
        }
        let handle = self.telemetry_handle().await?;
        let actor = self.actor();
        self.change(&handle, move |am| {
            Doc::<Telemetry, &mut Automerge>::attach_as(am, actor)
                .and_then(|mut d| d.flush(&increments))
        })
        .await?
        .map_err(internal)
    }

    /// Compares the peers in reach with those reached before: a peer that dropped out opens an incident in this
    /// device's telemetry document, and its return resolves it. The show report's MTTR comes from these.
    async fn watch(&self) -> Result<(), Failure> {
        let now: BTreeSet<DeviceId> = self
            .mesh
            .peers()
            .into_iter()
            .filter(|p| p.admitted)
            .filter_map(|p| DeviceId::from_hex(&p.device).ok())
            .collect();
        let lost: Vec<DeviceId> = {
            let mut reached = lock(&self.reached);
            reached.extend(now.iter().copied());
            reached.difference(&now).copied().collect()
        };
        let roles: BTreeMap<DeviceId, Role> = self
            .view()
            .map(|v| v.certificates().map(|c| (c.device, c.role)).collect())
            .unwrap_or_default();
        let mut open = self.incidents.lock().await;
        let mut writes = Vec::new();
        for device in &lost {
            if let Some(role) = roles.get(device).copied()
                && !open.contains_key(device)
            {
                let incident = Incident {
                    kind: if role == Role::Origin {
                        "origin_lost"
                    } else {
                        "peer_lost"
                    }
                    .into(),
                    subject: device.to_hex(),
                    started: clock::now().0,
                    resolved: None,
                };
                tracing::warn!(peer = %device.short(), kind = %incident.kind, "peer out of reach");
                open.insert(*device, incident.clone());
                writes.push(incident);
            }
        }
        let back: Vec<DeviceId> = open.keys().filter(|d| now.contains(d)).copied().collect();
        for device in back {
            if let Some(mut incident) = open.remove(&device) {
                incident.resolved = Some(clock::now().0);
                tracing::info!(
                    peer = %device.short(),
                    after_ms = incident.resolved.unwrap_or(0) - incident.started,
                    "peer back in reach"
                );
                writes.push(incident);
            }
        }
        self.metrics.incidents_open.set(open.len() as i64);
        drop(open);
        let sees = (lock(&self.sees_written).as_ref() != Some(&now))
            .then(|| now.iter().map(|d| d.to_hex()).collect::<Vec<_>>());
        if writes.is_empty() && sees.is_none() {
            return Ok(());
        }
        let handle = self.telemetry_handle().await?;
        let (actor, at) = (self.actor(), clock::now());
        let wrote_sees = sees.is_some();
        self.change(&handle, move |am| {
            let mut d = Doc::<Telemetry, &mut Automerge>::attach_as(am, actor)?;
            writes.iter().try_for_each(|i| d.record_incident(i))?;
            match sees {
                Some(peers) => d.set_sees(peers, at),
                None => Ok(()),
            }
        })
        .await?
        .map_err(internal)?;
        if wrote_sees {
            *lock(&self.sees_written) = Some(now);
        }
        Ok(())
    }

    /// A document's whole content as JSON, by name or id: what an operator (or the privacy test) reads to see
    /// exactly what a document carries.
    pub async fn document_content(&self, which: &str) -> Result<serde_json::Value, Failure> {
        let found = read(&self.docs)
            .iter()
            .find(|(id, (name, _))| id.to_string() == which || name.to_string() == which)
            .map(|(id, (name, h))| (id.to_string(), name.to_string(), h.clone()));
        let Some((id, name, handle)) = found else {
            return Err(Failure::NotFound(format!(
                "no open document is named or numbered {} (GET /v1/documents lists them)",
                popmesh_crdt::naming::shown(which)
            )));
        };
        let content = handle
            .with_document_async(|am| serde_json::to_value(automerge::AutoSerde::from(&*am)))
            .await
            .map_err(stopped)?
            .map_err(internal)?;
        Ok(
            serde_json::json!({ "id": id, "name": name, "kind": kind_of_str(&name), "content": content }),
        )
    }

    /// Hands a kiosk screen's WebSocket connection (already checked not to pose as a device) to samod.
    pub fn accept_screen(&self, transport: samod::Transport) -> Result<(), Failure> {
        self.screens
            .accept(transport)
            .map(|_| ())
            .map_err(|_| Failure::Unavailable("the document engine is shutting down".into()))
    }

    /// Calls a dry rehearsal: every device that syncs the call answers with its clock and readiness.
    pub async fn call_rehearsal(&self) -> Result<RehearsalCall, Failure> {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(internal)?;
        let call = RehearsalCall {
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
            at: clock::now().0,
        };
        let handle = self.telemetry_handle().await?;
        let (actor, written) = (self.actor(), call.clone());
        self.change(&handle, move |am| {
            Doc::<Telemetry, &mut Automerge>::attach_as(am, actor)?.call_rehearsal(written)
        })
        .await?
        .map_err(internal)?;
        Ok(call)
    }

    /// Every device's answer to rehearsal call `id` that has reached this device (device hex -> answer).
    pub async fn rehearsal_answers(&self, id: &str) -> BTreeMap<String, RehearsalAnswer> {
        self.telemetry_records()
            .await
            .into_iter()
            .filter_map(|r| {
                let answer = r.rehearsal_answer.filter(|a| a.id == id)?;
                Some((r.device, answer))
            })
            .collect()
    }

    /// Answers the newest rehearsal call any device made, once. Reads the telemetry documents only when one of
    /// them changed since the last look.
    async fn answer_rehearsal(&self) -> Result<(), Failure> {
        if !self.telemetry_changed.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let records = self.telemetry_records().await;
        let Some(call) = records
            .iter()
            .filter_map(|r| r.rehearsal.clone())
            .max_by_key(|c| (c.at, c.id.clone()))
        else {
            return Ok(());
        };
        if lock(&self.answered).as_deref() == Some(call.id.as_str()) {
            return Ok(());
        }
        let me = self.me().to_hex();
        if records
            .iter()
            .any(|r| r.device == me && r.rehearsal_answer.as_ref().is_some_and(|a| a.id == call.id))
        {
            *lock(&self.answered) = Some(call.id);
            return Ok(());
        }
        let preseed = self.media.report().completeness;
        let answer = RehearsalAnswer {
            id: call.id.clone(),
            at: clock::now().0,
            preseed_permille: (preseed * 1000.0).floor().clamp(0.0, 1000.0) as u32,
            peers: self
                .mesh
                .peers()
                .into_iter()
                .filter(|p| p.admitted)
                .map(|p| p.device)
                .collect(),
        };
        let handle = self.telemetry_handle().await?;
        let actor = self.actor();
        self.change(&handle, move |am| {
            Doc::<Telemetry, &mut Automerge>::attach_as(am, actor)?.answer_rehearsal(answer)
        })
        .await?
        .map_err(internal)?;
        tracing::info!(rehearsal = %call.id, "answered a rehearsal call");
        *lock(&self.answered) = Some(call.id);
        Ok(())
    }

    /// Peers this device reached before and cannot reach now.
    pub async fn open_incidents(&self) -> usize {
        self.incidents.lock().await.len()
    }

    /// The show report over everything this device holds (complete at the origin once it has merged the show).
    pub async fn report(&self, show: Option<String>) -> Result<ShowReport, Failure> {
        let view = self.view()?;
        let show = self.existing_show(&view, show)?;
        let handles: Vec<(DocName, DocHandle)> = read(&self.docs).values().cloned().collect();
        let mut data = ShowData {
            show: show.clone(),
            now: clock::now().0,
            devices: view
                .certificates()
                .map(|c| (c.device.to_hex(), (c.name.clone(), c.role.to_string())))
                .collect(),
            conversion: Some(lock(&self.sampler).policy().clone()),
            ..ShowData::default()
        };
        for (name, handle) in handles {
            match name {
                DocName::Slot { show: s, .. } if s == show => {
                    let slot = handle
                        .with_document_async(|am| {
                            Doc::<Slot, &mut Automerge>::attach(am)
                                .map_err(EscrowError::Doc)
                                .and_then(|d| d.view())
                        })
                        .await
                        .map_err(stopped)?;
                    if let Ok(v) = slot {
                        data.slots.push(v.record);
                    }
                }
                DocName::Ledger { show: s, .. } if s == show => {
                    let Some(ledger) = read_ledger(&handle).await? else {
                        continue;
                    };
                    data.rejected += ledger.malformed.len();
                    for r in &ledger.receipts {
                        if r.verify(&view).is_err() {
                            data.rejected += 1;
                            continue;
                        }
                        let token = r.token.to_string();
                        data.receipts.push(ReportReceipt {
                            device: r.device.to_hex(),
                            amount_minor: r.amount_minor,
                            currency: r.currency.clone(),
                            issued_at: r.issued_at.0,
                            reconciled: ledger.reconciled.contains_key(&token),
                            attendee: ledger.attendees.get(&token).cloned(),
                        });
                    }
                }
                DocName::Access { show: s } => {
                    let record = handle
                        .with_document_async(|am| {
                            Doc::<Access, &mut Automerge>::attach(am).and_then(|d| d.record())
                        })
                        .await
                        .map_err(stopped)?;
                    match record {
                        Ok(r) if s == show => data.access = Some(r),
                        Ok(r) => data.other_access.push(r),
                        Err(e) => tracing::debug!("access list of {s} unreadable: {e}"),
                    }
                }
                _ => {}
            }
        }
        data.telemetry = self.telemetry_records().await;
        Ok(popmesh_crdt::report::build(&data))
    }

    /// Every device's telemetry document this device holds (counters, incidents, who it sees).
    pub async fn telemetry_records(&self) -> Vec<TelemetryRecord> {
        let handles: Vec<DocHandle> = read(&self.docs)
            .values()
            .filter(|(n, _)| matches!(n, DocName::Telemetry { .. }))
            .map(|(_, h)| h.clone())
            .collect();
        let mut out = Vec::new();
        for h in handles {
            let record = h
                .with_document_async(|am| {
                    Doc::<Telemetry, &mut Automerge>::attach(am).and_then(|d| d.record())
                })
                .await;
            if let Ok(Ok(r)) = record {
                out.push(r);
            }
        }
        out
    }

    /// The incidents open on this device now (peers out of reach).
    pub async fn open_incident_list(&self) -> Vec<Incident> {
        self.incidents.lock().await.values().cloned().collect()
    }

    /// Open documents: id, name.
    pub fn open_documents(&self) -> Vec<(DocumentId, DocName)> {
        read(&self.docs)
            .iter()
            .map(|(id, (n, _))| (id.clone(), n.clone()))
            .collect()
    }

    /// Sync lag: per connected peer (device hex), the open documents whose latest heads it has not acknowledged
    /// yet, and how long ago it was last heard from.
    pub async fn sync_lag(&self) -> BTreeMap<String, (Vec<DocumentId>, Option<u64>)> {
        let handles: Vec<(DocumentId, DocHandle)> = read(&self.docs)
            .iter()
            .map(|(id, (_, h))| (id.clone(), h.clone()))
            .collect();
        let mut heads = BTreeMap::new();
        for (id, h) in &handles {
            if let Ok(hs) = h.with_document_async(|am| am.get_heads()).await {
                heads.insert(id.clone(), hs);
            }
        }
        let (conns, _) = self.repo.connected_peers();
        let mut out = BTreeMap::new();
        for c in &conns {
            let samod::ConnectionState::Connected { their_peer_id } = &c.state else {
                continue;
            };
            let behind = heads
                .iter()
                .filter(|(id, ours)| {
                    c.docs.get(*id).and_then(|s| s.last_acked_heads.as_ref()) != Some(*ours)
                })
                .map(|(id, _)| id.clone())
                .collect();
            let heard = c
                .last_received
                .map(|t| (clock::now().0 as i64 - t.timestamp_millis()).max(0) as u64);
            out.insert(their_peer_id.to_string(), (behind, heard));
        }
        out
    }

    /// What `popmesh status` and `GET /v1/status` show.
    pub async fn status(&self) -> Status {
        let lag = self.sync_lag().await;
        self.status_with(&lag).await
    }

    /// [`Node::status`] over sync lag the caller already measured (the console needs it per document too).
    pub async fn status_with(
        &self,
        lag: &BTreeMap<String, (Vec<DocumentId>, Option<u64>)>,
    ) -> Status {
        let ready: Vec<String> = match self.ledgers_loading() {
            Ok(pages) => pages,
            Err(e) => vec![e.to_string()],
        };
        let view = read(&self.gate.view).clone();
        let names: BTreeMap<DeviceId, (String, Role)> = view
            .as_ref()
            .map(|v| {
                v.certificates()
                    .map(|c| (c.device, (c.name.clone(), c.role)))
                    .collect()
            })
            .unwrap_or_default();
        let docs: Vec<(DocumentId, DocName, DocHandle)> = read(&self.docs)
            .iter()
            .map(|(id, (n, h))| (id.clone(), n.clone(), h.clone()))
            .collect();
        let peers = self
            .mesh
            .peers()
            .into_iter()
            .map(|p| {
                let device = DeviceId::from_hex(&p.device).ok();
                let (name, role) = device
                    .and_then(|d| names.get(&d).cloned())
                    .or_else(|| {
                        let hello = p.hello.as_ref()?;
                        let cert = EnrollmentCert::from_bytes(&hello.cert_bytes().ok()?).ok()?;
                        Some((cert.name, cert.role))
                    })
                    .map(|(n, r)| (Some(n), Some(r)))
                    .unwrap_or((None, None));
                let (behind, last_heard_ms_ago) = match lag.get(&p.device) {
                    Some((docs, heard)) => (Some(docs.len()), *heard),
                    None => (None, None),
                };
                PeerJson {
                    device: p.device,
                    name,
                    role,
                    admitted: p.admitted,
                    connections: p.connections,
                    connected_for_ms: p.connected_for_ms,
                    documents_behind: behind,
                    last_heard_ms_ago,
                    why: p.why,
                }
            })
            .collect();
        let mut by_kind: BTreeMap<&'static str, usize> = BTreeMap::new();
        for (_, name, _) in &docs {
            *by_kind.entry(kind_of(name)).or_default() += 1;
        }
        // The registry names every document but the directory itself.
        let registered = view.as_ref().map(|v| v.documents.len() + 1).unwrap_or(0);
        Status {
            device: self.me().to_hex(),
            name: self.dir.cert.name.clone(),
            role: self.dir.cert.role,
            site: self.dir.site_id().to_hex(),
            site_name: self.dir.site.site_name.clone(),
            directory: read(&self.gate.directory).as_ref().map(|d| d.to_string()),
            directory_synced: view.is_some(),
            enrolled: view
                .as_ref()
                .is_some_and(|v| v.verify_device(&self.me(), clock::now()).is_ok()),
            listening: self
                .mesh
                .listening()
                .iter()
                .map(|a| a.to_string())
                .collect(),
            peers,
            documents: DocsJson {
                open: docs.len(),
                registered,
                by_kind,
            },
            shows: view
                .as_ref()
                .map(|v| v.shows.keys().cloned().collect())
                .unwrap_or_default(),
            store: StoreJson {
                path: self.store.path().display().to_string(),
                bytes: self.store.file_bytes(),
                acknowledged_writes: self.store.acks(),
                healthy: !self.store.has_failed(),
                fault: self.store.health(),
                free_bytes: self.store.free_bytes(),
                below_reserve: self.media.below_reserve(),
            },
            ready: ready.is_empty(),
            loading: ready,
            media: self.media.report(),
            media_port: self.media.port(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
        }
    }

    async fn refresh_view(&self) {
        let Ok(handle) = self.directory_handle() else {
            return;
        };
        let view = handle
            .with_document_async(|am| {
                Doc::<Directory, &mut Automerge>::attach(am)
                    .map_err(|e| e.to_string())
                    .and_then(|d| d.view().map_err(|e| e.to_string()))
            })
            .await;
        match view {
            Ok(Ok(v)) => *write(&self.gate.view) = Some(v),
            Ok(Err(e)) => tracing::warn!("the site directory does not read: {e}"),
            Err(_) => {}
        }
    }
}

/// The kind of a document from its name's text (see [`DocName`]'s `Display`).
fn kind_of_str(name: &str) -> &'static str {
    match name.parse::<DocName>() {
        Ok(n) => kind_of(&n),
        Err(_) => "unknown",
    }
}

fn kind_of(name: &DocName) -> &'static str {
    match name {
        DocName::Directory => "directory",
        DocName::Slot { .. } => "slot",
        DocName::Ledger { .. } => "ledger",
        DocName::Telemetry { .. } => "telemetry",
        DocName::Manifest { .. } => "manifest",
        DocName::Access { .. } => "access",
    }
}

fn escrow_outcome<T>(outcome: Result<T, EscrowError>) -> Result<T, Failure> {
    match outcome {
        Ok(v) => Ok(v),
        Err(
            e @ (EscrowError::QuotaSpent { .. }
            | EscrowError::BookingConflict { .. }
            | EscrowError::TransferConflict { .. }
            | EscrowError::Full),
        ) => Err(Failure::Conflict(e.to_string())),
        Err(
            e @ (EscrowError::BadSeatCount(_)
            | EscrowError::BadId(_)
            | EscrowError::SelfTransfer
            | EscrowError::BadTransferSeats
            | EscrowError::OverGranted { .. }
            | EscrowError::BadAttendee(_)),
        ) => Err(Failure::BadRequest(e.to_string())),
        Err(e) => Err(internal(e)),
    }
}

/// A ledger page's unreconciled total, from its counter.
async fn unreconciled_of(handle: &DocHandle) -> Result<u64, Failure> {
    handle
        .with_document_async(|am| {
            Doc::<Ledger, &mut Automerge>::attach(am).and_then(|d| d.unreconciled_minor())
        })
        .await
        .map_err(stopped)?
        .map_err(internal)
}

async fn read_ledger(handle: &DocHandle) -> Result<Option<LedgerView>, Failure> {
    let view = handle
        .with_document_async(|am| Doc::<Ledger, &mut Automerge>::attach(am).and_then(|d| d.view()))
        .await
        .map_err(stopped)?;
    Ok(view.ok())
}

/// A fresh actor epoch for this run, durably counted.
fn next_epoch(store: &Store) -> anyhow::Result<u32> {
    let last = store
        .meta("epoch")?
        .map(|e| e.parse::<u32>())
        .transpose()
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: stored epoch is not a number: {e}",
                store.path().display()
            )
        })?;
    let next = last.map_or(0, |e| e.saturating_add(1));
    store.set_meta("epoch", &next.to_string())?;
    Ok(next)
}

/// Finds the directory, enrolls this device in it, and keeps every registered document open.
async fn librarian(node: Arc<Node>) {
    // 1. Where the directory is: known, or learned from the first admitted peer.
    let directory_id = loop {
        let known = read(&node.gate.directory).clone();
        if let Some(id) = known {
            break id;
        }
        tracing::info!("waiting for a site peer to learn where the site directory is");
        node.gate.learned.notified().await;
    };
    if node.dir.site.directory.is_none()
        && node.store.meta("directory").ok().flatten().is_none()
        && let Err(e) = node.store.set_meta("directory", &directory_id.to_string())
    {
        tracing::error!("could not record the directory id: {e}");
    }
    // 2. Open it: from storage, or from a peer.
    let handle = loop {
        match node.repo.find(directory_id.clone()).await {
            Ok(Some(h)) => break h,
            Ok(None) => tokio::time::sleep(LIBRARIAN_EVERY).await,
            Err(_) => return,
        }
    };
    tracing::info!(%directory_id, "site directory open");
    *write(&node.directory) = Some(handle.clone());
    node.track(directory_id.clone(), DocName::Directory, handle.clone());
    node.refresh_view().await;
    // Peers admitted on the certificate chain alone (this device had no directory) are re-checked at once: one
    // may be revoked, and samod would otherwise sync with it until the directory's next change.
    node.mesh.reverify().await;
    // 3. Make sure this device's certificate is in it (a device that joined from a token adds its own).
    let me = node.me();
    let listed = read(&node.gate.view)
        .as_ref()
        .is_some_and(|v| v.certificates().any(|c| c.device == me));
    if !listed {
        let cert = node.dir.cert.clone();
        match node.change_directory(move |d| d.add_device(&cert)).await {
            Ok(Ok(())) => tracing::info!("enrolled in the site directory"),
            Ok(Err(e)) => tracing::error!("the directory refused this device's certificate: {e}"),
            Err(e) => tracing::error!("could not enroll in the site directory: {e}"),
        }
        node.refresh_view().await;
    }
    // 4. Follow the directory: open what it registers, re-check peers when it changes.
    let mut changes = Box::pin(handle.changes());
    let mut pending: BTreeSet<String> = BTreeSet::new();
    loop {
        node.refresh_view().await;
        node.mesh.reverify().await;
        let registered = read(&node.gate.view)
            .as_ref()
            .map(|v| v.documents.clone())
            .unwrap_or_default();
        for (name, id) in registered {
            let (Ok(parsed_name), Ok(doc_id)) = (name.parse::<DocName>(), id.parse::<DocumentId>())
            else {
                continue;
            };
            if read(&node.docs).contains_key(&doc_id) || pending.contains(&id) {
                continue;
            }
            pending.insert(id.clone());
            let node = node.clone();
            tokio::spawn(async move {
                loop {
                    match node.repo.find(doc_id.clone()).await {
                        Ok(Some(h)) => {
                            node.track(doc_id, parsed_name, h);
                            return;
                        }
                        Ok(None) => tokio::time::sleep(LIBRARIAN_EVERY).await,
                        Err(_) => return,
                    }
                }
            });
        }
        pending.retain(|id| {
            id.parse::<DocumentId>()
                .map(|d| !read(&node.docs).contains_key(&d))
                .unwrap_or(false)
        });
        tokio::select! {
            next = futures::StreamExt::next(&mut changes) => if next.is_none() { return },
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// At the origin: confirms merged check-ins every few seconds, so passes retire without anyone asking.
async fn confirmer(node: Arc<Node>) {
    let mut tick = tokio::time::interval(CONFIRM_EVERY);
    loop {
        tick.tick().await;
        match node.confirm_checkins().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                checkins = n,
                "confirmed check-ins; their passes are retired"
            ),
            Err(e) => tracing::debug!("check-ins not confirmed yet: {e}"),
        }
    }
}

/// Runs [`Node::rebalance`] every `rebalance_every_secs`.
async fn rebalancer(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_secs(node.escrow.rebalance_every_secs));
    loop {
        tick.tick().await;
        if let Err(e) = node.rebalance().await {
            tracing::debug!("no rebalancing now: {e}");
        }
    }
}

/// Tells the media side which peers the mesh admits, and where their blob endpoints are. While documents are queued
/// on the uplink, media does not use it: the origin is no blob source for the site, and the origin fetches nothing.
async fn blob_peers(node: Arc<Node>) {
    let mut tick = tokio::time::interval(BLOB_PEERS_EVERY);
    let i_am_origin = node.dir.cert.role == Role::Origin;
    loop {
        tick.tick().await;
        let backlog = node.gate.uplink_backlog();
        node.metrics.uplink_backlog.set(backlog as i64);
        let peers: Vec<BlobPeer> = node
            .mesh
            .peers()
            .into_iter()
            .filter(|p| p.admitted)
            .filter(|p| {
                let origin = p
                    .hello
                    .as_ref()
                    .and_then(|h| h.cert_bytes().ok())
                    .and_then(|b| EnrollmentCert::from_bytes(&b).ok())
                    .is_some_and(|c| c.role == Role::Origin);
                backlog == 0 || !(origin || i_am_origin)
            })
            .filter_map(|p| {
                let device = DeviceId::from_hex(&p.device).ok()?;
                let port = p.hello.as_ref().and_then(|h| h.blobs);
                let addr = port
                    .zip(p.remote_ip)
                    .map(|(port, ip)| std::net::SocketAddr::new(ip, port));
                Some(BlobPeer { device, addr })
            })
            .collect();
        node.media.set_peers(&peers);
    }
}

/// Runs a preseed pass every `[media] preseed_every_secs`, and at once when a manifest changes.
async fn preseeder(node: Arc<Node>) {
    let every = node.media.preseed_every();
    let mut changes = node.subscribe();
    loop {
        let manifests: Vec<ManifestRecord> =
            node.manifests().await.into_iter().map(|(_, m)| m).collect();
        if let Err(e) = node.media.preseed(&manifests, clock::now().0).await {
            tracing::warn!("preseed pass failed: {e}");
        }
        // Also at once when a manifest changes (published here or synced from a peer).
        let deadline = tokio::time::sleep(every);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = node.preseed_now.notified() => break,
                _ = node.media.wake.notified() => break,
                change = changes.recv() => match change {
                    Ok(c) if c.kind == "manifest" => break,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

/// Records incidents (peers that dropped out of reach, and their return) and answers rehearsal calls.
async fn watchman(node: Arc<Node>) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    loop {
        tick.tick().await;
        if let Err(e) = node.watch().await {
            tracing::debug!("incident not recorded yet: {e}");
        }
        if let Err(e) = node.answer_rehearsal().await {
            // Look again next tick.
            node.telemetry_changed.store(true, Ordering::Release);
            tracing::debug!("rehearsal not answered yet: {e}");
        }
    }
}

/// Makes samod's lazy writes durable every [`FLUSH_EVERY`], and writes buffered telemetry.
async fn flusher(node: Arc<Node>) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        tick.tick().await;
        let store = node.store.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.flush()).await {
            tracing::error!("flush failed: {e}");
        }
        node.heal_store().await;
        node.metrics
            .store_failed
            .set(i64::from(node.store.has_failed()));
        if let Some(free) = node.store.free_bytes() {
            node.metrics
                .store_free_bytes
                .set(i64::try_from(free).unwrap_or(i64::MAX));
        }
        if let Err(e) = node.flush_telemetry().await {
            tracing::debug!("telemetry not written yet: {e}");
        }
    }
}

// ----- JSON shapes -----

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
