//! Signed payment receipts: the proof a device took money offline.
//!
//! A receipt's **token** is a BLAKE3 hash of the inputs that define the payment (site, show, issuing device, the
//! client's idempotency key, amount, currency). The same inputs give the same token on any device and at any time,
//! so a retried request produces the same token, and the payment processor's settlement batch can be matched to
//! receipts by token without ever counting one twice. The issuing device signs the receipt's canonical encoding
//! (which includes the token); anyone holding the site directory can verify it offline.

use std::fmt;

use thiserror::Error;

use crate::codec::{DecodeError, Decoder, Encoder, tag};
use crate::directory::DirectoryView;
use crate::enrollment::TrustError;
use crate::identity::{DeviceId, DeviceKey, SiteId, UnixMillis, hex_decode, hex_encode};

const RECEIPT_VERSION: u8 = 1;
/// Longest idempotency key a client may send, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;
const TOKEN_PREFIX: &str = "rcpt_";
/// The largest amount one payment may be, in minor units (10 trillion: far past any offline limit, and far below
/// where sums of many receipts could pass what a ledger's counter holds).
pub const AMOUNT_MINOR_MAX: u64 = 10_000_000_000_000;

/// The deterministic identifier of a payment.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReceiptToken(pub [u8; 16]);

impl ReceiptToken {
    /// Derives the token from the inputs that define a payment.
    pub fn derive(
        site: SiteId,
        show: &str,
        device: DeviceId,
        idempotency_key: &str,
        amount_minor: u64,
        currency: &str,
    ) -> Self {
        let mut enc = Encoder::new(tag::RECEIPT, 0);
        enc.array(&site.0)
            .str(show)
            .array(&device.0)
            .str(idempotency_key)
            .u64(amount_minor)
            .str(currency);
        let hash = blake3::derive_key("popmesh receipt token v1", &enc.finish());
        let mut token = [0u8; 16];
        token.copy_from_slice(&hash[..16]);
        Self(token)
    }

    /// Reads a token in its one spelling, as [`fmt::Display`] writes it (lower-case hex). A second spelling would
    /// let a ledger file one receipt under two keys, and the origin count it twice.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix(TOKEN_PREFIX)?;
        if hex.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        hex_decode(hex).ok().map(Self)
    }
}

impl fmt::Display for ReceiptToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}{}", hex_encode(&self.0))
    }
}

impl fmt::Debug for ReceiptToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReceiptToken({self})")
    }
}

/// What a client asks for when it takes a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRequest {
    pub idempotency_key: String,
    pub amount_minor: u64,
    /// ISO 4217 code, three upper-case letters.
    pub currency: String,
    /// The buyer's pseudonymous id, when known (recorded beside the receipt, not signed into it).
    pub attendee: Option<String>,
}

/// Why a payment request is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error("idempotency_key must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} printable ASCII characters")]
    BadIdempotencyKey,
    #[error("currency must be a three-letter ISO 4217 code in capitals, such as EUR, not '{0}'")]
    BadCurrency(String),
    #[error("amount_minor must be more than zero")]
    ZeroAmount,
    #[error("amount_minor must be at most {AMOUNT_MINOR_MAX}, not {0}")]
    AmountTooLarge(u64),
    #[error("attendee: {0}")]
    BadAttendee(crate::privacy::PrivacyError),
}

impl PaymentRequest {
    pub fn validate(&self) -> Result<(), RequestError> {
        let key = &self.idempotency_key;
        if key.is_empty()
            || key.len() > IDEMPOTENCY_KEY_BYTES_MAX
            || !key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(RequestError::BadIdempotencyKey);
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(RequestError::BadCurrency(self.currency.clone()));
        }
        if self.amount_minor == 0 {
            return Err(RequestError::ZeroAmount);
        }
        if self.amount_minor > AMOUNT_MINOR_MAX {
            return Err(RequestError::AmountTooLarge(self.amount_minor));
        }
        if let Some(a) = &self.attendee {
            crate::privacy::check_pseudonym(a).map_err(RequestError::BadAttendee)?;
        }
        Ok(())
    }
}

/// A signed receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub site: SiteId,
    pub show: String,
    pub device: DeviceId,
    /// The issuing device's sequence number for this show, from 1.
    pub seq: u64,
    pub idempotency_key: String,
    pub amount_minor: u64,
    pub currency: String,
    /// The issuing device's clock when it took the payment.
    pub issued_at: UnixMillis,
    pub token: ReceiptToken,
    pub signature: [u8; 64],
}

/// Why a receipt is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReceiptError {
    #[error("malformed receipt: {0}")]
    Malformed(#[from] DecodeError),
    #[error("malformed receipt: field '{0}' is missing or invalid")]
    BadField(&'static str),
    #[error("receipt token {found} does not match its contents (expected {expected})")]
    TokenMismatch {
        expected: ReceiptToken,
        found: ReceiptToken,
    },
    #[error("receipt signature does not verify for device {0}")]
    BadSignature(String),
    #[error("receipt is for site {found}, not {expected}")]
    WrongSite { expected: SiteId, found: SiteId },
    #[error("receipt issuer is not trusted: {0}")]
    Untrusted(#[from] TrustError),
}

impl Receipt {
    /// Builds and signs a receipt. The caller has validated the request and checked the risk limits.
    pub fn issue(
        key: &DeviceKey,
        site: SiteId,
        show: &str,
        seq: u64,
        request: &PaymentRequest,
        issued_at: UnixMillis,
    ) -> Self {
        let device = key.public();
        let mut receipt = Self {
            site,
            show: show.to_owned(),
            device,
            seq,
            idempotency_key: request.idempotency_key.clone(),
            amount_minor: request.amount_minor,
            currency: request.currency.clone(),
            issued_at,
            token: ReceiptToken::derive(
                site,
                show,
                device,
                &request.idempotency_key,
                request.amount_minor,
                &request.currency,
            ),
            signature: [0; 64],
        };
        receipt.signature = key.sign(&receipt.signed_bytes());
        receipt
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut enc = Encoder::new(tag::RECEIPT, RECEIPT_VERSION);
        enc.array(&self.site.0)
            .str(&self.show)
            .array(&self.device.0)
            .u64(self.seq)
            .str(&self.idempotency_key)
            .u64(self.amount_minor)
            .str(&self.currency)
            .u64(self.issued_at.0)
            .array(&self.token.0);
        enc.finish()
    }

    /// The canonical encoding: signed fields, then the signature.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.signed_bytes();
        bytes.extend_from_slice(&self.signature);
        bytes
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ReceiptError> {
        let mut dec = Decoder::new(bytes, "receipt", tag::RECEIPT, RECEIPT_VERSION)?;
        let receipt = Self {
            site: SiteId(dec.array("site")?),
            show: dec.string("show")?,
            device: DeviceId(dec.array("device")?),
            seq: dec.u64("seq")?,
            idempotency_key: dec.string("idempotency_key")?,
            amount_minor: dec.u64("amount_minor")?,
            currency: dec.string("currency")?,
            issued_at: UnixMillis(dec.u64("issued_at")?),
            token: ReceiptToken(dec.array("token")?),
            signature: dec.array("signature")?,
        };
        dec.finish()?;
        Ok(receipt)
    }

    /// Checks that the token matches the contents and the issuing device signed it. Says nothing about whether
    /// the device is trusted: see [`Receipt::verify`].
    pub fn verify_signature(&self) -> Result<(), ReceiptError> {
        let expected = ReceiptToken::derive(
            self.site,
            &self.show,
            self.device,
            &self.idempotency_key,
            self.amount_minor,
            &self.currency,
        );
        if expected != self.token {
            return Err(ReceiptError::TokenMismatch {
                expected,
                found: self.token,
            });
        }
        self.device
            .verify(&self.signed_bytes(), &self.signature)
            .map_err(|_| ReceiptError::BadSignature(self.device.to_hex()))
    }

    /// Full verification against the site directory: the right site, a consistent token, a valid signature, and
    /// an issuer that was enrolled when it issued the receipt and has not been revoked.
    pub fn verify(&self, directory: &DirectoryView) -> Result<(), ReceiptError> {
        if self.site != directory.site {
            return Err(ReceiptError::WrongSite {
                expected: directory.site,
                found: self.site,
            });
        }
        self.verify_signature()?;
        directory.verify_issuer(&self.device, &self.show, self.seq, self.issued_at)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;

    fn request() -> PaymentRequest {
        PaymentRequest {
            idempotency_key: "order-17".into(),
            amount_minor: 1250,
            currency: "EUR".into(),
            attendee: None,
        }
    }

    #[test]
    fn a_retried_payment_gets_the_same_token_on_any_device_at_any_time() {
        let key = SecretKey::from_seed([3; 32]);
        let site = SiteId([1; 16]);
        let first = Receipt::issue(&key, site, "show-1", 1, &request(), UnixMillis(10));
        let retry = Receipt::issue(&key, site, "show-1", 2, &request(), UnixMillis(99_999));
        assert_eq!(first.token, retry.token);
        assert_eq!(
            ReceiptToken::parse(&first.token.to_string()),
            Some(first.token)
        );
        let capitals = first
            .token
            .to_string()
            .to_uppercase()
            .replace("RCPT_", "rcpt_");
        assert_eq!(
            ReceiptToken::parse(&capitals),
            None,
            "one spelling per token"
        );

        let other_amount = PaymentRequest {
            amount_minor: 1251,
            ..request()
        };
        assert_ne!(
            Receipt::issue(&key, site, "show-1", 1, &other_amount, UnixMillis(10)).token,
            first.token
        );
    }

    #[test]
    fn bad_requests_are_named() {
        let mut r = request();
        r.currency = "eur".into();
        assert_eq!(r.validate(), Err(RequestError::BadCurrency("eur".into())));
        r = request();
        r.idempotency_key = String::new();
        assert_eq!(r.validate(), Err(RequestError::BadIdempotencyKey));
        r = request();
        r.amount_minor = 0;
        assert_eq!(r.validate(), Err(RequestError::ZeroAmount));
    }
}
