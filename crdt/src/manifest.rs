//! The media manifest of a show: which content-addressed blobs a site needs, under which names.
//!
//! Kiosks show media by name; the manifest maps each name to a BLAKE3 hash, size, MIME type and time to live, and
//! names a fallback entry to serve when a blob cannot be had from any peer. A manifest may ask a role to preseed
//! only slices of each blob (byte ranges, such as the first seconds of every video); the rest is fetched on demand.
//!
//! What a device may drop is decided here too ([`expired`]): a blob no manifest references any more is kept for its
//! time to live after it was last referenced, then garbage collected.

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
    const VERSION: u64 = 2;
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
    /// Role (`kiosk`, `pos`, ...) -> the byte ranges of every entry that role preseeds. A role not named here
    /// preseeds whole blobs.
    pub slices: BTreeMap<String, Vec<ByteRange>>,
}

/// Bytes `start..end` of a blob (clamped to the blob's size).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Reconcile, Hydrate, serde::Serialize, serde::Deserialize,
)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

/// Byte ranges one role may be asked to preseed.
pub const SLICES_MAX: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate)]
pub struct MediaEntry {
    /// BLAKE3 hash, 64 lowercase hex digits.
    pub hash: String,
    pub size: u64,
    pub mime: String,
    /// How long after `added_at` an unreferenced copy may be dropped.
    pub ttl_ms: u64,
    pub added_at: u64,
    /// The device (hex) that published the entry and holds the blob: the seed. Peers ask each other first and
    /// the seed last, so the seed's uplink is not the only one carrying the show's media.
    pub added_by: String,
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
    #[error("slices for role '{role}': {reason}")]
    BadSlices { role: String, reason: String },
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
                slices: BTreeMap::new(),
            },
        )
    }
}

impl<D: Borrow<Automerge>> Doc<Manifest, D> {
    pub fn record(&self) -> Result<ManifestRecord, DocError> {
        self.read()
    }
}

impl ManifestRecord {
    /// The byte ranges of `entry` a device of `role` preseeds: `None` means the whole blob.
    pub fn preseed_ranges(&self, role: &str, entry: &MediaEntry) -> Option<Vec<ByteRange>> {
        let slices = self.slices.get(role)?;
        Some(
            slices
                .iter()
                .map(|r| ByteRange {
                    start: r.start.min(entry.size),
                    end: r.end.min(entry.size),
                })
                .filter(|r| r.start < r.end)
                .collect(),
        )
    }
}

/// What a device knows of a blob it holds: its time to live, and when a manifest last referenced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Held {
    pub ttl_ms: u64,
    pub referenced_at_ms: u64,
}

/// The blobs a device may drop at `now_ms`: held, referenced by no manifest, and past their time to live since
/// they were last referenced. Sorted, so every device decides the same way.
pub fn expired<'a>(
    held: impl IntoIterator<Item = (&'a String, &'a Held)>,
    referenced: &std::collections::BTreeSet<String>,
    now_ms: u64,
) -> Vec<String> {
    let mut out: Vec<String> = held
        .into_iter()
        .filter(|(hash, h)| {
            !referenced.contains(*hash) && now_ms >= h.referenced_at_ms.saturating_add(h.ttl_ms)
        })
        .map(|(hash, _)| hash.clone())
        .collect();
    out.sort();
    out
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

    /// Asks devices of `role` to preseed only `ranges` of every entry (an empty list: nothing ahead of time).
    pub fn set_slices(&mut self, role: &str, ranges: &[ByteRange]) -> Result<(), ManifestError> {
        let bad = |reason: String| ManifestError::BadSlices {
            role: role.to_owned(),
            reason,
        };
        if crate::identity::Role::ALL
            .iter()
            .all(|r| r.as_str() != role)
        {
            return Err(bad("not a role (kiosk, pos, edge, origin)".into()));
        }
        if ranges.len() > SLICES_MAX {
            return Err(bad(format!("at most {SLICES_MAX} ranges")));
        }
        if let Some(r) = ranges.iter().find(|r| r.start >= r.end) {
            return Err(bad(format!("range {}-{} is empty", r.start, r.end)));
        }
        let ranges = ranges.to_vec();
        self.write_at(&["slices"], role, &ranges)?;
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
    fn kiosks_preseed_the_first_slice_and_edges_the_whole_blob() {
        let mut doc = Doc::<Manifest>::create_manifest(actor_id(DeviceId([1; 32]), 0), "show-1")
            .expect("create");
        let trailer = MediaEntry {
            hash: "a".repeat(64),
            size: 10_000,
            mime: "video/mp4".into(),
            ttl_ms: 1,
            added_at: 0,
            added_by: String::new(),
        };
        doc.publish("trailer.mp4", &trailer).expect("publish");
        doc.set_slices(
            "kiosk",
            &[
                ByteRange {
                    start: 0,
                    end: 4096,
                },
                ByteRange {
                    start: 9000,
                    end: 20_000,
                },
            ],
        )
        .expect("slices");
        assert!(matches!(
            doc.set_slices("usher", &[]),
            Err(ManifestError::BadSlices { .. })
        ));
        assert!(matches!(
            doc.set_slices("pos", &[ByteRange { start: 5, end: 5 }]),
            Err(ManifestError::BadSlices { .. })
        ));
        let record = doc.record().expect("read");
        assert_eq!(
            record.preseed_ranges("kiosk", &trailer),
            Some(vec![
                ByteRange {
                    start: 0,
                    end: 4096
                },
                ByteRange {
                    start: 9000,
                    end: 10_000
                }
            ]),
            "ranges are clamped to the blob"
        );
        assert_eq!(record.preseed_ranges("edge", &trailer), None);
    }

    #[test]
    fn an_unreferenced_blob_is_dropped_only_after_its_ttl() {
        let held: BTreeMap<String, Held> = [
            (
                "old".to_string(),
                Held {
                    ttl_ms: 100,
                    referenced_at_ms: 1_000,
                },
            ),
            (
                "live".to_string(),
                Held {
                    ttl_ms: 0,
                    referenced_at_ms: 0,
                },
            ),
            (
                "young".to_string(),
                Held {
                    ttl_ms: 5_000,
                    referenced_at_ms: 1_000,
                },
            ),
        ]
        .into_iter()
        .collect();
        let referenced = ["live".to_string()].into_iter().collect();
        assert_eq!(expired(&held, &referenced, 1_099), Vec::<String>::new());
        assert_eq!(expired(&held, &referenced, 1_100), vec!["old".to_string()]);
        assert_eq!(
            expired(&held, &std::collections::BTreeSet::new(), 10_000),
            vec!["live".to_string(), "old".to_string(), "young".to_string()]
        );
    }

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
            added_by: String::new(),
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
