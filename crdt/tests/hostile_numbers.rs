//! A hostile client (or a broken POS app) sends extreme numbers: seats, grants, amounts and counters of 0, 1 and
//! the type's maximum. The site must refuse what makes no sense, naming the field, and no sum may ever wrap: the
//! slot of capacity 1 that once sold 502 seats (grants of 2^64-1 and 2 summed past u64) is the story here.

use std::collections::BTreeMap;

use popmesh_crdt::directory::Directory;
use popmesh_crdt::enrollment::{RevocationTarget, SiteAuthority, TrustError};
use popmesh_crdt::escrow::{EscrowError, Slot, SlotRecord, SlotView};
use popmesh_crdt::ledger::{Ledger, PaymentError};
use popmesh_crdt::receipt::{PaymentRequest, ReceiptError, RequestError};
use popmesh_crdt::risk::RiskLimits;
use popmesh_crdt::telemetry::{COUNTER_MAX, CounterBuffer, CounterError, INCREMENT_MAX};
use popmesh_crdt::{DeviceId, Doc, Role, SecretKey, UnixMillis, actor_id};
use proptest::prelude::*;

const HOUR: u64 = 3_600_000;

fn extreme() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(2),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(1 << 63),
        0u64..1000,
        any::<u64>(),
    ]
}

fn device(n: u8) -> DeviceId {
    SecretKey::from_seed([n; 32]).public()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever grants and capacity a show's creator asks for, a slot exists only if the grants fit, and then no
    /// device, selling all it may, sells past the capacity.
    #[test]
    fn grants_that_pass_u64_never_make_a_slot_oversell(
        capacity in extreme(),
        grants in proptest::collection::vec(extreme(), 1..4),
    ) {
        let map: BTreeMap<DeviceId, u64> =
            grants.iter().enumerate().map(|(i, g)| (device(i as u8 + 1), *g)).collect();
        let exact: u128 = map.values().map(|g| u128::from(*g)).sum();
        let made = Doc::<Slot>::create_slot(actor_id(device(1), 0), "fri", "10am", capacity, &map);
        match made {
            Err(EscrowError::OverGranted { granted, .. }) => {
                prop_assert!(exact > u128::from(capacity));
                prop_assert_eq!(granted, exact);
            }
            Err(other) => prop_assert!(false, "unexpected {other}"),
            Ok(mut slot) => {
                prop_assert!(exact <= u128::from(capacity));
                for (i, d) in map.keys().enumerate() {
                    // Sell in bookings of the most a booking may hold, a bounded number of times.
                    for b in 0..20 {
                        let _ = slot.sell(*d, &format!("b{i}-{b}"), 100, UnixMillis(1));
                    }
                    let _ = slot.sell(*d, &format!("b{i}-one"), 1, UnixMillis(1));
                }
                let view = slot.view().expect("view");
                prop_assert!(view.check_invariant().is_ok());
                prop_assert!(u128::from(view.total_sold()) <= u128::from(capacity));
            }
        }
    }

    /// A payment's amount is refused at 0 and past the most a payment may be; the stored limit never wraps.
    #[test]
    fn extreme_amounts_are_refused_by_name_or_taken_within_limits(
        amount in extreme(),
        stored_max in extreme(),
    ) {
        let key = SecretKey::from_seed([2; 32]);
        let site = SiteAuthority::new(SecretKey::from_seed([1; 32]));
        let mut ledger = Doc::<Ledger>::create_ledger(actor_id(key.public(), 0), site.site(), "fri", key.public())
            .expect("ledger");
        let limits = RiskLimits {
            currency: "EUR".into(),
            payment_max_minor: u64::MAX,
            stored_total_max_minor: stored_max,
            stale_after_ms: HOUR,
        };
        let request = PaymentRequest {
            idempotency_key: "k".into(),
            amount_minor: amount,
            currency: "EUR".into(),
            attendee: None,
        };
        match ledger.take_payment(&key, &limits, &request, u64::MAX, UnixMillis(1)) {
            Ok(_) => prop_assert!(false, "nothing fits beside u64::MAX already stored elsewhere"),
            Err(PaymentError::BadRequest(RequestError::ZeroAmount)) => prop_assert_eq!(amount, 0),
            Err(PaymentError::BadRequest(RequestError::AmountTooLarge(a))) => prop_assert_eq!(a, amount),
            Err(PaymentError::OverLimit(_)) => {}
            Err(other) => prop_assert!(false, "unexpected {other}"),
        }
        if amount > 0 && amount <= popmesh_crdt::receipt::AMOUNT_MINOR_MAX {
            let taken = ledger.take_payment(&key, &limits, &request, 0, UnixMillis(1));
            prop_assert_eq!(taken.is_ok(), amount <= stored_max, "{:?}", taken.err());
        }
    }

    /// A counter grows by 1 to INCREMENT_MAX per event and never past COUNTER_MAX; nothing wraps.
    #[test]
    fn counters_refuse_zero_negative_and_overflowing_increments(by in any::<i64>(), times in 1usize..5) {
        let mut buffer = CounterBuffer::new(1000, UnixMillis(0));
        let ok = popmesh_crdt::telemetry::check_increment(by);
        prop_assert_eq!(ok.is_ok(), (1..=INCREMENT_MAX).contains(&by));
        let mut total: i64 = 0;
        for _ in 0..times {
            match buffer.handle_increment("visits", by) {
                Ok(()) => total += by,
                Err(CounterError::BadIncrement(b)) => prop_assert!(b <= 0),
                Err(CounterError::Overflow(_)) => prop_assert!(i128::from(total) + i128::from(by) > i128::from(COUNTER_MAX)),
                Err(other) => prop_assert!(false, "unexpected {other}"),
            }
        }
        prop_assert!(buffer.pending().get("visits").copied().unwrap_or(0) <= COUNTER_MAX);
    }
}

#[test]
fn a_slot_a_hostile_peer_wrote_with_grants_past_its_capacity_sells_nothing() {
    let (a, b) = (device(1), device(2));
    let record = SlotRecord {
        show: "fri".into(),
        slot: "10am".into(),
        capacity: 1,
        grants: BTreeMap::from([(a.to_hex(), u64::MAX), (b.to_hex(), 2)]),
        devices: BTreeMap::new(),
    };
    let view = SlotView {
        record: record.clone(),
    };
    assert!(view.check_invariant().is_err(), "the checker names it");
    assert_eq!(view.available(&a.to_hex()), 0);
    // The same record as a document (as a peer would send it): a sale is refused, nothing written.
    let mut doc =
        Doc::<Slot>::create_slot(actor_id(a, 0), "fri", "10am", 1, &BTreeMap::new()).expect("slot");
    {
        use automerge::transaction::Transactable as _;
        let mut tx = doc.automerge_mut().transaction();
        let grants = match automerge::ReadDoc::get(&tx, automerge::ROOT, "grants").expect("read") {
            Some((_, id)) => id,
            None => panic!("slot has a grants map"),
        };
        tx.put(&grants, a.to_hex(), u64::MAX).expect("put");
        tx.put(&grants, b.to_hex(), 2_u64).expect("put");
        tx.commit();
    }
    assert!(matches!(
        doc.sell(a, "b1", 1, UnixMillis(1)),
        Err(EscrowError::OverGranted { .. })
    ));
    assert_eq!(doc.view().expect("view").total_sold(), 0);
}

#[test]
fn a_revoked_kiosks_earlier_receipts_still_verify_and_later_ones_do_not() {
    let authority = SiteAuthority::new(SecretKey::from_seed([1; 32]));
    let kiosk = SecretKey::from_seed([3; 32]);
    let mut directory =
        Doc::<Directory>::create_site(actor_id(kiosk.public(), 0), authority.public(), "Harbour")
            .expect("site");
    directory
        .add_device(&authority.enroll(
            kiosk.public(),
            Role::Kiosk,
            "kiosk-1",
            UnixMillis(0),
            UnixMillis(48 * HOUR),
        ))
        .expect("enroll");
    let mut ledger = Doc::<Ledger>::create_ledger(
        actor_id(kiosk.public(), 0),
        authority.site(),
        "fri",
        kiosk.public(),
    )
    .expect("ledger");
    let limits = RiskLimits::default();
    let pay = |key: &str| PaymentRequest {
        idempotency_key: key.into(),
        amount_minor: 500,
        currency: "EUR".into(),
        attendee: None,
    };
    let before: Vec<_> = (0..3)
        .map(|i| {
            ledger
                .take_payment(&kiosk, &limits, &pay(&format!("k{i}")), 0, UnixMillis(HOUR))
                .expect("pay")
                .receipt
        })
        .collect();
    // The authority has seen receipts 1 to 3 of show fri when it revokes the stolen kiosk.
    let revocation = authority.revoke_honouring(
        RevocationTarget::Device(kiosk.public()),
        UnixMillis(2 * HOUR),
        "stolen",
        BTreeMap::from([("fri".to_owned(), 3)]),
    );
    // Signed bytes round-trip; a forged widening fails the signature.
    let bytes = revocation.to_bytes();
    let back = popmesh_crdt::enrollment::Revocation::from_bytes(&bytes).expect("decode");
    assert_eq!(back, revocation);
    let mut widened = back.clone();
    widened.honoured.insert("fri".into(), 1000);
    assert!(
        widened
            .verify(&authority.public(), authority.site())
            .is_err()
    );
    directory.add_revocation(&revocation).expect("revoke");
    let after = ledger
        .take_payment(&kiosk, &limits, &pay("k-late"), 0, UnixMillis(3 * HOUR))
        .expect("pay")
        .receipt;
    let view = directory.view().expect("view");
    for r in &before {
        assert_eq!(
            r.verify(&view),
            Ok(()),
            "receipt {} was issued before the revocation",
            r.seq
        );
    }
    assert!(matches!(
        after.verify(&view),
        Err(ReceiptError::Untrusted(TrustError::IssuedAfterRevocation {
            seq: 4,
            honoured: 3,
            ..
        }))
    ));
    // The device itself is no longer trusted for anything else (links, transfers).
    assert!(
        view.verify_device(&kiosk.public(), UnixMillis(3 * HOUR))
            .is_err()
    );
}

#[test]
fn a_revocation_signed_by_an_older_device_still_reads_and_honours_nothing() {
    let authority = SiteAuthority::new(SecretKey::from_seed([1; 32]));
    let old = authority.revoke(RevocationTarget::Device(device(3)), UnixMillis(5), "lost");
    let bytes = old.to_bytes();
    assert_eq!(
        bytes[1], 1,
        "no honoured receipts: written as version 1, as before"
    );
    let back = popmesh_crdt::enrollment::Revocation::from_bytes(&bytes).expect("decode");
    assert!(back.verify(&authority.public(), authority.site()).is_ok());
    assert!(!back.honours("fri", 1));
}

#[test]
fn a_retry_with_the_same_key_but_another_buyer_or_amount_is_refused_naming_the_field() {
    let key = SecretKey::from_seed([2; 32]);
    let site = SiteAuthority::new(SecretKey::from_seed([1; 32]));
    let mut ledger =
        Doc::<Ledger>::create_ledger(actor_id(key.public(), 0), site.site(), "fri", key.public())
            .expect("ledger");
    let limits = RiskLimits::default();
    let first = PaymentRequest {
        idempotency_key: "door-7".into(),
        amount_minor: 1250,
        currency: "EUR".into(),
        attendee: Some("att-1".into()),
    };
    assert!(
        ledger
            .take_payment(&key, &limits, &first, 0, UnixMillis(1))
            .is_ok()
    );
    let same = ledger
        .take_payment(&key, &limits, &first, 0, UnixMillis(2))
        .expect("replay");
    assert!(same.replayed);
    for (changed, field) in [
        (
            PaymentRequest {
                attendee: Some("att-2".into()),
                ..first.clone()
            },
            "attendee",
        ),
        (
            PaymentRequest {
                attendee: None,
                ..first.clone()
            },
            "attendee",
        ),
        (
            PaymentRequest {
                amount_minor: 1251,
                ..first.clone()
            },
            "amount_minor",
        ),
        (
            PaymentRequest {
                currency: "GBP".into(),
                ..first.clone()
            },
            "currency",
        ),
    ] {
        match ledger.take_payment(&key, &limits, &changed, 0, UnixMillis(3)) {
            Err(PaymentError::IdempotencyKeyReused { differs, .. }) => {
                assert!(differs.starts_with(field), "{field}: {differs}")
            }
            other => panic!("{field}: {other:?}"),
        }
    }
}
