//! Media: content-addressed blobs on every peer that needs them (the seed's device cache and site edge).
//!
//! Each node keeps an iroh-blobs [`FsStore`] under `DIR/blobs` and serves it on an iroh [`Endpoint`] keyed by the
//! device key, with relays and internet discovery off. Peers learn each other's blob addresses from the mesh hello
//! (the UDP port) and the mesh connection (the IP), through a [`MemoryLookup`]: no second discovery service.
//!
//! Only devices the mesh currently admits may fetch: a connection from any other endpoint is refused before it can
//! ask for anything, and every request is checked again, so a revoked device loses access within a mesh round.
//!
//! Every blob this node keeps carries a tag (`popmesh/media/{hash}`), so garbage collection never drops a blob a
//! manifest still references (iroh-blobs#247: downloads are untagged until tagged). A blob no manifest references is
//! kept for its time to live after it was last referenced ([`popmesh_crdt::manifest::expired`]), then untagged and
//! collected. A copy that fails its hash check is untagged, collected, and fetched again.

// Lists of byte ranges often hold one range (a whole blob); that is not a mistake here.
#![allow(clippy::single_range_in_vec_init)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt as _;
use iroh::address_lookup::MemoryLookup;
use iroh::endpoint::presets;
use iroh::protocol::Router;
use iroh::{Endpoint, EndpointId, RelayMode};
use iroh_blobs::api::downloader::Downloader;
use iroh_blobs::provider::events::{
    ConnectMode, EventMask, EventSender, RequestMode, ThrottleMode,
};
use iroh_blobs::store::GcConfig;
use iroh_blobs::store::fs::FsStore;
use iroh_blobs::store::fs::options::Options as StoreOptions;
use iroh_blobs::{BlobsProtocol, Hash};
use popmesh_crdt::identity::{DeviceId, Role};
use popmesh_crdt::manifest::Held;
use prometheus_client::registry::Registry;

use self::gatekeeper::gatekeeper;
use self::metrics::MediaMetrics;
use self::store::HELD_META;
use crate::store::Store;

mod fetch;
mod gatekeeper;
mod metrics;
mod preseed;
mod ranges;
mod serve;
mod store;
mod upload;
mod verify;

/// Tags of blobs this node keeps are this prefix and the hash in hex.
pub const TAG_PREFIX: &str = "popmesh/media/";

#[derive(Debug, Clone)]
pub struct MediaOptions {
    /// UDP port of the blob endpoint (0: any).
    pub port: u16,
    pub preseed_every: Duration,
    pub gc_every: Duration,
    /// Time to live of blobs added by hand (and in no manifest).
    pub default_ttl_ms: u64,
    pub verify_on_start: bool,
    /// Cap on the bytes per second this device uploads to peers (`None`: no cap), so media never starves the
    /// site network of the traffic that carries sales.
    pub upload_limit: Option<u64>,
    /// The largest blob an upload may add, in bytes.
    pub upload_max_bytes: u64,
    /// Free space kept for money: below it this device fetches no media and takes no uploads.
    pub reserve_bytes: u64,
    /// The address the blob endpoint binds: the site mesh's own (`[p2p] listen`), so media is reachable exactly
    /// where the mesh is.
    pub bind_ip: std::net::IpAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("no connected site peer serves blobs")]
    NoProviders,
    #[error("no connected peer could provide blob {hash}: {reason}")]
    Unavailable { hash: String, reason: String },
    #[error("the copy of blob {0} on this device is damaged; it is being fetched again")]
    Damaged(String),
    #[error("blob store: {0}")]
    Store(String),
    #[error("the blob is larger than the {max} bytes an upload may be")]
    TooLarge { max: u64 },
    #[error(
        "not enough free disk space: {free} bytes free, and {reserve} are kept for payments and bookings"
    )]
    LowSpace { free: u64, reserve: u64 },
}

/// Why the media side could not start.
#[derive(Debug, thiserror::Error)]
pub enum MediaStartError {
    #[error("blob store {}: {reason}", path.display())]
    BlobStore {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("could not bind the blob endpoint on UDP port {port} ([media] port): {reason}")]
    Bind { port: u16, reason: String },
    #[error(transparent)]
    Meta(#[from] crate::store::StoreError),
    #[error("{HELD_META} in the data file: {0}")]
    Held(String),
}

fn store_err(e: impl std::fmt::Display) -> MediaError {
    MediaError::Store(e.to_string())
}

/// What one preseed pass found.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PreseedReport {
    pub entries: usize,
    pub complete: usize,
    pub missing: usize,
    pub wanted_bytes: u64,
    pub present_bytes: u64,
    /// `present_bytes / wanted_bytes` (1 when nothing is wanted).
    pub completeness: f64,
    pub dropped: usize,
    /// Media is missing but not fetched: free disk space is below the reserve kept for money.
    #[serde(default)]
    pub waiting_for_space: bool,
}

/// Whether the node admits a device right now.
pub type Gate = Box<dyn Fn(&DeviceId) -> bool + Send + Sync>;

/// What a device holds of one blob.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlobState {
    /// `complete`, `partial` or `missing`.
    pub state: &'static str,
    pub size: Option<u64>,
    pub present_bytes: u64,
    /// The copy failed its hash check and waits to be fetched again.
    pub damaged: bool,
}

/// A site peer the mesh admits, and where its blob endpoint is (when it said).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobPeer {
    pub device: DeviceId,
    pub addr: Option<std::net::SocketAddr>,
}

/// The media side of a node.
pub struct Media {
    store: FsStore,
    endpoint: Endpoint,
    router: Router,
    downloader: Downloader,
    lookup: MemoryLookup,
    meta: Store,
    role: Role,
    /// Where this device starts in a provider list, so devices spread their first requests.
    rotation: usize,
    options: MediaOptions,
    /// Admitted peers by endpoint id.
    peers: RwLock<BTreeMap<EndpointId, Option<std::net::SocketAddr>>>,
    held: Mutex<BTreeMap<String, Held>>,
    tagged: Mutex<BTreeSet<Hash>>,
    inflight: Mutex<BTreeSet<Hash>>,
    /// Damaged copies waiting for garbage collection before they are fetched again.
    quarantine: Mutex<BTreeSet<Hash>>,
    report: RwLock<PreseedReport>,
    /// The node's own word on a device at this instant (admitted by the mesh, not revoked), checked on every
    /// blob connection and request besides the peer list, which is refreshed a few times a second.
    gate: std::sync::OnceLock<Gate>,
    /// Wakes the preseeder: the peers serving blobs changed (a fetch that found no provider can try again), or a
    /// damaged copy was found (the report must stop counting it).
    pub wake: tokio::sync::Notify,
    wire_seen: Mutex<(u64, u64)>,
    /// When the held-blob records were last written, and what was written.
    persisted: Mutex<(u64, BTreeMap<String, Held>)>,
    metrics: MediaMetrics,
}

impl std::fmt::Debug for Media {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Media")
            .field("endpoint", &self.endpoint.id())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn endpoint_of(device: &DeviceId) -> Option<EndpointId> {
    EndpointId::from_bytes(&device.0).ok()
}

fn tag_of(hash: &Hash) -> String {
    format!("{TAG_PREFIX}{}", hash.to_hex())
}

/// A manifest's hash text as a blob hash.
pub fn parse_hash(text: &str) -> Option<Hash> {
    let bytes: [u8; 32] = popmesh_crdt::identity::hex_decode(text).ok()?;
    Some(Hash::from_bytes(bytes))
}

impl Media {
    /// Opens the blob store under `root`, binds the blob endpoint and starts serving admitted peers.
    pub async fn start(
        root: &Path,
        key: &popmesh_crdt::identity::SecretKey,
        role: Role,
        meta: Store,
        options: MediaOptions,
        registry: &mut Registry,
    ) -> Result<Arc<Self>, MediaStartError> {
        let mut store_options = StoreOptions::new(root);
        store_options.gc = Some(GcConfig {
            interval: options.gc_every,
            add_protected: None,
        });
        let store = FsStore::load_with_opts(root.join("blobs.db"), store_options)
            .await
            .map_err(|e| MediaStartError::BlobStore {
                path: root.to_owned(),
                reason: e.to_string(),
            })?;
        let lookup = MemoryLookup::new();
        let endpoint = Endpoint::builder(presets::Minimal)
            .secret_key(iroh::SecretKey::from_bytes(&key.seed()))
            .relay_mode(RelayMode::Disabled)
            .address_lookup(lookup.clone())
            .bind_addr(std::net::SocketAddr::new(options.bind_ip, options.port))
            .map_err(|e| MediaStartError::Bind {
                port: options.port,
                reason: e.to_string(),
            })?
            .bind()
            .await
            .map_err(|e| MediaStartError::Bind {
                port: options.port,
                reason: e.to_string(),
            })?;
        let mask = EventMask {
            connected: ConnectMode::Intercept,
            get: RequestMode::Intercept,
            get_many: RequestMode::Intercept,
            throttle: if options.upload_limit.is_some() {
                ThrottleMode::Intercept
            } else {
                ThrottleMode::None
            },
            ..EventMask::DEFAULT
        };
        let (events, requests) = EventSender::channel(64, mask);
        let router = Router::builder(endpoint.clone())
            .accept(iroh_blobs::ALPN, BlobsProtocol::new(&store, Some(events)))
            .spawn();
        let downloader = Downloader::new(&store, &endpoint);
        let held = match meta.meta(HELD_META)? {
            Some(text) => {
                serde_json::from_str(&text).map_err(|e| MediaStartError::Held(e.to_string()))?
            }
            None => BTreeMap::new(),
        };
        let mut tagged = BTreeSet::new();
        let mut tags =
            store
                .tags()
                .list_prefix(TAG_PREFIX)
                .await
                .map_err(|e| MediaStartError::BlobStore {
                    path: root.to_owned(),
                    reason: format!("listing blob tags: {e}"),
                })?;
        while let Some(tag) = tags.next().await {
            if let Ok(tag) = tag {
                tagged.insert(tag.hash);
            }
        }
        let me = key.public().0;
        let media = Arc::new(Self {
            store,
            endpoint,
            router,
            downloader,
            lookup,
            meta,
            role,
            rotation: usize::from(me[0]) ^ usize::from(me[1]),
            options,
            peers: RwLock::new(BTreeMap::new()),
            held: Mutex::new(held),
            tagged: Mutex::new(tagged),
            inflight: Mutex::new(BTreeSet::new()),
            quarantine: Mutex::new(BTreeSet::new()),
            report: RwLock::new(PreseedReport::default()),
            wake: tokio::sync::Notify::new(),
            gate: std::sync::OnceLock::new(),
            wire_seen: Mutex::new((0, 0)),
            persisted: Mutex::new((0, BTreeMap::new())),
            metrics: MediaMetrics::register(registry),
        });
        tokio::spawn(gatekeeper(Arc::downgrade(&media), requests));
        if media.options.verify_on_start {
            let m = media.clone();
            tokio::spawn(async move { m.verify_all().await });
        }
        tracing::info!(
            endpoint = %media.endpoint.id(),
            port = ?media.port(),
            "blob endpoint up"
        );
        Ok(media)
    }

    /// Closes the endpoint and the store.
    pub async fn shutdown(&self) {
        if let Err(e) = self.router.shutdown().await {
            tracing::debug!("blob router shutdown: {e}");
        }
        if let Err(e) = self.store.shutdown().await {
            tracing::debug!("blob store shutdown: {e}");
        }
    }

    /// The UDP port the blob endpoint listens on (said in the mesh hello).
    pub fn port(&self) -> Option<u16> {
        self.endpoint
            .bound_sockets()
            .iter()
            .find(|a| a.is_ipv4())
            .map(|a| a.port())
    }

    pub fn preseed_every(&self) -> Duration {
        self.options.preseed_every
    }

    pub fn report(&self) -> PreseedReport {
        self.report
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The address the blob endpoint is bound to.
    pub fn bind_ip(&self) -> std::net::IpAddr {
        self.options.bind_ip
    }

    pub fn count_fallback(&self) {
        self.metrics.fallbacks.inc();
    }

    /// Blob connections refused so far (for tests and status).
    pub fn refused(&self) -> u64 {
        self.metrics.refused.get()
    }
}
