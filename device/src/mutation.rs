//! Deliberately broken decisions of the device core, switched on only by tests.
//!
//! Each names a promise the site depends on and breaks it in the core itself, so a test can show that the
//! simulator, running the same core, catches the break within its CI sweep (`sim/tests/checkers_bite.rs`). The node
//! never sets one: [`Mutations::none`] is its only value there.

/// One broken decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mutation {
    /// The desk answers a payment as soon as the change is made, before its write is durable.
    AnswerBeforeDurable,
    /// The rebalancer gives a peer more quota than this device holds.
    GiveUnheldQuota,
    /// The gate admits a device the directory has revoked.
    AdmitRevoked,
    /// The desk leaves other shows' batches in flight out of a batch's stored limit.
    IgnoreOtherShows,
    /// A write saves the change alone, not the synced changes since the last durable write it rests on.
    SaveChangeAlone,
}

/// The set of mutations in force (empty in production).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mutations(u8);

impl Mutations {
    /// No mutation: the only value the node uses.
    pub const fn none() -> Self {
        Self(0)
    }

    pub fn with(self, m: Mutation) -> Self {
        Self(self.0 | Self::bit(m))
    }

    pub fn has(self, m: Mutation) -> bool {
        self.0 & Self::bit(m) != 0
    }

    const fn bit(m: Mutation) -> u8 {
        match m {
            Mutation::AnswerBeforeDurable => 1,
            Mutation::GiveUnheldQuota => 2,
            Mutation::AdmitRevoked => 4,
            Mutation::IgnoreOtherShows => 8,
            Mutation::SaveChangeAlone => 16,
        }
    }
}
