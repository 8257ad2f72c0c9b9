//! Device and site identities: one ed25519 key per device, one authority key per site.
//!
//! A device's 32-byte secret seed is the only secret it holds. The libp2p `PeerId`, the iroh `EndpointId` and the
//! receipt signer are all derived from it (see `popmesh-transport`'s `identity` module and the test that shows the
//! three agree). The seed itself comes from the caller: this crate never reads OS randomness.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Milliseconds since the Unix epoch, as read by the caller's clock. The core never reads a clock itself.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    pub const fn saturating_add_ms(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    pub const fn saturating_sub(self, other: Self) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

/// The public half of a device key: its identity on the mesh and on receipts.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceId(pub [u8; 32]);

/// The public half of an authority or invite key.
pub type PublicKey = DeviceId;

impl DeviceId {
    pub fn to_hex(&self) -> String {
        hex_encode(&self.0)
    }

    /// The first eight hex digits, for logs and tables.
    pub fn short(&self) -> String {
        hex_encode(&self.0[..4])
    }

    pub fn from_hex(s: &str) -> Result<Self, IdError> {
        hex_decode(s).map(Self)
    }

    /// Checks an ed25519 signature made by this key over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> Result<(), BadSignature> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| BadSignature)?;
        key.verify(msg, &Signature::from_bytes(sig))
            .map_err(|_| BadSignature)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.short())
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("signature does not verify")]
pub struct BadSignature;

/// A hex identifier could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    #[error("expected {expected} hex digits, found {found}")]
    WrongLength { expected: usize, found: usize },
    #[error("'{0}' is not a hex digit")]
    NotHex(char),
}

/// An ed25519 signing key: a device key, the site authority key, or an invite key.
///
/// The key is zeroized on drop; `Debug` shows only the public half.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

/// The key a device holds.
pub type DeviceKey = SecretKey;

impl SecretKey {
    /// Builds the key from a 32-byte seed the caller drew from a secure random source (or, in the simulator, from
    /// the run's seed).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// The 32-byte seed, for persisting the key and for deriving the libp2p and iroh identities.
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public(&self) -> DeviceId {
        DeviceId(self.0.verifying_key().to_bytes())
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public().short())
    }
}

/// A site's identifier: the BLAKE3 hash of its authority public key, so it cannot be chosen to collide.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SiteId(pub [u8; 16]);

impl SiteId {
    pub fn for_authority(authority: &PublicKey) -> Self {
        let hash = blake3::derive_key("popmesh site id v1", &authority.0);
        let mut id = [0u8; 16];
        id.copy_from_slice(&hash[..16]);
        Self(id)
    }

    pub fn to_hex(&self) -> String {
        hex_encode(&self.0)
    }
}

impl fmt::Debug for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SiteId({})", self.to_hex())
    }
}

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// What a device does at the site. The role is part of its enrollment certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Kiosk,
    Pos,
    Edge,
    Origin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Kiosk, Role::Pos, Role::Edge, Role::Origin];

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Kiosk => "kiosk",
            Role::Pos => "pos",
            Role::Edge => "edge",
            Role::Origin => "origin",
        }
    }

    pub(crate) const fn code(self) -> u8 {
        match self {
            Role::Kiosk => 1,
            Role::Pos => 2,
            Role::Edge => 3,
            Role::Origin => 4,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role '{s}': expected one of kiosk, pos, edge, origin"))
    }
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// Parses exactly `2 * N` hex digits.
pub fn hex_decode<const N: usize>(s: &str) -> Result<[u8; N], IdError> {
    if s.len() != 2 * N {
        return Err(IdError::WrongLength {
            expected: 2 * N,
            found: s.len(),
        });
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(IdError::NotHex(c));
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| IdError::NotHex('?'))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_id_round_trips_through_hex_and_verifies_its_signatures() {
        let key = SecretKey::from_seed([7; 32]);
        let id = key.public();
        assert_eq!(DeviceId::from_hex(&id.to_hex()), Ok(id));
        let sig = key.sign(b"hello");
        assert_eq!(id.verify(b"hello", &sig), Ok(()));
        assert_eq!(id.verify(b"hellO", &sig), Err(BadSignature));
        assert!(DeviceId::from_hex("zz").is_err());
    }

    #[test]
    fn the_same_seed_gives_the_same_key_on_any_device() {
        assert_eq!(
            SecretKey::from_seed([1; 32]).public(),
            SecretKey::from_seed([1; 32]).public()
        );
        assert_eq!(SecretKey::from_seed([9; 32]).seed(), [9; 32]);
    }
}
