//! The payment desk's promises, told as a POS terminal's day, with the core driven by a tiny in-memory shell.

use popmesh_crdt::identity::SecretKey;
use popmesh_crdt::ledger::{EarlierPages, Ledger, PaymentError, PaymentOutcome};
use popmesh_crdt::receipt::PaymentRequest;
use popmesh_crdt::risk::RiskLimits;
use popmesh_crdt::{Doc, SiteId, UnixMillis, actor_id};
use popmesh_device::desk::Ready;
use popmesh_device::{Desk, DeskAction, DeskError, Mutation, Mutations, StoreFault, Ticket};

/// A POS terminal: its key, its ledger pages for one show, and the answers its clients got.
struct Pos {
    key: SecretKey,
    pages: Vec<Doc<Ledger>>,
    earlier: EarlierPages,
    answers: Vec<(Ticket, Result<bool, String>)>,
}

impl Pos {
    fn new(capacity: usize) -> Self {
        let key = SecretKey::from_seed([7; 32]);
        let site = SiteId::for_authority(&SecretKey::from_seed([1; 32]).public());
        let page = Doc::create_ledger(actor_id(key.public(), 1), site, "show", key.public())
            .expect("in memory");
        Self {
            key,
            pages: vec![page],
            earlier: EarlierPages {
                page_capacity: capacity,
                ..EarlierPages::default()
            },
            answers: Vec::new(),
        }
    }

    /// Takes `requests` on the open page, in memory (not durable until the shell says so).
    fn take(
        &mut self,
        requests: &[PaymentRequest],
    ) -> Result<Vec<Result<PaymentOutcome, PaymentError>>, String> {
        let page = self.pages.last_mut().expect("in memory");
        page.take_payments_paged(
            &self.key,
            &RiskLimits::default(),
            requests,
            &self.earlier,
            0,
            UnixMillis(1_000),
        )
        .map_err(|e| e.to_string())
    }

    /// Carries out the desk's actions; `durable` says whether each write reaches the disk.
    fn drive(&mut self, desk: &mut Desk, mut durable: impl FnMut() -> bool) {
        while let Some(action) = desk.poll_action() {
            match action {
                DeskAction::Take {
                    batch, requests, ..
                } => {
                    let out = self.take(&requests);
                    desk.handle_taken(batch, out);
                    let ok = durable();
                    desk.handle_durable(
                        batch,
                        if ok {
                            Ok(())
                        } else {
                            Err("fsync failed".into())
                        },
                    );
                }
                DeskAction::NextPage { batch, .. } => {
                    let full = self
                        .pages
                        .last()
                        .expect("in memory")
                        .view()
                        .expect("in memory");
                    self.earlier.absorb(&full);
                    let key = self.key.public();
                    let site = SiteId::for_authority(&SecretKey::from_seed([1; 32]).public());
                    let actor = actor_id(key, 1 + self.pages.len() as u32);
                    self.pages
                        .push(Doc::create_ledger(actor, site, "show", key).expect("in memory"));
                    desk.handle_next_page(batch, Ok(()));
                }
                DeskAction::Answer { ticket, result } => {
                    self.answers.push((
                        ticket,
                        result.map(|o| o.replayed).map_err(|e| e.to_string()),
                    ));
                }
            }
        }
    }
}

fn pay(key: &str, amount: u64) -> PaymentRequest {
    PaymentRequest {
        idempotency_key: key.into(),
        amount_minor: amount,
        currency: "EUR".into(),
        attendee: None,
    }
}

/// A client asks the desk for a payment in `show`.
fn ask(desk: &mut Desk, ticket: u64, show: &str, key: &str, amount: u64) -> Result<(), DeskError> {
    desk.handle_request(
        Ticket(ticket),
        show,
        pay(key, amount),
        None,
        &RiskLimits::default(),
    )
}

fn ready_desk(mutations: Mutations) -> Desk {
    let mut desk = Desk::new(mutations);
    assert_eq!(desk.ready(&[]).expect("in memory"), Ready::IndexKeys);
    desk.handle_keys_indexed([]);
    desk
}

#[test]
fn a_restarted_pos_answers_loading_until_its_pages_are_open_and_its_keys_indexed() {
    let mut desk = Desk::new(Mutations::none());
    let loading = vec!["show/s/ledger/d/3".to_owned()];
    assert!(matches!(
        desk.ready(&loading),
        Err(DeskError::Loading { .. })
    ));
    let refused = ask(&mut desk, 1, "s", "k1", 500);
    assert!(matches!(refused, Err(DeskError::Loading { .. })));
    desk.handle_keys_indexed([("k0".to_owned(), "other-show".to_owned())]);
    assert_eq!(
        desk.ready(&loading).expect("in memory"),
        Ready::Yes,
        "readiness is latched by the key index"
    );
    let reused = ask(&mut desk, 2, "s", "k0", 500);
    assert!(
        matches!(reused, Err(DeskError::KeyInOtherShow { .. })),
        "{reused:?}"
    );
}

#[test]
fn three_payments_that_arrive_together_are_one_change_answered_only_once_durable() {
    let mut desk = ready_desk(Mutations::none());
    let mut pos = Pos::new(0);
    for (i, key) in ["a", "b", "c"].iter().enumerate() {
        ask(&mut desk, i as u64, "show", key, 900).expect("in memory");
    }
    let Some(DeskAction::Take {
        batch, requests, ..
    }) = desk.poll_action()
    else {
        panic!("a batch");
    };
    assert_eq!(requests.len(), 3, "one batch");
    let out = pos.take(&requests);
    desk.handle_taken(batch, out);
    assert!(
        desk.poll_action().is_none(),
        "nothing is answered before the write is durable"
    );
    desk.handle_durable(batch, Ok(()));
    pos.drive(&mut desk, || true);
    assert_eq!(pos.answers.len(), 3);
    assert!(pos.answers.iter().all(|(_, r)| r == &Ok(false)));
}

#[test]
fn a_write_that_fails_is_answered_not_durable_and_the_retry_replays_after_a_whole_save() {
    let mut desk = ready_desk(Mutations::none());
    let mut pos = Pos::new(0);
    ask(&mut desk, 1, "show", "a", 900).expect("in memory");
    pos.drive(&mut desk, || false);
    assert!(
        matches!(&pos.answers[0], (Ticket(1), Err(e)) if e.contains("not acknowledged")),
        "{:?}",
        pos.answers
    );
    // The key stays this payment's (the change is in memory and a healed store saves it): another show may not take
    // a second payment under it, and the retry here replays it.
    let other = ask(&mut desk, 3, "other-show", "a", 900);
    assert!(
        matches!(other, Err(DeskError::KeyInOtherShow { .. })),
        "{other:?}"
    );
    ask(&mut desk, 2, "show", "a", 900).expect("in memory");
    pos.drive(&mut desk, || true);
    assert_eq!(pos.answers[1], (Ticket(2), Ok(true)));
}

#[test]
fn a_full_disk_refuses_at_once_and_writes_nothing() {
    let mut desk = ready_desk(Mutations::none());
    let fault = StoreFault {
        disk_full: true,
        reason: "no space left on device".into(),
    };
    let refused = desk.handle_request(
        Ticket(1),
        "show",
        pay("a", 900),
        Some(&fault),
        &RiskLimits::default(),
    );
    assert!(matches!(refused, Err(DeskError::StoreFailed(_))));
    assert!(desk.poll_action().is_none());
    let over = ask(&mut desk, 2, "show", "b", 15_001);
    assert!(
        matches!(over, Err(DeskError::OverLimit(_))),
        "over the per-payment limit, before any write"
    );
    assert_eq!(desk.pending(), 0);
}

#[test]
fn a_page_that_fills_mid_batch_takes_the_rest_on_the_next_page() {
    let mut desk = ready_desk(Mutations::none());
    let mut pos = Pos::new(2);
    for i in 0..5u64 {
        desk.handle_request(
            Ticket(i),
            "show",
            pay(&format!("k{i}"), 100),
            None,
            &RiskLimits::default(),
        )
        .expect("in memory");
    }
    pos.drive(&mut desk, || true);
    assert_eq!(pos.pages.len(), 3, "pages of two: 2 + 2 + 1");
    let mut tickets: Vec<u64> = pos
        .answers
        .iter()
        .map(|(t, r)| {
            assert_eq!(r, &Ok(false));
            t.0
        })
        .collect();
    tickets.sort_unstable();
    assert_eq!(tickets, vec![0, 1, 2, 3, 4]);
}

#[test]
fn the_mutation_answers_before_the_write_is_durable() {
    let mut desk = ready_desk(Mutations::none().with(Mutation::AnswerBeforeDurable));
    let mut pos = Pos::new(0);
    ask(&mut desk, 1, "show", "a", 900).expect("in memory");
    let Some(DeskAction::Take {
        batch, requests, ..
    }) = desk.poll_action()
    else {
        panic!("a batch");
    };
    let out = pos.take(&requests);
    desk.handle_taken(batch, out);
    assert!(matches!(
        desk.poll_action(),
        Some(DeskAction::Answer { result: Ok(_), .. })
    ));
}

/// A POS with a page in each of two shows, whose shell takes batches in parallel as the node's does: it reads what
/// the other show's page holds when a batch starts, and the other show's batch may change that page afterwards.
fn two_shows_at_once(mutations: Mutations) -> Vec<bool> {
    let limits = RiskLimits {
        stored_total_max_minor: 10_000,
        ..RiskLimits::default()
    };
    let key = SecretKey::from_seed([7; 32]);
    let site = SiteId::for_authority(&SecretKey::from_seed([1; 32]).public());
    let mut pages: Vec<Doc<Ledger>> = ["matinee", "evening"]
        .iter()
        .zip(1u32..)
        .map(|(show, n)| {
            Doc::create_ledger(actor_id(key.public(), n), site, show, key.public())
                .expect("in memory")
        })
        .collect();
    let mut desk = ready_desk(mutations);
    desk.handle_request(Ticket(1), "matinee", pay("m-1", 6_000), None, &limits)
        .expect("in memory");
    desk.handle_request(Ticket(2), "evening", pay("e-1", 6_000), None, &limits)
        .expect("in memory");
    // Both batches start before either is taken: each reads the other show's page while it is still empty.
    let mut takes = Vec::new();
    while let Some(DeskAction::Take {
        batch,
        show,
        requests,
        in_flight_elsewhere,
    }) = desk.poll_action()
    {
        let other = usize::from(show == "matinee");
        let read_elsewhere = pages[other].view().expect("in memory").unreconciled_minor();
        takes.push((batch, show, requests, read_elsewhere + in_flight_elsewhere));
    }
    assert_eq!(
        takes.len(),
        2,
        "the two shows' batches are in flight together"
    );
    for (batch, show, requests, elsewhere) in takes {
        let page = &mut pages[usize::from(show == "evening")];
        let out = page
            .take_payments_paged(
                &key,
                &limits,
                &requests,
                &EarlierPages::default(),
                elsewhere,
                UnixMillis(1_000),
            )
            .map_err(|e| e.to_string());
        desk.handle_taken(batch, out);
        desk.handle_durable(batch, Ok(()));
    }
    let mut answers = Vec::new();
    while let Some(DeskAction::Answer { result, .. }) = desk.poll_action() {
        answers.push(result.is_ok());
    }
    answers
}

#[test]
fn a_pos_selling_for_two_shows_at_once_holds_both_to_its_one_stored_limit() {
    // EUR 100 stored at most; EUR 60 asked in each show at the same moment: one is taken, one refused.
    let answers = two_shows_at_once(Mutations::none());
    assert_eq!(answers.len(), 2);
    assert_eq!(answers.iter().filter(|ok| **ok).count(), 1, "{answers:?}");
}

#[test]
fn the_mutation_lets_two_shows_pass_the_stored_limit_together() {
    let answers = two_shows_at_once(Mutations::none().with(Mutation::IgnoreOtherShows));
    assert_eq!(answers, vec![true, true]);
}
