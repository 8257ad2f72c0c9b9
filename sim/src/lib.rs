//! popmesh's chaos simulator: a deterministic, seeded, single-threaded world in which simulated devices run the real
//! sync engine (samod-core's hub and document actors) and the real domain core (`popmesh-crdt`) under partitions,
//! crashes, message loss and clock skew.
//!
//! - [`host`] drives one device's samod-core hub and document actors by hand, over durable in-memory storage.
//! - [`net`] carries wire messages in order per connection; loss and partitions end connections.
//! - [`world`] is the site: the show's workload, the faults drawn from the seed, and the checkers.
//! - [`report`] is what a run or a sweep found.
//! - [`audience`] is a seeded crowd with hidden preferences, proving the kiosk's suggestions learn.
//!
//! Architecture Invariant: nothing in this crate reads the wall clock, draws OS randomness, or starts a runtime.
//! One seed drives every choice, so a run replays exactly.

pub mod audience;
pub mod broken;
pub mod host;
pub mod net;
pub mod report;
pub mod world;

pub use report::{Quantiles, RunReport, SweepReport};
pub use world::{Broken, SimOptions, World};

/// Runs one seed.
pub fn run(options: SimOptions) -> RunReport {
    World::new(options).run()
}

/// Runs every seed in `seeds` with otherwise equal options.
pub fn sweep(options: &SimOptions, seeds: std::ops::Range<u64>) -> (Vec<RunReport>, SweepReport) {
    let runs: Vec<RunReport> = seeds
        .map(|seed| {
            run(SimOptions {
                seed,
                ..options.clone()
            })
        })
        .collect();
    let summary = SweepReport::of(&runs);
    (runs, summary)
}
