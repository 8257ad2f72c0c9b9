//! Suggestion tallies: how often each bookable slot was shown as a suggestion, and booked after it was, per
//! coarse context (the kiosk's zone and the hour of day), in grow-only counters of the device's telemetry
//! document. The site-wide evidence for a suggestion is the sum over every device's document, so it is the same
//! on every device that holds the same documents, in whatever order they merged (`device/tests/suggest_props.rs`).
//!
//! Nothing here names an attendee: a tally is `(slot, zone, hour) -> (shown, booked)`, counted by a kiosk only
//! for attendees who said yes to counting on that kiosk.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use autosurgeon::{Counter, Hydrate, Reconcile};
use thiserror::Error;

use crate::identity::UnixMillis;
use crate::naming::is_valid_name;

/// Distinct tallies one device may keep (slots x zones x hours it has counted in).
pub const TALLIES_MAX: usize = 4096;
/// The most one tally counter may hold on one device (as [`super::COUNTER_MAX`]).
pub const TALLY_MAX: i64 = super::COUNTER_MAX;

/// One tally in a telemetry document.
#[derive(Debug, Clone, Default, Reconcile, Hydrate)]
pub struct TallyRecord {
    pub shown: Counter,
    pub booked: Counter,
}

/// Where a tally was counted: a slot of a show, shown in a zone at an hour of the day (UTC, 0 to 23).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TallyKey {
    pub show: String,
    pub slot: String,
    pub zone: String,
    pub hour: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TallyError {
    #[error(
        "show, slot and zone must each be 1 to 64 bytes of letters, digits, '-', '_', '.' or ':', and the hour 0 to 23"
    )]
    BadKey,
    #[error("this device already keeps {TALLIES_MAX} suggestion tallies")]
    TooMany,
    #[error("a tally would pass {TALLY_MAX} on this device")]
    Overflow,
    #[error("this booking was already counted")]
    Counted,
}

impl TallyKey {
    pub fn new(show: &str, slot: &str, zone: &str, hour: u8) -> Result<Self, TallyError> {
        if !(is_valid_name(show) && is_valid_name(slot) && is_valid_name(zone) && hour < 24) {
            return Err(TallyError::BadKey);
        }
        Ok(Self {
            show: show.to_owned(),
            slot: slot.to_owned(),
            zone: zone.to_owned(),
            hour,
        })
    }

    /// Reads a key as the document stores it (`{show}/{slot}@{zone}#{hour}`; names hold none of `/`, `@`, `#`).
    pub fn parse(text: &str) -> Option<Self> {
        let (item, context) = text.split_once('@')?;
        let (show, slot) = item.split_once('/')?;
        let (zone, hour) = context.split_once('#')?;
        Self::new(show, slot, zone, hour.parse().ok()?).ok()
    }
}

impl fmt::Display for TallyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}#{}", self.show, self.slot, self.zone, self.hour)
    }
}

/// Shown and booked counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    pub shown: u64,
    pub booked: u64,
}

impl Tally {
    /// The sum of two tallies (saturating: each side is at most [`TALLY_MAX`] per device).
    pub fn plus(self, other: Tally) -> Tally {
        Tally {
            shown: self.shown.saturating_add(other.shown),
            booked: self.booked.saturating_add(other.booked),
        }
    }
}

/// Tally increments waiting for the telemetry flush window (coalesced: one operation per tally per window).
#[derive(Debug, Clone)]
pub struct TallyBuffer {
    window_ms: u64,
    last_flush: UnixMillis,
    pending: BTreeMap<TallyKey, Tally>,
    /// Bookings counted in `pending`: the shell marks them counted once their window is written.
    bookings: BTreeSet<String>,
    /// Handed to the shell by [`TallyBuffer::poll_flush`] and not yet written or failed: held against the cap as
    /// if stored, and their bookings as counted.
    in_flight: BTreeSet<TallyKey>,
    in_flight_bookings: BTreeSet<String>,
    /// The keys this device's document already holds (the cap counts them with the pending ones); `None` until
    /// the shell has read the document.
    stored: Option<BTreeSet<TallyKey>>,
}

/// One window's tallies, for the shell to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TallyFlush {
    pub increments: BTreeMap<TallyKey, Tally>,
    /// The bookings counted in it, to be marked counted once it is written.
    pub bookings: Vec<String>,
}

impl TallyBuffer {
    pub fn new(window_ms: u64, now: UnixMillis) -> Self {
        Self {
            window_ms,
            last_flush: now,
            pending: BTreeMap::new(),
            bookings: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            in_flight_bookings: BTreeSet::new(),
            stored: None,
        }
    }

    /// Whether the shell has told the buffer which keys the document holds.
    pub fn knows_stored(&self) -> bool {
        self.stored.is_some()
    }

    /// The keys the device's document holds now (after reading it at a start).
    pub fn handle_stored(&mut self, keys: impl IntoIterator<Item = TallyKey>) {
        self.stored.get_or_insert_default().extend(keys);
    }

    /// When the window has passed, hands over the coalesced increments and starts a new window. Until the shell
    /// answers with [`TallyBuffer::handle_written`] or [`TallyBuffer::handle_failed`], they count as held.
    pub fn poll_flush(&mut self, now: UnixMillis) -> Option<TallyFlush> {
        if now.saturating_sub(self.last_flush) < self.window_ms || self.pending.is_empty() {
            return None;
        }
        self.last_flush = now;
        let increments = std::mem::take(&mut self.pending);
        self.in_flight.extend(increments.keys().cloned());
        let bookings = std::mem::take(&mut self.bookings);
        self.in_flight_bookings.extend(bookings.iter().cloned());
        Some(TallyFlush {
            increments,
            bookings: bookings.into_iter().collect(),
        })
    }

    /// The shell wrote the window it was handed; `held` is every key the document holds now. (Mark the window's
    /// bookings counted before telling the buffer, so a report never finds a booking unmarked and uncounted.)
    pub fn handle_written(&mut self, held: impl IntoIterator<Item = TallyKey>) {
        self.handle_stored(held);
        self.in_flight.clear();
        self.in_flight_bookings.clear();
    }

    /// The shell could not write the window: it goes back into the buffer whole (it was admitted under the cap
    /// already), to be written with the next one.
    pub fn handle_failed(&mut self, flush: TallyFlush) {
        for (key, by) in flush.increments {
            let slot = self.pending.entry(key).or_default();
            *slot = slot.plus(by);
        }
        self.bookings.extend(flush.bookings);
        self.in_flight.clear();
        self.in_flight_bookings.clear();
    }

    /// Whether `booking` (the shell's mark for it) is counted in a window not yet written.
    pub fn counts_booking(&self, booking: &str) -> bool {
        self.bookings.contains(booking) || self.in_flight_bookings.contains(booking)
    }

    /// Counts one booking made after a suggestion of `key`, once: refused if `booking` is already counted here.
    pub fn handle_booking(&mut self, key: TallyKey, booking: String) -> Result<(), TallyError> {
        if self.counts_booking(&booking) {
            return Err(TallyError::Counted);
        }
        self.handle(key, 0, 1)?;
        self.bookings.insert(booking);
        Ok(())
    }

    /// Records one more showing or booking of `key`, in memory.
    /// A key new to the document, the window in flight and the buffer is refused once they together hold
    /// [`TALLIES_MAX`], so what is accepted can always be written.
    pub fn handle(&mut self, key: TallyKey, shown: u64, booked: u64) -> Result<(), TallyError> {
        let stored = self.stored.as_ref();
        let held_already =
            |k: &TallyKey| stored.is_some_and(|s| s.contains(k)) || self.in_flight.contains(k);
        if !self.pending.contains_key(&key) && !held_already(&key) {
            let held = stored.map_or(0, |s| s.len())
                + self
                    .in_flight
                    .iter()
                    .filter(|k| !stored.is_some_and(|s| s.contains(*k)))
                    .count()
                + self.pending.keys().filter(|k| !held_already(k)).count();
            if held >= TALLIES_MAX {
                return Err(TallyError::TooMany);
            }
        }
        let now = self.pending.get(&key).copied().unwrap_or_default();
        let next = Tally {
            shown: now.shown.checked_add(shown).ok_or(TallyError::Overflow)?,
            booked: now.booked.checked_add(booked).ok_or(TallyError::Overflow)?,
        };
        let max = TALLY_MAX as u64;
        if next.shown > max || next.booked > max {
            return Err(TallyError::Overflow);
        }
        self.pending.insert(key, next);
        Ok(())
    }

    pub fn pending(&self) -> &BTreeMap<TallyKey, Tally> {
        &self.pending
    }
}

/// The tallies of one document's record, keys read back (a key that does not parse, written by no honest
/// device, is skipped).
pub fn read_tallies(stored: &BTreeMap<String, TallyRecord>) -> BTreeMap<TallyKey, Tally> {
    stored
        .iter()
        .filter_map(|(k, t)| {
            let key = TallyKey::parse(k)?;
            // Another device's document is held to the same bounds its own node keeps.
            let read = |c: &Counter| u64::try_from(c.value().clamp(0, TALLY_MAX)).unwrap_or(0);
            let tally = Tally {
                shown: read(&t.shown),
                booked: read(&t.booked),
            };
            Some((key, tally))
        })
        .take(TALLIES_MAX)
        .collect()
}

/// Adds `increments` to the stored tallies: every key already stored, and new keys while fewer than
/// [`TALLIES_MAX`] are stored. Returns the keys it had no room for. Each counter stops at [`TALLY_MAX`].
pub(super) fn apply(
    stored: &mut BTreeMap<String, TallyRecord>,
    increments: &BTreeMap<TallyKey, Tally>,
) -> Vec<TallyKey> {
    let mut refused = Vec::new();
    for (key, by) in increments {
        let name = key.to_string();
        if !stored.contains_key(&name) && stored.len() >= TALLIES_MAX {
            refused.push(key.clone());
            continue;
        }
        let record = stored.entry(name).or_default();
        for (counter, by) in [
            (&mut record.shown, by.shown),
            (&mut record.booked, by.booked),
        ] {
            let room = TALLY_MAX.saturating_sub(counter.value()).max(0);
            let by = i64::try_from(by).unwrap_or(i64::MAX).clamp(0, room);
            if by > 0 {
                counter.increment(by);
            }
        }
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reads_back_and_hostile_ones_do_not() {
        let key = TallyKey::new("fri", "10am", "foyer", 14).expect("valid");
        assert_eq!(key.to_string(), "fri/10am@foyer#14");
        assert_eq!(TallyKey::parse("fri/10am@foyer#14"), Some(key));
        for bad in [
            "fri/10am@foyer#24",
            "fri/10am@foyer",
            "fri@foyer#1",
            "fri/a/b@foyer#1",
            "fri/10am@fo yer#1",
            "fri/10am@foyer#-1",
            "/10am@foyer#1",
        ] {
            assert_eq!(TallyKey::parse(bad), None, "{bad}");
        }
        assert_eq!(TallyKey::new("a", "b", "c", 24), Err(TallyError::BadKey));
    }

    #[test]
    fn the_buffer_coalesces_and_refuses_overflow() {
        let mut buffer = TallyBuffer::new(1000, UnixMillis(0));
        let key = TallyKey::new("fri", "10am", "foyer", 9).expect("valid");
        buffer.handle(key.clone(), 1, 0).expect("shown");
        buffer.handle(key.clone(), 1, 1).expect("booked");
        assert_eq!(
            buffer.pending()[&key],
            Tally {
                shown: 2,
                booked: 1
            }
        );
        assert_eq!(
            buffer.handle(key.clone(), u64::MAX, 0),
            Err(TallyError::Overflow)
        );
        assert_eq!(
            buffer.pending()[&key],
            Tally {
                shown: 2,
                booked: 1
            }
        );
        assert!(
            buffer.poll_flush(UnixMillis(999)).is_none(),
            "window not over"
        );
        let flush = buffer.poll_flush(UnixMillis(1000)).expect("window over");
        assert_eq!(flush.increments.len(), 1);
        assert!(buffer.pending().is_empty());
        // A failed write goes back whole; a booking counted once is refused a second time, also in flight.
        buffer.handle_failed(flush);
        assert_eq!(
            buffer.pending()[&key],
            Tally {
                shown: 2,
                booked: 1
            }
        );
        buffer
            .handle_booking(key.clone(), "bk-1".into())
            .expect("first");
        assert_eq!(
            buffer.handle_booking(key.clone(), "bk-1".into()),
            Err(TallyError::Counted)
        );
        let flush = buffer.poll_flush(UnixMillis(3000)).expect("window over");
        assert_eq!(flush.bookings, vec!["bk-1".to_owned()]);
        assert!(buffer.counts_booking("bk-1"), "in flight");
        buffer.handle_written([key.clone()]);
        assert!(!buffer.counts_booking("bk-1"), "marked by the shell now");
    }

    #[test]
    fn keys_stored_and_in_flight_count_against_the_cap() {
        let mut full = TallyBuffer::new(0, UnixMillis(0));
        full.handle_stored(
            (0..TALLIES_MAX).map(|i| TallyKey::new("fri", "s", &format!("z{i}"), 1).expect("key")),
        );
        let old = TallyKey::new("fri", "s", "z7", 1).expect("key");
        assert_eq!(full.handle(old, 1, 1), Ok(()), "a stored key still counts");
        let new = TallyKey::new("fri", "s", "new", 1).expect("key");
        assert_eq!(full.handle(new, 1, 0), Err(TallyError::TooMany));

        let mut flying = TallyBuffer::new(0, UnixMillis(0));
        flying.handle_stored([]);
        for i in 0..TALLIES_MAX {
            let key = TallyKey::new("fri", "s", &format!("z{i}"), 1).expect("key");
            flying.handle(key, 1, 0).expect("room");
        }
        let flush = flying.poll_flush(UnixMillis(1)).expect("flush");
        let late = TallyKey::new("fri", "s", "late", 1).expect("key");
        assert_eq!(
            flying.handle(late.clone(), 1, 0),
            Err(TallyError::TooMany),
            "in flight"
        );
        flying.handle_written(flush.increments.into_keys());
        assert_eq!(
            flying.handle(late, 1, 0),
            Err(TallyError::TooMany),
            "written"
        );
    }
}
