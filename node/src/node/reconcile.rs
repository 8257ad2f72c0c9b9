//! The origin's reconciliation of every ledger against the processor's settlement batch.

use super::*;

/// Why a settlement batch was not reconciled.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Only the origin reconciles.
    #[error("a {0} may not reconcile; the origin does")]
    NotOrigin(Role),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl Node {
    /// The origin reconciles every receipt it holds (every device, every ledger page) against the processor's
    /// settlement batch `batch`, and marks the matched receipts reconciled in their ledgers, durably, so the site
    /// learns they are settled (and their devices' stored offline totals free up). Receipts that do not verify are
    /// reported with the reason and never matched. A second run over the same batch writes nothing.
    pub async fn reconcile(
        &self,
        batch: &str,
        rows: &[SettlementRow],
    ) -> Result<(Reconciliation, usize), ReconcileError> {
        if self.dir.cert.role != Role::Origin {
            return Err(ReconcileError::NotOrigin(self.dir.cert.role));
        }
        // Every ledger page the directory registers must be here: a receipt still syncing is not "missing".
        self.all_pages_open(None)?;
        let view = self.view()?;
        let ledgers: Vec<DocHandle> = read(&self.docs)
            .values()
            .filter(|(n, _)| matches!(n, DocName::Ledger { .. }))
            .map(|(_, h)| h.clone())
            .collect();
        let mut receipts = Vec::new();
        let mut home: BTreeMap<String, DocHandle> = BTreeMap::new();
        for handle in ledgers {
            let Some(ledger) = read_ledger(&handle).await? else {
                continue;
            };
            for r in &ledger.receipts {
                home.insert(r.token.to_string(), handle.clone());
            }
            receipts.extend(settlement::site_receipts(&ledger, &view));
        }
        let report = settlement::reconcile(&receipts, rows);
        if let Some(sink) = &self.warehouse {
            sink.note_reconciliation(batch, &report).await;
        }
        let mut by_ledger: BTreeMap<DocumentId, (DocHandle, Vec<ReceiptToken>)> = BTreeMap::new();
        for m in report.to_mark() {
            if let (Some(handle), Some(token)) = (home.get(&m.token), ReceiptToken::parse(&m.token))
            {
                by_ledger
                    .entry(handle.document_id().clone())
                    .or_insert_with(|| (handle.clone(), Vec::new()))
                    .1
                    .push(token);
            }
        }
        let mut marked = 0;
        let now = clock::now();
        for (_, (handle, tokens)) in by_ledger {
            let (actor, batch) = (self.actor(), batch.to_owned());
            let n = tokens.len();
            self.change(&handle, move |am| {
                let mut d = Doc::<Ledger, &mut Automerge>::attach_as(am, actor)?;
                for token in &tokens {
                    d.mark_reconciled(token, &batch, now)?;
                }
                Ok::<_, popmesh_crdt::DocError>(())
            })
            .await?
            .map_err(internal)?;
            marked += n;
        }
        tracing::info!(
            batch,
            matched = report.matched.len(),
            marked,
            clean = report.clean(),
            "reconciled the settlement batch"
        );
        Ok((report, marked))
    }
}
