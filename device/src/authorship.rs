//! Who may author which changes: the rule a device applies to every change a peer sends, before the sync engine
//! applies any of it.
//!
//! Every site device may write into the shared documents, so without this rule an enrolled device that goes bad (a
//! stolen kiosk, a compromised POS terminal) could delete another terminal's receipts, rewrite the directory or move
//! another device's seats, and every honest peer would merge it. Signatures catch forged receipts, not deletions. So
//! each document kind says who may author what ([`check_sync`]), judged from the changes themselves (their actor
//! ids, and for each operation the object it writes into, the key, and the operations it overwrites or deletes):
//!
//! - a **ledger page**: its device; the origin may only add (its reconciliation marks), never overwrite or delete;
//! - a **telemetry document**: its device alone;
//! - a **slot** and a show's **access list**: each device only inside its own section (`devices/<its id>`,
//!   `checkins/<its id>`, ...), which it creates itself; its sales and its transfers out live there, so it cannot
//!   touch another device's sales or move another device's quota;
//! - the **directory**: each device only its own certificate (`devices/<its id>`, signed by the authority or an
//!   invite, checked again by every reader) and the registration of its own documents (its ledger pages, its
//!   telemetry);
//! - **manifests**: edge boxes and the origin.
//!
//! Edge boxes and the origin create the shared documents and write their shared parts (shows, other devices'
//! grants, revocations, confirmations); they are trusted with those, but not with a ledger page's receipts.
//!
//! Roles come from this device's directory replica. An author it does not name yet (enrolled since, or anyone
//! while this device has no directory: the seconds of its join) is held only to the rules that need no role, so
//! a joining device still takes the directory and the shows from the edge box and the origin.
//!
//! An operation is attributed to the device in its actor id (the device key, then an epoch: how every popmesh
//! device writes, `popmesh_crdt::doc::actor_id`). Actor ids are not signed: a device that forges another
//! device's actor id is not caught here (that needs signed changes), only one that writes as itself.
//!
//! The shells (the node's links, the simulator's network) call [`check_sync`] on each sync message before the
//! sync engine sees it, close the link that sent a refused one, and record the refusal.

use std::fmt;

use automerge::legacy::{Key, ObjectId, OpType};
use automerge::{ActorId, Automerge, Change, ObjType, ScalarValue};
use popmesh_crdt::docs::DocName;
use popmesh_crdt::{DeviceId, Role};

/// What a device knows of the document a sync message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    /// A ledger page of `device`.
    Ledger(DeviceId),
    /// The telemetry document of `device`.
    Telemetry(DeviceId),
    Slot,
    Access,
    Directory,
    Manifest,
    /// Neither named in the directory this device holds nor seen created: only what is safe in any document.
    Unknown,
}

impl DocKind {
    pub fn of(name: &DocName) -> Self {
        match name {
            DocName::Ledger { device, .. } => DocKind::Ledger(*device),
            DocName::Telemetry { device } => DocKind::Telemetry(*device),
            DocName::Slot { .. } => DocKind::Slot,
            DocName::Access { .. } => DocKind::Access,
            DocName::Directory => DocKind::Directory,
            DocName::Manifest { .. } => DocKind::Manifest,
        }
    }

    /// What a document's creating change says it is: its `kind` header, and for a device's own documents the
    /// device that created it.
    fn from_header(kind: &str, creator: DeviceId) -> Self {
        match kind {
            "popmesh.ledger" => DocKind::Ledger(creator),
            "popmesh.telemetry" => DocKind::Telemetry(creator),
            "popmesh.slot" => DocKind::Slot,
            "popmesh.access" => DocKind::Access,
            "popmesh.directory" => DocKind::Directory,
            "popmesh.manifest" => DocKind::Manifest,
            _ => DocKind::Unknown,
        }
    }

    /// The device that owns the whole document (its root), if one does.
    fn owner(&self) -> Option<DeviceId> {
        match self {
            DocKind::Ledger(d) | DocKind::Telemetry(d) => Some(*d),
            _ => None,
        }
    }
}

/// Who an author is, as far as this rule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Origin,
    Edge,
    /// A kiosk or a POS terminal.
    Device,
    /// A device this device's directory replica does not name (yet): one that enrolled since, or any author while
    /// this device holds no directory (the seconds of its join). Only the rules that need no role hold for it (a
    /// ledger page is added to, never overwritten; a telemetry document is its device's), or a device that has not
    /// read the directory yet would refuse the edge box's and the origin's writes, and never get the directory.
    Unplaced,
}

fn tier(role: Option<Role>) -> Tier {
    match role {
        Some(Role::Origin) => Tier::Origin,
        Some(Role::Edge) => Tier::Edge,
        Some(Role::Kiosk | Role::Pos) => Tier::Device,
        None => Tier::Unplaced,
    }
}

/// A change that may not be applied, and who wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The device named by the change's actor id; none when the actor id is not a device's.
    pub author: Option<DeviceId>,
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.author {
            Some(d) => write!(f, "a change by {}: {}", d.short(), self.reason),
            None => write!(f, "a change: {}", self.reason),
        }
    }
}

fn refuse(author: Option<DeviceId>, reason: impl Into<String>) -> Refusal {
    Refusal {
        author,
        reason: reason.into(),
    }
}

/// The device an actor id names: its first 32 bytes (a device key), then a 4-byte epoch.
pub fn device_of(actor: &ActorId) -> Option<DeviceId> {
    let bytes = actor.to_bytes();
    if bytes.len() != 36 {
        return None;
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&bytes[..32]);
    Some(DeviceId(key))
}

/// Checks every change in one Automerge sync message (`data`, as the sync engine would apply it) against the rule
/// for a document of kind `kind`. `role_of` says the enrolled role of a device (none: not in the directory yet).
///
/// Returns what the message taught about the document: its kind, when the message carries the document's
/// creating change and `kind` was [`DocKind::Unknown`] (the shell remembers it for the document's next messages).
/// A message that does not decode is refused; the sync engine would refuse it too.
pub fn check_sync(
    kind: &DocKind,
    data: &[u8],
    role_of: &dyn Fn(&DeviceId) -> Option<Role>,
) -> Result<Option<DocKind>, Refusal> {
    let message = automerge::sync::Message::decode(data)
        .map_err(|e| refuse(None, format!("the sync message does not decode: {e}")))?;
    let mut changes = Vec::new();
    for element in message.changes.iter() {
        // An element holds one chunk or several back to back (a V2 message concatenates changes).
        for (kind, chunk) in split_chunks(element).map_err(|e| refuse(None, e))? {
            let bad = |e: String| refuse(None, format!("a chunk does not decode: {e}"));
            match kind {
                CHUNK_DOCUMENT => {
                    let doc = Automerge::load(chunk).map_err(|e| bad(e.to_string()))?;
                    changes.extend(doc.get_changes(&[]));
                }
                CHUNK_CHANGE | CHUNK_COMPRESSED => changes
                    .push(Change::from_bytes(chunk.to_vec()).map_err(|e| bad(e.to_string()))?),
                CHUNK_BUNDLE => {
                    let bundle =
                        automerge::Bundle::try_from(chunk).map_err(|e| bad(e.to_string()))?;
                    changes.extend(bundle.to_changes().map_err(|e| bad(e.to_string()))?);
                }
                other => return Err(bad(format!("unknown chunk type {other}"))),
            }
        }
    }
    check_changes(kind, &changes, role_of)
}

const CHUNK_MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const CHUNK_DOCUMENT: u8 = 0;
const CHUNK_CHANGE: u8 = 1;
const CHUNK_COMPRESSED: u8 = 2;
const CHUNK_BUNDLE: u8 = 3;

/// Splits Automerge chunks laid back to back (magic, checksum, type, LEB128 length, body) into (type, chunk).
fn split_chunks(mut bytes: &[u8]) -> Result<Vec<(u8, &[u8])>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 9 || bytes[..4] != CHUNK_MAGIC {
            return Err("a chunk without Automerge's header".into());
        }
        let kind = bytes[8];
        let (mut len, mut used) = (0u64, 0usize);
        loop {
            let byte = *bytes.get(9 + used).ok_or("a chunk length cut short")?;
            if used == 9 {
                return Err("a chunk length past 64 bits".into());
            }
            len |= u64::from(byte & 0x7f) << (7 * used);
            used += 1;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| (9 + used).checked_add(len))
            .filter(|end| *end <= bytes.len())
            .ok_or("a chunk longer than the message")?;
        out.push((kind, &bytes[..end]));
        bytes = &bytes[end..];
    }
    Ok(out)
}

/// [`check_sync`] on changes already decoded.
pub fn check_changes(
    kind: &DocKind,
    changes: &[Change],
    role_of: &dyn Fn(&DeviceId) -> Option<Role>,
) -> Result<Option<DocKind>, Refusal> {
    let mut learned = None;
    let mut kind = *kind;
    if kind == DocKind::Unknown
        && let Some(found) = changes.iter().find_map(header_of)
    {
        kind = found;
        learned = Some(found);
    }
    for change in changes {
        check_change(&kind, change, role_of)?;
    }
    Ok(learned)
}

/// The kind a creating change (no dependencies) writes into its root's `kind` header.
fn header_of(change: &Change) -> Option<DocKind> {
    if !change.deps().is_empty() {
        return None;
    }
    let creator = device_of(change.actor_id())?;
    change
        .decode()
        .operations
        .iter()
        .find_map(|op| match (&op.obj, &op.key, &op.action) {
            (ObjectId::Root, Key::Map(k), OpType::Put(ScalarValue::Str(v))) if k == "kind" => {
                Some(DocKind::from_header(v, creator))
            }
            _ => None,
        })
}

fn check_change(
    kind: &DocKind,
    change: &Change,
    role_of: &dyn Fn(&DeviceId) -> Option<Role>,
) -> Result<(), Refusal> {
    let Some(author) = device_of(change.actor_id()) else {
        return Err(refuse(None, "its actor id is not a device key and epoch"));
    };
    let who = Some(author);
    let tier = tier(role_of(&author));
    match kind {
        DocKind::Ledger(owner) if *owner != author && tier == Tier::Device => {
            return Err(refuse(
                who,
                format!("it writes into the ledger of {}", owner.short()),
            ));
        }
        DocKind::Telemetry(owner) if *owner != author => {
            return Err(refuse(
                who,
                format!("it writes into the telemetry of {}", owner.short()),
            ));
        }
        DocKind::Manifest if tier == Tier::Device => {
            return Err(refuse(
                who,
                "only an edge box or the origin writes a manifest",
            ));
        }
        _ => {}
    }
    // What no edge box or origin may do either: overwrite or delete a device's receipts.
    let guard_preds = tier == Tier::Device || matches!(kind, DocKind::Ledger(_));
    let me = author.to_hex();
    for op in change.decode().operations {
        if guard_preds {
            for pred in op.pred.iter() {
                let by = device_of(&pred.1);
                if by != Some(author) {
                    return Err(refuse(
                        who,
                        format!("it overwrites or deletes what {} wrote", named(by)),
                    ));
                }
            }
        }
        if tier != Tier::Device {
            continue;
        }
        let created_by = match &op.obj {
            ObjectId::Root => kind.owner(),
            ObjectId::Id(id) => device_of(&id.1),
        };
        if created_by == Some(author) {
            continue;
        }
        if !own_section(kind, &me, &op.key, &op.action) {
            return Err(refuse(
                who,
                match &op.obj {
                    ObjectId::Root => "it writes the root of a document it does not own".to_owned(),
                    ObjectId::Id(_) => format!(
                        "it writes {} into what {} created",
                        key_shown(&op.key),
                        named(created_by)
                    ),
                },
            ));
        }
    }
    Ok(())
}

/// What a device may write into an object another device created: the start of its own section, and in the
/// directory its certificate and its own documents' registrations.
fn own_section(kind: &DocKind, me: &str, key: &Key, action: &OpType) -> bool {
    let Key::Map(key) = key else {
        return false;
    };
    match (kind, action) {
        (
            DocKind::Slot | DocKind::Access | DocKind::Directory | DocKind::Unknown,
            OpType::Make(ObjType::Map),
        ) => key.as_str() == me && !matches!(kind, DocKind::Directory),
        (DocKind::Directory, OpType::Put(ScalarValue::Bytes(_))) => key.as_str() == me,
        (DocKind::Directory, OpType::Put(ScalarValue::Str(_))) => match key.parse::<DocName>() {
            Ok(DocName::Ledger { device, .. } | DocName::Telemetry { device }) => {
                device.to_hex() == me
            }
            _ => false,
        },
        _ => false,
    }
}

fn named(device: Option<DeviceId>) -> String {
    device.map_or_else(|| "another writer".to_owned(), |d| d.short())
}

fn key_shown(key: &Key) -> String {
    match key {
        Key::Map(k) => popmesh_crdt::naming::shown(k),
        Key::Seq(_) => "a list element".to_owned(),
    }
}

/// Kinds learned from creating changes of documents the directory does not name (yet). Past this, a peer's new
/// documents are judged as unknown ones (the strictest rule) until the directory names them: a peer creating
/// documents without end cannot grow a device's memory.
pub const LEARNED_MAX: usize = 20_000;

/// What a device knows of each document's kind (by sync engine id): named by its directory replica, or seen
/// created. Each shell keeps one and asks [`judge`] with it; memory, so a restart starts it empty.
#[derive(Debug, Default)]
pub struct Kinds {
    known: std::collections::HashMap<String, DocKind>,
}

impl Kinds {
    /// Records the name of a document this device holds.
    pub fn name(&mut self, id: &str, name: &DocName) {
        self.known.insert(id.to_owned(), DocKind::of(name));
    }

    /// The kind of document `id`: known already, the directory itself (`directory`: its id, when this device
    /// has learned it), or registered under a name (`registered`, asked only for an id not known yet).
    pub fn kind_of(
        &mut self,
        id: &str,
        directory: Option<&str>,
        registered: impl FnOnce(&str) -> Option<DocName>,
    ) -> DocKind {
        if let Some(kind) = self.known.get(id) {
            return *kind;
        }
        if directory == Some(id) {
            return DocKind::Directory;
        }
        match registered(id) {
            Some(name) => {
                let kind = DocKind::of(&name);
                self.known.insert(id.to_owned(), kind);
                kind
            }
            None => DocKind::Unknown,
        }
    }

    /// What this device knows of `id` without a lookup: the directory itself (`directory`: its id), else named or
    /// learned, else [`DocKind::Unknown`]. Both shells' share policies announce by it (`gate::announce`).
    pub fn known_kind(&self, id: &str, directory: Option<&str>) -> DocKind {
        if directory == Some(id) {
            return DocKind::Directory;
        }
        self.get(id).unwrap_or(DocKind::Unknown)
    }

    /// The kind of `id` if this device has named or learned it (no lookup, nothing learned).
    pub fn get(&self, id: &str) -> Option<DocKind> {
        self.known.get(id).copied()
    }

    /// Remembers what a document's creating change said it is (at most [`LEARNED_MAX`] documents).
    pub fn learn(&mut self, id: String, kind: DocKind) {
        if self.known.len() < LEARNED_MAX {
            self.known.insert(id, kind);
        }
    }

    pub fn clear(&mut self) {
        self.known.clear();
    }
}

/// A samod message refused, and the document it was for (none when its envelope does not read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub document: Option<String>,
    pub refusal: Refusal,
}

/// Judges one samod message a peer sent, as both shells do before their sync engine sees it: the envelope
/// ([`sync_payload`]), then the changes ([`check_sync`]) under the kind `kind_of` gives for its document. Messages
/// that carry no sync data pass. `Ok(Some((id, kind)))`: the message created a document `kind_of` did not know;
/// the shell remembers it ([`Kinds::learn`]).
pub fn judge(
    message: &[u8],
    kind_of: impl FnOnce(&str) -> DocKind,
    role_of: &dyn Fn(&DeviceId) -> Option<Role>,
) -> Result<Option<(String, DocKind)>, Rejected> {
    let payload = match sync_payload(message) {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Err(Rejected {
                document: None,
                refusal: refuse(None, e),
            });
        }
    };
    let kind = kind_of(payload.document);
    match check_sync(&kind, payload.data, role_of) {
        Ok(learned) => Ok(learned.map(|k| (payload.document.to_owned(), k))),
        Err(refusal) => Err(Rejected {
            document: Some(payload.document.to_owned()),
            refusal,
        }),
    }
}

/// An Automerge sync message carried by a samod (automerge-repo) message, and the document it is for.
#[derive(Debug, PartialEq, Eq)]
pub struct SyncPayload<'a> {
    pub document: &'a str,
    pub data: &'a [u8],
}

/// The sync message a samod `sync` or `request` message carries, read the way the sync engine will read it (none
/// for other messages). Read strictly, so what is checked is what the engine applies: a repeated field (the engine
/// keeps the last, a lenient reader the first), a document id that is not text, or a missing field is an error.
pub fn sync_payload(message: &[u8]) -> Result<Option<SyncPayload<'_>>, String> {
    let mut d = minicbor::Decoder::new(message);
    let entries = d
        .map()
        .map_err(|e| format!("not a CBOR map: {e}"))?
        .ok_or("an indefinite-length map")?;
    let (mut kind, mut document, mut data) = (None, None, None);
    let mut seen: Vec<&str> = Vec::new();
    for _ in 0..entries {
        let key = d
            .str()
            .map_err(|e| format!("a key that is not text: {e}"))?;
        if seen.contains(&key) {
            return Err(format!("the field {key:?} twice"));
        }
        seen.push(key);
        match key {
            "type" => kind = Some(d.str().map_err(|e| format!("type: {e}"))?),
            "documentId" => document = Some(d.str().map_err(|e| format!("documentId: {e}"))?),
            "data" => data = Some(d.bytes().map_err(|e| format!("data: {e}"))?),
            _ => d.skip().map_err(|e| format!("{key}: {e}"))?,
        }
    }
    match kind {
        Some("sync" | "request") => Ok(Some(SyncPayload {
            document: document.ok_or("a sync message without a documentId")?,
            data: data.ok_or("a sync message without data")?,
        })),
        _ => Ok(None),
    }
}

#[cfg(test)]
#[path = "authorship_tests.rs"]
mod tests;
