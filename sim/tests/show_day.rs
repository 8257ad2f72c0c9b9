//! Show day in the simulator: the real sync engine and domain core, a seeded world, checkers that must stay quiet.

use popmesh_sim::{SimOptions, run};

fn calm(seed: u64) -> SimOptions {
    SimOptions {
        seed,
        devices: 6,
        duration_ms: 5 * 60_000,
        faults: false,
        ..SimOptions::default()
    }
}

#[test]
fn a_calm_show_sells_pays_and_converges_everywhere() {
    let report = run(calm(1));
    assert!(report.passed(), "{:#?}", report.violations);
    assert!(report.seats_sold > 0 && report.receipts > 0, "{report:?}");
    assert!(report.final_convergence_ms.is_some(), "{report:?}");
}

#[test]
#[ignore = "prints reports for a handful of seeds; run by hand"]
fn print_a_few_reports() {
    for seed in 0..5 {
        let report = run(SimOptions {
            seed,
            devices: 6,
            duration_ms: 10 * 60_000,
            ..SimOptions::default()
        });
        println!("{}", serde_json::to_string(&report).expect("json"));
    }
}

#[test]
fn the_same_seed_replays_exactly() {
    let options = SimOptions {
        seed: 42,
        devices: 6,
        duration_ms: 5 * 60_000,
        ..SimOptions::default()
    };
    let first = run(options.clone());
    // samod-core's process-wide id counters have moved on by now; the trace must not notice.
    let second = run(options);
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.violations, second.violations);
    assert_eq!(first.messages, second.messages);
    let other = run(SimOptions {
        seed: 43,
        devices: 6,
        duration_ms: 5 * 60_000,
        ..SimOptions::default()
    });
    assert_ne!(
        first.trace_hash, other.trace_hash,
        "another seed is another world"
    );
}

#[test]
#[ignore = "diagnostic: prints where two runs of one seed part"]
fn where_two_runs_part() {
    let seed = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(42);
    let options = SimOptions {
        seed,
        devices: 6,
        duration_ms: 3 * 60_000,
        keep_trace: true,
        ..SimOptions::default()
    };
    let ra = run(options.clone());
    let rb = run(options);
    let (a, b) = (&ra.trace, &rb.trace);
    if let Some(m) = ra
        .messages_seen
        .iter()
        .zip(&rb.messages_seen)
        .position(|(x, y)| x != y)
    {
        println!("MSG A {}", minicbor::display(&ra.messages_seen[m]));
        println!("MSG B {}", minicbor::display(&rb.messages_seen[m]));
    }
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        for line in &a[i.saturating_sub(8)..(i + 4).min(a.len())] {
            println!("A {line}");
        }
        for line in &b[i.saturating_sub(8)..(i + 4).min(b.len())] {
            println!("B {line}");
        }
    }
}

#[test]
fn every_seed_of_a_sweep_replays_exactly() {
    for seed in 100..110 {
        let options = SimOptions {
            seed,
            devices: 6,
            duration_ms: 3 * 60_000,
            ..SimOptions::default()
        };
        let a = run(options.clone());
        let b = run(options);
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed} did not replay");
    }
}
