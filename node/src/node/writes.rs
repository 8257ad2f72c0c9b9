//! Writing documents: every change acknowledged durably before it is answered (planned by the device core), and this device's own documents created and registered.

use super::*;

impl Node {
    /// Runs `f` on a document and makes it durable up to its new heads before returning: the change, with
    /// whatever it rests on that is not known to be on disk (synced changes since the last durable write, or the
    /// whole document after a failed write or on the first write since the start), as `popmesh_device::durability`
    /// plans it. So no answer ever rests on anything that is not on disk.
    ///
    /// The change is made on the live document (samod may sync it before the disk answers): a copy merged after
    /// the fsync would give a change that failed to be acknowledged, yet reached the disk, a sequence number the
    /// next change reuses, and Automerge refuses the second on load.
    pub(crate) async fn change<T: Send + 'static>(
        &self,
        handle: &DocHandle,
        f: impl FnOnce(&mut Automerge) -> T + Send + 'static,
    ) -> Result<T, Unavailable> {
        let id = handle.document_id().clone();
        let known = lock(&self.durability).snapshot(&id);
        let (out, bytes, plan, after) = handle
            .with_document_async(move |am| {
                let before = am.get_heads();
                let out = f(am);
                let plan = known.plan(&before);
                let bytes = match &plan.save {
                    popmesh_device::Save::Whole => am.save(),
                    popmesh_device::Save::After(heads) => am.save_after(heads),
                };
                (out, bytes, plan, am.get_heads())
            })
            .await
            .map_err(stopped)?;
        let acked = if bytes.is_empty() {
            Ok(())
        } else {
            self.ack(&id, bytes).await
        };
        // On failure the change is in memory (and may sync) but not on disk: nothing may be answered from this
        // document until a whole save of it is durable.
        lock(&self.durability).handle_saved(&id, &plan, after, acked.is_ok());
        acked.map(|()| out)
    }

    pub(crate) async fn ack(&self, doc: &DocumentId, bytes: Vec<u8>) -> Result<(), Unavailable> {
        let store = self.store.clone();
        let doc = doc.to_string();
        tokio::task::spawn_blocking(move || store.put_ack(&doc, &bytes))
            .await
            .map_err(internal)?
            .map_err(|e| Unavailable::NotDurable(e.to_string()))?;
        Ok(())
    }

    pub(crate) async fn change_directory<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Doc<Directory, &mut Automerge>) -> T + Send + 'static,
    ) -> Result<T, Unavailable> {
        let handle = self.directory_handle()?;
        let actor = self.actor();
        let out = self
            .change(&handle, move |am| {
                Doc::<Directory, &mut Automerge>::attach_as(am, actor).map(|mut d| f(&mut d))
            })
            .await?;
        out.map_err(internal)
    }

    /// This device's own document `name`, created and registered in the directory the first time (by `make`,
    /// whose error is the caller's).
    pub(crate) async fn own_document<E: From<Unavailable>>(
        &self,
        name: DocName,
        make: impl FnOnce(automerge::ActorId) -> Result<Automerge, E>,
    ) -> Result<DocHandle, E> {
        if let Some(h) = self.handle_by_name(&name) {
            return Ok(h);
        }
        let _guard = self.creating.lock().await;
        if let Some(h) = self.handle_by_name(&name) {
            return Ok(h);
        }
        let view = self.view()?;
        if let Some(id) = view.documents.get(&name.to_string()) {
            // Registered (by an earlier run) but not open yet: open it.
            let id: DocumentId = id.parse().map_err(internal)?;
            let handle = self
                .repo
                .find(id.clone())
                .await
                .map_err(stopped)?
                .ok_or_else(|| Unavailable::DocumentMissing(name.to_string()))?;
            self.track(id, name, handle.clone());
            return Ok(handle);
        }
        let content = make(self.actor())?;
        let bytes = content.save();
        let handle = self.repo.create(content).await.map_err(stopped)?;
        let id = handle.document_id().clone();
        self.ack(&id, bytes).await?;
        let key = id.to_string();
        let doc_name = name.clone();
        self.change_directory(move |d| d.register_document(&doc_name, &key))
            .await?
            .map_err(internal)?;
        tracing::info!(%name, %id, "created document");
        self.track(id, name, handle.clone());
        Ok(handle)
    }

    /// The sync engine's handle on a document this device holds, by name. Raw access, outside every domain rule:
    /// what a tool inspecting documents needs, and what a compromised device has (the tests play one with it).
    pub fn raw_handle(&self, name: &DocName) -> Option<DocHandle> {
        self.handle_by_name(name)
    }

    pub(crate) fn handle_by_name(&self, name: &DocName) -> Option<DocHandle> {
        read(&self.docs)
            .values()
            .find(|(n, _)| n == name)
            .map(|(_, h)| h.clone())
    }

    /// Records an open document and forwards its changes to `/v1/events` subscribers.
    pub(crate) fn track(&self, id: DocumentId, name: DocName, handle: DocHandle) {
        {
            let mut docs = write(&self.docs);
            if docs.contains_key(&id) {
                return;
            }
            docs.insert(id.clone(), (name.clone(), handle.clone()));
            write(&self.gate.priorities).insert(id.to_string(), gate::class_of(&name));
            self.gate.judge.name(&id, &name);
            if gate::screen_may_read(&name) {
                write(&self.screen_docs).insert(id.to_string());
            }
        }
        if matches!(name, DocName::Manifest { .. }) {
            // A manifest just opened (synced in from a peer): preseed it now, not at the next tick.
            self.preseed_now.notify_one();
        }
        let events = self.events.clone();
        let (doc, kind) = (name.to_string(), kind_of(&name));
        let telemetry_changed = self.telemetry_changed.clone();
        let own_telemetry = matches!(&name, DocName::Telemetry { device } if *device == self.me())
            .then(|| self.own_telemetry_changed.clone());
        if kind == "telemetry" {
            telemetry_changed.store(true, Ordering::Release);
        }
        tokio::spawn(async move {
            let mut changes = Box::pin(handle.changes());
            while let Some(change) = futures::StreamExt::next(&mut changes).await {
                if kind == "telemetry" {
                    telemetry_changed.store(true, Ordering::Release);
                }
                if let Some(own) = &own_telemetry {
                    own.store(true, Ordering::Release);
                }
                let heads = change.new_heads.iter().map(|h| h.to_string()).collect();
                // No subscribers is fine: the event is simply not wanted.
                let _ = events.send(DocEvent {
                    doc: doc.clone(),
                    id: id.to_string(),
                    kind,
                    heads,
                    at_ms: clock::now().0,
                });
            }
        });
    }
}
