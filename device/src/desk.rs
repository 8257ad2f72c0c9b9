//! The payment desk: every decision between "a client asked for a payment" and "the client is answered".
//!
//! Promises (each enforced by the simulator's checkers and the node's tests, see ARCHITECTURE.md):
//!
//! - **Durable before answered.** A payment is answered only after the shell reports the write that took it
//!   durable ([`Desk::handle_durable`]); a failed write answers [`DeskError::NotDurable`], never success.
//! - **Ready means ready.** Until the shell has indexed this device's idempotency keys (which it may do only once
//!   every ledger page of this device is open, [`Desk::ready`]), money requests answer [`DeskError::Loading`].
//! - **A key is one payment per device**, whatever the show: a key used in one show is refused in another, also
//!   while a request with it is being decided.
//! - **Limits that do not depend on stored state are checked before anything is written**, and a failed store
//!   refuses at once ([`DeskError::StoreFailed`]).
//! - **One stored limit across shows.** Each show's batches run in parallel (the node takes them on their own
//!   tasks), so a batch cannot rely on reading another show's ledger: that show's batch in flight may not have
//!   changed it yet. Each batch carries what other shows' batches in flight ask for
//!   (`in_flight_elsewhere` in [`DeskAction::Take`]), and the shell adds it to what it reads there. Of two batches
//!   that overlap, the later counts the earlier whole, so together they never pass the limit (a batch may count
//!   another's payments twice for the few milliseconds it is written: a refusal near the limit, never a pass).
//! - **Requests that arrive together are decided together**: each show has one batch in flight; what queues
//!   meanwhile becomes the next batch (one change, one durable write). When the ledger page fills mid-batch the
//!   shell starts the next page ([`DeskAction::NextPage`]) and the rest of the batch is taken there.
//!
//! The shell (the node's HTTP handler and samod, or the simulator's device) feeds requests in with
//! [`Desk::handle_request`], carries out what [`Desk::poll_action`] returns, and reports back with
//! `handle_taken`, `handle_durable` and `handle_next_page`. A crash loses the desk with the rest of memory: the
//! shell starts a new one.

use std::collections::{BTreeMap, HashMap, VecDeque};

use popmesh_crdt::ledger::{PaymentError, PaymentOutcome};
use popmesh_crdt::receipt::{PaymentRequest, RequestError};
use popmesh_crdt::risk::{RiskError, RiskLimits};

use crate::mutation::{Mutation, Mutations};

/// The shell's name for one waiting request (its reply channel, or the simulator's client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// One batch of a show's requests, from the first take to the last answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(u64);

/// Why the store refuses writes, as the shell reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFault {
    pub disk_full: bool,
    pub reason: String,
}

/// Why a payment was not taken.
#[derive(Debug, thiserror::Error)]
pub enum DeskError {
    #[error(transparent)]
    BadRequest(#[from] RequestError),
    #[error("this device's data file refuses writes, so it takes no payments now (nothing was written): {}", .0.reason)]
    StoreFailed(StoreFault),
    #[error("this device is still loading {} of its ledger pages ({}); money requests wait until they are all open", .pages.len(), shown(.pages))]
    Loading { pages: Vec<String> },
    #[error(transparent)]
    OverLimit(RiskError),
    #[error(
        "idempotency key '{key}' was already used on this device for a payment in show '{show}': show differs; use a new key for a new payment"
    )]
    KeyInOtherShow { key: String, show: String },
    #[error("could not make the write durable, so it was not acknowledged: {0}")]
    NotDurable(String),
    #[error(transparent)]
    Payment(PaymentError),
}

fn shown(pages: &[String]) -> String {
    if pages.is_empty() {
        return "its idempotency keys".into();
    }
    let mut s: Vec<&str> = pages.iter().take(5).map(String::as_str).collect();
    if pages.len() > 5 {
        s.push("...");
    }
    s.join(", ")
}

/// What the shell must do next.
#[derive(Debug)]
pub enum DeskAction {
    /// Take `requests` in one change on `show`'s open ledger page (opening its pages first if need be), make the
    /// change durable, and report with [`Desk::handle_taken`] then [`Desk::handle_durable`].
    Take {
        batch: BatchId,
        show: String,
        requests: Vec<PaymentRequest>,
        /// What other shows' batches in flight ask for, in minor units (answered requests are on their pages):
        /// the shell counts it against the stored limit on top of the unreconciled totals it reads from this
        /// device's other ledgers.
        in_flight_elsewhere: u64,
    },
    /// `show`'s open page is full: close it, open the next, and report with [`Desk::handle_next_page`].
    NextPage { batch: BatchId, show: String },
    /// Answer the request behind `ticket`.
    Answer {
        ticket: Ticket,
        result: Result<PaymentOutcome, DeskError>,
    },
}

/// Whether money requests may be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    Yes,
    /// Every page is open: index this device's idempotency keys and hand them to [`Desk::handle_keys_indexed`].
    IndexKeys,
}

#[derive(Debug)]
enum State {
    /// Waiting to be taken (again, after a full page).
    Waiting,
    /// Taken in memory, waiting for the write to be durable (boxed: a receipt is large).
    Decided(Box<Result<PaymentOutcome, PaymentError>>),
    Answered,
}

#[derive(Debug)]
struct Item {
    ticket: Ticket,
    request: PaymentRequest,
    state: State,
}

#[derive(Debug)]
struct Batch {
    id: BatchId,
    items: Vec<Item>,
    phase: Phase,
}

/// What the shell is doing for a batch, so a report that does not fit (late, twice) changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Taking,
    Persisting,
    Paging,
}

#[derive(Debug, Default)]
struct ShowDesk {
    queue: VecDeque<Item>,
    batch: Option<Batch>,
}

#[derive(Debug, Clone)]
struct KeyClaim {
    show: String,
    inflight: u32,
    taken: bool,
}

/// The payment desk of one device, across its shows.
#[derive(Debug, Default)]
pub struct Desk {
    shows: BTreeMap<String, ShowDesk>,
    /// Idempotency keys of this device; `None` until indexed after a start.
    keys: Option<HashMap<String, KeyClaim>>,
    answers: VecDeque<(Ticket, Result<PaymentOutcome, DeskError>)>,
    /// Continuations of batches in flight (the next page, the rest of a batch), before any new batch.
    pending_actions: VecDeque<DeskAction>,
    next_batch: u64,
    mutations: Mutations,
}

impl Desk {
    pub fn new(mutations: Mutations) -> Self {
        Self {
            mutations,
            ..Self::default()
        }
    }

    /// Whether money requests and money reads may be answered, given the ledger pages of this device the
    /// directory registers that are not open yet. Latched once the keys are indexed: only this desk starts pages
    /// of this device, and it opens them first.
    pub fn ready(&self, loading: &[String]) -> Result<Ready, DeskError> {
        if self.keys.is_some() {
            Ok(Ready::Yes)
        } else if loading.is_empty() {
            Ok(Ready::IndexKeys)
        } else {
            Err(DeskError::Loading {
                pages: loading.to_vec(),
            })
        }
    }

    pub fn is_ready(&self) -> bool {
        self.keys.is_some()
    }

    /// Every idempotency key this device's ledgers hold, with its show. Later calls change nothing.
    pub fn handle_keys_indexed(&mut self, keys: impl IntoIterator<Item = (String, String)>) {
        if self.keys.is_some() {
            return;
        }
        let index = keys
            .into_iter()
            .map(|(key, show)| {
                let claim = KeyClaim {
                    show,
                    inflight: 0,
                    taken: true,
                };
                (key, claim)
            })
            .collect();
        self.keys = Some(index);
    }

    /// A payment request for `show` (which the shell has checked exists). `Err` is the answer now; `Ok` means it
    /// waits at the desk and is answered through [`Desk::poll_action`].
    pub fn handle_request(
        &mut self,
        ticket: Ticket,
        show: &str,
        request: PaymentRequest,
        fault: Option<&StoreFault>,
        limits: &RiskLimits,
    ) -> Result<(), DeskError> {
        request.validate()?;
        if let Some(fault) = fault {
            return Err(DeskError::StoreFailed(fault.clone()));
        }
        let Some(keys) = self.keys.as_mut() else {
            return Err(DeskError::Loading { pages: Vec::new() });
        };
        // A replay of an earlier payment passes this too: it was within these limits when it was taken.
        limits
            .check(0, request.amount_minor, &request.currency)
            .map_err(DeskError::OverLimit)?;
        let key = &request.idempotency_key;
        match keys.get_mut(key) {
            Some(claim) if claim.show != show => {
                return Err(DeskError::KeyInOtherShow {
                    key: key.clone(),
                    show: claim.show.clone(),
                });
            }
            Some(claim) => claim.inflight += 1,
            None => {
                let claim = KeyClaim {
                    show: show.to_owned(),
                    inflight: 1,
                    taken: false,
                };
                keys.insert(key.clone(), claim);
            }
        }
        self.shows
            .entry(show.to_owned())
            .or_default()
            .queue
            .push_back(Item {
                ticket,
                request,
                state: State::Waiting,
            });
        Ok(())
    }

    /// What the shell must do next: answers first, then a batch for each show that has requests and none in
    /// flight.
    pub fn poll_action(&mut self) -> Option<DeskAction> {
        if let Some((ticket, result)) = self.answers.pop_front() {
            return Some(DeskAction::Answer { ticket, result });
        }
        if let Some(action) = self.pending_actions.pop_front() {
            return Some(action);
        }
        let next = self
            .shows
            .iter()
            .find(|(_, d)| d.batch.is_none() && !d.queue.is_empty())
            .map(|(show, _)| show.clone());
        if let Some(show) = next {
            let in_flight_elsewhere = self.in_flight_elsewhere(&show);
            let desk = self.shows.get_mut(&show)?;
            self.next_batch += 1;
            let id = BatchId(self.next_batch);
            let items: Vec<Item> = desk.queue.drain(..).collect();
            let requests = items.iter().map(|i| i.request.clone()).collect();
            desk.batch = Some(Batch {
                id,
                items,
                phase: Phase::Taking,
            });
            return Some(DeskAction::Take {
                batch: id,
                show,
                requests,
                in_flight_elsewhere,
            });
        }
        None
    }

    /// What the batches in flight of shows other than `show` ask for and have not answered, in minor units
    /// (saturating: a sum past u64 is over any limit).
    pub fn in_flight_elsewhere(&self, show: &str) -> u64 {
        if self.mutations.has(Mutation::IgnoreOtherShows) {
            return 0;
        }
        self.shows
            .iter()
            .filter(|(other, _)| other.as_str() != show)
            .filter_map(|(_, d)| d.batch.as_ref())
            .flat_map(|b| &b.items)
            .filter(|i| !matches!(i.state, State::Answered))
            .fold(0u64, |sum, i| sum.saturating_add(i.request.amount_minor))
    }

    /// Requests waiting at the desk or being decided, across shows.
    pub fn pending(&self) -> usize {
        self.shows
            .values()
            .map(|d| {
                d.queue.len()
                    + d.batch.as_ref().map_or(0, |b| {
                        b.items
                            .iter()
                            .filter(|i| !matches!(i.state, State::Answered))
                            .count()
                    })
            })
            .sum()
    }

    /// The outcome of a [`DeskAction::Take`], one per request handed out (in order), or why the change could not
    /// be made. Nothing is answered yet (the write is not durable), except under a mutation.
    pub fn handle_taken(
        &mut self,
        batch: BatchId,
        outcome: Result<Vec<Result<PaymentOutcome, PaymentError>>, String>,
    ) {
        let Some((show, mut b)) = self.take_batch(batch, Phase::Taking) else {
            return;
        };
        match outcome {
            Err(reason) => {
                for item in &mut b.items {
                    if matches!(item.state, State::Waiting) {
                        Self::refuse(&mut self.keys, &mut self.answers, item, &reason);
                    }
                }
                return;
            }
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for item in b
                    .items
                    .iter_mut()
                    .filter(|i| matches!(i.state, State::Waiting))
                {
                    match outcomes.next() {
                        Some(Err(PaymentError::PageFull)) => {}
                        Some(other) => item.state = State::Decided(Box::new(other)),
                        None => {
                            Self::refuse(&mut self.keys, &mut self.answers, item, "not decided");
                        }
                    }
                }
            }
        }
        if self.mutations.has(Mutation::AnswerBeforeDurable) {
            for item in &mut b.items {
                Self::answer(&mut self.keys, &mut self.answers, item);
            }
        }
        b.phase = Phase::Persisting;
        self.put_back(show, b);
    }

    /// Whether the write of the last [`DeskAction::Take`] of `batch` is durable. Only now are its payments
    /// answered; a failed write answers every request of the batch not answered yet with [`DeskError::NotDurable`].
    pub fn handle_durable(&mut self, batch: BatchId, result: Result<(), String>) {
        let Some((show, mut b)) = self.take_batch(batch, Phase::Persisting) else {
            return;
        };
        match result {
            Ok(()) => {
                for item in &mut b.items {
                    if matches!(item.state, State::Decided(_)) {
                        Self::answer(&mut self.keys, &mut self.answers, item);
                    }
                }
                if b.items.iter().any(|i| matches!(i.state, State::Waiting)) {
                    // The page filled: the shell starts the next one, then the rest is taken there.
                    let action = DeskAction::NextPage {
                        batch,
                        show: show.clone(),
                    };
                    b.phase = Phase::Paging;
                    self.put_back(show, b);
                    self.deferred(action);
                }
            }
            Err(reason) => {
                for item in &mut b.items {
                    if !matches!(item.state, State::Answered) {
                        Self::refuse(&mut self.keys, &mut self.answers, item, &reason);
                    }
                }
            }
        }
    }

    /// Whether the next ledger page of the batch's show is open; if so the rest of the batch is taken there.
    pub fn handle_next_page(&mut self, batch: BatchId, result: Result<(), String>) {
        let Some((show, mut b)) = self.take_batch(batch, Phase::Paging) else {
            return;
        };
        if let Err(reason) = result {
            for item in &mut b.items {
                if !matches!(item.state, State::Answered) {
                    Self::refuse(&mut self.keys, &mut self.answers, item, &reason);
                }
            }
            return;
        }
        let requests = b
            .items
            .iter()
            .filter(|i| matches!(i.state, State::Waiting))
            .map(|i| i.request.clone())
            .collect();
        b.phase = Phase::Taking;
        let action = DeskAction::Take {
            batch,
            show: show.clone(),
            requests,
            in_flight_elsewhere: self.in_flight_elsewhere(&show),
        };
        self.put_back(show, b);
        self.deferred(action);
    }

    /// The batch `batch` if the shell was doing `phase` for it, taken out of its show's desk; the caller puts it
    /// back or, once every request is answered, lets it go (the show takes its next batch).
    fn take_batch(&mut self, batch: BatchId, phase: Phase) -> Option<(String, Batch)> {
        let (show, desk) = self.shows.iter_mut().find(|(_, d)| {
            d.batch
                .as_ref()
                .is_some_and(|b| b.id == batch && b.phase == phase)
        })?;
        Some((show.clone(), desk.batch.take()?))
    }

    fn put_back(&mut self, show: String, b: Batch) {
        if let Some(desk) = self.shows.get_mut(&show) {
            desk.batch = Some(b);
        }
    }

    fn answer(
        keys: &mut Option<HashMap<String, KeyClaim>>,
        answers: &mut VecDeque<(Ticket, Result<PaymentOutcome, DeskError>)>,
        item: &mut Item,
    ) {
        let State::Decided(outcome) = std::mem::replace(&mut item.state, State::Answered) else {
            return;
        };
        Self::settle(keys, &item.request.idempotency_key, outcome.is_ok());
        answers.push_back((item.ticket, (*outcome).map_err(DeskError::Payment)));
    }

    fn refuse(
        keys: &mut Option<HashMap<String, KeyClaim>>,
        answers: &mut VecDeque<(Ticket, Result<PaymentOutcome, DeskError>)>,
        item: &mut Item,
        reason: &str,
    ) {
        item.state = State::Answered;
        // The key stays this payment's: the change may be in memory, may sync, and a healed store saves it whole,
        // so another show must not take a second payment under the same key. A retry in this show replays it.
        Self::settle(keys, &item.request.idempotency_key, true);
        answers.push_back((item.ticket, Err(DeskError::NotDurable(reason.to_owned()))));
    }

    /// A claimed key is free again once no request with it is being decided and no payment was taken under it.
    fn settle(keys: &mut Option<HashMap<String, KeyClaim>>, key: &str, taken: bool) {
        if let Some(keys) = keys.as_mut()
            && let Some(claim) = keys.get_mut(key)
        {
            claim.inflight = claim.inflight.saturating_sub(1);
            claim.taken |= taken;
            if claim.inflight == 0 && !claim.taken {
                keys.remove(key);
            }
        }
    }

    fn deferred(&mut self, action: DeskAction) {
        self.pending_actions.push_back(action);
    }
}
