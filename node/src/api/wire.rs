//! What the local API's requests carry and what its answers hold, as JSON: the HTTP layer's own types. The node
//! takes domain inputs (`NewShow`, `ManifestUpdate`, `PaymentRequest`, ...) and gives domain values
//! (`CheckedReceipt`, `Status`, ...); the conversions between the two are here, so the wire format can change
//! without touching the node, and the node's types carry nothing of HTTP.
//!
//! Every request body refuses unknown fields: a typo in a field name is a 400 that names it, not a default.

use std::collections::BTreeMap;

use popmesh_crdt::manifest::ByteRange;
use popmesh_crdt::receipt::PaymentRequest;
use serde::{Deserialize, Serialize};

use crate::node::{CheckedReceipt, ManifestUpdate, NewEntry, NewShow, NewSlot, ReceiptPage};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PaymentBody {
    pub(super) amount_minor: u64,
    pub(super) currency: String,
    pub(super) idempotency_key: String,
    /// The show the payment is for; the show on now when absent.
    pub(super) show: Option<String>,
    /// The buyer's pseudonymous id (from their pass), when known: links the sale to their check-in.
    pub(super) attendee: Option<String>,
}

impl PaymentBody {
    /// The request for the desk, and the show it names.
    pub(super) fn into_request(self) -> (PaymentRequest, Option<String>) {
        let item = BatchItemBody {
            amount_minor: self.amount_minor,
            currency: self.currency,
            idempotency_key: self.idempotency_key,
            attendee: self.attendee,
        };
        (item.into(), self.show)
    }
}

/// A POS app's queue of payments for one show (`POST /v1/payments/batch`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PaymentBatchBody {
    /// The show every payment is for; the show on now when absent.
    pub(super) show: Option<String>,
    /// At most 1,000, taken in this order.
    pub(super) payments: Vec<BatchItemBody>,
}

/// One payment of a batch: the fields of `POST /v1/payments` but the show.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchItemBody {
    pub(super) amount_minor: u64,
    pub(super) currency: String,
    pub(super) idempotency_key: String,
    pub(super) attendee: Option<String>,
}

impl From<BatchItemBody> for PaymentRequest {
    fn from(item: BatchItemBody) -> Self {
        Self {
            idempotency_key: item.idempotency_key,
            amount_minor: item.amount_minor,
            currency: item.currency,
            attendee: item.attendee,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ReceiptsQuery {
    /// The previous page's `next`.
    pub(super) after: Option<String>,
    pub(super) limit: Option<usize>,
    /// Only this device's receipts (hex id).
    pub(super) device: Option<String>,
    pub(super) show: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BookingBody {
    pub(super) seats: u64,
    /// The client's id for this booking; retrying with the same id books once. Drawn at random when absent.
    pub(super) booking_id: Option<String>,
    /// The buyer's pseudonymous id (from their pass), when known.
    pub(super) attendee: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TransferBody {
    /// The receiving device, by id or name.
    pub(super) to: String,
    pub(super) seats: u64,
    pub(super) transfer_id: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CountBody {
    pub(super) counter: String,
    #[serde(default = "one")]
    pub(super) by: i64,
    /// The attendee the event is about (pseudonymous id): counted only if they consented to analytics here.
    pub(super) attendee: Option<String>,
}

/// `GET /v1/suggestions?zone=&limit=&show=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct SuggestionsQuery {
    /// Where the screen stands (a name, as show ids are); `site` when absent.
    pub(super) zone: Option<String>,
    pub(super) limit: Option<usize>,
    pub(super) show: Option<String>,
}

/// `POST /v1/suggestions/feedback`: what a screen showed, or which suggested slot was booked. No attendee.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct FeedbackBody {
    pub(super) zone: String,
    pub(super) event: FeedbackEvent,
    pub(super) items: Vec<SlotRef>,
    /// For `booked`: the booking this device made, counted once.
    pub(super) booking_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum FeedbackEvent {
    Shown,
    Booked,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SlotRef {
    pub(super) show: String,
    pub(super) slot: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PassBody {
    #[schema(value_type = String, example = "attendee")]
    pub(super) kind: popmesh_crdt::access::PassKind,
    /// A pseudonymous id (never a name).
    pub(super) subject: String,
    /// The show; the one on now when absent.
    pub(super) show: Option<String>,
    pub(super) valid_secs: u64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckInBody {
    /// The pass text (`popmesh-pass1.…`), as scanned.
    pub(super) pass: String,
    /// The show this door is for; the one on now when absent.
    pub(super) show: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PassRevocationBody {
    /// The pass text or its id.
    pub(super) pass: String,
    pub(super) reason: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RevocationBody {
    /// The authority-signed revocation, canonical bytes in base64 (`popmesh site revoke` makes one).
    pub(super) revocation: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ReconcileQuery {
    /// The batch's name, recorded on every mark (such as the settlement file's name).
    pub(super) batch: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ReportQuery {
    pub(super) show: Option<String>,
}

pub(super) fn one() -> i64 {
    1
}

/// `POST /v1/shows`: a show and its slots.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShowBody {
    pub id: String,
    pub name: String,
    pub currency: String,
    pub slots: Vec<SlotBody>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SlotBody {
    pub id: String,
    pub label: String,
    pub starts_at: u64,
    pub capacity: u64,
    /// Seats escrowed to devices (by device id or name); all to this device when empty.
    #[serde(default)]
    pub grants: BTreeMap<String, u64>,
}

impl From<ShowBody> for NewShow {
    fn from(b: ShowBody) -> Self {
        NewShow {
            id: b.id,
            name: b.name,
            currency: b.currency,
            slots: b
                .slots
                .into_iter()
                .map(|s| NewSlot {
                    id: s.id,
                    label: s.label,
                    starts_at: s.starts_at,
                    capacity: s.capacity,
                    grants: s.grants,
                })
                .collect(),
        }
    }
}

/// `POST /v1/manifests/{name}`: entries to publish, and optionally the fallback and per-role slices.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManifestBody {
    #[serde(default)]
    pub entries: Vec<EntryBody>,
    /// The entry to serve when a requested blob cannot be had from any peer.
    #[serde(default)]
    pub fallback: Option<String>,
    /// Role -> byte ranges of every entry that role preseeds.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub slices: BTreeMap<String, Vec<ByteRange>>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntryBody {
    pub name: String,
    pub hash: String,
    pub size: u64,
    pub mime: String,
    pub ttl_ms: u64,
}

impl From<ManifestBody> for ManifestUpdate {
    fn from(b: ManifestBody) -> Self {
        ManifestUpdate {
            entries: b
                .entries
                .into_iter()
                .map(|e| NewEntry {
                    name: e.name,
                    hash: e.hash,
                    size: e.size,
                    mime: e.mime,
                    ttl_ms: e.ttl_ms,
                })
                .collect(),
            fallback: b.fallback,
            slices: b.slices,
        }
    }
}

/// A receipt in an answer: ids and the signature in hex, whether it verifies and is reconciled.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReceiptJson {
    pub token: String,
    pub show: String,
    pub device: String,
    pub seq: u64,
    pub amount_minor: u64,
    pub currency: String,
    pub idempotency_key: String,
    pub issued_at: u64,
    pub signature: String,
    pub reconciled: bool,
    pub verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_error: Option<String>,
}

impl From<&CheckedReceipt> for ReceiptJson {
    fn from(c: &CheckedReceipt) -> Self {
        let r = &c.receipt;
        Self {
            token: c.token.clone(),
            show: r.show.clone(),
            device: r.device.to_hex(),
            seq: r.seq,
            amount_minor: r.amount_minor,
            currency: r.currency.clone(),
            idempotency_key: r.idempotency_key.clone(),
            issued_at: r.issued_at.0,
            signature: r.signature.iter().map(|b| format!("{b:02x}")).collect(),
            reconciled: c.reconciled,
            verified: c.verified.is_ok(),
            verify_error: c.verified.clone().err(),
        }
    }
}

/// `GET /v1/receipts`: one page, and the cursor of the next.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReceiptPageJson {
    pub receipts: Vec<ReceiptJson>,
    /// The cursor for the next page (`?after=`), absent on the last.
    pub next: Option<String>,
}

impl From<&ReceiptPage> for ReceiptPageJson {
    fn from(p: &ReceiptPage) -> Self {
        Self {
            receipts: p.receipts.iter().map(ReceiptJson::from).collect(),
            next: p.next.clone(),
        }
    }
}

/// The answer of `GET /v1/suggestions`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(super) struct SuggestionsJson {
    pub(super) zone: String,
    pub(super) hour: u8,
    pub(super) min_count: u64,
    pub(super) suggestions: Vec<SuggestionJson>,
    pub(super) also_booked: Vec<AlsoBookedJson>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(super) struct SuggestionJson {
    pub(super) show: String,
    pub(super) slot: String,
    pub(super) label: String,
    pub(super) starts_at: u64,
    /// Seats this device can sell now.
    pub(super) available: u64,
    pub(super) score: f64,
    pub(super) why: &'static str,
    pub(super) reason: String,
    /// Showings and bookings after them, in this zone at this hour, site-wide.
    pub(super) shown: u64,
    pub(super) booked: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(super) struct AlsoBookedJson {
    pub(super) show: String,
    pub(super) slot: String,
    pub(super) with: Vec<AlsoBookedWith>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(super) struct AlsoBookedWith {
    pub(super) show: String,
    pub(super) slot: String,
    pub(super) attendees: u64,
}

impl From<&crate::node::Suggestions> for SuggestionsJson {
    fn from(s: &crate::node::Suggestions) -> Self {
        Self {
            zone: s.zone.clone(),
            hour: s.hour,
            min_count: s.min_count,
            suggestions: s
                .ranked
                .iter()
                .map(|r| SuggestionJson {
                    show: r.candidate.show.clone(),
                    slot: r.candidate.slot.clone(),
                    label: r.candidate.label.clone(),
                    starts_at: r.candidate.starts_at,
                    available: r.candidate.available,
                    score: r.score,
                    why: r.why.name(),
                    reason: r.reason(),
                    shown: r.evidence.here.shown,
                    booked: r.evidence.here.booked,
                })
                .collect(),
            also_booked: s
                .also_booked
                .iter()
                .map(|((show, slot), with)| AlsoBookedJson {
                    show: show.clone(),
                    slot: slot.clone(),
                    with: with
                        .iter()
                        .map(|w| AlsoBookedWith {
                            show: w.to.0.clone(),
                            slot: w.to.1.clone(),
                            attendees: w.passes,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// The error answer every operation documents, once for all of them.
#[derive(Debug, utoipa::IntoResponses)]
pub enum ErrorAnswer {
    /// An error: `{"error": {"status", "code", "message"}}` (codes: node/src/api/errors.rs)
    #[response(status = "default")]
    Error(ErrorJson),
}

/// Every error answer of the API (`ApiError`'s form).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorJson {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// The HTTP status, again.
    pub status: u16,
    /// A stable name for what went wrong, for clients to match on (`node/src/api/errors.rs` lists them).
    pub code: &'static str,
    /// What was wrong, for people; names the field.
    pub message: String,
}
