//! The node's one data file: samod's document storage and the node's own metadata, in redb.
//!
//! Two write paths with different promises:
//! - **samod's own writes** (sync traffic, compaction) commit without fsync ([`Durability::None`]) and are made
//!   durable by the next durable commit, at the latest [`FLUSH_EVERY`] later. A crash loses at most that window of
//!   *synced* data, which peers still hold and send again.
//! - **Acknowledged writes** (a payment, a booking, an enrollment) go through [`Store::put_ack`]: the change bytes
//!   are committed with fsync under samod's own key layout (`<doc>/incremental/<name>`) before the API answers. On
//!   restart samod loads them with the rest of the document, so nothing acknowledged depends on samod's timing.
//!   Acknowledged writes are *group committed*: one committer thread takes every write waiting when it starts a
//!   transaction and makes them durable with one fsync, so concurrent payments share the disk's flush.
//!
//! redb checksums its pages and refuses a damaged file; the error names the file.
//!
//! **A failed write is never taken for a durable one.** When a write fails (a full disk, an fsync error), the store
//! is marked failed with the reason ([`Store::health`]); the node refuses money writes with a 503 that says why,
//! and [`Store::recover`] (the node calls it every [`FLUSH_EVERY`]) reopens the file once space is back, since redb
//! refuses every write after an I/O error until it is reopened. The data file is opened through the storage fault
//! layer ([`crate::faults`]) when a test asks for it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use redb::{Database, Durability, ReadableDatabase as _, TableDefinition};
use samod::storage::StorageKey;

use crate::faults::{Faults, FaultyBackend};

/// samod's key/value space: `/`-joined storage keys to bytes.
const DOCS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("samod");
/// The node's small facts (the directory's document id, once learned).
const META: TableDefinition<'_, &str, &str> = TableDefinition::new("meta");

/// How often samod's unsynced writes are made durable.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);

/// Why the data file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "data file {path} is in use by another popmesh process (is `popmesh run` already running on it?)"
    )]
    InUse { path: PathBuf },
    #[error(
        "data file {path} is damaged ({reason}); move it aside and run again to resync this device from the site \
         (acknowledged payments only in this file would be lost)"
    )]
    Damaged { path: PathBuf, reason: String },
    #[error("data file {path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

/// The database, swapped for a fresh one when the store recovers from a failed write.
type Slot = Arc<std::sync::RwLock<Option<Arc<Database>>>>;

/// Why the store refuses writes now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoreFault {
    /// `disk_full` or `io`.
    pub kind: &'static str,
    pub reason: String,
}

/// The node's data file. Cloning shares it.
#[derive(Clone)]
pub struct Store {
    db: Slot,
    path: Arc<PathBuf>,
    dirty: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    fault: Arc<Mutex<Option<StoreFault>>>,
    faults: Option<Arc<Faults>>,
    /// Held across every write transaction and the noting of its failure (see `commit_loop`).
    writes: Arc<Mutex<()>>,
    /// When a lazy write last failed (seconds since the epoch): deletes wait a while after it.
    last_put_failure: Arc<AtomicU64>,
    acks: Arc<AtomicU64>,
    committer: Arc<Committer>,
}

/// An acknowledged write waiting for the committer.
struct AckRequest {
    key: String,
    bytes: Vec<u8>,
    done: std::sync::mpsc::SyncSender<Result<(), String>>,
}

#[derive(Default)]
struct AckQueue {
    pending: Mutex<(Vec<AckRequest>, bool)>,
    wake: Condvar,
}

/// The group-commit thread's handle: dropping the last `Store` clone stops the thread, which closes the file.
struct Committer {
    queue: Arc<AckQueue>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Committer {
    fn drop(&mut self) {
        lock(&self.queue.pending).1 = true;
        self.queue.wake.notify_all();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes every waiting acknowledged write, commits them in one fsync'd transaction, answers each.
///
/// A batch is never committed on a database that has seen a failed write since it was opened: after an I/O error
/// redb's state may be unsound, and a reopen can roll such a commit back. Every write (this loop's and samod's
/// lazy ones) runs under `writes`, which also covers noting a failure, so none can slip in between.
fn commit_loop(slot: Slot, queue: Arc<AckQueue>, writes: Arc<Mutex<()>>, failed: Arc<AtomicBool>) {
    loop {
        let batch = {
            let mut guard = lock(&queue.pending);
            while guard.0.is_empty() && !guard.1 {
                guard = queue.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            if guard.0.is_empty() {
                return;
            }
            std::mem::take(&mut guard.0)
        };
        let serial = lock(&writes);
        let db = slot.read().unwrap_or_else(|e| e.into_inner()).clone();
        let result = (|| -> Result<(), redb::Error> {
            if failed.load(Ordering::SeqCst) {
                return Err(redb::Error::PreviousIo);
            }
            let db = db.ok_or(redb::Error::PreviousIo)?;
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            {
                let mut table = tx.open_table(DOCS)?;
                for req in &batch {
                    table.insert(req.key.as_str(), req.bytes.as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        })()
        .map_err(|e| e.to_string());
        if result.is_err() {
            // Refuse every later write until the store has recovered (the caller notes the reason).
            failed.store(true, Ordering::SeqCst);
        }
        drop(serial);
        for req in batch {
            let _ = req.done.send(result.clone());
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Opens the data file at `path`. A new one is made beside it and renamed into place only once redb has written it
/// whole, so a start on a full disk (or a kill mid-creation) leaves no half-written file that every later start
/// would refuse as damaged.
fn open_database(path: &Path, faults: Option<&Arc<Faults>>) -> Result<Database, StoreError> {
    if !path.exists() {
        let fresh = path.with_extension("redb.creating");
        let _ = std::fs::remove_file(&fresh);
        if let Err(e) = open_file(&fresh, path, faults).map(drop) {
            let _ = std::fs::remove_file(&fresh);
            return Err(e);
        }
        std::fs::rename(&fresh, path).map_err(|e| StoreError::Io {
            path: path.to_owned(),
            reason: format!("could not put the new data file in place: {e}"),
        })?;
        if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
            let _ = dir.sync_all();
        }
    }
    open_file(path, path, faults)
}

/// Opens (or creates) the redb file `file`; errors name `path`, the data file.
fn open_file(
    file: &Path,
    path: &Path,
    faults: Option<&Arc<Faults>>,
) -> Result<Database, StoreError> {
    let opened = match faults {
        None => Database::create(file),
        Some(faults) => {
            let backend =
                FaultyBackend::open(file, faults.clone()).map_err(|e| StoreError::Io {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
            redb::Builder::new().create_with_backend(backend)
        }
    };
    opened.map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
            path: path.to_owned(),
        },
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason)) => {
            StoreError::Damaged {
                path: path.to_owned(),
                reason,
            }
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::WouldBlock =>
        {
            StoreError::InUse {
                path: path.to_owned(),
            }
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if is_disk_full(&io.to_string()) =>
        {
            StoreError::Io {
                path: path.to_owned(),
                reason: format!("the disk is full: {io}"),
            }
        }
        other => StoreError::Damaged {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    })
}

fn now_secs() -> u64 {
    crate::clock::now().0 / 1000
}

/// Whether an error's text is the operating system's "no space left on device".
fn is_disk_full(text: &str) -> bool {
    text.contains("os error 28") || text.contains("No space left") || text.contains("StorageFull")
}

impl Store {
    /// Opens the data file; through the storage fault layer when `POPMESH_STORAGE_FAULTS` asks for it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_faults(path, Faults::from_env())
    }

    /// Opens the data file, with the storage fault layer in front of it when `faults` is given.
    pub fn open_with_faults(path: &Path, faults: Option<Arc<Faults>>) -> Result<Self, StoreError> {
        let db = open_database(path, faults.as_ref())?;
        let slot: Slot = Arc::new(std::sync::RwLock::new(Some(Arc::new(db))));
        let queue = Arc::new(AckQueue::default());
        let writes = Arc::new(Mutex::new(()));
        let failed = Arc::new(AtomicBool::new(false));
        let thread = {
            let (slot, queue, writes, failed) =
                (slot.clone(), queue.clone(), writes.clone(), failed.clone());
            std::thread::Builder::new()
                .name("popmesh-commit".into())
                .spawn(move || commit_loop(slot, queue, writes, failed))
                .map_err(|e| StoreError::Io {
                    path: path.to_owned(),
                    reason: format!("cannot start the commit thread: {e}"),
                })?
        };
        let store = Self {
            db: slot,
            path: Arc::new(path.to_owned()),
            dirty: Arc::new(AtomicBool::new(false)),
            failed,
            writes,
            fault: Arc::new(Mutex::new(None)),
            faults,
            last_put_failure: Arc::new(AtomicU64::new(0)),
            acks: Arc::new(AtomicU64::new(0)),
            committer: Arc::new(Committer {
                queue,
                thread: Mutex::new(Some(thread)),
            }),
        };
        // Create the tables, so that readers never see them missing.
        store.write(Durability::Immediate, |tx| {
            tx.open_table(DOCS)?;
            tx.open_table(META)?;
            Ok(())
        })?;
        Ok(store)
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| self.io("the data file is being reopened after a failed write"))
    }

    /// Why writes are refused now, if they are.
    pub fn health(&self) -> Option<StoreFault> {
        lock(&self.fault).clone()
    }

    /// Bytes free on the data file's file system (0 while the fault layer says the disk is full).
    pub fn free_bytes(&self) -> Option<u64> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        crate::faults::free_bytes(dir, self.faults.as_deref())
    }

    /// After a failed write: reopens the data file (redb refuses every write after an I/O error until then) and
    /// proves it takes a durable write again. Returns whether the store was failed and is healthy now; the
    /// caller then makes its documents durable again, since writes that failed may be missing from the file.
    pub fn recover(&self) -> Result<bool, StoreError> {
        if !self.failed.load(Ordering::SeqCst) {
            return Ok(false);
        }
        {
            let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
            if let Some(old) = slot.take() {
                // Wait for operations that still hold the old database (they finish, failing, at once).
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                let mut old = old;
                loop {
                    match Arc::try_unwrap(old) {
                        Ok(db) => {
                            drop(db);
                            break;
                        }
                        Err(still) if std::time::Instant::now() < deadline => {
                            old = still;
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(still) => {
                            *slot = Some(still);
                            return Err(self.io("the failed data file is still in use"));
                        }
                    }
                }
            }
            let db = open_database(&self.path, self.faults.as_ref()).inspect_err(|e| {
                self.note_failure(&e.to_string());
            })?;
            *slot = Some(Arc::new(db));
        }
        // A durable write on the reopened file proves it takes writes again; the flag clears under the same lock
        // every write takes, so nothing commits in between on a state that is not known sound.
        {
            let _serial = lock(&self.writes);
            let db = self.db()?;
            let probe = (|| -> Result<(), redb::Error> {
                let mut tx = db.begin_write()?;
                tx.set_durability(Durability::Immediate)?;
                tx.open_table(META)?.insert("recovered_at", "1")?;
                tx.commit()?;
                Ok(())
            })();
            if let Err(e) = probe {
                return Err(self.io(e));
            }
            self.failed.store(false, Ordering::SeqCst);
            *lock(&self.fault) = None;
        }
        tracing::info!(file = %self.path.display(), "the data file takes writes again");
        Ok(true)
    }

    fn note_failure(&self, reason: &str) {
        self.failed.store(true, Ordering::SeqCst);
        let kind = if is_disk_full(reason) {
            "disk_full"
        } else {
            "io"
        };
        let mut fault = lock(&self.fault);
        if fault.is_none() {
            tracing::error!(kind, "the data file refuses writes: {reason}");
        }
        *fault = Some(StoreFault {
            kind,
            reason: reason.to_owned(),
        });
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the store refuses writes now (a write failed and it has not recovered; the node reports itself
    /// degraded and refuses money writes).
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Acknowledged writes made durable since start.
    pub fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        let reason = e.to_string();
        self.note_failure(&reason);
        let reason = if is_disk_full(&reason) {
            format!("the disk is full ({reason})")
        } else {
            reason
        };
        StoreError::Io {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    /// A write, refused at once while the store is failed (so nothing is taken for written that was not).
    fn write(
        &self,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        if let Some(fault) = self.health() {
            return Err(StoreError::Io {
                path: self.path.to_path_buf(),
                reason: fault.reason,
            });
        }
        self.write_checked(durability, f)
    }

    fn write_checked(
        &self,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let _serial = lock(&self.writes);
        if self.failed.load(Ordering::SeqCst) {
            return Err(self.io("the data file refuses writes until it has recovered"));
        }
        let db = self.db()?;
        let mut tx = db.begin_write().map_err(|e| self.io(e))?;
        tx.set_durability(durability).map_err(|e| self.io(e))?;
        f(&tx).map_err(|e| self.io(e))?;
        tx.commit().map_err(|e| self.io(e))?;
        Ok(())
    }

    /// Makes `bytes` (Automerge changes, or a whole document) part of document `doc` on disk, fsync'd, before
    /// returning. Blocking: call it off the async runtime.
    pub fn put_ack(&self, doc: &str, bytes: &[u8]) -> Result<(), StoreError> {
        if let Some(fault) = self.health() {
            return Err(StoreError::Io {
                path: self.path.to_path_buf(),
                reason: fault.reason,
            });
        }
        let name = format!("ack-{}", blake3::hash(bytes).to_hex());
        let key = StorageKey::from_parts([doc, "incremental", name.as_str()])
            .map_err(|_| self.io(format!("document id {doc:?} is not a storage key")))?;
        let (done, answer) = std::sync::mpsc::sync_channel(1);
        {
            let mut guard = lock(&self.committer.queue.pending);
            guard.0.push(AckRequest {
                key: key.to_string(),
                bytes: bytes.to_vec(),
                done,
            });
        }
        self.committer.queue.wake.notify_one();
        match answer.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.io(e)),
            Err(_) => return Err(self.io("the commit thread stopped")),
        }
        self.acks.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let tx = self.db()?.begin_read().map_err(|e| self.io(e))?;
        let table = tx.open_table(META).map_err(|e| self.io(e))?;
        let value = table.get(key).map_err(|e| self.io(e))?;
        Ok(value.map(|v| v.value().to_owned()))
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.write(Durability::Immediate, |tx| {
            tx.open_table(META)?.insert(key, value)?;
            Ok(())
        })
    }

    /// Makes every earlier write durable, if any is not yet.
    pub fn flush(&self) -> Result<(), StoreError> {
        if self.dirty.swap(false, Ordering::Relaxed) {
            self.write(Durability::Immediate, |_| Ok(()))?;
        }
        Ok(())
    }

    /// Size of the data file in bytes.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&*self.path).map(|m| m.len()).unwrap_or(0)
    }

    fn load_one(&self, key: &StorageKey) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db()?.begin_read().map_err(|e| self.io(e))?;
        let table = tx.open_table(DOCS).map_err(|e| self.io(e))?;
        let value = table
            .get(key.to_string().as_str())
            .map_err(|e| self.io(e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn load_prefix(&self, prefix: &StorageKey) -> Result<HashMap<StorageKey, Vec<u8>>, StoreError> {
        let tx = self.db()?.begin_read().map_err(|e| self.io(e))?;
        let table = tx.open_table(DOCS).map_err(|e| self.io(e))?;
        let start = prefix.to_string();
        let mut out = HashMap::new();
        for entry in table.range(start.as_str()..).map_err(|e| self.io(e))? {
            let (k, v) = entry.map_err(|e| self.io(e))?;
            let k = k.value();
            if !k.starts_with(start.as_str()) {
                break;
            }
            if let Ok(key) = StorageKey::from_parts(k.split('/'))
                && prefix.is_prefix_of(&key)
            {
                out.insert(key, v.value().to_vec());
            }
        }
        Ok(out)
    }

    fn put_lazy(&self, key: &StorageKey, data: &[u8]) -> Result<(), StoreError> {
        let key = key.to_string();
        self.write(Durability::None, |tx| {
            tx.open_table(DOCS)?.insert(key.as_str(), data)?;
            Ok(())
        })
        .inspect_err(|_| self.last_put_failure.store(now_secs(), Ordering::SeqCst))?;
        self.dirty.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn delete_lazy(&self, key: &StorageKey) -> Result<(), StoreError> {
        // samod compacts by writing a snapshot, then deleting the chunks it replaces. If a write failed lately
        // (a full disk), the snapshot may not be on disk: keep the chunks (the next start compacts them), so a
        // compaction can never delete acknowledged data that its snapshot failed to carry.
        if self.has_failed() || self.last_put_failure.load(Ordering::SeqCst) + 120 > now_secs() {
            return Ok(());
        }
        let key = key.to_string();
        self.write(Durability::None, |tx| {
            tx.open_table(DOCS)?.remove(key.as_str())?;
            Ok(())
        })?;
        self.dirty.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Option<T> {
        let store = self.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::error!("storage {what} failed: {e}");
                None
            }
            Err(e) => {
                tracing::error!("storage {what} task failed: {e}");
                None
            }
        }
    }
}

/// What samod is given as its storage: the store, until [`EngineStorage::release`].
///
/// samod 0.16's io loop keeps its storage for the life of the process, even after `Repo::stop` (the loop's own
/// state holds the channel that would end it). A node stopped and started again in one process (the demo's
/// origin) could then never reopen its data file. Releasing drops samod's reference; later calls find nothing
/// and write nothing.
#[derive(Clone, Debug)]
pub struct EngineStorage(Arc<std::sync::RwLock<Option<Store>>>);

impl EngineStorage {
    pub fn new(store: Store) -> Self {
        Self(Arc::new(std::sync::RwLock::new(Some(store))))
    }

    /// Gives up samod's handle on the store (after `Repo::stop`).
    pub fn release(&self) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn get(&self) -> Option<Store> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl samod::storage::Storage for EngineStorage {
    async fn load(&self, key: StorageKey) -> Option<Vec<u8>> {
        let store = self.get()?;
        samod::storage::Storage::load(&store, key).await
    }

    async fn load_range(&self, prefix: StorageKey) -> HashMap<StorageKey, Vec<u8>> {
        match self.get() {
            Some(store) => samod::storage::Storage::load_range(&store, prefix).await,
            None => HashMap::new(),
        }
    }

    async fn put(&self, key: StorageKey, data: Vec<u8>) {
        if let Some(store) = self.get() {
            samod::storage::Storage::put(&store, key, data).await;
        }
    }

    async fn delete(&self, key: StorageKey) {
        if let Some(store) = self.get() {
            samod::storage::Storage::delete(&store, key).await;
        }
    }
}

impl samod::storage::Storage for Store {
    async fn load(&self, key: StorageKey) -> Option<Vec<u8>> {
        self.blocking("load", move |s| s.load_one(&key))
            .await
            .flatten()
    }

    async fn load_range(&self, prefix: StorageKey) -> HashMap<StorageKey, Vec<u8>> {
        self.blocking("load_range", move |s| s.load_prefix(&prefix))
            .await
            .unwrap_or_default()
    }

    async fn put(&self, key: StorageKey, data: Vec<u8>) {
        self.blocking("put", move |s| s.put_lazy(&key, &data)).await;
    }

    async fn delete(&self, key: StorageKey) {
        self.blocking("delete", move |s| s.delete_lazy(&key)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use samod::storage::Storage as _;

    #[tokio::test]
    async fn acknowledged_and_synced_writes_read_back_under_samods_prefixes() {
        let dir = tempdir();
        let store = Store::open(&dir.join("store.redb")).expect("open");
        let doc = "3j5VgbDMDHqJkGtrEQS2ywxF3Zw6";
        let synced = StorageKey::from_parts([doc, "incremental", "abc"]).expect("key");
        store.put(synced.clone(), b"synced".to_vec()).await;
        store.put_ack(doc, b"acked").expect("ack");
        let other =
            StorageKey::from_parts([format!("{doc}x").as_str(), "incremental", "z"]).expect("key");
        store.put(other, b"other doc".to_vec()).await;
        let prefix = StorageKey::from_parts([doc, "incremental"]).expect("prefix");
        let found = store.load_range(prefix).await;
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found.get(&synced).map(Vec::as_slice), Some(&b"synced"[..]));
        assert!(found.values().any(|v| v == b"acked"));
        store.delete(synced.clone()).await;
        assert_eq!(store.load(synced).await, None);
    }

    #[test]
    fn a_damaged_data_file_is_refused_with_its_name() {
        let dir = tempdir();
        let path = dir.join("store.redb");
        drop(Store::open(&path).expect("create"));
        let mut bytes = std::fs::read(&path).expect("read");
        for b in bytes.iter_mut().take(4096) {
            *b ^= 0x5a;
        }
        std::fs::write(&path, bytes).expect("write");
        let err = Store::open(&path).expect_err("damaged file must be refused");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_first_start_on_a_full_disk_leaves_no_half_made_data_file_and_the_next_start_works() {
        let dir = tempdir();
        let path = dir.join("store.redb");
        let faults = Faults::new();
        faults.set_disk_full(true);
        let err = Store::open_with_faults(&path, Some(faults.clone()))
            .expect_err("a full disk refuses the new data file");
        assert!(err.to_string().contains("disk is full"), "{err}");
        let left: Vec<_> = std::fs::read_dir(&*dir).expect("dir").flatten().collect();
        assert!(
            left.is_empty(),
            "nothing half-made is left behind: {left:?}"
        );
        faults.set_disk_full(false);
        let store =
            Store::open_with_faults(&path, Some(faults)).expect("space is back: the file is made");
        store
            .put_ack("doc", b"acked")
            .expect("and takes acknowledged writes");
    }

    /// A directory for one test's data file, removed when the test ends.
    struct TempDir(PathBuf);

    impl std::ops::Deref for TempDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tempdir() -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "popmesh-store-{}-{}",
            std::process::id(),
            blake3::hash(format!("{:?}", std::time::Instant::now()).as_bytes()).to_hex()
        ));
        std::fs::create_dir_all(&dir).expect("tempdir");
        TempDir(dir)
    }
}
