//! Reading receipts: in pages, from a cache of decoded ledger pages, off the async workers.
//!
//! A show of 23,000 receipts is 10 MB of JSON: `GET /v1/receipts` answers a bounded page in (show, device,
//! sequence) order with a cursor for the next, so readers never hold the payment desk up. A ledger page is decoded
//! and its signatures checked once per change of its heads or of the directory's (full pages never change but for
//! reconciliation marks); the checking runs on the blocking pool, not on the runtime's workers that serve
//! payments, and every later read of the page is a copy of what was checked.

use std::sync::Arc;

use popmesh_crdt::DeviceId;
use popmesh_crdt::docs::DocName;
use samod::DocHandle;

use popmesh_crdt::receipt::Receipt;

use super::{Node, Unavailable, internal, lock, read, read_ledger, stopped};

/// Why a page of receipts was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptsError {
    /// A bad cursor, limit or show name.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// A ledger page's receipts, checked against the directory, with the page's and the directory's heads they were
/// checked at.
pub(crate) type CachedPage = (Vec<automerge::ChangeHash>, Arc<Vec<CheckedReceipt>>);

/// A receipt as this device holds it, checked against the directory.
#[derive(Debug, Clone)]
pub struct CheckedReceipt {
    pub receipt: Receipt,
    /// The receipt's token as text (what orders receipts of one sequence number, and what cursors name).
    pub token: String,
    /// The origin has matched it to the processor's settlement batch.
    pub reconciled: bool,
    /// Whether its signature and issuer check out against the directory, and if not, why.
    pub verified: Result<(), String>,
}

impl CheckedReceipt {
    pub fn new(receipt: Receipt, reconciled: bool, verified: Result<(), String>) -> Self {
        Self {
            token: receipt.token.to_string(),
            receipt,
            reconciled,
            verified,
        }
    }
}

/// Receipts in one page when the client does not say.
pub const RECEIPTS_PAGE_DEFAULT: usize = 500;
/// The most receipts one page holds.
pub const RECEIPTS_PAGE_MAX: usize = 5000;

/// Which receipts a reader asks for.
#[derive(Debug, Clone, Default)]
pub struct ReceiptQuery {
    /// The cursor of the previous page (`next`), or none for the first.
    pub after: Option<String>,
    pub limit: Option<usize>,
    pub device: Option<DeviceId>,
    pub show: Option<String>,
}

/// One page of receipts.
#[derive(Debug, Clone)]
pub struct ReceiptPage {
    pub receipts: Vec<CheckedReceipt>,
    /// The cursor for the next page (`?after=`), absent on the last.
    pub next: Option<String>,
}

/// A position in (show, device, sequence, token) order: `show/devicehex/seq/token` (names never hold `/`; the
/// token breaks ties, so two receipts that share a number are neither skipped nor repeated).
type Cursor = (String, DeviceId, u64, String);

fn parse_cursor(text: &str) -> Result<Cursor, ReceiptsError> {
    let bad = || {
        ReceiptsError::Invalid(format!(
            "after {}: not a cursor from an earlier page's next",
            popmesh_crdt::naming::shown(text)
        ))
    };
    let mut parts = text.split('/');
    let (Some(show), Some(device), Some(seq), Some(token), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad());
    };
    let device = DeviceId::from_hex(device).map_err(|_| bad())?;
    let seq = seq.parse::<u64>().map_err(|_| bad())?;
    if show.is_empty() || token.is_empty() {
        return Err(bad());
    }
    Ok((show.to_owned(), device, seq, token.to_owned()))
}

impl Node {
    /// One page of the receipts this device holds, from every device's ledger, checked against the directory.
    pub async fn receipts_page(&self, query: ReceiptQuery) -> Result<ReceiptPage, ReceiptsError> {
        self.money_ready().await?;
        // The directory's heads before the view: a revocation landing in between makes the next read check
        // again, never caches an old verdict under new heads.
        let directory = self
            .directory_handle()?
            .with_document_async(|am| am.get_heads())
            .await
            .map_err(stopped)?;
        let view = self.view()?;
        let limit = query.limit.unwrap_or(RECEIPTS_PAGE_DEFAULT);
        if limit == 0 || limit > RECEIPTS_PAGE_MAX {
            return Err(ReceiptsError::Invalid(format!(
                "limit must be 1 to {RECEIPTS_PAGE_MAX}, not {limit}"
            )));
        }
        if let Some(show) = &query.show {
            popmesh_crdt::naming::check_name("show", show)
                .map_err(|e| ReceiptsError::Invalid(e.to_string()))?;
        }
        let after = query.after.as_deref().map(parse_cursor).transpose()?;
        let mut ledgers: Vec<((String, DeviceId, u32), DocHandle)> = read(&self.docs)
            .values()
            .filter_map(|(name, h)| match name {
                DocName::Ledger { show, device, page } => {
                    Some(((show.clone(), *device, *page), h.clone()))
                }
                _ => None,
            })
            .filter(|((show, device, _), _)| {
                query.show.as_ref().is_none_or(|s| s == show)
                    && query.device.is_none_or(|d| d == *device)
            })
            .filter(|((show, device, _), _)| {
                after
                    .as_ref()
                    .is_none_or(|(s, d, _, _)| (show, device) >= (s, d))
            })
            .collect();
        ledgers.sort_by(|a, b| a.0.cmp(&b.0));
        // One device's receipts for a show, over all its pages, in (seq, token) order.
        let mut groups: Vec<((String, DeviceId), Vec<DocHandle>)> = Vec::new();
        for ((show, device, _), handle) in ledgers {
            match groups.last_mut() {
                Some((key, list)) if key.0 == show && key.1 == device => list.push(handle),
                _ => groups.push(((show, device), vec![handle])),
            }
        }
        let mut receipts = Vec::new();
        let mut more = false;
        'groups: for ((show, device), handles) in groups {
            let mut pages = Vec::with_capacity(handles.len());
            for handle in &handles {
                pages.push(self.checked_page(handle, &directory, &view).await?);
            }
            let mut all: Vec<&CheckedReceipt> = pages.iter().flat_map(|p| p.iter()).collect();
            all.sort_by(|a, b| (a.receipt.seq, &a.token).cmp(&(b.receipt.seq, &b.token)));
            for r in all {
                if let Some((s, d, seq, token)) = &after
                    && (&show, &device, r.receipt.seq, &r.token) <= (s, d, *seq, token)
                {
                    continue;
                }
                if receipts.len() == limit {
                    more = true;
                    break 'groups;
                }
                receipts.push(r.clone());
            }
        }
        let next = more
            .then(|| receipts.last())
            .flatten()
            .map(|r: &CheckedReceipt| {
                let (show, device, seq) =
                    (&r.receipt.show, r.receipt.device.to_hex(), r.receipt.seq);
                format!("{show}/{device}/{seq}/{}", r.token)
            });
        Ok(ReceiptPage { receipts, next })
    }

    /// A ledger page's receipts checked against the directory: from the cache while neither the page nor the
    /// directory changed, else decoded and checked on the blocking pool.
    async fn checked_page(
        &self,
        handle: &DocHandle,
        directory: &[automerge::ChangeHash],
        view: &popmesh_crdt::directory::DirectoryView,
    ) -> Result<Arc<Vec<CheckedReceipt>>, Unavailable> {
        let mut heads = handle
            .with_document_async(|am| am.get_heads())
            .await
            .map_err(stopped)?;
        heads.extend_from_slice(directory);
        if let Some((seen, page)) = lock(&self.ledger_cache).get(handle.document_id())
            && *seen == heads
        {
            return Ok(page.clone());
        }
        let Some(page) = read_ledger(handle).await? else {
            return Ok(Arc::default());
        };
        let view = view.clone();
        let checked = tokio::task::spawn_blocking(move || {
            page.receipts
                .iter()
                .map(|r| {
                    CheckedReceipt::new(
                        r.clone(),
                        page.is_reconciled(&r.token),
                        r.verify(&view).map_err(|e| e.to_string()),
                    )
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(internal)?;
        let checked = Arc::new(checked);
        lock(&self.ledger_cache).insert(handle.document_id().clone(), (heads, checked.clone()));
        Ok(checked)
    }

    /// The last receipt sequence number of `device` in each show, as this device holds its ledgers: what a
    /// revocation of that device honours (`popmesh site revoke`).
    pub async fn issued_by(
        &self,
        device: DeviceId,
    ) -> Result<std::collections::BTreeMap<String, u64>, Unavailable> {
        // Every page of the device must be here, or the revocation would refuse receipts it took legitimately.
        self.all_pages_open(Some(device))?;
        let handles: Vec<(String, DocHandle)> = read(&self.docs)
            .values()
            .filter_map(|(name, h)| match name {
                DocName::Ledger {
                    show, device: d, ..
                } if *d == device => Some((show.clone(), h.clone())),
                _ => None,
            })
            .collect();
        let mut out = std::collections::BTreeMap::new();
        for (show, handle) in handles {
            if let Some(page) = read_ledger(&handle).await? {
                let last = page.receipts.iter().map(|r| r.seq).max().unwrap_or(0);
                let entry = out.entry(show).or_insert(0);
                *entry = last.max(*entry);
            }
        }
        Ok(out)
    }
}
