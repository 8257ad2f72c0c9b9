//! One simulated device's sync engine: the real samod-core `Hub` and `DocumentActor`s, driven by hand.
//!
//! The host plays the part the `samod` runtime plays in the node: it feeds events to the hub, runs the document
//! actors the hub asks for, completes their storage tasks against [`Storage`], and hands outgoing wire messages to the
//! simulated network. Everything runs to quiescence inside each call ([`Host::pump`]), in a deterministic order:
//! samod-core keeps its state in `HashMap`s and numbers its ids from process-wide counters, so the host sorts
//! whatever it receives by document id (drawn from the seeded rng) or by arrival before acting on it, and exposes no
//! samod-core id to the trace.

use std::collections::{BTreeMap, VecDeque};

use automerge::Automerge;
use std::rc::Rc;

use popmesh_crdt::docs::DocName;
use popmesh_device::authorship::Kinds;
use popmesh_device::durability::{Plan, Save, Snapshot};
use popmesh_device::topology::Topology;
use popmesh_device::{Durability, gate};
use rand::rngs::StdRng;
use samod_core::actors::DocumentActor;
use samod_core::actors::document::io::{DocumentIoResult, DocumentIoTask};
use samod_core::actors::document::{DocActorResult, SpawnArgs};
use samod_core::actors::hub::io::{HubIoAction, HubIoResult};
use samod_core::actors::hub::{DispatchedCommand, Hub, HubEvent, HubResults};
use samod_core::io::{IoResult, StorageResult, StorageTask};
use samod_core::network::{BackoffConfig, ConnectionEvent, DialerConfig, ListenerConfig};
use samod_core::{
    CommandId, CommandResult, ConnectionId, DialerId, DocumentActorId, DocumentId, ListenerId,
    LoaderState, PeerId, ShareConfig, StorageKey, UnixTimestamp,
};

/// A device's storage, as the node's store keeps it: two tiers and a disk that can fail.
///
/// - The **lazy tier**: what samod-core writes (its chunks, snapshots and deletes) lands here first and is flushed
///   to disk every `FLUSH_EVERY` (2 s in the node); a crash loses what was not flushed.
/// - The **acknowledged tier** ([`Storage::put_ack`]): written through with an fsync before the node answers; it
///   survives a crash. Entries use samod's own key layout, so samod-core loads them on restart like any chunk.
/// - **Faults** ([`DiskFault`]): a full disk or failing fsyncs. The device learns of one only when a write hits it
///   (as redb reports an I/O error): from then on the store is *failed* and refuses every write, until the disk
///   works again and the next flush tick reopens it ([`Storage::recover`]).
#[derive(Debug, Clone, Default)]
pub struct Storage {
    durable: BTreeMap<String, (StorageKey, Vec<u8>)>,
    /// Not flushed yet: `None` is a delete.
    lazy: BTreeMap<String, (StorageKey, Option<Vec<u8>>)>,
    /// The disk refuses writes now (the device may not know yet).
    disk: Option<DiskFault>,
    /// The device's store has seen a write fail and refuses writes until it recovers.
    failed: Option<DiskFault>,
}

/// How a disk refuses writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DiskFault {
    Full,
    FsyncError,
}

impl DiskFault {
    pub fn reason(self) -> &'static str {
        match self {
            DiskFault::Full => "no space left on device",
            DiskFault::FsyncError => "fsync failed: input/output error",
        }
    }
}

impl Storage {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self.lazy.get(key) {
            Some((_, v)) => v.clone(),
            None => self.durable.get(key).map(|(_, v)| v.clone()),
        }
    }

    fn run(&mut self, task: StorageTask) -> StorageResult {
        match task {
            StorageTask::Load { key } => StorageResult::Load {
                value: self.get(&key.to_string()),
            },
            StorageTask::LoadRange { prefix } => {
                let mut values: BTreeMap<String, (StorageKey, Vec<u8>)> = self
                    .durable
                    .iter()
                    .filter(|(_, (k, _))| prefix.is_prefix_of(k))
                    .map(|(s, (k, v))| (s.clone(), (k.clone(), v.clone())))
                    .collect();
                for (s, (k, v)) in &self.lazy {
                    if prefix.is_prefix_of(k) {
                        match v {
                            Some(v) => values.insert(s.clone(), (k.clone(), v.clone())),
                            None => values.remove(s),
                        };
                    }
                }
                StorageResult::LoadRange {
                    values: values.into_values().collect(),
                }
            }
            // samod's writes are lazy: they reach the disk at the next flush, or never if the device crashes first.
            StorageTask::Put { key, value } => {
                self.lazy.insert(key.to_string(), (key, Some(value)));
                StorageResult::Put
            }
            StorageTask::Delete { key } => {
                self.lazy.insert(key.to_string(), (key, None));
                StorageResult::Delete
            }
        }
    }

    /// The store's fault, once a write has met it.
    pub fn failed(&self) -> Option<DiskFault> {
        self.failed
    }

    /// The disk starts (or stops) refusing writes.
    pub fn set_disk(&mut self, fault: Option<DiskFault>) {
        self.disk = fault;
    }

    fn refuse(&mut self) -> Result<(), DiskFault> {
        if let Some(f) = self.failed.or(self.disk) {
            self.failed = Some(f);
            return Err(f);
        }
        Ok(())
    }

    /// An acknowledged write: `bytes` of document `doc` under samod's key layout, durable when this returns `Ok`.
    pub fn put_ack(&mut self, doc: &DocumentId, bytes: &[u8]) -> Result<(), DiskFault> {
        self.refuse()?;
        let name = format!("ack-{}", blake3::hash(bytes).to_hex());
        let key = StorageKey::from_parts([doc.to_string().as_str(), "incremental", name.as_str()])
            .expect("a document id and a hash are key parts");
        self.durable.insert(key.to_string(), (key, bytes.to_vec()));
        Ok(())
    }

    /// The flush tick: the lazy tier reaches the disk in one transaction, unless the disk refuses it.
    pub fn flush(&mut self) {
        if self.lazy.is_empty() || self.refuse().is_err() {
            return;
        }
        for (s, (k, v)) in std::mem::take(&mut self.lazy) {
            match v {
                Some(v) => self.durable.insert(s, (k, v)),
                None => self.durable.remove(&s),
            };
        }
    }

    /// The flush tick on a failed store: reopens it once the disk takes writes again. Returns whether it did.
    pub fn recover(&mut self) -> bool {
        if self.failed.is_some() && self.disk.is_none() {
            self.failed = None;
            return true;
        }
        false
    }

    /// Document `doc` as a restart would load it from the disk alone (the lazy tier left out): what survives a
    /// SIGKILL now. `None` if nothing of it is on disk.
    pub fn on_disk(&self, doc: &DocumentId) -> Option<Automerge> {
        let prefix = StorageKey::from_parts([doc.to_string().as_str()]).ok()?;
        let mut am = Automerge::new();
        let mut any = false;
        for (key, bytes) in self.durable.values() {
            if prefix.is_prefix_of(key) {
                am.load_incremental(bytes).ok()?;
                any = true;
            }
        }
        any.then_some(am)
    }

    /// What survives a crash: the disk, not the lazy tier; a failed store is reopened at start.
    pub fn crashed(mut self) -> Self {
        self.lazy.clear();
        self.failed = None;
        self
    }
}

/// A write made in memory and planned, not durable yet.
#[derive(Debug, Clone)]
pub struct PendingAck {
    pub doc: DocumentId,
    pub plan: Plan,
    pub bytes: Vec<u8>,
    pub after: Vec<automerge::ChangeHash>,
}

/// Why the host could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("document {0} is not open on this device")]
    NotOpen(String),
    #[error("samod-core refused: {0}")]
    Samod(String),
}

/// Where a connection came from, for the network's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Dialer,
    Listener,
}

/// A simulated device's samod-core hub, its document actors and its storage.
pub struct Host {
    hub: Hub,
    rng: StdRng,
    storage: Storage,
    inbox: VecDeque<HubEvent>,
    completed: Vec<(CommandId, CommandResult)>,
    actors: BTreeMap<DocumentId, (DocumentActorId, DocumentActor)>,
    actor_docs: BTreeMap<DocumentActorId, DocumentId>,
    outbox: Vec<(ConnectionId, Vec<u8>)>,
    disconnects: Vec<ConnectionId>,
    established: Vec<ConnectionId>,
    listener: ListenerId,
    dialer: DialerId,
    /// Heads changes reported by document actors since the last [`Host::take_changed`].
    changed: Vec<DocumentId>,
    /// Changes this device made to documents (created ones count once): the denominator of the traffic figures.
    pub changes: u64,
    /// What this device knows of each document's kind (the node's judge and share policy share one too): named
    /// as documents open or are created, learned from creating changes; memory, lost on a crash.
    pub kinds: Kinds,
    /// The directory's id, once the device knows it.
    directory: Option<String>,
    /// The site's shape this device computed last: which peers are told of which documents.
    shape: Option<Rc<Topology>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("peer", &self.hub.peer_id())
            .field("documents", &self.actors.len())
            .finish_non_exhaustive()
    }
}

impl Host {
    /// Boots a hub on `storage` (empty for a new device, or what survived a crash).
    pub fn boot(peer: &str, mut storage: Storage, mut rng: StdRng, now: UnixTimestamp) -> Self {
        let mut loader = Hub::load(PeerId::from_string(peer.to_owned()));
        let hub = loop {
            match loader.step(&mut rng, now) {
                LoaderState::NeedIo(tasks) => {
                    for task in tasks {
                        let payload = storage.run(task.action);
                        loader.provide_io_result(IoResult {
                            task_id: task.task_id,
                            payload,
                        });
                    }
                }
                LoaderState::Loaded(hub) => break *hub,
            }
        };
        let mut host = Self {
            hub,
            rng,
            storage,
            inbox: VecDeque::new(),
            completed: Vec::new(),
            actors: BTreeMap::new(),
            actor_docs: BTreeMap::new(),
            outbox: Vec::new(),
            disconnects: Vec::new(),
            established: Vec::new(),
            listener: ListenerId::from(0),
            dialer: DialerId::from(0),
            changed: Vec::new(),
            changes: 0,
            kinds: Kinds::default(),
            directory: None,
            shape: None,
        };
        let url = |s: &str| url::Url::parse(s).expect("a constant URL parses");
        host.listener = match host.command(
            HubEvent::add_listener(ListenerConfig {
                url: url("sim://listener"),
            }),
            now,
        ) {
            Some(CommandResult::AddListener { listener_id }) => listener_id,
            other => panic!("samod-core did not add a listener: {other:?}"),
        };
        // The simulator decides when to reconnect (deterministically), so the hub's own backoff never fires.
        let backoff = BackoffConfig {
            initial_delay: std::time::Duration::from_secs(1 << 30),
            max_delay: std::time::Duration::from_secs(1 << 30),
            max_retries: None,
        };
        host.dialer = match host.command(
            HubEvent::add_dialer(DialerConfig {
                url: url("sim://dialer"),
                backoff,
            }),
            now,
        ) {
            Some(CommandResult::AddDialer { dialer_id }) => dialer_id,
            other => panic!("samod-core did not add a dialer: {other:?}"),
        };
        host
    }

    /// Takes the site's shape this device computed (the share policy asks it whom to tell of what).
    pub fn set_shape(&mut self, shape: Option<Rc<Topology>>) {
        self.shape = shape;
    }

    /// Names document `id` (it opened, was created here, or the directory registers it).
    pub fn name(&mut self, id: &DocumentId, name: &DocName) {
        self.kinds.name(&id.to_string(), name);
    }

    /// Knows the directory's id.
    pub fn know_directory(&mut self, id: &DocumentId) {
        self.directory = Some(id.to_string());
    }

    /// The node's share policy for a site peer: read and write, announced only if the shape has the peer hold
    /// the document's kind (`popmesh_device::gate::announce`).
    fn share_config(&self, doc: &DocumentId, peer: &PeerId) -> ShareConfig {
        let kind = self
            .kinds
            .known_kind(&doc.to_string(), self.directory.as_deref());
        ShareConfig::read_write().with_announce(gate::announce(
            self.shape.as_deref(),
            peer.as_str(),
            kind,
        ))
    }

    pub fn peer_id(&self) -> PeerId {
        self.hub.peer_id()
    }

    /// Ends this incarnation; only what reached the disk survives.
    pub fn crash(self) -> Storage {
        self.storage.crashed()
    }

    /// This device's storage (the shell's acknowledged writes, flushes and faults).
    pub fn storage(&mut self) -> &mut Storage {
        &mut self.storage
    }

    pub fn store_failed(&self) -> Option<DiskFault> {
        self.storage.failed()
    }

    fn command(
        &mut self,
        dispatched: DispatchedCommand,
        now: UnixTimestamp,
    ) -> Option<CommandResult> {
        let DispatchedCommand { command_id, event } = dispatched;
        self.inbox.push_back(event);
        self.pump(now);
        let i = self
            .completed
            .iter()
            .position(|(id, _)| *id == command_id)?;
        Some(self.completed.remove(i).1)
    }

    /// Opens a new connection, as the dialing or the accepting side.
    pub fn open_connection(&mut self, side: Side, now: UnixTimestamp) -> ConnectionId {
        let dispatched = match side {
            Side::Dialer => HubEvent::create_dialer_connection(self.dialer, None),
            Side::Listener => HubEvent::create_listener_connection(self.listener, None),
        };
        match self.command(dispatched, now) {
            Some(CommandResult::CreateConnection { connection_id }) => connection_id,
            other => panic!("samod-core did not create a connection: {other:?}"),
        }
    }

    /// A wire message arrived on `conn`.
    pub fn receive(
        &mut self,
        conn: ConnectionId,
        msg: Vec<u8>,
        now: UnixTimestamp,
    ) -> Option<String> {
        match self.command(HubEvent::receive(conn, msg), now) {
            Some(CommandResult::Receive { error, .. }) => error,
            _ => None,
        }
    }

    /// The network dropped `conn`.
    pub fn connection_lost(&mut self, conn: ConnectionId, now: UnixTimestamp) {
        self.inbox.push_back(HubEvent::connection_lost(conn));
        self.pump(now);
    }

    /// The periodic tick samod's runtime sends (every 100 ms there).
    pub fn tick(&mut self, now: UnixTimestamp) {
        self.inbox.push_back(HubEvent::tick());
        self.pump(now);
    }

    /// Creates a document with `content` and returns its id once it is stored.
    pub fn create_document(
        &mut self,
        content: Automerge,
        now: UnixTimestamp,
    ) -> Result<DocumentId, HostError> {
        match self.command(HubEvent::create_document(content), now) {
            Some(CommandResult::CreateDocument { document_id, .. }) => {
                self.changes += 1;
                Ok(document_id)
            }
            other => Err(HostError::Samod(format!("create_document: {other:?}"))),
        }
    }

    /// Asks storage and peers for a document; it opens when found (see [`Host::is_open`]).
    pub fn find_document(&mut self, id: &DocumentId, now: UnixTimestamp) {
        if !self.actors.contains_key(id) {
            let _ = self.command(HubEvent::search_for_doc(id.clone()), now);
        }
    }

    /// Is the document loaded and ready for reads and writes here?
    pub fn is_open(&self, id: &DocumentId) -> bool {
        self.actors
            .get(id)
            .is_some_and(|(_, a)| a.is_document_ready())
    }

    /// Every document this device holds, ready or not.
    pub fn documents(&self) -> impl Iterator<Item = &DocumentId> {
        self.actors.keys()
    }

    /// Reads a ready document.
    pub fn read<R>(
        &self,
        id: &DocumentId,
        f: impl FnOnce(&Automerge) -> R,
    ) -> Result<R, HostError> {
        match self.actors.get(id) {
            Some((_, actor)) if actor.is_document_ready() => Ok(f(actor.document())),
            _ => Err(HostError::NotOpen(id.to_string())),
        }
    }

    /// Changes a ready document through the actor, as `DocHandle::with_document` does in the node, then runs the
    /// consequences (storage, sync messages) to completion. When this returns, the change is in [`Storage`].
    pub fn change<R>(
        &mut self,
        id: &DocumentId,
        now: UnixTimestamp,
        f: impl FnOnce(&mut Automerge) -> R,
    ) -> Result<R, HostError> {
        let (actor_id, actor) = match self.actors.get_mut(id) {
            Some((actor_id, actor)) if actor.is_document_ready() => (*actor_id, actor),
            _ => return Err(HostError::NotOpen(id.to_string())),
        };
        let before = actor.document().get_heads();
        let result = actor
            .with_document(now, f)
            .map_err(|e| HostError::Samod(format!("with_document: {e:?}")))?;
        if actor.document().get_heads() != before {
            self.changes += 1;
        }
        let value = result.value;
        self.handle_actor_result(actor_id, result.actor_result, now);
        self.pump(now);
        Ok(value)
    }

    /// [`Host::change`], with what must be made durable for it planned by the device core
    /// (`popmesh_device::durability`, as the node's `change` plans it): the write is not done yet; the shell
    /// completes it with [`Host::complete_ack`], at once or after a simulated fsync.
    pub fn change_planned<R>(
        &mut self,
        id: &DocumentId,
        now: UnixTimestamp,
        known: Snapshot,
        f: impl FnOnce(&mut Automerge) -> R,
    ) -> Result<(R, PendingAck), HostError> {
        let doc = id.clone();
        self.change(id, now, move |am| {
            let before = am.get_heads();
            let out = f(am);
            let plan = known.plan(&before);
            let bytes = match &plan.save {
                Save::Whole => am.save(),
                Save::After(heads) => am.save_after(heads),
            };
            let after = am.get_heads();
            (
                out,
                PendingAck {
                    doc,
                    plan,
                    bytes,
                    after,
                },
            )
        })
    }

    /// Makes a planned write durable (the acknowledged tier) and tells `durability` how it went.
    pub fn complete_ack(
        &mut self,
        durability: &mut Durability<DocumentId>,
        write: PendingAck,
    ) -> Result<(), DiskFault> {
        let done = if write.bytes.is_empty() {
            Ok(())
        } else {
            self.storage.put_ack(&write.doc, &write.bytes)
        };
        durability.handle_saved(&write.doc, &write.plan, write.after, done.is_ok());
        done
    }

    /// A change acknowledged as the node's `Node::change` does: made, then made durable before it returns.
    /// `Ok((value, Err(fault)))`: the change is in memory (and may sync) but was not acknowledged.
    pub fn change_acked<R>(
        &mut self,
        durability: &mut Durability<DocumentId>,
        id: &DocumentId,
        now: UnixTimestamp,
        f: impl FnOnce(&mut Automerge) -> R,
    ) -> Result<(R, Result<(), DiskFault>), HostError> {
        let known = durability.snapshot(id);
        let (out, write) = self.change_planned(id, now, known, f)?;
        Ok((out, self.complete_ack(durability, write)))
    }

    /// Creates a document and acknowledges it whole, as the node's `own_document` does.
    pub fn create_acked(
        &mut self,
        content: Automerge,
        now: UnixTimestamp,
    ) -> Result<(DocumentId, Result<(), DiskFault>), HostError> {
        let bytes = content.save();
        let id = self.create_document(content, now)?;
        let done = self.storage.put_ack(&id, &bytes);
        Ok((id, done))
    }

    /// Messages for the network, in the order they were produced.
    pub fn take_outbox(&mut self) -> Vec<(ConnectionId, Vec<u8>)> {
        std::mem::take(&mut self.outbox)
    }

    /// Connections the hub closed.
    pub fn take_disconnects(&mut self) -> Vec<ConnectionId> {
        std::mem::take(&mut self.disconnects)
    }

    /// Connections whose handshake completed.
    pub fn take_established(&mut self) -> Vec<ConnectionId> {
        std::mem::take(&mut self.established)
    }

    /// Documents whose heads changed since the last call, sorted and without repeats.
    pub fn take_changed(&mut self) -> Vec<DocumentId> {
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort();
        changed.dedup();
        changed
    }

    /// Runs the hub and the document actors until nothing is left to do.
    pub fn pump(&mut self, now: UnixTimestamp) {
        while let Some(event) = self.inbox.pop_front() {
            let results = self.hub.handle_event(&mut self.rng, now, event);
            self.handle_hub_results(results, now);
        }
    }

    fn handle_hub_results(&mut self, results: HubResults, now: UnixTimestamp) {
        let HubResults {
            new_tasks,
            completed_commands,
            mut spawn_actors,
            mut actor_messages,
            connection_events,
            ..
        } = results;
        // Spawn in document-id order: samod-core hands these over in HashMap order.
        spawn_actors.sort_by(|a, b| a.document_id().cmp(b.document_id()));
        for args in spawn_actors {
            self.spawn(args, now);
        }
        let mut completed: Vec<(CommandId, CommandResult)> =
            completed_commands.into_iter().collect();
        completed.sort_by_key(|(id, _)| u32::from(*id));
        self.completed.extend(completed);
        for task in new_tasks {
            match task.action {
                HubIoAction::Send { connection_id, msg } => {
                    self.outbox.push((connection_id, msg));
                    self.inbox.push_back(HubEvent::io_complete(IoResult {
                        task_id: task.task_id,
                        payload: HubIoResult::Send,
                    }));
                }
                HubIoAction::Disconnect { connection_id } => {
                    self.disconnects.push(connection_id);
                    self.inbox.push_back(HubEvent::io_complete(IoResult {
                        task_id: task.task_id,
                        payload: HubIoResult::Disconnect,
                    }));
                }
            }
        }
        // Deliver hub-to-document messages in document order, keeping each document's messages in sequence.
        actor_messages
            .sort_by(|(a, _), (b, _)| self.actor_docs.get(a).cmp(&self.actor_docs.get(b)));
        for (actor_id, msg) in actor_messages {
            let Some(doc_id) = self.actor_docs.get(&actor_id).cloned() else {
                continue;
            };
            let Some((_, actor)) = self.actors.get_mut(&doc_id) else {
                continue;
            };
            if let Ok(result) = actor.handle_message(now, msg) {
                self.handle_actor_result(actor_id, result, now);
            }
        }
        for event in connection_events {
            if let ConnectionEvent::HandshakeCompleted { connection_id, .. } = event {
                self.established.push(connection_id);
            }
        }
    }

    fn spawn(&mut self, args: SpawnArgs, now: UnixTimestamp) {
        let actor_id = args.actor_id();
        let doc_id = args.document_id().clone();
        let (actor, result) = DocumentActor::new(now, args);
        self.actors.insert(doc_id.clone(), (actor_id, actor));
        self.actor_docs.insert(actor_id, doc_id);
        self.handle_actor_result(actor_id, result, now);
    }

    /// Completes an actor's storage and policy tasks at once (storage here acknowledges synchronously, like an
    /// fsync'd write), and queues its messages for the hub.
    fn handle_actor_result(
        &mut self,
        actor_id: DocumentActorId,
        result: DocActorResult,
        now: UnixTimestamp,
    ) {
        let mut pending = VecDeque::from([result]);
        while let Some(result) = pending.pop_front() {
            let DocActorResult {
                io_tasks,
                outgoing_messages,
                change_events,
                stopped,
                ..
            } = result;
            let Some(doc_id) = self.actor_docs.get(&actor_id).cloned() else {
                return;
            };
            if !change_events.is_empty() {
                self.changed.push(doc_id.clone());
            }
            for msg in outgoing_messages {
                self.inbox.push_back(HubEvent::actor_message(actor_id, msg));
            }
            for task in io_tasks {
                let payload = match task.action {
                    DocumentIoTask::Storage(storage_task) => {
                        DocumentIoResult::Storage(self.storage.run(storage_task))
                    }
                    // Every enrolled peer may read and write every site document (enrollment is checked before a
                    // connection reaches the sync engine); it is told only of those it holds.
                    DocumentIoTask::CheckSharePolicy { peer_id } => {
                        DocumentIoResult::CheckSharePolicy(self.share_config(&doc_id, &peer_id))
                    }
                };
                let Some((_, actor)) = self.actors.get_mut(&doc_id) else {
                    break;
                };
                if let Ok(next) = actor.handle_io_complete(
                    now,
                    IoResult {
                        task_id: task.task_id,
                        payload,
                    },
                ) {
                    pending.push_back(next);
                }
            }
            if stopped {
                self.actors.remove(&doc_id);
                self.actor_docs.remove(&actor_id);
                return;
            }
        }
    }
}
