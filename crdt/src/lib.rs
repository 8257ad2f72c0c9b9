//! popmesh's domain core: everything a site knows and decides, with no IO.
//!
//! This crate holds identities and enrollment ([`identity`], [`enrollment`]), offline passes ([`access`]), the site's typed Automerge documents
//! ([`directory`], [`escrow`], [`ledger`], [`telemetry`], [`manifest`], named by [`docs`]), signed receipts
//! ([`receipt`]), offline payment limits ([`risk`]) and the origin's reconciliation against the processor's
//! settlement batch ([`settlement`]). It takes time (`UnixMillis`) and key seeds as arguments and
//! returns values; it never reads a clock, draws OS randomness, touches a file or a socket, or spawns. The node
//! daemon and the chaos simulator therefore run exactly the same domain code.

pub mod access;
pub mod client_token;
pub mod codec;
pub mod directory;
pub mod doc;
pub mod docs;
pub mod enrollment;
pub mod escrow;
pub mod identity;
pub mod ledger;
pub mod manifest;
pub mod naming;
pub mod privacy;
pub mod receipt;
pub mod rehearsal;
pub mod report;
pub mod risk;
pub mod settlement;
pub mod telemetry;

pub use doc::{Doc, DocError, SyncStats, actor_id};
pub use identity::{DeviceId, DeviceKey, PublicKey, Role, SecretKey, SiteId, UnixMillis};
