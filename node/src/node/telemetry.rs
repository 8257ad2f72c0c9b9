//! Telemetry: counters through consent and the sampler, attendee profiles (local only), and flushing.

use super::*;

/// Why an event was not counted.
#[derive(Debug, thiserror::Error)]
pub enum CountError {
    /// A bad counter name, increment or attendee id, or a counter past its bounds.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// Why an attendee's profile on this device was not read or updated.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The id is not a pseudonym, or the update is not valid.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl From<ProfileError> for CountError {
    fn from(e: ProfileError) -> Self {
        match e {
            ProfileError::Invalid(m) => Self::Invalid(format!("attendee: {m}")),
            ProfileError::Unavailable(e) => Self::Unavailable(e),
        }
    }
}

impl Node {
    /// Counts telemetry; buffered and written as one change per counter per window. An event about an attendee
    /// counts only if they consented to analytics on this device; under overload, events that are not
    /// conversion signals are sampled ([`Sampler`]).
    pub fn count(
        &self,
        counter: &str,
        by: i64,
        attendee: Option<&str>,
    ) -> Result<Counted, CountError> {
        let bad = CountError::Invalid;
        check_counter_name(counter).map_err(|e| bad(e.to_string()))?;
        popmesh_crdt::telemetry::check_increment(by).map_err(|e| bad(e.to_string()))?;
        if let Some(who) = attendee {
            check_pseudonym(who).map_err(|e| bad(format!("attendee: {e}")))?;
            if !self.profile(who)?.is_some_and(|p| p.counts_analytics()) {
                self.metrics.no_consent.inc();
                return Ok(Counted::NoConsent);
            }
        }
        let by = match lock(&self.sampler).sample(counter, by, clock::now()) {
            Sampled::Count(by) => by,
            Sampled::Skip => {
                self.metrics.sampled_out.inc();
                return Ok(Counted::SampledOut);
            }
        };
        lock(&self.telemetry)
            .handle_increment(counter, by)
            .map_err(|e| bad(e.to_string()))?;
        Ok(Counted::Counted(by))
    }

    /// What an attendee told this device (kept here only; see `popmesh_crdt::privacy`).
    pub fn profile(&self, attendee: &str) -> Result<Option<AttendeeProfile>, ProfileError> {
        check_pseudonym(attendee).map_err(|e| ProfileError::Invalid(e.to_string()))?;
        let Some(text) = self
            .store
            .meta(&format!("profile/{attendee}"))
            .map_err(internal)?
        else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| internal(format!("stored profile of {attendee}: {e}")).into())
    }

    /// Folds one visit's answers into an attendee's profile on this device, durably. Nothing of it syncs.
    pub fn update_profile(
        &self,
        attendee: &str,
        update: &AttendeeProfile,
    ) -> Result<AttendeeProfile, ProfileError> {
        let mut profile = self.profile(attendee)?.unwrap_or_default();
        profile
            .merge(update, clock::now().0)
            .map_err(|e| ProfileError::Invalid(e.to_string()))?;
        let text = serde_json::to_string(&profile).map_err(internal)?;
        self.store
            .set_meta(&format!("profile/{attendee}"), &text)
            .map_err(internal)?;
        Ok(profile)
    }

    /// Every device's counters, summed.
    pub async fn counters(&self) -> Result<BTreeMap<String, i64>, Unavailable> {
        let handles = self.telemetry_handles();
        let mut total = BTreeMap::new();
        for h in handles {
            let counters = h
                .with_document_async(|am| {
                    Doc::<Telemetry, &mut Automerge>::attach(am).and_then(|d| d.counters())
                })
                .await
                .map_err(stopped)?;
            for (k, v) in counters.unwrap_or_default() {
                {
                    let slot = total.entry(k).or_insert(0i64);
                    *slot = slot.saturating_add(v);
                }
            }
        }
        for (k, v) in lock(&self.telemetry).pending() {
            {
                let slot = total.entry(k.clone()).or_insert(0i64);
                *slot = slot.saturating_add(*v);
            }
        }
        Ok(total)
    }

    /// Every device's telemetry document this device holds.
    pub(crate) fn telemetry_handles(&self) -> Vec<DocHandle> {
        read(&self.docs)
            .values()
            .filter(|(n, _)| matches!(n, DocName::Telemetry { .. }))
            .map(|(_, h)| h.clone())
            .collect()
    }

    /// This device's telemetry document, created on first use.
    pub(crate) async fn telemetry_handle(&self) -> Result<DocHandle, Unavailable> {
        let me = self.me();
        self.own_document(DocName::Telemetry { device: me }, move |actor| {
            Doc::create_telemetry(actor, me)
                .map(Doc::into_automerge)
                .map_err(internal)
        })
        .await
    }

    pub(crate) async fn flush_telemetry(&self) -> Result<(), Unavailable> {
        let Some(increments) = lock(&self.telemetry).poll_flush(clock::now()) else {
            return Ok(());
        };
        if increments.is_empty() {
            return Ok(());
        }
        let handle = self.telemetry_handle().await?;
        let actor = self.actor();
        self.change(&handle, move |am| {
            Doc::<Telemetry, &mut Automerge>::attach_as(am, actor)
                .and_then(|mut d| d.flush(&increments))
        })
        .await?
        .map_err(internal)
    }

    /// Every device's telemetry document this device holds (counters, incidents, who it sees).
    pub async fn telemetry_records(&self) -> Vec<TelemetryRecord> {
        let handles = self.telemetry_handles();
        let mut out = Vec::new();
        for h in handles {
            let record = h
                .with_document_async(|am| {
                    Doc::<Telemetry, &mut Automerge>::attach(am).and_then(|d| d.record())
                })
                .await;
            if let Ok(Ok(r)) = record {
                out.push(r);
            }
        }
        out
    }
}
