//! Adding blobs by hand (uploads): the room rule (upload maximum, free space kept for money) and the add itself.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use iroh_blobs::Hash;
use iroh_blobs::api::blobs::BlobStatus;

use super::{Media, MediaError, lock, store_err};

/// The one rule for room: an upload of `total` bytes so far stays under `max`, and writing `next` more bytes leaves
/// the `reserve` kept for money free (when the file system says how much is free).
fn room_for(
    total: u64,
    next: u64,
    max: u64,
    reserve: u64,
    free: Option<u64>,
) -> Result<(), MediaError> {
    if total > max {
        return Err(MediaError::TooLarge { max });
    }
    match free {
        Some(free) if free < reserve.saturating_add(next) => {
            Err(MediaError::LowSpace { free, reserve })
        }
        _ => Ok(()),
    }
}

impl Media {
    /// Whether free disk space is below the reserve kept for money (media then fetches and takes nothing).
    pub fn below_reserve(&self) -> bool {
        self.free_bytes()
            .is_some_and(|free| free < self.options.reserve_bytes)
    }

    fn free_bytes(&self) -> Option<u64> {
        self.meta.free_bytes()
    }

    /// Whether `more` bytes fit: under the upload maximum, and leaving the reserve free.
    pub fn check_room(&self, more: u64) -> Result<(), MediaError> {
        room_for(
            more,
            more,
            self.options.upload_max_bytes,
            self.options.reserve_bytes,
            self.free_bytes(),
        )
    }

    /// Adds the blob `data` streams. Stops (and adds nothing) once it passes the upload maximum or would eat into
    /// the free space kept for money; the partial data is untagged and garbage collection removes it.
    pub async fn add(
        &self,
        data: impl futures::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
        now_ms: u64,
    ) -> Result<(Hash, u64), MediaError> {
        let refused: Arc<Mutex<Option<MediaError>>> = Arc::default();
        let (max, reserve, meta) = (
            self.options.upload_max_bytes,
            self.options.reserve_bytes,
            self.meta.clone(),
        );
        let seen = refused.clone();
        let mut total = 0u64;
        let data = futures::StreamExt::map(data, move |chunk| {
            let chunk = chunk?;
            total = total.saturating_add(chunk.len() as u64);
            let room = room_for(total, chunk.len() as u64, max, reserve, meta.free_bytes());
            if let Err(problem) = room {
                let message = problem.to_string();
                *lock(&seen) = Some(problem);
                return Err(std::io::Error::other(message));
            }
            Ok(chunk)
        });
        let added = self.store.blobs().add_stream(data).await.temp_tag().await;
        if let Some(problem) = lock(&refused).take() {
            return Err(problem);
        }
        let tag = added.map_err(store_err)?;
        let hash = tag.hash();
        self.tag(hash).await?;
        drop(tag);
        let size = match self.store.blobs().status(hash).await.map_err(store_err)? {
            BlobStatus::Complete { size } => size,
            other => return Err(MediaError::Store(format!("added blob is {other:?}"))),
        };
        self.keep(hash, self.options.default_ttl_ms, now_ms);
        Ok((hash, size))
    }
}
