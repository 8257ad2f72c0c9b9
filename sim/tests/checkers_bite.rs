//! Mutation tests: a deliberately broken device must be reported, or the checkers prove nothing.

use popmesh_sim::{Broken, SimOptions, run};

fn with(broken: Broken, seed: u64) -> SimOptions {
    SimOptions {
        seed,
        devices: 6,
        duration_ms: 5 * 60_000,
        broken: Some(broken),
        ..SimOptions::default()
    }
}

#[test]
fn a_device_that_drops_incoming_operations_never_converges_and_is_reported() {
    let report = run(with(Broken::DropsIncoming, 7));
    assert!(
        !report.passed(),
        "the broken device went unnoticed: {report:?}"
    );
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("no convergence")),
        "{:#?}",
        report.violations
    );
}

#[test]
fn a_device_that_sells_beyond_its_quota_is_reported_as_overselling() {
    let report = run(with(Broken::Oversells, 7));
    assert!(
        !report.passed(),
        "the broken device went unnoticed: {report:?}"
    );
    assert!(
        report.violations.iter().any(|v| v.contains("oversold")),
        "{:#?}",
        report.violations
    );
}
