//! The origin's reconciliation, as the node's `Node::reconcile` does it: every receipt it holds, verified against
//! its directory (`settlement::site_receipts`), matched against the processor's settlement batch
//! (`settlement::reconcile`), and the matched ones marked reconciled in their ledger pages, durably. The marks
//! sync back to the POS terminals and free their stored limits.

use popmesh_crdt::receipt::ReceiptToken;
use popmesh_crdt::settlement::{self, SettlementRow};

use super::*;

impl World {
    pub(super) fn reconcile(&mut self, dev: usize) {
        if self.devices[dev].host.is_none() || self.devices[dev].view.is_none() {
            return;
        }
        let pages: Vec<DocumentId> = self.devices[dev]
            .known
            .iter()
            .filter(|(name, _)| matches!(name.parse::<DocName>(), Ok(DocName::Ledger { .. })))
            .map(|(_, id)| id.clone())
            .collect();
        let mut receipts = Vec::new();
        let mut home: BTreeMap<String, DocumentId> = BTreeMap::new();
        for id in &pages {
            let Some(page) = self.replica::<Ledger, _>(dev, id, |d| d.view().ok()) else {
                continue;
            };
            let view = self.devices[dev].view.as_ref().expect("checked");
            for r in &page.receipts {
                home.insert(r.token.to_string(), id.clone());
            }
            receipts.extend(settlement::site_receipts(&page, view));
        }
        // The processor's batch: it collected every payment the site's devices took (the world knows which).
        let rows: Vec<SettlementRow> = receipts
            .iter()
            .filter(|r| r.verified.is_ok() && !r.reconciled)
            .enumerate()
            .map(|(line, r)| SettlementRow {
                line: line + 2,
                token: r.token.clone(),
                amount_minor: r.amount_minor,
                currency: r.currency.clone(),
                status: "settled".into(),
            })
            .collect();
        let report = settlement::reconcile(&receipts, &rows);
        let mut by_page: BTreeMap<DocumentId, Vec<ReceiptToken>> = BTreeMap::new();
        for m in report.to_mark() {
            if let (Some(id), Some(token)) = (home.get(&m.token), ReceiptToken::parse(&m.token)) {
                by_page.entry(id.clone()).or_default().push(token);
            }
        }
        let batch = format!("batch-{}", self.now);
        let (ts, at, actor) = (
            self.ts(dev),
            UnixMillis(self.local_ms(dev)),
            self.actor(dev),
        );
        for (id, tokens) in by_page {
            let d = &mut self.devices[dev];
            let Some(host) = d.host.as_mut() else {
                return;
            };
            let written = host.change_acked(&mut d.durability, &id, ts, |am| {
                let mut doc = Doc::<Ledger, &mut Automerge>::attach_as(am, actor.clone())?;
                for token in &tokens {
                    doc.mark_reconciled(token, &batch, at)?;
                }
                Ok::<_, popmesh_crdt::DocError>(())
            });
            // A refused write is retried by the next run (the marks may have synced from memory meanwhile).
            if let Ok((Ok(()), Ok(()))) = written {
                self.report.receipts_reconciled += tokens.len() as u64;
            }
        }
    }
}
