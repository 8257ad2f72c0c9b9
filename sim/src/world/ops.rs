//! Domain operations, each through the real crdt code on the document the device's sync engine holds.

use super::*;

impl World {
    pub(super) fn doc_id(&self, dev: usize, name: &DocName) -> Option<DocumentId> {
        self.devices[dev].known.get(&name.to_string()).cloned()
    }

    /// Reads device `dev`'s replica of `id` as an `S` document. `None` when the device is down, does not hold the
    /// document, or `f` finds nothing.
    pub(super) fn replica<S: Schema, T>(
        &self,
        dev: usize,
        id: &DocumentId,
        f: impl FnOnce(&Doc<S, &Automerge>) -> Option<T>,
    ) -> Option<T> {
        let host = self.devices[dev].host.as_ref()?;
        host.read(id, |am| {
            Doc::<S, &Automerge>::attach(am).ok().and_then(|d| f(&d))
        })
        .ok()
        .flatten()
    }

    /// The receipt tokens in device `dev`'s replica of ledger `id`.
    pub(super) fn receipt_tokens(&self, dev: usize, id: &DocumentId) -> BTreeSet<String> {
        self.replica::<Ledger, _>(dev, id, |d| d.view().ok())
            .map(|v| v.receipts.iter().map(|r| r.token.to_string()).collect())
            .unwrap_or_default()
    }

    /// The `visits` counter in device `dev`'s replica of telemetry document `id`.
    pub(super) fn visits(&self, dev: usize, id: &DocumentId) -> i64 {
        self.replica::<Telemetry, _>(dev, id, |d| d.counters().ok())
            .and_then(|c| c.get("visits").copied())
            .unwrap_or(0)
    }

    /// Re-reads this device's directory replica: the documents it registers and the verified view of its
    /// certificates. Runs when the replica changes, as a node would on a change notification.
    pub(super) fn refresh_directory(&mut self, dev: usize) {
        if self.devices[dev].host.is_none() {
            return;
        }
        // As the node's refresh: what this device's last view verified is not checked again.
        let previous = self.devices[dev].view.take();
        let view = self.replica::<Directory, _>(dev, &self.directory, |d| {
            d.view_after(previous.as_ref()).ok()
        });
        let d = &mut self.devices[dev];
        d.known = view
            .as_ref()
            .map(|v| {
                v.documents
                    .iter()
                    .filter_map(|(k, id)| id.parse().ok().map(|id| (k.clone(), id)))
                    .collect()
            })
            .unwrap_or_default();
        d.view = view;
        let directory = self.directory.clone();
        let d = &mut self.devices[dev];
        if let Some(host) = d.host.as_mut() {
            host.know_directory(&directory);
            for (name, id) in &d.known {
                if let Ok(name) = name.parse::<DocName>() {
                    host.name(id, &name);
                }
            }
        }
        self.plan_links(dev);
        self.read_directory(dev);
    }

    pub(super) fn sell(&mut self, dev: usize) {
        let Some(slot_index) =
            (!self.slots.is_empty()).then(|| self.workload.random_range(0..self.slots.len()))
        else {
            return;
        };
        let slot = self.slots[slot_index].clone();
        let oversell = self.opts.broken == Some(Broken::Oversells) && dev == 1;
        // The broken device sells in blocks, so it runs out of quota (and past it) early in the show.
        let seats = if oversell {
            8
        } else {
            self.workload.random_range(1..=3)
        };
        let d = &mut self.devices[dev];
        d.next_op += 1;
        let booking = format!("{}-b{}-e{}", dev, d.next_op, d.epoch);
        let me = d.key.public();
        let at = UnixMillis(self.local_ms(dev));
        let ts = self.ts(dev);
        let actor = self.actor(dev);
        let d = &mut self.devices[dev];
        let Some(host) = d.host.as_mut() else {
            return;
        };
        // A failed store refuses bookings at once (the node's `writable`, a 503).
        if host.store_failed().is_some() {
            self.report.sales_refused_disk += 1;
            return;
        }
        let outcome = host.change_acked(&mut d.durability, &slot, ts, |am| {
            let mut doc =
                Doc::<Slot, &mut Automerge>::attach_as(am, actor).map_err(EscrowError::from)?;
            match doc.sell(me, &booking, seats, at) {
                Err(EscrowError::QuotaSpent { .. }) if oversell => {
                    // The broken device writes the sale anyway.
                    crate::broken::write_sale_without_quota(
                        doc.automerge_mut(),
                        me,
                        &booking,
                        seats,
                        at,
                    )
                    .map(|()| SaleOutcome::Recorded)
                    .map_err(EscrowError::from)
                }
                other => other,
            }
        });
        match outcome {
            Ok((Ok(SaleOutcome::Recorded), Ok(()))) => {
                *self.devices[dev]
                    .acked_seats
                    .entry(slot.to_string())
                    .or_default() += seats;
                self.report.seats_sold += seats;
                self.check_writer(dev, &slot);
            }
            Ok((Ok(SaleOutcome::Recorded), Err(_))) => {
                // Answered 503: not sold, though the change is in memory and may sync.
                *self.devices[dev]
                    .unacked_seats
                    .entry(slot.to_string())
                    .or_default() += seats;
                self.report.sales_refused_disk += 1;
                self.check_writer(dev, &slot);
            }
            Ok((Ok(SaleOutcome::AlreadyRecorded), _)) => {}
            Ok((Err(EscrowError::QuotaSpent { .. }), _)) => self.report.sales_refused += 1,
            Ok((Err(other), _)) => self.violation(format!(
                "{} could not sell: {other}",
                self.devices[dev].name
            )),
            Err(_) => {} // the slot has not reached this device yet
        }
        self.route(dev);
    }

    pub(super) fn flush(&mut self, dev: usize) {
        let at = UnixMillis(self.now);
        let Some(increments) = self.devices[dev].counter.poll_flush(at) else {
            return;
        };
        let Some(id) = self.own_telemetry(dev) else {
            return;
        };
        let ts = self.ts(dev);
        let actor = self.actor(dev);
        let d = &mut self.devices[dev];
        let Some(host) = d.host.as_mut() else {
            return;
        };
        let sum: i64 = increments.values().sum();
        let flushed = host.change_acked(&mut d.durability, &id, ts, |am| {
            Doc::<Telemetry, &mut Automerge>::attach_as(am, actor)
                .and_then(|mut d| d.flush(&increments))
        });
        if matches!(flushed, Ok((Ok(()), Ok(())))) {
            self.devices[dev].confirmed += sum;
        }
        self.route(dev);
    }

    /// This device's own telemetry document, created and registered the first time.
    pub(super) fn own_telemetry(&mut self, dev: usize) -> Option<DocumentId> {
        let me = self.devices[dev].key.public();
        self.own_document(dev, DocName::Telemetry { device: me }, |actor| {
            Doc::<Telemetry>::create_telemetry(actor, me)
                .expect("telemetry")
                .into_automerge()
        })
    }

    /// The device core's rebalancer decides; the escrow checks what it planned as the transfer is written.
    pub(super) fn rebalance(&mut self, dev: usize) {
        let me = self.devices[dev].key.public();
        let connected: Vec<popmesh_crdt::DeviceId> = self
            .net
            .connected(dev)
            .map(|(_, peer)| peer)
            .filter(|peer| self.devices[*peer].sells)
            .map(|peer| self.devices[peer].key.public())
            .collect();
        let mutations = self.mutations;
        for slot in self.slots.clone() {
            let ts = self.ts(dev);
            let actor = self.actor(dev);
            let at = UnixMillis(self.local_ms(dev));
            let d = &mut self.devices[dev];
            d.next_op += 1;
            let transfer = format!("{}-t{}-e{}", dev, d.next_op, d.epoch);
            let Some(host) = d.host.as_mut() else { return };
            if host.store_failed().is_some() {
                return;
            }
            let moved = host.change_acked(&mut d.durability, &slot, ts, |am| {
                let mut doc = Doc::<Slot, &mut Automerge>::attach_as(am, actor)?;
                let view = doc.view()?;
                let plan =
                    popmesh_device::rebalancer::plan(&view, &me, &connected, LOW_WATER, mutations);
                match plan {
                    Some(t) => doc
                        .transfer(me, t.to, &transfer, t.seats, at)
                        .map(|()| Some(t)),
                    None => Ok(None),
                }
            });
            match moved {
                Ok((Ok(Some(_)), _)) => {
                    self.report.quota_transfers += 1;
                    self.check_writer(dev, &slot);
                }
                Ok((Ok(None), _)) | Err(_) => {}
                Ok((Err(e), _)) => {
                    let name = self.devices[dev].name.clone();
                    self.violation(format!(
                        "{name}'s rebalancer planned a transfer the escrow refuses: {e}"
                    ));
                }
            }
        }
        self.route(dev);
    }
}
