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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use iroh::address_lookup::MemoryLookup;
use iroh::endpoint::presets;
use iroh::protocol::Router;
use iroh::{Endpoint, EndpointAddr, EndpointId, RelayMode};
use iroh_blobs::api::blobs::BlobStatus;
use iroh_blobs::api::downloader::{DownloadProgressItem, Downloader};
use iroh_blobs::protocol::{ChunkRanges, ChunkRangesExt as _, GetRequest};
use iroh_blobs::provider::events::{
    AbortReason, ConnectMode, EventMask, EventSender, ProviderMessage, RequestMode, ThrottleMode,
};
use iroh_blobs::store::GcConfig;
use iroh_blobs::store::fs::FsStore;
use iroh_blobs::store::fs::options::Options as StoreOptions;
use iroh_blobs::{BlobsProtocol, Hash};
use popmesh_crdt::identity::{DeviceId, Role};
use popmesh_crdt::manifest::{ByteRange, Held, ManifestRecord, MediaEntry, expired};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::store::Store;

/// Tags of blobs this node keeps are this prefix and the hash in hex.
pub const TAG_PREFIX: &str = "popmesh/media/";

/// How far the held-blob records on disk may lag behind memory.
const HELD_PERSIST_SLACK_MS: u64 = 10 * 60_000;

/// Where the held-blob records live in the node's meta table.
const HELD_META: &str = "media.held";

/// A blob is cut into parts only when each part is at least this large.
const PART_BYTES_MIN: u64 = 4 << 20;

/// A blob is cut into at most this many parts (for devices to serve each other).
const PARTS_MAX: usize = 16;

/// Parts of one blob fetched at the same time.
const PARTS_AT_ONCE: usize = 2;

/// How often a part is asked of the peer that owns it before the seed is asked too.
const PEER_TRIES: u32 = 3;

/// The wait before asking a peer again, times the attempts so far.
const PEER_RETRY: Duration = Duration::from_millis(150);

/// Served to HTTP clients in windows of this many bytes, each checked against the hash before it is sent.
const WINDOW_BYTES: u64 = 1 << 20;

/// How long a request for missing media waits for its first bytes before the fallback is served.
const FIRST_BYTES_WAIT: Duration = Duration::from_secs(10);

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

fn store_err(e: impl std::fmt::Display) -> MediaError {
    MediaError::Store(e.to_string())
}

#[derive(Debug, Default)]
struct MediaMetrics {
    fetched: Counter,
    wire_sent: Counter,
    wire_received: Counter,
    served: Counter,
    refused: Counter,
    damaged: Counter,
    fallbacks: Counter,
    completeness: Gauge<f64, AtomicU64>,
    missing: Gauge,
    held: Gauge,
}

impl MediaMetrics {
    fn register(registry: &mut Registry) -> Self {
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

/// Bytes of `ranges` (chunk ranges) inside a blob of `size` bytes.
fn chunk_bytes(ranges: &ChunkRanges, size: u64) -> u64 {
    use bao_tree::ChunkNum;
    let mut total = 0;
    for r in ranges.iter() {
        let (start, end) = match r {
            range_collections::range_set::RangeSetRange::Range(r) => (*r.start, *r.end),
            range_collections::range_set::RangeSetRange::RangeFrom(r) => {
                (*r.start, ChunkNum::chunks(size))
            }
        };
        let (a, b) = (start.to_bytes().min(size), end.to_bytes().min(size));
        total += b.saturating_sub(a);
    }
    total
}

/// Blobs are verified in chunk groups of 16 KiB: a range is stored, fetched and checked in whole groups.
const GROUP_BYTES: u64 = 16 * 1024;

/// The chunk ranges covering byte range `r`, widened to whole chunk groups.
fn group_chunks(r: &Range<u64>) -> ChunkRanges {
    let start = r.start / GROUP_BYTES * GROUP_BYTES;
    let end = r.end.div_ceil(GROUP_BYTES).saturating_mul(GROUP_BYTES);
    ChunkRanges::bytes(start..end)
}

/// The chunk ranges covering byte ranges `wanted`, in whole chunk groups.
fn to_chunks(wanted: &[Range<u64>]) -> ChunkRanges {
    let mut out = ChunkRanges::empty();
    for r in wanted {
        out |= group_chunks(r);
    }
    out
}

/// The one rule for room: an upload of `total` bytes so far stays under `max`, and writing `next` more bytes leaves
/// the `reserve` kept for money free (when the file system says how much is free).
fn room_for(
    total: u64,
    next: u64,
    max: u64,
    reserve: u64,
    free: Option<u64>,
) -> Result<(), MediaError> {
    if total > max {
        return Err(MediaError::TooLarge { max });
    }
    match free {
        Some(free) if free < reserve.saturating_add(next) => {
            Err(MediaError::LowSpace { free, reserve })
        }
        _ => Ok(()),
    }
}

/// Splits byte ranges into at most `parts` pieces of about equal size, on 16 KiB boundaries (bao chunk groups).
fn split(wanted: &[Range<u64>], parts: usize) -> Vec<Vec<Range<u64>>> {
    const ALIGN: u64 = GROUP_BYTES;
    let total: u64 = wanted.iter().fold(0u64, |sum, r| {
        sum.saturating_add(r.end.saturating_sub(r.start))
    });
    let parts = parts
        .clamp(1, PARTS_MAX)
        .min((total / PART_BYTES_MIN).max(1) as usize);
    if parts == 1 {
        return vec![wanted.to_vec()];
    }
    let share = (total / parts as u64).div_ceil(ALIGN) * ALIGN;
    let mut out: Vec<Vec<Range<u64>>> = vec![Vec::new()];
    let mut room = share;
    for r in wanted {
        let mut start = r.start;
        while start < r.end {
            if room == 0 && out.len() < parts {
                out.push(Vec::new());
                room = share;
            }
            let take = if out.len() == parts {
                r.end - start
            } else {
                (r.end - start).min(room)
            };
            if let Some(last) = out.last_mut() {
                last.push(start..start + take);
            }
            start += take;
            room = room.saturating_sub(take);
        }
    }
    out
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
    ) -> anyhow::Result<Arc<Self>> {
        let mut store_options = StoreOptions::new(root);
        store_options.gc = Some(GcConfig {
            interval: options.gc_every,
            add_protected: None,
        });
        let store = FsStore::load_with_opts(root.join("blobs.db"), store_options)
            .await
            .map_err(|e| anyhow::anyhow!("blob store {}: {e}", root.display()))?;
        let lookup = MemoryLookup::new();
        let endpoint = Endpoint::builder(presets::Minimal)
            .secret_key(iroh::SecretKey::from_bytes(&key.seed()))
            .relay_mode(RelayMode::Disabled)
            .address_lookup(lookup.clone())
            .bind_addr(std::net::SocketAddr::new(options.bind_ip, options.port))
            .map_err(|e| anyhow::anyhow!("[media] port {}: {e}", options.port))?
            .bind()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "could not bind the blob endpoint on UDP port {} ([media] port): {e}",
                    options.port
                )
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
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{HELD_META} in the data file: {e}"))?,
            None => BTreeMap::new(),
        };
        let mut tagged = BTreeSet::new();
        let mut tags = store
            .tags()
            .list_prefix(TAG_PREFIX)
            .await
            .map_err(|e| anyhow::anyhow!("listing blob tags: {e}"))?;
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

    /// The peers the mesh admits now, with their blob addresses: only they may fetch from this device, and only
    /// those with an address are asked for blobs.
    pub fn set_peers(&self, peers: &[BlobPeer]) {
        let mut next = BTreeMap::new();
        for p in peers {
            let Some(id) = endpoint_of(&p.device) else {
                continue;
            };
            if let Some(addr) = p.addr {
                self.lookup
                    .set_endpoint_info(EndpointAddr::new(id).with_ip_addr(addr));
            }
            next.insert(id, p.addr);
        }
        let mut mine = self.peers.write().unwrap_or_else(|e| e.into_inner());
        for gone in mine.keys().filter(|k| !next.contains_key(*k)) {
            self.lookup.remove_endpoint_info(*gone);
        }
        let changed = *mine != next;
        *mine = next;
        drop(mine);
        if changed {
            self.wake.notify_one();
        }
    }

    fn admitted(&self, id: &EndpointId) -> bool {
        self.peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
            && self
                .gate
                .get()
                .is_none_or(|gate| gate(&DeviceId(*id.as_bytes())))
    }

    /// Installs the node's check of a device (see [`Media::gate`]); once.
    pub fn set_gate(&self, gate: Gate) {
        let _ = self.gate.set(gate);
    }

    /// Admitted peers with a blob address, in this device's rotation.
    fn providers(&self) -> Vec<EndpointId> {
        let mut list: Vec<EndpointId> = self
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, a)| a.is_some())
            .map(|(id, _)| *id)
            .collect();
        if !list.is_empty() {
            let n = list.len();
            list.rotate_left(self.rotation % n);
        }
        list
    }

    pub fn report(&self) -> PreseedReport {
        self.report
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

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

    /// Writes the held-blob records when the set changed, or when what is on disk is more than
    /// [`HELD_PERSIST_SLACK_MS`] behind (a preseed pass refreshes every referenced blob, and a field kit's flash
    /// should not take a write every two seconds for that; a crash costs at most that much of a time to live).
    fn persist_held(&self, now_ms: u64) {
        let held = lock(&self.held).clone();
        let mut persisted = lock(&self.persisted);
        let same_set = persisted.1.len() == held.len() && persisted.1.keys().eq(held.keys());
        let same_ttls = same_set
            && persisted
                .1
                .values()
                .zip(held.values())
                .all(|(a, b)| a.ttl_ms == b.ttl_ms);
        if same_ttls && now_ms.saturating_sub(persisted.0) < HELD_PERSIST_SLACK_MS {
            return;
        }
        let text = serde_json::to_string(&held).unwrap_or_default();
        match self.meta.set_meta(HELD_META, &text) {
            Ok(()) => *persisted = (now_ms, held),
            Err(e) => tracing::error!("could not record held blobs: {e}"),
        }
    }

    async fn tag(&self, hash: Hash) -> Result<(), MediaError> {
        if lock(&self.tagged).contains(&hash) {
            return Ok(());
        }
        self.store
            .tags()
            .set(tag_of(&hash), hash)
            .await
            .map_err(store_err)?;
        lock(&self.tagged).insert(hash);
        Ok(())
    }

    async fn untag(&self, hash: Hash) -> Result<(), MediaError> {
        self.store
            .tags()
            .delete(tag_of(&hash))
            .await
            .map_err(store_err)?;
        lock(&self.tagged).remove(&hash);
        Ok(())
    }

    /// Adds a blob from a stream of bytes, keeps it for the default time to live, and returns its hash and size.
    /// The address the blob endpoint is bound to.
    pub fn bind_ip(&self) -> std::net::IpAddr {
        self.options.bind_ip
    }

    /// Whether free disk space is below the reserve kept for money (media then fetches and takes nothing).
    pub fn below_reserve(&self) -> bool {
        self.free_bytes()
            .is_some_and(|free| free < self.options.reserve_bytes)
    }

    fn free_bytes(&self) -> Option<u64> {
        self.meta.free_bytes()
    }

    /// Whether `more` bytes fit: under the upload maximum, and leaving the reserve free.
    pub fn check_room(&self, more: u64) -> Result<(), MediaError> {
        room_for(
            more,
            more,
            self.options.upload_max_bytes,
            self.options.reserve_bytes,
            self.free_bytes(),
        )
    }

    /// Adds the blob `data` streams. Stops (and adds nothing) once it passes the upload maximum or would eat into
    /// the free space kept for money; the partial data is untagged and garbage collection removes it.
    pub async fn add(
        &self,
        data: impl futures::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
        now_ms: u64,
    ) -> Result<(Hash, u64), MediaError> {
        let refused: Arc<Mutex<Option<MediaError>>> = Arc::default();
        let (max, reserve, meta) = (
            self.options.upload_max_bytes,
            self.options.reserve_bytes,
            self.meta.clone(),
        );
        let seen = refused.clone();
        let mut total = 0u64;
        let data = futures::StreamExt::map(data, move |chunk| {
            let chunk = chunk?;
            total = total.saturating_add(chunk.len() as u64);
            let room = room_for(total, chunk.len() as u64, max, reserve, meta.free_bytes());
            if let Err(problem) = room {
                let message = problem.to_string();
                *lock(&seen) = Some(problem);
                return Err(std::io::Error::other(message));
            }
            Ok(chunk)
        });
        let added = self.store.blobs().add_stream(data).await.temp_tag().await;
        if let Some(problem) = lock(&refused).take() {
            return Err(problem);
        }
        let tag = added.map_err(store_err)?;
        let hash = tag.hash();
        self.tag(hash).await?;
        drop(tag);
        let size = match self.store.blobs().status(hash).await.map_err(store_err)? {
            BlobStatus::Complete { size } => size,
            other => return Err(MediaError::Store(format!("added blob is {other:?}"))),
        };
        self.keep(hash, self.options.default_ttl_ms, now_ms);
        Ok((hash, size))
    }

    fn keep(&self, hash: Hash, ttl_ms: u64, now_ms: u64) {
        touch(
            &mut lock(&self.held),
            hash.to_hex().to_string(),
            ttl_ms,
            now_ms,
        );
        self.persist_held(now_ms);
    }

    /// The bytes of `wanted` present here.
    async fn present(&self, hash: Hash, wanted: &ChunkRanges, size: u64) -> u64 {
        if lock(&self.quarantine).contains(&hash) {
            return 0;
        }
        match self.store.observe(hash).await {
            Ok(bitfield) => chunk_bytes(&(bitfield.ranges & wanted.clone()), size),
            Err(_) => 0,
        }
    }

    /// Whether all of `range` is here (and the copy is not known damaged).
    async fn covered(&self, hash: Hash, range: Range<u64>) -> bool {
        if lock(&self.quarantine).contains(&hash) {
            return false;
        }
        match self.store.observe(hash).await {
            Ok(bitfield) => {
                let size = bitfield.size();
                // Chunks past the end of the blob are never stored: only ask for those inside it.
                let inside = ChunkRanges::bytes(0..size);
                size > 0
                    && bitfield
                        .ranges
                        .is_superset(&(group_chunks(&(range.start..range.end.min(size))) & inside))
            }
            Err(_) => false,
        }
    }

    /// What this device holds of a blob, for `GET /v1/blobs/{hash}`.
    pub async fn state(&self, hash: Hash) -> Result<BlobState, MediaError> {
        let status = self.store.blobs().status(hash).await.map_err(store_err)?;
        let damaged = lock(&self.quarantine).contains(&hash);
        Ok(match status {
            BlobStatus::NotFound => BlobState {
                state: "missing",
                size: None,
                present_bytes: 0,
                damaged,
            },
            BlobStatus::Partial { size } => {
                let bitfield = self.store.observe(hash).await.map_err(store_err)?;
                BlobState {
                    state: "partial",
                    size,
                    present_bytes: chunk_bytes(&bitfield.ranges, bitfield.size()),
                    damaged,
                }
            }
            BlobStatus::Complete { size } => BlobState {
                state: "complete",
                size: Some(size),
                present_bytes: size,
                damaged,
            },
        })
    }

    /// The size of a blob held here in full (a validated size), if any.
    pub async fn local_size(&self, hash: Hash) -> Option<u64> {
        if lock(&self.quarantine).contains(&hash) {
            return None;
        }
        match self.store.blobs().status(hash).await {
            Ok(BlobStatus::Complete { size }) => Some(size),
            _ => None,
        }
    }

    /// One pass over the manifests: tags what they reference, fetches what is missing from the peers that have it,
    /// and drops what no manifest references once its time to live has passed.
    pub async fn preseed(
        self: &Arc<Self>,
        manifests: &[ManifestRecord],
        now_ms: u64,
    ) -> Result<PreseedReport, MediaError> {
        self.release_quarantine().await;
        let role = self.role.as_str();
        let mut report = PreseedReport::default();
        let mut referenced = BTreeSet::new();
        for manifest in manifests {
            for entry in manifest.entries.values() {
                let Some(hash) = parse_hash(&entry.hash) else {
                    continue;
                };
                report.entries += 1;
                referenced.insert(entry.hash.clone());
                touch(
                    &mut lock(&self.held),
                    entry.hash.clone(),
                    entry.ttl_ms,
                    now_ms,
                );
                if lock(&self.quarantine).contains(&hash) {
                    report.missing += 1;
                    report.wanted_bytes = report.wanted_bytes.saturating_add(entry.size);
                    continue;
                }
                self.tag(hash).await?;
                let wanted = wanted_ranges(manifest, role, entry);
                let chunks = to_chunks(&wanted);
                let want: u64 = wanted.iter().fold(0u64, |sum, r| {
                    sum.saturating_add(r.end.saturating_sub(r.start))
                });
                let have = self.present(hash, &chunks, entry.size).await.min(want);
                report.wanted_bytes = report.wanted_bytes.saturating_add(want);
                report.present_bytes = report.present_bytes.saturating_add(have);
                if have < want {
                    report.missing += 1;
                    let seed = DeviceId::from_hex(&entry.added_by)
                        .ok()
                        .and_then(|d| endpoint_of(&d));
                    if self.below_reserve() {
                        // Money first: below the reserve, media waits for space.
                        report.waiting_for_space = true;
                        continue;
                    }
                    self.spawn_fetch(hash, wanted, seed);
                } else {
                    report.complete += 1;
                }
            }
        }
        let drop_now = {
            let held = lock(&self.held);
            expired(held.iter(), &referenced, now_ms)
        };
        for hex in &drop_now {
            if let Some(hash) = parse_hash(hex) {
                self.untag(hash).await?;
            }
            lock(&self.held).remove(hex);
            tracing::info!(hash = %hex, "dropping a blob no manifest references (time to live passed)");
        }
        report.dropped = drop_now.len();
        self.persist_held(now_ms);
        report.completeness = if report.wanted_bytes == 0 {
            1.0
        } else {
            report.present_bytes as f64 / report.wanted_bytes as f64
        };
        self.metrics.completeness.set(report.completeness);
        self.metrics.missing.set(report.missing as i64);
        *self.report.write().unwrap_or_else(|e| e.into_inner()) = report.clone();
        Ok(report)
    }

    fn spawn_fetch(
        self: &Arc<Self>,
        hash: Hash,
        wanted: Vec<Range<u64>>,
        seed: Option<EndpointId>,
    ) {
        if !lock(&self.inflight).insert(hash) {
            return;
        }
        let media = self.clone();
        tokio::spawn(async move {
            let result = media.fetch(hash, &wanted, seed).await;
            lock(&media.inflight).remove(&hash);
            match result {
                Ok(()) => {
                    // The store batches its metadata writes: make this blob's completion durable now, so a
                    // device switched off right after preseeding does not forget it (and fetch it all again).
                    if let Err(e) = media.store.sync_db().await {
                        tracing::warn!(%hash, "blob store not synced: {e}");
                    }
                    tracing::info!(%hash, "preseeded");
                    // A pass now brings the preseed report (and what rehearsals and the console show) up to date.
                    media.wake.notify_one();
                }
                Err(e) => tracing::debug!(%hash, "not preseeded yet: {e}"),
            }
        });
    }

    /// Fetches byte ranges of a blob from the admitted peers, in parts, several at once.
    ///
    /// Swarming: the blob is cut into parts and, when the seed (the device that published the entry) is known,
    /// each device preseeding it owns every k-th part (k = the devices fetching, ranked by id). It takes its own
    /// parts from the seed and every other part from the peer that owns it, asking again a little later while that
    /// peer is still fetching, and falls back to the seed only after [`PEER_TRIES`]. So the seed uploads each byte
    /// about once, and the devices serve each other the rest. Without a known seed, parts rotate over every peer.
    pub async fn fetch(
        &self,
        hash: Hash,
        wanted: &[Range<u64>],
        seed: Option<EndpointId>,
    ) -> Result<(), MediaError> {
        let providers = self.providers();
        if providers.is_empty() {
            return Err(MediaError::NoProviders);
        }
        let parts = split(wanted, PARTS_MAX);
        let seed = seed.filter(|s| providers.contains(s));
        let peers: Vec<EndpointId> = providers
            .iter()
            .copied()
            .filter(|p| Some(*p) != seed)
            .collect();
        // Rank among the devices fetching (the peers and this one), for who owns which part.
        let me = self.endpoint.id();
        let mut fetching = peers.clone();
        fetching.push(me);
        fetching.sort();
        let k = fetching.len();
        let rank = fetching.iter().position(|p| *p == me).unwrap_or(0);
        let owner = |i: usize| fetching[i % k];
        let own = |i: usize| seed.is_none() || owner(i) == me;
        // Own parts first, then the others in the order their owners fetch them.
        let mut queue: std::collections::VecDeque<(usize, u32)> = (0..parts.len())
            .filter(|i| own(*i))
            .chain((0..parts.len()).filter(|i| !own(*i)))
            .map(|i| (i, 0))
            .collect();
        let order_for = |i: usize, tries: u32| -> Vec<EndpointId> {
            let mut order = Vec::with_capacity(providers.len());
            match seed {
                Some(seed) if own(i) => {
                    order.push(seed);
                    order.extend(peers.iter().copied());
                }
                Some(seed) => {
                    order.push(owner(i));
                    if tries >= PEER_TRIES {
                        order.extend(peers.iter().copied().filter(|p| *p != owner(i)));
                        order.push(seed);
                    }
                }
                None => {
                    order.extend(providers.iter().copied());
                    let n = order.len();
                    order.rotate_left((i + rank) % n);
                }
            }
            order
        };
        let fetch_part = |i: usize, tries: u32| {
            let order = order_for(i, tries);
            let request = GetRequest::blob_ranges(hash, to_chunks(&parts[i]));
            let progress = self.downloader.download(request, order);
            let fetched = self.metrics.fetched.clone();
            async move {
                if tries > 0 {
                    // The owner is still fetching this part: give it a moment.
                    tokio::time::sleep(PEER_RETRY * tries).await;
                }
                let mut last = 0u64;
                let mut failure = None;
                match progress.stream().await {
                    Ok(mut items) => {
                        while let Some(item) = items.next().await {
                            match item {
                                DownloadProgressItem::Progress(at) => {
                                    fetched.inc_by(at.saturating_sub(last));
                                    last = last.max(at);
                                }
                                DownloadProgressItem::Error(e) => failure = Some(e.to_string()),
                                DownloadProgressItem::DownloadError => {
                                    failure = Some("every provider asked failed".into());
                                }
                                _ => {}
                            }
                        }
                    }
                    Err(e) => failure = Some(e.to_string()),
                }
                (i, tries, failure)
            }
        };
        let mut running = futures::stream::FuturesUnordered::new();
        let mut last_failure = None;
        loop {
            while running.len() < PARTS_AT_ONCE
                && let Some((i, tries)) = queue.pop_front()
            {
                running.push(fetch_part(i, tries));
            }
            let Some((i, tries, failure)) = running.next().await else {
                break;
            };
            let mut done = true;
            for r in &parts[i] {
                done &= self.covered(hash, r.clone()).await;
            }
            if !done {
                if let Some(f) = failure {
                    last_failure = Some(f);
                }
                if tries < PEER_TRIES + 1 {
                    queue.push_back((i, tries + 1));
                }
            }
        }
        let mut missing = Vec::new();
        for r in wanted {
            if !self.covered(hash, r.clone()).await {
                missing.push(r.clone());
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(MediaError::Unavailable {
            hash: hash.to_hex().to_string(),
            reason: last_failure
                .unwrap_or_else(|| format!("{} ranges still missing", missing.len())),
        })
    }

    /// Fetches a blob of unknown size whole (a hash in no manifest), trying the providers one after another.
    pub async fn fetch_whole(&self, hash: Hash) -> Result<u64, MediaError> {
        if let Some(size) = self.local_size(hash).await {
            return Ok(size);
        }
        let providers = self.providers();
        if providers.is_empty() {
            return Err(MediaError::NoProviders);
        }
        self.tag(hash).await?;
        self.keep(hash, self.options.default_ttl_ms, crate::clock::now().0);
        let result = self.downloader.download(hash, providers).await;
        match (result, self.local_size(hash).await) {
            (_, Some(size)) => {
                self.metrics.fetched.inc_by(size);
                Ok(size)
            }
            (Err(e), None) => Err(MediaError::Unavailable {
                hash: hash.to_hex().to_string(),
                reason: e.to_string(),
            }),
            (Ok(_), None) => Err(MediaError::Unavailable {
                hash: hash.to_hex().to_string(),
                reason: "no provider had all of it".into(),
            }),
        }
    }

    /// Reads `range` of a blob, checking every byte against the hash. A mismatch quarantines the copy.
    async fn read_checked(&self, hash: Hash, range: Range<u64>) -> Result<Bytes, MediaError> {
        let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
        let mut items = self.store.export_bao(hash, group_chunks(&range)).stream();
        while let Some(item) = items.next().await {
            match item {
                bao_tree::io::mixed::EncodedItem::Leaf(leaf) => {
                    let (start, end) = (leaf.offset, leaf.offset + leaf.data.len() as u64);
                    let (a, b) = (start.max(range.start), end.min(range.end));
                    if a < b {
                        out.extend_from_slice(
                            &leaf.data[(a - start) as usize..(b - start) as usize],
                        );
                    }
                }
                bao_tree::io::mixed::EncodedItem::Error(e) => {
                    self.damaged(hash, &e.to_string()).await;
                    return Err(MediaError::Damaged(hash.to_hex().to_string()));
                }
                bao_tree::io::mixed::EncodedItem::Done => break,
                _ => {}
            }
        }
        if (out.len() as u64) < range.end - range.start {
            return Err(MediaError::Store(format!(
                "blob {hash}: read {} of {} bytes",
                out.len(),
                range.end - range.start
            )));
        }
        Ok(out.freeze())
    }

    /// A copy failed its hash check: untag it so garbage collection removes it, and fetch it again after that.
    async fn damaged(&self, hash: Hash, why: &str) {
        if !lock(&self.quarantine).insert(hash) {
            return;
        }
        tracing::warn!(%hash, "the local copy failed its hash check ({why}); fetching it again");
        self.metrics.damaged.inc();
        self.wake.notify_one();
        if let Err(e) = self.untag(hash).await {
            tracing::error!(%hash, "could not untag a damaged blob: {e}");
        }
    }

    /// Lets quarantined blobs be fetched again once garbage collection has removed the damaged copy.
    async fn release_quarantine(&self) {
        let waiting: Vec<Hash> = lock(&self.quarantine).iter().copied().collect();
        for hash in waiting {
            if matches!(
                self.store.blobs().status(hash).await,
                Ok(BlobStatus::NotFound)
            ) {
                lock(&self.quarantine).remove(&hash);
                tracing::info!(%hash, "damaged copy removed; fetching it again");
            }
        }
    }

    /// Checks every complete blob this device keeps against its hash.
    async fn verify_all(&self) {
        let hashes: Vec<Hash> = lock(&self.tagged).iter().copied().collect();
        let mut checked = 0;
        for hash in hashes {
            let Some(size) = self.local_size(hash).await else {
                continue;
            };
            let mut at = 0;
            while at < size {
                let end = (at + 16 * WINDOW_BYTES).min(size);
                if self.read_checked(hash, at..end).await.is_err() {
                    break;
                }
                at = end;
            }
            checked += 1;
        }
        tracing::info!(blobs = checked, "checked local blobs against their hashes");
    }

    /// Makes `range` of a blob readable here: at once if present, else by fetching it from the peers. Returns when
    /// the first window is here, with the fetch still running for the rest.
    pub async fn open(
        self: &Arc<Self>,
        hash: Hash,
        range: Range<u64>,
    ) -> Result<Option<tokio::task::JoinHandle<Result<(), MediaError>>>, MediaError> {
        if lock(&self.quarantine).contains(&hash) {
            return Err(MediaError::Damaged(hash.to_hex().to_string()));
        }
        if self.covered(hash, range.clone()).await {
            return Ok(None);
        }
        if self.providers().is_empty() {
            return Err(MediaError::NoProviders);
        }
        self.tag(hash).await?;
        self.keep(hash, self.options.default_ttl_ms, crate::clock::now().0);
        let media = self.clone();
        let wanted = vec![range.clone()];
        let fetch = tokio::spawn(async move { media.fetch(hash, &wanted, None).await });
        let first = range.start..(range.start + WINDOW_BYTES).min(range.end);
        let deadline = tokio::time::Instant::now() + FIRST_BYTES_WAIT;
        loop {
            if self.covered(hash, first.clone()).await {
                return Ok(Some(fetch));
            }
            if fetch.is_finished() {
                return match fetch.await {
                    Ok(Err(e)) => Err(e),
                    Ok(Ok(())) => Ok(None),
                    Err(e) => Err(store_err(e)),
                };
            }
            if tokio::time::Instant::now() >= deadline {
                fetch.abort();
                return Err(MediaError::Unavailable {
                    hash: hash.to_hex().to_string(),
                    reason: format!("no bytes within {FIRST_BYTES_WAIT:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Streams `range` of a blob in checked windows, waiting for each while a fetch is bringing it.
    pub fn stream(
        self: &Arc<Self>,
        hash: Hash,
        range: Range<u64>,
        fetch: Option<tokio::task::JoinHandle<Result<(), MediaError>>>,
    ) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
        let media = self.clone();
        tokio::spawn(async move {
            let mut at = range.start;
            while at < range.end {
                let end = (at + WINDOW_BYTES).min(range.end);
                while !media.covered(hash, at..end).await {
                    if fetch.as_ref().is_none_or(|f| f.is_finished()) {
                        let _ = tx
                            .send(Err(std::io::Error::other(format!(
                                "blob {hash}: bytes {at}..{end} could not be fetched"
                            ))))
                            .await;
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                match media.read_checked(hash, at..end).await {
                    Ok(bytes) => {
                        media.metrics.served.inc_by(bytes.len() as u64);
                        if tx.send(Ok(bytes)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return;
                    }
                }
                at = end;
            }
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
    }

    pub fn count_fallback(&self) {
        self.metrics.fallbacks.inc();
    }

    /// Blob connections refused so far (for tests and status).
    pub fn refused(&self) -> u64 {
        self.metrics.refused.get()
    }
}

/// Records that a blob is referenced (or kept by hand) at `now_ms`, with its time to live.
fn touch(held: &mut BTreeMap<String, Held>, hex: String, ttl_ms: u64, now_ms: u64) {
    let h = held.entry(hex).or_insert(Held {
        ttl_ms,
        referenced_at_ms: now_ms,
    });
    h.referenced_at_ms = h.referenced_at_ms.max(now_ms);
    h.ttl_ms = ttl_ms;
}

/// The byte ranges of `entry` a device of `role` preseeds.
fn wanted_ranges(manifest: &ManifestRecord, role: &str, entry: &MediaEntry) -> Vec<Range<u64>> {
    match manifest.preseed_ranges(role, entry) {
        Some(slices) => slices
            .iter()
            .filter(|ByteRange { start, end }| start < end)
            .map(|ByteRange { start, end }| *start..*end)
            .collect(),
        None if entry.size == 0 => Vec::new(),
        None => vec![0..entry.size],
    }
}

/// Answers the blob protocol's questions: may this endpoint connect, may it make this request.
async fn gatekeeper(
    media: std::sync::Weak<Media>,
    mut requests: tokio::sync::mpsc::Receiver<ProviderMessage>,
) {
    let mut connections: HashMap<u64, EndpointId> = HashMap::new();
    // The upload cap: when the next byte may go out, over all peers.
    let next_free = Arc::new(Mutex::new(tokio::time::Instant::now()));
    while let Some(msg) = requests.recv().await {
        let Some(media) = media.upgrade() else {
            return;
        };
        let allowed = |conn: u64| connections.get(&conn).is_some_and(|id| media.admitted(id));
        let verdict = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(AbortReason::Permission)
            }
        };
        match msg {
            ProviderMessage::ClientConnected(msg) => {
                let ok = msg.endpoint_id.is_some_and(|id| media.admitted(&id));
                if ok {
                    if let Some(id) = msg.endpoint_id {
                        connections.insert(msg.connection_id, id);
                    }
                } else {
                    media.metrics.refused.inc();
                    tracing::warn!(
                        endpoint = ?msg.endpoint_id,
                        "refused a blob connection from a device the mesh does not admit"
                    );
                }
                msg.tx.send(verdict(ok)).await.ok();
            }
            ProviderMessage::ConnectionClosed(msg) => {
                connections.remove(&msg.connection_id);
            }
            ProviderMessage::GetRequestReceived(msg) => {
                let ok = allowed(msg.connection_id);
                msg.tx.send(verdict(ok)).await.ok();
            }
            ProviderMessage::GetManyRequestReceived(msg) => {
                let ok = allowed(msg.connection_id);
                msg.tx.send(verdict(ok)).await.ok();
            }
            ProviderMessage::Throttle(msg) => {
                let Some(rate) = media.options.upload_limit else {
                    msg.tx.send(Ok(())).await.ok();
                    continue;
                };
                let slot = {
                    let mut next = lock(&next_free);
                    let now = tokio::time::Instant::now();
                    let slot = (*next).max(now);
                    *next = slot + Duration::from_secs_f64(msg.size as f64 / rate as f64);
                    slot
                };
                tokio::spawn(async move {
                    tokio::time::sleep_until(slot).await;
                    msg.tx.send(Ok(())).await.ok();
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_blob_is_split_on_chunk_group_boundaries_and_covers_every_byte() {
        let size = 100 << 20;
        let parts = split(&[0..size], 3);
        assert_eq!(parts.len(), 3);
        let mut at = 0;
        for part in &parts {
            for r in part {
                assert_eq!(r.start, at, "parts are contiguous");
                assert_eq!(r.start % (16 * 1024), 0, "parts start on a chunk group");
                at = r.end;
            }
        }
        assert_eq!(at, size);
        assert_eq!(
            split(&[0..1000], 4),
            vec![vec![0..1000]],
            "small blobs stay whole"
        );
        let slices = split(&[0..(20 << 20), (50 << 20)..(70 << 20)], 4);
        let total: u64 = slices.iter().flatten().map(|r| r.end - r.start).sum();
        assert_eq!(total, 40 << 20);
    }

    #[test]
    fn bytes_of_chunk_ranges_are_clamped_to_the_blob() {
        assert_eq!(chunk_bytes(&ChunkRanges::all(), 5000), 5000);
        assert_eq!(chunk_bytes(&ChunkRanges::bytes(0..2048), 5000), 2048);
        assert_eq!(chunk_bytes(&ChunkRanges::bytes(4096..9000), 5000), 904);
    }
}
