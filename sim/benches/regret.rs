//! The regret table of BENCHMARKS.md ("Suggestions learn"): Thompson sampling (the device core's), uniform and
//! greedy choice over seeded crowds of 1,000 to 50,000 attendees, mean of 10 seeds each.
//!
//! `cargo bench -p popmesh-sim --bench regret`

use popmesh_sim::audience::{Crowd, Policy, rehearse};

fn main() {
    let seeds = 1..=10u64;
    println!(
        "| attendees | policy | regret (mean of 10 seeds) | regret per attendee | booked | of the best possible |"
    );
    println!("|---:|---|---:|---:|---:|---:|");
    for attendees in std::env::var("REGRET_SIZES")
        .ok()
        .map(|s| {
            s.split(",")
                .map(|x| x.parse().expect("size"))
                .collect::<Vec<u64>>()
        })
        .unwrap_or(vec![1_000u64, 10_000, 50_000])
    {
        for policy in [Policy::Uniform, Policy::Greedy, Policy::Thompson] {
            let (mut regret, mut booked, mut best) = (0.0, 0.0, 0.0);
            for seed in seeds.clone() {
                let o = rehearse(
                    &Crowd {
                        seed,
                        attendees,
                        ..Crowd::default()
                    },
                    policy,
                );
                regret += o.regret;
                booked += o.booked as f64;
                best += o.best_expected;
            }
            let n = seeds.clone().count() as f64;
            println!(
                "| {attendees} | {} | {:.1} | {:.4} | {:.0} | {:.1}% |",
                policy.name(),
                regret / n,
                regret / n / attendees as f64,
                booked / n,
                100.0 * booked / best
            );
        }
    }
}
