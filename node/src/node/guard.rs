//! The node's promises about money and seats, kept in one place:
//!
//! - **Ready means ready.** Until every ledger page of this device that the directory registers is open, money
//!   requests and money reads answer 503 with what is still loading (`Node::money_ready`, deciding with the
//!   device core's desk); so a restarted device never answers "no receipts" for receipts it holds, nor takes a
//!   payment past a stored limit it had reached.
//! - **Durable means durable.** A failed store refuses money and seat writes with a 503 that says why
//!   ([`Node::writable`]). A document whose acknowledged write failed is marked *undurable*: the next write to it,
//!   or a replay that reads from it, saves it whole and makes that durable before anything is answered
//!   (`Node::change`, planned by `popmesh_device::durability`). The store reopens itself once space is back,
//!   and the undurable documents are saved whole at once ([`Node::heal_store`]).
//! - **Idempotency keys belong to the device**: the desk's core keeps them (`popmesh_device::desk`).

use popmesh_crdt::docs::DocName;

use super::{Node, Unavailable, lock, read};

impl Node {
    /// Refuses money and seat writes while the data file refuses writes.
    pub(crate) fn writable(&self) -> Result<(), Unavailable> {
        match self.store.health() {
            None => Ok(()),
            Some(fault) if fault.kind == "disk_full" => Err(Unavailable::DiskFull {
                path: self.store.path().display().to_string(),
                reason: fault.reason,
            }),
            Some(fault) => Err(Unavailable::StoreRefuses(fault.reason)),
        }
    }

    /// The store's fault, as the desk's core takes it.
    pub(crate) fn store_fault(&self) -> Option<popmesh_device::StoreFault> {
        self.store.health().map(|fault| popmesh_device::StoreFault {
            disk_full: fault.kind == "disk_full",
            reason: fault.reason,
        })
    }

    /// This device's ledger pages the directory registers and that are not open yet.
    pub(crate) fn ledgers_loading(&self) -> Result<Vec<String>, Unavailable> {
        self.pages_loading(Some(self.me()))
    }

    /// Ledger pages the directory registers (of `device`, or of every device) that are not open here yet.
    pub(crate) fn pages_loading(
        &self,
        device: Option<popmesh_crdt::DeviceId>,
    ) -> Result<Vec<String>, Unavailable> {
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

    /// Refuses an answer about every receipt (reconciliation, what a device issued) while ledger pages the
    /// directory registers are not open here: an origin just restarted would report them missing.
    pub(crate) fn all_pages_open(
        &self,
        device: Option<popmesh_crdt::DeviceId>,
    ) -> Result<(), Unavailable> {
        let loading = self.pages_loading(device)?;
        if loading.is_empty() {
            return Ok(());
        }
        Err(Unavailable::loading_all(
            "ledger pages the directory registers",
            &loading,
        ))
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
                    lock(&self.durability).undurable().cloned().collect();
                let handles: Vec<samod::DocHandle> = read(&self.docs)
                    .iter()
                    .filter(|(id, _)| undurable.contains(id))
                    .map(|(_, (_, h))| h.clone())
                    .collect();
                for h in &handles {
                    if let Err(e) = self.change(h, |_| ()).await {
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
