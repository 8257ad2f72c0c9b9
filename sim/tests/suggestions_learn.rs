//! The kiosk's suggestions learn: six kiosks in three zones suggest one slot to each of 20,000 attendees whose
//! tastes they cannot see, sync their tallies every 25 attendees, and over five seeded crowds the device core's
//! Thompson sampling ends with less than half the regret of suggesting at random on every crowd, and less in all
//! than always suggesting the best-looking slot (greedy, which settles on a slot too early). BENCHMARKS.md has the
//! table at more sizes (`cargo bench -p popmesh-sim --bench regret`).

use popmesh_sim::audience::{Crowd, Policy, rehearse};

#[test]
fn thompson_sampling_learns_what_each_zone_books_and_beats_uniform_and_greedy() {
    let (mut thompson_total, mut greedy_total) = (0.0, 0.0);
    for seed in 1..=5 {
        let crowd = Crowd {
            seed,
            attendees: 20_000,
            ..Crowd::default()
        };
        let thompson = rehearse(&crowd, Policy::Thompson);
        let uniform = rehearse(&crowd, Policy::Uniform);
        let greedy = rehearse(&crowd, Policy::Greedy);
        assert!(
            thompson.regret < 0.5 * uniform.regret,
            "seed {seed}: thompson {thompson:?} vs uniform {uniform:?}"
        );
        assert!(thompson.booked > uniform.booked, "seed {seed}");
        thompson_total += thompson.regret;
        greedy_total += greedy.regret;
    }
    assert!(
        thompson_total < greedy_total,
        "thompson {thompson_total:.1} vs greedy {greedy_total:.1}"
    );
}

#[test]
fn the_same_seed_suggests_the_same_way() {
    let crowd = Crowd {
        attendees: 2_000,
        ..Crowd::default()
    };
    assert_eq!(
        rehearse(&crowd, Policy::Thompson),
        rehearse(&crowd, Policy::Thompson)
    );
}
