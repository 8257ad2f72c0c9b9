//! The warehouse sink: at the origin, the show data of the site goes into PostgreSQL as it merges, for finance and
//! analysts across every site and show (`[warehouse] postgres_url`; the schema is in `node/migrations/`,
//! documented in ARCHITECTURE.md).
//!
//! The follower listens to document changes ([`Node::subscribe`]) and writes the rows of every changed directory,
//! slot, ledger page, access list and telemetry document ([`rows`]), each batch in one transaction together with
//! the heads those rows came from (`document_cursors`, per origin and document). So the database's cursor is never
//! ahead of its rows: after a crash or a SIGKILL mid-transaction, nothing of that batch is committed and its
//! documents are read again; after a crash right after a commit, they compare equal and are skipped. Writing a
//! fact twice changes nothing (natural keys, `ON CONFLICT`), so a redo never duplicates. The cursor lives in the
//! database rather than in this device's store because it describes the database: pointed at a new or restored
//! database, the origin sees no cursor (or an old one) and writes what that database lacks, where a local
//! cursor would believe it had been written.
//!
//! While the database is unreachable the site keeps selling (the follower is a task of its own; payments never
//! wait for it, and it writes to this device's store at most once a second), owes the changed documents in a
//! bounded queue in this device's store ([`queue`]), shows it in `/metrics` (`popmesh_warehouse_*`) and on the
//! console, tries again every `retry_every_secs`, and on reconnecting compares every document with the
//! database's cursors, so it catches up on everything, owed or not.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use popmesh_crdt::docs::DocName;
use popmesh_crdt::settlement::Reconciliation;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio_postgres::NoTls;

use crate::node::DocEvent;
use crate::store::Store;

mod follow;
pub mod queue;
pub mod rows;
pub mod schema;
pub mod write;

pub use follow::follow;
pub use schema::{MIGRATIONS, migrate};

use queue::Queue;
use rows::Rows;
use write::Cursor;

/// How often the follower looks again when nothing woke it (new documents, retries, the queue's persistence).
pub(crate) const TICK: Duration = Duration::from_millis(500);
/// The owed set is written to this device's store at most this often.
pub(crate) const PERSIST_EVERY: Duration = Duration::from_secs(1);
/// Rows (and documents) one transaction carries at most.
pub const TXN_ROWS_MAX: usize = 20_000;
pub const TXN_DOCS_MAX: usize = 64;

/// Why the warehouse could not do something.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error("[warehouse] postgres_url: {0}")]
    BadUrl(String),
    #[error("the warehouse database: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("no connection to the warehouse database: {0}")]
    Pool(String),
    #[error(
        "the warehouse schema is at version {found}; this popmesh writes version {needed}: run `popmesh warehouse migrate`"
    )]
    Schema { found: i32, needed: i32 },
    #[error(
        "migration {version} ({name}) was applied with other SQL than this popmesh carries: the database was changed by another version or by hand"
    )]
    MigrationChanged { version: i32, name: &'static str },
    #[error("this device's data file: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// A PostgreSQL error with the server's own message when there is one (tokio-postgres's `Display` says "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

impl From<deadpool_postgres::PoolError> for WarehouseError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => WarehouseError::Db(e),
            other => WarehouseError::Pool(other.to_string()),
        }
    }
}

/// The connection settings from `[warehouse] postgres_url` (a `postgresql://` URL or `key=value` pairs).
pub fn pg_config(url: &str) -> Result<tokio_postgres::Config, WarehouseError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| WarehouseError::BadUrl(e.to_string()))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    if config.get_application_name().is_none() {
        config.application_name("popmesh");
    }
    Ok(config)
}

/// A pool of `size` connections to `url`.
pub fn pool(url: &str, size: usize) -> Result<Pool, WarehouseError> {
    let manager = Manager::from_config(
        pg_config(url)?,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| WarehouseError::Pool(e.to_string()))
}

/// Whether the warehouse follows documents of this kind (media manifests are not show data).
pub(crate) fn followed(name: &DocName) -> bool {
    !matches!(name, DocName::Manifest { .. })
}

/// The order documents are written in within a pass: definitions first, money last (it is the bulk).
pub(crate) fn order(name: &DocName) -> u8 {
    match name {
        DocName::Directory => 0,
        DocName::Slot { .. } => 1,
        DocName::Access { .. } => 2,
        DocName::Telemetry { .. } => 3,
        DocName::Ledger { .. } => 4,
        DocName::Manifest { .. } => 5,
    }
}

#[derive(Debug, Default, Clone)]
struct SinkMetrics {
    connected: Gauge,
    owed: Gauge,
    overflow: Gauge,
    pending_rows: Gauge,
    oldest_owed_ms: Gauge,
    rows_written: Counter,
    commits: Counter,
    failures: Counter,
    refused: Counter,
}

impl SinkMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry;
        r.register(
            "popmesh_warehouse_connected",
            "1 while the origin reaches the warehouse database with the schema it writes",
            m.connected.clone(),
        );
        r.register(
            "popmesh_warehouse_owed_documents",
            "Documents changed since their rows reached the warehouse (queued in this device's store)",
            m.owed.clone(),
        );
        r.register(
            "popmesh_warehouse_queue_overflow",
            "1 when more than [warehouse] queue_max documents were owed: every document is compared on reconnect",
            m.overflow.clone(),
        );
        r.register(
            "popmesh_warehouse_pending_reconciliation_rows",
            "Reconciliation findings queued for the warehouse",
            m.pending_rows.clone(),
        );
        r.register(
            "popmesh_warehouse_oldest_owed_ms",
            "How long the oldest owed change has waited for the warehouse, in milliseconds",
            m.oldest_owed_ms.clone(),
        );
        r.register(
            "popmesh_warehouse_rows_written",
            "Rows the warehouse inserted or changed for this origin",
            m.rows_written.clone(),
        );
        r.register(
            "popmesh_warehouse_commits",
            "Transactions committed to the warehouse",
            m.commits.clone(),
        );
        r.register(
            "popmesh_warehouse_failures",
            "Attempts to reach or write the warehouse that failed",
            m.failures.clone(),
        );
        r.register(
            "popmesh_warehouse_refused_documents",
            "Documents whose rows the database refused (a value it cannot store); the others are written",
            m.refused.clone(),
        );
        m
    }
}

#[derive(Debug, Default)]
struct Health {
    connected: bool,
    error: Option<String>,
    last_commit_ms: Option<u64>,
}

/// The origin's warehouse sink: its pool, its queue and what the console and `/metrics` show.
pub struct Sink {
    pool: Pool,
    site: String,
    origin: String,
    conversion: Vec<String>,
    store: Store,
    retry: Duration,
    queue: Mutex<Queue>,
    health: Mutex<Health>,
    metrics: SinkMetrics,
    wake: tokio::sync::Notify,
    replay: AtomicBool,
    /// What the follower has compared since connecting, and what it has still to compare although no change was
    /// seen: with the queue and the documents open, what the origin owes as far as it can know.
    known: Mutex<Known>,
}

/// The follower's view of the open documents, as last published (ids as text).
#[derive(Debug, Default)]
pub(crate) struct Known {
    pub(crate) seen: std::collections::HashSet<String>,
    pub(crate) check: std::collections::HashSet<String>,
}

/// The ids of the open documents the warehouse follows.
pub(crate) fn followed_ids(node: &crate::node::Node) -> Vec<String> {
    node.document_handles()
        .into_iter()
        .filter(|(_, n, _)| followed(n))
        .map(|(id, _, _)| id.to_string())
        .collect()
}

/// What the console and `GET /v1/warehouse` show, at an origin with a warehouse.
pub fn status_of(node: &crate::node::Node) -> Option<SinkStatus> {
    node.warehouse().map(|w| w.status(&followed_ids(node)))
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("site", &self.site)
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the console shows of the warehouse.
#[derive(Debug, Clone, Serialize)]
pub struct SinkStatus {
    pub connected: bool,
    pub error: Option<String>,
    /// Documents owed: changed since written, to compare again, or open and not compared yet.
    pub owed_documents: usize,
    /// Of those, the ones queued in this device's store (what a restart remembers).
    pub queued_documents: usize,
    pub overflow: bool,
    pub pending_reconciliation_rows: usize,
    pub oldest_owed_ms_ago: Option<u64>,
    pub last_commit_ms_ago: Option<u64>,
}

impl Sink {
    /// The sink for this node, if it is the origin and `[warehouse] postgres_url` is set (the pool connects lazily,
    /// so a database that is down does not keep the node from starting).
    pub fn for_node(
        dir: &crate::site::DataDir,
        config: &crate::config::Warehouse,
        conversion: &[String],
        store: &Store,
        registry: &mut Registry,
    ) -> Result<Option<Arc<Self>>, WarehouseError> {
        if config.postgres_url.is_empty() {
            return Ok(None);
        }
        if dir.cert.role != popmesh_crdt::Role::Origin {
            tracing::warn!(
                role = %dir.cert.role,
                "[warehouse] postgres_url is set, but only the origin writes to the warehouse: ignored"
            );
            return Ok(None);
        }
        let queue = Queue::load(
            config.queue_max,
            store.meta(queue::OWED_KEY)?.as_deref(),
            store.meta(queue::BATCHES_KEY)?.as_deref(),
        );
        Ok(Some(Arc::new(Self {
            pool: pool(&config.postgres_url, config.pool_size)?,
            site: dir.site_id().to_hex(),
            origin: dir.device().to_hex(),
            conversion: conversion.to_vec(),
            store: store.clone(),
            retry: Duration::from_secs(config.retry_every_secs),
            queue: Mutex::new(queue),
            health: Mutex::default(),
            metrics: SinkMetrics::register(registry),
            wake: tokio::sync::Notify::new(),
            replay: AtomicBool::new(false),
            known: Mutex::default(),
        })))
    }

    /// Documents owed: changed since written (the queue), to compare again, or open and not compared yet.
    fn owed_count(&self, open: &[String]) -> usize {
        let q = lock(&self.queue);
        let k = lock(&self.known);
        let owed = q.owed();
        let mut n = owed.len();
        n += k.check.iter().filter(|id| !owed.contains_key(*id)).count();
        n += open
            .iter()
            .filter(|id| !k.seen.contains(*id) && !k.check.contains(*id) && !owed.contains_key(*id))
            .count();
        n
    }

    /// The sink's state, given the ids of the open documents it follows.
    pub fn status(&self, open: &[String]) -> SinkStatus {
        let now = crate::clock::now().0;
        let owed_documents = self.owed_count(open);
        let q = lock(&self.queue);
        let h = lock(&self.health);
        SinkStatus {
            connected: h.connected,
            error: h.error.clone(),
            owed_documents,
            queued_documents: q.owed().len(),
            overflow: q.overflowed(),
            pending_reconciliation_rows: q.pending_rows(),
            oldest_owed_ms_ago: q.oldest_ms().map(|t| now.saturating_sub(t)),
            last_commit_ms_ago: h.last_commit_ms.map(|t| now.saturating_sub(t)),
        }
    }

    /// Sends every document again (after restoring the database from a backup, say): this origin's cursors are
    /// dropped and every document compared anew. Rows already there stay as they are.
    pub fn replay(&self) {
        self.replay.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn changed(&self, event: &DocEvent) {
        if matches!(
            event.kind,
            "directory" | "slot" | "ledger" | "access" | "telemetry"
        ) {
            lock(&self.queue).owe(&event.id, &event.doc, event.at_ms);
        }
    }

    /// Queues a reconciliation run's findings (durably, before the reconciliation answers).
    pub async fn note_reconciliation(&self, batch: &str, report: &Reconciliation) {
        let row = rows::reconciliation(batch, crate::clock::now().0, report);
        let json = {
            let mut q = lock(&self.queue);
            if !q.add_batch(row) {
                tracing::warn!(
                    batch,
                    "the warehouse queue holds too many reconciliation findings: this batch's are not queued; \
                     reconcile it again once the warehouse is connected"
                );
            }
            q.batches_json()
        };
        let store = self.store.clone();
        let saved =
            tokio::task::spawn_blocking(move || store.set_meta(queue::BATCHES_KEY, &json)).await;
        if !matches!(saved, Ok(Ok(()))) {
            tracing::warn!(
                batch,
                "the reconciliation's findings are queued in memory only: this device's store refused them"
            );
        }
        self.wake.notify_one();
    }

    fn up(&self) {
        let mut h = lock(&self.health);
        if !h.connected {
            tracing::info!("the warehouse database is reachable");
        }
        h.connected = true;
        h.error = None;
        self.metrics.connected.set(1);
    }

    fn down(&self, e: &WarehouseError) {
        let mut h = lock(&self.health);
        let text = e.to_string();
        if h.connected || h.error.as_deref() != Some(text.as_str()) {
            tracing::warn!(
                "the warehouse is not written (the site keeps selling; changes are queued): {text}"
            );
        }
        h.connected = false;
        h.error = Some(text);
        self.metrics.connected.set(0);
        self.metrics.failures.inc();
    }

    /// This origin's cursors, once the schema is known to be current.
    async fn load_cursors(&self) -> Result<HashMap<String, Vec<String>>, WarehouseError> {
        let client = self.pool.get().await?;
        schema::check(&**client).await?;
        let rows = client
            .query(
                "SELECT doc_id, heads FROM document_cursors WHERE origin_device = $1",
                &[&self.origin],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    async fn drop_cursors(&self) -> Result<(), WarehouseError> {
        let client = self.pool.get().await?;
        client
            .execute(
                "DELETE FROM document_cursors WHERE origin_device = $1",
                &[&self.origin],
            )
            .await?;
        Ok(())
    }

    /// Writes `rows` and `cursors` in one transaction.
    async fn commit(&self, rows: &mut Rows, cursors: &[Cursor]) -> Result<u64, WarehouseError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let n = write::rows(&tx, &self.site, &self.origin, rows, cursors).await?;
        tx.commit().await?;
        self.committed(n);
        Ok(n)
    }

    fn committed(&self, n: u64) {
        self.metrics.rows_written.inc_by(n);
        self.metrics.commits.inc();
        lock(&self.health).last_commit_ms = Some(crate::clock::now().0);
    }

    /// Writes the queued reconciliation runs.
    async fn write_batches(&self) -> Result<(), WarehouseError> {
        let pending: Vec<rows::BatchRow> = lock(&self.queue).batches().to_vec();
        if pending.is_empty() {
            return Ok(());
        }
        for b in &pending {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let n = write::batch(&tx, &self.site, &self.origin, b).await?;
            tx.commit().await?;
            self.committed(n);
            lock(&self.queue).batch_written(b);
        }
        let json = lock(&self.queue).batches_json();
        let store = self.store.clone();
        if let Ok(Err(e)) =
            tokio::task::spawn_blocking(move || store.set_meta(queue::BATCHES_KEY, &json)).await
        {
            tracing::warn!(
                "the written reconciliation runs stay queued in this device's store: {e}"
            );
        }
        Ok(())
    }

    /// Persists the owed set if it changed, and refreshes the gauges.
    async fn persist(&self, open: &[String]) {
        let owed = self.owed_count(open);
        let (json, overflow, pending, oldest) = {
            let mut q = lock(&self.queue);
            (
                q.take_dirty(),
                q.overflowed(),
                q.pending_rows(),
                q.oldest_ms(),
            )
        };
        self.metrics.owed.set(owed as i64);
        self.metrics.overflow.set(i64::from(overflow));
        self.metrics.pending_rows.set(pending as i64);
        let now = crate::clock::now().0;
        self.metrics
            .oldest_owed_ms
            .set(oldest.map_or(0, |t| now.saturating_sub(t)) as i64);
        if let Some(json) = json {
            let store = self.store.clone();
            let saved =
                tokio::task::spawn_blocking(move || store.set_meta(queue::OWED_KEY, &json)).await;
            if !matches!(saved, Ok(Ok(()))) {
                tracing::debug!("the warehouse queue was not saved this time");
                lock(&self.queue).mark_dirty();
            }
        }
    }
}
