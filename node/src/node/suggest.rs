//! Suggestions at a kiosk: the device core's bandit (`popmesh_device::suggest`) over the slots this device can
//! still sell, with the evidence of every telemetry document it holds, and the tallies a kiosk screen reports.
//! No attendee reaches here: a screen says only "these slots were shown (or one was booked) in this zone".

use super::*;
use popmesh_crdt::telemetry::{Tally, TallyBuffer, TallyKey};
use popmesh_device::suggest::{self, AlsoBooked, Candidate, Posterior, Suggestion};

/// Slots one feedback report may name.
pub const FEEDBACK_ITEMS_MAX: usize = 20;

/// What a kiosk screen reports about suggestions it showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feedback {
    /// These slots were shown as suggestions.
    Shown,
    /// This slot was booked after it was suggested.
    Booked,
}

/// Why feedback was not counted.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    UnknownSlot(#[from] UnknownSlot),
    #[error(transparent)]
    Show(#[from] ShowError),
    /// A booking report names a booking this device did not make, or one already counted.
    #[error("{0}")]
    NotABooking(String),
    /// This device keeps no more tallies.
    #[error("{0}")]
    Full(String),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// What a kiosk suggests now (the HTTP layer's `SuggestionsJson` is its wire form).
#[derive(Debug, Clone)]
pub struct Suggestions {
    pub zone: String,
    pub hour: u8,
    /// Passes a pair needs before "others also booked" names it.
    pub min_count: u64,
    /// Best first.
    pub ranked: Vec<Suggestion>,
    /// Slot -> the slots the same passes booked, most passes first.
    pub also_booked: BTreeMap<(String, String), Vec<AlsoBooked>>,
}

fn already_counted(booking: &str) -> FeedbackError {
    FeedbackError::NotABooking(format!(
        "booking {} was already counted",
        popmesh_crdt::naming::shown(booking)
    ))
}

/// The hour of the day (UTC) of `now`.
pub fn hour_of(now: popmesh_crdt::UnixMillis) -> u8 {
    ((now.0 / 3_600_000) % 24) as u8
}

impl Node {
    /// Counts what a screen reports: `items` shown (or one booked) as suggestions in `zone` at this hour.
    /// Every slot must be one of the site's; the whole report counts or none of it. A booking names its
    /// `booking`: one this device sold in that slot, counted once (remembered on disk), so a screen cannot make a
    /// slot look popular with reports alone.
    pub async fn tally(
        &self,
        zone: &str,
        event: Feedback,
        items: &[(String, String)],
        booking: Option<&str>,
    ) -> Result<usize, FeedbackError> {
        let bad = FeedbackError::Invalid;
        popmesh_crdt::naming::check_name("zone", zone).map_err(|e| bad(e.to_string()))?;
        if items.is_empty() || items.len() > FEEDBACK_ITEMS_MAX {
            return Err(bad(format!(
                "items must name 1 to {FEEDBACK_ITEMS_MAX} slots"
            )));
        }
        if event == Feedback::Booked && items.len() != 1 {
            return Err(bad("a booking names the one slot booked".into()));
        }
        let view = self.view()?;
        let hour = hour_of(clock::now());
        let mut keys = BTreeSet::new();
        for (show, slot) in items {
            if !view
                .shows
                .get(show)
                .is_some_and(|s| s.slots.contains_key(slot))
            {
                return Err(UnknownSlot {
                    show: show.clone(),
                    slot: slot.clone(),
                }
                .into());
            }
            let key = TallyKey::new(show, slot, zone, hour).map_err(|e| bad(e.to_string()))?;
            keys.insert(key);
        }
        let counted_key = match (event, booking) {
            (Feedback::Shown, None) => None,
            (Feedback::Shown, Some(_)) => {
                return Err(bad("booking_id belongs to a booked report only".into()));
            }
            (Feedback::Booked, None) => {
                return Err(bad("a booked report names its booking_id".into()));
            }
            (Feedback::Booked, Some(id)) => {
                let (show, slot) = &items[0];
                Some(self.check_booking(&view, show, slot, id).await?)
            }
        };
        if !lock(&self.tallies).knows_stored() {
            // After a start: the cap counts what this device's document already holds.
            let stored = match self.handle_by_name(&DocName::Telemetry { device: self.me() }) {
                Some(h) => h
                    .with_document_async(|am| {
                        Doc::<Telemetry, &mut Automerge>::attach(am).map(|d| d.tallies())
                    })
                    .await
                    .map_err(stopped)?
                    .map_err(internal)?,
                None => BTreeMap::new(),
            };
            lock(&self.tallies).handle_stored(stored.into_keys());
        }
        let mut buffer = lock(&self.tallies);
        if let Some(mark) = counted_key {
            // Checked again under the lock (a window may have been written and marked meanwhile), then counted
            // once: the mark is written when the window is, so a count and its mark are never apart for long.
            if buffer.counts_booking(&mark) || self.store.meta(&mark).map_err(internal)?.is_some() {
                return Err(already_counted(booking.unwrap_or_default()));
            }
            let key = keys.first().cloned().ok_or_else(|| bad("no slot".into()))?;
            return match buffer.handle_booking(key, mark) {
                Ok(()) => Ok(1),
                Err(popmesh_crdt::telemetry::TallyError::Counted) => {
                    Err(already_counted(booking.unwrap_or_default()))
                }
                Err(e) => Err(FeedbackError::Full(e.to_string())),
            };
        }
        // Whole or nothing: try on a copy, then keep it.
        let mut next: TallyBuffer = buffer.clone();
        for key in &keys {
            next.handle(key.clone(), 1, 0)
                .map_err(|e| FeedbackError::Full(e.to_string()))?;
        }
        *buffer = next;
        Ok(keys.len())
    }

    /// Checks that `booking` is a sale of this device in `show/slot` not yet counted as booked after a
    /// suggestion; returns the key that remembers it was.
    async fn check_booking(
        &self,
        view: &popmesh_crdt::directory::DirectoryView,
        show: &str,
        slot: &str,
        booking: &str,
    ) -> Result<String, FeedbackError> {
        popmesh_crdt::naming::check_name("booking_id", booking)
            .map_err(|e| FeedbackError::Invalid(e.to_string()))?;
        let handle = self.slot_handle(view, show, slot).map_err(|e| match e {
            AvailabilityError::UnknownSlot(e) => FeedbackError::UnknownSlot(e),
            AvailabilityError::Unavailable(e) => FeedbackError::Unavailable(e),
        })?;
        let me = self.me().to_hex();
        let sold_here = self
            .slot_view(&handle)
            .await?
            .record
            .devices
            .get(&me)
            .is_some_and(|d| d.sales.contains_key(booking));
        if !sold_here {
            return Err(FeedbackError::NotABooking(format!(
                "this device sold no booking {} in {show}/{slot}",
                popmesh_crdt::naming::shown(booking)
            )));
        }
        let key = format!("suggested-booking/{show}/{slot}/{booking}");
        if self.store.meta(&key).map_err(internal)?.is_some() {
            return Err(already_counted(booking));
        }
        Ok(key)
    }

    /// Suggestions for `zone` now: the slots this device can still sell (of `show`, or every show), ranked by
    /// one Thompson draw each over the tallies of every telemetry document held here, at most `limit`; and
    /// "others also booked" from the site's bookings, past the minimum count.
    pub async fn suggestions(
        &self,
        zone: &str,
        show: Option<&str>,
        limit: usize,
    ) -> Result<Suggestions, FeedbackError> {
        let bad = FeedbackError::Invalid;
        popmesh_crdt::naming::check_name("zone", zone).map_err(|e| bad(e.to_string()))?;
        if !(1..=suggest::SUGGESTIONS_MAX).contains(&limit) {
            return Err(bad(format!(
                "limit must be 1 to {}",
                suggest::SUGGESTIONS_MAX
            )));
        }
        let view = self.view()?;
        if let Some(show) = show
            && !view.shows.contains_key(show)
        {
            return Err(ShowError::Unknown(show.to_owned()).into());
        }
        let me = self.me().to_hex();
        let mut candidates = Vec::new();
        let mut bookings: Vec<(String, String, String)> = Vec::new();
        for (show_id, record) in &view.shows {
            for (slot_id, slot) in &record.slots {
                let Some(handle) = self.handle_by_name(&DocName::Slot {
                    show: show_id.clone(),
                    slot: slot_id.clone(),
                }) else {
                    continue;
                };
                let Ok(slot_view) = self.slot_view(&handle).await else {
                    continue;
                };
                for sale in slot_view
                    .record
                    .devices
                    .values()
                    .flat_map(|d| d.sales.values())
                {
                    if let Some(who) = &sale.attendee {
                        bookings.push((who.clone(), show_id.clone(), slot_id.clone()));
                    }
                }
                if show.is_some_and(|s| s != show_id) {
                    continue;
                }
                let available = slot_view.available(&me);
                candidates.push(Candidate {
                    show: show_id.clone(),
                    slot: slot_id.clone(),
                    label: slot.label.clone(),
                    starts_at: slot.starts_at,
                    available,
                });
            }
        }
        // Only attendees whose pass was checked in count towards "others also booked": a booking's attendee field
        // alone is any string a seller wrote, and made-up ones could push a pair past the minimum.
        let admitted = self.checked_in_subjects(&view).await;
        bookings.retain(|(who, _, _)| admitted.contains(who));
        let posterior = self.posterior().await;
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(internal)?;
        let hour = hour_of(clock::now());
        let ranked = suggest::rank(
            &posterior,
            &candidates,
            zone,
            hour,
            u64::from_le_bytes(seed),
            limit,
        );
        let pairs = suggest::also_booked(
            bookings
                .iter()
                .map(|(a, s, l)| (a.as_str(), s.as_str(), l.as_str())),
            suggest::ALSO_BOOKED_MIN,
        );
        Ok(Suggestions {
            zone: zone.to_owned(),
            hour,
            min_count: suggest::ALSO_BOOKED_MIN,
            ranked,
            also_booked: pairs,
        })
    }

    /// The pass subjects checked in at any door of any show, as the access lists held here say.
    async fn checked_in_subjects(
        &self,
        view: &popmesh_crdt::directory::DirectoryView,
    ) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for show in view.shows.keys() {
            let Some(h) = self.handle_by_name(&DocName::Access { show: show.clone() }) else {
                continue;
            };
            let record = h
                .with_document_async(|am| {
                    Doc::<popmesh_crdt::access::Access, &mut Automerge>::attach(am)
                        .and_then(|d| d.record())
                })
                .await;
            if let Ok(Ok(record)) = record {
                out.extend(
                    record
                        .checkins
                        .values()
                        .flat_map(|c| c.values())
                        .filter_map(|c| c.subject.clone()),
                );
            }
        }
        out
    }

    /// The suggestion evidence of every telemetry document held here, plus this device's unflushed tallies.
    pub async fn posterior(&self) -> Posterior {
        let mut posterior = Posterior::default();
        for h in self.telemetry_handles() {
            let tallies = h
                .with_document_async(|am| {
                    Doc::<Telemetry, &mut Automerge>::attach(am).map(|d| d.tallies())
                })
                .await;
            if let Ok(Ok(t)) = tallies {
                posterior.add(&t);
            }
        }
        let pending: BTreeMap<TallyKey, Tally> = lock(&self.tallies).pending().clone();
        posterior.add(&pending);
        posterior
    }

    /// Writes buffered tallies to this device's telemetry document (with the telemetry flush), then marks the
    /// window's bookings counted. On failure the window goes back into the buffer whole, to be written with the
    /// next one.
    pub(crate) async fn flush_tallies(&self) -> Result<(), Unavailable> {
        let Some(flush) = lock(&self.tallies).poll_flush(clock::now()) else {
            return Ok(());
        };
        let written = async {
            let handle = self.telemetry_handle().await?;
            let actor = self.actor();
            let increments = flush.increments.clone();
            self.change(&handle, move |am| {
                Doc::<Telemetry, &mut Automerge>::attach_as(am, actor)
                    .and_then(|mut d| d.flush_tallies(&increments))
            })
            .await?
            .map_err(internal)
        }
        .await;
        match written {
            Ok((held, refused)) => {
                for mark in &flush.bookings {
                    if let Err(e) = self.store.set_meta(mark, "1") {
                        tracing::warn!(
                            "a counted booking not marked ({e}): a report of it may count again"
                        );
                    }
                }
                lock(&self.tallies).handle_written(held);
                if !refused.is_empty() {
                    // Only if the document holds keys this node never saw (written by an earlier epoch of it
                    // that the buffer did not read): the buffer's cap refuses new keys up front otherwise.
                    tracing::warn!(
                        "{} suggestion tallies not written: this device keeps at most {}",
                        refused.len(),
                        popmesh_crdt::telemetry::tallies::TALLIES_MAX
                    );
                }
                Ok(())
            }
            Err(e) => {
                lock(&self.tallies).handle_failed(flush);
                Err(e)
            }
        }
    }
}
