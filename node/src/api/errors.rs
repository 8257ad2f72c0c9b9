//! The one place the node's failures become HTTP answers: for each operation's error enum, the status and a stable
//! `code` a client can match on (the message is for people and may change). Every answer is
//! `{"error": {"status": N, "code": "...", "message": "..."}}`.
//!
//! 400 the request is malformed; 403 this device (its role) may not; 404 no such show, slot, device or document;
//! 409 the request conflicts with the site's state (an id or key reused, quota spent); 422 well formed but refused
//! by a rule (over the risk limits); 503 not now (the directory not here yet, a full disk, still loading).

use axum::http::StatusCode;

use super::ApiError;
use crate::node::{
    AvailabilityError, CheckInError, CountError, CreateShowError, DocumentError, FeedbackError,
    IssuePassError, NotPermitted, PayError, ProfileError, PublishError, ReceiptsError,
    ReconcileError, ReportError, RevokeError, RevokePassError, ShowError, TransferError,
    Unavailable, UnknownDevice,
};
use crate::node::{BookError, UnknownSlot};

/// How the HTTP layer answers a failure: its status and code.
pub(crate) trait Answer: std::fmt::Display {
    fn answer(&self) -> (StatusCode, &'static str);
}

impl<E: Answer> From<E> for ApiError {
    fn from(e: E) -> Self {
        let (status, code) = e.answer();
        ApiError::new(status, e.to_string()).with_code(code)
    }
}

const BAD: StatusCode = StatusCode::BAD_REQUEST;
const FORBIDDEN: StatusCode = StatusCode::FORBIDDEN;
const NOT_FOUND: StatusCode = StatusCode::NOT_FOUND;
const CONFLICT: StatusCode = StatusCode::CONFLICT;
const UNAVAILABLE: StatusCode = StatusCode::SERVICE_UNAVAILABLE;

impl Answer for Unavailable {
    fn answer(&self) -> (StatusCode, &'static str) {
        let code = match self {
            Unavailable::NoDirectory | Unavailable::DirectoryUnreadable => "no_directory",
            Unavailable::ShuttingDown => "shutting_down",
            Unavailable::DiskFull { .. } => "disk_full",
            Unavailable::StoreRefuses(_) => "store_failed",
            Unavailable::NotDurable(_) => "not_durable",
            Unavailable::Loading { .. } => "not_synced",
            Unavailable::MoneyLoading(_) => "loading",
            Unavailable::DocumentMissing(_) | Unavailable::Internal(_) => "internal",
        };
        (UNAVAILABLE, code)
    }
}

impl Answer for ShowError {
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            ShowError::Unknown(_) => (NOT_FOUND, "unknown_show"),
            ShowError::NoneOpen => (CONFLICT, "no_show_open"),
        }
    }
}

impl Answer for NotPermitted {
    fn answer(&self) -> (StatusCode, &'static str) {
        (FORBIDDEN, "role_may_not")
    }
}

impl Answer for UnknownDevice {
    fn answer(&self) -> (StatusCode, &'static str) {
        (NOT_FOUND, "unknown_device")
    }
}

impl Answer for UnknownSlot {
    fn answer(&self) -> (StatusCode, &'static str) {
        (NOT_FOUND, "unknown_slot")
    }
}

impl Answer for PayError {
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            PayError::Invalid(_) => (BAD, "invalid"),
            PayError::TooMany(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_many"),
            PayError::Show(e) => e.answer(),
            PayError::OverLimit(_) => (StatusCode::UNPROCESSABLE_ENTITY, "over_limit"),
            PayError::KeyReused(_) => (CONFLICT, "idempotency_key_reused"),
            PayError::LedgerFull(_) => (CONFLICT, "ledger_full"),
            PayError::Unavailable(e) => e.answer(),
        }
    }
}

impl Answer for BookError {
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            BookError::Invalid(_) => (BAD, "invalid"),
            BookError::UnknownSlot(e) => e.answer(),
            BookError::QuotaSpent(_) => (CONFLICT, "quota_spent"),
            BookError::IdReused(_) => (CONFLICT, "booking_id_reused"),
            BookError::Full(_) => (CONFLICT, "slot_full"),
            BookError::Unavailable(e) => e.answer(),
        }
    }
}

impl Answer for TransferError {
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            TransferError::Invalid(_) => (BAD, "invalid"),
            TransferError::UnknownSlot(e) => e.answer(),
            TransferError::UnknownDevice(e) => e.answer(),
            TransferError::QuotaSpent(_) => (CONFLICT, "quota_spent"),
            TransferError::IdReused(_) => (CONFLICT, "transfer_id_reused"),
            TransferError::Full(_) => (CONFLICT, "slot_full"),
            TransferError::Unavailable(e) => e.answer(),
        }
    }
}

impl Answer for AvailabilityError {
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            AvailabilityError::UnknownSlot(e) => e.answer(),
            AvailabilityError::Unavailable(e) => e.answer(),
        }
    }
}

impl Answer for IssuePassError {
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            IssuePassError::NotPermitted(e) => e.answer(),
            IssuePassError::Show(e) => e.answer(),
            IssuePassError::Invalid(_) => (BAD, "invalid"),
            IssuePassError::Unavailable(e) => e.answer(),
        }
    }
}

impl Answer for CheckInError {
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            CheckInError::Invalid(_) => (BAD, "invalid"),
            CheckInError::Show(e) => e.answer(),
            CheckInError::Refused(_) => (FORBIDDEN, "pass_refused"),
            CheckInError::Unavailable(e) => e.answer(),
        }
    }
}

impl Answer for RevokePassError {
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            RevokePassError::NotPermitted(e) => e.answer(),
            RevokePassError::Invalid(_) => (BAD, "invalid"),
            RevokePassError::Unavailable(e) => e.answer(),
        }
    }
}

impl Answer for PublishError {
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            PublishError::NotPermitted(e) => e.answer(),
            PublishError::Invalid(_) => (BAD, "invalid"),
            PublishError::Unavailable(e) => e.answer(),
        }
    }
}

impl Answer for ReceiptsError {
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            ReceiptsError::Invalid(_) => (BAD, "invalid"),
            ReceiptsError::Unavailable(e) => e.answer(),
        }
    }
}

impl Answer for ReconcileError {
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            ReconcileError::NotOrigin(_) => (FORBIDDEN, "role_may_not"),
            ReconcileError::Unavailable(e) => e.answer(),
        }
    }
}

impl Answer for ReportError {
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            ReportError::Show(e) => e.answer(),
            ReportError::Unavailable(e) => e.answer(),
        }
    }
}

impl Answer for CreateShowError {
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            CreateShowError::NotPermitted(e) => e.answer(),
            CreateShowError::Invalid(_) => (BAD, "invalid"),
            CreateShowError::Exists(_) => (CONFLICT, "show_exists"),
            CreateShowError::Unavailable(e) => e.answer(),
        }
    }
}

impl Answer for DocumentError {
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            DocumentError::Unknown(_) => (NOT_FOUND, "unknown_document"),
            DocumentError::Unavailable(e) => e.answer(),
        }
    }
}

impl Answer for CountError {
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            CountError::Invalid(_) => (BAD, "invalid"),
            CountError::Unavailable(e) => e.answer(),
        }
    }
}

impl Answer for FeedbackError {
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            FeedbackError::Invalid(_) => (BAD, "invalid"),
            FeedbackError::UnknownSlot(e) => e.answer(),
            FeedbackError::Show(e) => e.answer(),
            FeedbackError::NotABooking(_) => (CONFLICT, "not_a_booking"),
            FeedbackError::Full(_) => (StatusCode::UNPROCESSABLE_ENTITY, "tallies_full"),
            FeedbackError::Unavailable(e) => e.answer(),
        }
    }
}

impl Answer for ProfileError {
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            ProfileError::Invalid(_) => (BAD, "invalid"),
            ProfileError::Unavailable(e) => e.answer(),
        }
    }
}

impl Answer for RevokeError {
    fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            RevokeError::Refused(_) => (BAD, "revocation_refused"),
            RevokeError::Widens => (CONFLICT, "revocation_widens"),
            RevokeError::Unavailable(e) => e.answer(),
        }
    }
}
