//! The watchman: who this device reaches, incidents, and rehearsal calls and answers.

use super::*;

impl Node {
    /// Compares the peers in reach with those reached before: a peer that dropped out opens an incident in this
    /// device's telemetry document, and its return resolves it. The show report's MTTR comes from these.
    pub(crate) async fn watch(&self) -> Result<(), Failure> {
        let now: BTreeSet<DeviceId> = self.admitted_devices().into_iter().collect();
        let lost: Vec<DeviceId> = {
            let mut reached = lock(&self.reached);
            reached.extend(now.iter().copied());
            reached.difference(&now).copied().collect()
        };
        let roles: BTreeMap<DeviceId, Role> = self
            .view()
            .map(|v| v.certificates().map(|c| (c.device, c.role)).collect())
            .unwrap_or_default();
        let mut open = self.incidents.lock().await;
        let mut writes = Vec::new();
        for device in &lost {
            if let Some(role) = roles.get(device).copied()
                && !open.contains_key(device)
            {
                let incident = Incident {
                    kind: if role == Role::Origin {
                        "origin_lost"
                    } else {
                        "peer_lost"
                    }
                    .into(),
                    subject: device.to_hex(),
                    started: clock::now().0,
                    resolved: None,
                };
                tracing::warn!(peer = %device.short(), kind = %incident.kind, "peer out of reach");
                open.insert(*device, incident.clone());
                writes.push(incident);
            }
        }
        let back: Vec<DeviceId> = open.keys().filter(|d| now.contains(d)).copied().collect();
        for device in back {
            if let Some(mut incident) = open.remove(&device) {
                incident.resolved = Some(clock::now().0);
                tracing::info!(
                    peer = %device.short(),
                    after_ms = incident.resolved.unwrap_or(0) - incident.started,
                    "peer back in reach"
                );
                writes.push(incident);
            }
        }
        self.metrics.incidents_open.set(open.len() as i64);
        drop(open);
        let sees = (lock(&self.sees_written).as_ref() != Some(&now))
            .then(|| now.iter().map(|d| d.to_hex()).collect::<Vec<_>>());
        if writes.is_empty() && sees.is_none() {
            return Ok(());
        }
        let handle = self.telemetry_handle().await?;
        let (actor, at) = (self.actor(), clock::now());
        let wrote_sees = sees.is_some();
        self.change(&handle, move |am| {
            let mut d = Doc::<Telemetry, &mut Automerge>::attach_as(am, actor)?;
            writes.iter().try_for_each(|i| d.record_incident(i))?;
            match sees {
                Some(peers) => d.set_sees(peers, at),
                None => Ok(()),
            }
        })
        .await?
        .map_err(internal)?;
        if wrote_sees {
            *lock(&self.sees_written) = Some(now);
        }
        Ok(())
    }

    /// Calls a dry rehearsal: every device that syncs the call answers with its clock and readiness.
    pub async fn call_rehearsal(&self) -> Result<RehearsalCall, Failure> {
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
    pub(crate) async fn answer_rehearsal(&self) -> Result<(), Failure> {
        if !self.telemetry_changed.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let records = self.telemetry_records().await;
        let Some(call) = records
            .iter()
            .filter_map(|r| r.rehearsal.clone())
            .max_by_key(|c| (c.at, c.id.clone()))
        else {
            return Ok(());
        };
        if lock(&self.answered).as_deref() == Some(call.id.as_str()) {
            return Ok(());
        }
        let me = self.me().to_hex();
        if records
            .iter()
            .any(|r| r.device == me && r.rehearsal_answer.as_ref().is_some_and(|a| a.id == call.id))
        {
            *lock(&self.answered) = Some(call.id);
            return Ok(());
        }
        let preseed = self.media.report().completeness;
        let answer = RehearsalAnswer {
            id: call.id.clone(),
            at: clock::now().0,
            preseed_permille: (preseed * 1000.0).floor().clamp(0.0, 1000.0) as u32,
            peers: self
                .mesh
                .peers()
                .into_iter()
                .filter(|p| p.admitted)
                .map(|p| p.device)
                .collect(),
        };
        let handle = self.telemetry_handle().await?;
        let actor = self.actor();
        self.change(&handle, move |am| {
            Doc::<Telemetry, &mut Automerge>::attach_as(am, actor)?.answer_rehearsal(answer)
        })
        .await?
        .map_err(internal)?;
        tracing::info!(rehearsal = %call.id, "answered a rehearsal call");
        *lock(&self.answered) = Some(call.id);
        Ok(())
    }

    /// Peers this device reached before and cannot reach now.
    pub async fn open_incidents(&self) -> usize {
        self.incidents.lock().await.len()
    }

    /// The incidents open on this device now (peers out of reach).
    pub async fn open_incident_list(&self) -> Vec<Incident> {
        self.incidents.lock().await.values().cloned().collect()
    }
}
