//! The site directory: one small document per site naming its shows and slots, its enrolled devices and its
//! revocations. Every device holds it; it is the root of trust for everything else a device verifies offline.
//!
//! Certificates and revocations are stored as their canonical signed bytes, and every reader re-verifies them
//! against the authority key in the header, so a peer that writes garbage into the directory can make entries
//! invisible to itself only: [`DirectoryView`] skips what does not verify and reports it.

use std::collections::BTreeMap;

use std::borrow::{Borrow, BorrowMut};

use automerge::{ActorId, Automerge};
use autosurgeon::bytes::ByteVec;
use autosurgeon::{Hydrate, Reconcile};

use crate::doc::{Doc, DocError, Schema};
use crate::docs::DocName;
use crate::enrollment::{EnrollmentCert, Revocation, RevocationTarget, TrustError};
use crate::identity::{DeviceId, PublicKey, Role, SiteId, UnixMillis};

/// The site directory document.
#[derive(Debug)]
pub struct Directory;

impl Schema for Directory {
    const KIND: &'static str = "popmesh.directory";
    const VERSION: u64 = 1;
}

/// Shows and slots a directory may list; beyond these a write is refused.
pub const SHOWS_MAX: usize = 256;
pub const SLOTS_PER_SHOW_MAX: usize = 512;
/// Documents a site's directory may register.
pub const DOCUMENTS_MAX: usize = 8192;

/// The directory as stored.
#[derive(Debug, Clone, PartialEq, Reconcile, Hydrate)]
pub struct DirectoryRecord {
    pub site: String,
    pub name: String,
    pub authority: String,
    #[autosurgeon(hydrate = "crate::doc::lenient_map")]
    pub shows: BTreeMap<String, ShowRecord>,
    /// Device hex id -> canonical enrollment certificate.
    #[autosurgeon(hydrate = "crate::doc::lenient_map")]
    pub devices: BTreeMap<String, ByteVec>,
    /// `device:<hex>` or `invite:<hex>` -> canonical revocation.
    #[autosurgeon(hydrate = "crate::doc::lenient_map")]
    pub revocations: BTreeMap<String, ByteVec>,
    /// Document name (see [`crate::docs::DocName`]) -> the sync engine's document id. Each device registers the
    /// documents it creates (its ledgers, its telemetry); the creator of a slot registers the slot.
    #[autosurgeon(hydrate = "crate::doc::lenient_map")]
    pub documents: BTreeMap<String, String>,
}

/// A show: a run of slots sold in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate)]
pub struct ShowRecord {
    pub name: String,
    pub currency: String,
    pub slots: BTreeMap<String, SlotRecord>,
}

/// A bookable slot of a show.
#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate)]
pub struct SlotRecord {
    pub label: String,
    pub starts_at: u64,
    pub capacity: u64,
}

/// Why a directory write was refused.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error(transparent)]
    Doc(#[from] DocError),
    #[error(transparent)]
    Untrusted(#[from] TrustError),
    #[error("the header names authority '{0}', which is not a valid key")]
    BadHeader(String),
    #[error("{what} limit reached ({max})")]
    Full { what: &'static str, max: usize },
    #[error("show '{0}' is not in the directory")]
    UnknownShow(String),
    #[error("document '{name}' is already registered as {existing}")]
    DocumentConflict { name: String, existing: String },
}

impl Doc<Directory> {
    /// Creates the directory of a new site. Only the device that ran `site init` calls this; every other device
    /// receives the document by sync.
    pub fn create_site(
        actor: ActorId,
        authority: PublicKey,
        name: &str,
    ) -> Result<Self, DirectoryError> {
        Ok(Doc::create(
            actor,
            &DirectoryRecord {
                site: SiteId::for_authority(&authority).to_hex(),
                name: name.to_owned(),
                authority: authority.to_hex(),
                shows: BTreeMap::new(),
                devices: BTreeMap::new(),
                revocations: BTreeMap::new(),
                documents: BTreeMap::new(),
            },
        )?)
    }
}

impl<D: Borrow<Automerge>> Doc<Directory, D> {
    /// The site authority's key from the header: all a write needs to check what it adds, without verifying every
    /// certificate already in the directory.
    pub fn authority(&self) -> Result<PublicKey, DirectoryError> {
        let hex: String = autosurgeon::hydrate_prop(self.automerge(), automerge::ROOT, "authority")
            .map_err(DocError::from)?;
        DeviceId::from_hex(&hex).map_err(|_| DirectoryError::BadHeader(hex))
    }

    pub fn record(&self) -> Result<DirectoryRecord, DirectoryError> {
        Ok(self.read()?)
    }

    /// The verified view of the directory.
    pub fn view(&self) -> Result<DirectoryView, DirectoryError> {
        DirectoryView::from_record(self.record()?)
    }

    /// [`Self::view`], reusing what `previous` (this device's last view) verified: a certificate whose bytes did not
    /// change is not checked again (see [`DirectoryView::from_record_after`]).
    pub fn view_after(
        &self,
        previous: Option<&DirectoryView>,
    ) -> Result<DirectoryView, DirectoryError> {
        DirectoryView::from_record_after(self.record()?, previous)
    }
}

impl<D: BorrowMut<Automerge>> Doc<Directory, D> {
    /// Adds a certificate after checking its chain back to this site's authority.
    pub fn add_device(&mut self, cert: &EnrollmentCert) -> Result<(), DirectoryError> {
        let authority = self.authority()?;
        cert.verify_chain(&authority, SiteId::for_authority(&authority))?;
        self.write_at(
            &["devices"],
            &cert.device.to_hex(),
            &ByteVec::from(cert.to_bytes()),
        )?;
        Ok(())
    }

    /// Adds an authority-signed revocation.
    pub fn add_revocation(&mut self, revocation: &Revocation) -> Result<(), DirectoryError> {
        let authority = self.authority()?;
        revocation.verify(&authority, SiteId::for_authority(&authority))?;
        self.write_at(
            &["revocations"],
            &revocation_key(revocation.target),
            &ByteVec::from(revocation.to_bytes()),
        )?;
        Ok(())
    }

    /// Records where a document lives in the sync engine, so that a device that joins later can find it.
    /// Registering the same name twice with the same id is a no-op; with another id, an error.
    pub fn register_document(&mut self, name: &DocName, id: &str) -> Result<(), DirectoryError> {
        let key = name.to_string();
        let record = self.record()?;
        match record.documents.get(&key) {
            Some(existing) if existing == id => return Ok(()),
            Some(existing) => {
                return Err(DirectoryError::DocumentConflict {
                    name: key,
                    existing: existing.clone(),
                });
            }
            None => {}
        }
        if record.documents.len() >= DOCUMENTS_MAX {
            return Err(DirectoryError::Full {
                what: "documents",
                max: DOCUMENTS_MAX,
            });
        }
        self.write_at(&["documents"], &key, &id.to_owned())?;
        Ok(())
    }

    pub fn add_show(&mut self, id: &str, show: &ShowRecord) -> Result<(), DirectoryError> {
        let record = self.record()?;
        if !record.shows.contains_key(id) && record.shows.len() >= SHOWS_MAX {
            return Err(DirectoryError::Full {
                what: "shows",
                max: SHOWS_MAX,
            });
        }
        self.write_at(&["shows"], id, show)?;
        Ok(())
    }

    pub fn add_slot(
        &mut self,
        show: &str,
        id: &str,
        slot: &SlotRecord,
    ) -> Result<(), DirectoryError> {
        let record = self.record()?;
        let entry = record
            .shows
            .get(show)
            .ok_or_else(|| DirectoryError::UnknownShow(show.to_owned()))?;
        if !entry.slots.contains_key(id) && entry.slots.len() >= SLOTS_PER_SHOW_MAX {
            return Err(DirectoryError::Full {
                what: "slots per show",
                max: SLOTS_PER_SHOW_MAX,
            });
        }
        self.write_at(&["shows", show, "slots"], id, slot)?;
        Ok(())
    }
}

fn revocation_key(target: RevocationTarget) -> String {
    match target {
        RevocationTarget::Device(key) => format!("device:{}", key.to_hex()),
        RevocationTarget::Invite(key) => format!("invite:{}", key.to_hex()),
        RevocationTarget::Token(id) => format!("token:{}", crate::identity::hex_encode(&id)),
    }
}

/// The directory with every certificate and revocation parsed and checked.
#[derive(Debug, Clone)]
pub struct DirectoryView {
    pub site: SiteId,
    pub name: String,
    pub authority: PublicKey,
    pub shows: BTreeMap<String, ShowRecord>,
    /// Document name -> sync engine id, as registered.
    pub documents: BTreeMap<String, String>,
    certs: BTreeMap<DeviceId, EnrollmentCert>,
    /// The bytes each certificate of `certs` verified from, so a later view can reuse the check.
    cert_bytes: BTreeMap<DeviceId, Vec<u8>>,
    revocations: BTreeMap<String, Revocation>,
    /// Entries that did not verify, with the reason: shown to operators, trusted by nobody.
    pub rejected: Vec<(String, TrustError)>,
}

impl DirectoryView {
    pub fn from_record(record: DirectoryRecord) -> Result<Self, DirectoryError> {
        Self::from_record_after(record, None)
    }

    /// [`Self::from_record`], reusing `previous`'s checks: a certificate stored under the same key with the same
    /// bytes, in a directory of the same authority, verified then and is not verified again (two signatures
    /// each, for a device enrolled by invite). Every device re-reads its directory on each change, and a site
    /// of N devices registers O(N) documents, so without this each device checked O(N^2) signatures.
    pub fn from_record_after(
        record: DirectoryRecord,
        previous: Option<&DirectoryView>,
    ) -> Result<Self, DirectoryError> {
        let authority = DeviceId::from_hex(&record.authority)
            .map_err(|_| DirectoryError::BadHeader(record.authority.clone()))?;
        let site = SiteId::for_authority(&authority);
        let previous = previous.filter(|p| p.authority == authority);
        let mut rejected = Vec::new();
        let mut certs = BTreeMap::new();
        let mut cert_bytes = BTreeMap::new();
        for (key, bytes) in &record.devices {
            let known = previous.and_then(|p| {
                let device = DeviceId::from_hex(key).ok()?;
                (p.cert_bytes.get(&device)?.as_slice() == &bytes[..])
                    .then(|| p.certs.get(&device).cloned())?
            });
            if let Some(cert) = known {
                cert_bytes.insert(cert.device, bytes.to_vec());
                certs.insert(cert.device, cert);
                continue;
            }
            match EnrollmentCert::from_bytes(bytes)
                .and_then(|cert| cert.verify_chain(&authority, site).map(|()| cert))
            {
                Ok(cert) if cert.device.to_hex() == *key => {
                    cert_bytes.insert(cert.device, bytes.to_vec());
                    certs.insert(cert.device, cert);
                }
                Ok(_) => rejected.push((
                    key.clone(),
                    TrustError::UnknownDevice(format!("{key} (stored under the wrong key)")),
                )),
                Err(err) => rejected.push((key.clone(), err)),
            }
        }
        let mut revocations = BTreeMap::new();
        for (key, bytes) in &record.revocations {
            match Revocation::from_bytes(bytes).and_then(|r| r.verify(&authority, site).map(|()| r))
            {
                Ok(r) if revocation_key(r.target) == *key => {
                    revocations.insert(key.clone(), r);
                }
                Ok(_) => rejected.push((
                    key.clone(),
                    TrustError::BadSignature {
                        what: "revocation (stored under the wrong key)",
                    },
                )),
                Err(err) => rejected.push((key.clone(), err)),
            }
        }
        Ok(Self {
            site,
            name: record.name,
            authority,
            shows: record.shows,
            documents: record.documents,
            certs,
            cert_bytes,
            revocations,
            rejected,
        })
    }

    /// The role `device` is enrolled in (its certificate verifies; revoked or not, so the changes it made while
    /// trusted keep their author's role), if the directory holds its certificate.
    pub fn role_of(&self, device: &DeviceId) -> Option<Role> {
        self.certs.get(device).map(|c| c.role)
    }

    /// Every certificate whose chain verifies, trusted or not.
    pub fn certificates(&self) -> impl Iterator<Item = &EnrollmentCert> {
        self.certs.values()
    }

    /// Whether `device` may issue grants (passes, client tokens) at `at`: enrolled, trusted then, and an edge box or
    /// the origin. `Err` says why not.
    pub fn verify_grant_issuer(
        &self,
        device: &DeviceId,
        at: UnixMillis,
    ) -> Result<&EnrollmentCert, String> {
        let cert = self.verify_device(device, at).map_err(|e| e.to_string())?;
        if !matches!(cert.role, Role::Edge | Role::Origin) {
            return Err(format!("{} is a {}", cert.name, cert.role));
        }
        Ok(cert)
    }

    pub fn revocation_of(&self, target: RevocationTarget) -> Option<&Revocation> {
        self.revocations.get(&revocation_key(target))
    }

    /// The devices enrolled and trusted at `at`, with their roles.
    pub fn trusted_devices(&self, at: UnixMillis) -> Vec<(DeviceId, Role, String)> {
        self.certs
            .values()
            .filter(|cert| self.verify_device(&cert.device, at).is_ok())
            .map(|cert| (cert.device, cert.role, cert.name.clone()))
            .collect()
    }

    /// Is `device` enrolled at this site, valid at `at`, not revoked, and within its invite's use limit?
    pub fn verify_device(
        &self,
        device: &DeviceId,
        at: UnixMillis,
    ) -> Result<&EnrollmentCert, TrustError> {
        self.verify_device_as(device, at, None)
    }

    /// Was receipt `seq` of `show` issued by a device the site trusted then? As [`Self::verify_device`], except
    /// that a revocation is not retroactive: receipts up to the sequence number its `honoured` names for the show
    /// still verify, later ones fail with [`TrustError::IssuedAfterRevocation`].
    pub fn verify_issuer(
        &self,
        device: &DeviceId,
        show: &str,
        seq: u64,
        at: UnixMillis,
    ) -> Result<&EnrollmentCert, TrustError> {
        self.verify_device_as(device, at, Some((show, seq)))
    }

    fn verify_device_as(
        &self,
        device: &DeviceId,
        at: UnixMillis,
        receipt: Option<(&str, u64)>,
    ) -> Result<&EnrollmentCert, TrustError> {
        let cert = self
            .certs
            .get(device)
            .ok_or_else(|| TrustError::UnknownDevice(device.to_hex()))?;
        if let Some(r) = self.revocation_of(RevocationTarget::Device(*device)) {
            match receipt {
                Some((show, seq)) if r.honours(show, seq) => {}
                Some((show, seq)) => {
                    return Err(TrustError::IssuedAfterRevocation {
                        device: device.to_hex(),
                        show: show.to_owned(),
                        seq,
                        honoured: r.honoured.get(show).copied().unwrap_or(0),
                        reason: r.reason.clone(),
                    });
                }
                None => {
                    return Err(TrustError::DeviceRevoked {
                        device: device.to_hex(),
                        at: r.at.0,
                        reason: r.reason.clone(),
                    });
                }
            }
        }
        cert.check_valid_at(at)?;
        if let crate::enrollment::Issuer::Invite(invite) = &cert.issuer {
            if let Some(r) = self.revocation_of(RevocationTarget::Invite(invite.invite_key)) {
                return Err(TrustError::InviteRevoked {
                    invite: invite.invite_key.to_hex(),
                    at: r.at.0,
                    reason: r.reason.clone(),
                });
            }
            // The use limit, decided the same way on every device: the first `max_uses` enrollments under the
            // invite by (enrollment time, device id) count; later ones do not.
            let mut under_invite: Vec<&EnrollmentCert> = self
                .certs
                .values()
                .filter(|c| c.invite_key() == Some(invite.invite_key))
                .collect();
            under_invite.sort_by_key(|c| (c.not_before, c.device));
            let rank = under_invite
                .iter()
                .position(|c| c.device == *device)
                .unwrap_or(usize::MAX);
            if rank >= invite.max_uses as usize {
                return Err(TrustError::InviteOverused {
                    max_uses: invite.max_uses,
                    device: device.to_hex(),
                });
            }
        }
        Ok(cert)
    }
}

/// Whether a peer that presented `cert` when a link opened may sync with this device.
///
/// The certificate must be for `peer` (the device the transport authenticated), chain to the site `authority`,
/// and be valid at `at`. When this device holds the directory (`view`), the device and its invite must not be
/// revoked, and the invite's use limit must hold counting this certificate, by the same rule as
/// [`DirectoryView::verify_device`]. A device that enrolled from a join token moments ago is not in anyone's
/// directory yet, and is admitted on its chain alone: its first write is its certificate.
pub fn admit_peer(
    cert: &EnrollmentCert,
    peer: &DeviceId,
    authority: &PublicKey,
    at: UnixMillis,
    view: Option<&DirectoryView>,
) -> Result<(), TrustError> {
    if cert.device != *peer {
        return Err(TrustError::NotTheirCertificate {
            cert: cert.device.to_hex(),
            peer: peer.to_hex(),
        });
    }
    cert.verify_chain(authority, SiteId::for_authority(authority))?;
    cert.check_valid_at(at)?;
    let Some(view) = view else {
        return Ok(());
    };
    if view.certs.get(peer) == Some(cert) {
        return view.verify_device(peer, at).map(|_| ());
    }
    let mut with_cert = view.clone();
    with_cert.certs.insert(*peer, cert.clone());
    with_cert.verify_device(peer, at).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::actor_id;
    use crate::enrollment::{InviteTerms, JoinToken, SiteAuthority};
    use crate::identity::SecretKey;

    const HOUR: u64 = 3_600_000;

    struct Site {
        authority: SiteAuthority,
        dir: Doc<Directory>,
    }

    fn site() -> Site {
        let authority = SiteAuthority::new(SecretKey::from_seed([1; 32]));
        let dir = Doc::<Directory>::create_site(
            actor_id(DeviceId([0; 32]), 0),
            authority.public(),
            "Harbour Market",
        )
        .expect("create");
        Site { authority, dir }
    }

    fn token(site: &Site, seed: u8, max_uses: u32) -> JoinToken {
        let (invite, secret) = site.authority.invite(
            [seed; 32],
            InviteTerms {
                role: Role::Kiosk,
                expires_at: UnixMillis(10 * HOUR),
                max_uses,
                cert_valid_until: UnixMillis(100 * HOUR),
            },
        );
        JoinToken {
            site_name: "Harbour Market".into(),
            authority: site.authority.public(),
            invite,
            invite_secret: secret.seed(),
            network_key: [0; 32],
            bootstrap: vec![],
        }
    }

    #[test]
    fn an_invite_for_two_kiosks_admits_the_first_two_and_refuses_the_third() {
        let mut site = site();
        let token = token(&site, 9, 2);
        let kiosks: Vec<DeviceId> = (20..23)
            .map(|s| SecretKey::from_seed([s; 32]).public())
            .collect();
        for (i, kiosk) in kiosks.iter().enumerate() {
            let cert = token
                .enroll(*kiosk, &format!("kiosk-{i}"), UnixMillis(HOUR + i as u64))
                .expect("enroll");
            site.dir.add_device(&cert).expect("chain verifies");
        }
        let view = site.dir.view().expect("view");
        let now = UnixMillis(2 * HOUR);
        assert!(view.verify_device(&kiosks[0], now).is_ok());
        assert!(view.verify_device(&kiosks[1], now).is_ok());
        assert!(matches!(
            view.verify_device(&kiosks[2], now),
            Err(TrustError::InviteOverused { max_uses: 2, .. })
        ));
    }

    #[test]
    fn a_view_after_the_last_reuses_what_verified_and_checks_what_changed() {
        let mut site = site();
        let token = token(&site, 9, 5);
        let kiosk = SecretKey::from_seed([20; 32]).public();
        let cert = token
            .enroll(kiosk, "kiosk-1", UnixMillis(HOUR))
            .expect("enroll");
        site.dir.add_device(&cert).expect("add");
        let first = site.dir.view().expect("view");
        let now = UnixMillis(2 * HOUR);
        let again = site.dir.view_after(Some(&first)).expect("view");
        assert_eq!(again.trusted_devices(now), first.trusted_devices(now));
        assert!(again.verify_device(&kiosk, now).is_ok());
        // A rogue peer rewrites the kiosk's certificate with another name: the bytes changed, so it is checked
        // again, and refused, though the last view trusted that key.
        let mut forged = cert.clone();
        forged.name = "kiosk-evil".into();
        site.dir
            .write_at(
                &["devices"],
                &kiosk.to_hex(),
                &ByteVec::from(forged.to_bytes()),
            )
            .expect("write");
        let after = site.dir.view_after(Some(&first)).expect("view");
        assert!(after.verify_device(&kiosk, now).is_err());
        assert_eq!(after.rejected.len(), 1, "{:?}", after.rejected);
    }

    #[test]
    fn revoking_an_invite_cuts_off_every_device_enrolled_with_it() {
        let mut site = site();
        let token = token(&site, 9, 5);
        let kiosk = SecretKey::from_seed([20; 32]).public();
        let cert = token
            .enroll(kiosk, "kiosk-1", UnixMillis(HOUR))
            .expect("enroll");
        site.dir.add_device(&cert).expect("add");
        let revocation = site.authority.revoke(
            RevocationTarget::Invite(token.invite.invite_key),
            UnixMillis(2 * HOUR),
            "token photographed at the door",
        );
        site.dir.add_revocation(&revocation).expect("revoke");
        let view = site.dir.view().expect("view");
        assert!(matches!(
            view.verify_device(&kiosk, UnixMillis(3 * HOUR)),
            Err(TrustError::InviteRevoked { .. })
        ));
    }

    #[test]
    fn a_revoked_device_is_no_longer_trusted_and_a_forged_revocation_is_refused() {
        let mut site = site();
        let pos = SecretKey::from_seed([30; 32]).public();
        let cert = site.authority.enroll(
            pos,
            Role::Pos,
            "pos-1",
            UnixMillis(0),
            UnixMillis(100 * HOUR),
        );
        site.dir.add_device(&cert).expect("add");
        assert!(
            site.dir
                .view()
                .expect("view")
                .verify_device(&pos, UnixMillis(HOUR))
                .is_ok()
        );

        let impostor = SiteAuthority::new(SecretKey::from_seed([66; 32]));
        let mut forged = impostor.revoke(RevocationTarget::Device(pos), UnixMillis(HOUR), "x");
        forged.site = site.authority.site();
        assert!(site.dir.add_revocation(&forged).is_err());

        let real = site
            .authority
            .revoke(RevocationTarget::Device(pos), UnixMillis(HOUR), "stolen");
        site.dir.add_revocation(&real).expect("revoke");
        assert!(matches!(
            site.dir
                .view()
                .expect("view")
                .verify_device(&pos, UnixMillis(2 * HOUR)),
            Err(TrustError::DeviceRevoked { .. })
        ));
    }

    #[test]
    fn garbage_written_into_the_directory_by_a_peer_is_reported_not_trusted() {
        let mut site = site();
        let stranger = DeviceId([44; 32]);
        site.dir
            .write_at(
                &["devices"],
                &stranger.to_hex(),
                &ByteVec::from(vec![1, 2, 3]),
            )
            .expect("raw write");
        let view = site.dir.view().expect("view");
        assert_eq!(view.rejected.len(), 1);
        assert!(matches!(
            view.verify_device(&stranger, UnixMillis(0)),
            Err(TrustError::UnknownDevice(_))
        ));
    }

    #[test]
    fn a_peer_is_admitted_on_its_chain_and_refused_once_revoked_forged_or_over_its_invite() {
        let mut site = site();
        let t = token(&site, 7, 1);
        let now = UnixMillis(HOUR);
        let kiosk = SecretKey::from_seed([2; 32]).public();
        let cert = t.enroll(kiosk, "kiosk-2", now).expect("enroll");
        let authority = site.authority.public();

        // Not yet in anyone's directory: admitted on the chain alone, with or without a directory replica.
        admit_peer(&cert, &kiosk, &authority, now, None).expect("fresh joiner, no directory");
        let view = site.dir.view().expect("view");
        admit_peer(&cert, &kiosk, &authority, now, Some(&view)).expect("fresh joiner");

        // Presenting someone else's certificate.
        let thief = SecretKey::from_seed([3; 32]).public();
        assert!(matches!(
            admit_peer(&cert, &thief, &authority, now, Some(&view)),
            Err(TrustError::NotTheirCertificate { .. })
        ));

        // A certificate from another authority (a forged site).
        let forger = SiteAuthority::new(SecretKey::from_seed([9; 32]));
        let forged = forger.enroll(kiosk, Role::Edge, "kiosk-2", now, UnixMillis(10 * HOUR));
        assert!(admit_peer(&forged, &kiosk, &authority, now, Some(&view)).is_err());

        // A second device on a one-use invite, once the first is in the directory.
        site.dir.add_device(&cert).expect("add");
        let second = SecretKey::from_seed([4; 32]).public();
        let later = t
            .enroll(second, "kiosk-3", UnixMillis(2 * HOUR))
            .expect("enroll");
        let view = site.dir.view().expect("view");
        assert!(matches!(
            admit_peer(
                &later,
                &second,
                &authority,
                UnixMillis(2 * HOUR),
                Some(&view)
            ),
            Err(TrustError::InviteOverused { .. })
        ));

        // Revoked.
        let revocation = site
            .authority
            .revoke(RevocationTarget::Device(kiosk), now, "stolen");
        site.dir.add_revocation(&revocation).expect("revoke");
        let view = site.dir.view().expect("view");
        assert!(matches!(
            admit_peer(&cert, &kiosk, &authority, now, Some(&view)),
            Err(TrustError::DeviceRevoked { .. })
        ));
    }
}
