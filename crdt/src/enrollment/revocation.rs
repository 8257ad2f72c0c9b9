//! Revocations: the authority's signed withdrawal of a device or an invite, and what it still honours.

use crate::codec::{DecodeError, Decoder, Encoder, tag};
use crate::identity::{DeviceId, PublicKey, SiteId, UnixMillis};

use super::TrustError;

/// 1: no receipts honoured; 2: adds `honoured` (a revocation with none is still written as version 1, byte for
/// byte what older devices sign and verify).
const REVOCATION_VERSION: u8 = 2;
/// Shows one revocation may honour receipts in.
pub const HONOURED_SHOWS_MAX: usize = 4096;

/// What a revocation withdraws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationTarget {
    Device(PublicKey),
    Invite(PublicKey),
    /// A client token (`client_token::ClientToken`), by its id.
    Token([u8; 32]),
}

/// The authority's signed withdrawal of a device or an invite. It travels in the site directory.
///
/// A revocation is not retroactive: `honoured` names, per show, the last receipt sequence number of the revoked
/// device that the authority had seen when it revoked it. Those receipts still verify; any later one (or any in a
/// show not named) is refused as issued after the revocation. Signed with the rest, so no device can widen it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub site: SiteId,
    pub target: RevocationTarget,
    pub at: UnixMillis,
    pub reason: String,
    /// Show -> the revoked device's last receipt sequence number that stays valid.
    pub honoured: std::collections::BTreeMap<String, u64>,
    pub signature: [u8; 64],
}

impl Revocation {
    pub(super) fn signed_bytes(&self) -> Vec<u8> {
        let version = if self.honoured.is_empty() {
            1
        } else {
            REVOCATION_VERSION
        };
        let mut enc = Encoder::new(tag::REVOCATION, version);
        enc.array(&self.site.0);
        match self.target {
            RevocationTarget::Device(key) => enc.u8(1).array(&key.0),
            RevocationTarget::Invite(key) => enc.u8(2).array(&key.0),
            RevocationTarget::Token(id) => enc.u8(3).array(&id),
        };
        enc.u64(self.at.0).str(&self.reason);
        if !self.honoured.is_empty() {
            enc.u32(self.honoured.len() as u32);
            for (show, seq) in &self.honoured {
                enc.str(show).u64(*seq);
            }
        }
        enc.finish()
    }

    /// Whether receipt `seq` of `show` from the revoked device was issued before the revocation took effect.
    pub fn honours(&self, show: &str, seq: u64) -> bool {
        self.honoured.get(show).is_some_and(|last| seq <= *last)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.signed_bytes();
        bytes.extend_from_slice(&self.signature);
        bytes
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TrustError> {
        let malformed = |source| TrustError::Malformed {
            what: "revocation",
            source,
        };
        let (mut dec, version) =
            Decoder::new_versions(bytes, "revocation", tag::REVOCATION, 1..=REVOCATION_VERSION)
                .map_err(malformed)?;
        let site = SiteId(dec.array("site").map_err(malformed)?);
        let kind = dec.u8("target").map_err(malformed)?;
        let key = DeviceId(dec.array("target").map_err(malformed)?);
        let target = match kind {
            1 => RevocationTarget::Device(key),
            2 => RevocationTarget::Invite(key),
            3 => RevocationTarget::Token(key.0),
            other => {
                return Err(malformed(DecodeError::InvalidValue {
                    field: "target",
                    value: other.into(),
                }));
            }
        };
        let at = UnixMillis(dec.u64("at").map_err(malformed)?);
        let reason = dec.string("reason").map_err(malformed)?;
        let mut honoured = std::collections::BTreeMap::new();
        if version >= 2 {
            let count = dec.u32("honoured").map_err(malformed)? as usize;
            if count == 0 || count > HONOURED_SHOWS_MAX {
                return Err(malformed(DecodeError::InvalidValue {
                    field: "honoured",
                    value: count as u64,
                }));
            }
            for _ in 0..count {
                let show = dec.string("honoured show").map_err(malformed)?;
                let seq = dec.u64("honoured seq").map_err(malformed)?;
                if honoured.insert(show, seq).is_some() {
                    return Err(malformed(DecodeError::InvalidValue {
                        field: "honoured show (twice)",
                        value: seq,
                    }));
                }
            }
        }
        let revocation = Self {
            site,
            target,
            at,
            reason,
            honoured,
            signature: dec.array("signature").map_err(malformed)?,
        };
        dec.finish().map_err(malformed)?;
        Ok(revocation)
    }

    pub fn verify(&self, authority: &PublicKey, site: SiteId) -> Result<(), TrustError> {
        if self.site != site {
            return Err(TrustError::WrongSite {
                what: "revocation",
                expected: site,
                found: self.site,
            });
        }
        authority
            .verify(&self.signed_bytes(), &self.signature)
            .map_err(|_| TrustError::BadSignature { what: "revocation" })
    }
}
