//! Serving local HTTP clients: a blob range opened (fetched when missing) and streamed in checked windows.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use iroh_blobs::Hash;

use super::{Media, MediaError, lock, store_err};

/// Served to HTTP clients in windows of this many bytes, each checked against the hash before it is sent.
pub(super) const WINDOW_BYTES: u64 = 1 << 20;

/// How long a request for missing media waits for its first bytes before the fallback is served.
const FIRST_BYTES_WAIT: Duration = Duration::from_secs(10);

impl Media {
    /// Makes `range` of a blob readable here: at once if present, else by fetching it from the peers. Returns when
    /// the first window is here, with the fetch still running for the rest.
    pub async fn open(
        self: &Arc<Self>,
        hash: Hash,
        range: Range<u64>,
    ) -> Result<Option<tokio::task::JoinHandle<Result<(), MediaError>>>, MediaError> {
        if lock(&self.quarantine).contains(&hash) {
            return Err(MediaError::Damaged(hash.to_hex().to_string()));
        }
        if self.covered(hash, range.clone()).await {
            return Ok(None);
        }
        if self.providers().is_empty() {
            return Err(MediaError::NoProviders);
        }
        self.tag(hash).await?;
        self.keep(hash, self.options.default_ttl_ms, crate::clock::now().0);
        let media = self.clone();
        let wanted = vec![range.clone()];
        let fetch = tokio::spawn(async move { media.fetch(hash, &wanted, None).await });
        let first = range.start..(range.start + WINDOW_BYTES).min(range.end);
        let deadline = tokio::time::Instant::now() + FIRST_BYTES_WAIT;
        loop {
            if self.covered(hash, first.clone()).await {
                return Ok(Some(fetch));
            }
            if fetch.is_finished() {
                return match fetch.await {
                    Ok(Err(e)) => Err(e),
                    Ok(Ok(())) => Ok(None),
                    Err(e) => Err(store_err(e)),
                };
            }
            if tokio::time::Instant::now() >= deadline {
                fetch.abort();
                return Err(MediaError::Unavailable {
                    hash: hash.to_hex().to_string(),
                    reason: format!("no bytes within {FIRST_BYTES_WAIT:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Streams `range` of a blob in checked windows, waiting for each while a fetch is bringing it.
    pub fn stream(
        self: &Arc<Self>,
        hash: Hash,
        range: Range<u64>,
        fetch: Option<tokio::task::JoinHandle<Result<(), MediaError>>>,
    ) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
        let media = self.clone();
        tokio::spawn(async move {
            let mut at = range.start;
            while at < range.end {
                let end = (at + WINDOW_BYTES).min(range.end);
                while !media.covered(hash, at..end).await {
                    if fetch.as_ref().is_none_or(|f| f.is_finished()) {
                        let _ = tx
                            .send(Err(std::io::Error::other(format!(
                                "blob {hash}: bytes {at}..{end} could not be fetched"
                            ))))
                            .await;
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                match media.read_checked(hash, at..end).await {
                    Ok(bytes) => {
                        media.metrics.served.inc_by(bytes.len() as u64);
                        if tx.send(Ok(bytes)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return;
                    }
                }
                at = end;
            }
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
    }
}
