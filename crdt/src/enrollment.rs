//! Enrollment: who may join a site, proven offline.
//!
//! The site authority key signs an [`EnrollmentCert`] binding a device key to a role and a validity window. To let a
//! new device enroll itself while the issuer is offline, the authority signs an [`Invite`] for a fresh *invite key*
//! and hands out a [`JoinToken`] that carries the invite and its secret: the new device signs its own certificate
//! with the invite key. The chain `authority -> invite -> device` verifies anywhere that knows the authority's public
//! key. An invite has an expiry and a use limit; the use limit is enforced by the site directory, which counts the
//! devices enrolled under each invite (see `directory`). Either kind of key can be revoked by an authority-signed
//! [`Revocation`] that travels in the directory.

use base64::Engine as _;
use thiserror::Error;

use crate::codec::{DecodeError, Decoder, Encoder, tag};
use crate::identity::{DeviceId, PublicKey, Role, SecretKey, SiteId, UnixMillis};

const CERT_VERSION: u8 = 1;
const INVITE_VERSION: u8 = 1;
const TOKEN_VERSION: u8 = 1;
const TOKEN_PREFIX: &str = "popmesh-join1.";
/// Bootstrap addresses a join token may carry.
pub const TOKEN_BOOTSTRAP_MAX: usize = 16;

/// Why an identity, certificate or invite is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TrustError {
    #[error("{what} belongs to site {found}, not this site {expected}")]
    WrongSite {
        what: &'static str,
        expected: SiteId,
        found: SiteId,
    },
    #[error("the signature on the {what} does not verify")]
    BadSignature { what: &'static str },
    #[error("device {0} is not enrolled at this site")]
    UnknownDevice(String),
    #[error("the certificate is for device {cert}, but the peer authenticated as {peer}")]
    NotTheirCertificate { cert: String, peer: String },
    #[error("device {device} was revoked at {at} ms: {reason}")]
    DeviceRevoked {
        device: String,
        at: u64,
        reason: String,
    },
    #[error(
        "receipt {seq} of show '{show}' was issued by device {device} after its revocation took effect \
         (the authority honours its receipts up to {honoured} there): {reason}"
    )]
    IssuedAfterRevocation {
        device: String,
        show: String,
        seq: u64,
        honoured: u64,
        reason: String,
    },
    #[error("invite {invite} was revoked at {at} ms: {reason}")]
    InviteRevoked {
        invite: String,
        at: u64,
        reason: String,
    },
    #[error("the invite expired at {expired_at} ms (now {now} ms)")]
    InviteExpired { expired_at: u64, now: u64 },
    #[error("the invite allows {max_uses} devices and device {device} would be one more")]
    InviteOverused { max_uses: u32, device: String },
    #[error("the certificate claims role {cert} but its invite is for role {invite}")]
    RoleMismatch { cert: Role, invite: Role },
    #[error("the certificate is valid from {not_before} ms to {not_after} ms, not at {at} ms")]
    OutsideValidity {
        not_before: u64,
        not_after: u64,
        at: u64,
    },
    #[error("malformed {what}: {source}")]
    Malformed {
        what: &'static str,
        source: DecodeError,
    },
}

/// Who signed a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issuer {
    /// The site authority key, directly.
    Authority,
    /// An invite key that the authority vouched for.
    Invite(Box<Invite>),
}

/// The authority's (or an invite's) statement that a device key belongs to the site with a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentCert {
    pub site: SiteId,
    pub device: PublicKey,
    pub role: Role,
    /// A human label, such as `kiosk-2`.
    pub name: String,
    pub not_before: UnixMillis,
    pub not_after: UnixMillis,
    pub issuer: Issuer,
    pub signature: [u8; 64],
}

impl EnrollmentCert {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut enc = Encoder::new(tag::CERT, CERT_VERSION);
        enc.array(&self.site.0)
            .array(&self.device.0)
            .u8(self.role.code())
            .str(&self.name)
            .u64(self.not_before.0)
            .u64(self.not_after.0);
        match &self.issuer {
            Issuer::Authority => enc.u8(0),
            Issuer::Invite(invite) => enc.u8(1).bytes(&invite.to_bytes()),
        };
        enc.finish()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.signed_bytes();
        bytes.extend_from_slice(&self.signature);
        bytes
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TrustError> {
        let malformed = |source| TrustError::Malformed {
            what: "enrollment certificate",
            source,
        };
        let mut dec = Decoder::new(bytes, "enrollment certificate", tag::CERT, CERT_VERSION)
            .map_err(malformed)?;
        let site = SiteId(dec.array("site").map_err(malformed)?);
        let device = DeviceId(dec.array("device").map_err(malformed)?);
        let role = decode_role(&mut dec).map_err(malformed)?;
        let name = dec.string("name").map_err(malformed)?;
        let not_before = UnixMillis(dec.u64("not_before").map_err(malformed)?);
        let not_after = UnixMillis(dec.u64("not_after").map_err(malformed)?);
        let issuer = match dec.u8("issuer").map_err(malformed)? {
            0 => Issuer::Authority,
            1 => Issuer::Invite(Box::new(Invite::from_bytes(
                dec.bytes("invite").map_err(malformed)?,
            )?)),
            other => {
                return Err(malformed(DecodeError::InvalidValue {
                    field: "issuer",
                    value: other.into(),
                }));
            }
        };
        let signature = dec.array("signature").map_err(malformed)?;
        dec.finish().map_err(malformed)?;
        Ok(Self {
            site,
            device,
            role,
            name,
            not_before,
            not_after,
            issuer,
            signature,
        })
    }

    /// Checks the signature chain back to `authority` for `site`. Validity windows, revocation and invite use
    /// limits are the directory's business ([`crate::directory::Directory::verify_device`]).
    pub fn verify_chain(&self, authority: &PublicKey, site: SiteId) -> Result<(), TrustError> {
        if self.site != site {
            return Err(TrustError::WrongSite {
                what: "certificate",
                expected: site,
                found: self.site,
            });
        }
        let signer = match &self.issuer {
            Issuer::Authority => *authority,
            Issuer::Invite(invite) => {
                invite.verify(authority, site)?;
                if invite.role != self.role {
                    return Err(TrustError::RoleMismatch {
                        cert: self.role,
                        invite: invite.role,
                    });
                }
                if self.not_before > invite.expires_at {
                    return Err(TrustError::InviteExpired {
                        expired_at: invite.expires_at.0,
                        now: self.not_before.0,
                    });
                }
                if self.not_after > invite.cert_valid_until {
                    return Err(TrustError::OutsideValidity {
                        not_before: self.not_before.0,
                        not_after: invite.cert_valid_until.0,
                        at: self.not_after.0,
                    });
                }
                invite.invite_key
            }
        };
        signer
            .verify(&self.signed_bytes(), &self.signature)
            .map_err(|_| TrustError::BadSignature {
                what: "enrollment certificate",
            })
    }

    /// The invite key this certificate was enrolled under, if any.
    pub fn invite_key(&self) -> Option<PublicKey> {
        match &self.issuer {
            Issuer::Authority => None,
            Issuer::Invite(invite) => Some(invite.invite_key),
        }
    }

    pub fn check_valid_at(&self, at: UnixMillis) -> Result<(), TrustError> {
        if at < self.not_before || at > self.not_after {
            return Err(TrustError::OutsideValidity {
                not_before: self.not_before.0,
                not_after: self.not_after.0,
                at: at.0,
            });
        }
        Ok(())
    }
}

/// The authority's permission for the holder of `invite_key` to enroll up to `max_uses` devices of one role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    pub site: SiteId,
    pub invite_key: PublicKey,
    pub role: Role,
    /// No device may enroll under this invite after this time.
    pub expires_at: UnixMillis,
    pub max_uses: u32,
    /// Certificates issued under this invite expire no later than this.
    pub cert_valid_until: UnixMillis,
    pub signature: [u8; 64],
}

impl Invite {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut enc = Encoder::new(tag::INVITE, INVITE_VERSION);
        enc.array(&self.site.0)
            .array(&self.invite_key.0)
            .u8(self.role.code())
            .u64(self.expires_at.0)
            .u32(self.max_uses)
            .u64(self.cert_valid_until.0);
        enc.finish()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.signed_bytes();
        bytes.extend_from_slice(&self.signature);
        bytes
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TrustError> {
        let malformed = |source| TrustError::Malformed {
            what: "invite",
            source,
        };
        let mut dec =
            Decoder::new(bytes, "invite", tag::INVITE, INVITE_VERSION).map_err(malformed)?;
        let invite = Self {
            site: SiteId(dec.array("site").map_err(malformed)?),
            invite_key: DeviceId(dec.array("invite_key").map_err(malformed)?),
            role: decode_role(&mut dec).map_err(malformed)?,
            expires_at: UnixMillis(dec.u64("expires_at").map_err(malformed)?),
            max_uses: dec.u32("max_uses").map_err(malformed)?,
            cert_valid_until: UnixMillis(dec.u64("cert_valid_until").map_err(malformed)?),
            signature: dec.array("signature").map_err(malformed)?,
        };
        dec.finish().map_err(malformed)?;
        Ok(invite)
    }

    pub fn verify(&self, authority: &PublicKey, site: SiteId) -> Result<(), TrustError> {
        if self.site != site {
            return Err(TrustError::WrongSite {
                what: "invite",
                expected: site,
                found: self.site,
            });
        }
        authority
            .verify(&self.signed_bytes(), &self.signature)
            .map_err(|_| TrustError::BadSignature { what: "invite" })
    }
}

pub use revocation::{HONOURED_SHOWS_MAX, Revocation, RevocationTarget};

mod revocation;

/// The site authority: the key that roots all trust at a site. It lives on the device that ran `site init`.
#[derive(Debug, Clone)]
pub struct SiteAuthority {
    key: SecretKey,
    site: SiteId,
}

impl SiteAuthority {
    pub fn new(key: SecretKey) -> Self {
        let site = SiteId::for_authority(&key.public());
        Self { key, site }
    }

    pub fn site(&self) -> SiteId {
        self.site
    }

    pub fn public(&self) -> PublicKey {
        self.key.public()
    }

    pub fn secret(&self) -> &SecretKey {
        &self.key
    }

    /// Enrolls a device directly.
    pub fn enroll(
        &self,
        device: PublicKey,
        role: Role,
        name: &str,
        not_before: UnixMillis,
        not_after: UnixMillis,
    ) -> EnrollmentCert {
        let mut cert = EnrollmentCert {
            site: self.site,
            device,
            role,
            name: name.to_owned(),
            not_before,
            not_after,
            issuer: Issuer::Authority,
            signature: [0; 64],
        };
        cert.signature = self.key.sign(&cert.signed_bytes());
        cert
    }

    /// Creates an invite for a fresh invite key (whose seed the caller drew) and returns the signed invite with
    /// that key.
    pub fn invite(&self, invite_seed: [u8; 32], terms: InviteTerms) -> (Invite, SecretKey) {
        let invite_key = SecretKey::from_seed(invite_seed);
        let mut invite = Invite {
            site: self.site,
            invite_key: invite_key.public(),
            role: terms.role,
            expires_at: terms.expires_at,
            max_uses: terms.max_uses,
            cert_valid_until: terms.cert_valid_until,
            signature: [0; 64],
        };
        invite.signature = self.key.sign(&invite.signed_bytes());
        (invite, invite_key)
    }

    pub fn revoke(&self, target: RevocationTarget, at: UnixMillis, reason: &str) -> Revocation {
        self.revoke_honouring(target, at, reason, std::collections::BTreeMap::new())
    }

    /// A revocation that keeps the receipts the device issued up to `honoured` (show -> last sequence number)
    /// valid: what `site revoke` signs with the sequence numbers the authority's device has seen.
    pub fn revoke_honouring(
        &self,
        target: RevocationTarget,
        at: UnixMillis,
        reason: &str,
        honoured: std::collections::BTreeMap<String, u64>,
    ) -> Revocation {
        let mut revocation = Revocation {
            site: self.site,
            target,
            at,
            reason: reason.to_owned(),
            honoured,
            signature: [0; 64],
        };
        revocation.signature = self.key.sign(&revocation.signed_bytes());
        revocation
    }
}

/// What an invite allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InviteTerms {
    pub role: Role,
    pub expires_at: UnixMillis,
    pub max_uses: u32,
    pub cert_valid_until: UnixMillis,
}

/// Everything a new device needs to enroll itself and find the site, as one line of text.
///
/// It holds the invite key's secret and the site's pre-shared network key: treat it like a password.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub site_name: String,
    pub authority: PublicKey,
    pub invite: Invite,
    pub invite_secret: [u8; 32],
    /// The site's pre-shared key for the private network (libp2p pnet).
    pub network_key: [u8; 32],
    /// Addresses to dial besides mDNS discovery, as multiaddr strings.
    pub bootstrap: Vec<String>,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("site_name", &self.site_name)
            .field("invite", &self.invite.invite_key)
            .field("role", &self.invite.role)
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// The one-line text form: a prefix and URL-safe base64 of the canonical encoding.
    pub fn to_line(&self) -> String {
        let mut enc = Encoder::new(tag::JOIN_TOKEN, TOKEN_VERSION);
        enc.str(&self.site_name)
            .array(&self.authority.0)
            .bytes(&self.invite.to_bytes())
            .array(&self.invite_secret)
            .array(&self.network_key)
            .u32(u32::try_from(self.bootstrap.len()).unwrap_or(u32::MAX));
        for addr in &self.bootstrap {
            enc.str(addr);
        }
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(enc.finish());
        format!("{TOKEN_PREFIX}{b64}")
    }

    pub fn from_line(line: &str) -> Result<Self, TokenError> {
        let body = line
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::NotAToken)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::NotBase64)?;
        let mut dec = Decoder::new(&bytes, "join token", tag::JOIN_TOKEN, TOKEN_VERSION)?;
        let site_name = dec.string("site_name")?;
        let authority = DeviceId(dec.array("authority")?);
        let invite = Invite::from_bytes(dec.bytes("invite")?)?;
        let invite_secret = dec.array("invite_secret")?;
        let network_key = dec.array("network_key")?;
        let count = dec.u32("bootstrap")? as usize;
        if count > TOKEN_BOOTSTRAP_MAX {
            return Err(DecodeError::TooLong {
                field: "bootstrap",
                len: count,
                max: TOKEN_BOOTSTRAP_MAX,
            }
            .into());
        }
        let bootstrap = (0..count)
            .map(|_| dec.string("bootstrap"))
            .collect::<Result<_, _>>()?;
        dec.finish()?;
        let token = Self {
            site_name,
            authority,
            invite,
            invite_secret,
            network_key,
            bootstrap,
        };
        let site = SiteId::for_authority(&token.authority);
        token.invite.verify(&token.authority, site)?;
        if SecretKey::from_seed(token.invite_secret).public() != token.invite.invite_key {
            return Err(TokenError::KeyMismatch);
        }
        Ok(token)
    }

    pub fn site(&self) -> SiteId {
        SiteId::for_authority(&self.authority)
    }

    /// Signs a certificate for `device` with the invite key. Fails if the invite has expired by `now`.
    ///
    /// The certificate is valid from [`CERT_BACKDATE_MS`] before `now`: the joining device's clock may run ahead
    /// of its peers' (the simulator found a kiosk five minutes fast refused by every peer until their clocks
    /// caught up).
    ///
    /// The use limit cannot be checked here (the issuer may be offline): the site directory enforces it when the
    /// certificate arrives.
    pub fn enroll(
        &self,
        device: PublicKey,
        name: &str,
        now: UnixMillis,
    ) -> Result<EnrollmentCert, TrustError> {
        if now > self.invite.expires_at {
            return Err(TrustError::InviteExpired {
                expired_at: self.invite.expires_at.0,
                now: now.0,
            });
        }
        let mut cert = EnrollmentCert {
            site: self.invite.site,
            device,
            role: self.invite.role,
            name: name.to_owned(),
            not_before: UnixMillis(now.0.saturating_sub(CERT_BACKDATE_MS)),
            not_after: self.invite.cert_valid_until,
            issuer: Issuer::Invite(Box::new(self.invite.clone())),
            signature: [0; 64],
        };
        cert.signature = SecretKey::from_seed(self.invite_secret).sign(&cert.signed_bytes());
        Ok(cert)
    }
}

/// How long before its issue a certificate from a join token is valid: more than the clock skew between two
/// devices a site tolerates (each up to `access::CLOCK_SKEW_MS` off), as certificate authorities backdate
/// `notBefore` for the same reason.
pub const CERT_BACKDATE_MS: u64 = 60 * 60_000;

/// Why a line of text is not a usable join token.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    #[error("not a popmesh join token (it should start with '{TOKEN_PREFIX}')")]
    NotAToken,
    #[error("the join token is damaged: its body is not URL-safe base64")]
    NotBase64,
    #[error("the join token is damaged: {0}")]
    Malformed(#[from] DecodeError),
    #[error("the join token's invite is not valid: {0}")]
    Untrusted(#[from] TrustError),
    #[error("the join token's secret does not match its invite key")]
    KeyMismatch,
}

fn decode_role(dec: &mut Decoder<'_>) -> Result<Role, DecodeError> {
    let code = dec.u8("role")?;
    Role::from_code(code).ok_or(DecodeError::InvalidValue {
        field: "role",
        value: code.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;

    fn site() -> SiteAuthority {
        SiteAuthority::new(SecretKey::from_seed([1; 32]))
    }

    fn terms(role: Role) -> InviteTerms {
        InviteTerms {
            role,
            expires_at: UnixMillis(DAY),
            max_uses: 2,
            cert_valid_until: UnixMillis(10 * DAY),
        }
    }

    #[test]
    fn the_authority_enrolls_a_kiosk_directly() {
        let site = site();
        let kiosk = SecretKey::from_seed([2; 32]).public();
        let cert = site.enroll(
            kiosk,
            Role::Kiosk,
            "kiosk-1",
            UnixMillis(0),
            UnixMillis(DAY),
        );
        let cert = EnrollmentCert::from_bytes(&cert.to_bytes()).expect("round trip");
        assert_eq!(cert.verify_chain(&site.public(), site.site()), Ok(()));
        assert_eq!(cert.check_valid_at(UnixMillis(5)), Ok(()));
        assert!(cert.check_valid_at(UnixMillis(DAY + 1)).is_err());
    }

    /// A join token of the Harbour Market site for a device of `role`.
    fn token(role: Role) -> JoinToken {
        let site = site();
        let (invite, secret) = site.invite([3; 32], terms(role));
        JoinToken {
            site_name: "Harbour Market".into(),
            authority: site.public(),
            invite,
            invite_secret: secret.seed(),
            network_key: [9; 32],
            bootstrap: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        }
    }

    #[test]
    fn a_pos_enrolls_itself_from_a_join_token_while_the_issuer_is_offline() {
        let site = site();
        let token = JoinToken::from_line(&token(Role::Pos).to_line()).expect("token parses");
        assert_eq!(token.site(), site.site());

        let pos = SecretKey::from_seed([4; 32]).public();
        let cert = token
            .enroll(pos, "pos-1", UnixMillis(1000))
            .expect("enrolls");
        assert_eq!(cert.role, Role::Pos);
        assert_eq!(cert.verify_chain(&site.public(), site.site()), Ok(()));
    }

    #[test]
    fn a_kiosk_whose_clock_runs_ten_minutes_fast_is_trusted_by_a_peer_whose_clock_is_right() {
        let token = token(Role::Kiosk);
        let right = UnixMillis(2 * 3_600_000);
        let fast = UnixMillis(right.0 + 10 * 60_000);
        let cert = token
            .enroll(SecretKey::from_seed([4; 32]).public(), "kiosk-9", fast)
            .expect("enrolls");
        assert_eq!(
            cert.check_valid_at(right),
            Ok(()),
            "valid on a peer whose clock is right"
        );
    }

    #[test]
    fn an_expired_invite_enrolls_nobody() {
        let site = site();
        let (invite, secret) = site.invite([3; 32], terms(Role::Kiosk));
        let token = JoinToken {
            site_name: "s".into(),
            authority: site.public(),
            invite,
            invite_secret: secret.seed(),
            network_key: [0; 32],
            bootstrap: vec![],
        };
        let late = UnixMillis(DAY + 1);
        assert!(matches!(
            token.enroll(SecretKey::from_seed([5; 32]).public(), "k", late),
            Err(TrustError::InviteExpired { .. })
        ));
    }

    #[test]
    fn a_certificate_that_upgrades_its_invites_role_is_refused() {
        let site = site();
        let (invite, secret) = site.invite([3; 32], terms(Role::Kiosk));
        let token = JoinToken {
            site_name: "s".into(),
            authority: site.public(),
            invite,
            invite_secret: secret.seed(),
            network_key: [0; 32],
            bootstrap: vec![],
        };
        let mut cert = token
            .enroll(SecretKey::from_seed([5; 32]).public(), "k", UnixMillis(1))
            .expect("enrolls");
        cert.role = Role::Origin;
        cert.signature = secret.sign(&cert.signed_bytes());
        assert!(matches!(
            cert.verify_chain(&site.public(), site.site()),
            Err(TrustError::RoleMismatch { .. })
        ));
    }

    #[test]
    fn a_certificate_from_another_sites_authority_is_refused() {
        let ours = site();
        let theirs = SiteAuthority::new(SecretKey::from_seed([8; 32]));
        let cert = theirs.enroll(
            SecretKey::from_seed([2; 32]).public(),
            Role::Kiosk,
            "k",
            UnixMillis(0),
            UnixMillis(DAY),
        );
        assert!(matches!(
            cert.verify_chain(&ours.public(), ours.site()),
            Err(TrustError::WrongSite { .. })
        ));
        let mut forged = cert;
        forged.site = ours.site();
        assert_eq!(
            forged.verify_chain(&ours.public(), ours.site()),
            Err(TrustError::BadSignature {
                what: "enrollment certificate"
            })
        );
    }

    #[test]
    fn damaged_tokens_say_what_is_wrong() {
        assert_eq!(JoinToken::from_line("hello"), Err(TokenError::NotAToken));
        assert_eq!(
            JoinToken::from_line("popmesh-join1.!!!"),
            Err(TokenError::NotBase64)
        );
        assert!(matches!(
            JoinToken::from_line("popmesh-join1.AAAA"),
            Err(TokenError::Malformed(_))
        ));
    }
}
