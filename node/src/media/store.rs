//! What this device keeps: tags on the blobs it holds, the held-blob records with their times to live, and what of a
//! blob is present here.

use std::collections::BTreeMap;
use std::ops::Range;

use iroh_blobs::Hash;
use iroh_blobs::api::blobs::BlobStatus;
use iroh_blobs::protocol::{ChunkRanges, ChunkRangesExt as _};
use popmesh_crdt::manifest::Held;

use super::ranges::{chunk_bytes, group_chunks};
use super::{BlobState, Media, MediaError, lock, store_err, tag_of};

/// How far the held-blob records on disk may lag behind memory.
const HELD_PERSIST_SLACK_MS: u64 = 10 * 60_000;

/// Where the held-blob records live in the node's meta table.
pub(super) const HELD_META: &str = "media.held";

impl Media {
    /// Writes the held-blob records when the set changed, or when what is on disk is more than
    /// [`HELD_PERSIST_SLACK_MS`] behind (a preseed pass refreshes every referenced blob, and a field kit's flash
    /// should not take a write every two seconds for that; a crash costs at most that much of a time to live).
    pub(super) fn persist_held(&self, now_ms: u64) {
        let held = lock(&self.held).clone();
        let mut persisted = lock(&self.persisted);
        let same_set = persisted.1.len() == held.len() && persisted.1.keys().eq(held.keys());
        let same_ttls = same_set
            && persisted
                .1
                .values()
                .zip(held.values())
                .all(|(a, b)| a.ttl_ms == b.ttl_ms);
        if same_ttls && now_ms.saturating_sub(persisted.0) < HELD_PERSIST_SLACK_MS {
            return;
        }
        let text = serde_json::to_string(&held).unwrap_or_default();
        match self.meta.set_meta(HELD_META, &text) {
            Ok(()) => *persisted = (now_ms, held),
            Err(e) => tracing::error!("could not record held blobs: {e}"),
        }
    }

    pub(super) async fn tag(&self, hash: Hash) -> Result<(), MediaError> {
        if lock(&self.tagged).contains(&hash) {
            return Ok(());
        }
        self.store
            .tags()
            .set(tag_of(&hash), hash)
            .await
            .map_err(store_err)?;
        lock(&self.tagged).insert(hash);
        Ok(())
    }

    pub(super) async fn untag(&self, hash: Hash) -> Result<(), MediaError> {
        self.store
            .tags()
            .delete(tag_of(&hash))
            .await
            .map_err(store_err)?;
        lock(&self.tagged).remove(&hash);
        Ok(())
    }

    pub(super) fn keep(&self, hash: Hash, ttl_ms: u64, now_ms: u64) {
        touch(
            &mut lock(&self.held),
            hash.to_hex().to_string(),
            ttl_ms,
            now_ms,
        );
        self.persist_held(now_ms);
    }

    /// The bytes of `wanted` present here.
    pub(super) async fn present(&self, hash: Hash, wanted: &ChunkRanges, size: u64) -> u64 {
        if lock(&self.quarantine).contains(&hash) {
            return 0;
        }
        match self.store.observe(hash).await {
            Ok(bitfield) => chunk_bytes(&(bitfield.ranges & wanted.clone()), size),
            Err(_) => 0,
        }
    }

    /// Whether all of `range` is here (and the copy is not known damaged).
    pub(super) async fn covered(&self, hash: Hash, range: Range<u64>) -> bool {
        if lock(&self.quarantine).contains(&hash) {
            return false;
        }
        match self.store.observe(hash).await {
            Ok(bitfield) => {
                let size = bitfield.size();
                // Chunks past the end of the blob are never stored: only ask for those inside it.
                let inside = ChunkRanges::bytes(0..size);
                size > 0
                    && bitfield
                        .ranges
                        .is_superset(&(group_chunks(&(range.start..range.end.min(size))) & inside))
            }
            Err(_) => false,
        }
    }

    /// What this device holds of a blob, for `GET /v1/blobs/{hash}`.
    pub async fn state(&self, hash: Hash) -> Result<BlobState, MediaError> {
        let status = self.store.blobs().status(hash).await.map_err(store_err)?;
        let damaged = lock(&self.quarantine).contains(&hash);
        Ok(match status {
            BlobStatus::NotFound => BlobState {
                state: "missing",
                size: None,
                present_bytes: 0,
                damaged,
            },
            BlobStatus::Partial { size } => {
                let bitfield = self.store.observe(hash).await.map_err(store_err)?;
                BlobState {
                    state: "partial",
                    size,
                    present_bytes: chunk_bytes(&bitfield.ranges, bitfield.size()),
                    damaged,
                }
            }
            BlobStatus::Complete { size } => BlobState {
                state: "complete",
                size: Some(size),
                present_bytes: size,
                damaged,
            },
        })
    }

    /// The size of a blob held here in full (a validated size), if any.
    pub async fn local_size(&self, hash: Hash) -> Option<u64> {
        if lock(&self.quarantine).contains(&hash) {
            return None;
        }
        match self.store.blobs().status(hash).await {
            Ok(BlobStatus::Complete { size }) => Some(size),
            _ => None,
        }
    }
}

/// Records that a blob is referenced (or kept by hand) at `now_ms`, with its time to live.
pub(super) fn touch(held: &mut BTreeMap<String, Held>, hex: String, ttl_ms: u64, now_ms: u64) {
    let h = held.entry(hex).or_insert(Held {
        ttl_ms,
        referenced_at_ms: now_ms,
    });
    h.referenced_at_ms = h.referenced_at_ms.max(now_ms);
    h.ttl_ms = ttl_ms;
}
