//! A seeded crowd of attendees with hidden preferences at a site of kiosks, to prove the kiosk's suggestions
//! learn: every kiosk runs the device core's bandit (`popmesh_device::suggest::rank`) over the tallies it holds,
//! counts what it showed and what was booked in its own tallies (as the node does), and sees the other kiosks'
//! tallies when the site syncs. The baselines choose from the same slots: uniform at random, or greedy (the best
//! posterior mean on the same evidence, never exploring).
//!
//! Regret is expected regret: per attendee, the booking chance of the best slot for their context minus that of
//! the slot suggested, summed. The hidden chances are drawn from the seed and never shown to the policy.

use std::collections::BTreeMap;

use popmesh_crdt::telemetry::{Tally, TallyKey};
use popmesh_device::suggest::{self, Candidate, Posterior, SplitMix};

/// How a kiosk picks the one slot it suggests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The device core's Thompson sampling.
    Thompson,
    /// A slot at random.
    Uniform,
    /// The highest posterior mean on the same evidence: no exploration.
    Greedy,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Thompson => "thompson",
            Policy::Uniform => "uniform",
            Policy::Greedy => "greedy",
        }
    }
}

/// The site the crowd visits.
#[derive(Debug, Clone)]
pub struct Crowd {
    pub seed: u64,
    /// Attendees, one suggestion each.
    pub attendees: u64,
    pub slots: usize,
    pub zones: usize,
    /// Kiosks, spread over the zones.
    pub kiosks: usize,
    /// Attendees between two syncs of the kiosks' tallies.
    pub sync_every: u64,
    /// Opening hours (the show's day, from 10:00).
    pub hours: u8,
}

impl Default for Crowd {
    fn default() -> Self {
        Self {
            seed: 1,
            attendees: 10_000,
            slots: 8,
            zones: 3,
            kiosks: 6,
            sync_every: 25,
            hours: 12,
        }
    }
}

/// What one policy did with one crowd.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub policy: Policy,
    /// Expected regret, summed over attendees.
    pub regret: f64,
    /// Bookings made after a suggestion.
    pub booked: u64,
    /// The bookings the best slot for every context would have made, in expectation.
    pub best_expected: f64,
}

/// The hidden booking chances: zone x hour x slot.
struct Truth {
    chance: Vec<Vec<Vec<f64>>>,
}

impl Truth {
    fn draw(crowd: &Crowd, rng: &mut SplitMix) -> Self {
        let appeal: Vec<f64> = (0..crowd.slots).map(|_| 0.02 + 0.2 * rng.unit()).collect();
        let starts: Vec<f64> = (0..crowd.slots)
            .map(|_| rng.unit() * f64::from(crowd.hours))
            .collect();
        let chance = (0..crowd.zones)
            .map(|_| {
                let affinity: Vec<f64> = (0..crowd.slots).map(|_| 0.4 + 1.2 * rng.unit()).collect();
                (0..crowd.hours)
                    .map(|h| {
                        (0..crowd.slots)
                            .map(|s| {
                                // Soon beats later: a slot is most wanted in the hours before it starts.
                                let ahead = starts[s] - f64::from(h);
                                let timing = if ahead < 0.0 {
                                    0.2
                                } else {
                                    (-ahead / 4.0).exp()
                                };
                                (appeal[s] * affinity[s] * (0.3 + timing)).min(0.9)
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        Self { chance }
    }
}

/// Runs `policy` over `crowd`.
pub fn rehearse(crowd: &Crowd, policy: Policy) -> Outcome {
    // The same seed draws the same truth and the same crowd for every policy.
    let mut world = SplitMix(crowd.seed);
    let truth = Truth::draw(crowd, &mut world);
    let mut choices = SplitMix(crowd.seed ^ 0x5eed_0fc4_01ce);
    let candidates: Vec<Candidate> = (0..crowd.slots)
        .map(|s| Candidate {
            show: "fri".into(),
            slot: format!("s{s}"),
            label: format!("slot {s}"),
            starts_at: 0,
            available: 1_000_000,
        })
        .collect();
    let zones: Vec<String> = (0..crowd.zones).map(|z| format!("zone-{z}")).collect();
    // Each kiosk's own tallies (its telemetry document) and the site as it last synced.
    let mut own: Vec<BTreeMap<TallyKey, Tally>> = vec![BTreeMap::new(); crowd.kiosks];
    let mut seen: Vec<Posterior> = vec![Posterior::default(); crowd.kiosks];
    let mut outcome = Outcome {
        policy,
        regret: 0.0,
        booked: 0,
        best_expected: 0.0,
    };
    let per_hour = (crowd.attendees / u64::from(crowd.hours)).max(1);
    for n in 0..crowd.attendees {
        if n % crowd.sync_every.max(1) == 0 {
            let mut site = Posterior::default();
            for tallies in &own {
                site.add(tallies);
            }
            seen.iter_mut().for_each(|p| *p = site.clone());
        }
        let kiosk = (world.next_u64() % crowd.kiosks as u64) as usize;
        let zone = kiosk % crowd.zones;
        let hour = ((n / per_hour) as u8).min(crowd.hours - 1);
        let posterior = &seen[kiosk];
        let pick = match policy {
            Policy::Thompson => {
                let ranked = suggest::rank(
                    posterior,
                    &candidates,
                    &zones[zone],
                    10 + hour,
                    choices.next_u64(),
                    1,
                );
                candidates
                    .iter()
                    .position(|c| c.slot == ranked[0].candidate.slot)
                    .unwrap_or(0)
            }
            Policy::Uniform => (choices.next_u64() % crowd.slots as u64) as usize,
            Policy::Greedy => {
                let mean = |c: &Candidate| {
                    let (a, b) = posterior.beta(posterior.evidence(
                        &c.show,
                        &c.slot,
                        &zones[zone],
                        10 + hour,
                    ));
                    a / (a + b)
                };
                let mut best = 0;
                for (i, c) in candidates.iter().enumerate() {
                    if mean(c) > mean(&candidates[best]) {
                        best = i;
                    }
                }
                best
            }
        };
        let chances = &truth.chance[zone][usize::from(hour)];
        let best = chances.iter().copied().fold(0.0, f64::max);
        outcome.regret += best - chances[pick];
        outcome.best_expected += best;
        let booked = world.unit() < chances[pick];
        outcome.booked += u64::from(booked);
        let key = TallyKey::new("fri", &candidates[pick].slot, &zones[zone], 10 + hour)
            .expect("the crowd's names are valid");
        let tally = own[kiosk].entry(key.clone()).or_default();
        *tally = tally.plus(Tally {
            shown: 1,
            booked: u64::from(booked),
        });
        // A kiosk knows its own counts at once.
        seen[kiosk].add(&BTreeMap::from([(
            key,
            Tally {
                shown: 1,
                booked: u64::from(booked),
            },
        )]));
    }
    outcome
}
