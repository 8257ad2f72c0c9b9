//! The node's promises about money and seats, kept in one place:
//!
//! - **Ready means ready.** Until every ledger page of this device that the directory registers is open, money
//!   requests and money reads answer 503 with what is still loading ([`Node::money_ready`]); so a restarted
//!   device never answers "no receipts" for receipts it holds, nor takes a payment past a stored limit it had
//!   reached.
//! - **Durable means durable.** A failed store refuses money and seat writes with a 503 that says why
//!   ([`Node::writable`]). A document whose acknowledged write failed is marked *undurable*: the next write to it,
//!   or a replay that reads from it, saves it whole and makes that durable before anything is answered
//!   (`Node::change_then`). The store reopens itself once space is back, and the undurable documents are saved
//!   whole at once ([`Node::heal_store`]).
//! - **Idempotency keys belong to the device.** A key names one payment on this device, whatever the show
//!   ([`Node::claim_key`]).

use std::collections::HashMap;

use automerge::ReadDoc as _;
use popmesh_crdt::docs::DocName;

use super::{Failure, Node, lock, read};

/// An idempotency key of this device: the show it belongs to, requests with it at the desk now, and whether a
/// payment was taken under it.
#[derive(Debug, Clone)]
pub(crate) struct KeyClaim {
    pub show: String,
    pub inflight: u32,
    pub taken: bool,
}

impl Node {
    /// Refuses money and seat writes while the data file refuses writes.
    pub(crate) fn writable(&self) -> Result<(), Failure> {
        match self.store.health() {
            None => Ok(()),
            Some(fault) if fault.kind == "disk_full" => Err(Failure::Unavailable(format!(
                "the disk is full, so this device takes no payments or bookings now (nothing was written); \
                 free space on {} and it resumes by itself: {}",
                self.store.path().display(),
                fault.reason
            ))),
            Some(fault) => Err(Failure::Unavailable(format!(
                "this device's data file refuses writes, so it takes no payments or bookings now (nothing was \
                 written): {}",
                fault.reason
            ))),
        }
    }

    /// This device's ledger pages the directory registers and that are not open yet.
    pub(crate) fn ledgers_loading(&self) -> Result<Vec<String>, Failure> {
        self.pages_loading(Some(self.me()))
    }

    /// Ledger pages the directory registers (of `device`, or of every device) that are not open here yet.
    pub(crate) fn pages_loading(
        &self,
        device: Option<popmesh_crdt::DeviceId>,
    ) -> Result<Vec<String>, Failure> {
        let view = self.view()?;
        let open: std::collections::BTreeSet<String> = read(&self.docs)
            .values()
            .map(|(name, _)| name.to_string())
            .collect();
        Ok(view
            .documents
            .keys()
            .filter(|name| {
                matches!(name.parse::<DocName>(), Ok(DocName::Ledger { device: d, .. }) if device.is_none_or(|me| d == me))
            })
            .filter(|name| !open.contains(*name))
            .cloned()
            .collect())
    }

    /// Whether money requests and money reads may be answered: the directory is read, every ledger page of this
    /// device is open, and the device's idempotency keys are indexed. Latched by the key index: it is built only
    /// once every page is open, and no page of this device can appear unopened after that (only this device's
    /// desk registers its pages, and it opens them first), so a payment does not re-read the directory for it.
    pub(crate) async fn money_ready(&self) -> Result<(), Failure> {
        if lock(&self.keys).is_some() {
            return Ok(());
        }
        let loading = self.ledgers_loading()?;
        if !loading.is_empty() {
            let shown: Vec<&str> = loading.iter().take(5).map(String::as_str).collect();
            return Err(Failure::Unavailable(format!(
                "this device is still loading {} of its ledger pages ({}{}); money requests wait until they are \
                 all open",
                loading.len(),
                shown.join(", "),
                if loading.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            )));
        }
        if lock(&self.keys).is_none() {
            let index = self.index_keys().await?;
            let mut keys = lock(&self.keys);
            if keys.is_none() {
                *keys = Some(index);
            }
        }
        Ok(())
    }

    /// Refuses an answer about every receipt (reconciliation, what a device issued) while ledger pages the
    /// directory registers are not open here: an origin just restarted would report them missing.
    pub(crate) fn all_pages_open(
        &self,
        device: Option<popmesh_crdt::DeviceId>,
    ) -> Result<(), Failure> {
        let loading = self.pages_loading(device)?;
        if loading.is_empty() {
            return Ok(());
        }
        Err(Failure::Unavailable(format!(
            "{} ledger pages the directory registers are not open on this device yet ({}{}); ask again once \
             they have synced",
            loading.len(),
            loading
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            if loading.len() > 3 { ", ..." } else { "" }
        )))
    }

    /// Every idempotency key this device's ledgers hold, with its show.
    async fn index_keys(&self) -> Result<HashMap<String, KeyClaim>, Failure> {
        let mut index = HashMap::new();
        for (show, handle) in self.own_ledgers() {
            let keys: Vec<String> = handle
                .with_document_async(|am| match am.get(automerge::ROOT, "keys") {
                    Ok(Some((automerge::Value::Object(_), id))) => am.keys(&id).collect(),
                    _ => Vec::new(),
                })
                .await
                .map_err(super::stopped)?;
            for key in keys {
                index.insert(
                    key,
                    KeyClaim {
                        show: show.clone(),
                        inflight: 0,
                        taken: true,
                    },
                );
            }
        }
        Ok(index)
    }

    /// Claims `key` for a payment in `show` before it goes to the desk: refused when this device used the key in
    /// another show, or a payment with it in another show is being decided now. The desk settles every claim when
    /// it has decided ([`Node::settle_key`]), whatever happened to the client that asked.
    pub(crate) fn claim_key(&self, key: &str, show: &str) -> Result<(), Failure> {
        let mut keys = lock(&self.keys);
        let keys = keys
            .as_mut()
            .ok_or_else(|| Failure::Unavailable("idempotency keys are not indexed yet".into()))?;
        match keys.get_mut(key) {
            Some(claim) if claim.show != show => Err(Failure::Conflict(format!(
                "idempotency key '{key}' was already used on this device for a payment in show '{}': show \
                 differs; use a new key for a new payment",
                claim.show
            ))),
            Some(claim) => {
                claim.inflight += 1;
                Ok(())
            }
            None => {
                keys.insert(
                    key.to_owned(),
                    KeyClaim {
                        show: show.to_owned(),
                        inflight: 1,
                        taken: false,
                    },
                );
                Ok(())
            }
        }
    }

    /// The desk's decision on a claimed key: `taken` when the ledger holds a payment under it now. A key no
    /// payment was taken under is free again once no request with it is being decided.
    pub(crate) fn settle_key(&self, key: &str, taken: bool) {
        if let Some(keys) = lock(&self.keys).as_mut()
            && let Some(claim) = keys.get_mut(key)
        {
            claim.inflight = claim.inflight.saturating_sub(1);
            claim.taken |= taken;
            if claim.inflight == 0 && !claim.taken {
                keys.remove(key);
            }
        }
    }

    /// Tries to bring a failed store back (called every flush tick).
    pub(crate) async fn heal_store(&self) {
        if !self.store.has_failed() {
            return;
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.recover()).await {
            Ok(Ok(true)) => {
                // The documents whose acknowledged writes failed, saved whole now (only those: what samod wrote
                // lazily while the disk refused it is synced data, which peers send again after a crash).
                let undurable: Vec<samod::DocumentId> =
                    lock(&self.undurable).iter().cloned().collect();
                let handles: Vec<samod::DocHandle> = read(&self.docs)
                    .iter()
                    .filter(|(id, _)| undurable.contains(id))
                    .map(|(_, (_, h))| h.clone())
                    .collect();
                for h in &handles {
                    if let Err(e) = self.change_then(h, |_| (), |_| true).await {
                        tracing::warn!("a document is not durable again yet: {e}");
                    }
                }
                tracing::info!(
                    resaved = handles.len(),
                    "store recovered; payments and bookings are taken again"
                );
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::debug!("store not recovered yet: {e}"),
            Err(e) => tracing::warn!("store recovery task failed: {e}"),
        }
    }
}
