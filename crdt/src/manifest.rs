//! The media manifest of a show: which content-addressed blobs a site needs, under which names.
//!
//! Kiosks show media by name; the manifest maps each name to a BLAKE3 hash, size, MIME type and time to live, and
//! names a fallback entry to serve when a blob cannot be had from any peer.

use std::collections::BTreeMap;

use std::borrow::{Borrow, BorrowMut};

use automerge::{ActorId, Automerge};
use autosurgeon::{Hydrate, Reconcile};
use thiserror::Error;

use crate::doc::{Doc, DocError, Schema};
use crate::escrow::ID_BYTES_MAX;

/// A per-show media manifest document.
#[derive(Debug)]
pub struct Manifest;

impl Schema for Manifest {
    const KIND: &'static str = "popmesh.manifest";
    const VERSION: u64 = 1;
}

/// Entries one manifest may hold.
pub const ENTRIES_MAX: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate)]
pub struct ManifestRecord {
    pub show: String,
    /// Name -> entry.
    pub entries: BTreeMap<String, MediaEntry>,
    /// The entry served when a requested blob is not available from any peer.
    pub fallback: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate)]
pub struct MediaEntry {
    /// BLAKE3 hash, 64 lowercase hex digits.
    pub hash: String,
    pub size: u64,
    pub mime: String,
    /// How long after `added_at` an unreferenced copy may be dropped.
    pub ttl_ms: u64,
    pub added_at: u64,
}

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("media name '{0}' must be 1 to {ID_BYTES_MAX} bytes without '/' or control characters")]
    BadName(String),
    #[error("hash '{0}' is not 64 lowercase hex digits")]
    BadHash(String),
    #[error("MIME type '{0}' is not of the form type/subtype")]
    BadMime(String),
    #[error("the fallback '{0}' is not an entry of the manifest")]
    UnknownFallback(String),
    #[error("the manifest already holds {ENTRIES_MAX} entries")]
    Full,
    #[error(transparent)]
    Doc(#[from] DocError),
}

impl MediaEntry {
    fn validate(&self) -> Result<(), ManifestError> {
        let hex = self.hash.len() == 64
            && self
                .hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            return Err(ManifestError::BadHash(self.hash.clone()));
        }
        let mime_ok = self.mime.split_once('/').is_some_and(|(t, s)| {
            !t.is_empty() && !s.is_empty() && self.mime.is_ascii() && !self.mime.contains(' ')
        });
        if !mime_ok {
            return Err(ManifestError::BadMime(self.mime.clone()));
        }
        Ok(())
    }
}

impl Doc<Manifest> {
    pub fn create_manifest(actor: ActorId, show: &str) -> Result<Self, DocError> {
        Doc::create(
            actor,
            &ManifestRecord {
                show: show.to_owned(),
                entries: BTreeMap::new(),
                fallback: None,
            },
        )
    }
}

impl<D: Borrow<Automerge>> Doc<Manifest, D> {
    pub fn record(&self) -> Result<ManifestRecord, DocError> {
        self.read()
    }
}

impl<D: BorrowMut<Automerge>> Doc<Manifest, D> {
    /// Publishes (or replaces) the entry `name`.
    pub fn publish(&mut self, name: &str, entry: &MediaEntry) -> Result<(), ManifestError> {
        if name.is_empty()
            || name.len() > ID_BYTES_MAX
            || name.contains('/')
            || name.chars().any(char::is_control)
        {
            return Err(ManifestError::BadName(name.to_owned()));
        }
        entry.validate()?;
        let record = self.record()?;
        if !record.entries.contains_key(name) && record.entries.len() >= ENTRIES_MAX {
            return Err(ManifestError::Full);
        }
        self.write_at(&["entries"], name, entry)?;
        Ok(())
    }

    pub fn set_fallback(&mut self, name: &str) -> Result<(), ManifestError> {
        if !self.record()?.entries.contains_key(name) {
            return Err(ManifestError::UnknownFallback(name.to_owned()));
        }
        self.transact(|tx| {
            Ok(autosurgeon::reconcile_prop(
                tx,
                automerge::ROOT,
                "fallback",
                Some(name),
            )?)
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::actor_id;
    use crate::identity::DeviceId;

    #[test]
    fn a_producer_publishes_a_trailer_and_a_fallback_poster() {
        let mut doc = Doc::<Manifest>::create_manifest(actor_id(DeviceId([1; 32]), 0), "show-1")
            .expect("create");
        let entry = |hash: &str, mime: &str| MediaEntry {
            hash: hash.repeat(64),
            size: 10,
            mime: mime.into(),
            ttl_ms: 86_400_000,
            added_at: 0,
        };
        doc.publish("trailer.mp4", &entry("a", "video/mp4"))
            .expect("publish");
        doc.publish("poster.jpg", &entry("b", "image/jpeg"))
            .expect("publish");
        assert!(matches!(
            doc.set_fallback("missing.jpg"),
            Err(ManifestError::UnknownFallback(_))
        ));
        doc.set_fallback("poster.jpg").expect("fallback");
        let record = doc.record().expect("read");
        assert_eq!(record.fallback.as_deref(), Some("poster.jpg"));
        assert_eq!(record.entries.len(), 2);
        assert!(matches!(
            doc.publish("x", &entry("Z", "video/mp4")),
            Err(ManifestError::BadHash(_))
        ));
        assert!(matches!(
            doc.publish("x", &entry("a", "video")),
            Err(ManifestError::BadMime(_))
        ));
        assert!(matches!(
            doc.publish("a/b", &entry("a", "video/mp4")),
            Err(ManifestError::BadName(_))
        ));
    }
}
