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

/// Mutations of the device core itself (`popmesh_device::Mutation`): every simulated device runs the broken
/// decision, and the simulator must catch it within the seeds of the CI sweep (`sweep.rs`, same options).
/// Returns the first seed that caught it, and what was said.
fn caught_within_the_ci_sweep(broken: Broken, says: &str) -> (u64, String) {
    for seed in 0..200 {
        let report = run(with(broken, seed));
        if let Some(v) = report.violations.iter().find(|v| v.contains(says)) {
            return (seed, v.clone());
        }
    }
    panic!("{broken:?} went unnoticed in all 200 seeds of the CI sweep");
}

#[test]
fn a_desk_that_answers_before_the_write_is_durable_is_caught() {
    let (seed, said) =
        caught_within_the_ci_sweep(Broken::AnswersBeforeDurable, "before it was on its disk");
    eprintln!("caught at seed {seed}: {said}");
}

#[test]
fn a_rebalancer_that_gives_quota_it_does_not_hold_is_caught() {
    let (seed, said) = caught_within_the_ci_sweep(
        Broken::GivesUnheldQuota,
        "planned a transfer the escrow refuses",
    );
    eprintln!("caught at seed {seed}: {said}");
}

#[test]
fn a_gate_that_admits_a_revoked_device_is_caught() {
    let (seed, said) =
        caught_within_the_ci_sweep(Broken::AdmitsRevoked, "which its directory revokes");
    eprintln!("caught at seed {seed}: {said}");
}

#[test]
fn a_desk_that_leaves_other_shows_out_of_the_stored_limit_is_caught() {
    let (seed, said) =
        caught_within_the_ci_sweep(Broken::IgnoresOtherShows, "over its stored limit");
    eprintln!("caught at seed {seed}: {said}");
}

#[test]
fn a_write_that_saves_its_change_without_the_synced_changes_it_rests_on_is_caught() {
    // The origin's reconciliation marks sync into a POS page's lazy tier; a payment on top of them, saved alone,
    // would survive a SIGKILL that lost them, and Automerge could not apply it.
    let (seed, said) =
        caught_within_the_ci_sweep(Broken::SavesChangeAlone, "before it was on its disk");
    eprintln!("caught at seed {seed}: {said}");
}
