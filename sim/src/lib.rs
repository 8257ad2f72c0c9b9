//! popmesh's chaos simulator: a deterministic, seeded, single-threaded world in which simulated devices run the real
//! sync engine (samod-core's hub and document actors) and the real domain core (`popmesh-crdt`) under partitions,
//! crashes, message loss and clock skew.
//!
//! Architecture Invariant: nothing in this crate reads the wall clock, draws OS randomness, or starts a runtime.

pub mod host;
