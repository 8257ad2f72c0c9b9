//! Checkers: safety after every event, liveness at every probe.

use super::*;

impl World {
    /// The escrow invariant for the device that just wrote, on its own replica (cheap: its own entries only).
    pub(super) fn check_writer(&mut self, dev: usize, id: &DocumentId) {
        let me = self.devices[dev].key.public().to_hex();
        let verdict = self.replica::<Slot, _>(dev, id, |d| Some(d.check_device(&me)));
        if let Some(Err(broken)) = verdict {
            let name = self.devices[dev].name.clone();
            self.violation(format!("seat oversold on {name} as it wrote: {broken}"));
        }
    }

    /// The escrow invariant on one device's replica of a slot.
    ///
    /// Run on the writer's replica right after every sale and transfer: by causality (see `popmesh_crdt::escrow`),
    /// a replica that holds a device's sale holds everything that justified it, so an oversell is visible on the
    /// writer's replica the moment it is written. Other replicas are swept every minute and at the end.
    pub(super) fn check_slot(&mut self, dev: usize, id: &DocumentId) {
        let verdict =
            self.replica::<Slot, _>(dev, id, |d| d.view().ok().map(|v| v.check_invariant()));
        if let Some(Err(broken)) = verdict {
            let slot = match self.names.get(id) {
                Some(DocName::Slot { slot, .. }) => slot.clone(),
                _ => id.to_string(),
            };
            let name = self.devices[dev].name.clone();
            self.violation(format!(
                "seat oversold in {slot} as seen on {name}: {broken}"
            ));
        }
    }

    /// Every document a device changed since the last event is checked against its invariant at once.
    pub(super) fn check_changes(&mut self) {
        for dev in 0..self.devices.len() {
            let Some(host) = self.devices[dev].host.as_mut() else {
                continue;
            };
            let changed = host.take_changed();
            for id in &changed {
                let heads = host.read(id, |am| am.get_heads()).unwrap_or_default();
                self.trace.update(&(dev as u64).to_be_bytes());
                self.trace.update(id.as_bytes());
                for head in &heads {
                    self.trace.update(&head.0);
                }
                if self.opts.keep_trace {
                    let short: Vec<String> = heads
                        .iter()
                        .map(|h| h.to_string()[..8].to_owned())
                        .collect();
                    self.report
                        .trace
                        .push(format!("{} dev={dev} doc={id} heads={short:?}", self.now));
                }
            }
            if changed.contains(&self.directory) {
                self.refresh_directory(dev);
            }
            for id in changed {
                match self.names.get(&id) {
                    Some(DocName::Slot { .. }) => {
                        // The writer's replica was checked when it wrote (see `check_slot`); other replicas are
                        // swept every minute as a backstop.
                        self.dirty_slots.insert((dev, id.clone()));
                    }
                    Some(DocName::Ledger { device, .. }) => {
                        if *device == self.devices[dev].key.public() {
                            self.check_own_receipts(dev);
                        }
                        self.check_ledger(dev, &id, false);
                    }
                    Some(DocName::Telemetry { device }) => {
                        if *device == self.devices[dev].key.public() {
                            self.devices[dev].own_telemetry_changed = true;
                        }
                        let owner = self.devices.iter().position(|d| d.key.public() == *device);
                        let value = self.visits(dev, &id);
                        if let Some(owner) = owner {
                            // Jepsen's counter bound: no read exceeds what was attempted.
                            if value > self.devices[owner].attempted {
                                let name = self.devices[dev].name.clone();
                                self.violation(format!(
                                    "{name} reads {value} visits from a device that counted {}",
                                    self.devices[owner].attempted
                                ));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Every receipt in a ledger replica must verify; an issuer not yet in this replica's directory is only an error
    /// once everything has converged (`strict`).
    pub(super) fn check_ledger(&mut self, dev: usize, id: &DocumentId, strict: bool) {
        if self.devices[dev].view.is_none() {
            self.refresh_directory(dev);
        }
        let Some(ledger) = self.replica::<Ledger, _>(dev, id, |d| d.view().ok()) else {
            return;
        };
        let d = &self.devices[dev];
        let Some(directory) = d.view.as_ref() else {
            return;
        };
        let mut problems = Vec::new();
        for (token, err) in &ledger.malformed {
            problems.push(format!("malformed receipt {token}: {err}"));
        }
        let mut newly_verified = Vec::new();
        for receipt in &ledger.receipts {
            let token = receipt.token.to_string();
            if !strict && d.verified.contains(&token) {
                continue;
            }
            match receipt.verify(directory) {
                Ok(()) => newly_verified.push(token),
                Err(ReceiptError::Untrusted(_)) if !strict => {}
                Err(err) => {
                    problems.push(format!("receipt {} does not verify: {err}", receipt.token))
                }
            }
        }
        self.devices[dev].verified.extend(newly_verified);
        let name = self.devices[dev].name.clone();
        for p in problems {
            self.violation(format!("on {name}: {p}"));
        }
    }

    /// No acknowledged receipt lost: a device still holds every receipt it acknowledged.
    pub(super) fn check_own_receipts(&mut self, dev: usize) {
        let Some(host) = self.devices[dev].host.as_ref() else {
            return;
        };
        if self.devices[dev].view.is_none() {
            return;
        }
        // Every page of this device's ledgers the directory registers, from page 0 up, in every show.
        let me = self.devices[dev].key.public();
        let mut pages = Vec::new();
        for show in SHOWS {
            let first = pages.len();
            while let Some(id) = self.doc_id(
                dev,
                &DocName::Ledger {
                    show: show.into(),
                    device: me,
                    page: (pages.len() - first) as u32,
                },
            ) {
                pages.push(id);
            }
        }
        if pages.is_empty() {
            if !self.devices[dev].acked_receipts.is_empty() {
                let who = self.devices[dev].name.clone();
                self.violation(format!("{who} lost the registration of its ledger"));
            }
            return;
        }
        if pages.iter().any(|id| !host.is_open(id)) {
            return;
        }
        let held: BTreeSet<String> = pages
            .iter()
            .flat_map(|id| self.receipt_tokens(dev, id))
            .collect();
        let lost: Vec<String> = self.devices[dev]
            .acked_receipts
            .difference(&held)
            .cloned()
            .collect();
        if !lost.is_empty() {
            let who = self.devices[dev].name.clone();
            self.violation(format!(
                "{who} lost {} acknowledged receipts, e.g. {}",
                lost.len(),
                lost[0]
            ));
        }
    }

    /// The slow checks and the convergence clock, once a simulated second.
    pub(super) fn probe(&mut self) {
        let n = self.devices.len();
        for dev in 0..n {
            self.open_documents(dev);
            self.watch(dev);
            self.preseed(dev);
        }
        // No acknowledged receipt lost (also checked whenever a device's own ledger changes).
        if self.now.is_multiple_of(10_000) {
            for dev in 0..n {
                self.check_own_receipts(dev);
            }
        }
        if self.now.is_multiple_of(SWEEP_MS) {
            for (dev, id) in std::mem::take(&mut self.dirty_slots) {
                self.check_slot(dev, &id);
            }
        }
        // Feature parity after a failure: documents open and caught up, media preseeded.
        for dev in 0..n {
            if let Some(failed) = self.devices[dev].failed_at
                && self.has_parity(dev)
            {
                self.report.mttr_samples_ms.push(self.now - failed);
                self.devices[dev].failed_at = None;
            }
        }
        if self.converged() {
            if let Some(healed) = self.heal_pending.take() {
                self.report.heal_samples_ms.push(self.now - healed);
            }
            if let Some(ended) = self.faults_ended_at {
                self.report.final_convergence_ms = Some(self.now - ended);
                self.converged_at = Some(self.now);
            }
        }
    }

    /// Fetches missing media of the manifest from a connected peer that has it.
    pub(super) fn preseed(&mut self, dev: usize) {
        let d = &self.devices[dev];
        if d.host.is_none() || !d.present || d.blobs.len() + d.fetching.len() >= BLOBS {
            return;
        }
        let wanted = self
            .replica::<Manifest, _>(dev, &self.manifest, |d| d.record().ok())
            .map_or(0, |r| r.entries.len());
        for blob in 0..wanted.min(BLOBS) {
            let d = &self.devices[dev];
            if d.blobs.contains(&blob) || d.fetching.contains(&blob) {
                continue;
            }
            let providers: Vec<(usize, usize)> = self
                .net
                .connected(dev)
                .filter(|(_, peer)| self.devices[*peer].blobs.contains(&blob))
                .collect();
            if providers.is_empty() {
                continue;
            }
            let (link, provider) = providers[self.workload.random_range(0..providers.len())];
            let time =
                self.blob_sizes[blob] / BLOB_BYTES_PER_MS + self.net.links[link].latency.base_ms;
            let calm = self.devices[provider]
                .vanished_at
                .is_none_or(|t| self.now >= t + 60_000);
            if self.opts.faults
                && self.faults_ended_at.is_none()
                && calm
                && self.faults.random_bool(0.1)
            {
                self.devices[provider].vanished_at = Some(self.now);
                // The provider vanishes mid-transfer; the fetch fails and the next probe picks another provider.
                self.at(time / 2, Event::Vanish { dev: provider });
            }
            let epoch = self.net.links[link].epoch;
            self.devices[dev].fetching.insert(blob);
            self.at(
                time,
                Event::BlobDone {
                    dev,
                    blob,
                    link,
                    epoch,
                },
            );
        }
    }

    /// Whether `dev` keeps document `id`: the site's shape over its directory replica says so (every document
    /// before it holds one).
    pub(super) fn holds(&self, dev: usize, id: &DocumentId) -> bool {
        let d = &self.devices[dev];
        match (self.names.get(id), d.shape.as_ref()) {
            (Some(name), Some(shape)) => shape.holds(&d.key.public(), name),
            _ => true,
        }
    }

    /// The heads of every document this device's directory registers and the site's shape has it hold (and the
    /// directory's own), `None` if it lacks one.
    pub(super) fn heads_of(&self, dev: usize) -> Option<BTreeMap<DocumentId, Vec<ChangeHash>>> {
        let host = self.devices[dev].host.as_ref()?;
        let registered: BTreeSet<&DocumentId> = self.devices[dev].known.values().collect();
        self.names
            .keys()
            .filter(|id| **id == self.directory || (registered.contains(id) && self.holds(dev, id)))
            .map(|id| {
                host.read(id, |am| am.get_heads())
                    .ok()
                    .map(|h| (id.clone(), h))
            })
            .collect()
    }

    /// Every present device holds every document it should, each at the same heads on every device holding it,
    /// and every media blob of the manifest.
    pub(super) fn converged(&self) -> bool {
        let mut seen: BTreeMap<DocumentId, Vec<ChangeHash>> = BTreeMap::new();
        let mut any = false;
        for dev in 0..self.devices.len() {
            // The stolen device is refused by everyone: it never converges, by design.
            if !self.devices[dev].present || self.devices[dev].stolen {
                continue;
            }
            if self.devices[dev].blobs.len() < BLOBS {
                return false;
            }
            let Some(heads) = self.heads_of(dev) else {
                return false;
            };
            for (id, h) in heads {
                match seen.get(&id) {
                    None => {
                        seen.insert(id, h);
                    }
                    Some(f) if *f != h => return false,
                    Some(_) => {}
                }
            }
            any = true;
        }
        any
    }

    pub(super) fn has_parity(&self, dev: usize) -> bool {
        let d = &self.devices[dev];
        if d.host.is_none() || d.blobs.len() < BLOBS {
            return false;
        }
        let Some(mine) = self.heads_of(dev) else {
            return false;
        };
        // Caught up with every connected peer, on every document both hold.
        self.net.connected(dev).all(|(_, peer)| {
            self.heads_of(peer).is_none_or(|theirs| {
                theirs
                    .iter()
                    .all(|(id, h)| mine.get(id).is_none_or(|m| m == h))
            })
        })
    }

    /// The end of the run: liveness, then the checks that need a converged site.
    pub(super) fn finish(mut self) -> RunReport {
        self.report.simulated_ms = self.now;
        self.report.documents = self.names.len();
        self.report.messages = self.net.links.iter().map(|l| l.messages).sum();
        self.report.bytes = self.net.links.iter().map(|l| l.bytes).sum();
        self.report.changes += self
            .devices
            .iter()
            .filter_map(|d| d.host.as_ref())
            .map(|h| h.changes)
            .sum::<u64>();
        self.report.convergence_after_heal = Quantiles::of(&self.report.heal_samples_ms);
        self.report.mttr = Quantiles::of(&self.report.mttr_samples_ms);
        if self.converged_at.is_none() {
            let bound = self.opts.liveness_bound_ms;
            let missing = self.describe_divergence();
            self.violation(format!(
                "no convergence within {bound} ms after faults stopped: {missing}"
            ));
        } else {
            self.final_checks();
            self.check_degrees();
        }
        self.report.trace_hash = self.trace.finalize().to_hex().to_string();
        self.report
    }

    /// Once the site has converged, no device holds more links than its part's bound in the shape its own
    /// directory replica gives (`Topology::degree_max`).
    pub(super) fn check_degrees(&mut self) {
        for dev in 0..self.devices.len() {
            let d = &self.devices[dev];
            let Some(max) = d.shape.as_ref().and_then(|t| t.degree_max(&d.key.public())) else {
                continue;
            };
            let held = self.net.connected(dev).count();
            if held > max {
                let name = d.name.clone();
                self.violation(format!(
                    "{name} holds {held} links, over its bound of {max}"
                ));
            }
        }
    }

    pub(super) fn describe_divergence(&self) -> String {
        let mut out = Vec::new();
        for dev in 0..self.devices.len() {
            let d = &self.devices[dev];
            if d.present && d.blobs.len() < BLOBS {
                out.push(format!(
                    "{} holds {} of {BLOBS} media blobs",
                    d.name,
                    d.blobs.len()
                ));
            }
            if self.heads_of(dev).is_none() {
                let registered: BTreeSet<&DocumentId> = d.known.values().collect();
                let missing: Vec<String> = self
                    .names
                    .iter()
                    .filter(|(id, _)| **id == self.directory || registered.contains(id))
                    .filter(|(id, _)| !d.host.as_ref().is_some_and(|h| h.is_open(id)))
                    .map(|(_, name)| name.to_string())
                    .collect();
                let shown: Vec<&str> = missing.iter().take(3).map(String::as_str).collect();
                out.push(format!(
                    "{}{} lacks {} of the {} documents its directory registers ({})",
                    d.name,
                    if d.stolen {
                        " (stolen or forged, refused by all)"
                    } else {
                        ""
                    },
                    missing.len(),
                    registered.len() + 1,
                    shown.join(", ")
                ));
            }
        }
        if out.is_empty() {
            "every device holds every document but their heads differ".into()
        } else {
            out.join("; ")
        }
    }

    pub(super) fn final_checks(&mut self) {
        let origin = self.devices.len() - 1;
        if self.converged_at.is_some() {
            self.check_outages();
        }
        // The origin holds every receipt any device acknowledged, and every one verifies.
        let all_acked: BTreeSet<String> = self
            .devices
            .iter()
            .flat_map(|d| d.acked_receipts.iter().cloned())
            .collect();
        let ledgers: Vec<DocumentId> = self
            .names
            .iter()
            .filter(|(_, n)| matches!(n, DocName::Ledger { .. }))
            .map(|(id, _)| id.clone())
            .collect();
        let mut at_origin = BTreeSet::new();
        for id in &ledgers {
            self.check_ledger(origin, id, true);
            at_origin.extend(self.receipt_tokens(origin, id));
        }
        let missing = all_acked.difference(&at_origin).count();
        if missing > 0 {
            self.violation(format!(
                "the origin is missing {missing} acknowledged receipts"
            ));
        }
        // No seat lost or oversold: each slot holds exactly what was acknowledged, within capacity.
        for slot in self.slots.clone() {
            let Some(view) = self.replica::<Slot, _>(origin, &slot, |d| d.view().ok()) else {
                continue;
            };
            let acked: u64 = self
                .devices
                .iter()
                .map(|d| d.acked_seats.get(&slot.to_string()).copied().unwrap_or(0))
                .sum();
            // Sales refused for a failed write may still have synced from memory: they count at most.
            let unacked: u64 = self
                .devices
                .iter()
                .map(|d| d.unacked_seats.get(&slot.to_string()).copied().unwrap_or(0))
                .sum();
            let held = view.total_sold();
            if held < acked || held > acked.saturating_add(unacked) {
                self.violation(format!(
                    "slot holds {held} sold seats but {acked} were acknowledged ({unacked} more written, \
                     refused for the disk)"
                ));
            }
            if let Err(broken) = view.check_invariant() {
                self.violation(format!("after convergence: {broken}"));
            }
        }
        // Counters: every converged read lies between what was confirmed and what was attempted.
        let confirmed: i64 = self.devices.iter().map(|d| d.confirmed).sum();
        let attempted: i64 = self.devices.iter().map(|d| d.attempted).sum();
        let read: i64 = self
            .names
            .iter()
            .filter(|(_, n)| matches!(n, DocName::Telemetry { .. }))
            .map(|(id, _)| self.visits(origin, id))
            .sum();
        if read < confirmed || read > attempted {
            self.violation(format!(
                "visits read {read}, outside [confirmed {confirmed}, attempted {attempted}]"
            ));
        }
        // Equal materialized state on every device holding a document, not only equal heads.
        let mut states: BTreeMap<DocumentId, BTreeSet<String>> = BTreeMap::new();
        for dev in 0..self.devices.len() {
            for (id, digest) in self.state_digests(dev) {
                states.entry(id).or_default().insert(digest);
            }
        }
        if let Some((id, digests)) = states.iter().find(|(_, d)| d.len() > 1) {
            let name = self
                .names
                .get(id)
                .map(|n| n.to_string())
                .unwrap_or_default();
            self.violation(format!(
                "devices with equal heads materialize {} different states of {name}",
                digests.len()
            ));
        }
    }

    /// What each document `dev` holds materializes to (the records the domain reads), hashed.
    pub(super) fn state_digests(&self, dev: usize) -> Vec<(DocumentId, String)> {
        let d = &self.devices[dev];
        let Some(host) = d.host.as_ref().filter(|_| d.present && !d.stolen) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (id, name) in &self.names {
            if !self.holds(dev, id) || !host.is_open(id) {
                continue;
            }
            let text = host
                .read(id, |am| match name {
                    DocName::Slot { .. } => Doc::<Slot, &Automerge>::attach(am)
                        .ok()
                        .and_then(|d| d.view().ok())
                        .map(|v| format!("{:?}", v.record)),
                    DocName::Ledger { .. } => Doc::<Ledger, &Automerge>::attach(am)
                        .ok()
                        .and_then(|d| d.record().ok())
                        .map(|r| format!("{r:?}")),
                    DocName::Directory => Doc::<Directory, &Automerge>::attach(am)
                        .ok()
                        .and_then(|d| d.record().ok())
                        .map(|r| format!("{r:?}")),
                    _ => None,
                })
                .ok()
                .flatten();
            if let Some(text) = text {
                out.push((
                    id.clone(),
                    blake3::hash(text.as_bytes()).to_hex().to_string(),
                ));
            }
        }
        out
    }
}
