//! Stories of offline payments at a POS terminal, told through the ledger document and the site directory.

use popmesh_crdt::directory::Directory;
use popmesh_crdt::enrollment::{RevocationTarget, SiteAuthority, TrustError};
use popmesh_crdt::ledger::{InsertError, Inserted, Ledger, PaymentError};
use popmesh_crdt::receipt::{PaymentRequest, Receipt, ReceiptError};
use popmesh_crdt::risk::{RiskError, RiskLimits};
use popmesh_crdt::{DeviceKey, Doc, Role, SecretKey, UnixMillis, actor_id};

const HOUR: u64 = 3_600_000;

struct Counter {
    authority: SiteAuthority,
    directory: Doc<Directory>,
    pos: DeviceKey,
    ledger: Doc<Ledger>,
    limits: RiskLimits,
}

fn counter() -> Counter {
    let authority = SiteAuthority::new(SecretKey::from_seed([1; 32]));
    let pos = SecretKey::from_seed([2; 32]);
    let mut directory = Doc::<Directory>::create_site(
        actor_id(pos.public(), 0),
        authority.public(),
        "Harbour Market",
    )
    .expect("create");
    directory
        .add_device(&authority.enroll(
            pos.public(),
            Role::Pos,
            "pos-1",
            UnixMillis(0),
            UnixMillis(48 * HOUR),
        ))
        .expect("enroll");
    let ledger = Doc::<Ledger>::create_ledger(
        actor_id(pos.public(), 0),
        authority.site(),
        "show-1",
        pos.public(),
    )
    .expect("ledger");
    Counter {
        authority,
        directory,
        pos,
        ledger,
        limits: RiskLimits {
            currency: "EUR".into(),
            payment_max_minor: 5_000,
            stored_total_max_minor: 8_000,
            stale_after_ms: 24 * HOUR,
        },
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

#[test]
fn a_retried_payment_is_charged_once() {
    let mut c = counter();
    let first = c
        .ledger
        .take_payment(
            &c.pos,
            &c.limits,
            &pay("order-1", 1250),
            0,
            UnixMillis(HOUR),
        )
        .expect("taken");
    assert!(!first.replayed);
    let retry = c
        .ledger
        .take_payment(
            &c.pos,
            &c.limits,
            &pay("order-1", 1250),
            0,
            UnixMillis(HOUR + 5),
        )
        .expect("replayed");
    assert!(retry.replayed);
    assert_eq!(retry.receipt, first.receipt);
    let view = c.ledger.view().expect("view");
    assert_eq!(view.receipts.len(), 1);
    assert_eq!(view.unreconciled_minor(), 1250);

    // Reusing the key for a different amount is a client bug, not a second payment.
    assert!(matches!(
        c.ledger
            .take_payment(&c.pos, &c.limits, &pay("order-1", 999), 0, UnixMillis(HOUR)),
        Err(PaymentError::IdempotencyKeyReused { .. })
    ));
}

#[test]
fn the_terminal_stops_at_its_offline_limits_until_the_origin_reconciles() {
    let mut c = counter();
    assert!(matches!(
        c.ledger
            .take_payment(&c.pos, &c.limits, &pay("big", 5_001), 0, UnixMillis(1)),
        Err(PaymentError::OverLimit(RiskError::OverPaymentLimit { .. }))
    ));
    let a = c
        .ledger
        .take_payment(&c.pos, &c.limits, &pay("a", 5_000), 0, UnixMillis(1))
        .expect("taken");
    assert!(matches!(
        c.ledger
            .take_payment(&c.pos, &c.limits, &pay("b", 3_001), 0, UnixMillis(2)),
        Err(PaymentError::OverLimit(RiskError::OverStoredLimit {
            stored: 5_000,
            ..
        }))
    ));
    // Another show's ledger counts towards the same device total.
    assert!(matches!(
        c.ledger
            .take_payment(&c.pos, &c.limits, &pay("b", 2_000), 1_500, UnixMillis(2)),
        Err(PaymentError::OverLimit(RiskError::OverStoredLimit { .. }))
    ));
    // The origin reconciles the first payment; the terminal may take more.
    c.ledger
        .mark_reconciled(&a.receipt.token, "batch-1", UnixMillis(3))
        .expect("mark");
    c.ledger
        .mark_reconciled(&a.receipt.token, "batch-1", UnixMillis(4))
        .expect("marking twice is a no-op");
    c.ledger
        .take_payment(&c.pos, &c.limits, &pay("b", 3_001), 0, UnixMillis(5))
        .expect("room again");

    // The fast count (issued counter minus reconciled marks) agrees with summing every receipt.
    let view = c.ledger.view().expect("view");
    assert_eq!(c.ledger.unreconciled_minor().expect("count"), 3_001);
    assert_eq!(view.unreconciled_minor(), 3_001);

    // A payment left unreconciled for a day is flagged.
    assert_eq!(view.stale(&c.limits, UnixMillis(5 + 24 * HOUR)).count(), 0);
    assert_eq!(view.stale(&c.limits, UnixMillis(6 + 24 * HOUR)).count(), 1);
}

#[test]
fn inserting_the_same_receipt_twice_changes_nothing() {
    let mut c = counter();
    let taken = c
        .ledger
        .take_payment(&c.pos, &c.limits, &pay("o", 100), 0, UnixMillis(1))
        .expect("taken");
    let heads = c.ledger.heads();
    assert_eq!(
        c.ledger.insert(&taken.receipt).expect("insert"),
        Inserted::AlreadyPresent
    );
    assert_eq!(c.ledger.heads(), heads, "no new change");
}

#[test]
fn forged_unknown_revoked_and_tampered_receipts_are_each_rejected_with_a_reason() {
    let mut c = counter();
    let taken = c
        .ledger
        .take_payment(&c.pos, &c.limits, &pay("o", 100), 0, UnixMillis(HOUR))
        .expect("taken");
    let view = c.directory.view().expect("view");
    assert_eq!(taken.receipt.verify(&view), Ok(()));

    // Forged: another key signs a receipt claiming to be pos-1.
    let thief = SecretKey::from_seed([66; 32]);
    let mut forged = Receipt::issue(
        &thief,
        c.authority.site(),
        "show-1",
        2,
        &pay("x", 100),
        UnixMillis(HOUR),
    );
    forged.device = c.pos.public();
    forged.token = taken.receipt.token;
    assert!(matches!(
        forged.verify(&view),
        Err(ReceiptError::TokenMismatch { .. } | ReceiptError::BadSignature(_))
    ));
    assert!(matches!(
        c.ledger.insert(&forged),
        Err(InsertError::Invalid(_))
    ));

    // Unknown: a well-signed receipt from a device that never enrolled.
    let stranger = Receipt::issue(
        &thief,
        c.authority.site(),
        "show-1",
        1,
        &pay("y", 100),
        UnixMillis(HOUR),
    );
    assert!(matches!(
        stranger.verify(&view),
        Err(ReceiptError::Untrusted(TrustError::UnknownDevice(_)))
    ));

    // Tampered in the document: someone edits the amount of a stored receipt.
    {
        use automerge::ReadDoc as _;
        use automerge::transaction::Transactable as _;
        let mut doc = c.ledger.automerge_mut().transaction();
        let (_, receipts) = doc
            .get(automerge::ROOT, "receipts")
            .expect("read")
            .expect("receipts map");
        let (_, entry) = doc
            .get(&receipts, taken.receipt.token.to_string())
            .expect("read")
            .expect("entry");
        doc.put(&entry, "amount_minor", 1_u64).expect("put");
        doc.commit();
    }
    let tampered = c.ledger.view().expect("view").receipts.remove(0);
    assert_eq!(tampered.amount_minor, 1);
    assert!(matches!(
        tampered.verify(&view),
        Err(ReceiptError::TokenMismatch { .. })
    ));

    // Revoked: the terminal is reported stolen with nothing honoured; its receipts no longer verify (a revocation
    // that honours earlier receipts: tests/hostile_numbers.rs).
    let revocation = c.authority.revoke(
        RevocationTarget::Device(c.pos.public()),
        UnixMillis(2 * HOUR),
        "stolen",
    );
    c.directory.add_revocation(&revocation).expect("revoke");
    let view = c.directory.view().expect("view");
    assert!(matches!(
        taken.receipt.verify(&view),
        Err(ReceiptError::Untrusted(
            TrustError::IssuedAfterRevocation { .. }
        ))
    ));
}

#[test]
fn a_burst_of_payments_is_one_change_and_each_is_decided_as_if_alone() {
    let mut c = counter();
    let before = c.ledger.automerge().get_changes(&[]).len();
    let burst = [
        pay("a", 3_000),
        pay("a", 3_000), // the same request twice in one burst: a replay
        pay("a", 3_100), // the same key for another amount: refused
        pay("b", 4_000),
        pay("c", 2_000), // over the stored limit once a and b are counted
        pay("d", 1_000),
    ];
    let outcomes = c
        .ledger
        .take_payments(&c.pos, &c.limits, &burst, 0, UnixMillis(1))
        .expect("the ledger reads");
    assert!(matches!(&outcomes[0], Ok(o) if !o.replayed && o.receipt.seq == 1));
    assert!(matches!(&outcomes[1], Ok(o) if o.replayed && o.receipt.seq == 1));
    assert!(matches!(
        outcomes[2],
        Err(PaymentError::IdempotencyKeyReused { .. })
    ));
    assert!(matches!(&outcomes[3], Ok(o) if o.receipt.seq == 2));
    assert!(matches!(
        outcomes[4],
        Err(PaymentError::OverLimit(RiskError::OverStoredLimit {
            stored: 7_000,
            ..
        }))
    ));
    assert!(matches!(&outcomes[5], Ok(o) if o.receipt.seq == 3));
    assert_eq!(
        c.ledger.automerge().get_changes(&[]).len(),
        before + 1,
        "one change for the burst"
    );
    let view = c.ledger.view().expect("view");
    assert_eq!(view.receipts.len(), 3);
    assert_eq!(view.unreconciled_minor(), 8_000);
    assert_eq!(c.ledger.unreconciled_minor().expect("count"), 8_000);
}

#[test]
fn a_full_ledger_page_hands_over_to_the_next_and_retries_still_replay() {
    use popmesh_crdt::ledger::EarlierPages;
    let mut c = counter();
    let mut earlier = EarlierPages {
        page_capacity: 2,
        ..EarlierPages::default()
    };
    let take = |doc: &mut Doc<Ledger>, earlier: &EarlierPages, reqs: &[PaymentRequest]| {
        doc.take_payments_paged(&c.pos, &c.limits, reqs, earlier, 0, UnixMillis(1))
            .expect("the page reads")
    };
    let first = take(
        &mut c.ledger,
        &earlier,
        &[pay("a", 100), pay("b", 200), pay("c", 300)],
    );
    assert!(matches!(&first[1], Ok(o) if o.receipt.seq == 2));
    assert!(
        matches!(first[2], Err(PaymentError::PageFull)),
        "{:?}",
        first[2]
    );

    // The node starts page 1 and tells it what page 0 holds.
    earlier.absorb(&c.ledger.view().expect("view"));
    earlier.unreconciled_minor = c.ledger.unreconciled_minor().expect("count");
    let mut page1 = Doc::<Ledger>::create_ledger(
        actor_id(c.pos.public(), 1),
        c.authority.site(),
        "show-1",
        c.pos.public(),
    )
    .expect("page 1");
    let a_token = first[0].as_ref().expect("a").receipt.token;
    let second = take(
        &mut page1,
        &earlier,
        &[pay("c", 300), pay("a", 100), pay("b", 999)],
    );
    assert!(matches!(&second[0], Ok(o) if !o.replayed && o.receipt.seq == 3));
    assert!(matches!(&second[1], Ok(o) if o.replayed && o.receipt.token == a_token));
    assert!(matches!(
        second[2],
        Err(PaymentError::IdempotencyKeyReused { .. })
    ));

    // The stored limit counts every page: 600 held, 8,000 allowed.
    earlier.page_capacity = 10;
    let over = take(&mut page1, &earlier, &[pay("d", 4_000), pay("e", 3_500)]);
    assert!(over[0].is_ok());
    assert!(matches!(
        over[1],
        Err(PaymentError::OverLimit(RiskError::OverStoredLimit {
            stored: 4_600,
            ..
        }))
    ));
}

#[test]
fn a_receipt_is_written_as_autosurgeon_would_write_it() {
    // The desk writes a new receipt's fields directly (no read of each first); what it writes must be exactly
    // what reconciling the record writes, so every reader (views, the origin, kiosk pages) reads it the same.
    use automerge::ReadDoc as _;
    let mut c = counter();
    let outcomes = c
        .ledger
        .take_payments(&c.pos, &c.limits, &[pay("tea", 350)], 0, UnixMillis(7))
        .expect("the ledger reads");
    let token = outcomes[0]
        .as_ref()
        .expect("taken")
        .receipt
        .token
        .to_string();
    let am = c.ledger.automerge();
    let at = |am: &automerge::Automerge, path: &[&str]| {
        let mut obj = automerge::ROOT;
        for p in path {
            obj = match am.get(&obj, *p).expect("reads") {
                Some((automerge::Value::Object(_), id)) => id,
                other => panic!("{p} is {other:?}, not an object"),
            };
        }
        obj
    };
    let written = at(am, &["receipts", token.as_str()]);
    let record: popmesh_crdt::ledger::ReceiptRecord =
        autosurgeon::hydrate_prop(am, at(am, &["receipts"]), token.as_str()).expect("hydrates");
    let mut reconciled = automerge::AutoCommit::new();
    autosurgeon::reconcile_prop(&mut reconciled, automerge::ROOT, "r", &record)
        .expect("reconciles");
    let expected = at(reconciled.document(), &["r"]);
    let fields: Vec<String> = reconciled.keys(&expected).collect();
    assert_eq!(am.keys(&written).collect::<Vec<_>>(), fields);
    for field in &fields {
        let ours = am
            .get(&written, field.as_str())
            .expect("reads")
            .map(|(v, _)| v);
        let theirs = reconciled
            .get(&expected, field.as_str())
            .expect("reads")
            .map(|(v, _)| v);
        assert_eq!(ours, theirs, "field {field}");
    }
}
