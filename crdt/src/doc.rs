//! The typed Automerge document wrapper every popmesh document shares.
//!
//! Every document carries a header at its root, `kind` and `schema`, written once by its creator; a document whose
//! kind or schema this build does not know is refused when it is opened, before any typed read. Each device writes
//! with an actor id made of its device key and an *epoch* (a counter the caller bumps at every process start), so a
//! device that crashed and lost unsaved changes never reuses a sequence number it may already have sent.
//!
//! Documents are small by construction (see `docs`): a document kind whose state would grow without bound is sharded
//! by show, slot and device, and every map a device writes into is either its own (single writer) or was created by
//! the document's creator before the document was shared, so concurrent creation of a container can never shadow
//! another device's entries.

use std::marker::PhantomData;

use automerge::sync::SyncDoc as _;
use automerge::{
    ActorId, AutoCommit, ChangeHash, ObjId, ROOT, ReadDoc, transaction::Transactable as _,
};
use autosurgeon::{Hydrate, Reconcile};
use thiserror::Error;

use crate::identity::DeviceId;

/// A document kind and the schema version this build reads and writes.
pub trait Schema {
    const KIND: &'static str;
    const VERSION: u64;
}

/// Why a document operation failed at the storage layer.
#[derive(Debug, Error)]
pub enum DocError {
    #[error("automerge: {0}")]
    Automerge(Box<automerge::AutomergeError>),
    #[error("document content does not match its schema: {0}")]
    Hydrate(Box<autosurgeon::HydrateError>),
    #[error("could not write typed value: {0}")]
    Reconcile(Box<autosurgeon::ReconcileError>),
    #[error("expected a '{expected}' document, found '{found}'")]
    WrongKind {
        expected: &'static str,
        found: String,
    },
    #[error("'{kind}' document has schema version {found}; this build reads version {supported}")]
    UnsupportedSchema {
        kind: &'static str,
        found: u64,
        supported: u64,
    },
    #[error("the document has no '{0}' entry; it was not created by popmesh")]
    Missing(String),
}

// The wrapped errors are large; boxing them keeps every `Result` in the core small.
impl From<automerge::AutomergeError> for DocError {
    fn from(err: automerge::AutomergeError) -> Self {
        Self::Automerge(Box::new(err))
    }
}

impl From<autosurgeon::HydrateError> for DocError {
    fn from(err: autosurgeon::HydrateError) -> Self {
        Self::Hydrate(Box::new(err))
    }
}

impl From<autosurgeon::ReconcileError> for DocError {
    fn from(err: autosurgeon::ReconcileError) -> Self {
        Self::Reconcile(Box::new(err))
    }
}

/// The actor id a device writes with: its 32-byte public key followed by a 4-byte big-endian epoch.
pub fn actor_id(device: DeviceId, epoch: u32) -> ActorId {
    let mut bytes = Vec::with_capacity(36);
    bytes.extend_from_slice(&device.0);
    bytes.extend_from_slice(&epoch.to_be_bytes());
    ActorId::from(bytes)
}

/// The device that wrote with `actor`, if the actor id has popmesh's shape.
pub fn device_of_actor(actor: &ActorId) -> Option<DeviceId> {
    let bytes = actor.to_bytes();
    (bytes.len() == 36).then(|| {
        let mut id = [0u8; 32];
        id.copy_from_slice(&bytes[..32]);
        DeviceId(id)
    })
}

/// Runs the Automerge sync protocol between two documents until neither has anything to send.
fn sync_until_quiet(a: &mut AutoCommit, b: &mut AutoCommit) -> Result<SyncStats, DocError> {
    let mut a_state = automerge::sync::State::new();
    let mut b_state = automerge::sync::State::new();
    let mut stats = SyncStats::default();
    loop {
        let from_a = a.sync().generate_sync_message(&mut a_state);
        if let Some(msg) = &from_a {
            stats.count(msg);
            b.sync().receive_sync_message(&mut b_state, msg.clone())?;
        }
        let from_b = b.sync().generate_sync_message(&mut b_state);
        if let Some(msg) = &from_b {
            stats.count(msg);
            a.sync().receive_sync_message(&mut a_state, msg.clone())?;
        }
        if from_a.is_none() && from_b.is_none() {
            return Ok(stats);
        }
    }
}

/// What one sync exchange sent, both directions together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub messages: usize,
    pub bytes: usize,
}

impl SyncStats {
    fn count(&mut self, msg: &automerge::sync::Message) {
        self.messages += 1;
        self.bytes += msg.clone().encode().len();
    }
}

impl std::ops::AddAssign for SyncStats {
    fn add_assign(&mut self, other: Self) {
        self.messages += other.messages;
        self.bytes += other.bytes;
    }
}

/// An Automerge document known to hold a `S` document.
#[derive(Debug)]
pub struct Doc<S> {
    inner: AutoCommit,
    _schema: PhantomData<S>,
}

impl<S> Clone for Doc<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _schema: PhantomData,
        }
    }
}

impl<S: Schema> Doc<S> {
    /// Starts a new document: writes the header and the creator's initial root value in one change.
    pub(crate) fn create<T: Reconcile>(actor: ActorId, root: &T) -> Result<Self, DocError> {
        // Setting the actor before any change keeps the document deterministic: the random actor `new` draws is
        // never used.
        let mut inner = AutoCommit::new().with_actor(actor);
        autosurgeon::reconcile(&mut inner, root)?;
        inner.put(ROOT, "kind", S::KIND)?;
        inner.put(ROOT, "schema", S::VERSION)?;
        inner.commit();
        Ok(Self {
            inner,
            _schema: PhantomData,
        })
    }

    /// Adopts an Automerge document (received from a peer or loaded from disk), checking its header.
    pub fn from_automerge(inner: AutoCommit) -> Result<Self, DocError> {
        let kind: Option<String> = autosurgeon::hydrate_prop(&inner, ROOT, "kind")?;
        let kind = kind.ok_or_else(|| DocError::Missing("kind".into()))?;
        if kind != S::KIND {
            return Err(DocError::WrongKind {
                expected: S::KIND,
                found: kind,
            });
        }
        let schema: Option<u64> = autosurgeon::hydrate_prop(&inner, ROOT, "schema")?;
        let schema = schema.ok_or_else(|| DocError::Missing("schema".into()))?;
        if schema != S::VERSION {
            return Err(DocError::UnsupportedSchema {
                kind: S::KIND,
                found: schema,
                supported: S::VERSION,
            });
        }
        Ok(Self {
            inner,
            _schema: PhantomData,
        })
    }

    /// Loads saved bytes and continues writing as `actor`.
    pub fn load(bytes: &[u8], actor: ActorId) -> Result<Self, DocError> {
        let inner = AutoCommit::load(bytes)?.with_actor(actor);
        Self::from_automerge(inner)
    }

    /// A copy of this document that writes as another actor: how a second device receives a document.
    pub fn fork_as(&mut self, actor: ActorId) -> Self {
        Self {
            inner: self.inner.fork().with_actor(actor),
            _schema: PhantomData,
        }
    }

    pub fn save(&mut self) -> Vec<u8> {
        self.inner.save()
    }

    /// Merges everything `other` has that this replica lacks.
    pub fn merge(&mut self, other: &mut Self) -> Result<(), DocError> {
        self.inner.merge(&mut other.inner)?;
        Ok(())
    }

    /// Runs the Automerge sync protocol between two replicas until neither has anything to send, as two peers on
    /// one connection would, and counts what crossed the wire.
    pub fn sync_with(&mut self, other: &mut Self) -> Result<SyncStats, DocError> {
        sync_until_quiet(&mut self.inner, &mut other.inner)
    }

    /// Receives a document this device does not have yet from a peer that does, over the sync protocol, and
    /// checks that it is a `S` document before adopting it.
    pub fn replicate_from(
        source: &mut Self,
        actor: ActorId,
    ) -> Result<(Self, SyncStats), DocError> {
        let mut empty = AutoCommit::new().with_actor(actor);
        let stats = sync_until_quiet(&mut source.inner, &mut empty)?;
        Ok((Self::from_automerge(empty)?, stats))
    }

    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.inner.get_heads()
    }

    pub fn automerge(&self) -> &AutoCommit {
        &self.inner
    }

    pub fn automerge_mut(&mut self) -> &mut AutoCommit {
        &mut self.inner
    }

    /// The whole document as its typed value.
    pub(crate) fn read<T: Hydrate>(&self) -> Result<T, DocError> {
        Ok(autosurgeon::hydrate(&self.inner)?)
    }

    /// The object at `path` below the root, which must exist.
    pub(crate) fn object_at(&self, path: &[&str]) -> Result<ObjId, DocError> {
        let mut obj = ROOT;
        for key in path {
            obj = match self.inner.get(&obj, *key)? {
                Some((automerge::Value::Object(_), id)) => id,
                _ => return Err(DocError::Missing(path.join("/"))),
            };
        }
        Ok(obj)
    }

    /// Writes `value` at `key` inside the map at `path`, then commits: the targeted write that keeps a change small.
    pub(crate) fn write_at<T: Reconcile>(
        &mut self,
        path: &[&str],
        key: &str,
        value: &T,
    ) -> Result<(), DocError> {
        let obj = self.object_at(path)?;
        autosurgeon::reconcile_prop(&mut self.inner, obj, key, value)?;
        self.inner.commit();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Probe;
    impl Schema for Probe {
        const KIND: &'static str = "probe";
        const VERSION: u64 = 3;
    }
    #[derive(Debug)]
    struct Other;
    impl Schema for Other {
        const KIND: &'static str = "other";
        const VERSION: u64 = 1;
    }

    #[derive(Reconcile, Hydrate, Default)]
    struct Empty {}

    #[test]
    fn a_document_of_the_wrong_kind_or_schema_is_refused_on_open() {
        let actor = actor_id(DeviceId([1; 32]), 0);
        let mut doc = Doc::<Probe>::create(actor.clone(), &Empty {}).expect("create");
        let bytes = doc.save();
        assert!(Doc::<Probe>::load(&bytes, actor.clone()).is_ok());
        assert!(matches!(
            Doc::<Other>::load(&bytes, actor.clone()),
            Err(DocError::WrongKind { .. })
        ));
        doc.automerge_mut()
            .put(ROOT, "schema", 99_u64)
            .expect("put");
        let bytes = doc.save();
        assert!(matches!(
            Doc::<Probe>::load(&bytes, actor),
            Err(DocError::UnsupportedSchema { found: 99, .. })
        ));
    }

    #[test]
    fn an_actor_id_names_its_device() {
        let device = DeviceId([5; 32]);
        assert_eq!(device_of_actor(&actor_id(device, 7)), Some(device));
        assert_ne!(actor_id(device, 1), actor_id(device, 2));
    }
}
