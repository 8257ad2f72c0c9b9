//! A device's payment ledger for one show: the receipts it issued and the origin's reconciliation marks.
//!
//! One ledger per device per show keeps each document small and single-writer: only the issuing device writes
//! `receipts`; only the origin writes `reconciled`. Both maps exist from creation, so neither writer ever creates a
//! container concurrently with another.

use std::collections::BTreeMap;

use std::borrow::{Borrow, BorrowMut};

use automerge::{ActorId, Automerge};
use autosurgeon::{Hydrate, Reconcile};
use thiserror::Error;

use crate::doc::{Doc, DocError, Schema};
use crate::identity::{DeviceId, DeviceKey, SiteId, UnixMillis, hex_decode, hex_encode};
use crate::receipt::{PaymentRequest, Receipt, ReceiptError, ReceiptToken, RequestError};
use crate::risk::{RiskError, RiskLimits};

/// A per-device, per-show ledger document.
#[derive(Debug)]
pub struct Ledger;

impl Schema for Ledger {
    const KIND: &'static str = "popmesh.ledger";
    const VERSION: u64 = 1;
}

/// Receipts one ledger holds; a device that reaches it opens no more payments for the show.
pub const RECEIPTS_PER_LEDGER_MAX: usize = 50_000;

/// The ledger as stored.
#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate)]
pub struct LedgerRecord {
    pub site: String,
    pub show: String,
    pub device: String,
    /// Token -> receipt.
    pub receipts: BTreeMap<String, ReceiptRecord>,
    /// Token -> reconciliation mark written by the origin.
    pub reconciled: BTreeMap<String, Reconciled>,
}

/// A receipt as the document holds it: readable fields (kiosk pages read them) plus the signature over their
/// canonical encoding, so a tampered field fails verification.
#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate)]
pub struct ReceiptRecord {
    pub seq: u64,
    pub idempotency_key: String,
    pub amount_minor: u64,
    pub currency: String,
    pub issued_at: u64,
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate)]
pub struct Reconciled {
    pub at: u64,
    pub batch: String,
}

/// Why a payment was not taken.
#[derive(Debug, Error)]
pub enum PaymentError {
    #[error(transparent)]
    BadRequest(#[from] RequestError),
    #[error(transparent)]
    OverLimit(#[from] RiskError),
    #[error(
        "idempotency key '{key}' was already used for a different payment ({existing}); use a new key for a new payment"
    )]
    IdempotencyKeyReused { key: String, existing: ReceiptToken },
    #[error("this ledger holds {RECEIPTS_PER_LEDGER_MAX} receipts, the most one show's ledger may")]
    Full,
    #[error("this ledger belongs to device {ledger}, not {key}")]
    WrongDevice { ledger: String, key: String },
    #[error(transparent)]
    Doc(#[from] DocError),
}

/// Why a receipt could not be added to a ledger.
#[derive(Debug, Error)]
pub enum InsertError {
    #[error(transparent)]
    Invalid(#[from] ReceiptError),
    #[error("receipt is for device {receipt} and show '{show}', not this ledger's device {ledger}")]
    WrongLedger {
        receipt: String,
        show: String,
        ledger: String,
    },
    #[error("a different receipt with token {0} is already recorded")]
    Conflict(ReceiptToken),
    #[error(transparent)]
    Doc(#[from] DocError),
}

/// What inserting a receipt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    /// The identical receipt was already there: inserting twice is a no-op.
    AlreadyPresent,
}

/// A taken (or replayed) payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentOutcome {
    pub receipt: Receipt,
    /// True when the idempotency key had already been used for this same payment: nothing new was charged.
    pub replayed: bool,
}

/// The ledger with its receipts parsed.
#[derive(Debug, Clone)]
pub struct LedgerView {
    pub site: SiteId,
    pub show: String,
    pub device: DeviceId,
    pub receipts: Vec<Receipt>,
    /// Entries that could not be parsed back into receipts, with the reason.
    pub malformed: Vec<(String, ReceiptError)>,
    pub reconciled: BTreeMap<String, Reconciled>,
}

impl LedgerView {
    pub fn is_reconciled(&self, token: &ReceiptToken) -> bool {
        self.reconciled.contains_key(&token.to_string())
    }

    /// Total taken and not yet reconciled, in minor units.
    pub fn unreconciled_minor(&self) -> u64 {
        self.receipts
            .iter()
            .filter(|r| !self.is_reconciled(&r.token))
            .map(|r| r.amount_minor)
            .sum()
    }

    /// Unreconciled receipts older than the limits allow.
    pub fn stale<'a>(
        &'a self,
        limits: &'a RiskLimits,
        now: UnixMillis,
    ) -> impl Iterator<Item = &'a Receipt> {
        self.receipts
            .iter()
            .filter(move |r| !self.is_reconciled(&r.token) && limits.is_stale(r.issued_at, now))
    }
}

impl Doc<Ledger> {
    pub fn create_ledger(
        actor: ActorId,
        site: SiteId,
        show: &str,
        device: DeviceId,
    ) -> Result<Self, DocError> {
        Doc::create(
            actor,
            &LedgerRecord {
                site: site.to_hex(),
                show: show.to_owned(),
                device: device.to_hex(),
                receipts: BTreeMap::new(),
                reconciled: BTreeMap::new(),
            },
        )
    }
}

impl<D: Borrow<Automerge>> Doc<Ledger, D> {
    pub fn record(&self) -> Result<LedgerRecord, DocError> {
        self.read()
    }

    pub fn view(&self) -> Result<LedgerView, DocError> {
        let record = self.record()?;
        let bad_header = |field: &str| DocError::Missing(format!("valid {field} in ledger header"));
        let site = parse_site(&record.site).ok_or_else(|| bad_header("site"))?;
        let device = DeviceId::from_hex(&record.device).map_err(|_| bad_header("device"))?;
        let mut receipts = Vec::with_capacity(record.receipts.len());
        let mut malformed = Vec::new();
        for (token, entry) in &record.receipts {
            match to_receipt(site, &record.show, device, token, entry) {
                Ok(receipt) => receipts.push(receipt),
                Err(err) => malformed.push((token.clone(), err)),
            }
        }
        receipts.sort_by_key(|r| (r.seq, r.token));
        Ok(LedgerView {
            site,
            show: record.show,
            device,
            receipts,
            malformed,
            reconciled: record.reconciled,
        })
    }
}

impl<D: BorrowMut<Automerge>> Doc<Ledger, D> {
    /// Takes an offline payment: validates the request, replays an earlier identical request, checks the risk
    /// limits, then signs and records the receipt. `stored_elsewhere_minor` is what the device holds unreconciled
    /// in its other shows' ledgers. The caller persists the document before acknowledging the payment.
    pub fn take_payment(
        &mut self,
        key: &DeviceKey,
        limits: &RiskLimits,
        request: &PaymentRequest,
        stored_elsewhere_minor: u64,
        now: UnixMillis,
    ) -> Result<PaymentOutcome, PaymentError> {
        request.validate()?;
        let view = self.view()?;
        if view.device != key.public() {
            return Err(PaymentError::WrongDevice {
                ledger: view.device.to_hex(),
                key: key.public().to_hex(),
            });
        }
        let token = ReceiptToken::derive(
            view.site,
            &view.show,
            view.device,
            &request.idempotency_key,
            request.amount_minor,
            &request.currency,
        );
        if let Some(existing) = view.receipts.iter().find(|r| r.token == token) {
            return Ok(PaymentOutcome {
                receipt: existing.clone(),
                replayed: true,
            });
        }
        if let Some(other) = view
            .receipts
            .iter()
            .find(|r| r.idempotency_key == request.idempotency_key)
        {
            return Err(PaymentError::IdempotencyKeyReused {
                key: request.idempotency_key.clone(),
                existing: other.token,
            });
        }
        if view.receipts.len() >= RECEIPTS_PER_LEDGER_MAX {
            return Err(PaymentError::Full);
        }
        limits.check(
            view.unreconciled_minor()
                .saturating_add(stored_elsewhere_minor),
            request.amount_minor,
            &request.currency,
        )?;
        let seq = view.receipts.iter().map(|r| r.seq).max().unwrap_or(0) + 1;
        let receipt = Receipt::issue(key, view.site, &view.show, seq, request, now);
        self.write_at(
            &["receipts"],
            &receipt.token.to_string(),
            &to_record(&receipt),
        )?;
        Ok(PaymentOutcome {
            receipt,
            replayed: false,
        })
    }

    /// Records a receipt (for example one restored from a backup or replayed by a peer). The receipt must verify
    /// on its own and belong to this ledger; inserting the same receipt twice is a no-op.
    pub fn insert(&mut self, receipt: &Receipt) -> Result<Inserted, InsertError> {
        receipt.verify_signature()?;
        let record = self.record()?;
        if receipt.device.to_hex() != record.device || receipt.show != record.show {
            return Err(InsertError::WrongLedger {
                receipt: receipt.device.to_hex(),
                show: receipt.show.clone(),
                ledger: record.device,
            });
        }
        let key = receipt.token.to_string();
        let entry = to_record(receipt);
        match record.receipts.get(&key) {
            Some(existing) if *existing == entry => Ok(Inserted::AlreadyPresent),
            Some(_) => Err(InsertError::Conflict(receipt.token)),
            None => {
                self.write_at(&["receipts"], &key, &entry)?;
                Ok(Inserted::New)
            }
        }
    }

    /// The origin's mark that a receipt matched the processor's settlement batch. Marking twice is a no-op.
    pub fn mark_reconciled(
        &mut self,
        token: &ReceiptToken,
        batch: &str,
        at: UnixMillis,
    ) -> Result<(), DocError> {
        let key = token.to_string();
        if self.record()?.reconciled.contains_key(&key) {
            return Ok(());
        }
        self.write_at(
            &["reconciled"],
            &key,
            &Reconciled {
                at: at.0,
                batch: batch.to_owned(),
            },
        )
    }
}

fn to_record(receipt: &Receipt) -> ReceiptRecord {
    ReceiptRecord {
        seq: receipt.seq,
        idempotency_key: receipt.idempotency_key.clone(),
        amount_minor: receipt.amount_minor,
        currency: receipt.currency.clone(),
        issued_at: receipt.issued_at.0,
        signature: hex_encode(&receipt.signature),
    }
}

fn to_receipt(
    site: SiteId,
    show: &str,
    device: DeviceId,
    token: &str,
    entry: &ReceiptRecord,
) -> Result<Receipt, ReceiptError> {
    let token = ReceiptToken::parse(token).ok_or(ReceiptError::BadField("token"))?;
    let signature =
        hex_decode::<64>(&entry.signature).map_err(|_| ReceiptError::BadField("signature"))?;
    Ok(Receipt {
        site,
        show: show.to_owned(),
        device,
        seq: entry.seq,
        idempotency_key: entry.idempotency_key.clone(),
        amount_minor: entry.amount_minor,
        currency: entry.currency.clone(),
        issued_at: UnixMillis(entry.issued_at),
        token,
        signature,
    })
}

fn parse_site(hex: &str) -> Option<SiteId> {
    hex_decode(hex).ok().map(SiteId)
}
