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

#[derive(Debug, Clone, Reconcile, Hydrate)]
pub struct TelemetryRecord {
    pub device: String,
    pub counters: BTreeMap<String, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CounterError {
    #[error(
        "counter name '{0}' must be 1 to {COUNTER_NAME_BYTES_MAX} bytes of a-z, 0-9, '_' or '.'"
    )]
    BadName(String),
    #[error("this device already keeps {COUNTERS_MAX} counters; '{0}' would be one more")]
    TooMany(String),
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
    pub fn handle_increment(&mut self, name: &str, by: i64) -> Result<(), CounterError> {
        let ok = !name.is_empty()
            && name.len() <= COUNTER_NAME_BYTES_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.".contains(&b));
        if !ok {
            return Err(CounterError::BadName(name.to_owned()));
        }
        if !self.pending.contains_key(name) && self.pending.len() >= COUNTERS_MAX {
            return Err(CounterError::TooMany(name.to_owned()));
        }
        let slot = self.pending.entry(name.to_owned()).or_insert(0);
        *slot = slot.saturating_add(by);
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
            },
        )
    }
}

impl<D: Borrow<Automerge>> Doc<Telemetry, D> {
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
            record
                .counters
                .entry(name.clone())
                .or_default()
                .increment(*by);
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
    fn bad_counter_names_are_refused() {
        let mut buffer = CounterBuffer::new(1000, UnixMillis(0));
        assert!(matches!(
            buffer.handle_increment("Bad Name", 1),
            Err(CounterError::BadName(_))
        ));
    }
}
