//! A show's report from the documents this device holds.

use super::*;

/// Why a show report was not made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Show(#[from] ShowError),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl Node {
    /// The show report over everything this device holds (complete at the origin once it has merged the show).
    pub async fn report(&self, show: Option<String>) -> Result<ShowReport, ReportError> {
        let view = self.view()?;
        let show = self.existing_show(&view, show)?;
        let handles: Vec<(DocName, DocHandle)> = read(&self.docs).values().cloned().collect();
        let mut data = ShowData {
            show: show.clone(),
            now: clock::now().0,
            devices: view
                .certificates()
                .map(|c| (c.device.to_hex(), (c.name.clone(), c.role.to_string())))
                .collect(),
            conversion: Some(lock(&self.sampler).policy().clone()),
            ..ShowData::default()
        };
        for (name, handle) in handles {
            match name {
                DocName::Slot { show: s, .. } if s == show => {
                    let slot = handle
                        .with_document_async(|am| {
                            Doc::<Slot, &mut Automerge>::attach(am)
                                .map_err(EscrowError::Doc)
                                .and_then(|d| d.view())
                        })
                        .await
                        .map_err(stopped)?;
                    if let Ok(v) = slot {
                        data.slots.push(v.record);
                    }
                }
                DocName::Ledger { show: s, .. } if s == show => {
                    let Some(ledger) = read_ledger(&handle).await? else {
                        continue;
                    };
                    data.rejected += ledger.malformed.len();
                    for r in &ledger.receipts {
                        if r.verify(&view).is_err() {
                            data.rejected += 1;
                            continue;
                        }
                        let token = r.token.to_string();
                        data.receipts.push(ReportReceipt {
                            device: r.device.to_hex(),
                            amount_minor: r.amount_minor,
                            currency: r.currency.clone(),
                            issued_at: r.issued_at.0,
                            reconciled: ledger.reconciled.contains_key(&token),
                            attendee: ledger.attendees.get(&token).cloned(),
                        });
                    }
                }
                DocName::Access { show: s } => {
                    let record = handle
                        .with_document_async(|am| {
                            Doc::<Access, &mut Automerge>::attach(am).and_then(|d| d.record())
                        })
                        .await
                        .map_err(stopped)?;
                    match record {
                        Ok(r) if s == show => data.access = Some(r),
                        Ok(r) => data.other_access.push(r),
                        Err(e) => tracing::debug!("access list of {s} unreadable: {e}"),
                    }
                }
                _ => {}
            }
        }
        data.telemetry = self.telemetry_records().await;
        Ok(popmesh_crdt::report::build(&data))
    }
}
