//! The origin's reconciliation of a show's receipts against the payment processor's settlement batch.
//!
//! The processor's batch is a CSV file with (at least) the columns `token`, `amount`, `currency` and `status`, in
//! any order, with a header line. Amounts are decimal in the currency's major unit (`12.50` EUR), or, under a column
//! named `amount_minor`, whole minor units (`1250`). A row whose status is `settled`, `captured` or `paid` is money
//! collected; any other status (`declined`, `failed`, `refunded`, ...) is money not collected.
//!
//! [`reconcile`] sorts every receipt and every row into exactly one outcome: matched, missing at the processor,
//! missing at the site, amount mismatch, declined, or rejected (a receipt that does not verify, such as a forged
//! one). Tokens that appear on more than one row are listed as duplicates as well. The result depends only on its
//! inputs and is sorted, so running it twice gives the same report; the only writes it asks for are
//! reconciliation marks on matched receipts not yet marked, so a second run asks for none.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use thiserror::Error;

use crate::directory::DirectoryView;
use crate::enrollment::RevocationTarget;
use crate::ledger::LedgerView;

/// Rows one settlement file may hold.
pub const ROWS_MAX: usize = 1_000_000;

/// Bytes one CSV field may hold.
pub const CSV_FIELD_BYTES_MAX: usize = 1024;

/// One row of the processor's batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SettlementRow {
    /// The line of the file (the header is line 1).
    pub line: usize,
    pub token: String,
    pub amount_minor: u64,
    pub currency: String,
    pub status: String,
}

impl SettlementRow {
    /// Whether the row is money the processor collected.
    pub fn settled(&self) -> bool {
        matches!(self.status.as_str(), "settled" | "captured" | "paid")
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SettlementError {
    #[error(
        "line 1: the header must name the columns token, amount (or amount_minor), currency and status; missing: {0}"
    )]
    MissingColumn(String),
    #[error("line {line}, column {column}: {reason}")]
    BadField {
        line: usize,
        column: String,
        reason: String,
    },
    #[error("line {line}: {reason}")]
    BadLine { line: usize, reason: String },
    #[error("the file has more than {ROWS_MAX} rows")]
    TooManyRows,
    #[error("the file is empty: no header line")]
    Empty,
}

/// Digits after the decimal point in an ISO 4217 currency's major unit.
pub fn minor_digits(currency: &str) -> u32 {
    match currency {
        "JPY" | "KRW" | "VND" | "CLP" | "ISK" | "UGX" | "XAF" | "XOF" | "PYG" | "RWF" => 0,
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "IQD" | "LYD" => 3,
        _ => 2,
    }
}

/// Splits one CSV line (RFC 4180 quoting: `"a, b"`, `""` for a quote). Lines do not span newlines here.
fn split_line(line: &str, number: usize) -> Result<Vec<String>, SettlementError> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            (false, ',') => {
                fields.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            (false, c) => field.push(c),
        }
        if field.len() > CSV_FIELD_BYTES_MAX {
            return Err(SettlementError::BadLine {
                line: number,
                reason: format!("a field is longer than {CSV_FIELD_BYTES_MAX} bytes"),
            });
        }
    }
    if quoted {
        return Err(SettlementError::BadLine {
            line: number,
            reason: "a quoted field is not closed".into(),
        });
    }
    fields.push(field);
    Ok(fields)
}

/// Parses a decimal amount in the major unit into minor units, refusing more digits than the currency has.
fn parse_amount(text: &str, digits: u32) -> Result<u64, String> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("{text:?} is not a positive decimal amount"));
    }
    if frac.len() > digits as usize {
        return Err(format!("{text:?} has more than {digits} decimals"));
    }
    let scale = 10u64.pow(digits);
    let whole: u64 = whole
        .parse()
        .map_err(|_| format!("{text:?} is too large"))?;
    let frac_value: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<u64>()
            .map_err(|_| format!("{text:?} is not a number"))?
            * 10u64.pow(digits - frac.len() as u32)
    };
    whole
        .checked_mul(scale)
        .and_then(|w| w.checked_add(frac_value))
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses the processor's settlement CSV. Every error names the line and the column.
pub fn parse_csv(text: &str) -> Result<Vec<SettlementRow>, SettlementError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')));
    let (_, header) = lines.next().ok_or(SettlementError::Empty)?;
    let header: Vec<String> = split_line(header.trim_start_matches('\u{feff}'), 1)?
        .into_iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let col = |name: &str| header.iter().position(|h| h == name);
    let (token, currency, status) = (col("token"), col("currency"), col("status"));
    let (amount, amount_minor) = (col("amount"), col("amount_minor"));
    let mut missing = Vec::new();
    for (name, found) in [("token", token), ("currency", currency), ("status", status)] {
        if found.is_none() {
            missing.push(name);
        }
    }
    if amount.is_none() && amount_minor.is_none() {
        missing.push("amount");
    }
    let (Some(token), Some(currency), Some(status)) = (token, currency, status) else {
        return Err(SettlementError::MissingColumn(missing.join(", ")));
    };
    if !missing.is_empty() {
        return Err(SettlementError::MissingColumn(missing.join(", ")));
    }
    let mut rows = Vec::new();
    for (number, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        if rows.len() == ROWS_MAX {
            return Err(SettlementError::TooManyRows);
        }
        let fields = split_line(line, number)?;
        let field = |i: usize, name: &str| -> Result<String, SettlementError> {
            fields
                .get(i)
                .map(|f| f.trim().to_owned())
                .filter(|f| !f.is_empty())
                .ok_or_else(|| SettlementError::BadField {
                    line: number,
                    column: name.to_owned(),
                    reason: "empty".into(),
                })
        };
        let bad = |column: &str, reason: String| SettlementError::BadField {
            line: number,
            column: column.to_owned(),
            reason,
        };
        let currency_text = field(currency, "currency")?.to_ascii_uppercase();
        if currency_text.len() != 3 || !currency_text.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(bad(
                "currency",
                format!("{currency_text:?} is not an ISO 4217 code"),
            ));
        }
        let amount_minor = match (amount_minor, amount) {
            (Some(i), _) => {
                let text = field(i, "amount_minor")?;
                text.parse::<u64>()
                    .map_err(|_| bad("amount_minor", format!("{text:?} is not a whole number")))?
            }
            (None, Some(i)) => {
                let text = field(i, "amount")?;
                parse_amount(&text, minor_digits(&currency_text)).map_err(|r| bad("amount", r))?
            }
            (None, None) => unreachable!("checked with the header"),
        };
        rows.push(SettlementRow {
            line: number,
            token: field(token, "token")?,
            amount_minor,
            currency: currency_text,
            status: field(status, "status")?.to_ascii_lowercase(),
        });
    }
    Ok(rows)
}

/// A receipt the site holds, as the origin sees it after verifying it against the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteReceipt {
    pub token: String,
    pub show: String,
    /// The issuing device (hex).
    pub device: String,
    pub amount_minor: u64,
    pub currency: String,
    /// `Err(reason)` when the receipt does not verify (forged, tampered, issued by a revoked device).
    pub verified: Result<(), String>,
    /// Already marked reconciled by an earlier run.
    pub reconciled: bool,
    /// The issuing device has been revoked since (its receipts before the revocation took effect still verify).
    pub issuer_revoked: bool,
}

/// The receipts of one ledger page as the origin reconciles them: each verified against `directory`, and each
/// entry that does not parse as a receipt that does not verify (amount 0, never matched).
pub fn site_receipts(page: &LedgerView, directory: &DirectoryView) -> Vec<SiteReceipt> {
    let mut out: Vec<SiteReceipt> = page
        .receipts
        .iter()
        .map(|r| SiteReceipt {
            token: r.token.to_string(),
            show: r.show.clone(),
            device: r.device.to_hex(),
            amount_minor: r.amount_minor,
            currency: r.currency.clone(),
            verified: r.verify(directory).map_err(|e| e.to_string()),
            reconciled: page.is_reconciled(&r.token),
            issuer_revoked: directory
                .revocation_of(RevocationTarget::Device(r.device))
                .is_some(),
        })
        .collect();
    out.extend(page.malformed.iter().map(|(token, e)| SiteReceipt {
        token: token.clone(),
        show: page.show.clone(),
        device: page.device.to_hex(),
        amount_minor: 0,
        currency: String::new(),
        verified: Err(format!("malformed receipt: {e}")),
        reconciled: false,
        issuer_revoked: false,
    }));
    out
}

/// One revoked device's receipts in a run: those issued before its revocation took effect (verified and
/// reconciled like any other) and those after it (refused; also listed in `rejected`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RevokedIssuer {
    pub device: String,
    pub before_revocation: usize,
    pub after_revocation: usize,
}

/// A receipt and the row it met.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Matched {
    pub token: String,
    pub device: String,
    pub show: String,
    pub amount_minor: u64,
    pub currency: String,
    pub line: usize,
    /// Marked by an earlier run already.
    pub already_marked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unsettled {
    pub token: String,
    pub device: String,
    pub show: String,
    pub amount_minor: u64,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub token: String,
    pub device: String,
    pub site_amount_minor: u64,
    pub site_currency: String,
    pub processor_amount_minor: u64,
    pub processor_currency: String,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Declined {
    pub token: String,
    pub device: String,
    pub amount_minor: u64,
    pub currency: String,
    pub status: String,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Duplicate {
    pub token: String,
    /// Every line the token appears on.
    pub lines: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    pub token: String,
    pub device: String,
    pub amount_minor: u64,
    pub currency: String,
    pub reason: String,
}

/// Money by currency, minor units.
pub type Totals = BTreeMap<String, u64>;

/// The outcome of one reconciliation run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reconciliation {
    pub matched: Vec<Matched>,
    pub missing_at_processor: Vec<Unsettled>,
    pub missing_at_site: Vec<SettlementRow>,
    pub amount_mismatches: Vec<Mismatch>,
    pub declined: Vec<Declined>,
    pub duplicates: Vec<Duplicate>,
    pub rejected: Vec<Rejected>,
    /// Devices revoked since they took payments: their receipts before and after the revocation, apart.
    pub revoked_issuers: Vec<RevokedIssuer>,
    /// What verified receipts add up to, and what the processor settled.
    pub site_totals: Totals,
    pub settled_totals: Totals,
}

impl Reconciliation {
    /// Matched receipts no earlier run has marked: the only writes this run asks for.
    pub fn to_mark(&self) -> impl Iterator<Item = &Matched> {
        self.matched.iter().filter(|m| !m.already_marked)
    }

    /// Whether the batch and the site agree on everything.
    pub fn clean(&self) -> bool {
        self.missing_at_processor.is_empty()
            && self.missing_at_site.is_empty()
            && self.amount_mismatches.is_empty()
            && self.declined.is_empty()
            && self.duplicates.is_empty()
            && self.rejected.is_empty()
    }
}

/// Sorts every receipt and every row of the batch into its outcome.
pub fn reconcile(receipts: &[SiteReceipt], rows: &[SettlementRow]) -> Reconciliation {
    let mut out = Reconciliation::default();
    let mut by_token: BTreeMap<&str, Vec<&SettlementRow>> = BTreeMap::new();
    for row in rows {
        by_token.entry(row.token.as_str()).or_default().push(row);
        if row.settled() {
            {
                let slot = out.settled_totals.entry(row.currency.clone()).or_default();
                *slot = slot.saturating_add(row.amount_minor);
            }
        }
    }
    for (token, list) in &by_token {
        if list.len() > 1 {
            out.duplicates.push(Duplicate {
                token: (*token).to_owned(),
                lines: list.iter().map(|r| r.line).collect(),
            });
        }
    }
    let mut on_site: BTreeSet<&str> = BTreeSet::new();
    let mut revoked: BTreeMap<&str, RevokedIssuer> = BTreeMap::new();
    for r in receipts.iter().filter(|r| r.issuer_revoked) {
        let entry = revoked
            .entry(r.device.as_str())
            .or_insert_with(|| RevokedIssuer {
                device: r.device.clone(),
                ..RevokedIssuer::default()
            });
        match &r.verified {
            Ok(()) => entry.before_revocation += 1,
            Err(reason) if reason.contains("after its revocation") => entry.after_revocation += 1,
            // Forged or tampered: rejected for that, and listed in `rejected` with the reason.
            Err(_) => {}
        }
    }
    out.revoked_issuers = revoked.into_values().collect();
    for r in receipts {
        if let Err(reason) = &r.verified {
            out.rejected.push(Rejected {
                token: r.token.clone(),
                device: r.device.clone(),
                amount_minor: r.amount_minor,
                currency: r.currency.clone(),
                reason: reason.clone(),
            });
            continue;
        }
        on_site.insert(r.token.as_str());
        {
            let slot = out.site_totals.entry(r.currency.clone()).or_default();
            *slot = slot.saturating_add(r.amount_minor);
        }
        let list = by_token
            .get(r.token.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let settled: Vec<&&SettlementRow> = list.iter().filter(|row| row.settled()).collect();
        if let Some(row) = settled
            .iter()
            .find(|row| row.amount_minor == r.amount_minor && row.currency == r.currency)
        {
            out.matched.push(Matched {
                token: r.token.clone(),
                device: r.device.clone(),
                show: r.show.clone(),
                amount_minor: r.amount_minor,
                currency: r.currency.clone(),
                line: row.line,
                already_marked: r.reconciled,
            });
        } else if let Some(row) = settled.first() {
            out.amount_mismatches.push(Mismatch {
                token: r.token.clone(),
                device: r.device.clone(),
                site_amount_minor: r.amount_minor,
                site_currency: r.currency.clone(),
                processor_amount_minor: row.amount_minor,
                processor_currency: row.currency.clone(),
                line: row.line,
            });
        } else if let Some(row) = list.first() {
            out.declined.push(Declined {
                token: r.token.clone(),
                device: r.device.clone(),
                amount_minor: r.amount_minor,
                currency: r.currency.clone(),
                status: row.status.clone(),
                line: row.line,
            });
        } else {
            out.missing_at_processor.push(Unsettled {
                token: r.token.clone(),
                device: r.device.clone(),
                show: r.show.clone(),
                amount_minor: r.amount_minor,
                currency: r.currency.clone(),
            });
        }
    }
    for row in rows {
        if row.settled() && !on_site.contains(row.token.as_str()) {
            out.missing_at_site.push(row.clone());
        }
    }
    out.matched.sort_by(|a, b| a.token.cmp(&b.token));
    out.missing_at_processor
        .sort_by(|a, b| a.token.cmp(&b.token));
    out.amount_mismatches.sort_by(|a, b| a.token.cmp(&b.token));
    out.declined.sort_by(|a, b| a.token.cmp(&b.token));
    out.rejected.sort_by(|a, b| a.token.cmp(&b.token));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(token: &str, amount_minor: u64) -> SiteReceipt {
        SiteReceipt {
            token: token.into(),
            show: "fri".into(),
            device: "pos".into(),
            amount_minor,
            currency: "EUR".into(),
            verified: Ok(()),
            reconciled: false,
            issuer_revoked: false,
        }
    }

    const BATCH: &str = "\u{feff}Token,Amount,Currency,Status,Reference\r
t-match,12.50,EUR,settled,\"Fri, door\"\r
t-short,9.00,eur,captured,x\r
t-dup,5,EUR,settled,a\r
t-dup,5.00,EUR,settled,b\r
t-declined,20.00,EUR,declined,c\r
t-stranger,3.10,EUR,settled,d\r
t-forged,7.00,EUR,settled,e\r
\r
";

    #[test]
    fn a_batch_with_every_kind_of_mismatch_sorts_each_receipt_and_row_once() {
        let rows = parse_csv(BATCH).expect("parses");
        assert_eq!(rows.len(), 7);
        assert_eq!(rows[0].amount_minor, 1250);
        assert_eq!(rows[1].currency, "EUR");
        let mut forged = receipt("t-forged", 700);
        forged.verified = Err("signature does not verify".into());
        let receipts = vec![
            receipt("t-match", 1250),
            receipt("t-short", 990),
            receipt("t-dup", 500),
            receipt("t-declined", 2000),
            receipt("t-unsent", 400),
            forged,
        ];
        let r = reconcile(&receipts, &rows);
        let tokens = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            r.matched
                .iter()
                .map(|m| m.token.clone())
                .collect::<Vec<_>>(),
            tokens(vec!["t-dup", "t-match"])
        );
        assert_eq!(r.amount_mismatches.len(), 1);
        assert_eq!(r.amount_mismatches[0].processor_amount_minor, 900);
        assert_eq!(r.declined[0].status, "declined");
        assert_eq!(r.missing_at_processor[0].token, "t-unsent");
        assert_eq!(
            r.missing_at_site
                .iter()
                .map(|m| m.token.clone())
                .collect::<Vec<_>>(),
            tokens(vec!["t-stranger", "t-forged"]),
            "a forged receipt never counts as the site's money"
        );
        assert_eq!(
            r.duplicates,
            vec![Duplicate {
                token: "t-dup".into(),
                lines: vec![4, 5]
            }]
        );
        assert_eq!(r.rejected[0].reason, "signature does not verify");
        assert_eq!(r.to_mark().count(), 2);
        assert!(!r.clean());
        assert_eq!(r.site_totals["EUR"], 1250 + 990 + 500 + 2000 + 400);
    }

    #[test]
    fn running_it_again_after_the_marks_asks_for_no_writes_and_reports_the_same() {
        let rows =
            parse_csv("token,amount_minor,currency,status\nt1,100,EUR,settled\n").expect("parses");
        let mut receipts = vec![receipt("t1", 100)];
        let first = reconcile(&receipts, &rows);
        assert_eq!(first.to_mark().count(), 1);
        assert!(first.clean());
        receipts[0].reconciled = true;
        let second = reconcile(&receipts, &rows);
        assert_eq!(second.to_mark().count(), 0);
        assert_eq!(second.matched.len(), first.matched.len());
        assert!(second.matched[0].already_marked);
    }

    #[test]
    fn a_malformed_batch_names_the_line_and_the_column() {
        assert_eq!(
            parse_csv("token,currency,status\n"),
            Err(SettlementError::MissingColumn("amount".into()))
        );
        let err = parse_csv("token,amount,currency,status\nt1,12.5x,EUR,settled\n")
            .expect_err("bad amount");
        assert!(
            matches!(&err, SettlementError::BadField { line: 2, column, .. } if column == "amount"),
            "{err}"
        );
        let err = parse_csv("token,amount,currency,status\nt1,1.234,EUR,settled\n")
            .expect_err("decimals");
        assert!(err.to_string().contains("more than 2 decimals"), "{err}");
        assert_eq!(
            parse_csv("token,amount,currency,status\nt1,1,JPY,settled\n").expect("yen")[0]
                .amount_minor,
            1
        );
        let err =
            parse_csv("token,amount,currency,status\n,1,EUR,settled\n").expect_err("empty token");
        assert!(err.to_string().contains("line 2, column token"), "{err}");
        let err =
            parse_csv("token,amount,currency,status\n\"t1,1,EUR,settled\n").expect_err("quote");
        assert!(err.to_string().contains("not closed"), "{err}");
        assert_eq!(parse_csv(""), Err(SettlementError::Empty));
    }
}
