//! The node's promises about money and seats, kept in one place:
//!
//! - **Ready means ready.** Until every ledger page of this device that the directory registers is open, money
//!   requests and money reads answer 503 with what is still loading ([`Node::money_ready`]); so a restarted
//!   device never answers "no receipts" for receipts it holds, nor takes a payment past a stored limit it had
//!   reached.
//! - **Durable means durable.** A failed store refuses money and seat writes with a 503 that says why
//!   ([`Node::writable`]). A document whose acknowledged write failed is marked *undurable*: the next write to it,
//!   or a replay that reads from it, saves the whole document and makes that durable before anything is answered
//!   (see `Node::change`). When the store recovers, every open document is made durable again
//!   ([`Node::after_recovery`]).
//! - **Idempotency keys belong to the device.** A key names one payment on this device, whatever the show
//!   ([`Node::claim_key`]).

use std::collections::HashMap;

use automerge::ReadDoc as _;
use popmesh_crdt::docs::DocName;
use samod::DocHandle;

use super::{Failure, Node, lock, read};

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
        let view = self.view()?;
        let me = self.me();
        let open: std::collections::BTreeSet<String> = read(&self.docs)
            .values()
            .map(|(name, _)| name.to_string())
            .collect();
        Ok(view
            .documents
            .keys()
            .filter(|name| {
                matches!(name.parse::<DocName>(), Ok(DocName::Ledger { device, .. }) if device == me)
            })
            .filter(|name| !open.contains(*name))
            .cloned()
            .collect())
    }

    /// Whether money requests and money reads may be answered: the directory is read, every ledger page of this
    /// device is open, and the device's idempotency keys are indexed.
    pub(crate) async fn money_ready(&self) -> Result<(), Failure> {
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

    /// [`Node::money_ready`] for the HTTP layer's money reads.
    pub async fn money_ready_public(&self) -> Result<(), Failure> {
        self.money_ready().await
    }

    /// Every idempotency key this device's ledgers hold, with its show.
    async fn index_keys(&self) -> Result<HashMap<String, String>, Failure> {
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
                index.insert(key, show.clone());
            }
        }
        Ok(index)
    }

    /// Claims `key` for a payment in `show`: refused when this device already used it in another show. Returns
    /// whether this call made the claim (so a refused payment can give it back).
    pub(crate) fn claim_key(&self, key: &str, show: &str) -> Result<bool, Failure> {
        let mut keys = lock(&self.keys);
        let keys = keys
            .as_mut()
            .ok_or_else(|| Failure::Unavailable("idempotency keys are not indexed yet".into()))?;
        match keys.get(key) {
            Some(other) if other != show => Err(Failure::Conflict(format!(
                "idempotency key '{key}' was already used on this device for a payment in show '{other}': show \
                 differs; use a new key for a new payment"
            ))),
            Some(_) => Ok(false),
            None => {
                keys.insert(key.to_owned(), show.to_owned());
                Ok(true)
            }
        }
    }

    /// Gives back a claim for a payment that wrote nothing.
    pub(crate) fn release_key(&self, key: &str) {
        if let Some(keys) = lock(&self.keys).as_mut() {
            keys.remove(key);
        }
    }

    /// After the store recovered from a failed write: every open document saved whole and made durable, since
    /// writes that failed (samod's and acknowledged ones) may be missing from the file.
    pub(crate) async fn after_recovery(&self) -> Result<usize, Failure> {
        let handles: Vec<DocHandle> = read(&self.docs).values().map(|(_, h)| h.clone()).collect();
        let mut saved = 0;
        for handle in handles {
            let bytes = handle
                .with_document_async(|am| am.save())
                .await
                .map_err(super::stopped)?;
            self.ack(handle.document_id(), bytes).await?;
            lock(&self.undurable).remove(handle.document_id());
            saved += 1;
        }
        Ok(saved)
    }

    /// Tries to bring a failed store back (called every flush tick); on success, makes every document durable.
    pub(crate) async fn heal_store(&self) {
        if !self.store.has_failed() {
            return;
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.recover()).await {
            Ok(Ok(true)) => match self.after_recovery().await {
                Ok(n) => tracing::info!(
                    documents = n,
                    "store recovered; every document is durable again"
                ),
                Err(e) => tracing::warn!("store recovered, documents not yet durable again: {e}"),
            },
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::debug!("store not recovered yet: {e}"),
            Err(e) => tracing::warn!("store recovery task failed: {e}"),
        }
    }
}
