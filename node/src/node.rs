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
use popmesh_crdt::enrollment::{EnrollmentCert, Revocation};
use popmesh_crdt::escrow::{EscrowError, SaleOutcome, Slot};
use popmesh_crdt::ledger::{Ledger, LedgerView};
use popmesh_crdt::privacy::{AttendeeProfile, check_pseudonym};
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
use serde::Serialize;

mod access;
mod authorship;
mod desk;
mod error;
mod guard;
mod librarian;
mod linker;
mod manifests;
mod metrics;
mod receipts;
mod reconcile;
mod show_report;
mod shows;
mod site_gate;
mod slots;
mod status;
mod suggest;
mod tasks;
mod telemetry;
mod trust;
mod views;
pub mod warehouse;
mod watchman;
mod writes;

pub use access::{CheckInError, IssuePassError, RevokePassError};
pub use authorship::Refused;
pub use desk::{PAYMENTS_PER_REQUEST_MAX, PayError};
pub use error::{NotPermitted, ShowError, Unavailable, UnknownDevice};
use librarian::librarian;
pub use manifests::{ManifestUpdate, NewEntry, PublishError};
use metrics::NodeMetrics;
pub use reconcile::ReconcileError;
pub use show_report::ReportError;
pub use shows::{CreateShowError, NewShow, NewSlot};
use site_gate::{Announce, SiteGate, share_policy};
pub use slots::{AvailabilityError, BookError, TransferError, UnknownSlot};
pub use status::DocumentError;
pub use suggest::{Feedback, FeedbackError, Suggestions};
use tasks::*;
pub use telemetry::{CountError, ProfileError};
pub use trust::RevokeError;
pub use views::*;

pub use receipts::{
    CheckedReceipt, RECEIPTS_PAGE_DEFAULT, RECEIPTS_PAGE_MAX, ReceiptPage, ReceiptQuery,
    ReceiptsError,
};

use crate::clock;
use crate::media::{BlobPeer, Media, MediaOptions, PreseedReport};
use crate::site::DataDir;
use crate::store::{EngineStorage, FLUSH_EVERY, Store};
use popmesh_crdt::access::{Access, Pass, PassKind};
use popmesh_crdt::manifest::{ByteRange, Manifest, ManifestError, ManifestRecord, MediaEntry};
use popmesh_crdt::receipt::ReceiptToken;
use popmesh_crdt::settlement::{self, Reconciliation, SettlementRow};

/// How often buffered telemetry increments become one Automerge change.
const TELEMETRY_WINDOW_MS: u64 = 5_000;
/// Change events a slow `/v1/events` subscriber may fall behind by before it is told it lagged.
const EVENTS_QUEUE: usize = 4096;
/// How often the origin confirms the check-ins it has merged.
const CONFIRM_EVERY: Duration = Duration::from_secs(2);
/// How often the watchman compares the peers in reach with those that were, to record incidents.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// How often the media side learns which peers the mesh admits (and so who may fetch blobs).
const BLOB_PEERS_EVERY: Duration = Duration::from_millis(250);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{}: the {what} is not valid: {reason}", path.display())]
    Corrupt {
        path: std::path::PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Media(#[from] crate::media::MediaStartError),
    #[error(transparent)]
    Warehouse(#[from] warehouse::WarehouseError),
    #[error(transparent)]
    Mesh(#[from] popmesh_transport::mesh::MeshError),
    #[error("the document engine stopped while starting")]
    Engine,
}

fn internal(e: impl std::fmt::Display) -> Unavailable {
    Unavailable::internal(e)
}

fn stopped(_: samod::Stopped) -> Unavailable {
    Unavailable::ShuttingDown
}

pub use popmesh_device::gate::is_device_peer;

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|e| e.into_inner())
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

impl RunOptions {
    /// What `popmesh run` (and each node of `popmesh demo`) starts with, given the config and the mesh settings.
    pub fn from_config(
        config: &crate::config::Config,
        mesh: popmesh_transport::MeshConfig,
    ) -> Self {
        let mut media = config.media.options();
        // The blob endpoint binds where the mesh listens (its first IP address), not every interface.
        if let Some(ip) = mesh.listen.iter().find_map(|addr| {
            addr.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::Ip4(ip) => Some(std::net::IpAddr::V4(ip)),
                libp2p::multiaddr::Protocol::Ip6(ip) => Some(std::net::IpAddr::V6(ip)),
                _ => None,
            })
        }) {
            media.bind_ip = ip;
        }
        Self {
            mesh,
            limits: config.payments.limits(),
            escrow: config.escrow.clone(),
            receipts_per_page: config.payments.receipts_per_page,
            media,
            telemetry: config.telemetry.policy(),
            alerts: config.alerts.clone(),
            uplink_limit: (config.uplink.limit_kib_s > 0)
                .then_some(config.uplink.limit_kib_s.saturating_mul(1024)),
            warehouse: config.warehouse.clone(),
        }
    }
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
    /// Suggestion tallies screens reported, until the telemetry flush writes them.
    tallies: Mutex<popmesh_crdt::telemetry::TallyBuffer>,
    sampler: Mutex<Sampler>,
    /// The watchman's core (`popmesh_device::watchman`): peers reached, incidents open, the rehearsal answered.
    watchman: Mutex<popmesh_device::watchman::Watchman>,
    /// Set when any telemetry document changes (where rehearsal calls arrive), so the watchman reads them only then.
    telemetry_changed: Arc<AtomicBool>,
    /// Set when this device's own telemetry document changes (after a start it must be read once), so the
    /// watchman takes up incidents it holds and does not (`Watchman::handle_recorded`).
    own_telemetry_changed: Arc<AtomicBool>,
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
    /// Documents whose acknowledged write failed, and heads known to be on disk (see `change`).
    durability: Mutex<popmesh_device::Durability<DocumentId>>,
    /// The mesh addresses last written to this device's telemetry document (see `linker.rs`).
    addrs_written: Mutex<Option<Vec<String>>>,
    /// Decoded ledger pages by document, with the heads they were read at (see `receipts.rs`).
    ledger_cache: Mutex<BTreeMap<DocumentId, receipts::CachedPage>>,
    /// The warehouse sink (the origin, with `[warehouse] postgres_url`).
    warehouse: Option<Arc<crate::node::warehouse::Sink>>,
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
    pub async fn start(dir: DataDir, options: RunOptions) -> Result<Arc<Self>, StartError> {
        let store = Store::open(&DataDir::store_path(&dir.root))?;
        let epoch = next_epoch(&store)?;
        let (directory_id, from) = match &dir.site.directory {
            Some(id) => (Some(id.clone()), DataDir::site_path(&dir.root)),
            None => (store.meta("directory")?, store.path().to_owned()),
        };
        let directory_id = directory_id
            .map(|id| {
                id.parse::<DocumentId>().map_err(|e| StartError::Corrupt {
                    path: from.clone(),
                    what: "directory document id",
                    reason: format!("{id:?}: {e}"),
                })
            })
            .transpose()?;
        let engine = EngineStorage::new(store.clone());
        let screen_docs: Arc<RwLock<std::collections::HashSet<String>>> = Arc::default();
        let announce = Announce {
            shape: Arc::default(),
            kinds: Arc::default(),
            directory: Arc::new(RwLock::new(directory_id.clone())),
        };
        let repo = samod::Repo::build_tokio()
            .with_storage(engine.clone())
            .with_peer_id(samod::PeerId::from_string(dir.device().to_hex()))
            .with_share_policy(share_policy(screen_docs.clone(), announce.clone()))
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
        let (view, directory_shared) = (Arc::new(RwLock::new(None)), announce.directory.clone());
        let (judge, refusals) = authorship::Judge::new(
            view.clone(),
            directory_shared.clone(),
            announce.kinds.clone(),
            &mut registry,
        );
        let gate = Arc::new(SiteGate {
            site_hex: dir.site_id().to_hex(),
            authority: dir.authority,
            cert: dir.cert.to_bytes(),
            directory: directory_shared,
            view,
            shape: announce.shape.clone(),
            judge,
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
        let warehouse = crate::node::warehouse::Sink::for_node(
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
                samod::Url::parse("ws://kiosk-screens").expect("a constant URL that parses"),
            )
            .map_err(|_| StartError::Engine)?;
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
            tallies: Mutex::new(popmesh_crdt::telemetry::TallyBuffer::new(
                TELEMETRY_WINDOW_MS,
                now,
            )),
            sampler: Mutex::new(Sampler::new(options.telemetry)),
            watchman: Mutex::new(popmesh_device::watchman::Watchman::new()),
            telemetry_changed: Arc::new(AtomicBool::new(true)),
            own_telemetry_changed: Arc::new(AtomicBool::new(true)),
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
        node.spawn_task(authorship::recorder(node.clone(), refusals));
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
            node.spawn_task(crate::node::warehouse::follow(node.clone(), sink));
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

    pub fn media(&self) -> &Arc<Media> {
        &self.media
    }

    fn me(&self) -> DeviceId {
        self.dir.device()
    }

    fn actor(&self) -> automerge::ActorId {
        actor_id(self.me(), self.epoch)
    }

    fn directory_handle(&self) -> Result<DocHandle, Unavailable> {
        read(&self.directory)
            .clone()
            .ok_or(Unavailable::NoDirectory)
    }

    pub fn view(&self) -> Result<DirectoryView, Unavailable> {
        self.directory_handle()?;
        read(&self.gate.view)
            .clone()
            .ok_or(Unavailable::DirectoryUnreadable)
    }

    /// Checks a client token against this device's directory replica, read in place (the gate does it on every
    /// tokened request, and each long-lived session every 2 s: no copy of the directory each time).
    pub fn check_client_token(
        &self,
        token: &popmesh_crdt::client_token::ClientToken,
    ) -> Result<
        Result<popmesh_crdt::client_token::ClientRole, popmesh_crdt::client_token::TokenError>,
        Unavailable,
    > {
        self.directory_handle()?;
        let view = read(&self.gate.view);
        let view = view.as_ref().ok_or(Unavailable::DirectoryUnreadable)?;
        Ok(token.check(view, clock::now()))
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
    pub fn warehouse(&self) -> Option<&Arc<crate::node::warehouse::Sink>> {
        self.warehouse.as_ref()
    }

    /// `show` if the site has it, or the show on now when none is named.
    fn existing_show(
        &self,
        view: &DirectoryView,
        show: Option<String>,
    ) -> Result<String, ShowError> {
        let show = match show {
            Some(s) => s,
            None => self.default_show(view)?,
        };
        if view.shows.contains_key(&show) {
            Ok(show)
        } else {
            Err(ShowError::Unknown(show))
        }
    }

    fn default_show(&self, view: &DirectoryView) -> Result<String, ShowError> {
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
            .ok_or(ShowError::NoneOpen)
    }

    // ----- operations the API offers -----

    /// Every receipt this device holds, from every device's ledger, checked against the directory: every page
    /// of [`Node::receipts_page`] (for the demo and tests; clients page through `GET /v1/receipts`).
    pub async fn receipts(&self) -> Result<Vec<CheckedReceipt>, ReceiptsError> {
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

    /// Hands a kiosk screen's WebSocket connection (already checked not to pose as a device) to samod.
    pub fn accept_screen(&self, transport: samod::Transport) -> Result<(), Unavailable> {
        self.screens
            .accept(transport)
            .map(|_| ())
            .map_err(|_| Unavailable::ShuttingDown)
    }

    async fn refresh_view(&self) {
        let Ok(handle) = self.directory_handle() else {
            return;
        };
        let previous = read(&self.gate.view).clone();
        match read_view(&handle, previous).await {
            Ok(Ok(v)) => self.gate.set_view(v, clock::now()),
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

/// A ledger page's unreconciled total, from its counter.
async fn unreconciled_of(handle: &DocHandle) -> Result<u64, Unavailable> {
    handle
        .with_document_async(|am| {
            Doc::<Ledger, &mut Automerge>::attach(am).and_then(|d| d.unreconciled_minor())
        })
        .await
        .map_err(stopped)?
        .map_err(internal)
}

async fn read_ledger(handle: &DocHandle) -> Result<Option<LedgerView>, Unavailable> {
    let view = handle
        .with_document_async(|am| Doc::<Ledger, &mut Automerge>::attach(am).and_then(|d| d.view()))
        .await
        .map_err(stopped)?;
    Ok(view.ok())
}

/// A fresh actor epoch for this run, durably counted.
fn next_epoch(store: &Store) -> Result<u32, StartError> {
    let last = store
        .meta("epoch")?
        .map(|e| e.parse::<u32>())
        .transpose()
        .map_err(|e| StartError::Corrupt {
            path: store.path().to_owned(),
            what: "epoch",
            reason: e.to_string(),
        })?;
    let next = last.map_or(0, |e| e.saturating_add(1));
    store.set_meta("epoch", &next.to_string())?;
    Ok(next)
}

// ----- JSON shapes -----

/// The verified view of the directory `handle` holds (`Err` says why it does not read; the engine stopping is
/// `Err` too, as nothing can be decided then).
/// What `previous` (the view this device held) verified is not checked again.
async fn read_view(
    handle: &DocHandle,
    previous: Option<DirectoryView>,
) -> Result<Result<DirectoryView, String>, samod::Stopped> {
    handle
        .with_document_async(move |am| {
            Doc::<Directory, &mut Automerge>::attach(am)
                .map_err(|e| e.to_string())
                .and_then(|d| d.view_after(previous.as_ref()).map_err(|e| e.to_string()))
        })
        .await
}
