//! Suggestions: what a kiosk proposes an attendee sees or books next, learnt from what the site saw.
//!
//! The rule is a Thompson-sampling bandit over the slots that can still be booked. Each slot's chance of being
//! booked when suggested, in a context (the kiosk's zone and the hour of the day), has a Beta posterior whose
//! evidence is the site's suggestion tallies ([`popmesh_crdt::telemetry::tallies`]): grow-only counters kept per
//! device, so the site-wide posterior is their sum and equal on every device holding the same documents, in
//! whatever order they merged. The prior of a slot in a context is its record everywhere on the site, worth
//! [`PRIOR_STRENGTH`] showings, so a new zone or hour starts from what the site knows instead of from nothing.
//! Sampling (not the posterior mean) is what makes it explore: a slot shown rarely has a wide posterior and is
//! drawn high now and then, until the evidence says what it is worth. `sim/tests/suggestions_learn.rs` proves it
//! learns against uniform and greedy choice; BENCHMARKS.md has the regret table.
//!
//! "Others also booked" ([`also_booked`]) counts pairs of slots booked by the same pass, site-wide, and names a
//! pair only when at least [`ALSO_BOOKED_MIN`] different passes booked both, so no single attendee's bookings can
//! be read from it.
//!
//! Randomness is passed in (a seed): the node draws one per request, the simulator its own.

use std::collections::{BTreeMap, BTreeSet};

use popmesh_crdt::telemetry::{Tally, TallyKey};

/// How many showings the site-wide record of a slot is worth as the prior of one context: a context's own
/// evidence outweighs the site's after about this many showings there (BENCHMARKS.md: at 10 greedy choice beat it).
pub const PRIOR_STRENGTH: f64 = 100.0;
/// Showings in this context before a suggestion is called popular here rather than explored.
pub const EVIDENCE_MIN: u64 = 20;
/// Different passes that must have booked both slots before "others also booked" names the pair.
pub const ALSO_BOOKED_MIN: u64 = 5;
/// Slots one answer may suggest.
pub const SUGGESTIONS_MAX: usize = 20;

/// A slot a suggestion may name: one that can still be booked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub show: String,
    pub slot: String,
    pub label: String,
    pub starts_at: u64,
    pub available: u64,
}

/// The evidence about one slot: in the asked context, and everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Evidence {
    pub here: Tally,
    pub everywhere: Tally,
}

/// Why a slot is suggested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Enough showings here that its draw rests on evidence.
    Popular,
    /// Shown too rarely here to know: suggested so the site learns.
    Exploring,
}

impl Why {
    pub fn name(self) -> &'static str {
        match self {
            Why::Popular => "popular",
            Why::Exploring => "exploring",
        }
    }
}

/// One suggestion, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Suggestion {
    pub candidate: Candidate,
    /// The Thompson draw, 0 to 1.
    pub score: f64,
    pub why: Why,
    pub evidence: Evidence,
}

impl Suggestion {
    /// The reason the page shows, in words.
    pub fn reason(&self) -> String {
        let Evidence { here, everywhere } = self.evidence;
        match self.why {
            Why::Popular => format!(
                "Booked by {} of {} who saw it suggested here at this hour",
                here.booked.min(here.shown),
                here.shown
            ),
            Why::Exploring if everywhere.shown >= EVIDENCE_MIN => format!(
                "New to this spot; across the site {} of {} booked it",
                everywhere.booked.min(everywhere.shown),
                everywhere.shown
            ),
            Why::Exploring => "New at this show: we are still finding out what people like".into(),
        }
    }
}

type Item = (String, String);

/// The site's suggestion evidence: the sum of every device's tallies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Posterior {
    here: BTreeMap<TallyKey, Tally>,
    everywhere: BTreeMap<Item, Tally>,
}

impl Posterior {
    /// Adds one device's tallies (its whole document, or increments since the last add).
    pub fn add(&mut self, tallies: &BTreeMap<TallyKey, Tally>) {
        for (key, tally) in tallies {
            let here = self.here.entry(key.clone()).or_default();
            *here = here.plus(*tally);
            let item = (key.show.clone(), key.slot.clone());
            let all = self.everywhere.entry(item).or_default();
            *all = all.plus(*tally);
        }
    }

    /// Every tally, summed over devices.
    pub fn tallies(&self) -> &BTreeMap<TallyKey, Tally> {
        &self.here
    }

    /// The evidence about `show/slot` in `zone` at `hour`.
    pub fn evidence(&self, show: &str, slot: &str, zone: &str, hour: u8) -> Evidence {
        let here = TallyKey {
            show: show.to_owned(),
            slot: slot.to_owned(),
            zone: zone.to_owned(),
            hour,
        };
        Evidence {
            here: self.here.get(&here).copied().unwrap_or_default(),
            everywhere: self
                .everywhere
                .get(&(show.to_owned(), slot.to_owned()))
                .copied()
                .unwrap_or_default(),
        }
    }

    /// The Beta posterior (alpha, beta) of a slot's booking chance in a context: the slot's record in every other
    /// context as a prior worth [`PRIOR_STRENGTH`] showings, then this context's evidence.
    pub fn beta(&self, evidence: Evidence) -> (f64, f64) {
        // The prior is the record everywhere else, so this context's own evidence is not counted twice.
        let all = Tally {
            shown: evidence
                .everywhere
                .shown
                .saturating_sub(evidence.here.shown),
            booked: evidence
                .everywhere
                .booked
                .saturating_sub(evidence.here.booked),
        };
        let mean = (all.booked.min(all.shown) as f64 + 1.0) / (all.shown as f64 + 2.0);
        let booked = evidence.here.booked.min(evidence.here.shown) as f64;
        let missed = evidence.here.shown.saturating_sub(evidence.here.booked) as f64;
        (
            1.0 + PRIOR_STRENGTH * mean + booked,
            1.0 + PRIOR_STRENGTH * (1.0 - mean) + missed,
        )
    }
}

/// Ranks `candidates` for `zone` at `hour` by one Thompson draw each, best first, at most `limit`
/// (and [`SUGGESTIONS_MAX`]). Slots with no seat left are never suggested. Deterministic in `seed`.
pub fn rank(
    posterior: &Posterior,
    candidates: &[Candidate],
    zone: &str,
    hour: u8,
    seed: u64,
    limit: usize,
) -> Vec<Suggestion> {
    let mut rng = SplitMix(seed);
    let mut out: Vec<Suggestion> = candidates
        .iter()
        .filter(|c| c.available > 0)
        .map(|c| {
            let evidence = posterior.evidence(&c.show, &c.slot, zone, hour);
            let (a, b) = posterior.beta(evidence);
            Suggestion {
                candidate: c.clone(),
                score: rng.beta(a, b),
                why: if evidence.here.shown >= EVIDENCE_MIN {
                    Why::Popular
                } else {
                    Why::Exploring
                },
                evidence,
            }
        })
        .collect();
    out.sort_by(|x, y| y.score.total_cmp(&x.score));
    out.truncate(limit.min(SUGGESTIONS_MAX));
    out
}

/// One pair of "others also booked": passes that booked `from` also booked `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlsoBooked {
    pub to: (String, String),
    /// Different passes that booked both (at least [`ALSO_BOOKED_MIN`]).
    pub passes: u64,
}

/// "Others also booked" from bookings `(pass subject, show, slot)` of the whole site: for each slot, the slots
/// booked by the same passes, most passes first, named only with at least `min` (never below
/// [`ALSO_BOOKED_MIN`]) different passes.
pub fn also_booked<'a>(
    bookings: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    min: u64,
) -> BTreeMap<(String, String), Vec<AlsoBooked>> {
    let min = min.max(ALSO_BOOKED_MIN);
    let mut by_pass: BTreeMap<&str, BTreeSet<(&str, &str)>> = BTreeMap::new();
    for (pass, show, slot) in bookings {
        by_pass.entry(pass).or_default().insert((show, slot));
    }
    type Pair<'s> = ((&'s str, &'s str), (&'s str, &'s str));
    let mut pairs: BTreeMap<Pair<'_>, u64> = BTreeMap::new();
    for slots in by_pass.values() {
        for a in slots {
            for b in slots {
                if a != b {
                    *pairs.entry((*a, *b)).or_default() += 1;
                }
            }
        }
    }
    let mut out: BTreeMap<(String, String), Vec<AlsoBooked>> = BTreeMap::new();
    for ((from, to), passes) in pairs {
        if passes >= min {
            out.entry((from.0.to_owned(), from.1.to_owned()))
                .or_default()
                .push(AlsoBooked {
                    to: (to.0.to_owned(), to.1.to_owned()),
                    passes,
                });
        }
    }
    for list in out.values_mut() {
        list.sort_by(|x, y| y.passes.cmp(&x.passes).then_with(|| x.to.cmp(&y.to)));
    }
    out
}

/// SplitMix64: a small, well-mixed generator for draws from a passed-in seed.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Gamma(shape, 1) for shape >= 1 (Marsaglia and Tsang); below 1 by the boost `G(k+1) * U^(1/k)`.
    fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            return self.gamma(shape + 1.0) * self.unit().powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.unit();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Beta(a, b), for a, b > 0.
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(b);
        x / (x + y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(id: &str, available: u64) -> Candidate {
        Candidate {
            show: "fri".into(),
            slot: id.into(),
            label: id.into(),
            starts_at: 0,
            available,
        }
    }

    fn tally(slot: &str, zone: &str, hour: u8, shown: u64, booked: u64) -> (TallyKey, Tally) {
        (
            TallyKey::new("fri", slot, zone, hour).expect("key"),
            Tally { shown, booked },
        )
    }

    #[test]
    fn beta_draws_have_the_right_mean() {
        let mut rng = SplitMix(7);
        let n = 20_000;
        let mean: f64 = (0..n).map(|_| rng.beta(3.0, 7.0)).sum::<f64>() / n as f64;
        assert!((mean - 0.3).abs() < 0.01, "{mean}");
        let small: f64 = (0..n).map(|_| rng.beta(0.5, 0.5)).sum::<f64>() / n as f64;
        assert!((small - 0.5).abs() < 0.02, "{small}");
    }

    #[test]
    fn a_slot_booked_often_here_leads_and_a_sold_out_one_is_never_suggested() {
        let mut posterior = Posterior::default();
        posterior.add(&BTreeMap::from([
            tally("jazz", "foyer", 14, 200, 120),
            tally("poetry", "foyer", 14, 200, 10),
            tally("magic", "foyer", 14, 200, 150),
        ]));
        let candidates = [slot("jazz", 5), slot("poetry", 5), slot("magic", 0)];
        let mut firsts = BTreeMap::<String, u32>::new();
        for seed in 0..200 {
            let ranked = rank(&posterior, &candidates, "foyer", 14, seed, 3);
            assert!(ranked.iter().all(|s| s.candidate.slot != "magic"));
            *firsts.entry(ranked[0].candidate.slot.clone()).or_default() += 1;
            assert_eq!(ranked[0].why, Why::Popular);
        }
        assert!(firsts["jazz"] > 195, "{firsts:?}");
        let top = &rank(&posterior, &candidates, "foyer", 14, 1, 1)[0];
        assert_eq!(
            top.reason(),
            "Booked by 120 of 200 who saw it suggested here at this hour"
        );
    }

    #[test]
    fn a_new_context_starts_from_the_site_wide_record_and_still_explores() {
        let mut posterior = Posterior::default();
        posterior.add(&BTreeMap::from([
            tally("jazz", "foyer", 14, 100, 30),
            tally("poetry", "foyer", 14, 100, 25),
            tally("magic", "foyer", 14, 300, 15),
        ]));
        let candidates = [slot("jazz", 5), slot("poetry", 5), slot("magic", 5)];
        let mut firsts = BTreeMap::<String, u32>::new();
        for seed in 0..1000 {
            let ranked = rank(&posterior, &candidates, "bar", 20, seed, 3);
            assert_eq!(ranked[0].why, Why::Exploring);
            *firsts.entry(ranked[0].candidate.slot.clone()).or_default() += 1;
        }
        // No evidence in this context: the site-wide record leads, a close second is still drawn first now and
        // then, and a slot the site knows is poor is not.
        let jazz = firsts.get("jazz").copied().unwrap_or(0);
        let poetry = firsts.get("poetry").copied().unwrap_or(0);
        assert!((600..950).contains(&jazz), "{firsts:?}");
        assert!(poetry >= 50, "{firsts:?}");
        assert!(firsts.get("magic").copied().unwrap_or(0) < 10, "{firsts:?}");
        let r = &rank(&posterior, &candidates, "bar", 20, 3, 1)[0];
        assert!(r.reason().starts_with("New to this spot; across the site"));
    }

    #[test]
    fn others_also_booked_names_a_pair_only_past_the_minimum() {
        let mut bookings = Vec::new();
        let passes: Vec<String> = (0..6).map(|i| format!("att-{i}")).collect();
        for (i, p) in passes.iter().enumerate() {
            bookings.push((p.as_str(), "fri", "jazz"));
            if i < 5 {
                bookings.push((p.as_str(), "fri", "magic"));
            }
            if i < 4 {
                bookings.push((p.as_str(), "fri", "poetry"));
            }
        }
        let pairs = also_booked(bookings.iter().copied(), 0);
        let from_jazz = &pairs[&("fri".to_owned(), "jazz".to_owned())];
        assert_eq!(
            from_jazz,
            &vec![AlsoBooked {
                to: ("fri".into(), "magic".into()),
                passes: 5
            }]
        );
        assert!(
            !pairs.contains_key(&("fri".to_owned(), "poetry".to_owned())),
            "four passes are too few to name"
        );
        // The same pass booking twice counts once.
        let twice = [("att-x", "fri", "jazz"); 2];
        assert!(also_booked(twice.iter().copied(), 1).is_empty());
    }
}
