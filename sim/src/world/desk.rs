//! The simulated device's shell around the device core's payment desk, and its store: the same
//! `popmesh_device::Desk` the node runs decides every payment; this file carries its actions out on the simulated
//! sync engine (ledger pages as real samod-core documents) and on the two-tier storage, with the fsync of each
//! acknowledged write taking simulated time, so a crash or a disk fault can fall between a change and its answer.

use popmesh_crdt::ledger::{EarlierPages, PaymentOutcome};
use popmesh_device::desk::{DeskError, Ready};
use popmesh_device::{DeskAction, StoreFault, Ticket};

use super::*;

/// A batch the desk started: taken on its page `TAKE_READ_MS` later, with what the device's other shows held
/// (read when it started) and what their batches in flight asked for (the core says).
pub(super) struct PendingTake {
    batch: BatchId,
    show: String,
    requests: Vec<PaymentRequest>,
    elsewhere: u64,
}

/// A show's open ledger page on a simulated device, and what the pages before it hold.
pub(super) struct Pages {
    page: u32,
    current: DocumentId,
    earlier: EarlierPages,
    earlier_ids: Vec<DocumentId>,
}

impl World {
    /// A client at a POS terminal asks for a payment (sometimes a retry of the last one).
    pub(super) fn pay(&mut self, dev: usize) {
        if self.devices[dev].host.is_none() || self.devices[dev].view.is_none() {
            return;
        }
        // Ready means ready: the desk answers nothing until this device's pages are open and its keys indexed.
        let loading = self.own_pages_loading(dev);
        match self.devices[dev].desk.ready(&loading) {
            Ok(Ready::Yes) => {}
            Ok(Ready::IndexKeys) => {
                let keys = self.own_keys(dev);
                self.devices[dev].desk.handle_keys_indexed(keys);
            }
            Err(_) => {
                self.report.payments_loading += 1;
                return;
            }
        }
        let retry = self.workload.random_bool(0.1) && self.devices[dev].last_payment.is_some();
        let (show, request) = if retry {
            self.report.payment_retries += 1;
            self.devices[dev].last_payment.clone().expect("checked")
        } else {
            let show = SHOWS[self.workload.random_range(0..SHOWS.len())];
            (show, self.new_payment(dev))
        };
        self.ask(dev, show, request);
        // A second lane of the terminal: a payment for the other show at the same moment, decided in parallel.
        if self.workload.random_bool(TWO_LANES) {
            let other = SHOWS.iter().find(|s| **s != show).copied().unwrap_or(show);
            let request = self.new_payment(dev);
            self.ask(dev, other, request);
        }
    }

    fn new_payment(&mut self, dev: usize) -> PaymentRequest {
        let d = &mut self.devices[dev];
        d.next_op += 1;
        PaymentRequest {
            idempotency_key: format!("{}-o{}-e{}", dev, d.next_op, d.epoch),
            amount_minor: self.workload.random_range(500..9_000),
            currency: "EUR".into(),
            attendee: None,
        }
    }

    /// A client hands `request` for `show` to the desk.
    fn ask(&mut self, dev: usize, show: &'static str, request: PaymentRequest) {
        let fault = self.store_fault(dev);
        let d = &mut self.devices[dev];
        d.next_ticket += 1;
        let ticket = d.next_ticket;
        match d.desk.handle_request(
            Ticket(ticket),
            show,
            request.clone(),
            fault.as_ref(),
            &self.limits,
        ) {
            Ok(()) => {
                d.tickets.insert(ticket, (show, request));
            }
            Err(DeskError::StoreFailed(_)) => self.report.payments_refused_disk += 1,
            Err(DeskError::OverLimit(_)) => self.report.payments_refused += 1,
            Err(other) => {
                let name = d.name.clone();
                self.violation(format!("{name}'s desk refused a payment: {other}"));
            }
        }
        self.drive_desk(dev);
    }

    /// The store's fault as the desk takes it.
    fn store_fault(&self, dev: usize) -> Option<StoreFault> {
        let fault = self.devices[dev].host.as_ref()?.store_failed()?;
        Some(StoreFault {
            disk_full: fault == DiskFault::Full,
            reason: fault.reason().into(),
        })
    }

    /// This device's ledger pages the directory registers that are not open on it yet.
    fn own_pages_loading(&self, dev: usize) -> Vec<String> {
        let d = &self.devices[dev];
        let me = d.key.public();
        let Some(host) = d.host.as_ref() else {
            return Vec::new();
        };
        d.known
            .iter()
            .filter(|(name, _)| {
                matches!(name.parse::<DocName>(), Ok(DocName::Ledger { device, .. }) if device == me)
            })
            .filter(|(_, id)| !host.is_open(id))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Every idempotency key this device's ledger pages hold, with its show.
    fn own_keys(&self, dev: usize) -> Vec<(String, String)> {
        let me = self.devices[dev].key.public();
        let pages: Vec<DocumentId> = self.devices[dev]
            .known
            .iter()
            .filter(|(name, _)| {
                matches!(name.parse::<DocName>(), Ok(DocName::Ledger { device, .. }) if device == me)
            })
            .map(|(_, id)| id.clone())
            .collect();
        pages
            .iter()
            .filter_map(|id| self.replica::<Ledger, _>(dev, id, |d| d.view().ok()))
            .flat_map(|v| {
                let show = v.show.clone();
                v.receipts
                    .into_iter()
                    .map(move |r| (r.idempotency_key, show.clone()))
            })
            .collect()
    }

    /// Carries out what the desk asks for until it has nothing more to do now.
    fn drive_desk(&mut self, dev: usize) {
        loop {
            let Some(action) = self.devices[dev].desk.poll_action() else {
                break;
            };
            match action {
                DeskAction::Take {
                    batch,
                    show,
                    requests,
                    in_flight_elsewhere,
                } => self.start_take(dev, batch, show, requests, in_flight_elsewhere),
                DeskAction::NextPage { batch, show } => {
                    let opened = self.next_page(dev, &show);
                    self.devices[dev].desk.handle_next_page(batch, opened);
                }
                DeskAction::Answer { ticket, result } => self.answered(dev, ticket, result),
            }
        }
        self.route(dev);
    }

    /// A batch starts: what this device holds unreconciled in its other shows' ledgers is read now (as the node's
    /// desk task reads it before its change), and the batch is taken on its page `TAKE_READ_MS` later.
    fn start_take(
        &mut self,
        dev: usize,
        batch: BatchId,
        show: String,
        requests: Vec<PaymentRequest>,
        in_flight_elsewhere: u64,
    ) {
        let elsewhere = self
            .own_pages(dev, |other| other != show)
            .iter()
            .filter_map(|id| self.replica::<Ledger, _>(dev, id, |d| d.view().ok()))
            .fold(in_flight_elsewhere, |sum, v| {
                sum.saturating_add(v.unreconciled_minor())
            });
        let d = &mut self.devices[dev];
        d.next_op += 1;
        let take = d.next_op;
        let pending = PendingTake {
            batch,
            show,
            requests,
            elsewhere,
        };
        d.takes.insert(take, pending);
        let epoch = d.epoch;
        self.at(TAKE_READ_MS, Event::Take { dev, epoch, take });
    }

    /// This device's ledger pages (registered, or open on it) of the shows `which` picks.
    fn own_pages(&self, dev: usize, which: impl Fn(&str) -> bool) -> BTreeSet<DocumentId> {
        let d = &self.devices[dev];
        let me = d.key.public();
        let registered = d
            .known
            .iter()
            .filter_map(|(name, id)| match name.parse::<DocName>() {
                Ok(DocName::Ledger { device, show, .. }) if device == me && which(&show) => {
                    Some(id.clone())
                }
                _ => None,
            });
        let open = d
            .pages
            .iter()
            .filter(|(show, _)| which(show))
            .flat_map(|(_, p)| p.earlier_ids.iter().chain([&p.current]).cloned());
        registered.chain(open).collect()
    }

    /// Takes a started batch on its show's open page: the change now, its fsync `FSYNC_MS` later.
    pub(super) fn take(&mut self, dev: usize, epoch: u32, take: u64) {
        if self.devices[dev].epoch != epoch {
            return;
        }
        let Some(PendingTake {
            batch,
            show,
            requests,
            elsewhere,
        }) = self.devices[dev].takes.remove(&take)
        else {
            return;
        };
        if self.devices[dev].host.is_none() {
            return;
        }
        if !self.devices[dev].pages.contains_key(&show) {
            match self.open_pages(dev, &show) {
                Some(p) => {
                    self.devices[dev].pages.insert(show.clone(), p);
                }
                None => {
                    let reason = "the ledger page is not open".to_owned();
                    self.devices[dev].desk.handle_taken(batch, Err(reason));
                    self.drive_desk(dev);
                    return;
                }
            }
        }
        let ts = self.ts(dev);
        let at = UnixMillis(self.local_ms(dev));
        let actor = self.actor(dev);
        let limits = self.limits.clone();
        let d = &mut self.devices[dev];
        // A replay may answer from an earlier page: one whose acknowledged write failed is made durable first.
        if let (Some(pages), Some(host)) = (d.pages.get(&show), d.host.as_mut()) {
            for id in &pages.earlier_ids {
                if d.durability.is_undurable(id) {
                    let failed = match host.change_acked(&mut d.durability, id, ts, |_| ()) {
                        Ok(((), Ok(()))) => None,
                        Ok(((), Err(fault))) => Some(fault.reason().to_owned()),
                        Err(e) => Some(e.to_string()),
                    };
                    if let Some(reason) = failed {
                        d.desk.handle_taken(batch, Err(reason));
                        self.drive_desk(dev);
                        return;
                    }
                }
            }
        }
        let key = d.key.clone();
        let pages = d.pages.get(&show).expect("opened above");
        let earlier = pages.earlier.clone();
        let current = pages.current.clone();
        let known = d.durability.snapshot(&current);
        let Some(host) = d.host.as_mut() else {
            return;
        };
        let taken = host.change_planned(&current, ts, known, |am| {
            Doc::<Ledger, &mut Automerge>::attach_as(am, actor).and_then(|mut doc| {
                doc.take_payments_paged(&key, &limits, &requests, &earlier, elsewhere, at)
            })
        });
        match taken {
            Ok((Ok(outcomes), write)) => {
                let new = outcomes
                    .iter()
                    .filter(|o| matches!(o, Ok(p) if !p.replayed))
                    .count() as u64;
                self.report.receipts += new;
                if new > 0 {
                    self.check_stored_limit(dev);
                }
                let d = &mut self.devices[dev];
                d.desk.handle_taken(batch, Ok(outcomes));
                d.next_op += 1;
                let write_id = d.next_op;
                d.writes.insert(write_id, (batch, write));
                let epoch = d.epoch;
                self.at(
                    FSYNC_MS,
                    Event::Durable {
                        dev,
                        epoch,
                        write: write_id,
                    },
                );
            }
            Ok((Err(e), _)) => self.devices[dev]
                .desk
                .handle_taken(batch, Err(e.to_string())),
            Err(e) => self.devices[dev]
                .desk
                .handle_taken(batch, Err(e.to_string())),
        }
        self.drive_desk(dev);
    }

    /// One stored limit across shows: right after a batch takes new payments, what this device holds
    /// unreconciled in all its ledgers (its own replica, every show, batches of other shows taken meanwhile
    /// included) is within the limit.
    fn check_stored_limit(&mut self, dev: usize) {
        let held = self
            .own_pages(dev, |_| true)
            .iter()
            .filter_map(|id| self.replica::<Ledger, _>(dev, id, |d| d.view().ok()))
            .fold(0u64, |sum, v| sum.saturating_add(v.unreconciled_minor()));
        let max = self.limits.stored_total_max_minor;
        if held > max {
            let name = self.devices[dev].name.clone();
            self.violation(format!(
                "{name} holds {held} unreconciled across its shows, over its stored limit of {max}"
            ));
        }
    }

    /// An acknowledged write's fsync is done, unless the device crashed meanwhile (then nothing is answered: the
    /// client's connection died with it).
    pub(super) fn durable(&mut self, dev: usize, epoch: u32, write: u64) {
        let d = &mut self.devices[dev];
        if d.epoch != epoch {
            return;
        }
        let Some((batch, write)) = d.writes.remove(&write) else {
            return;
        };
        let Some(host) = d.host.as_mut() else {
            return;
        };
        let done = host.complete_ack(&mut d.durability, write);
        d.desk
            .handle_durable(batch, done.map_err(|f| f.reason().to_owned()));
        self.drive_desk(dev);
    }

    fn answered(&mut self, dev: usize, ticket: Ticket, result: Result<PaymentOutcome, DeskError>) {
        let d = &mut self.devices[dev];
        let Some((show, request)) = d.tickets.remove(&ticket.0) else {
            return;
        };
        match result {
            Ok(outcome) => {
                let token = outcome.receipt.token.to_string();
                d.acked_receipts.insert(token.clone());
                d.last_payment = Some((show, request));
                self.check_acked_on_disk(dev, &token);
            }
            Err(DeskError::NotDurable(_)) => {
                // The client was told the payment did not go through; it retries with the same key later.
                self.report.payments_not_durable += 1;
                d.last_payment = Some((show, request));
            }
            Err(DeskError::Payment(PaymentError::OverLimit(_))) => {
                self.report.payments_refused += 1
            }
            Err(other) => {
                let name = d.name.clone();
                self.violation(format!("{name} could not take a payment: {other}"));
            }
        }
    }

    /// A 2xx for a payment means it survives a SIGKILL of this device at any moment after: the receipt is in one
    /// of this device's ledger pages as a restart would load them from its disk alone, now.
    fn check_acked_on_disk(&mut self, dev: usize, token: &str) {
        let pages = self.own_pages(dev, |_| true);
        let d = &mut self.devices[dev];
        let Some(host) = d.host.as_mut() else {
            return;
        };
        let on_disk = pages.iter().any(|id| {
            host.storage().on_disk(id).is_some_and(|am| {
                Doc::<Ledger, &Automerge>::attach(&am)
                    .and_then(|l| l.view())
                    .is_ok_and(|v| v.receipts.iter().any(|r| r.token.to_string() == token))
            })
        });
        if !on_disk {
            let name = d.name.clone();
            self.violation(format!(
                "{name} acknowledged payment {token} before it was on its disk (a SIGKILL now would lose it)"
            ));
        }
    }

    /// This device's ledger pages for `show`: every registered one, or a new page 0.
    fn open_pages(&mut self, dev: usize, show: &str) -> Option<Pages> {
        let me = self.devices[dev].key.public();
        let mut ids = Vec::new();
        loop {
            let name = DocName::Ledger {
                show: show.into(),
                device: me,
                page: ids.len() as u32,
            };
            match self.doc_id(dev, &name) {
                Some(id) => ids.push(id),
                None => break,
            }
        }
        let current = match ids.pop() {
            Some(id) => id,
            None => self.ledger_page(dev, show, 0)?,
        };
        let mut earlier = EarlierPages {
            page_capacity: RECEIPTS_PER_PAGE,
            ..EarlierPages::default()
        };
        for id in &ids {
            let page = self.replica::<Ledger, _>(dev, id, |d| d.view().ok())?;
            earlier.absorb(&page);
            earlier.unreconciled_minor = earlier
                .unreconciled_minor
                .saturating_add(page.unreconciled_minor());
        }
        Some(Pages {
            page: ids.len() as u32,
            current,
            earlier,
            earlier_ids: ids,
        })
    }

    fn ledger_page(&mut self, dev: usize, show: &str, page: u32) -> Option<DocumentId> {
        let site = self.authority.site();
        let me = self.devices[dev].key.public();
        let name = DocName::Ledger {
            show: show.into(),
            device: me,
            page,
        };
        self.own_document(dev, name, |actor| {
            Doc::<Ledger>::create_ledger(actor, site, show, me)
                .expect("ledger")
                .into_automerge()
        })
    }

    /// Closes the full page and opens the next.
    fn next_page(&mut self, dev: usize, show: &str) -> Result<(), String> {
        let Some(pages) = self.devices[dev].pages.get(show) else {
            return Err("no ledger page is open".into());
        };
        let (current, page) = (pages.current.clone(), pages.page);
        let full = self
            .replica::<Ledger, _>(dev, &current, |d| d.view().ok())
            .ok_or("the full page does not read")?;
        let next = self
            .ledger_page(dev, show, page + 1)
            .ok_or("the next page could not be created")?;
        let pages = self.devices[dev].pages.get_mut(show).expect("checked");
        pages.earlier.absorb(&full);
        pages.earlier.unreconciled_minor = pages
            .earlier
            .unreconciled_minor
            .saturating_add(full.unreconciled_minor());
        pages
            .earlier_ids
            .push(std::mem::replace(&mut pages.current, next));
        pages.page += 1;
        Ok(())
    }

    /// The flush tick: the lazy tier to disk, or, on a failed store whose disk works again, the store reopened
    /// and every document whose acknowledged write failed saved whole (as the node's `heal_store`).
    pub(super) fn store_flush(&mut self, dev: usize) {
        let ts = self.ts(dev);
        let d = &mut self.devices[dev];
        let Some(host) = d.host.as_mut() else {
            return;
        };
        if host.storage().recover() {
            self.report.store_recoveries += 1;
            let undurable: Vec<DocumentId> = d.durability.undurable().cloned().collect();
            for id in undurable {
                let _ = host.change_acked(&mut d.durability, &id, ts, |_| ());
            }
        }
        host.storage().flush();
    }

    /// The disk of `dev` starts refusing writes; the device learns it at its next write.
    pub(super) fn disk_fault(&mut self, dev: usize, kind: DiskFault) {
        if self.faults_ended_at.is_some() {
            return;
        }
        self.report.disk_faults += 1;
        self.storage_of(dev).set_disk(Some(kind));
    }

    /// The disk works again. With `reboot`, the operator power-cycles the device first (what a full disk often
    /// ends in): the lazy tier is lost, and whatever was answered without reaching the disk with it.
    pub(super) fn disk_heal(&mut self, dev: usize, reboot: bool) {
        if reboot {
            self.crash(dev);
        }
        self.storage_of(dev).set_disk(None);
    }

    pub(super) fn storage_of(&mut self, dev: usize) -> &mut Storage {
        let d = &mut self.devices[dev];
        match d.host.as_mut() {
            Some(host) => host.storage(),
            None => &mut d.storage,
        }
    }
}
