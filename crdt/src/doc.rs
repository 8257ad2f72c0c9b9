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

use std::borrow::{Borrow, BorrowMut};
use std::marker::PhantomData;

use automerge::sync::SyncDoc as _;
use automerge::transaction::{Transactable as _, Transaction};
use automerge::{ActorId, Automerge, ChangeHash, ObjId, ROOT, ReadDoc};
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
    #[error("limit reached: {0}")]
    LimitReached(String),
    #[error(
        "refusing to write as actor {0}: popmesh writes only as a device key and epoch (use Doc::attach_as)"
    )]
    NotADeviceActor(String),
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
fn sync_until_quiet(a: &mut Automerge, b: &mut Automerge) -> Result<SyncStats, DocError> {
    let mut a_state = automerge::sync::State::new();
    let mut b_state = automerge::sync::State::new();
    let mut stats = SyncStats::default();
    loop {
        let from_a = a.generate_sync_message(&mut a_state);
        if let Some(msg) = &from_a {
            stats.count(msg);
            b.receive_sync_message(&mut b_state, msg.clone())?;
        }
        let from_b = b.generate_sync_message(&mut b_state);
        if let Some(msg) = &from_b {
            stats.count(msg);
            a.receive_sync_message(&mut a_state, msg.clone())?;
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
///
/// `D` is how the document is held: owned (`Automerge`, the default), or borrowed (`&mut Automerge`) from whoever
/// owns it, such as a samod document actor. Every typed operation works on both, so the node (through samod) and the
/// simulator (through samod-core) run the same domain code on the documents they hold.
#[derive(Debug)]
pub struct Doc<S, D = Automerge> {
    inner: D,
    _schema: PhantomData<fn() -> S>,
}

impl<S> Clone for Doc<S, Automerge> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _schema: PhantomData,
        }
    }
}

/// Checks the `kind` and `schema` header of a document.
fn check_header<S: Schema>(doc: &Automerge) -> Result<(), DocError> {
    let kind: Option<String> = autosurgeon::hydrate_prop(doc, ROOT, "kind")?;
    let kind = kind.ok_or_else(|| DocError::Missing("kind".into()))?;
    if kind != S::KIND {
        return Err(DocError::WrongKind {
            expected: S::KIND,
            found: kind,
        });
    }
    let schema: Option<u64> = autosurgeon::hydrate_prop(doc, ROOT, "schema")?;
    let schema = schema.ok_or_else(|| DocError::Missing("schema".into()))?;
    if schema != S::VERSION {
        return Err(DocError::UnsupportedSchema {
            kind: S::KIND,
            found: schema,
            supported: S::VERSION,
        });
    }
    Ok(())
}

impl<S: Schema> Doc<S, Automerge> {
    /// Starts a new document: writes the header and the creator's initial root value in one change.
    pub(crate) fn create<T: Reconcile>(actor: ActorId, root: &T) -> Result<Self, DocError> {
        // Setting the actor before any change keeps the document deterministic: the random actor `new` draws is
        // never used.
        let mut doc = Self {
            inner: Automerge::new().with_actor(actor),
            _schema: PhantomData,
        };
        doc.transact(|tx| {
            autosurgeon::reconcile(tx, root)?;
            tx.put(ROOT, "kind", S::KIND)?;
            tx.put(ROOT, "schema", S::VERSION)?;
            Ok(())
        })?;
        Ok(doc)
    }

    /// Loads saved bytes and continues writing as `actor`.
    pub fn load(bytes: &[u8], actor: ActorId) -> Result<Self, DocError> {
        Self::attach(Automerge::load(bytes)?.with_actor(actor))
    }

    /// A copy of this document that writes as another actor: how a second device receives a document.
    pub fn fork_as(&self, actor: ActorId) -> Self {
        Self {
            inner: self.inner.fork().with_actor(actor),
            _schema: PhantomData,
        }
    }

    /// Receives a document this device does not have yet from a peer that does, over the sync protocol, and
    /// checks that it is a `S` document before adopting it.
    pub fn replicate_from<D2: BorrowMut<Automerge>>(
        source: &mut Doc<S, D2>,
        actor: ActorId,
    ) -> Result<(Self, SyncStats), DocError> {
        let mut empty = Automerge::new().with_actor(actor);
        let stats = sync_until_quiet(source.inner.borrow_mut(), &mut empty)?;
        Ok((Self::attach(empty)?, stats))
    }

    pub fn into_automerge(self) -> Automerge {
        self.inner
    }
}

impl<S: Schema, D: Borrow<Automerge>> Doc<S, D> {
    /// Adopts a document held by someone else (received from a peer, loaded from disk, or inside a samod document
    /// actor), checking its header first.
    pub fn attach(inner: D) -> Result<Self, DocError> {
        check_header::<S>(inner.borrow())?;
        Ok(Self {
            inner,
            _schema: PhantomData,
        })
    }

    pub fn save(&self) -> Vec<u8> {
        self.automerge().save()
    }

    pub fn heads(&self) -> Vec<ChangeHash> {
        self.automerge().get_heads()
    }

    pub fn automerge(&self) -> &Automerge {
        self.inner.borrow()
    }

    /// The whole document as its typed value.
    pub(crate) fn read<T: Hydrate>(&self) -> Result<T, DocError> {
        Ok(autosurgeon::hydrate(self.automerge())?)
    }
}

impl<S: Schema, D: BorrowMut<Automerge>> Doc<S, D> {
    /// Merges everything `other` has that this replica lacks.
    pub fn merge<D2: BorrowMut<Automerge>>(
        &mut self,
        other: &mut Doc<S, D2>,
    ) -> Result<(), DocError> {
        self.inner.borrow_mut().merge(other.inner.borrow_mut())?;
        Ok(())
    }

    /// Runs the Automerge sync protocol between two replicas until neither has anything to send, as two peers on
    /// one connection would, and counts what crossed the wire.
    pub fn sync_with<D2: BorrowMut<Automerge>>(
        &mut self,
        other: &mut Doc<S, D2>,
    ) -> Result<SyncStats, DocError> {
        sync_until_quiet(self.inner.borrow_mut(), other.inner.borrow_mut())
    }

    pub fn automerge_mut(&mut self) -> &mut Automerge {
        self.inner.borrow_mut()
    }

    /// Adopts a document someone else holds, to write into it as `actor` (a device key and epoch): how the node
    /// and the simulator write through a samod document actor, whose document carries no actor of ours.
    pub fn attach_as(mut inner: D, actor: ActorId) -> Result<Self, DocError> {
        check_header::<S>(inner.borrow())?;
        if device_of_actor(&actor).is_none() {
            return Err(DocError::NotADeviceActor(actor.to_hex_string()));
        }
        inner.borrow_mut().set_actor(actor);
        Ok(Self {
            inner,
            _schema: PhantomData,
        })
    }

    /// Runs `f` in one transaction: committed as one change if it succeeds, rolled back if it fails. Refuses to
    /// write under an actor that is not a device key and epoch, so every change names the device that made it.
    pub(crate) fn transact<T>(
        &mut self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, DocError>,
    ) -> Result<T, DocError> {
        let actor = self.automerge().get_actor();
        if device_of_actor(actor).is_none() {
            return Err(DocError::NotADeviceActor(actor.to_hex_string()));
        }
        let mut tx = self.inner.borrow_mut().transaction();
        match f(&mut tx) {
            Ok(value) => {
                tx.commit();
                Ok(value)
            }
            Err(err) => {
                tx.rollback();
                Err(err)
            }
        }
    }

    /// Writes `value` at `key` inside the map at `path`, as one change: the targeted write that keeps changes small.
    pub(crate) fn write_at<T: Reconcile>(
        &mut self,
        path: &[&str],
        key: &str,
        value: &T,
    ) -> Result<(), DocError> {
        self.transact(|tx| {
            let obj = object_at(tx, path)?;
            autosurgeon::reconcile_prop(tx, obj, key, value)?;
            Ok(())
        })
    }
}

/// The object at `path` below the root, which must exist.
pub(crate) fn object_at(doc: &impl ReadDoc, path: &[&str]) -> Result<ObjId, DocError> {
    let mut obj = ROOT;
    for key in path {
        obj = match doc.get(&obj, *key)? {
            Some((automerge::Value::Object(_), id)) => id,
            _ => return Err(DocError::Missing(path.join("/"))),
        };
    }
    Ok(obj)
}

/// Reads a map keyed by text, skipping entries that do not read as `V` (what a reader does with a field whose
/// entries other devices write: an entry of the wrong shape, such as a map where a number belongs, is that
/// writer's mistake and costs only that entry, never the whole document). For `#[autosurgeon(hydrate = ...)]`.
pub fn lenient_map<'a, D: autosurgeon::ReadDoc, V: Hydrate>(
    doc: &D,
    obj: &ObjId,
    prop: autosurgeon::Prop<'a>,
) -> Result<std::collections::BTreeMap<String, V>, autosurgeon::HydrateError> {
    let map = match doc.get(obj, &prop)? {
        Some((automerge::Value::Object(automerge::ObjType::Map), id)) => id,
        None => return Ok(std::collections::BTreeMap::new()),
        Some(_) => {
            return Err(autosurgeon::HydrateError::unexpected(
                "a map",
                format!("something else at {prop}"),
            ));
        }
    };
    let keys: Vec<String> = doc
        .map_range(&map, ..)
        .map(|item| item.key.to_string())
        .collect();
    let mut out = std::collections::BTreeMap::new();
    for key in keys {
        if let Ok(value) = autosurgeon::hydrate_prop::<_, V, _, _>(doc, &map, key.as_str()) {
            out.insert(key, value);
        }
    }
    Ok(out)
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
        doc.transact(|tx| Ok(tx.put(ROOT, "schema", 99_u64)?))
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
