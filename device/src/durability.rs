//! Which bytes a write must make durable, so that no answer rests on anything that is not on disk.
//!
//! A device writes every change it acknowledges through an fsync'd tier (the node's `put_ack`, the simulator's
//! acknowledged storage). Normally that is the change alone. Two cases need more:
//!
//! - **After a failed write** the document is *undurable*: its change is in memory (and may have synced) but not
//!   on disk. The next write to it saves the whole document, and nothing is answered from it until that is durable.
//! - **A replay** answers from what the document already held (a retried payment). Whatever of it is not known to
//!   be on disk is saved first: everything since the last heads known durable, or the whole document.
//!
//! Heads known durable are kept per document, so a replay saves at most what changed since the last durable write.
//! (Making the change on a copy and merging it after the fsync does not work: a change that failed to be
//! acknowledged yet reached the disk shares its sequence number with the next change, and Automerge drops the
//! second on load. `node/tests/disk_faults.rs` caught that.)

use std::collections::{BTreeMap, BTreeSet};

use automerge::ChangeHash;

/// What to save of a document after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Save {
    /// The whole document.
    Whole,
    /// Every change not among these heads' history.
    After(Vec<ChangeHash>),
}

/// The plan for one write: what to save, and whether the document is wholly durable once it is saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub save: Save,
    pub whole: bool,
    /// How many writes to the document had failed when the plan was made: a success clears nothing that a write
    /// failing meanwhile (a concurrent writer's) marked.
    pub failures_seen: u64,
}

/// Per document (`K`, the shell's document id): undurable documents and the heads known to be durable.
#[derive(Debug, Clone)]
pub struct Durability<K> {
    undurable: BTreeSet<K>,
    durable_heads: BTreeMap<K, Vec<ChangeHash>>,
    /// Failed writes per document, ever (only compared for equality).
    failures: BTreeMap<K, u64>,
}

impl<K> Default for Durability<K> {
    fn default() -> Self {
        Self {
            undurable: BTreeSet::new(),
            durable_heads: BTreeMap::new(),
            failures: BTreeMap::new(),
        }
    }
}

/// What is known of one document's durability, taken before a change (a shell that makes the change elsewhere,
/// inside the sync engine's document actor, takes this along and plans there).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub undurable: bool,
    pub durable: Option<Vec<ChangeHash>>,
    pub failures: u64,
}

impl Snapshot {
    /// What a write must save, given the document's heads before the change and whether the answer is a replay
    /// (rests on what the document held before).
    pub fn plan(&self, before: &[ChangeHash], replay: bool) -> Plan {
        let undurable = self.undurable;
        let durable = self.durable.as_ref();
        let base_durable = !undurable && durable.is_some_and(|d| d.as_slice() == before);
        let save = if undurable {
            Save::Whole
        } else if replay && !base_durable {
            match durable {
                Some(d) => Save::After(d.clone()),
                None => Save::Whole,
            }
        } else {
            Save::After(before.to_vec())
        };
        Plan {
            save,
            whole: undurable || replay || base_durable,
            failures_seen: self.failures,
        }
    }
}

impl<K: Ord + Clone> Durability<K> {
    pub fn snapshot(&self, doc: &K) -> Snapshot {
        Snapshot {
            undurable: self.undurable.contains(doc),
            durable: self.durable_heads.get(doc).cloned(),
            failures: self.failures.get(doc).copied().unwrap_or(0),
        }
    }

    /// What a write to `doc` must save (see [`Snapshot::plan`]).
    pub fn plan(&self, doc: &K, before: &[ChangeHash], replay: bool) -> Plan {
        self.snapshot(doc).plan(before, replay)
    }

    /// The outcome of saving `plan` for `doc`, whose heads after the change are `after`.
    ///
    /// Only a whole save clears a document's undurable mark, and only if no write to it failed since the plan was
    /// made: with two writers on one document (the desk and the origin's reconciliation on a ledger page), a
    /// success must not clear the mark the other's failed write left, or that write's change would never be saved
    /// and the next answer would rest on a change missing from disk.
    pub fn handle_saved(&mut self, doc: &K, plan: &Plan, after: Vec<ChangeHash>, ok: bool) {
        let failures = self.failures.get(doc).copied().unwrap_or(0);
        if !ok {
            self.failures.insert(doc.clone(), failures.wrapping_add(1));
            self.undurable.insert(doc.clone());
            self.durable_heads.remove(doc);
            return;
        }
        if failures != plan.failures_seen {
            // Another write failed meanwhile: what it marked stays marked, and these heads prove nothing.
            return;
        }
        if plan.save == Save::Whole {
            self.undurable.remove(doc);
        }
        if plan.whole && !self.undurable.contains(doc) {
            self.durable_heads.insert(doc.clone(), after);
        }
    }

    pub fn is_undurable(&self, doc: &K) -> bool {
        self.undurable.contains(doc)
    }

    /// Documents whose last acknowledged write failed, to save whole once the store is back.
    pub fn undurable(&self) -> impl Iterator<Item = &K> {
        self.undurable.iter()
    }

    /// Forgets everything (a restart: nothing in memory survives it).
    pub fn clear(&mut self) {
        self.undurable.clear();
        self.durable_heads.clear();
        self.failures.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> ChangeHash {
        ChangeHash([n; 32])
    }

    #[test]
    fn a_failed_write_makes_the_next_save_whole_and_a_good_one_clears_it() {
        let mut d = Durability::<u8>::default();
        let plan = d.plan(&1, &[h(1)], false);
        assert_eq!(plan.save, Save::After(vec![h(1)]));
        d.handle_saved(&1, &plan, vec![h(2)], false);
        assert!(d.is_undurable(&1));
        let plan = d.plan(&1, &[h(2)], false);
        assert_eq!(plan.save, Save::Whole);
        assert!(plan.whole);
        d.handle_saved(&1, &plan, vec![h(3)], true);
        assert!(!d.is_undurable(&1));
        // Heads durable: a replay on top of them saves only what is new.
        assert_eq!(d.plan(&1, &[h(3)], true).save, Save::After(vec![h(3)]));
    }

    #[test]
    fn a_success_never_clears_the_mark_of_a_concurrent_write_that_failed() {
        let mut d = Durability::<u8>::default();
        // The origin's reconciliation (r) and the desk (t) plan writes to one ledger page at once.
        let r = d.plan(&1, &[h(1)], false);
        let t = d.plan(&1, &[h(2)], false);
        d.handle_saved(&1, &t, vec![h(3)], false);
        d.handle_saved(&1, &r, vec![h(2)], true);
        assert!(d.is_undurable(&1), "t's change is still not on disk");
        assert_eq!(d.plan(&1, &[h(3)], false).save, Save::Whole);
        // Even a whole save planned before t failed does not clear it.
        let mut d = Durability::<u8>::default();
        let first = d.plan(&1, &[h(1)], false);
        d.handle_saved(&1, &first, vec![h(2)], false);
        let whole = d.plan(&1, &[h(2)], false);
        let t = d.plan(&1, &[h(2)], false);
        d.handle_saved(&1, &t, vec![h(4)], false);
        d.handle_saved(&1, &whole, vec![h(3)], true);
        assert!(d.is_undurable(&1));
    }

    #[test]
    fn a_replay_on_a_document_never_known_durable_saves_it_whole() {
        let d = Durability::<u8>::default();
        assert_eq!(d.plan(&7, &[h(1)], true).save, Save::Whole);
    }
}
