//! `popmesh sim` from the command line: a readable report, JSON for machines, clear errors for bad flags.

mod common;

use common::popmesh;

#[test]
fn a_producer_rehearses_a_short_show_and_reads_the_report() {
    let (ok, stdout, stderr) = popmesh(&["sim", "--seed", "3", "--duration", "2m"]);
    assert!(ok, "{stderr}\n{stdout}");
    assert!(stdout.contains("seed 3 with 6 devices"), "{stdout}");
    assert!(stdout.contains("invariants       held"), "{stdout}");
    assert!(stdout.contains("MTTR"), "{stdout}");
}

#[test]
fn the_json_report_replays_to_the_same_trace() {
    let run = || {
        let (ok, stdout, stderr) = popmesh(&["sim", "--seed", "5", "--duration", "2m", "--json"]);
        assert!(ok, "{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).expect("JSON")
    };
    let (a, b) = (run(), run());
    assert_eq!(a["trace_hash"], b["trace_hash"]);
    assert_eq!(a["violations"], serde_json::json!([]));
    assert!(a["convergence_after_heal"]["p99_ms"].is_u64());
}

#[test]
fn a_sweep_lists_every_seed() {
    let (ok, stdout, stderr) = popmesh(&["sim", "--seeds", "0..3", "--duration", "1m"]);
    assert!(ok, "{stderr}\n{stdout}");
    for seed in 0..3 {
        assert!(stdout.contains(&format!("seed {seed}: ok")), "{stdout}");
    }
    assert!(stdout.contains("3 seeds, 0 failed"), "{stdout}");
}

#[test]
fn bad_flags_are_named_with_what_to_do() {
    let (ok, _, stderr) = popmesh(&["sim", "--seeds", "5..5"]);
    assert!(
        !ok && stderr.contains("--seeds") && stderr.contains("empty"),
        "{stderr}"
    );
    let (ok, _, stderr) = popmesh(&["sim", "--duration", "1d"]);
    assert!(!ok && stderr.contains("unknown unit"), "{stderr}");
    let (ok, _, stderr) = popmesh(&["sim", "--devices", "3"]);
    assert!(!ok && stderr.contains("--devices 3"), "{stderr}");
    let (ok, _, stderr) = popmesh(&["sim", "--seed", "1", "--seeds", "0..2"]);
    assert!(!ok && stderr.contains("--seed"), "{stderr}");
}
