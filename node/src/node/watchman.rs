//! The watchman: who this device reaches, incidents, and rehearsal calls and answers.

use popmesh_device::watchman::Watch;

use super::*;

impl Node {
    /// Tells the watchman core who is in reach now and writes what it decides: incidents opened for peers that
    /// dropped out (their return resolves them) and who this device sees, into this device's telemetry document.
    /// The show report's MTTR comes from these.
    pub(crate) async fn watch(&self) -> Result<(), Unavailable> {
        if self.own_telemetry_changed.swap(false, Ordering::AcqRel) {
            let read = async {
                let handle = self.telemetry_handle().await?;
                let record = handle.with_document_async(|am| {
                    Doc::<Telemetry, &mut Automerge>::attach(am).and_then(|d| d.record())
                });
                record.await.map_err(stopped)?.map_err(internal)
            };
            match read.await {
                Ok(record) => {
                    lock(&self.watchman).handle_recorded(record.incidents.values(), clock::now())
                }
                Err(e) => {
                    // Read again next look; who is in reach is still followed meanwhile.
                    self.own_telemetry_changed.store(true, Ordering::Release);
                    tracing::debug!("own telemetry not read yet: {e}");
                }
            }
        }
        let in_reach: BTreeSet<DeviceId> = self.admitted_devices().into_iter().collect();
        // The devices this device should reach: those its link plan names (as the linker plans them).
        let roles: BTreeMap<DeviceId, Role> = self
            .view()
            .map(|v| {
                let plan = popmesh_device::links::planned(self.me(), Some(&v), clock::now())
                    .unwrap_or_default();
                v.certificates()
                    .filter(|c| plan.contains(&c.device))
                    .map(|c| (c.device, c.role))
                    .collect()
            })
            .unwrap_or_default();
        let (watch, open) = {
            let mut core = lock(&self.watchman);
            let watch = core.handle_reach(clock::now(), in_reach, &roles);
            (watch, core.open().count())
        };
        self.metrics.incidents_open.set(open as i64);
        let Some(watch) = watch else {
            return Ok(());
        };
        for incident in &watch.incidents {
            match incident.resolved {
                None => {
                    tracing::warn!(peer = %incident.subject, kind = %incident.kind, "peer out of reach")
                }
                Some(at) => tracing::info!(
                    peer = %incident.subject,
                    after_ms = at.saturating_sub(incident.started),
                    "peer back in reach"
                ),
            }
        }
        let written = self.write_watch(watch.clone()).await;
        lock(&self.watchman).handle_written(&watch, written.is_ok());
        written
    }

    async fn write_watch(&self, watch: Watch) -> Result<(), Unavailable> {
        let handle = self.telemetry_handle().await?;
        let (actor, at) = (self.actor(), clock::now());
        self.change(&handle, move |am| {
            Doc::<Telemetry, &mut Automerge>::attach_as(am, actor)?
                .record_watch(&watch.incidents, watch.sees.map(|peers| (peers, at)))
        })
        .await?
        .map_err(internal)
    }

    /// Calls a dry rehearsal: every device that syncs the call answers with its clock and readiness.
    pub async fn call_rehearsal(&self) -> Result<RehearsalCall, Unavailable> {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(internal)?;
        let call = RehearsalCall {
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
            at: clock::now().0,
        };
        let handle = self.telemetry_handle().await?;
        let (actor, written) = (self.actor(), call.clone());
        self.change(&handle, move |am| {
            Doc::<Telemetry, &mut Automerge>::attach_as(am, actor)?.call_rehearsal(written)
        })
        .await?
        .map_err(internal)?;
        Ok(call)
    }

    /// Every device's answer to rehearsal call `id` that has reached this device (device hex -> answer).
    pub async fn rehearsal_answers(&self, id: &str) -> BTreeMap<String, RehearsalAnswer> {
        self.telemetry_records()
            .await
            .into_iter()
            .filter_map(|r| {
                let answer = r.rehearsal_answer.filter(|a| a.id == id)?;
                Some((r.device, answer))
            })
            .collect()
    }

    /// Answers the newest rehearsal call any device made, once. Reads the telemetry documents only when one of
    /// them changed since the last look.
    pub(crate) async fn answer_rehearsal(&self) -> Result<(), Unavailable> {
        if !self.telemetry_changed.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let records = self.telemetry_records().await;
        let Some(call) = lock(&self.watchman).rehearsal_to_answer(&records, &self.me()) else {
            return Ok(());
        };
        let peers = self
            .mesh
            .peers()
            .into_iter()
            .filter(|p| p.admitted)
            .map(|p| p.device)
            .collect();
        let answer = popmesh_device::watchman::Watchman::answer(
            &call,
            clock::now(),
            self.media.report().completeness,
            peers,
        );
        let handle = self.telemetry_handle().await?;
        let actor = self.actor();
        self.change(&handle, move |am| {
            Doc::<Telemetry, &mut Automerge>::attach_as(am, actor)?.answer_rehearsal(answer)
        })
        .await?
        .map_err(internal)?;
        tracing::info!(rehearsal = %call.id, "answered a rehearsal call");
        lock(&self.watchman).handle_answered(call.id);
        Ok(())
    }

    /// Peers this device reached before and cannot reach now.
    pub fn open_incidents(&self) -> usize {
        lock(&self.watchman).open().count()
    }

    /// The incidents open on this device now (peers out of reach).
    pub fn open_incident_list(&self) -> Vec<Incident> {
        lock(&self.watchman).open().cloned().collect()
    }
}
