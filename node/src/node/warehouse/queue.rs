//! What the origin owes the warehouse, kept in its own data file (the store's `meta` table) so a restart while the
//! database is down still knows it.
//!
//! The queue holds references, not copies: a document that changed since its rows were committed (its id and
//! name), because the document itself is already durable in the same data file and is the one source of its rows.
//! It is bounded by `[warehouse] queue_max` documents; past that it keeps only the fact that it overflowed, which
//! makes the follower compare every document with the database's cursors when it is back (which it does on every
//! reconnect anyway), so an overflow costs time, never a row. Reconciliation runs are the one thing no document
//! holds whole (the matches are marked in the ledgers, the exceptions are not): their exceptions are queued as
//! rows, at most [`EXCEPTIONS_MAX`] in all.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::rows::BatchRow;

/// The `meta` keys of the queue.
pub const OWED_KEY: &str = "warehouse/owed";
pub const BATCHES_KEY: &str = "warehouse/batches";

/// Reconciliation exception rows the queue holds at most; past it a run keeps its summary and drops its rows
/// (logged: run the reconciliation again once the database is back to load them).
pub const EXCEPTIONS_MAX: usize = 100_000;

/// A document owed to the warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owed {
    pub name: String,
    /// When this device first saw the change that is owed (ms).
    pub since_ms: u64,
    /// Bumped by every change, so a change that arrives while the document is being written stays owed.
    #[serde(skip)]
    pub generation: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Persisted {
    owed: BTreeMap<String, Owed>,
    overflow: bool,
}

/// The owed documents and the reconciliation runs not written yet.
#[derive(Debug, Default)]
pub struct Queue {
    owed: BTreeMap<String, Owed>,
    overflow: bool,
    batches: Vec<BatchRow>,
    max: usize,
    generation: u64,
    /// Whether the owed set changed since it was last persisted.
    dirty: bool,
}

impl Queue {
    /// The queue as persisted in `owed` and `batches` (the meta values, if any).
    pub fn load(max: usize, owed: Option<&str>, batches: Option<&str>) -> Self {
        let p: Persisted = owed
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default();
        let batches = batches
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default();
        Self {
            owed: p.owed,
            overflow: p.overflow,
            batches,
            max,
            generation: 0,
            dirty: false,
        }
    }

    /// A document changed.
    pub fn owe(&mut self, id: &str, name: &str, now_ms: u64) {
        self.generation += 1;
        let generation = self.generation;
        if let Some(o) = self.owed.get_mut(id) {
            o.generation = generation;
            return;
        }
        if self.overflow {
            return;
        }
        if self.owed.len() >= self.max {
            tracing::warn!(
                owed = self.owed.len(),
                "the warehouse queue is full: the origin now compares every document when the database is back"
            );
            self.owed.clear();
            self.overflow = true;
        } else {
            self.owed.insert(
                id.to_owned(),
                Owed {
                    name: name.to_owned(),
                    since_ms: now_ms,
                    generation,
                },
            );
        }
        self.dirty = true;
    }

    /// The document's rows are committed as of `generation`: it is owed no more unless it changed since.
    pub fn paid(&mut self, id: &str, generation: u64) {
        if self
            .owed
            .get(id)
            .is_some_and(|o| o.generation <= generation)
        {
            self.owed.remove(id);
            self.dirty = true;
        }
    }

    /// Every document was compared with the database: an overflow is settled.
    pub fn settle_overflow(&mut self) {
        if self.overflow {
            self.overflow = false;
            self.dirty = true;
        }
    }

    pub fn owed(&self) -> &BTreeMap<String, Owed> {
        &self.owed
    }

    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// The generation of the last change seen: whatever is written now is paid up to here.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The oldest owed change, in ms since the epoch.
    pub fn oldest_ms(&self) -> Option<u64> {
        self.owed.values().map(|o| o.since_ms).min()
    }

    /// Queues a reconciliation run; returns whether its exception rows were kept (else only its summary).
    pub fn add_batch(&mut self, mut batch: BatchRow) -> bool {
        let held: usize = self.batches.iter().map(|b| b.rows.len()).sum();
        let kept = held.saturating_add(batch.rows.len()) <= EXCEPTIONS_MAX;
        if !kept {
            batch.rows.clear();
        }
        self.batches.retain(|b| b.batch != batch.batch);
        self.batches.push(batch);
        kept
    }

    pub fn batches(&self) -> &[BatchRow] {
        &self.batches
    }

    /// A run is in the database.
    pub fn batch_written(&mut self, batch: &BatchRow) {
        self.batches.retain(|b| b != batch);
    }

    /// Exception rows waiting.
    pub fn pending_rows(&self) -> usize {
        self.batches.iter().map(|b| b.rows.len().max(1)).sum()
    }

    /// The owed set as persisted, if it changed since the last call.
    pub fn take_dirty(&mut self) -> Option<String> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        let p = Persisted {
            owed: self.owed.clone(),
            overflow: self.overflow,
        };
        serde_json::to_string(&p).ok()
    }

    /// The owed set must be persisted again (the last attempt failed).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// The pending runs as persisted.
    pub fn batches_json(&self) -> String {
        serde_json::to_string(&self.batches).unwrap_or_else(|_| "[]".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_during_a_write_stays_owed_and_an_overflow_forgets_ids_but_not_the_debt() {
        let mut q = Queue::load(2, None, None);
        q.owe("a", "show/fri/ledger/x", 1);
        let written_at = q.generation();
        q.owe("a", "show/fri/ledger/x", 2);
        q.paid("a", written_at);
        assert!(q.owed().contains_key("a"), "changed while being written");
        q.paid("a", q.generation());
        assert!(q.owed().is_empty());

        q.owe("a", "x", 3);
        q.owe("b", "y", 4);
        assert_eq!(q.oldest_ms(), Some(3));
        q.owe("c", "z", 5);
        assert!(q.overflowed() && q.owed().is_empty());
        let saved = q.take_dirty().expect("changed");
        let again = Queue::load(2, Some(&saved), None);
        assert!(again.overflowed(), "the debt survives a restart");
        q.settle_overflow();
        assert!(!q.overflowed());
    }
}
