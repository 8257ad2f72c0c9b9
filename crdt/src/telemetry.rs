//! Telemetry counters: one small document per device, Automerge counters that merge by addition.
//!
//! Every Automerge counter increment is one operation in the document's history forever, so counting each event as
//! it happens would grow the history with traffic. [`CounterBuffer`] coalesces increments in memory and
//! [`Doc::<Telemetry>::flush`] writes one increment per counter per flush window: the history grows with windows,
//! not with events.

use std::collections::BTreeMap;

use std::borrow::{Borrow, BorrowMut};

use automerge::{ActorId, Automerge};
use autosurgeon::{Counter, Hydrate, Reconcile};
use thiserror::Error;

use crate::doc::{Doc, DocError, Schema};
use crate::identity::{DeviceId, UnixMillis};

pub mod tallies;

pub use tallies::{Tally, TallyBuffer, TallyError, TallyFlush, TallyKey};

/// A per-device telemetry document.
#[derive(Debug)]
pub struct Telemetry;

impl Schema for Telemetry {
    const KIND: &'static str = "popmesh.telemetry";
    const VERSION: u64 = 1;
}

/// Distinct counters one device may keep.
pub const COUNTERS_MAX: usize = 256;
/// Length of a counter name, in bytes.
pub const COUNTER_NAME_BYTES_MAX: usize = 64;

#[derive(Debug, Clone, Default, Reconcile, Hydrate)]
pub struct TelemetryRecord {
    pub device: String,
    pub counters: BTreeMap<String, Counter>,
    /// Operational incidents this device saw (a peer or the origin out of reach), keyed
    /// `{subject}@{started}`: what the show report's MTTR is measured from.
    #[autosurgeon(missing = "BTreeMap::new")]
    pub incidents: BTreeMap<String, Incident>,
    /// The peers (device hex) this device reaches now, as of `sees_at`: the operator console's "who sees whom".
    #[autosurgeon(missing = "Vec::new")]
    pub sees: Vec<String>,
    #[autosurgeon(missing = "Default::default")]
    pub sees_at: u64,
    /// Where this device's site mesh listens (libp2p multiaddrs), so devices that found the site through one
    /// bootstrap address still learn where their topology neighbours are.
    #[autosurgeon(missing = "Vec::new")]
    pub addrs: Vec<String>,
    /// A dry rehearsal this device asked the site to answer (`popmesh rehearse`).
    #[autosurgeon(missing = "Option::default")]
    pub rehearsal: Option<RehearsalCall>,
    /// This device's answer to the latest rehearsal it saw.
    #[autosurgeon(missing = "Option::default")]
    pub rehearsal_answer: Option<RehearsalAnswer>,
    /// Suggestion tallies: `{show}/{slot}@{zone}#{hour}` -> shown and booked (see [`tallies`]).
    #[autosurgeon(missing = "BTreeMap::new")]
    pub tallies: BTreeMap<String, tallies::TallyRecord>,
}

/// A rehearsal call: every device that syncs it answers with its clock and readiness.
#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate, serde::Serialize, serde::Deserialize)]
pub struct RehearsalCall {
    pub id: String,
    /// The caller's clock when it called.
    pub at: u64,
}

/// One device's answer to a rehearsal call.
#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate, serde::Serialize, serde::Deserialize)]
pub struct RehearsalAnswer {
    pub id: String,
    /// The answering device's clock when it answered.
    pub at: u64,
    /// Media of the manifests preseeded on the device, in thousandths.
    pub preseed_permille: u32,
    /// The peers it reaches (device hex).
    pub peers: Vec<String>,
}

/// Incidents one device keeps in its telemetry document; the oldest resolved ones go first.
pub const INCIDENTS_MAX: usize = 512;
/// The incident kind a device writes when it refused a peer's change (`subject`: the change's author). Instant
/// (resolved when started): it names a device that went bad, and is not an outage.
pub const ROGUE_CHANGE: &str = "rogue_change";

/// Something that stopped working at a device, and when it came back.
#[derive(Debug, Clone, PartialEq, Eq, Reconcile, Hydrate, serde::Serialize)]
pub struct Incident {
    /// `peer_lost` (a site peer out of reach) or `origin_lost` (the uplink).
    pub kind: String,
    /// The device (hex) that could not be reached.
    pub subject: String,
    pub started: u64,
    #[autosurgeon(missing = "Option::default")]
    pub resolved: Option<u64>,
}

impl Incident {
    pub fn key(&self) -> String {
        format!("{}@{}", self.subject, self.started)
    }
}

/// How telemetry behaves under overload: past `events_per_sec_max` events in one second, counters that are not
/// conversion signals keep one event in `sample_one_in` and count it `sample_one_in` times, so totals stay
/// unbiased while the work per event drops. Conversion signals (`conversion`: a name, or a prefix before a `.`)
/// are always counted exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplingPolicy {
    pub events_per_sec_max: u64,
    pub sample_one_in: u32,
    pub conversion: Vec<String>,
}

impl SamplingPolicy {
    pub fn is_conversion(&self, name: &str) -> bool {
        self.conversion.iter().any(|c| {
            name == c
                || name
                    .strip_prefix(c.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    }
}

/// What the sampler decided for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampled {
    /// Count it, by this much (the event's own amount, times the sampling factor when sampled).
    Count(i64),
    /// Sampled out: counted through another event of the same counter.
    Skip,
}

/// The overload sampler (see [`SamplingPolicy`]). Systematic per counter (every n-th event of a name is kept),
/// so it needs no randomness and the simulator replays it exactly.
#[derive(Debug, Clone)]
pub struct Sampler {
    policy: SamplingPolicy,
    second: u64,
    events: u64,
    /// Per counter: events seen while sampling, to keep every n-th.
    phase: BTreeMap<String, u32>,
    pub sampled_out: u64,
}

impl Sampler {
    pub fn new(policy: SamplingPolicy) -> Self {
        Self {
            policy,
            second: 0,
            events: 0,
            phase: BTreeMap::new(),
            sampled_out: 0,
        }
    }

    pub fn policy(&self) -> &SamplingPolicy {
        &self.policy
    }

    /// Decides one event of counter `name`, worth `by`, at `now`.
    pub fn sample(&mut self, name: &str, by: i64, now: UnixMillis) -> Sampled {
        let second = now.0 / 1000;
        if second != self.second {
            self.second = second;
            self.events = 0;
        }
        self.events += 1;
        let n = self.policy.sample_one_in.max(1);
        if self.events <= self.policy.events_per_sec_max
            || n == 1
            || self.policy.is_conversion(name)
        {
            return Sampled::Count(by);
        }
        let phase = self.phase.entry(name.to_owned()).or_insert(0);
        *phase = (*phase + 1) % n;
        if *phase == 1 % n {
            Sampled::Count(by.saturating_mul(i64::from(n)))
        } else {
            self.sampled_out += 1;
            Sampled::Skip
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CounterError {
    #[error(
        "counter name '{0}' must be 1 to {COUNTER_NAME_BYTES_MAX} bytes of a-z, 0-9, '_' or '.'"
    )]
    BadName(String),
    #[error("this device already keeps {COUNTERS_MAX} counters; '{0}' would be one more")]
    TooMany(String),
    #[error("by must be 1 to {INCREMENT_MAX} (counters only grow), not {0}")]
    BadIncrement(i64),
    #[error("counter '{0}' would pass {COUNTER_MAX} on this device")]
    Overflow(String),
}

/// Mesh addresses one device publishes.
pub const ADDRS_MAX: usize = 16;

/// The most one event may add to a counter.
pub const INCREMENT_MAX: i64 = 1_000_000;
/// The most a counter may hold on one device; far beyond any show, far below `i64::MAX`, so site-wide sums of
/// many devices' counters stay exact.
pub const COUNTER_MAX: i64 = 1 << 48;

/// Checks one event's increment: counters only grow, by a bounded amount.
pub fn check_increment(by: i64) -> Result<(), CounterError> {
    if (1..=INCREMENT_MAX).contains(&by) {
        Ok(())
    } else {
        Err(CounterError::BadIncrement(by))
    }
}

/// Checks a counter name: 1 to [`COUNTER_NAME_BYTES_MAX`] bytes of a-z, 0-9, '_' or '.'.
pub fn check_counter_name(name: &str) -> Result<(), CounterError> {
    let ok = !name.is_empty()
        && name.len() <= COUNTER_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CounterError::BadName(name.to_owned()))
    }
}

/// Increments waiting for the next flush window.
#[derive(Debug, Clone)]
pub struct CounterBuffer {
    window_ms: u64,
    last_flush: UnixMillis,
    pending: BTreeMap<String, i64>,
}

impl CounterBuffer {
    pub fn new(window_ms: u64, now: UnixMillis) -> Self {
        Self {
            window_ms,
            last_flush: now,
            pending: BTreeMap::new(),
        }
    }

    /// Records `by` more of `name`, in memory.
    /// `by` is the event's increment times its sampling factor, so it may pass [`INCREMENT_MAX`]; it must be
    /// positive, and the window's total must stay within [`COUNTER_MAX`].
    pub fn handle_increment(&mut self, name: &str, by: i64) -> Result<(), CounterError> {
        check_counter_name(name)?;
        if by <= 0 {
            return Err(CounterError::BadIncrement(by));
        }
        if !self.pending.contains_key(name) && self.pending.len() >= COUNTERS_MAX {
            return Err(CounterError::TooMany(name.to_owned()));
        }
        let slot = self.pending.entry(name.to_owned()).or_insert(0);
        match slot.checked_add(by).filter(|v| *v <= COUNTER_MAX) {
            Some(v) => *slot = v,
            None => return Err(CounterError::Overflow(name.to_owned())),
        }
        Ok(())
    }

    /// Increments not yet flushed.
    pub fn pending(&self) -> &BTreeMap<String, i64> {
        &self.pending
    }

    /// When the window has passed, hands over the coalesced increments and starts a new window.
    pub fn poll_flush(&mut self, now: UnixMillis) -> Option<BTreeMap<String, i64>> {
        if now.saturating_sub(self.last_flush) < self.window_ms || self.pending.is_empty() {
            return None;
        }
        self.last_flush = now;
        Some(std::mem::take(&mut self.pending))
    }
}

impl Doc<Telemetry> {
    pub fn create_telemetry(actor: ActorId, device: DeviceId) -> Result<Self, DocError> {
        Doc::create(
            actor,
            &TelemetryRecord {
                device: device.to_hex(),
                counters: BTreeMap::new(),
                incidents: BTreeMap::new(),
                sees: Vec::new(),
                sees_at: 0,
                addrs: Vec::new(),
                rehearsal: None,
                rehearsal_answer: None,
                tallies: BTreeMap::new(),
            },
        )
    }
}

impl<D: Borrow<Automerge>> Doc<Telemetry, D> {
    pub fn record(&self) -> Result<TelemetryRecord, DocError> {
        self.read()
    }

    /// Where the device's mesh listens, read without the rest of the document.
    pub fn addrs(&self) -> Vec<String> {
        autosurgeon::hydrate_prop::<_, Option<Vec<String>>, _, _>(
            self.automerge(),
            automerge::ROOT,
            "addrs",
        )
        .ok()
        .flatten()
        .unwrap_or_default()
    }

    /// This device's suggestion tallies, read without the rest of the document.
    pub fn tallies(&self) -> BTreeMap<TallyKey, Tally> {
        autosurgeon::hydrate_prop::<_, Option<BTreeMap<String, tallies::TallyRecord>>, _, _>(
            self.automerge(),
            automerge::ROOT,
            "tallies",
        )
        .ok()
        .flatten()
        .map(|stored| tallies::read_tallies(&stored))
        .unwrap_or_default()
    }

    pub fn counters(&self) -> Result<BTreeMap<String, i64>, DocError> {
        let record: TelemetryRecord = self.read()?;
        Ok(record
            .counters
            .into_iter()
            .map(|(k, c)| (k, c.value()))
            .collect())
    }
}

impl<D: BorrowMut<Automerge>> Doc<Telemetry, D> {
    /// Applies coalesced increments: one operation per counter, in one change. Counters past [`COUNTERS_MAX`] are
    /// refused as a whole flush, so nothing is half-applied.
    pub fn flush(&mut self, increments: &BTreeMap<String, i64>) -> Result<(), DocError> {
        let mut record: TelemetryRecord = self.read()?;
        let new = increments
            .keys()
            .filter(|k| !record.counters.contains_key(*k))
            .count();
        if record.counters.len() + new > COUNTERS_MAX {
            return Err(DocError::LimitReached(format!(
                "{new} new counters would pass the {COUNTERS_MAX} a device may keep"
            )));
        }
        for (name, by) in increments {
            let counter = record.counters.entry(name.clone()).or_default();
            // Checked: a counter never passes COUNTER_MAX, whatever was buffered; a full counter stays where it
            // is and the window's other counters are still written.
            let room = COUNTER_MAX.saturating_sub(counter.value()).max(0);
            let by = (*by).clamp(0, room);
            if by > 0 {
                counter.increment(by);
            }
        }
        self.transact(|tx| Ok(autosurgeon::reconcile(tx, &record)?))
    }

    /// Adds coalesced suggestion tallies, in one change: every key already held, and new keys while there is room
    /// under [`tallies::TALLIES_MAX`]. Returns the keys the document holds after it and those it had no room for.
    pub fn flush_tallies(
        &mut self,
        increments: &BTreeMap<TallyKey, Tally>,
    ) -> Result<(Vec<TallyKey>, Vec<TallyKey>), DocError> {
        let mut record: TelemetryRecord = self.read()?;
        let refused = tallies::apply(&mut record.tallies, increments);
        self.transact(|tx| Ok(autosurgeon::reconcile(tx, &record)?))?;
        let held = record
            .tallies
            .keys()
            .filter_map(|k| TallyKey::parse(k))
            .collect();
        Ok((held, refused))
    }

    /// Records which peers this device reaches now (sorted device hex ids).
    pub fn set_sees(&mut self, mut peers: Vec<String>, at: UnixMillis) -> Result<(), DocError> {
        peers.sort();
        let mut record: TelemetryRecord = self.read()?;
        record.sees = peers;
        record.sees_at = at.0;
        self.transact(|tx| Ok(autosurgeon::reconcile(tx, &record)?))
    }

    /// Records where this device's mesh listens (replacing what it said before).
    pub fn set_addrs(&mut self, mut addrs: Vec<String>) -> Result<(), DocError> {
        addrs.sort();
        addrs.dedup();
        addrs.truncate(ADDRS_MAX);
        let mut record: TelemetryRecord = self.read()?;
        record.addrs = addrs;
        self.transact(|tx| Ok(autosurgeon::reconcile(tx, &record)?))
    }

    /// Calls a rehearsal (replacing this device's earlier call).
    pub fn call_rehearsal(&mut self, call: RehearsalCall) -> Result<(), DocError> {
        let mut record: TelemetryRecord = self.read()?;
        record.rehearsal = Some(call);
        self.transact(|tx| Ok(autosurgeon::reconcile(tx, &record)?))
    }

    /// Answers a rehearsal (replacing this device's earlier answer).
    pub fn answer_rehearsal(&mut self, answer: RehearsalAnswer) -> Result<(), DocError> {
        let mut record: TelemetryRecord = self.read()?;
        record.rehearsal_answer = Some(answer);
        self.transact(|tx| Ok(autosurgeon::reconcile(tx, &record)?))
    }

    /// Records an incident or its resolution (the same key). Past [`INCIDENTS_MAX`], the oldest resolved
    /// incident is dropped.
    pub fn record_incident(&mut self, incident: &Incident) -> Result<(), DocError> {
        self.record_watch(std::slice::from_ref(incident), None)
    }

    /// What a device's watchman decided, as one change: incidents opened or resolved (by key; past
    /// [`INCIDENTS_MAX`] the oldest resolved ones are dropped) and, when it changed, who the device sees now.
    pub fn record_watch(
        &mut self,
        incidents: &[Incident],
        sees: Option<(Vec<String>, UnixMillis)>,
    ) -> Result<(), DocError> {
        let mut record: TelemetryRecord = self.read()?;
        for incident in incidents {
            record.incidents.insert(incident.key(), incident.clone());
        }
        while record.incidents.len() > INCIDENTS_MAX {
            let oldest = record
                .incidents
                .iter()
                .filter(|(_, i)| i.resolved.is_some())
                .min_by_key(|(_, i)| i.started)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => record.incidents.remove(&k),
                None => break,
            };
        }
        if let Some((mut peers, at)) = sees {
            peers.sort();
            record.sees = peers;
            record.sees_at = at.0;
        }
        self.transact(|tx| Ok(autosurgeon::reconcile(tx, &record)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::actor_id;

    #[test]
    fn a_thousand_taps_in_one_window_cost_one_operation() {
        let device = DeviceId([1; 32]);
        let mut doc =
            Doc::<Telemetry>::create_telemetry(actor_id(device, 0), device).expect("create");
        let mut buffer = CounterBuffer::new(1000, UnixMillis(0));
        for _ in 0..1000 {
            buffer.handle_increment("screen.tap", 1).expect("valid");
        }
        assert!(
            buffer.poll_flush(UnixMillis(500)).is_none(),
            "window not over"
        );
        let ops_before = doc
            .automerge_mut()
            .get_changes(&[])
            .iter()
            .map(|c| c.len())
            .sum::<usize>();
        let increments = buffer.poll_flush(UnixMillis(1000)).expect("window over");
        doc.flush(&increments).expect("flush");
        let ops_after = doc
            .automerge_mut()
            .get_changes(&[])
            .iter()
            .map(|c| c.len())
            .sum::<usize>();
        assert_eq!(doc.counters().expect("read")["screen.tap"], 1000);
        assert!(
            ops_after - ops_before <= 2,
            "one op to create, none per tap: {}",
            ops_after - ops_before
        );

        buffer.handle_increment("screen.tap", 5).expect("valid");
        doc.flush(&buffer.poll_flush(UnixMillis(2000)).expect("flush"))
            .expect("flush");
        let ops_final = doc
            .automerge_mut()
            .get_changes(&[])
            .iter()
            .map(|c| c.len())
            .sum::<usize>();
        assert_eq!(
            ops_final - ops_after,
            1,
            "a later window is one increment op"
        );
        assert_eq!(doc.counters().expect("read")["screen.tap"], 1005);
    }

    #[test]
    fn counters_from_two_devices_add_up_when_merged() {
        let device = DeviceId([1; 32]);
        let mut a =
            Doc::<Telemetry>::create_telemetry(actor_id(device, 0), device).expect("create");
        a.flush(&BTreeMap::from([("visits".to_owned(), 2)]))
            .expect("flush");
        let mut b = a.fork_as(actor_id(device, 1));
        a.flush(&BTreeMap::from([("visits".to_owned(), 3)]))
            .expect("flush");
        b.flush(&BTreeMap::from([("visits".to_owned(), 4)]))
            .expect("flush");
        a.merge(&mut b).expect("merge");
        assert_eq!(a.counters().expect("read")["visits"], 9);
    }

    #[test]
    fn under_overload_conversion_signals_are_exact_and_the_rest_is_sampled_without_bias() {
        let mut sampler = Sampler::new(SamplingPolicy {
            events_per_sec_max: 100,
            sample_one_in: 10,
            conversion: vec!["checkin".into(), "purchase".into()],
        });
        let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
        let mut kept = 0;
        // Half a second with 4,900 taps, 119 check-ins and 51 purchases interleaved.
        for i in 0..5_070u64 {
            let name = match i % 100 {
                0 => "purchase.merch",
                1 => "checkin",
                _ if i >= 5_000 => "checkin",
                _ => "screen.tap",
            };
            if let Sampled::Count(by) = sampler.sample(name, 1, UnixMillis(10_000 + i / 10)) {
                kept += 1;
                *totals.entry(name).or_default() += by;
            }
        }
        assert_eq!(totals["purchase.merch"], 51, "conversion signals exact");
        assert_eq!(totals["checkin"], 119, "conversion signals exact");
        let taps = totals["screen.tap"];
        assert!((4_880..=4_920).contains(&taps), "unbiased estimate: {taps}");
        assert!(kept < 800, "the work dropped: {kept} events counted");
        assert!(sampler.sampled_out > 4_000);
        // Below the threshold, nothing is sampled.
        assert_eq!(
            sampler.sample("screen.tap", 1, UnixMillis(99_000)),
            Sampled::Count(1)
        );
        assert!(!sampler.policy().is_conversion("checkins"));
    }

    #[test]
    fn incidents_are_kept_and_resolved_under_one_key() {
        let device = DeviceId([1; 32]);
        let mut doc =
            Doc::<Telemetry>::create_telemetry(actor_id(device, 0), device).expect("create");
        let mut lost = Incident {
            kind: "origin_lost".into(),
            subject: "ab".into(),
            started: 5,
            resolved: None,
        };
        doc.record_incident(&lost).expect("record");
        lost.resolved = Some(9);
        doc.record_incident(&lost).expect("resolve");
        let record = doc.record().expect("read");
        assert_eq!(record.incidents.len(), 1);
        assert_eq!(record.incidents["ab@5"].resolved, Some(9));
    }

    #[test]
    fn bad_counter_names_are_refused() {
        let mut buffer = CounterBuffer::new(1000, UnixMillis(0));
        assert!(matches!(
            buffer.handle_increment("Bad Name", 1),
            Err(CounterError::BadName(_))
        ));
    }
}
