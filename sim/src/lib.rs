//! popmesh's chaos simulator: a deterministic, seeded, single-threaded world in which simulated devices run the real
//! sync and domain code under partitions, crashes, message loss and clock skew.
//!
//! Its role, once built: each simulated device drives the same sans-IO cores the node runs (`popmesh-crdt` and the
//! Automerge sync state machines) over a simulated network; one seed drives every choice, so a run replays exactly;
//! checkers test the site's invariants after every step (no acknowledged receipt lost, no seat oversold, every
//! receipt verifies, counters within bounds) and, once faults stop, that every connected device converges.
//!
//! Architecture Invariant: nothing in this crate reads the wall clock, draws OS randomness, or starts a runtime.
