//! Which bytes a write must make durable, so that no answer rests on anything that is not on disk.
//!
//! A device writes every change it acknowledges through an fsync'd tier (the node's `put_ack`, the simulator's
//! acknowledged storage); what it receives by sync goes to a lazy tier flushed every few seconds and lost on a
//! crash. An acknowledged change depends on everything the document held before it, synced changes included (the
//! origin's reconciliation marks on a ledger page, other sellers' sales on a slot): saved alone, it would survive a
//! SIGKILL that lost what it depends on, and Automerge would load it as a change it cannot apply: the receipt
//! gone from the page, its idempotency key free for a second charge. So a write saves everything since the last
//! heads known durable:
//!
//! - **Normally** those heads are the document's heads before the change (the last write was this device's own,
//!   and nothing synced in since), and the change alone is saved.
//! - **After synced changes** it saves them too: everything not in the history of the heads known durable.
//! - **Never known durable** (the first write since a start) or **after a failed write** (the document is
//!   *undurable*: its change is in memory, may have synced, but is not on disk) it saves the whole document, and
//!   nothing is answered from it until that is durable.
//!
//! So every successful write leaves the document wholly durable up to its heads, and a replay (a retried payment
//! answered from what the page already held) rests on nothing that is not on disk.
//! (Making the change on a copy and merging it after the fsync does not work: a change that failed to be
//! acknowledged yet reached the disk shares its sequence number with the next change, and Automerge drops the
//! second on load. `node/tests/disk_faults.rs` caught that.)

use std::collections::{BTreeMap, BTreeSet};

use automerge::ChangeHash;

use crate::mutation::{Mutation, Mutations};

/// What to save of a document after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Save {
    /// The whole document.
    Whole,
    /// Every change not among these heads' history.
    After(Vec<ChangeHash>),
}

/// The plan for one write: what to save (after which the document is durable up to its heads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub save: Save,
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
    mutations: Mutations,
}

impl<K> Default for Durability<K> {
    fn default() -> Self {
        Self {
            undurable: BTreeSet::new(),
            durable_heads: BTreeMap::new(),
            failures: BTreeMap::new(),
            mutations: Mutations::none(),
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
    pub mutations: Mutations,
}

impl Snapshot {
    /// What a write must save, given the document's heads before the change.
    pub fn plan(&self, before: &[ChangeHash]) -> Plan {
        let save = match self.durable.as_ref() {
            _ if self.undurable => Save::Whole,
            // Only this device's own durable writes since: the change alone.
            Some(d) if d.as_slice() == before => Save::After(before.to_vec()),
            // Synced changes since the last durable write: they go to disk with the change that rests on them.
            Some(_) if self.mutations.has(Mutation::SaveChangeAlone) => {
                Save::After(before.to_vec())
            }
            Some(d) => Save::After(d.clone()),
            None => Save::Whole,
        };
        Plan {
            save,
            failures_seen: self.failures,
        }
    }
}

impl<K: Ord + Clone> Durability<K> {
    /// With `mutations` (none but in the simulator's mutation tests).
    pub fn new(mutations: Mutations) -> Self {
        Self {
            mutations,
            ..Self::default()
        }
    }

    pub fn snapshot(&self, doc: &K) -> Snapshot {
        Snapshot {
            undurable: self.undurable.contains(doc),
            durable: self.durable_heads.get(doc).cloned(),
            failures: self.failures.get(doc).copied().unwrap_or(0),
            mutations: self.mutations,
        }
    }

    /// What a write to `doc` must save (see [`Snapshot::plan`]).
    pub fn plan(&self, doc: &K, before: &[ChangeHash]) -> Plan {
        self.snapshot(doc).plan(before)
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
        if !self.undurable.contains(doc) {
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
        let plan = d.plan(&1, &[h(1)]);
        assert_eq!(
            plan.save,
            Save::Whole,
            "never known durable since the start"
        );
        d.handle_saved(&1, &plan, vec![h(2)], true);
        let plan = d.plan(&1, &[h(2)]);
        assert_eq!(
            plan.save,
            Save::After(vec![h(2)]),
            "durable up to h(2): the change alone"
        );
        d.handle_saved(&1, &plan, vec![h(3)], false);
        assert!(d.is_undurable(&1));
        let plan = d.plan(&1, &[h(3)]);
        assert_eq!(plan.save, Save::Whole);
        d.handle_saved(&1, &plan, vec![h(4)], true);
        assert!(!d.is_undurable(&1));
        assert_eq!(d.plan(&1, &[h(4)]).save, Save::After(vec![h(4)]));
    }

    #[test]
    fn a_payment_on_top_of_synced_marks_takes_the_marks_to_disk_with_it() {
        // A POS page durable up to h(2); the origin's reconciliation marks (h(3)) sync in to the lazy tier; the
        // next payment rests on them, so its save starts from h(2), not from h(3).
        let mut d = Durability::<u8>::default();
        let first = d.plan(&1, &[h(1)]);
        d.handle_saved(&1, &first, vec![h(2)], true);
        let pay = d.plan(&1, &[h(3)]);
        assert_eq!(pay.save, Save::After(vec![h(2)]));
        d.handle_saved(&1, &pay, vec![h(4)], true);
        assert_eq!(d.plan(&1, &[h(4)]).save, Save::After(vec![h(4)]));
    }

    #[test]
    fn a_success_never_clears_the_mark_of_a_concurrent_write_that_failed() {
        let mut d = Durability::<u8>::default();
        // The origin's reconciliation (r) and the desk (t) plan writes to one ledger page at once.
        let r = d.plan(&1, &[h(1)]);
        let t = d.plan(&1, &[h(2)]);
        d.handle_saved(&1, &t, vec![h(3)], false);
        d.handle_saved(&1, &r, vec![h(2)], true);
        assert!(d.is_undurable(&1), "t's change is still not on disk");
        assert_eq!(d.plan(&1, &[h(3)]).save, Save::Whole);
        // Even a whole save planned before t failed does not clear it.
        let mut d = Durability::<u8>::default();
        let first = d.plan(&1, &[h(1)]);
        d.handle_saved(&1, &first, vec![h(2)], false);
        let whole = d.plan(&1, &[h(2)]);
        let t = d.plan(&1, &[h(2)]);
        d.handle_saved(&1, &t, vec![h(4)], false);
        d.handle_saved(&1, &whole, vec![h(3)], true);
        assert!(d.is_undurable(&1));
    }
}
