//! A device's payment ledger for one show: the receipts it issued and the origin's reconciliation marks.
//!
//! One ledger per device per show keeps each document small and single-writer: only the issuing device writes
//! `receipts` (with its `keys` index and its `issued_minor` counter); only the origin writes `reconciled`. Every
//! container exists from creation, so no two writers ever create one concurrently.
//!
//! Taking a payment reads what it needs by key (the token, the idempotency key, the counter), not the whole
//! ledger, so its cost does not grow with the show: the 20,000th payment costs what the first did.

use std::collections::BTreeMap;

use std::borrow::{Borrow, BorrowMut};

use automerge::transaction::Transactable as _;
use automerge::{ActorId, Automerge, ReadDoc};
use autosurgeon::{Hydrate, Reconcile};
use thiserror::Error;

use crate::doc::{Doc, DocError, Schema, object_at};
use crate::identity::{DeviceId, DeviceKey, SiteId, UnixMillis, hex_decode, hex_encode};
use crate::receipt::{PaymentRequest, Receipt, ReceiptError, ReceiptToken, RequestError};
use crate::risk::{RiskError, RiskLimits};

/// A per-device, per-show ledger document.
#[derive(Debug)]
pub struct Ledger;

impl Schema for Ledger {
    const KIND: &'static str = "popmesh.ledger";
    /// 2: the `keys` index and the `issued_minor` counter.
    const VERSION: u64 = 2;
}

/// What a ledger page needs to know of the same device's earlier pages for the show, so that a retry of a payment
/// recorded on an earlier page replays it, a reused idempotency key is caught, sequence numbers continue, and the
/// stored limit counts everything. The node builds it from the full pages (which never change again but for the
/// origin's reconciliation marks, hence `unreconciled_minor` is refreshed by the caller).
#[derive(Debug, Clone, Default)]
pub struct EarlierPages {
    /// Receipts on earlier pages, by idempotency key.
    pub by_key: BTreeMap<String, Receipt>,
    /// The buyer named with each of those payments, by idempotency key (only where one was named).
    pub attendees_by_key: BTreeMap<String, String>,
    /// Unreconciled on earlier pages, minor units.
    pub unreconciled_minor: u64,
    /// Receipts a page holds before the next one starts (0: no page limit).
    pub page_capacity: usize,
}

impl EarlierPages {
    /// Adds a full page.
    pub fn absorb(&mut self, page: &LedgerView) {
        for r in &page.receipts {
            self.by_key.insert(r.idempotency_key.clone(), r.clone());
            if let Some(who) = page.attendees.get(&r.token.to_string()) {
                self.attendees_by_key
                    .insert(r.idempotency_key.clone(), who.clone());
            }
        }
    }
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
    /// Token -> the buyer's pseudonymous id, for payments the counter could attribute (outside the signed
    /// receipt: it is analytics, not money).
    #[autosurgeon(missing = "BTreeMap::new")]
    pub attendees: BTreeMap<String, String>,
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
        "idempotency key '{key}' was already used for a different payment ({existing}): {differs} differs; use a new key for a new payment"
    )]
    IdempotencyKeyReused {
        key: String,
        existing: ReceiptToken,
        /// The request fields that differ from the payment the key was first used for (`amount_minor`,
        /// `currency`, `attendee`; another show is refused by the node, which indexes keys across shows).
        differs: String,
    },
    #[error("this ledger holds {RECEIPTS_PER_LEDGER_MAX} receipts, the most one show's ledger may")]
    Full,
    /// This page holds as many receipts as a page may: the caller starts the next page and asks again.
    #[error("this ledger page is full; the next page takes further payments")]
    PageFull,
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
    /// Token -> buyer pseudonym, where the payment named one.
    pub attendees: BTreeMap<String, String>,
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
            .fold(0u64, |sum, r| sum.saturating_add(r.amount_minor))
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

/// Idempotency key -> token, written with each receipt.
const KEYS: &str = "keys";
/// Sum of every receipt's amount, in minor units: an Automerge counter only the issuing device increments.
const ISSUED: &str = "issued_minor";

impl Doc<Ledger> {
    pub fn create_ledger(
        actor: ActorId,
        site: SiteId,
        show: &str,
        device: DeviceId,
    ) -> Result<Self, DocError> {
        let mut doc = Doc::create(
            actor,
            &LedgerRecord {
                site: site.to_hex(),
                show: show.to_owned(),
                device: device.to_hex(),
                receipts: BTreeMap::new(),
                reconciled: BTreeMap::new(),
                attendees: BTreeMap::new(),
            },
        )?;
        doc.transact(|tx| {
            tx.put_object(automerge::ROOT, KEYS, automerge::ObjType::Map)?;
            tx.put(automerge::ROOT, ISSUED, automerge::ScalarValue::counter(0))?;
            Ok(())
        })?;
        Ok(doc)
    }
}

/// The ledger's header: whose receipts, for which show.
struct Header {
    site: SiteId,
    show: String,
    device: DeviceId,
}

impl<D: Borrow<Automerge>> Doc<Ledger, D> {
    pub fn record(&self) -> Result<LedgerRecord, DocError> {
        self.read()
    }

    fn header(&self) -> Result<Header, DocError> {
        let am = self.automerge();
        let field = |name: &str| -> Result<String, DocError> {
            let value: Option<String> = autosurgeon::hydrate_prop(am, automerge::ROOT, name)?;
            value.ok_or_else(|| DocError::Missing(format!("ledger {name}")))
        };
        let bad = |name: &str| DocError::Missing(format!("valid {name} in ledger header"));
        Ok(Header {
            site: parse_site(&field("site")?).ok_or_else(|| bad("site"))?,
            show: field("show")?,
            device: DeviceId::from_hex(&field("device")?).map_err(|_| bad("device"))?,
        })
    }

    /// What this ledger holds unreconciled, in minor units, read from the issued counter and the reconciliation
    /// marks (not from every receipt).
    pub fn unreconciled_minor(&self) -> Result<u64, DocError> {
        unreconciled(self.automerge())
    }

    /// How many receipts this ledger (page) holds, without reading them.
    pub fn receipt_count(&self) -> Result<usize, DocError> {
        let am = self.automerge();
        Ok(am.length(object_at(am, &["receipts"])?))
    }

    /// The ledger with its receipts parsed. Read entry by entry: an entry that does not read (a hostile or broken
    /// writer put another type there) is listed in `malformed` with the reason, and never hides the rest of the
    /// page from verification and reconciliation.
    pub fn view(&self) -> Result<LedgerView, DocError> {
        let header = self.header()?;
        let am = self.automerge();
        let receipts_obj = object_at(am, &["receipts"])?;
        let mut receipts = Vec::new();
        let mut malformed = Vec::new();
        for token in am.keys(&receipts_obj) {
            let entry: Result<ReceiptRecord, _> =
                autosurgeon::hydrate_prop(am, &receipts_obj, token.as_str());
            match entry {
                Ok(entry) => {
                    match to_receipt(header.site, &header.show, header.device, &token, &entry) {
                        Ok(receipt) => receipts.push(receipt),
                        Err(err) => malformed.push((token, err)),
                    }
                }
                Err(_) => malformed.push((token, ReceiptError::BadField("entry"))),
            }
        }
        receipts.sort_by_key(|r| (r.seq, r.token));
        let mut reconciled = BTreeMap::new();
        if let Ok(obj) = object_at(am, &["reconciled"]) {
            for token in am.keys(&obj) {
                if let Ok(mark) =
                    autosurgeon::hydrate_prop::<_, Reconciled, _, _>(am, &obj, token.as_str())
                {
                    reconciled.insert(token, mark);
                }
            }
        }
        let mut attendees = BTreeMap::new();
        if let Ok(Some((automerge::Value::Object(automerge::ObjType::Map), obj))) =
            ReadDoc::get(am, automerge::ROOT, "attendees")
        {
            for token in am.keys(&obj) {
                if let Ok(who) =
                    autosurgeon::hydrate_prop::<_, String, _, _>(am, &obj, token.as_str())
                {
                    attendees.insert(token, who);
                }
            }
        }
        Ok(LedgerView {
            site: header.site,
            show: header.show,
            device: header.device,
            receipts,
            malformed,
            reconciled,
            attendees,
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
        self.take_payments(
            key,
            limits,
            std::slice::from_ref(request),
            stored_elsewhere_minor,
            now,
        )?
        .pop()
        .unwrap_or(Err(PaymentError::Full))
    }

    /// Takes several payments as one Automerge change: what the node does with requests that arrive together,
    /// so a burst costs one change, one sync message and one fsync instead of one each. Each request is decided
    /// as [`Doc::take_payment`] would, in order, seeing the ones before it; a refused request writes nothing and
    /// does not affect the others. The outer error is for the document itself being unreadable.
    pub fn take_payments(
        &mut self,
        key: &DeviceKey,
        limits: &RiskLimits,
        requests: &[PaymentRequest],
        stored_elsewhere_minor: u64,
        now: UnixMillis,
    ) -> Result<Vec<Result<PaymentOutcome, PaymentError>>, DocError> {
        let single = EarlierPages::default();
        self.take_payments_paged(key, limits, requests, &single, stored_elsewhere_minor, now)
    }

    /// [`Doc::take_payments`] on one page of a paged ledger: `earlier` describes the pages before this one. When
    /// the page fills, the remaining requests come back as [`PaymentError::PageFull`].
    pub fn take_payments_paged(
        &mut self,
        key: &DeviceKey,
        limits: &RiskLimits,
        requests: &[PaymentRequest],
        earlier: &EarlierPages,
        stored_elsewhere_minor: u64,
        now: UnixMillis,
    ) -> Result<Vec<Result<PaymentOutcome, PaymentError>>, DocError> {
        let header = self.header()?;
        self.transact(|tx| {
            let receipts = object_at(tx, &["receipts"])?;
            let keys = object_at(tx, &[KEYS])?;
            let mut outcomes = Vec::with_capacity(requests.len());
            // What this page holds, read once and carried through the batch (only this batch writes the page
            // meanwhile); the issued counter is raised once, by the batch's sum.
            let mut held = Held {
                before: None,
                elsewhere: stored_elsewhere_minor,
                taken: 0,
                on_page: tx.length(&receipts),
            };
            for request in requests {
                let page = Page {
                    header: &header,
                    receipts: &receipts,
                    keys: &keys,
                    earlier,
                };
                let outcome = take_one(tx, &page, key, limits, request, &mut held, now);
                match outcome {
                    Err(PaymentError::Doc(e)) => return Err(e),
                    other => outcomes.push(other),
                }
            }
            count_issued(tx, held.taken)?;
            Ok(outcomes)
        })
    }

    /// Writes a receipt, its idempotency key and its amount as one change.
    fn record_receipt(&mut self, receipt: &Receipt) -> Result<(), DocError> {
        self.transact(|tx| {
            let receipts = object_at(tx, &["receipts"])?;
            let keys = object_at(tx, &[KEYS])?;
            write_receipt(tx, &receipts, &keys, receipt)?;
            count_issued(tx, receipt.amount_minor)
        })
    }

    /// Records a receipt (for example one restored from a backup or replayed by a peer). The receipt must verify
    /// on its own and belong to this ledger; inserting the same receipt twice is a no-op.
    pub fn insert(&mut self, receipt: &Receipt) -> Result<Inserted, InsertError> {
        receipt.verify_signature()?;
        let header = self.header()?;
        if receipt.device != header.device || receipt.show != header.show {
            return Err(InsertError::WrongLedger {
                receipt: receipt.device.to_hex(),
                show: receipt.show.clone(),
                ledger: header.device.to_hex(),
            });
        }
        let key = receipt.token.to_string();
        let entry = to_record(receipt);
        let am = self.automerge();
        let receipts = object_at(am, &["receipts"])?;
        let existing: Option<ReceiptRecord> = get_opt(am, &receipts, key.as_str())?;
        match existing {
            Some(existing) if existing == entry => Ok(Inserted::AlreadyPresent),
            Some(_) => Err(InsertError::Conflict(receipt.token)),
            None => {
                let keys = object_at(am, &[KEYS])?;
                let used: Option<String> = get_opt(am, &keys, receipt.idempotency_key.as_str())?;
                if used.is_some() {
                    return Err(InsertError::Conflict(receipt.token));
                }
                self.record_receipt(receipt)?;
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

/// The page a payment is decided on: its header, its containers, and what the pages before it hold.
struct Page<'a> {
    header: &'a Header,
    receipts: &'a automerge::ObjId,
    keys: &'a automerge::ObjId,
    earlier: &'a EarlierPages,
}

/// What a batch carries from one payment to the next: this page's unreconciled amount before the batch (read by
/// the first payment that reaches the limit check, so replays and refusals before it never read it), what the
/// device holds elsewhere (other shows), what the batch has taken, and how many receipts the page holds.
struct Held {
    before: Option<u64>,
    elsewhere: u64,
    taken: u64,
    on_page: usize,
}

/// One payment inside a transaction: checks in the order a client would want to hear about them, then writes the
/// receipt, its idempotency key and its amount. Nothing is written unless every check passed.
fn take_one(
    tx: &mut automerge::transaction::Transaction<'_>,
    page: &Page<'_>,
    key: &DeviceKey,
    limits: &RiskLimits,
    request: &PaymentRequest,
    held: &mut Held,
    now: UnixMillis,
) -> Result<PaymentOutcome, PaymentError> {
    request.validate()?;
    let header = page.header;
    if header.device != key.public() {
        return Err(PaymentError::WrongDevice {
            ledger: header.device.to_hex(),
            key: key.public().to_hex(),
        });
    }
    let token = ReceiptToken::derive(
        header.site,
        &header.show,
        header.device,
        &request.idempotency_key,
        request.amount_minor,
        &request.currency,
    );
    // The same key on an earlier page: a replay of that payment, or a reuse for another one.
    if let Some(before) = page.earlier.by_key.get(&request.idempotency_key) {
        let attendee = page.earlier.attendees_by_key.get(&request.idempotency_key);
        return match differing(request, before, attendee.map(String::as_str)) {
            None => Ok(PaymentOutcome {
                receipt: before.clone(),
                replayed: true,
            }),
            Some(differs) => Err(PaymentError::IdempotencyKeyReused {
                key: request.idempotency_key.clone(),
                existing: before.token,
                differs,
            }),
        };
    }
    let used: Option<String> = get_opt(tx, page.keys, request.idempotency_key.as_str())?;
    if let Some(other) = used {
        // The key is on this page: the same payment (a retry) or another one.
        let entry: Option<ReceiptRecord> = get_opt(tx, page.receipts, &other)?;
        let before = entry
            .and_then(|e| to_receipt(header.site, &header.show, header.device, &other, &e).ok())
            .ok_or_else(|| DocError::Missing(format!("a readable receipt under {other}")))?;
        let attendee = attendee_of(tx, &other)?;
        return match differing(request, &before, attendee.as_deref()) {
            None => Ok(PaymentOutcome {
                receipt: before,
                replayed: true,
            }),
            Some(differs) => Err(PaymentError::IdempotencyKeyReused {
                key: request.idempotency_key.clone(),
                existing: before.token,
                differs,
            }),
        };
    }
    let token_key = token.to_string();
    let on_page = held.on_page;
    let total = page.earlier.by_key.len() + on_page;
    if total >= RECEIPTS_PER_LEDGER_MAX {
        return Err(PaymentError::Full);
    }
    if page.earlier.page_capacity > 0 && on_page >= page.earlier.page_capacity {
        return Err(PaymentError::PageFull);
    }
    // Held amounts past u64 read as u64::MAX, which the limit's checked sum refuses with any amount (at least 1).
    let before = match held.before {
        Some(before) => before,
        None => *held.before.insert(unreconciled(tx)?),
    };
    let stored = before
        .checked_add(held.taken)
        .and_then(|s| s.checked_add(page.earlier.unreconciled_minor))
        .and_then(|s| s.checked_add(held.elsewhere))
        .unwrap_or(u64::MAX);
    limits.check(stored, request.amount_minor, &request.currency)?;
    let receipt = Receipt::issue(
        key,
        header.site,
        &header.show,
        total as u64 + 1,
        request,
        now,
    );
    write_receipt(tx, page.receipts, page.keys, &receipt)?;
    // Within the limit just checked, so no overflow (the limit is a u64 sum that passed).
    held.taken = held.taken.saturating_add(request.amount_minor);
    held.on_page += 1;
    if let Some(attendee) = &request.attendee {
        link_attendee(tx, &token_key, attendee)?;
    }
    Ok(PaymentOutcome {
        receipt,
        replayed: false,
    })
}

/// Which fields of a retried request differ from the payment its idempotency key was first used for, if any.
fn differing(request: &PaymentRequest, before: &Receipt, attendee: Option<&str>) -> Option<String> {
    let mut fields = Vec::new();
    if request.amount_minor != before.amount_minor {
        fields.push(format!(
            "amount_minor ({} then, {} now)",
            before.amount_minor, request.amount_minor
        ));
    }
    if request.currency != before.currency {
        fields.push(format!(
            "currency ({} then, {} now)",
            before.currency, request.currency
        ));
    }
    if request.attendee.as_deref() != attendee {
        fields.push("attendee".to_owned());
    }
    (!fields.is_empty()).then(|| fields.join(", "))
}

/// The buyer recorded beside the receipt `token`, if any.
fn attendee_of(
    doc: &(impl ReadDoc + autosurgeon::ReadDoc),
    token: &str,
) -> Result<Option<String>, DocError> {
    match ReadDoc::get(doc, automerge::ROOT, "attendees")? {
        Some((automerge::Value::Object(automerge::ObjType::Map), id)) => get_opt(doc, &id, token),
        _ => Ok(None),
    }
}

/// Records who bought (a pseudonym) beside a receipt. Only the ledger's device writes its ledger, so creating the
/// map on first use cannot race another writer.
fn link_attendee(
    tx: &mut automerge::transaction::Transaction<'_>,
    token: &str,
    attendee: &str,
) -> Result<(), DocError> {
    let attendees = match tx.get(automerge::ROOT, "attendees")? {
        Some((automerge::Value::Object(automerge::ObjType::Map), id)) => id,
        _ => tx.put_object(automerge::ROOT, "attendees", automerge::ObjType::Map)?,
    };
    tx.put(&attendees, token, attendee)?;
    Ok(())
}

/// Writes a receipt and its idempotency key; its amount goes on the issued counter in the same change
/// ([`count_issued`], once per batch).
fn write_receipt(
    tx: &mut automerge::transaction::Transaction<'_>,
    receipts: &automerge::ObjId,
    keys: &automerge::ObjId,
    receipt: &Receipt,
) -> Result<(), DocError> {
    let token = receipt.token.to_string();
    let record = to_record(receipt);
    if ReadDoc::get(tx, receipts, token.as_str())?.is_none() {
        put_record(tx, receipts, &token, &record)?;
    } else {
        autosurgeon::reconcile_prop(&mut *tx, receipts, token.as_str(), record)?;
    }
    tx.put(keys, receipt.idempotency_key.as_str(), token.as_str())?;
    Ok(())
}

/// Raises the issued counter by `amount` minor units (nothing for 0).
fn count_issued(
    tx: &mut automerge::transaction::Transaction<'_>,
    amount: u64,
) -> Result<(), DocError> {
    if amount == 0 {
        return Ok(());
    }
    let amount = i64::try_from(amount)
        .map_err(|_| DocError::LimitReached(format!("amount {amount} minor units")))?;
    tx.increment(automerge::ROOT, ISSUED, amount)?;
    Ok(())
}

/// A new receipt's map, written field by field: the values and types reconciling `record` into an absent key
/// writes (`a_receipt_is_written_as_autosurgeon_would_write_it` checks), without reconcile's read of each field
/// first, which was a quarter of the payment desk's time.
fn put_record(
    tx: &mut automerge::transaction::Transaction<'_>,
    receipts: &automerge::ObjId,
    token: &str,
    record: &ReceiptRecord,
) -> Result<(), DocError> {
    let map = tx.put_object(receipts, token, automerge::ObjType::Map)?;
    tx.put(&map, "seq", record.seq)?;
    tx.put(&map, "idempotency_key", record.idempotency_key.as_str())?;
    tx.put(&map, "amount_minor", record.amount_minor)?;
    tx.put(&map, "currency", record.currency.as_str())?;
    tx.put(&map, "issued_at", record.issued_at)?;
    tx.put(&map, "signature", record.signature.as_str())?;
    Ok(())
}

/// Issued minus reconciled, in minor units: the issued counter, less the amounts of receipts the origin marked.
fn unreconciled(doc: &(impl ReadDoc + autosurgeon::ReadDoc)) -> Result<u64, DocError> {
    let issued = match ReadDoc::get(doc, automerge::ROOT, ISSUED)? {
        Some((automerge::Value::Scalar(v), _)) => match v.as_ref() {
            automerge::ScalarValue::Counter(c) => i64::from(c).max(0) as u64,
            _ => return Err(DocError::Missing("issued_minor counter".into())),
        },
        _ => return Err(DocError::Missing("issued_minor counter".into())),
    };
    let receipts = object_at(doc, &["receipts"])?;
    let reconciled = object_at(doc, &["reconciled"])?;
    let mut settled = 0u64;
    // Only each reconciled receipt's amount is read (not the whole record): this runs for every earlier page and
    // every other show's ledger on each payment batch.
    for token in doc.keys(&reconciled) {
        let amount = match ReadDoc::get(doc, &receipts, token.as_str())? {
            Some((automerge::Value::Object(automerge::ObjType::Map), entry)) => {
                autosurgeon::hydrate_prop::<_, u64, _, _>(doc, &entry, "amount_minor")?
            }
            Some(_) => {
                return Err(DocError::Missing(format!(
                    "a readable receipt under {token}"
                )));
            }
            None => 0,
        };
        settled = settled.saturating_add(amount);
    }
    Ok(issued.saturating_sub(settled))
}

/// The value at `key` in map `obj`, or `None` when the key is absent.
fn get_opt<T: Hydrate>(
    am: &(impl ReadDoc + autosurgeon::ReadDoc),
    obj: &automerge::ObjId,
    key: &str,
) -> Result<Option<T>, DocError> {
    if ReadDoc::get(am, obj, key)?.is_none() {
        return Ok(None);
    }
    Ok(Some(autosurgeon::hydrate_prop(am, obj, key)?))
}

fn parse_site(hex: &str) -> Option<SiteId> {
    hex_decode(hex).ok().map(SiteId)
}
