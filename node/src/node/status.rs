//! What the node says about itself: documents, sync lag, gauges, and `/v1/status`.

use super::*;

/// Why a document's content was not shown.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error(
        "no open document is named or numbered {} (GET /v1/documents lists them)",
        popmesh_crdt::naming::shown(.0)
    )]
    Unknown(String),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl Node {
    /// Every open document with its heads, for `GET /v1/documents`.
    pub async fn documents(&self) -> Vec<DocInfo> {
        let docs: Vec<(DocumentId, DocName, DocHandle)> = read(&self.docs)
            .iter()
            .map(|(id, (n, h))| (id.clone(), n.clone(), h.clone()))
            .collect();
        let mut out = Vec::with_capacity(docs.len());
        for (id, name, handle) in docs {
            if let Ok(heads) = handle.with_document_async(|am| am.get_heads()).await {
                out.push(DocInfo {
                    name: name.to_string(),
                    id: id.to_string(),
                    kind: kind_of(&name),
                    heads: heads.iter().map(|h| h.to_string()).collect(),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// A document's whole content as JSON, by name or id: what an operator (or the privacy test) reads to see
    /// exactly what a document carries.
    pub async fn document_content(&self, which: &str) -> Result<serde_json::Value, DocumentError> {
        let found = read(&self.docs)
            .iter()
            .find(|(id, (name, _))| id.to_string() == which || name.to_string() == which)
            .map(|(id, (name, h))| (id.to_string(), name.to_string(), h.clone()));
        let Some((id, name, handle)) = found else {
            return Err(DocumentError::Unknown(which.to_owned()));
        };
        let content = handle
            .with_document_async(|am| serde_json::to_value(automerge::AutoSerde::from(&*am)))
            .await
            .map_err(stopped)?
            .map_err(internal)?;
        Ok(
            serde_json::json!({ "id": id, "name": name, "kind": kind_of_str(&name), "content": content }),
        )
    }

    /// The documents the directory registers that the site's shape has this device hold (`Topology::holds`) and
    /// it has not opened yet: empty once it has caught up (a kiosk that is no relay keeps the shared documents and
    /// its own, not every other device's).
    pub fn documents_missing(&self) -> Vec<String> {
        let me = self.me();
        let shape = read(&self.gate.shape).clone();
        let open: std::collections::HashSet<String> =
            read(&self.docs).keys().map(|id| id.to_string()).collect();
        let view = read(&self.gate.view);
        let Some(view) = view.as_ref() else {
            return vec!["the site directory".to_owned()];
        };
        view.documents
            .iter()
            .filter(|(name, id)| {
                let held = match (name.parse::<DocName>(), shape.as_ref()) {
                    (Ok(name), Some(shape)) => shape.holds(&me, &name),
                    (Ok(_), None) => true,
                    (Err(_), _) => false,
                };
                held && !open.contains(id.as_str())
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Open documents: id, name.
    pub fn open_documents(&self) -> Vec<(DocumentId, DocName)> {
        read(&self.docs)
            .iter()
            .map(|(id, (n, _))| (id.clone(), n.clone()))
            .collect()
    }

    /// Sync lag: per connected peer (device hex), the open documents whose latest heads it has not acknowledged
    /// yet, and how long ago it was last heard from.
    pub async fn sync_lag(&self) -> BTreeMap<String, (Vec<DocumentId>, Option<u64>)> {
        let handles: Vec<(DocumentId, DocHandle)> = read(&self.docs)
            .iter()
            .map(|(id, (_, h))| (id.clone(), h.clone()))
            .collect();
        let mut heads = BTreeMap::new();
        for (id, h) in &handles {
            if let Ok(hs) = h.with_document_async(|am| am.get_heads()).await {
                heads.insert(id.clone(), hs);
            }
        }
        let (conns, _) = self.repo.connected_peers();
        let mut out = BTreeMap::new();
        for c in &conns {
            let samod::ConnectionState::Connected { their_peer_id } = &c.state else {
                continue;
            };
            let behind = heads
                .iter()
                .filter(|(id, ours)| {
                    c.docs.get(*id).and_then(|s| s.last_acked_heads.as_ref()) != Some(*ours)
                })
                .map(|(id, _)| id.clone())
                .collect();
            let heard = c
                .last_received
                .map(|t| (clock::now().0 as i64 - t.timestamp_millis()).max(0) as u64);
            out.insert(their_peer_id.to_string(), (behind, heard));
        }
        out
    }

    /// What `popmesh status` and `GET /v1/status` show.
    pub async fn status(&self) -> Status {
        let lag = self.sync_lag().await;
        self.status_with(&lag).await
    }

    /// [`Node::status`] over sync lag the caller already measured (the console needs it per document too).
    pub async fn status_with(
        &self,
        lag: &BTreeMap<String, (Vec<DocumentId>, Option<u64>)>,
    ) -> Status {
        let ready: Vec<String> = match self.ledgers_loading() {
            Ok(pages) => pages,
            Err(e) => vec![e.to_string()],
        };
        let view = read(&self.gate.view).clone();
        let names: BTreeMap<DeviceId, (String, Role)> = view
            .as_ref()
            .map(|v| {
                v.certificates()
                    .map(|c| (c.device, (c.name.clone(), c.role)))
                    .collect()
            })
            .unwrap_or_default();
        let docs: Vec<(DocumentId, DocName, DocHandle)> = read(&self.docs)
            .iter()
            .map(|(id, (n, h))| (id.clone(), n.clone(), h.clone()))
            .collect();
        let peers = self
            .mesh
            .peers()
            .into_iter()
            .map(|p| {
                let device = DeviceId::from_hex(&p.device).ok();
                let (name, role) = device
                    .and_then(|d| names.get(&d).cloned())
                    .or_else(|| {
                        let hello = p.hello.as_ref()?;
                        let cert = EnrollmentCert::from_bytes(&hello.cert_bytes().ok()?).ok()?;
                        Some((cert.name, cert.role))
                    })
                    .map(|(n, r)| (Some(n), Some(r)))
                    .unwrap_or((None, None));
                let (behind, last_heard_ms_ago) = match lag.get(&p.device) {
                    Some((docs, heard)) => (Some(docs.len()), *heard),
                    None => (None, None),
                };
                PeerStatus {
                    device: p.device,
                    name,
                    role,
                    admitted: p.admitted,
                    connections: p.connections,
                    connected_for_ms: p.connected_for_ms,
                    documents_behind: behind,
                    last_heard_ms_ago,
                    why: p.why,
                }
            })
            .collect();
        let mut by_kind: BTreeMap<&'static str, usize> = BTreeMap::new();
        for (_, name, _) in &docs {
            *by_kind.entry(kind_of(name)).or_default() += 1;
        }
        // The registry names every document but the directory itself.
        let registered = view.as_ref().map(|v| v.documents.len() + 1).unwrap_or(0);
        let shape = read(&self.gate.shape).clone();
        let me = self.me();
        Status {
            device: self.me().to_hex(),
            name: self.dir.cert.name.clone(),
            role: self.dir.cert.role,
            site: self.dir.site_id().to_hex(),
            site_name: self.dir.site.site_name.clone(),
            directory: read(&self.gate.directory).as_ref().map(|d| d.to_string()),
            directory_synced: view.is_some(),
            enrolled: view
                .as_ref()
                .is_some_and(|v| v.verify_device(&self.me(), clock::now()).is_ok()),
            listening: self
                .mesh
                .listening()
                .iter()
                .map(|a| a.to_string())
                .collect(),
            peers,
            part: shape.as_ref().and_then(|t| t.part(&me)).map(|p| p.as_str()),
            links_max: shape.as_ref().and_then(|t| t.degree_max(&me)),
            documents: DocCounts {
                open: docs.len(),
                registered,
                by_kind,
            },
            shows: view
                .as_ref()
                .map(|v| v.shows.keys().cloned().collect())
                .unwrap_or_default(),
            store: StoreStatus {
                path: self.store.path().display().to_string(),
                bytes: self.store.file_bytes(),
                acknowledged_writes: self.store.acks(),
                healthy: !self.store.has_failed(),
                fault: self.store.health(),
                free_bytes: self.store.free_bytes(),
                below_reserve: self.media.below_reserve(),
            },
            ready: ready.is_empty(),
            loading: ready,
            media: self.media.report(),
            media_port: self.media.port(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            refused_changes: self.gate.judge.recent(),
        }
    }

    /// Sets the gauges `/metrics` reports, from counters and lengths (no receipt is read or verified).
    pub async fn refresh_gauges(&self) -> Result<(), Unavailable> {
        self.metrics
            .store_failed
            .set(i64::from(self.store.has_failed()));
        if let Some(free) = self.store.free_bytes() {
            self.metrics
                .store_free_bytes
                .set(i64::try_from(free).unwrap_or(i64::MAX));
        }
        if let Ok(loading) = self.ledgers_loading() {
            self.metrics.money_loading.set(loading.len() as i64);
        }
        let (ledgers, open): (Vec<DocHandle>, usize) = {
            let docs = read(&self.docs);
            let ledgers = docs
                .values()
                .filter(|(n, _)| matches!(n, DocName::Ledger { .. }))
                .map(|(_, h)| h.clone())
                .collect();
            (ledgers, docs.len())
        };
        let (mut receipts, mut unreconciled) = (0u64, 0u64);
        for handle in ledgers {
            let (count, held) = handle
                .with_document_async(|am| {
                    let d = Doc::<Ledger, &mut Automerge>::attach(am)?;
                    Ok::<_, popmesh_crdt::DocError>((d.receipt_count()?, d.unreconciled_minor()?))
                })
                .await
                .map_err(stopped)?
                .map_err(internal)?;
            receipts = receipts.saturating_add(count as u64);
            unreconciled = unreconciled.saturating_add(held);
        }
        self.metrics.documents.set(open as i64);
        self.metrics.receipts.set(receipts as i64);
        self.metrics.unreconciled_minor.set(unreconciled as i64);
        self.metrics.acked_writes.set(self.store.acks() as i64);
        self.media.refresh_metrics();
        Ok(())
    }
}
