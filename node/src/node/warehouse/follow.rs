//! The follower: the origin's task that writes every document change into the warehouse (see the parent module).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use automerge::Automerge;
use popmesh_crdt::Doc;
use popmesh_crdt::access::Access;
use popmesh_crdt::directory::{Directory, DirectoryView};
use popmesh_crdt::docs::DocName;
use popmesh_crdt::escrow::Slot;
use popmesh_crdt::ledger::Ledger;
use popmesh_crdt::telemetry::Telemetry;
use samod::{DocHandle, DocumentId};

use super::rows::{self, Rows};
use super::write::Cursor;
use super::{
    PERSIST_EVERY, Sink, TICK, TXN_DOCS_MAX, TXN_ROWS_MAX, WarehouseError, followed, lock, order,
};
use crate::node::Node;

/// The follower's state for one connection to the database.
#[derive(Default)]
struct Follower {
    /// This origin's cursors as the database has them (none: not connected).
    cursors: Option<HashMap<String, Vec<String>>>,
    /// Documents compared with the cursors since connecting.
    seen: HashSet<DocumentId>,
    /// Documents to compare although no change was seen (found open, or after a lag or an overflow).
    check: BTreeSet<DocumentId>,
    /// Digests of the rows written per document, so a change sends only what changed.
    written: HashMap<DocumentId, HashSet<u64>>,
    /// Receipt verification results per ledger page, for the current trust digest.
    verified: HashMap<DocumentId, rows::Verified>,
    /// The directory as last read: heads, trust digest, view.
    directory: Option<(Vec<String>, String, Arc<DirectoryView>)>,
    retry_at: Option<Instant>,
    last_persist: Option<Instant>,
    /// Documents whose rows the database refused, at the heads it refused them (not tried again until they change).
    refused: HashMap<DocumentId, Vec<String>>,
    /// The last pass met a refused batch: this one writes one document per transaction to find the culprit.
    single: bool,
}

/// Whether the database refused the data itself (a value it cannot store, a constraint), as opposed to the
/// connection, the server going away, a deadlock or the schema: then only the documents in that batch are at fault.
fn refused_data(e: &WarehouseError) -> bool {
    match e {
        WarehouseError::Db(e) => e
            .as_db_error()
            .is_some_and(|db| matches!(&db.code().code()[..2], "22" | "23")),
        _ => false,
    }
}

/// The task the origin runs: follows every document change into the warehouse.
pub async fn follow(node: Arc<Node>, sink: Arc<Sink>) {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    let mut events = node.subscribe();
    let mut f = Follower::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(ev) => sink.changed(&ev),
                Err(RecvError::Lagged(_)) => f.seen.clear(),
                Err(RecvError::Closed) => return,
            },
            () = sink.wake.notified() => {}
            _ = tick.tick() => {}
        }
        loop {
            match events.try_recv() {
                Ok(ev) => sink.changed(&ev),
                Err(TryRecvError::Lagged(_)) => f.seen.clear(),
                Err(_) => break,
            }
        }
        if let Err(e) = f.pass(&node, &sink).await {
            sink.down(&e);
            f.cursors = None;
            f.retry_at = Some(Instant::now() + sink.retry);
        }
        if f.last_persist.is_none_or(|t| t.elapsed() >= PERSIST_EVERY) {
            sink.persist(&super::followed_ids(&node)).await;
            f.last_persist = Some(Instant::now());
        }
    }
}

/// A document read for writing: its cursor and rows.
struct Read {
    id: DocumentId,
    cursor: Cursor,
    rows: Rows,
    /// Digests of all its rows (before dropping those written already).
    digests: Vec<u64>,
}

fn heads_of(am: &Automerge) -> Vec<String> {
    let mut heads: Vec<String> = am.get_heads().iter().map(|h| h.to_string()).collect();
    heads.sort();
    heads
}

impl Follower {
    async fn pass(&mut self, node: &Node, sink: &Sink) -> Result<(), WarehouseError> {
        if self.cursors.is_none() {
            if self.retry_at.is_some_and(|t| Instant::now() < t) {
                return Ok(());
            }
            self.cursors = Some(sink.load_cursors().await?);
            self.seen.clear();
            self.written.clear();
        }
        if sink.replay.swap(false, Ordering::AcqRel) {
            sink.drop_cursors().await?;
            self.cursors = Some(HashMap::new());
            self.seen.clear();
            self.written.clear();
            self.verified.clear();
            tracing::info!("replaying every document into the warehouse");
        }
        let overflowed = lock(&sink.queue).overflowed();
        if overflowed {
            self.seen.clear();
        }
        let handles: BTreeMap<DocumentId, (DocName, DocHandle)> = node
            .document_handles()
            .into_iter()
            .filter(|(_, n, _)| followed(n))
            .map(|(id, n, h)| (id, (n, h)))
            .collect();
        tracing::trace!(documents = handles.len(), "pass");
        if let Some((_, (_, dir))) = handles.iter().find(|(_, (n, _))| *n == DocName::Directory) {
            self.read_directory(dir).await;
            tracing::trace!("directory read");
        }
        for id in handles.keys() {
            if self.seen.insert(id.clone()) {
                self.check.insert(id.clone());
            }
        }
        self.check.retain(|id| handles.contains_key(id));
        self.publish_checking(sink);
        sink.up();
        // What to look at: owed documents and those to check, in order (definitions first).
        let generation = lock(&sink.queue).generation();
        let owed: Vec<DocumentId> = lock(&sink.queue)
            .owed()
            .keys()
            .filter_map(|id| id.parse().ok())
            .collect();
        let mut work: Vec<(u8, DocumentId)> = owed
            .into_iter()
            .chain(self.check.iter().cloned())
            .filter_map(|id| handles.get(&id).map(|(n, _)| (order(n), id)))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        work.sort();
        let docs_max = if std::mem::take(&mut self.single) {
            1
        } else {
            TXN_DOCS_MAX
        };
        let mut batch: Vec<Read> = Vec::new();
        let mut skipped: Vec<DocumentId> = Vec::new();
        tracing::trace!(work = work.len(), "to look at");
        for (_, id) in work {
            let Some((name, handle)) = handles.get(&id) else {
                continue;
            };
            tracing::trace!(doc = %name, "reading");
            match self.read(sink, &id, name, handle).await {
                Some(read) => batch.push(read),
                None => {
                    tracing::debug!(doc = %name, "nothing to write");
                    skipped.push(id);
                }
            }
            let rows: usize = batch.iter().map(|r| r.rows.len()).sum();
            if rows >= TXN_ROWS_MAX || batch.len() >= docs_max {
                self.flush(sink, std::mem::take(&mut batch), generation)
                    .await?;
            }
        }
        self.flush(sink, batch, generation).await?;
        {
            let mut q = lock(&sink.queue);
            for id in skipped {
                self.check.remove(&id);
                q.paid(&id.to_string(), generation);
            }
            // Owed documents this device does not hold open (any more) cannot be written: forget them.
            let gone: Vec<String> = q
                .owed()
                .keys()
                .filter(|id| {
                    id.parse()
                        .map_or(true, |d: DocumentId| !handles.contains_key(&d))
                })
                .cloned()
                .collect();
            for id in gone {
                q.paid(&id, generation);
            }
            if overflowed && self.check.is_empty() {
                q.settle_overflow();
            }
        }
        self.publish_checking(sink);
        sink.write_batches().await
    }

    /// Tells the sink which documents it has compared and which it has still to compare.
    fn publish_checking(&self, sink: &Sink) {
        let known = super::Known {
            seen: self.seen.iter().map(ToString::to_string).collect(),
            check: self.check.iter().map(ToString::to_string).collect(),
        };
        *lock(&sink.known) = known;
    }

    /// Reads the directory's heads, and its trust digest and view when they changed.
    async fn read_directory(&mut self, handle: &DocHandle) {
        let known = self.directory.as_ref().map(|(h, _, _)| h.clone());
        let read = handle
            .with_document_async(move |am| {
                let heads = heads_of(am);
                if known.as_ref() == Some(&heads) {
                    return None;
                }
                let record = Doc::<Directory, &mut Automerge>::attach(am)
                    .ok()?
                    .record()
                    .ok()?;
                let digest = rows::trust_digest(&record);
                let view = DirectoryView::from_record(record).ok()?;
                Some((heads, digest, view))
            })
            .await;
        if let Ok(Some((heads, digest, view))) = read {
            if self.directory.as_ref().is_none_or(|(_, d, _)| *d != digest) {
                // Receipts verify differently now: every ledger page is compared again.
                self.verified.clear();
                self.seen.clear();
            }
            self.directory = Some((heads, digest, Arc::new(view)));
        }
    }

    /// A document's cursor and the rows not written yet, or none when its cursor is current (or it is unreadable
    /// for now, such as a ledger whose directory has not arrived).
    async fn read(
        &mut self,
        sink: &Sink,
        id: &DocumentId,
        name: &DocName,
        handle: &DocHandle,
    ) -> Option<Read> {
        let cursors = self.cursors.as_ref()?;
        let trust = self
            .directory
            .as_ref()
            .map(|(_, d, v)| (d.clone(), v.clone()));
        // Heads are read before (or, for the directory, with) the rows, never after: a cursor may lag its rows (they
        // are read again, harmlessly) but must never run ahead of them.
        let heads = match (name, &self.directory) {
            (DocName::Directory, Some((heads, _, _))) => heads.clone(),
            (DocName::Directory, None) => return None,
            _ => handle.with_document_async(|am| heads_of(am)).await.ok()?,
        };
        let effective = match (name, &trust) {
            (DocName::Ledger { .. }, Some((digest, _))) => {
                let mut h = heads.clone();
                h.push(format!("trust:{digest}"));
                h
            }
            (DocName::Ledger { .. }, None) => return None,
            _ => heads,
        };
        if cursors.get(&id.to_string()) == Some(&effective)
            || self.refused.get(id) == Some(&effective)
        {
            return None;
        }
        let mut rows = match name {
            DocName::Directory => {
                let (_, _, view) = self.directory.as_ref()?;
                rows::directory(view, &sink.conversion)
            }
            DocName::Slot { .. } => handle
                .with_document_async(|am| {
                    Doc::<Slot, &mut Automerge>::attach(am)
                        .map_err(popmesh_crdt::escrow::EscrowError::Doc)
                        .and_then(|d| d.view())
                        .map(|v| rows::slot(&v.record))
                        .ok()
                })
                .await
                .ok()
                .flatten()?,
            DocName::Access { .. } => handle
                .with_document_async(|am| {
                    Doc::<Access, &mut Automerge>::attach(am)
                        .and_then(|d| d.record())
                        .map(|r| rows::access(&r))
                        .ok()
                })
                .await
                .ok()
                .flatten()?,
            DocName::Telemetry { .. } => handle
                .with_document_async(|am| {
                    Doc::<Telemetry, &mut Automerge>::attach(am)
                        .and_then(|d| d.record())
                        .map(|r| rows::telemetry(&r))
                        .ok()
                })
                .await
                .ok()
                .flatten()?,
            DocName::Ledger { .. } => {
                let page = handle
                    .with_document_async(|am| {
                        Doc::<Ledger, &mut Automerge>::attach(am)
                            .and_then(|d| d.view())
                            .ok()
                    })
                    .await
                    .ok()
                    .flatten()?;
                let (_, view) = trust?;
                let mut verified = self.verified.remove(id).unwrap_or_default();
                let (rows, verified) = tokio::task::spawn_blocking(move || {
                    let rows = rows::ledger(&page, &view, &mut verified);
                    (rows, verified)
                })
                .await
                .ok()?;
                self.verified.insert(id.clone(), verified);
                rows
            }
            DocName::Manifest { .. } => return None,
        };
        let digests = rows.digests();
        if let Some(written) = self.written.get(id) {
            rows.retain_unwritten(written);
        }
        Some(Read {
            id: id.clone(),
            cursor: Cursor {
                doc_id: id.to_string(),
                doc_name: name.to_string(),
                heads: effective,
            },
            rows,
            digests,
        })
    }

    /// Commits a batch of documents, then records them as written.
    async fn flush(
        &mut self,
        sink: &Sink,
        batch: Vec<Read>,
        generation: u64,
    ) -> Result<(), WarehouseError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut rows = Rows::default();
        let mut cursors = Vec::with_capacity(batch.len());
        let mut done = Vec::with_capacity(batch.len());
        for read in batch {
            rows.append(read.rows);
            cursors.push(read.cursor);
            done.push((read.id, read.digests));
        }
        match sink.commit(&mut rows, &cursors).await {
            Ok(n) => tracing::debug!(
                documents = cursors.len(),
                rows = n,
                "written to the warehouse"
            ),
            Err(e) if refused_data(&e) && cursors.len() == 1 => {
                // One document the database cannot take must not hold back every other one (money included).
                tracing::error!(
                    doc = %cursors[0].doc_name,
                    "the warehouse refused this document's rows; the others go on, and it is tried again when it changes: {e}"
                );
                sink.metrics.refused.inc();
                let (id, _) = done.swap_remove(0);
                lock(&sink.queue).paid(&cursors[0].doc_id, generation);
                self.check.remove(&id);
                self.refused.insert(id, cursors.swap_remove(0).heads);
                return Ok(());
            }
            Err(e) if refused_data(&e) => {
                tracing::warn!(
                    "the warehouse refused a batch; writing its documents one by one: {e}"
                );
                self.single = true;
                self.check.extend(done.into_iter().map(|(id, _)| id));
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let mut q = lock(&sink.queue);
        for (cursor, (id, digests)) in cursors.into_iter().zip(done) {
            q.paid(&cursor.doc_id, generation);
            self.check.remove(&id);
            if let Some(c) = self.cursors.as_mut() {
                c.insert(cursor.doc_id, cursor.heads);
            }
            self.written.insert(id, digests.into_iter().collect());
        }
        Ok(())
    }
}
