//! Seeds that once broke an invariant, kept so the bug stays fixed; and the proof that a failing run replays
//! exactly, so a seed printed by CI is all a developer needs.

use popmesh_sim::{Broken, SimOptions, run};

/// A seed that failed, with the world it failed in and what it exposed.
struct Kept {
    seed: u64,
    devices: usize,
    duration_ms: u64,
    exposed: &'static str,
}

/// Every seed the simulator ever failed on. Add the seed, the size and the bug here in the fix's commit.
const KEPT: &[Kept] = &[
    Kept {
        seed: 42,
        devices: 6,
        duration_ms: 5 * 60_000,
        exposed: "did not replay: writes through a samod-held document went out under samod's random actor \
                  instead of the device's (fixed by Doc::attach_as, which every write through the engine now uses)",
    },
    Kept {
        seed: 104,
        devices: 6,
        duration_ms: 3 * 60_000,
        exposed: "did not replay: automerge 0.12 encodes a change bundle in hash-map order, so equal messages \
                  differed in bytes (fixed by tracing what a message did, the heads it produced, not its bytes)",
    },
];

#[test]
fn every_kept_seed_still_passes_and_replays() {
    for kept in KEPT {
        let options = SimOptions {
            seed: kept.seed,
            devices: kept.devices,
            duration_ms: kept.duration_ms,
            ..SimOptions::default()
        };
        let first = run(options.clone());
        assert!(
            first.passed(),
            "seed {} ({}) fails again: {:#?}",
            kept.seed,
            kept.exposed,
            first.violations
        );
        assert_eq!(
            first.trace_hash,
            run(options).trace_hash,
            "seed {} no longer replays",
            kept.seed
        );
    }
}

#[test]
fn a_failing_seed_replays_with_the_same_violations() {
    // The first seed at which an overselling device is caught (the workload decides which seed that is).
    let options = (0..50)
        .map(|seed| SimOptions {
            seed,
            devices: 6,
            duration_ms: 3 * 60_000,
            broken: Some(Broken::Oversells),
            ..SimOptions::default()
        })
        .find(|o| !run(o.clone()).passed())
        .expect("an overselling device is caught within 50 seeds");
    let first = run(options.clone());
    let again = run(options);
    assert!(!first.passed());
    assert_eq!(first.violations, again.violations);
    assert_eq!(first.trace_hash, again.trace_hash);
}
