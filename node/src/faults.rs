//! The storage fault layer: a redb storage backend that can be told to fail like a real disk does.
//!
//! Off in production (the node opens its file with redb's own `FileBackend`). Tests switch it on for a process
//! with `POPMESH_STORAGE_FAULTS=FILE`: the node then wraps its backend in [`FaultyBackend`] and a thread re-reads
//! `FILE` every 20 ms, one `name=value` per line:
//!
//! - `disk_full=1`: every write and every growth of the file fails with `ENOSPC`, as on a full disk; the free-space
//!   probe ([`free_bytes`]) reads 0.
//! - `fsync_error=1`: every `fsync` fails with `EIO`, after the data was written (what a failing disk reports).
//! - `torn_write_after=N`: the N+1st write from now writes only its first half, then the process aborts: a crash
//!   in the middle of a write, at a chosen point.
//!
//! In-process tests hand a [`Faults`] to [`crate::store::Store::open_with_faults`] and flip it directly. The
//! simulator can use the same switches as faults of its own storage model.

use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redb::StorageBackend;

/// The environment variable that switches the fault layer on for a process.
pub const FAULTS_ENV: &str = "POPMESH_STORAGE_FAULTS";

/// What the fault layer is told to do now. Shared; every switch takes effect at the next operation.
#[derive(Debug, Default)]
pub struct Faults {
    pub disk_full: AtomicBool,
    pub fsync_error: AtomicBool,
    /// Writes left before a torn write; `u64::MAX` (or 0 after it fired) when none is armed.
    torn_after: AtomicU64,
    torn_armed: AtomicBool,
}

impl Faults {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn set_disk_full(&self, on: bool) {
        self.disk_full.store(on, Ordering::SeqCst);
    }

    pub fn set_fsync_error(&self, on: bool) {
        self.fsync_error.store(on, Ordering::SeqCst);
    }

    /// Arms a torn write: `writes` more writes succeed, the next one is torn and the process aborts.
    pub fn tear_after(&self, writes: Option<u64>) {
        match writes {
            Some(n) => {
                self.torn_after.store(n, Ordering::SeqCst);
                self.torn_armed.store(true, Ordering::SeqCst);
            }
            None => self.torn_armed.store(false, Ordering::SeqCst),
        }
    }

    pub fn disk_full(&self) -> bool {
        self.disk_full.load(Ordering::SeqCst)
    }

    /// Applies a control file's text (`name=value` lines; unknown names are ignored with a warning).
    pub fn apply(&self, text: &str) {
        let (mut full, mut fsync, mut torn) = (false, false, None);
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once('=').unwrap_or((line, "1"));
            let value = value.trim();
            match name.trim() {
                "disk_full" => full = value == "1",
                "fsync_error" => fsync = value == "1",
                "torn_write_after" => torn = value.parse().ok(),
                other => tracing::warn!("storage faults: unknown switch {other:?}"),
            }
        }
        self.set_disk_full(full);
        self.set_fsync_error(fsync);
        if torn.is_some() != self.torn_armed.load(Ordering::SeqCst) {
            self.tear_after(torn);
        }
    }

    /// The faults this process was told to run with, if any: `POPMESH_STORAGE_FAULTS=FILE`, followed by a thread.
    pub fn from_env() -> Option<Arc<Self>> {
        let path = PathBuf::from(std::env::var_os(FAULTS_ENV)?);
        let faults = Self::new();
        let follow = faults.clone();
        tracing::warn!(file = %path.display(), "storage fault layer ON (tests only)");
        let spawned = std::thread::Builder::new()
            .name("popmesh-faults".into())
            .spawn(move || {
                let mut last = None;
                loop {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    if last.as_ref() != Some(&text) {
                        follow.apply(&text);
                        last = Some(text);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        if let Err(e) = spawned {
            tracing::error!("storage faults: cannot follow the control file: {e}");
        }
        Some(faults)
    }
}

fn enospc() -> std::io::Error {
    std::io::Error::from_raw_os_error(28)
}

fn eio() -> std::io::Error {
    std::io::Error::from_raw_os_error(5)
}

/// redb's file backend with [`Faults`] in front of it.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: redb::backends::FileBackend,
    faults: Arc<Faults>,
}

impl FaultyBackend {
    pub fn open(path: &Path, faults: Arc<Faults>) -> std::io::Result<Self> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let inner = redb::backends::FileBackend::new(file).map_err(std::io::Error::other)?;
        Ok(Self { inner, faults })
    }

    fn tear(&self) -> bool {
        if !self.faults.torn_armed.load(Ordering::SeqCst) {
            return false;
        }
        let left = self.faults.torn_after.load(Ordering::SeqCst);
        if left == 0 {
            return true;
        }
        self.faults.torn_after.store(left - 1, Ordering::SeqCst);
        false
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        if self.faults.disk_full() && len > self.inner.len()? {
            return Err(enospc());
        }
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.inner.sync_data()?;
        if self.faults.fsync_error.load(Ordering::SeqCst) {
            return Err(eio());
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        if self.faults.disk_full() {
            return Err(enospc());
        }
        if self.tear() {
            let half = data.len() / 2;
            let _ = self.inner.write(offset, &data[..half]);
            let _ = self.inner.sync_data();
            eprintln!(
                "storage faults: torn write of {half} of {} bytes at {offset}; aborting",
                data.len()
            );
            std::process::abort();
        }
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }

    fn try_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

/// Bytes free to this process on the file system that holds `path` (0 while the fault layer says the disk is
/// full); `None` when the file system cannot say.
pub fn free_bytes(path: &Path, faults: Option<&Faults>) -> Option<u64> {
    if faults.is_some_and(Faults::disk_full) {
        return Some(0);
    }
    let stat = rustix::fs::statvfs(path).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}
