//! Preseeding: one pass over the manifests tags what they reference, fetches what is missing, and drops what has
//! outlived its time to live.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;

use iroh::EndpointId;
use iroh_blobs::Hash;
use popmesh_crdt::identity::DeviceId;
use popmesh_crdt::manifest::{ByteRange, ManifestRecord, MediaEntry, expired};

use super::ranges::to_chunks;
use super::store::touch;
use super::{Media, MediaError, PreseedReport, endpoint_of, lock, parse_hash};

impl Media {
    /// One pass over the manifests: tags what they reference, fetches what is missing from the peers that have it,
    /// and drops what no manifest references once its time to live has passed.
    pub async fn preseed(
        self: &Arc<Self>,
        manifests: &[ManifestRecord],
        now_ms: u64,
    ) -> Result<PreseedReport, MediaError> {
        self.release_quarantine().await;
        let role = self.role.as_str();
        let mut report = PreseedReport::default();
        let mut referenced = BTreeSet::new();
        for manifest in manifests {
            for entry in manifest.entries.values() {
                let Some(hash) = parse_hash(&entry.hash) else {
                    continue;
                };
                report.entries += 1;
                referenced.insert(entry.hash.clone());
                touch(
                    &mut lock(&self.held),
                    entry.hash.clone(),
                    entry.ttl_ms,
                    now_ms,
                );
                if lock(&self.quarantine).contains(&hash) {
                    report.missing += 1;
                    report.wanted_bytes = report.wanted_bytes.saturating_add(entry.size);
                    continue;
                }
                self.tag(hash).await?;
                let wanted = wanted_ranges(manifest, role, entry);
                let chunks = to_chunks(&wanted);
                let want: u64 = wanted.iter().fold(0u64, |sum, r| {
                    sum.saturating_add(r.end.saturating_sub(r.start))
                });
                let have = self.present(hash, &chunks, entry.size).await.min(want);
                report.wanted_bytes = report.wanted_bytes.saturating_add(want);
                report.present_bytes = report.present_bytes.saturating_add(have);
                if have < want {
                    report.missing += 1;
                    let seed = DeviceId::from_hex(&entry.added_by)
                        .ok()
                        .and_then(|d| endpoint_of(&d));
                    if self.below_reserve() {
                        // Money first: below the reserve, media waits for space.
                        report.waiting_for_space = true;
                        continue;
                    }
                    self.spawn_fetch(hash, wanted, seed);
                } else {
                    report.complete += 1;
                }
            }
        }
        let drop_now = {
            let held = lock(&self.held);
            expired(held.iter(), &referenced, now_ms)
        };
        for hex in &drop_now {
            if let Some(hash) = parse_hash(hex) {
                self.untag(hash).await?;
            }
            lock(&self.held).remove(hex);
            tracing::info!(hash = %hex, "dropping a blob no manifest references (time to live passed)");
        }
        report.dropped = drop_now.len();
        self.persist_held(now_ms);
        report.completeness = if report.wanted_bytes == 0 {
            1.0
        } else {
            report.present_bytes as f64 / report.wanted_bytes as f64
        };
        self.metrics.completeness.set(report.completeness);
        self.metrics.missing.set(report.missing as i64);
        *self.report.write().unwrap_or_else(|e| e.into_inner()) = report.clone();
        Ok(report)
    }

    fn spawn_fetch(
        self: &Arc<Self>,
        hash: Hash,
        wanted: Vec<Range<u64>>,
        seed: Option<EndpointId>,
    ) {
        if !lock(&self.inflight).insert(hash) {
            return;
        }
        let media = self.clone();
        tokio::spawn(async move {
            let result = media.fetch(hash, &wanted, seed).await;
            lock(&media.inflight).remove(&hash);
            match result {
                Ok(()) => {
                    // The store batches its metadata writes: make this blob's completion durable now, so a
                    // device switched off right after preseeding does not forget it (and fetch it all again).
                    if let Err(e) = media.store.sync_db().await {
                        tracing::warn!(%hash, "blob store not synced: {e}");
                    }
                    tracing::info!(%hash, "preseeded");
                    // A pass now brings the preseed report (and what rehearsals and the console show) up to date.
                    media.wake.notify_one();
                }
                Err(e) => tracing::debug!(%hash, "not preseeded yet: {e}"),
            }
        });
    }
}

/// The byte ranges of `entry` a device of `role` preseeds.
fn wanted_ranges(manifest: &ManifestRecord, role: &str, entry: &MediaEntry) -> Vec<Range<u64>> {
    match manifest.preseed_ranges(role, entry) {
        Some(slices) => slices
            .iter()
            .filter(|ByteRange { start, end }| start < end)
            .map(|ByteRange { start, end }| *start..*end)
            .collect(),
        None if entry.size == 0 => Vec::new(),
        None => vec![0..entry.size],
    }
}
