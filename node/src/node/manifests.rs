//! Media manifests: listing and publishing (edge box or origin only).

use super::*;

/// What to publish in a media manifest (what `POST /v1/manifests/{name}` asks for).
#[derive(Debug, Clone, Default)]
pub struct ManifestUpdate {
    pub entries: Vec<NewEntry>,
    /// The entry to serve when a requested blob cannot be had from any peer.
    pub fallback: Option<String>,
    /// Role -> byte ranges of every entry that role preseeds.
    pub slices: BTreeMap<String, Vec<ByteRange>>,
}

/// One media entry of a [`ManifestUpdate`]: a blob already on this device, under a name.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub name: String,
    /// BLAKE3, 64 lowercase hex digits.
    pub hash: String,
    pub size: u64,
    pub mime: String,
    pub ttl_ms: u64,
}

/// Why a manifest was not published. Nothing of the request was written.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    NotPermitted(#[from] NotPermitted),
    /// A bad name, hash, size, slice or fallback, or an entry whose blob is not on this device.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl Node {
    /// Every media manifest this device holds, by name.
    pub async fn manifests(&self) -> Vec<(String, ManifestRecord)> {
        let docs: Vec<(String, DocHandle)> = read(&self.docs)
            .values()
            .filter_map(|(n, h)| match n {
                DocName::Manifest { show } => Some((show.clone(), h.clone())),
                _ => None,
            })
            .collect();
        let mut out = Vec::with_capacity(docs.len());
        for (name, handle) in docs {
            let record = handle
                .with_document_async(|am| {
                    Doc::<Manifest, &mut Automerge>::attach(am).and_then(|d| d.record())
                })
                .await;
            match record {
                Ok(Ok(r)) => out.push((name, r)),
                Ok(Err(e)) => tracing::warn!(manifest = %name, "manifest does not read: {e}"),
                Err(_) => {}
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Publishes media entries (and optionally the fallback and per-role slices) in the manifest `name`, creating
    /// it the first time. Edge boxes and the origin publish; the entries' blobs must be on this device.
    pub async fn publish_manifest(
        &self,
        name: &str,
        spec: ManifestUpdate,
    ) -> Result<(), PublishError> {
        self.edge_or_origin(
            "publish manifests",
            "publish from the site's edge box or the origin",
        )?;
        let doc_name = DocName::Manifest {
            show: name.to_owned(),
        };
        if name.is_empty()
            || !doc_name
                .to_string()
                .parse::<DocName>()
                .is_ok_and(|n| n == doc_name)
        {
            return Err(PublishError::Invalid(format!(
                "manifest name {} must be one non-empty path segment",
                popmesh_crdt::naming::shown(name)
            )));
        }
        let now = clock::now().0;
        let mut entries = Vec::with_capacity(spec.entries.len());
        for e in &spec.entries {
            let hash = crate::media::parse_hash(&e.hash).ok_or_else(|| {
                PublishError::Invalid(format!(
                    "entry {:?}: hash {:?} is not 64 lowercase hex digits",
                    e.name, e.hash
                ))
            })?;
            match self.media.local_size(hash).await {
                Some(size) if size == e.size => {}
                Some(size) => {
                    return Err(PublishError::Invalid(format!(
                        "entry {:?}: blob {} has {size} bytes, not {}",
                        e.name, e.hash, e.size
                    )));
                }
                None => {
                    return Err(PublishError::Invalid(format!(
                        "entry {:?}: blob {} is not on this device; add it with `popmesh blob add` first",
                        e.name, e.hash
                    )));
                }
            }
            entries.push((
                e.name.clone(),
                MediaEntry {
                    hash: e.hash.clone(),
                    size: e.size,
                    mime: e.mime.clone(),
                    ttl_ms: e.ttl_ms,
                    added_at: now,
                    added_by: self.me().to_hex(),
                },
            ));
        }
        let apply = move |d: &mut Doc<Manifest, &mut Automerge>| -> Result<(), ManifestError> {
            for (name, entry) in &entries {
                d.publish(name, entry)?;
            }
            for (role, ranges) in &spec.slices {
                d.set_slices(role, ranges)?;
            }
            if let Some(fallback) = &spec.fallback {
                d.set_fallback(fallback)?;
            }
            Ok(())
        };
        // Whole or nothing: the request is tried on a copy first (of the manifest as it is here, or a new one), so
        // a bad fallback or slice after good entries writes nothing.
        let actor = self.actor();
        let trial = match self.handle_by_name(&doc_name) {
            Some(h) => h
                .with_document_async(|am| am.fork())
                .await
                .map_err(stopped)?,
            None => Doc::create_manifest(actor.clone(), name)
                .map(Doc::into_automerge)
                .map_err(internal)?,
        };
        {
            let mut trial = trial;
            let mut d = Doc::<Manifest, &mut Automerge>::attach_as(&mut trial, actor.clone())
                .map_err(internal)?;
            apply(&mut d).map_err(|e| PublishError::Invalid(e.to_string()))?;
        }
        self.writable()?;
        let handle = self
            .own_document(doc_name, {
                let name = name.to_owned();
                move |actor| {
                    Doc::create_manifest(actor, &name)
                        .map(Doc::into_automerge)
                        .map_err(internal)
                }
            })
            .await?;
        self.change(&handle, move |am| {
            let mut d = Doc::<Manifest, &mut Automerge>::attach_as(am, actor)?;
            apply(&mut d)
        })
        .await?
        .map_err(|e| PublishError::Invalid(e.to_string()))?;
        self.preseed_now.notify_one();
        Ok(())
    }

    /// Refuses what only an edge box or the origin may do: "a kiosk may not `what`; `instead`".
    pub(crate) fn edge_or_origin(
        &self,
        what: &'static str,
        instead: &'static str,
    ) -> Result<(), NotPermitted> {
        if matches!(self.dir.cert.role, Role::Edge | Role::Origin) {
            return Ok(());
        }
        Err(NotPermitted {
            role: self.dir.cert.role,
            what,
            instead,
        })
    }
}
