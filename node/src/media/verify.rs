//! Verification and quarantine: reads checked against the hash, damaged copies untagged and fetched again, and the
//! check of every local blob on start.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use iroh_blobs::Hash;
use iroh_blobs::api::blobs::BlobStatus;

use super::ranges::group_chunks;
use super::serve::WINDOW_BYTES;
use super::{Media, MediaError, lock};

impl Media {
    /// Reads `range` of a blob, checking every byte against the hash. A mismatch quarantines the copy.
    pub(super) async fn read_checked(
        &self,
        hash: Hash,
        range: Range<u64>,
    ) -> Result<Bytes, MediaError> {
        let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
        let mut items = self.store.export_bao(hash, group_chunks(&range)).stream();
        while let Some(item) = items.next().await {
            match item {
                bao_tree::io::mixed::EncodedItem::Leaf(leaf) => {
                    let (start, end) = (leaf.offset, leaf.offset + leaf.data.len() as u64);
                    let (a, b) = (start.max(range.start), end.min(range.end));
                    if a < b {
                        out.extend_from_slice(
                            &leaf.data[(a - start) as usize..(b - start) as usize],
                        );
                    }
                }
                bao_tree::io::mixed::EncodedItem::Error(e) => {
                    self.damaged(hash, &e.to_string()).await;
                    return Err(MediaError::Damaged(hash.to_hex().to_string()));
                }
                bao_tree::io::mixed::EncodedItem::Done => break,
                _ => {}
            }
        }
        if (out.len() as u64) < range.end - range.start {
            return Err(MediaError::Store(format!(
                "blob {hash}: read {} of {} bytes",
                out.len(),
                range.end - range.start
            )));
        }
        Ok(out.freeze())
    }

    /// A copy failed its hash check: untag it so garbage collection removes it, and fetch it again after that.
    async fn damaged(&self, hash: Hash, why: &str) {
        if !lock(&self.quarantine).insert(hash) {
            return;
        }
        tracing::warn!(%hash, "the local copy failed its hash check ({why}); fetching it again");
        self.metrics.damaged.inc();
        self.wake.notify_one();
        if let Err(e) = self.untag(hash).await {
            tracing::error!(%hash, "could not untag a damaged blob: {e}");
        }
    }

    /// Lets quarantined blobs be fetched again once garbage collection has removed the damaged copy.
    pub(super) async fn release_quarantine(&self) {
        let waiting: Vec<Hash> = lock(&self.quarantine).iter().copied().collect();
        for hash in waiting {
            if matches!(
                self.store.blobs().status(hash).await,
                Ok(BlobStatus::NotFound)
            ) {
                lock(&self.quarantine).remove(&hash);
                tracing::info!(%hash, "damaged copy removed; fetching it again");
            }
        }
    }

    /// Checks every complete blob this device keeps against its hash.
    pub(super) async fn verify_all(&self) {
        let hashes: Vec<Hash> = lock(&self.tagged).iter().copied().collect();
        let mut checked = 0;
        for hash in hashes {
            let Some(size) = self.local_size(hash).await else {
                continue;
            };
            let mut at = 0;
            while at < size {
                let end = (at + 16 * WINDOW_BYTES).min(size);
                if self.read_checked(hash, at..end).await.is_err() {
                    break;
                }
                at = end;
            }
            checked += 1;
        }
        tracing::info!(blobs = checked, "checked local blobs against their hashes");
    }
}
