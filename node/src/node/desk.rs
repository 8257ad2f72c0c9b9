//! The node's shell around the device core's payment desk (`popmesh_device::desk`).
//!
//! The core decides (readiness, idempotency keys across shows, batching, when a page is full, and that nothing is
//! answered before its write is durable); this file carries its actions out on samod documents and the store:
//! [`Node::pay`] feeds a request in and waits for its answer, `pump_desk` runs what the core asks for (each take on
//! its own task, so shows decide in parallel), and `Pages` is a show's open ledger page and what the pages before it
//! hold.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use automerge::Automerge;
use popmesh_crdt::Doc;
use popmesh_crdt::docs::DocName;
use popmesh_crdt::ledger::{EarlierPages, Ledger, PaymentError, PaymentOutcome};
use popmesh_crdt::receipt::{PaymentRequest, Receipt};
use popmesh_device::desk::{BatchId, DeskError, Ready};
use popmesh_device::{DeskAction, Ticket};
use samod::DocHandle;

use super::{Node, ShowError, Unavailable, internal, lock, read, read_ledger, unreconciled_of};
use crate::clock;

/// The most payments one request may carry ([`Node::pay_many`]): a few seconds of a busy desk, answered in well
/// under a second.
pub const PAYMENTS_PER_REQUEST_MAX: usize = 1_000;

type Reply = tokio::sync::oneshot::Sender<Result<(Receipt, bool), PayError>>;

/// Why a payment was not taken. Nothing was written for it, unless it says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum PayError {
    /// The request is malformed (an amount of 0, a currency or key that is not one).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Show(#[from] ShowError),
    /// Taking it would pass this device's offline risk limits (per payment, or held unreconciled across shows).
    #[error("{0}")]
    OverLimit(String),
    /// One request carried no payment, or more than [`PAYMENTS_PER_REQUEST_MAX`].
    #[error("{0}")]
    TooMany(String),
    /// The idempotency key was used for a different payment (other fields, or another show).
    #[error("{0}")]
    KeyReused(String),
    /// This device's ledger for the show holds as many receipts as one may.
    #[error("{0}")]
    LedgerFull(String),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// The desk's core, the clients waiting for its answers, and each show's ledger pages.
#[derive(Default)]
pub(crate) struct DeskShell {
    core: std::sync::Mutex<popmesh_device::Desk>,
    replies: std::sync::Mutex<HashMap<Ticket, Reply>>,
    next_ticket: AtomicU64,
    pages: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Pages>>>>>,
}

/// The open page of this device's ledger for a show, and what the pages before it hold.
pub(crate) struct Pages {
    page: u32,
    current: DocHandle,
    /// Shared with the payment closure without copying; only a take changes it, between batches.
    earlier: Arc<EarlierPages>,
    earlier_handles: Vec<DocHandle>,
}

impl Node {
    /// Takes a payment offline: signs a receipt into this device's ledger for `show` and answers once it is
    /// durable. Requests that arrive together are one change and one fsync (the desk's batches); receipts go into
    /// ledger pages of `receipts_per_page` each, so no document grows with the show.
    pub async fn pay(
        self: &Arc<Self>,
        request: PaymentRequest,
        show: Option<String>,
    ) -> Result<(Receipt, bool), PayError> {
        let mut answers = self.pay_many(vec![request], show).await?;
        answers
            .pop()
            .unwrap_or_else(|| Err(internal("a payment went unanswered").into()))
    }

    /// Takes `requests` for one show, in order, as if each were posted on its own one after another, in one
    /// desk batch (one change and one fsync, unless a ledger page fills mid-way): what a POS app that queued
    /// payments while it could not reach this device sends when it can. Each payment is answered on its own,
    /// exactly as [`Node::pay`] would answer it, and is durable when answered; the `Err` of the whole is a
    /// refusal before any was queued (a bad show name, an unknown show, money not ready), so nothing was
    /// written. At most [`PAYMENTS_PER_REQUEST_MAX`].
    pub async fn pay_many(
        self: &Arc<Self>,
        requests: Vec<PaymentRequest>,
        show: Option<String>,
    ) -> Result<Vec<Result<(Receipt, bool), PayError>>, PayError> {
        if requests.is_empty() {
            return Err(PayError::Invalid(
                "payments is empty: send at least one".into(),
            ));
        }
        if requests.len() > PAYMENTS_PER_REQUEST_MAX {
            return Err(PayError::TooMany(format!(
                "{} payments in one request; at most {PAYMENTS_PER_REQUEST_MAX} (send the rest in another)",
                requests.len()
            )));
        }
        if let Some(show) = &show {
            popmesh_crdt::naming::check_name("show", show)
                .map_err(|e| PayError::Invalid(e.to_string()))?;
        }
        let view = self.view()?;
        let show = self.existing_show(&view, show)?;
        self.money_ready().await?;
        let mut waiting = Vec::with_capacity(requests.len());
        {
            let fault = self.store_fault();
            let mut core = lock(&self.desk.core);
            // Registered before the core's lock is let go, so no pump can hold an answer it has nowhere to
            // send; queued under one lock, so the requests stay together and in order.
            let mut replies = lock(&self.desk.replies);
            for request in requests {
                let ticket = Ticket(self.desk.next_ticket.fetch_add(1, Ordering::Relaxed));
                match core.handle_request(ticket, &show, request, fault.as_ref(), &self.limits) {
                    Ok(()) => {
                        let (reply, answer) = tokio::sync::oneshot::channel();
                        replies.insert(ticket, reply);
                        waiting.push(Ok(answer));
                    }
                    Err(e) => waiting.push(Err(e)),
                }
            }
        }
        // Refused at the desk: named as things stand now, not after the others are durable.
        let waiting: Vec<_> = waiting
            .into_iter()
            .map(|w| w.map_err(|e| self.desk_failure(e)))
            .collect();
        self.pump_desk();
        let mut answers = Vec::with_capacity(waiting.len());
        for w in waiting {
            answers.push(match w {
                Ok(answer) => answer
                    .await
                    .unwrap_or_else(|_| Err(Unavailable::ShuttingDown.into())),
                Err(e) => Err(e),
            });
        }
        Ok(answers)
    }

    /// Whether money requests and money reads may be answered (see `popmesh_device::desk`): every ledger page of
    /// this device the directory registers is open and its idempotency keys are indexed.
    pub(crate) async fn money_ready(&self) -> Result<(), Unavailable> {
        if lock(&self.desk.core).is_ready() {
            return Ok(());
        }
        let loading = self.ledgers_loading()?;
        let ready = lock(&self.desk.core)
            .ready(&loading)
            .map_err(|e| self.desk_unavailable(e))?;
        if ready == Ready::IndexKeys {
            let index = self.index_keys().await?;
            lock(&self.desk.core).handle_keys_indexed(index);
        }
        Ok(())
    }

    /// Every idempotency key this device's ledgers hold, with its show.
    async fn index_keys(&self) -> Result<Vec<(String, String)>, Unavailable> {
        let mut index = Vec::new();
        for (show, handle) in self.own_ledgers() {
            let keys: Vec<String> = handle
                .with_document_async(|am| {
                    use automerge::ReadDoc as _;
                    match am.get(automerge::ROOT, "keys") {
                        Ok(Some((automerge::Value::Object(_), id))) => am.keys(&id).collect(),
                        _ => Vec::new(),
                    }
                })
                .await
                .map_err(super::stopped)?;
            index.extend(keys.into_iter().map(|k| (k, show.clone())));
        }
        Ok(index)
    }

    fn desk_failure(&self, e: DeskError) -> PayError {
        match e {
            DeskError::BadRequest(e) => PayError::Invalid(e.to_string()),
            DeskError::OverLimit(e) => PayError::OverLimit(e.to_string()),
            e @ DeskError::KeyInOtherShow { .. } => PayError::KeyReused(e.to_string()),
            DeskError::Payment(e) => payment_failure(e),
            e @ (DeskError::StoreFailed(_)
            | DeskError::Loading { .. }
            | DeskError::NotDurable(_)) => PayError::Unavailable(self.desk_unavailable(e)),
        }
    }

    /// The desk's refusals that say this device cannot take money now.
    fn desk_unavailable(&self, e: DeskError) -> Unavailable {
        match e {
            // The store's own fault says why (a full disk names the path to free).
            DeskError::StoreFailed(_) => self
                .writable()
                .err()
                .unwrap_or_else(|| Unavailable::StoreRefuses(e.to_string())),
            e @ DeskError::Loading { .. } => Unavailable::MoneyLoading(e.to_string()),
            DeskError::NotDurable(reason) => Unavailable::NotDurable(reason),
            e => Unavailable::internal(e),
        }
    }

    /// Carries out what the desk's core asks for until it has nothing more to do now.
    fn pump_desk(self: &Arc<Self>) {
        loop {
            let Some(action) = lock(&self.desk.core).poll_action() else {
                return;
            };
            match action {
                DeskAction::Answer { ticket, result } => {
                    let result = match result {
                        Ok(o) => Ok((o.receipt, o.replayed)),
                        Err(e) => Err(self.desk_failure(e)),
                    };
                    // A client that hung up is not waiting any more; its payment stands.
                    if let Some(reply) = lock(&self.desk.replies).remove(&ticket) {
                        let _ = reply.send(result);
                    }
                }
                DeskAction::Take {
                    batch,
                    show,
                    requests,
                    in_flight_elsewhere,
                } => {
                    let node = self.clone();
                    // A spawned task, so a client hanging up cannot strand the batch.
                    tokio::spawn(async move {
                        let mut guard = Unfinished::new(&node, batch, Step::Take);
                        let pages = node.show_pages(&show);
                        let mut pages = pages.lock().await;
                        match node
                            .take_on_page(&show, &mut pages, requests, in_flight_elsewhere)
                            .await
                        {
                            Ok(outcomes) => {
                                let mut core = lock(&node.desk.core);
                                core.handle_taken(batch, Ok(outcomes));
                                // `change` returned: the page is durable up to the change.
                                core.handle_durable(batch, Ok(()));
                            }
                            Err(e) => lock(&node.desk.core).handle_taken(batch, Err(e.to_string())),
                        }
                        guard.finished();
                        drop(pages);
                        node.pump_desk();
                    });
                }
                DeskAction::NextPage { batch, show } => {
                    let node = self.clone();
                    tokio::spawn(async move {
                        let mut guard = Unfinished::new(&node, batch, Step::NextPage);
                        let pages = node.show_pages(&show);
                        let mut pages = pages.lock().await;
                        let opened = match pages.as_mut() {
                            Some(p) => node.next_page(&show, p).await,
                            None => Err(internal("no ledger page is open")),
                        };
                        lock(&node.desk.core)
                            .handle_next_page(batch, opened.map_err(|e| e.to_string()));
                        guard.finished();
                        drop(pages);
                        node.pump_desk();
                    });
                }
            }
        }
    }

    fn show_pages(&self, show: &str) -> Arc<tokio::sync::Mutex<Option<Pages>>> {
        lock(&self.desk.pages)
            .entry(show.to_owned())
            .or_default()
            .clone()
    }

    /// This device's ledger pages for `show`: every registered one, or a new page 0.
    async fn open_pages(&self, show: &str) -> Result<Pages, Unavailable> {
        let view = self.view()?;
        let me = self.me();
        let mut handles = Vec::new();
        loop {
            let name = DocName::Ledger {
                show: show.to_owned(),
                device: me,
                page: handles.len() as u32,
            };
            if !view.documents.contains_key(&name.to_string()) {
                break;
            }
            handles.push(self.ledger_page(show, handles.len() as u32).await?);
        }
        let current = match handles.pop() {
            Some(h) => h,
            None => self.ledger_page(show, 0).await?,
        };
        let mut earlier = EarlierPages {
            page_capacity: self.receipts_per_page,
            ..EarlierPages::default()
        };
        for h in &handles {
            let page = read_ledger(h)
                .await?
                .ok_or_else(|| internal("an earlier ledger page does not read"))?;
            earlier.absorb(&page);
        }
        Ok(Pages {
            page: handles.len() as u32,
            current,
            earlier: Arc::new(earlier),
            earlier_handles: handles,
        })
    }

    /// Opens (or creates and registers) page `page` of this device's ledger for `show`.
    async fn ledger_page(&self, show: &str, page: u32) -> Result<DocHandle, Unavailable> {
        let (me, site, show) = (self.me(), self.dir.site_id(), show.to_owned());
        let name = DocName::Ledger {
            show: show.clone(),
            device: me,
            page,
        };
        self.own_document(name, move |actor| {
            Doc::create_ledger(actor, site, &show, me)
                .map(Doc::into_automerge)
                .map_err(internal)
        })
        .await
    }

    /// Closes the full page and opens the next.
    async fn next_page(&self, show: &str, pages: &mut Pages) -> Result<(), Unavailable> {
        let full = read_ledger(&pages.current)
            .await?
            .ok_or_else(|| internal("the full ledger page does not read"))?;
        let next = self.ledger_page(show, pages.page + 1).await?;
        Arc::make_mut(&mut pages.earlier).absorb(&full);
        pages
            .earlier_handles
            .push(std::mem::replace(&mut pages.current, next));
        pages.page += 1;
        tracing::info!(show, page = pages.page, "started a new ledger page");
        Ok(())
    }

    /// Takes `requests` on the show's open page (opening its pages first) as one change, durable on return.
    async fn take_on_page(
        &self,
        show: &str,
        pages: &mut Option<Pages>,
        requests: Vec<PaymentRequest>,
        in_flight_elsewhere: u64,
    ) -> Result<Vec<Result<PaymentOutcome, PaymentError>>, Unavailable> {
        if pages.is_none() {
            *pages = Some(self.open_pages(show).await?);
        }
        let Some(pages) = pages.as_mut() else {
            return Err(internal("no ledger page"));
        };
        // A replay may answer from an earlier page: one whose acknowledged write failed is made durable first.
        for h in &pages.earlier_handles {
            if lock(&self.durability).is_undurable(h.document_id()) {
                self.change(h, |_| ()).await?;
            }
        }
        // Earlier pages' unreconciled totals change when the origin reconciles: read their counters afresh.
        let mut earlier_held = 0u64;
        for h in &pages.earlier_handles {
            earlier_held = earlier_held.saturating_add(unreconciled_of(h).await?);
        }
        Arc::make_mut(&mut pages.earlier).unreconciled_minor = earlier_held;
        // What this device holds unreconciled in its other shows' ledgers counts against the stored limit, and so
        // does what their batches in flight ask for: they run in parallel, and may not have changed their pages
        // yet (the desk's core says how much).
        let mut elsewhere = in_flight_elsewhere;
        for (other, handle) in self.own_ledgers() {
            if other != show {
                elsewhere = elsewhere.saturating_add(unreconciled_of(&handle).await?);
            }
        }
        let key = self.dir.key.clone();
        let limits = self.limits.clone();
        let actor = self.actor();
        let now = clock::now();
        let earlier = Arc::clone(&pages.earlier);
        self.change(&pages.current, move |am| {
            Doc::<Ledger, &mut Automerge>::attach_as(am, actor).and_then(|mut d| {
                d.take_payments_paged(&key, &limits, &requests, &earlier, elsewhere, now)
            })
        })
        .await?
        .map_err(internal)
    }

    pub(crate) fn own_ledgers(&self) -> Vec<(String, DocHandle)> {
        let me = self.me();
        read(&self.docs)
            .values()
            .filter_map(|(name, h)| match name {
                DocName::Ledger { show, device, .. } if *device == me => {
                    Some((show.clone(), h.clone()))
                }
                _ => None,
            })
            .collect()
    }
}

/// What a desk task was doing for its batch.
#[derive(Clone, Copy)]
enum Step {
    Take,
    NextPage,
}

/// Reports a desk task that ended without reporting (it panicked, or the runtime dropped it) as a failure, so its
/// batch is answered "not durable" and the show takes its next batch, instead of its clients waiting for ever.
struct Unfinished {
    node: Arc<Node>,
    batch: BatchId,
    step: Step,
    done: bool,
}

impl Unfinished {
    fn new(node: &Arc<Node>, batch: BatchId, step: Step) -> Self {
        Self {
            node: node.clone(),
            batch,
            step,
            done: false,
        }
    }

    fn finished(&mut self) {
        self.done = true;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let reason = "the payment desk's task stopped before the write finished".to_owned();
        {
            let mut core = lock(&self.node.desk.core);
            match self.step {
                Step::Take => core.handle_taken(self.batch, Err(reason)),
                Step::NextPage => core.handle_next_page(self.batch, Err(reason)),
            }
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            self.node.pump_desk();
        }
    }
}

pub(crate) fn payment_failure(e: PaymentError) -> PayError {
    match e {
        PaymentError::BadRequest(e) => PayError::Invalid(e.to_string()),
        PaymentError::OverLimit(e) => PayError::OverLimit(e.to_string()),
        e @ PaymentError::IdempotencyKeyReused { .. } => PayError::KeyReused(e.to_string()),
        e @ PaymentError::Full => PayError::LedgerFull(e.to_string()),
        e => PayError::Unavailable(internal(e)),
    }
}
