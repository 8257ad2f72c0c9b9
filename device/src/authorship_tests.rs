//! Stories of an enrolled kiosk gone bad at a site, judged by the rule every honest device applies: what it
//! writes as itself into other devices' documents is refused; what honest devices write passes.

use super::*;
use std::collections::BTreeMap;

use automerge::ReadDoc as _;
use automerge::sync::SyncDoc as _;
use automerge::transaction::Transactable as _;
use popmesh_crdt::escrow::Slot;
use popmesh_crdt::ledger::Ledger;
use popmesh_crdt::receipt::PaymentRequest;
use popmesh_crdt::risk::RiskLimits;
use popmesh_crdt::{Doc, SecretKey, SiteId, UnixMillis, actor_id};

struct Site {
    edge: SecretKey,
    origin: SecretKey,
    kiosk: SecretKey,
    rogue: SecretKey,
}

fn site() -> Site {
    Site {
        edge: SecretKey::from_seed([1; 32]),
        origin: SecretKey::from_seed([2; 32]),
        kiosk: SecretKey::from_seed([3; 32]),
        rogue: SecretKey::from_seed([4; 32]),
    }
}

impl Site {
    fn roles(&self) -> impl Fn(&DeviceId) -> Option<Role> + '_ {
        move |d: &DeviceId| {
            if *d == self.edge.public() {
                Some(Role::Edge)
            } else if *d == self.origin.public() {
                Some(Role::Origin)
            } else if *d == self.kiosk.public() || *d == self.rogue.public() {
                Some(Role::Kiosk)
            } else {
                None
            }
        }
    }
}

/// The changes `doc` holds that `before` does not (what a sync message would carry).
fn new_changes(doc: &Automerge, before: &[automerge::ChangeHash]) -> Vec<Change> {
    doc.get_changes(before)
}

fn check(site: &Site, kind: &DocKind, changes: &[Change]) -> Result<Option<DocKind>, Refusal> {
    check_changes(kind, changes, &site.roles())
}

/// A slot the edge box created, in which the kiosk sold two seats.
fn slot_with_a_sale(site: &Site) -> (Doc<Slot>, Vec<automerge::ChangeHash>) {
    let grants = BTreeMap::from([(site.kiosk.public(), 5), (site.rogue.public(), 5)]);
    let slot =
        Doc::create_slot(actor_id(site.edge.public(), 1), "fri", "s1", 10, &grants).expect("slot");
    let created = slot.automerge().get_heads();
    let mut kiosk = slot.fork_as(actor_id(site.kiosk.public(), 1));
    kiosk
        .sell(site.kiosk.public(), "b1", 2, UnixMillis(1))
        .expect("sale");
    (kiosk, created)
}

#[test]
fn the_edge_creates_a_slot_and_the_kiosk_sells_from_its_own_section() {
    let site = site();
    let (kiosk, created) = slot_with_a_sale(&site);
    let all = new_changes(kiosk.automerge(), &[]);
    assert_eq!(check(&site, &DocKind::Slot, &all), Ok(None));
    let sale = new_changes(kiosk.automerge(), &created);
    assert_eq!(check(&site, &DocKind::Slot, &sale), Ok(None));
    // Seen by a device that has not named the document yet: the creating change says what it is.
    assert_eq!(
        check(&site, &DocKind::Unknown, &all),
        Ok(Some(DocKind::Slot))
    );
}

#[test]
fn a_rogue_kiosk_cannot_move_another_kiosks_seats_or_delete_its_sales() {
    let site = site();
    let (kiosk, _) = slot_with_a_sale(&site);
    let before = kiosk.automerge().get_heads();
    let victim = site.kiosk.public().to_hex();

    // A transfer written inside the kiosk's section, out of the kiosk's quota, to the rogue.
    let mut rogue = kiosk.fork_as(actor_id(site.rogue.public(), 1));
    rogue
        .transfer(
            site.kiosk.public(),
            site.rogue.public(),
            "t1",
            3,
            UnixMillis(2),
        )
        .expect("written");
    let refused = check(
        &site,
        &DocKind::Slot,
        &new_changes(rogue.automerge(), &before),
    )
    .expect_err("refused");
    assert_eq!(refused.author, Some(site.rogue.public()));
    assert!(refused.reason.contains("into what"), "{refused}");

    // Deleting the kiosk's whole section.
    let mut am = kiosk.automerge().clone();
    am.set_actor(actor_id(site.rogue.public(), 1));
    let mut tx = am.transaction();
    let (_, devices) = tx
        .get(automerge::ROOT, "devices")
        .expect("read")
        .expect("devices");
    tx.delete(&devices, victim.as_str()).expect("delete");
    tx.commit();
    let refused = check(&site, &DocKind::Slot, &new_changes(&am, &before)).expect_err("refused");
    assert!(
        refused.reason.contains("overwrites or deletes"),
        "{refused}"
    );

    // Raising its own grant (a number where only the edge box writes).
    let mut am = kiosk.automerge().clone();
    am.set_actor(actor_id(site.rogue.public(), 1));
    let mut tx = am.transaction();
    let (_, grants) = tx
        .get(automerge::ROOT, "grants")
        .expect("read")
        .expect("grants");
    tx.put(&grants, site.rogue.public().to_hex(), 1000u64)
        .expect("put");
    tx.commit();
    assert!(check(&site, &DocKind::Slot, &new_changes(&am, &before)).is_err());

    // A second "creation" racing the edge box's root.
    let mut am = kiosk.automerge().clone();
    am.set_actor(actor_id(site.rogue.public(), 1));
    let mut tx = am.transaction();
    tx.put(automerge::ROOT, "capacity", 1000u64).expect("put");
    tx.commit();
    let refused = check(&site, &DocKind::Slot, &new_changes(&am, &before)).expect_err("refused");
    assert!(refused.reason.contains("overwrites"), "{refused}");
    // Or a new key at the root, which only the slot's creator writes.
    let mut am = kiosk.automerge().clone();
    am.set_actor(actor_id(site.rogue.public(), 1));
    let mut tx = am.transaction();
    tx.put(automerge::ROOT, "grants_v2", 1000u64).expect("put");
    tx.commit();
    let refused = check(&site, &DocKind::Slot, &new_changes(&am, &before)).expect_err("refused");
    assert!(refused.reason.contains("root"), "{refused}");
}

#[test]
fn a_junk_section_costs_only_its_writer_its_sales() {
    let site = site();
    let (kiosk, _) = slot_with_a_sale(&site);
    let before = kiosk.automerge().get_heads();
    // The rogue starts its own section (allowed: a map keyed by its own id) and writes junk into it.
    let mut am = kiosk.automerge().clone();
    am.set_actor(actor_id(site.rogue.public(), 1));
    let me = site.rogue.public().to_hex();
    let mut tx = am.transaction();
    let (_, devices) = tx
        .get(automerge::ROOT, "devices")
        .expect("read")
        .expect("devices");
    let mine = tx
        .put_object(&devices, me.as_str(), automerge::ObjType::Map)
        .expect("map");
    tx.put(&mine, "sales", "junk").expect("junk");
    tx.commit();
    assert_eq!(
        check(&site, &DocKind::Slot, &new_changes(&am, &before)),
        Ok(None)
    );
    // Every other device still reads the slot, and the kiosk's sale in it.
    let slot =
        Doc::<Slot, _>::attach_as(&mut am, actor_id(site.kiosk.public(), 2)).expect("attach");
    let view = slot.view().expect("the slot still reads");
    assert_eq!(
        view.record.grants.get(&site.kiosk.public().to_hex()),
        Some(&5)
    );
    let totals = slot
        .totals_for(&site.kiosk.public().to_hex())
        .expect("totals");
    assert_eq!(totals.sales.len(), 1);
}

/// The ledger as `key` leaves it after deleting its receipt (what a rogue, or an origin gone wrong, would send).
fn with_receipt_deleted(ledger: &Doc<Ledger>, key: &SecretKey) -> Automerge {
    let mut am = ledger.automerge().clone();
    am.set_actor(actor_id(key.public(), 1));
    let mut tx = am.transaction();
    let (_, receipts) = tx
        .get(automerge::ROOT, "receipts")
        .expect("read")
        .expect("receipts");
    let token = tx.keys(&receipts).next().expect("a receipt");
    tx.delete(&receipts, token.as_str()).expect("delete");
    tx.commit();
    am
}

fn ledger_with_a_receipt(site: &Site) -> Doc<Ledger> {
    let me = site.kiosk.public();
    let mut ledger = Doc::create_ledger(
        actor_id(me, 1),
        SiteId::for_authority(&site.edge.public()),
        "fri",
        me,
    )
    .expect("ledger");
    let request = PaymentRequest {
        idempotency_key: "k1".into(),
        amount_minor: 500,
        currency: "EUR".into(),
        attendee: None,
    };
    ledger
        .take_payment(
            &site.kiosk,
            &RiskLimits::default(),
            &request,
            0,
            UnixMillis(10),
        )
        .expect("paid");
    ledger
}

#[test]
fn a_rogue_kiosk_cannot_delete_a_receipt_and_the_origin_may_only_mark_it() {
    let site = site();
    let ledger = ledger_with_a_receipt(&site);
    let owner = DocKind::Ledger(site.kiosk.public());
    assert_eq!(
        check(&site, &owner, &new_changes(ledger.automerge(), &[])),
        Ok(None)
    );
    let before = ledger.automerge().get_heads();
    let token = ledger
        .record()
        .expect("record")
        .receipts
        .keys()
        .next()
        .cloned()
        .expect("token");

    let delete_as = |key: &SecretKey| new_changes(&with_receipt_deleted(&ledger, key), &before);
    let refused = check(&site, &owner, &delete_as(&site.rogue)).expect_err("refused");
    assert!(refused.reason.contains("ledger of"), "{refused}");
    // Not even the origin deletes a receipt.
    let refused = check(&site, &owner, &delete_as(&site.origin)).expect_err("refused");
    assert!(
        refused.reason.contains("overwrites or deletes"),
        "{refused}"
    );

    // The origin's reconciliation mark passes.
    let mut origin = ledger.fork_as(actor_id(site.origin.public(), 1));
    origin
        .mark_reconciled(
            &popmesh_crdt::receipt::ReceiptToken::parse(&token).expect("token"),
            "batch-1",
            UnixMillis(20),
        )
        .expect("marked");
    assert_eq!(
        check(&site, &owner, &new_changes(origin.automerge(), &before)),
        Ok(None)
    );
    // The kiosk's telemetry is the kiosk's alone.
    let rogue_in_telemetry = check(
        &site,
        &DocKind::Telemetry(site.kiosk.public()),
        &delete_as(&site.rogue),
    );
    assert!(rogue_in_telemetry.is_err());
}

#[test]
fn a_rogue_kiosk_registers_only_its_own_documents_in_the_directory() {
    let site = site();
    let dir = directory_doc(&site);
    let before = dir.get_heads();
    let register = |key: &str, value: automerge::ScalarValue| {
        let mut am = dir.clone();
        am.set_actor(actor_id(site.rogue.public(), 1));
        let mut tx = am.transaction();
        let (_, documents) = tx
            .get(automerge::ROOT, "documents")
            .expect("read")
            .expect("documents");
        tx.put(&documents, key, value).expect("put");
        tx.commit();
        new_changes(&am, &before)
    };
    let mine = DocName::Ledger {
        show: "fri".into(),
        device: site.rogue.public(),
        page: 0,
    };
    let theirs = DocName::Ledger {
        show: "fri".into(),
        device: site.kiosk.public(),
        page: 0,
    };
    let text = |s: &str| automerge::ScalarValue::Str(s.into());
    assert_eq!(
        check(
            &site,
            &DocKind::Directory,
            &register(&mine.to_string(), text("doc-1"))
        ),
        Ok(None)
    );
    let refused = check(
        &site,
        &DocKind::Directory,
        &register(&theirs.to_string(), text("doc-2")),
    )
    .expect_err("refused");
    assert_eq!(refused.author, Some(site.rogue.public()));
    // A show, written by a kiosk, is refused: shows are the edge box's.
    assert!(check(&site, &DocKind::Directory, &register("fri", text("x"))).is_err());
}

/// A site directory, created by the edge box.
fn directory_doc(site: &Site) -> Automerge {
    Doc::create_site(
        actor_id(site.edge.public(), 1),
        site.edge.public(),
        "test site",
    )
    .expect("directory")
    .into_automerge()
}

#[test]
fn a_sync_message_is_judged_whole_whether_it_carries_changes_or_a_whole_document() {
    let site = site();
    let ledger = ledger_with_a_receipt(&site);
    // The rogue's copy, with a receipt deleted, synced to a fresh peer (which gets the whole document) and to a
    // peer that has the honest ledger (which gets the change alone).
    let rogue = with_receipt_deleted(&ledger, &site.rogue);
    let owner = DocKind::Ledger(site.kiosk.public());
    for peer in [Automerge::new(), ledger.automerge().clone()] {
        let messages = sync_messages(&mut rogue.clone(), &mut peer.clone());
        assert!(
            messages
                .iter()
                .any(|m| check_sync(&owner, m, &site.roles()).is_err()),
            "the deletion reached a peer unrefused"
        );
        // The honest ledger synced the same way passes whole.
        let honest = sync_messages(&mut ledger.automerge().clone(), &mut peer.clone());
        for m in &honest {
            check_sync(&owner, m, &site.roles()).expect("honest");
        }
    }
    assert!(check_sync(&owner, b"not a sync message", &site.roles()).is_err());
}

#[test]
fn a_device_that_has_not_read_the_directory_takes_the_edge_boxes_slot_but_no_deleted_receipt() {
    let site = site();
    let nobody = |_: &DeviceId| None;
    let (kiosk, _) = slot_with_a_sale(&site);
    let all = new_changes(kiosk.automerge(), &[]);
    assert_eq!(
        check_changes(&DocKind::Unknown, &all, &nobody),
        Ok(Some(DocKind::Slot))
    );
    let ledger = ledger_with_a_receipt(&site);
    let before = ledger.automerge().get_heads();
    let am = with_receipt_deleted(&ledger, &site.rogue);
    let owner = DocKind::Ledger(site.kiosk.public());
    assert!(check_changes(&owner, &new_changes(&am, &before), &nobody).is_err());
}

#[test]
fn a_change_whose_actor_is_not_a_device_key_is_refused() {
    let site = site();
    let mut am = Automerge::new();
    am.set_actor(ActorId::from(vec![7u8; 16]));
    let mut tx = am.transaction();
    tx.put(automerge::ROOT, "x", 1).expect("put");
    tx.commit();
    let refused = check(&site, &DocKind::Unknown, &new_changes(&am, &[])).expect_err("refused");
    assert_eq!(refused.author, None);
}

/// Runs the sync protocol from `from` to `to` until quiet; returns what `from` sent.
fn sync_messages(from: &mut Automerge, to: &mut Automerge) -> Vec<Vec<u8>> {
    let (mut a, mut b) = (automerge::sync::State::new(), automerge::sync::State::new());
    let mut sent = Vec::new();
    for _ in 0..10 {
        let mut quiet = true;
        if let Some(m) = from.generate_sync_message(&mut a) {
            quiet = false;
            let bytes = m.encode();
            sent.push(bytes.clone());
            to.receive_sync_message(
                &mut b,
                automerge::sync::Message::decode(&bytes).expect("decode"),
            )
            .expect("receive");
        }
        if let Some(m) = to.generate_sync_message(&mut b) {
            quiet = false;
            from.receive_sync_message(&mut a, m).expect("receive");
        }
        if quiet {
            break;
        }
    }
    sent
}

/// A field of a hand-made samod message: text or bytes.
enum F<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
}

fn cbor(fields: &[(&str, F<'_>)]) -> Vec<u8> {
    let mut e = minicbor::Encoder::new(Vec::new());
    e.map(fields.len() as u64).expect("map");
    for (k, v) in fields {
        e.str(k).expect("key");
        match v {
            F::Text(t) => e.str(t).expect("text"),
            F::Bytes(b) => e.bytes(b).expect("bytes"),
        };
    }
    e.into_writer()
}

#[test]
fn a_sync_payload_is_read_strictly_as_the_engine_reads_it() {
    use F::{Bytes, Text};
    let ok = cbor(&[
        ("type", Text("sync")),
        ("documentId", Text("doc1")),
        ("data", Bytes(b"x")),
    ]);
    assert_eq!(
        sync_payload(&ok),
        Ok(Some(SyncPayload {
            document: "doc1",
            data: b"x"
        }))
    );
    let other = cbor(&[("type", Text("join")), ("senderId", Text("p"))]);
    assert_eq!(sync_payload(&other), Ok(None));
    // A second documentId (the engine keeps the last), a binary one, or none: refused.
    let twice = cbor(&[
        ("type", Text("sync")),
        ("documentId", Text("harmless")),
        ("documentId", Text("victim")),
        ("data", Bytes(b"x")),
    ]);
    assert!(sync_payload(&twice).is_err());
    let binary = cbor(&[
        ("type", Text("sync")),
        ("documentId", Bytes(b"id")),
        ("data", Bytes(b"x")),
    ]);
    assert!(sync_payload(&binary).is_err());
    let missing = cbor(&[("type", Text("request")), ("data", Bytes(b"x"))]);
    assert!(sync_payload(&missing).is_err());
    assert!(sync_payload(b"\xff").is_err());
}
