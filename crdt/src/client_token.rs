//! Client tokens: what an operator's laptop, a POS app on a tablet or a kiosk screen shows the API, instead of
//! sitting on the device's loopback.
//!
//! A token names one role ([`ClientRole`]) and is signed by an enrolled edge box or the origin, so every node
//! checks it offline against its directory replica, as it checks passes: the site, the signature, an issuer that
//! is an enrolled, unrevoked edge box or origin, a short validity window, and no revocation of the token in the
//! directory (`RevocationTarget::Token`, signed by the site authority like a device's). The API decides which
//! roles each route admits (`node/src/api/roles.rs`).

use thiserror::Error;

use crate::codec::{DecodeError, Decoder, Encoder, Window, check_window, from_line, tag, to_line};
use crate::directory::DirectoryView;
use crate::enrollment::RevocationTarget;
use crate::identity::{DeviceId, DeviceKey, SiteId, UnixMillis, hex_decode, hex_encode};

/// The longest a client token may be valid for: a show week. Short-lived by design; a new one is one command.
pub const TOKEN_VALID_MS_MAX: u64 = 7 * 24 * 3_600_000;

/// How far a token's issue time may be ahead of the checking device's clock.
pub const CLOCK_SKEW_MS: u64 = crate::access::CLOCK_SKEW_MS;

/// Bytes of a token's label (which tablet or screen it is for).
pub const LABEL_BYTES_MAX: usize = 64;

const TOKEN_VERSION: u8 = 1;
const TEXT_PREFIX: &str = "popmesh-client1.";

/// What a client may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ClientRole {
    /// Everything the API offers: shows, manifests, media, revocations, reconciliation, the console.
    Operator,
    /// A POS app: payments, receipts, bookings, passes and check-ins, and everything a screen reads.
    Pos,
    /// A kiosk screen: reads manifests, media and slots, checks passes in and books; takes no payment.
    Screen,
    /// Reads status, receipts, slots and reports; changes nothing.
    ReadOnly,
}

impl ClientRole {
    pub const ALL: [ClientRole; 4] = [
        ClientRole::Operator,
        ClientRole::Pos,
        ClientRole::Screen,
        ClientRole::ReadOnly,
    ];

    fn code(self) -> u8 {
        match self {
            ClientRole::Operator => 1,
            ClientRole::Pos => 2,
            ClientRole::Screen => 3,
            ClientRole::ReadOnly => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ClientRole::Operator => "operator",
            ClientRole::Pos => "pos",
            ClientRole::Screen => "screen",
            ClientRole::ReadOnly => "read_only",
        }
    }
}

impl std::fmt::Display for ClientRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ClientRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s || (s == "read-only" && *r == ClientRole::ReadOnly))
            .ok_or_else(|| format!("{s:?} is not a role: operator, pos, screen or read_only"))
    }
}

/// A signed client token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientToken {
    pub site: SiteId,
    /// Random, from the issuer; what a revocation names.
    pub id: [u8; 32],
    pub role: ClientRole,
    pub label: String,
    pub issuer: DeviceId,
    pub issued_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub signature: [u8; 64],
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    #[error("not a client token: {0}")]
    Malformed(String),
    #[error("the token is for another site")]
    WrongSite,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token's issuer is not an enrolled edge box or origin of this site: {0}")]
    Issuer(String),
    #[error("a token is valid for 1 s to {} days", TOKEN_VALID_MS_MAX / 86_400_000)]
    BadValidity,
    #[error("the token is not valid yet (issued {ahead_s} s in this device's future)")]
    NotYetValid { ahead_s: u64 },
    #[error("the token expired {ago_s} s ago")]
    Expired { ago_s: u64 },
    #[error("the token was revoked: {0}")]
    Revoked(String),
    #[error("label: at most {LABEL_BYTES_MAX} bytes of printable text")]
    BadLabel,
}

impl ClientToken {
    /// Signs a token. `id` comes from the caller's random source.
    pub fn issue(
        key: &DeviceKey,
        site: SiteId,
        id: [u8; 32],
        role: ClientRole,
        label: &str,
        now: UnixMillis,
        valid_ms: u64,
    ) -> Result<Self, TokenError> {
        if valid_ms == 0 || valid_ms > TOKEN_VALID_MS_MAX {
            return Err(TokenError::BadValidity);
        }
        if label.len() > LABEL_BYTES_MAX || label.chars().any(char::is_control) {
            return Err(TokenError::BadLabel);
        }
        let mut token = Self {
            site,
            id,
            role,
            label: label.to_owned(),
            issuer: key.public(),
            issued_at: now,
            expires_at: UnixMillis(now.0.saturating_add(valid_ms)),
            signature: [0; 64],
        };
        token.signature = key.sign(&token.signed_bytes());
        Ok(token)
    }

    pub fn id_hex(&self) -> String {
        hex_encode(&self.id)
    }

    /// A token id from its hex form (as `popmesh token issue` prints it).
    pub fn parse_id(hex: &str) -> Result<[u8; 32], TokenError> {
        hex_decode::<32>(hex.trim()).map_err(|_| {
            TokenError::Malformed(format!("{hex:?} is not a token id (64 hex digits)"))
        })
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut enc = Encoder::new(tag::CLIENT_TOKEN, TOKEN_VERSION);
        enc.array(&self.site.0)
            .array(&self.id)
            .u8(self.role.code())
            .str(&self.label)
            .array(&self.issuer.0)
            .u64(self.issued_at.0)
            .u64(self.expires_at.0);
        enc.finish()
    }

    /// The one-line form a client sends as `Authorization: Bearer ...`.
    pub fn to_text(&self) -> String {
        let mut bytes = self.signed_bytes();
        bytes.extend_from_slice(&self.signature);
        to_line(TEXT_PREFIX, &bytes)
    }

    pub fn from_text(text: &str) -> Result<Self, TokenError> {
        let bad = |e: String| TokenError::Malformed(e);
        // A token is a few hundred bytes; never decode an arbitrarily long header.
        let bytes = from_line(text, TEXT_PREFIX, 1024).map_err(bad)?;
        let parse = || -> Result<Self, DecodeError> {
            let mut dec = Decoder::new(&bytes, "client token", tag::CLIENT_TOKEN, TOKEN_VERSION)?;
            let site = SiteId(dec.array("site")?);
            let id = dec.array("id")?;
            let code = dec.u8("role")?;
            let role = ClientRole::from_code(code).ok_or(DecodeError::InvalidValue {
                field: "role",
                value: u64::from(code),
            })?;
            let token = Self {
                site,
                id,
                role,
                label: dec.string("label")?,
                issuer: DeviceId(dec.array("issuer")?),
                issued_at: UnixMillis(dec.u64("issued_at")?),
                expires_at: UnixMillis(dec.u64("expires_at")?),
                signature: dec.array("signature")?,
            };
            dec.finish()?;
            if token.label.len() > LABEL_BYTES_MAX || token.label.chars().any(char::is_control) {
                return Err(DecodeError::InvalidValue {
                    field: "label",
                    value: token.label.len() as u64,
                });
            }
            Ok(token)
        };
        parse().map_err(|e| bad(e.to_string()))
    }

    /// Checks the token offline and gives its role: the site, the signature, an issuer that is an enrolled,
    /// unrevoked edge box or origin, the validity window, and no revocation of the token in the directory.
    pub fn check(
        &self,
        directory: &DirectoryView,
        now: UnixMillis,
    ) -> Result<ClientRole, TokenError> {
        if self.site != directory.site {
            return Err(TokenError::WrongSite);
        }
        self.issuer
            .verify(&self.signed_bytes(), &self.signature)
            .map_err(|_| TokenError::BadSignature)?;
        // Trusted now, not when issued: a token from an issuer revoked since is refused.
        directory
            .verify_grant_issuer(&self.issuer, now)
            .map_err(TokenError::Issuer)?;
        check_window(
            self.issued_at.0,
            self.expires_at.0,
            TOKEN_VALID_MS_MAX,
            CLOCK_SKEW_MS,
            now.0,
        )
        .map_err(|w| match w {
            Window::Invalid => TokenError::BadValidity,
            Window::NotYet { ahead_s } => TokenError::NotYetValid { ahead_s },
            Window::Expired { ago_s } => TokenError::Expired { ago_s },
        })?;
        if let Some(r) = directory.revocation_of(RevocationTarget::Token(self.id)) {
            return Err(TokenError::Revoked(r.reason.clone()));
        }
        Ok(self.role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;

    #[test]
    fn a_token_round_trips_through_its_text_and_a_changed_byte_is_refused() {
        let key = SecretKey::from_seed([3; 32]);
        let site = SiteId::for_authority(&SecretKey::from_seed([1; 32]).public());
        let token = ClientToken::issue(
            &key,
            site,
            [9; 32],
            ClientRole::Screen,
            "lobby screen",
            UnixMillis(1_000),
            3_600_000,
        )
        .expect("valid");
        let text = token.to_text();
        assert_eq!(ClientToken::from_text(&text).expect("parses"), token);
        assert!(ClientToken::from_text("popmesh-client1.AAAA").is_err());
        assert!(ClientToken::from_text(&format!("{text}{}", "A".repeat(2000))).is_err());
        let too_long = ClientToken::issue(
            &key,
            site,
            [9; 32],
            ClientRole::Pos,
            "x",
            UnixMillis(1_000),
            TOKEN_VALID_MS_MAX + 1,
        );
        assert_eq!(too_long, Err(TokenError::BadValidity));
        assert_eq!("read-only".parse(), Ok(ClientRole::ReadOnly));
        assert!("root".parse::<ClientRole>().is_err());
    }
}
