//! Offline access: short-lived passes an edge box (or the origin) signs for staff and attendees, which every
//! device checks without a network, and the show's access document that travels through the mesh with the
//! revocations, check-ins and the origin's confirmations.
//!
//! A pass is checked against the site directory (its issuer must be an enrolled edge box or origin, not revoked)
//! and against the access document this device holds: a revoked pass is refused as soon as the revocation has
//! synced here, an attendee pass admits once (a check-in anywhere the device has heard of refuses the next), and a
//! pass whose check-in the origin has confirmed is retired. Only the device that owns a container writes into it:
//! `revoked/{device}` and `checkins/{device}` per device, `confirmed` by the origin.

use std::borrow::{Borrow, BorrowMut};
use std::collections::BTreeMap;

use automerge::{ActorId, Automerge};
use autosurgeon::{Hydrate, Reconcile};
use thiserror::Error;

use crate::codec::{DecodeError, Decoder, Encoder, Window, check_window, from_line, tag, to_line};
use crate::directory::DirectoryView;
use crate::doc::{Doc, DocError, Schema};
use crate::identity::{DeviceId, DeviceKey, SiteId, UnixMillis, hex_encode};

/// The longest a pass may be valid for.
pub const PASS_VALID_MS_MAX: u64 = 24 * 3_600_000;

/// How far a pass's issue time may be ahead of the checking device's clock (clocks at a site drift).
pub const CLOCK_SKEW_MS: u64 = 5 * 60_000;

/// Bytes of a pass's subject (a pseudonymous attendee or staff id, never a name).
pub const SUBJECT_BYTES_MAX: usize = crate::privacy::PSEUDONYM_BYTES_MAX;

const PASS_VERSION: u8 = 1;
const TEXT_PREFIX: &str = "popmesh-pass1.";
/// A pass's text is a few hundred characters; a longer one is not decoded.
const TEXT_CHARS_MAX: usize = 16 * 1024;

/// Who a pass is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PassKind {
    /// Staff: checks in as often as needed while valid.
    Staff,
    /// An attendee: admits once.
    Attendee,
}

impl PassKind {
    fn code(self) -> u8 {
        match self {
            PassKind::Staff => 1,
            PassKind::Attendee => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(PassKind::Staff),
            2 => Some(PassKind::Attendee),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PassKind::Staff => "staff",
            PassKind::Attendee => "attendee",
        }
    }
}

/// A signed pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    pub site: SiteId,
    /// Random, drawn by the issuer.
    pub id: [u8; 16],
    pub show: String,
    pub kind: PassKind,
    pub subject: String,
    pub issuer: DeviceId,
    pub issued_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub signature: [u8; 64],
}

/// Why a pass is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AccessError {
    #[error("not a pass: {0}")]
    Malformed(String),
    #[error("the pass belongs to another site")]
    WrongSite,
    #[error("the pass is for show {found:?}, not {expected:?}")]
    WrongShow { expected: String, found: String },
    #[error("the pass's signature does not verify (forged or altered)")]
    BadSignature,
    #[error("the pass's issuer may not issue passes: {0}")]
    Issuer(String),
    #[error("the pass expired {ago_s} s ago")]
    Expired { ago_s: u64 },
    #[error("the pass is not valid yet (issued {ahead_s} s in this device's future)")]
    NotYetValid { ahead_s: u64 },
    #[error("the pass was revoked by {by}: {reason}")]
    Revoked { by: String, reason: String },
    #[error("the pass is retired: the origin confirmed its check-in")]
    Retired,
    #[error("the attendee pass was already used: checked in at {device} at {at}")]
    AlreadyUsed { device: String, at: u64 },
    #[error("a pass is valid for 1 s to {} h", PASS_VALID_MS_MAX / 3_600_000)]
    BadValidity,
    #[error("subject: {0}")]
    BadSubject(crate::privacy::PrivacyError),
}

impl Pass {
    /// Signs a pass. `id` comes from the caller's random source.
    #[allow(clippy::too_many_arguments)]
    pub fn issue(
        key: &DeviceKey,
        site: SiteId,
        id: [u8; 16],
        show: &str,
        kind: PassKind,
        subject: &str,
        now: UnixMillis,
        valid_ms: u64,
    ) -> Result<Self, AccessError> {
        if valid_ms == 0 || valid_ms > PASS_VALID_MS_MAX {
            return Err(AccessError::BadValidity);
        }
        crate::privacy::check_pseudonym(subject).map_err(AccessError::BadSubject)?;
        let mut pass = Self {
            site,
            id,
            show: show.to_owned(),
            kind,
            subject: subject.to_owned(),
            issuer: key.public(),
            issued_at: now,
            expires_at: UnixMillis(now.0.saturating_add(valid_ms)),
            signature: [0; 64],
        };
        pass.signature = key.sign(&pass.signed_bytes());
        Ok(pass)
    }

    pub fn id_hex(&self) -> String {
        hex_encode(&self.id)
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut enc = Encoder::new(tag::ACCESS, PASS_VERSION);
        enc.array(&self.site.0)
            .array(&self.id)
            .str(&self.show)
            .u8(self.kind.code())
            .str(&self.subject)
            .array(&self.issuer.0)
            .u64(self.issued_at.0)
            .u64(self.expires_at.0);
        enc.finish()
    }

    /// The one-line form a QR code or an NFC tag carries.
    pub fn to_text(&self) -> String {
        let mut bytes = self.signed_bytes();
        bytes.extend_from_slice(&self.signature);
        to_line(TEXT_PREFIX, &bytes)
    }

    pub fn from_text(text: &str) -> Result<Self, AccessError> {
        let bad = |e: String| AccessError::Malformed(e);
        let bytes = from_line(text, TEXT_PREFIX, TEXT_CHARS_MAX).map_err(bad)?;
        let parse = || -> Result<Self, DecodeError> {
            let mut dec = Decoder::new(&bytes, "pass", tag::ACCESS, PASS_VERSION)?;
            let site = SiteId(dec.array("site")?);
            let id = dec.array("id")?;
            let show = dec.string("show")?;
            let kind = dec.u8("kind")?;
            let pass = Self {
                site,
                id,
                show,
                kind: PassKind::from_code(kind).unwrap_or(PassKind::Attendee),
                subject: dec.string("subject")?,
                issuer: DeviceId(dec.array("issuer")?),
                issued_at: UnixMillis(dec.u64("issued_at")?),
                expires_at: UnixMillis(dec.u64("expires_at")?),
                signature: dec.array("signature")?,
            };
            dec.finish()?;
            if PassKind::from_code(kind).is_none() {
                return Err(DecodeError::InvalidValue {
                    field: "kind",
                    value: u64::from(kind),
                });
            }
            Ok(pass)
        };
        parse().map_err(|e| bad(e.to_string()))
    }

    /// Checks the pass offline: the site, the signature, an issuer that is an enrolled, unrevoked edge box or
    /// origin, the validity window, and what the access document says (revoked, retired, already used).
    pub fn check(
        &self,
        directory: &DirectoryView,
        access: &AccessRecord,
        show: &str,
        now: UnixMillis,
    ) -> Result<(), AccessError> {
        if self.site != directory.site {
            return Err(AccessError::WrongSite);
        }
        if self.show != show {
            return Err(AccessError::WrongShow {
                expected: show.to_owned(),
                found: self.show.clone(),
            });
        }
        self.issuer
            .verify(&self.signed_bytes(), &self.signature)
            .map_err(|_| AccessError::BadSignature)?;
        directory
            .verify_grant_issuer(&self.issuer, self.issued_at)
            .map_err(AccessError::Issuer)?;
        check_window(
            self.issued_at.0,
            self.expires_at.0,
            PASS_VALID_MS_MAX,
            CLOCK_SKEW_MS,
            now.0,
        )
        .map_err(|w| match w {
            Window::Invalid => AccessError::BadValidity,
            Window::NotYet { ahead_s } => AccessError::NotYetValid { ahead_s },
            Window::Expired { ago_s } => AccessError::Expired { ago_s },
        })?;
        let id = self.id_hex();
        if let Some((by, r)) = access
            .revoked
            .iter()
            .find_map(|(by, list)| list.get(&id).map(|r| (by, r)))
        {
            return Err(AccessError::Revoked {
                by: by.clone(),
                reason: r.reason.clone(),
            });
        }
        if access.confirmed.contains_key(&id) {
            return Err(AccessError::Retired);
        }
        if self.kind == PassKind::Attendee
            && let Some((device, c)) = access
                .checkins
                .iter()
                .filter_map(|(device, list)| list.get(&id).map(|c| (device, c)))
                .min_by_key(|(_, c)| c.at)
        {
            return Err(AccessError::AlreadyUsed {
                device: device.clone(),
                at: c.at,
            });
        }
        Ok(())
    }
}

/// The show's access document.
#[derive(Debug)]
pub struct Access;

impl Schema for Access {
    const KIND: &'static str = "popmesh.access";
    const VERSION: u64 = 1;
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Reconcile, Hydrate)]
pub struct AccessRecord {
    pub show: String,
    /// Revoking device (hex) -> pass id (hex) -> why.
    #[autosurgeon(hydrate = "crate::doc::lenient_map")]
    pub revoked: BTreeMap<String, BTreeMap<String, Revoked>>,
    /// Checking device (hex) -> pass id (hex) -> the check-in.
    #[autosurgeon(hydrate = "crate::doc::lenient_map")]
    pub checkins: BTreeMap<String, BTreeMap<String, CheckIn>>,
    /// Pass id (hex) -> when the origin confirmed its check-in (the pass is retired).
    #[autosurgeon(hydrate = "crate::doc::lenient_map")]
    pub confirmed: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate)]
pub struct Revoked {
    pub at: u64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate)]
pub struct CheckIn {
    pub at: u64,
    /// `staff` or `attendee`.
    pub kind: String,
    /// The pass's issuer and expiry, so the origin can account for it without the pass itself.
    pub issuer: String,
    pub expires_at: u64,
    /// An attendee pass's pseudonymous subject (for conversion and retention in the show report); none for staff.
    #[autosurgeon(missing = "Option::default")]
    pub subject: Option<String>,
}

impl Doc<Access> {
    /// Created with the show by its creator, with every shared container in place.
    pub fn create_access(actor: ActorId, show: &str) -> Result<Self, DocError> {
        Doc::create(
            actor,
            &AccessRecord {
                show: show.to_owned(),
                ..AccessRecord::default()
            },
        )
    }
}

impl<D: Borrow<Automerge>> Doc<Access, D> {
    pub fn record(&self) -> Result<AccessRecord, DocError> {
        self.read()
    }
}

impl<D: BorrowMut<Automerge>> Doc<Access, D> {
    /// Records this device's check-in of a pass it has checked.
    pub fn check_in(
        &mut self,
        device: &DeviceId,
        pass: &Pass,
        now: UnixMillis,
    ) -> Result<(), DocError> {
        let mine = device.to_hex();
        let mut list = self.record()?.checkins.remove(&mine).unwrap_or_default();
        list.insert(
            pass.id_hex(),
            CheckIn {
                at: now.0,
                kind: pass.kind.as_str().to_owned(),
                issuer: pass.issuer.to_hex(),
                expires_at: pass.expires_at.0,
                subject: (pass.kind == PassKind::Attendee).then(|| pass.subject.clone()),
            },
        );
        self.write_at(&["checkins"], &mine, &list)
    }

    /// Revokes a pass (by id), as `device`.
    pub fn revoke(
        &mut self,
        device: &DeviceId,
        id: &str,
        reason: &str,
        now: UnixMillis,
    ) -> Result<(), DocError> {
        let mine = device.to_hex();
        let mut list = self.record()?.revoked.remove(&mine).unwrap_or_default();
        list.insert(
            id.to_owned(),
            Revoked {
                at: now.0,
                reason: reason.to_owned(),
            },
        );
        self.write_at(&["revoked"], &mine, &list)
    }

    /// The origin confirms every check-in it holds that is not confirmed yet; returns how many.
    pub fn confirm_checkins(&mut self, now: UnixMillis) -> Result<usize, DocError> {
        let record = self.record()?;
        let fresh: Vec<String> = record
            .checkins
            .values()
            .flat_map(|list| list.keys())
            .filter(|id| !record.confirmed.contains_key(*id))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for id in &fresh {
            self.write_at(&["confirmed"], id, &now.0)?;
        }
        Ok(fresh.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::Directory;
    use crate::doc::actor_id;
    use crate::enrollment::SiteAuthority;
    use crate::identity::Role;
    use crate::identity::SecretKey;

    struct World {
        view: DirectoryView,
        edge: SecretKey,
        kiosk: SecretKey,
        site: SiteId,
    }

    fn world() -> World {
        let authority = SiteAuthority::new(SecretKey::from_seed([9; 32]));
        let edge = SecretKey::from_seed([1; 32]);
        let kiosk = SecretKey::from_seed([2; 32]);
        let now = UnixMillis(1_000_000);
        let mut dir = Doc::<Directory>::create_site(
            actor_id(edge.public(), 0),
            authority.public(),
            "Harbour",
        )
        .expect("directory");
        for (key, role, name) in [
            (&edge, Role::Edge, "edge-1"),
            (&kiosk, Role::Kiosk, "kiosk-1"),
        ] {
            let cert = authority.enroll(
                key.public(),
                role,
                name,
                now,
                UnixMillis(now.0 + 30 * 86_400_000),
            );
            dir.add_device(&cert).expect("enroll");
        }
        World {
            view: dir.view().expect("view"),
            edge,
            kiosk,
            site: authority.site(),
        }
    }

    fn pass(w: &World, key: &SecretKey, kind: PassKind, id: u8, now: u64) -> Pass {
        Pass::issue(
            key,
            w.site,
            [id; 16],
            "fri",
            kind,
            "att-7f3a",
            UnixMillis(now),
            3_600_000,
        )
        .expect("issue")
    }

    #[test]
    fn an_attendee_pass_admits_once_anywhere_and_a_staff_pass_until_the_origin_retires_it() {
        let w = world();
        let now = UnixMillis(2_000_000);
        let mut access =
            Doc::<Access>::create_access(actor_id(w.edge.public(), 0), "fri").expect("doc");
        let attendee = Pass::from_text(&pass(&w, &w.edge, PassKind::Attendee, 1, now.0).to_text())
            .expect("text");
        let staff = pass(&w, &w.edge, PassKind::Staff, 2, now.0);
        let record = access.record().expect("read");
        attendee
            .check(&w.view, &record, "fri", now)
            .expect("first entry");
        access
            .check_in(&w.kiosk.public(), &attendee, now)
            .expect("check in");
        access
            .check_in(&w.kiosk.public(), &staff, now)
            .expect("check in");
        let record = access.record().expect("read");
        assert!(matches!(
            attendee.check(&w.view, &record, "fri", now),
            Err(AccessError::AlreadyUsed { .. })
        ));
        staff
            .check(&w.view, &record, "fri", now)
            .expect("staff again");
        assert_eq!(access.confirm_checkins(now).expect("confirm"), 2);
        assert_eq!(
            access.confirm_checkins(now).expect("confirm again"),
            0,
            "confirming twice writes nothing"
        );
        let record = access.record().expect("read");
        assert_eq!(
            staff.check(&w.view, &record, "fri", now),
            Err(AccessError::Retired)
        );
    }

    #[test]
    fn revoked_forged_expired_and_kiosk_issued_passes_are_refused_with_the_reason() {
        let w = world();
        let now = UnixMillis(2_000_000);
        let mut access =
            Doc::<Access>::create_access(actor_id(w.edge.public(), 0), "fri").expect("doc");
        let p = pass(&w, &w.edge, PassKind::Attendee, 3, now.0);
        access
            .revoke(&w.edge.public(), &p.id_hex(), "lost wristband", now)
            .expect("revoke");
        let record = access.record().expect("read");
        assert!(matches!(
            p.check(&w.view, &record, "fri", now),
            Err(AccessError::Revoked { reason, .. }) if reason == "lost wristband"
        ));
        let mut forged = pass(&w, &w.edge, PassKind::Staff, 4, now.0);
        forged.kind = PassKind::Attendee;
        forged.subject = "someone-else".into();
        assert_eq!(
            forged.check(&w.view, &record, "fri", now),
            Err(AccessError::BadSignature)
        );
        let late = UnixMillis(now.0 + 3_600_000);
        assert!(matches!(
            pass(&w, &w.edge, PassKind::Staff, 5, now.0).check(&w.view, &record, "fri", late),
            Err(AccessError::Expired { .. })
        ));
        assert!(matches!(
            pass(&w, &w.kiosk, PassKind::Staff, 6, now.0).check(&w.view, &record, "fri", now),
            Err(AccessError::Issuer(_))
        ));
        assert!(matches!(
            pass(&w, &w.edge, PassKind::Staff, 7, now.0).check(&w.view, &record, "sat", now),
            Err(AccessError::WrongShow { .. })
        ));
        assert!(matches!(
            Pass::from_text("popmesh-pass1.AAAA"),
            Err(AccessError::Malformed(_))
        ));
        assert_eq!(
            Pass::issue(
                &w.edge,
                w.site,
                [8; 16],
                "fri",
                PassKind::Staff,
                "",
                now,
                1000
            )
            .map(|_| ()),
            Err(AccessError::BadSubject(
                crate::privacy::PrivacyError::NotPseudonymous(String::new())
            ))
        );
    }
}
