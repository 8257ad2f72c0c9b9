//! Fetching from the swarm: the providers in this device's rotation, and blobs fetched in parts, each device owning
//! some parts and serving them to the others.

use std::ops::Range;
use std::time::Duration;

use futures::StreamExt as _;
use iroh::EndpointId;
use iroh_blobs::Hash;
use iroh_blobs::api::downloader::DownloadProgressItem;
use iroh_blobs::protocol::GetRequest;

use super::ranges::{PARTS_MAX, split, to_chunks};
use super::{Media, MediaError};

/// Parts of one blob fetched at the same time.
const PARTS_AT_ONCE: usize = 2;

/// How often a part is asked of the peer that owns it before the seed is asked too.
const PEER_TRIES: u32 = 3;

/// The wait before asking a peer again, times the attempts so far.
const PEER_RETRY: Duration = Duration::from_millis(150);

impl Media {
    /// Admitted peers with a blob address, in this device's rotation.
    pub(super) fn providers(&self) -> Vec<EndpointId> {
        let mut list: Vec<EndpointId> = self
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, a)| a.is_some())
            .map(|(id, _)| *id)
            .collect();
        if !list.is_empty() {
            let n = list.len();
            list.rotate_left(self.rotation % n);
        }
        list
    }

    /// Fetches byte ranges of a blob from the admitted peers, in parts, several at once.
    ///
    /// Swarming: the blob is cut into parts and, when the seed (the device that published the entry) is known,
    /// each device preseeding it owns every k-th part (k = the devices fetching, ranked by id). It takes its own
    /// parts from the seed and every other part from the peer that owns it, asking again a little later while that
    /// peer is still fetching, and falls back to the seed only after [`PEER_TRIES`]. So the seed uploads each byte
    /// about once, and the devices serve each other the rest. Without a known seed, parts rotate over every peer.
    pub async fn fetch(
        &self,
        hash: Hash,
        wanted: &[Range<u64>],
        seed: Option<EndpointId>,
    ) -> Result<(), MediaError> {
        let providers = self.providers();
        if providers.is_empty() {
            return Err(MediaError::NoProviders);
        }
        let parts = split(wanted, PARTS_MAX);
        let seed = seed.filter(|s| providers.contains(s));
        let peers: Vec<EndpointId> = providers
            .iter()
            .copied()
            .filter(|p| Some(*p) != seed)
            .collect();
        // Rank among the devices fetching (the peers and this one), for who owns which part.
        let me = self.endpoint.id();
        let mut fetching = peers.clone();
        fetching.push(me);
        fetching.sort();
        let k = fetching.len();
        let rank = fetching.iter().position(|p| *p == me).unwrap_or(0);
        let owner = |i: usize| fetching[i % k];
        let own = |i: usize| seed.is_none() || owner(i) == me;
        // Own parts first, then the others in the order their owners fetch them.
        let mut queue: std::collections::VecDeque<(usize, u32)> = (0..parts.len())
            .filter(|i| own(*i))
            .chain((0..parts.len()).filter(|i| !own(*i)))
            .map(|i| (i, 0))
            .collect();
        let order_for = |i: usize, tries: u32| -> Vec<EndpointId> {
            let mut order = Vec::with_capacity(providers.len());
            match seed {
                Some(seed) if own(i) => {
                    order.push(seed);
                    order.extend(peers.iter().copied());
                }
                Some(seed) => {
                    order.push(owner(i));
                    if tries >= PEER_TRIES {
                        order.extend(peers.iter().copied().filter(|p| *p != owner(i)));
                        order.push(seed);
                    }
                }
                None => {
                    order.extend(providers.iter().copied());
                    let n = order.len();
                    order.rotate_left((i + rank) % n);
                }
            }
            order
        };
        let fetch_part = |i: usize, tries: u32| {
            let order = order_for(i, tries);
            let request = GetRequest::blob_ranges(hash, to_chunks(&parts[i]));
            let progress = self.downloader.download(request, order);
            let fetched = self.metrics.fetched.clone();
            async move {
                if tries > 0 {
                    // The owner is still fetching this part: give it a moment.
                    tokio::time::sleep(PEER_RETRY * tries).await;
                }
                let mut last = 0u64;
                let mut failure = None;
                match progress.stream().await {
                    Ok(mut items) => {
                        while let Some(item) = items.next().await {
                            match item {
                                DownloadProgressItem::Progress(at) => {
                                    fetched.inc_by(at.saturating_sub(last));
                                    last = last.max(at);
                                }
                                DownloadProgressItem::Error(e) => failure = Some(e.to_string()),
                                DownloadProgressItem::DownloadError => {
                                    failure = Some("every provider asked failed".into());
                                }
                                _ => {}
                            }
                        }
                    }
                    Err(e) => failure = Some(e.to_string()),
                }
                (i, tries, failure)
            }
        };
        let mut running = futures::stream::FuturesUnordered::new();
        let mut last_failure = None;
        loop {
            while running.len() < PARTS_AT_ONCE
                && let Some((i, tries)) = queue.pop_front()
            {
                running.push(fetch_part(i, tries));
            }
            let Some((i, tries, failure)) = running.next().await else {
                break;
            };
            let mut done = true;
            for r in &parts[i] {
                done &= self.covered(hash, r.clone()).await;
            }
            if !done {
                if let Some(f) = failure {
                    last_failure = Some(f);
                }
                if tries < PEER_TRIES + 1 {
                    queue.push_back((i, tries + 1));
                }
            }
        }
        let mut missing = Vec::new();
        for r in wanted {
            if !self.covered(hash, r.clone()).await {
                missing.push(r.clone());
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(MediaError::Unavailable {
            hash: hash.to_hex().to_string(),
            reason: last_failure
                .unwrap_or_else(|| format!("{} ranges still missing", missing.len())),
        })
    }

    /// Fetches a blob of unknown size whole (a hash in no manifest), trying the providers one after another.
    pub async fn fetch_whole(&self, hash: Hash) -> Result<u64, MediaError> {
        if let Some(size) = self.local_size(hash).await {
            return Ok(size);
        }
        let providers = self.providers();
        if providers.is_empty() {
            return Err(MediaError::NoProviders);
        }
        self.tag(hash).await?;
        self.keep(hash, self.options.default_ttl_ms, crate::clock::now().0);
        let result = self.downloader.download(hash, providers).await;
        match (result, self.local_size(hash).await) {
            (_, Some(size)) => {
                self.metrics.fetched.inc_by(size);
                Ok(size)
            }
            (Err(e), None) => Err(MediaError::Unavailable {
                hash: hash.to_hex().to_string(),
                reason: e.to_string(),
            }),
            (Ok(_), None) => Err(MediaError::Unavailable {
                hash: hash.to_hex().to_string(),
                reason: "no provider had all of it".into(),
            }),
        }
    }
}
