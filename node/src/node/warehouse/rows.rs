//! What each document contributes to the warehouse: rows keyed by their natural keys, built from the typed views
//! the rest of the node reads (the directory, slots, ledger pages, access lists, telemetry).
//!
//! Nothing here does IO. Numbers are `u64` in the documents and `bigint` in PostgreSQL: counts past `i64::MAX`
//! (which only a hostile document carries) are stored as `i64::MAX`; a receipt whose amount does not fit is stored
//! among the malformed receipts instead, never with a changed amount.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use popmesh_crdt::access::AccessRecord;
use popmesh_crdt::directory::{DirectoryRecord, DirectoryView};
use popmesh_crdt::escrow::SlotRecord;
use popmesh_crdt::ledger::LedgerView;
use popmesh_crdt::telemetry::TelemetryRecord;
use serde::{Deserialize, Serialize};

/// Text PostgreSQL can store: NUL (which no `text` may hold) becomes U+FFFD. Names, ids and pseudonyms are checked
/// when they enter a document; what a settlement batch is called, and what its file says, is not.
pub fn storable(t: &str) -> String {
    t.replace('\0', "\u{FFFD}")
}

/// A count from a document as a `bigint`.
fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteRow {
    pub name: String,
    pub conversion: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceRow {
    pub device: String,
    pub name: String,
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShowRow {
    pub show: String,
    pub name: String,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotRow {
    pub show: String,
    pub slot: String,
    pub label: String,
    pub starts_at_ms: i64,
    pub capacity: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantRow {
    pub show: String,
    pub slot: String,
    pub device: String,
    pub seats: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BookingRow {
    pub show: String,
    pub slot: String,
    pub device: String,
    pub booking: String,
    pub seats: i64,
    pub at_ms: i64,
    pub attendee: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferRow {
    pub show: String,
    pub slot: String,
    pub device: String,
    pub transfer: String,
    pub to_device: String,
    pub seats: i64,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReceiptRow {
    pub token: String,
    pub show: String,
    pub device: String,
    pub seq: i64,
    pub amount_minor: i64,
    pub currency: String,
    pub issued_at_ms: i64,
    pub attendee: Option<String>,
    pub verified: bool,
    pub rejection: Option<String>,
    pub reconciled_batch: Option<String>,
    pub reconciled_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MalformedRow {
    pub show: String,
    pub device: String,
    pub token: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CheckinRow {
    pub show: String,
    pub device: String,
    pub pass: String,
    pub at_ms: i64,
    pub kind: String,
    pub subject: Option<String>,
    pub issuer: String,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PassRevocationRow {
    pub show: String,
    pub device: String,
    pub pass: String,
    pub at_ms: i64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConfirmationRow {
    pub show: String,
    pub pass: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterRow {
    pub device: String,
    pub counter: String,
    pub value: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IncidentRow {
    pub device: String,
    pub key: String,
    pub kind: String,
    pub subject: String,
    pub started_ms: i64,
    pub resolved_ms: Option<i64>,
}

/// One `popmesh reconcile` run's summary, queued until the database has it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BatchRow {
    pub batch: String,
    pub reconciled_at_ms: i64,
    pub matched: i64,
    pub exceptions: i64,
    pub clean: bool,
    /// What the batch did not agree with (matched receipts are in their ledgers' marks).
    pub rows: Vec<ExceptionRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExceptionRow {
    pub outcome: String,
    pub token: String,
    pub line: i64,
    pub device: Option<String>,
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    pub processor_amount_minor: Option<i64>,
    pub processor_currency: Option<String>,
    pub detail: Option<String>,
}

/// The rows of one or more documents, one list per table, for one site.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rows {
    pub site: Option<SiteRow>,
    pub devices: Vec<DeviceRow>,
    pub shows: Vec<ShowRow>,
    pub slots: Vec<SlotRow>,
    pub grants: Vec<GrantRow>,
    pub bookings: Vec<BookingRow>,
    pub transfers: Vec<TransferRow>,
    pub receipts: Vec<ReceiptRow>,
    pub malformed: Vec<MalformedRow>,
    pub checkins: Vec<CheckinRow>,
    pub pass_revocations: Vec<PassRevocationRow>,
    pub confirmations: Vec<ConfirmationRow>,
    pub counters: Vec<CounterRow>,
    pub incidents: Vec<IncidentRow>,
}

/// Applies `$f` to every list of a [`Rows`], with the list's name.
macro_rules! each_list {
    ($rows:expr, $f:ident) => {{
        $f!($rows.devices);
        $f!($rows.shows);
        $f!($rows.slots);
        $f!($rows.grants);
        $f!($rows.bookings);
        $f!($rows.transfers);
        $f!($rows.receipts);
        $f!($rows.malformed);
        $f!($rows.checkins);
        $f!($rows.pass_revocations);
        $f!($rows.confirmations);
        $f!($rows.counters);
        $f!($rows.incidents);
    }};
}

fn digest<T: Hash>(table: &str, row: &T) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    table.hash(&mut h);
    row.hash(&mut h);
    h.finish()
}

impl Rows {
    pub fn len(&self) -> usize {
        let mut n = usize::from(self.site.is_some());
        macro_rules! add {
            ($list:expr) => {
                n += $list.len()
            };
        }
        each_list!(self, add);
        n
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves every row of `other` into these.
    pub fn append(&mut self, mut other: Rows) {
        if other.site.is_some() {
            self.site = other.site.take();
        }
        macro_rules! take {
            ($list:ident) => {
                self.$list.append(&mut other.$list)
            };
        }
        take!(devices);
        take!(shows);
        take!(slots);
        take!(grants);
        take!(bookings);
        take!(transfers);
        take!(receipts);
        take!(malformed);
        take!(checkins);
        take!(pass_revocations);
        take!(confirmations);
        take!(counters);
        take!(incidents);
    }

    /// A digest of every row (what the follower remembers as written, per document).
    pub fn digests(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.len());
        if let Some(s) = &self.site {
            out.push(digest("site", s));
        }
        macro_rules! push {
            ($list:expr) => {
                out.extend($list.iter().map(|r| digest(stringify!($list), r)))
            };
        }
        each_list!(self, push);
        out
    }

    /// Keeps only the rows whose digest `written` does not hold.
    pub fn retain_unwritten(&mut self, written: &std::collections::HashSet<u64>) {
        if self
            .site
            .as_ref()
            .is_some_and(|s| written.contains(&digest("site", s)))
        {
            self.site = None;
        }
        macro_rules! keep {
            ($list:expr) => {
                $list.retain(|r| !written.contains(&digest(stringify!($list), r)))
            };
        }
        each_list!(self, keep);
    }

    /// Sorts every list, so that concurrent writers (two origins of one site) take row locks in the same order.
    pub fn sort(&mut self) {
        macro_rules! sort {
            ($list:expr) => {
                $list.sort()
            };
        }
        each_list!(self, sort);
    }
}

/// Directory entries that decide whether a receipt verifies (certificates and revocations), as one digest: a
/// ledger page's rows depend on its heads and on this.
pub fn trust_digest(record: &DirectoryRecord) -> String {
    let mut h = blake3::Hasher::new();
    for (key, bytes) in record.devices.iter().chain(&record.revocations) {
        h.update(&(key.len() as u64).to_le_bytes());
        h.update(key.as_bytes());
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    h.finalize().to_hex()[..32].to_owned()
}

/// The directory's rows: the site, its enrolled devices, its shows and their slots.
pub fn directory(view: &DirectoryView, conversion: &[String]) -> Rows {
    let mut rows = Rows {
        site: Some(SiteRow {
            name: view.name.clone(),
            conversion: conversion.to_vec(),
        }),
        ..Rows::default()
    };
    for cert in view.certificates() {
        rows.devices.push(DeviceRow {
            device: cert.device.to_hex(),
            name: cert.name.clone(),
            role: cert.role.to_string(),
        });
    }
    for (id, show) in &view.shows {
        rows.shows.push(ShowRow {
            show: id.clone(),
            name: show.name.clone(),
            currency: show.currency.clone(),
        });
        for (slot_id, slot) in &show.slots {
            rows.slots.push(SlotRow {
                show: id.clone(),
                slot: slot_id.clone(),
                label: slot.label.clone(),
                starts_at_ms: big(slot.starts_at),
                capacity: big(slot.capacity),
            });
        }
    }
    rows
}

/// A slot's rows: grants, bookings and transfers, each under the device that wrote it.
pub fn slot(record: &SlotRecord) -> Rows {
    let mut rows = Rows::default();
    for (device, seats) in &record.grants {
        rows.grants.push(GrantRow {
            show: record.show.clone(),
            slot: record.slot.clone(),
            device: device.clone(),
            seats: big(*seats),
        });
    }
    for (device, escrow) in &record.devices {
        for (booking, sale) in &escrow.sales {
            rows.bookings.push(BookingRow {
                show: record.show.clone(),
                slot: record.slot.clone(),
                device: device.clone(),
                booking: booking.clone(),
                seats: big(sale.seats),
                at_ms: big(sale.at),
                attendee: sale.attendee.clone(),
            });
        }
        for (transfer, t) in &escrow.transfers {
            rows.transfers.push(TransferRow {
                show: record.show.clone(),
                slot: record.slot.clone(),
                device: device.clone(),
                transfer: transfer.clone(),
                to_device: t.to.clone(),
                seats: big(t.seats),
                at_ms: big(t.at),
            });
        }
    }
    rows
}

/// Verification results by receipt token, valid for one trust digest.
pub type Verified = BTreeMap<String, Result<(), String>>;

/// A ledger page's receipts, each verified against `directory` (results cached in `verified`), with their
/// reconciliation marks and buyers.
pub fn ledger(page: &LedgerView, directory: &DirectoryView, verified: &mut Verified) -> Rows {
    let mut rows = Rows::default();
    let show = page.show.clone();
    for r in &page.receipts {
        let token = r.token.to_string();
        let outcome = verified
            .entry(token.clone())
            .or_insert_with(|| r.verify(directory).map_err(|e| e.to_string()))
            .clone();
        let Ok(amount_minor) = i64::try_from(r.amount_minor) else {
            rows.malformed.push(MalformedRow {
                show: show.clone(),
                device: r.device.to_hex(),
                token,
                reason: format!(
                    "amount_minor {} does not fit the warehouse's bigint",
                    r.amount_minor
                ),
            });
            continue;
        };
        let mark = page.reconciled.get(&token);
        rows.receipts.push(ReceiptRow {
            show: show.clone(),
            device: r.device.to_hex(),
            seq: big(r.seq),
            amount_minor,
            currency: r.currency.clone(),
            issued_at_ms: big(r.issued_at.0),
            attendee: page.attendees.get(&token).cloned(),
            verified: outcome.is_ok(),
            rejection: outcome.err(),
            reconciled_batch: mark.map(|m| storable(&m.batch)),
            reconciled_at_ms: mark.map(|m| big(m.at)),
            token,
        });
    }
    for (token, e) in &page.malformed {
        rows.malformed.push(MalformedRow {
            show: show.clone(),
            device: page.device.to_hex(),
            token: token.clone(),
            reason: e.to_string(),
        });
    }
    rows
}

/// A show's access list: check-ins, pass revocations and the origin's confirmations.
pub fn access(record: &AccessRecord) -> Rows {
    let mut rows = Rows::default();
    for (device, list) in &record.checkins {
        for (pass, c) in list {
            rows.checkins.push(CheckinRow {
                show: record.show.clone(),
                device: device.clone(),
                pass: pass.clone(),
                at_ms: big(c.at),
                kind: c.kind.clone(),
                subject: c.subject.clone(),
                issuer: c.issuer.clone(),
                expires_at_ms: big(c.expires_at),
            });
        }
    }
    for (device, list) in &record.revoked {
        for (pass, r) in list {
            rows.pass_revocations.push(PassRevocationRow {
                show: record.show.clone(),
                device: device.clone(),
                pass: pass.clone(),
                at_ms: big(r.at),
                reason: r.reason.clone(),
            });
        }
    }
    for (pass, at) in &record.confirmed {
        rows.confirmations.push(ConfirmationRow {
            show: record.show.clone(),
            pass: pass.clone(),
            at_ms: big(*at),
        });
    }
    rows
}

/// A device's telemetry: its counters (aggregates only) and the incidents it recorded.
pub fn telemetry(record: &TelemetryRecord) -> Rows {
    let mut rows = Rows::default();
    for (counter, c) in &record.counters {
        rows.counters.push(CounterRow {
            device: record.device.clone(),
            counter: counter.clone(),
            value: c.value(),
        });
    }
    for (key, i) in &record.incidents {
        rows.incidents.push(IncidentRow {
            device: record.device.clone(),
            key: key.clone(),
            kind: i.kind.clone(),
            subject: i.subject.clone(),
            started_ms: big(i.started),
            resolved_ms: i.resolved.map(big),
        });
    }
    rows
}

/// A reconciliation run's summary and its exceptions (everything but the matches, which the ledgers carry).
pub fn reconciliation(
    batch: &str,
    at_ms: u64,
    report: &popmesh_crdt::settlement::Reconciliation,
) -> BatchRow {
    let mut rows = Vec::new();
    let amount = |v: u64| Some(big(v));
    let line = |l: usize| i64::try_from(l).unwrap_or(i64::MAX);
    for u in &report.missing_at_processor {
        rows.push(ExceptionRow {
            outcome: "missing_at_processor".into(),
            token: u.token.clone(),
            line: 0,
            device: Some(u.device.clone()),
            amount_minor: amount(u.amount_minor),
            currency: Some(u.currency.clone()),
            processor_amount_minor: None,
            processor_currency: None,
            detail: None,
        });
    }
    for r in &report.missing_at_site {
        rows.push(ExceptionRow {
            outcome: "missing_at_site".into(),
            token: r.token.clone(),
            line: line(r.line),
            device: None,
            amount_minor: None,
            currency: None,
            processor_amount_minor: amount(r.amount_minor),
            processor_currency: Some(r.currency.clone()),
            detail: Some(r.status.clone()),
        });
    }
    for m in &report.amount_mismatches {
        rows.push(ExceptionRow {
            outcome: "amount_mismatch".into(),
            token: m.token.clone(),
            line: line(m.line),
            device: Some(m.device.clone()),
            amount_minor: amount(m.site_amount_minor),
            currency: Some(m.site_currency.clone()),
            processor_amount_minor: amount(m.processor_amount_minor),
            processor_currency: Some(m.processor_currency.clone()),
            detail: None,
        });
    }
    for d in &report.declined {
        rows.push(ExceptionRow {
            outcome: "declined".into(),
            token: d.token.clone(),
            line: line(d.line),
            device: Some(d.device.clone()),
            amount_minor: amount(d.amount_minor),
            currency: Some(d.currency.clone()),
            processor_amount_minor: None,
            processor_currency: None,
            detail: Some(d.status.clone()),
        });
    }
    for d in &report.duplicates {
        for l in &d.lines {
            rows.push(ExceptionRow {
                outcome: "duplicate".into(),
                token: d.token.clone(),
                line: line(*l),
                device: None,
                amount_minor: None,
                currency: None,
                processor_amount_minor: None,
                processor_currency: None,
                detail: None,
            });
        }
    }
    for r in &report.rejected {
        rows.push(ExceptionRow {
            outcome: "rejected".into(),
            token: r.token.clone(),
            line: 0,
            device: Some(r.device.clone()),
            amount_minor: amount(r.amount_minor),
            currency: Some(r.currency.clone()),
            processor_amount_minor: None,
            processor_currency: None,
            detail: Some(r.reason.clone()),
        });
    }
    // The processor's file may carry bytes PostgreSQL's text cannot (NUL): keep them visible, not fatal.
    let text = |t: &mut String| {
        if t.contains('\0') {
            *t = storable(t);
        }
    };
    for r in &mut rows {
        text(&mut r.token);
        for t in [
            &mut r.currency,
            &mut r.processor_currency,
            &mut r.detail,
            &mut r.device,
        ]
        .into_iter()
        .flatten()
        {
            text(t);
        }
    }
    rows.sort();
    rows.dedup();
    BatchRow {
        batch: storable(batch),
        reconciled_at_ms: big(at_ms),
        matched: i64::try_from(report.matched.len()).unwrap_or(i64::MAX),
        exceptions: i64::try_from(rows.len()).unwrap_or(i64::MAX),
        clean: report.clean(),
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use popmesh_crdt::settlement::{Reconciliation, SettlementRow};

    #[test]
    fn a_settlement_file_with_a_nul_byte_becomes_findings_postgres_can_store() {
        let report = Reconciliation {
            missing_at_site: vec![SettlementRow {
                line: 7,
                token: "ab\0cd".into(),
                amount_minor: 310,
                currency: "EUR".into(),
                status: "settled\0".into(),
            }],
            ..Reconciliation::default()
        };
        let batch = reconciliation("fri\0.csv", 1_000, &report);
        assert_eq!(batch.batch, "fri\u{FFFD}.csv");
        assert_eq!(batch.rows.len(), 1);
        let row = &batch.rows[0];
        assert_eq!(
            (row.outcome.as_str(), row.token.as_str(), row.line),
            ("missing_at_site", "ab\u{FFFD}cd", 7)
        );
        assert_eq!(row.detail.as_deref(), Some("settled\u{FFFD}"));
        assert_eq!(row.processor_amount_minor, Some(310));
        assert!(!batch.clean && batch.matched == 0 && batch.exceptions == 1);
    }
}
