//! A kiosk that goes bad: it holds a valid enrollment, links to the site over a real libp2p link, and writes as
//! itself into another device's documents (deleting a POS terminal's receipt, moving its seats). The edge box and
//! the POS refuse both before samod applies them, close the link, count it, show it on the console and write it as
//! an incident; the POS keeps selling and the edge box keeps seeing its sales.
//!
//! The rogue is a real popmesh node run in this process (so the test can write into its documents raw, as a
//! compromised device could); the edge box and the POS are `popmesh run` processes.

mod common;

use std::time::Duration;

use automerge::ReadDoc as _;
use automerge::transaction::Transactable as _;
use common::site::{Node, Site, payment, show};
use popmesh_crdt::docs::DocName;
use popmesh_crdt::escrow::Slot;
use popmesh_crdt::{Doc, UnixMillis, actor_id};
use popmesh_node::config::Config;
use popmesh_node::node::RunOptions;
use popmesh_node::site::DataDir;
use serde_json::json;

const SYNC: Duration = Duration::from_secs(30);

#[test]
fn a_rogue_kiosk_deletes_a_receipt_and_moves_seats_and_the_site_refuses_both_and_keeps_selling() {
    let site = Site::create("rogue");
    let pos = site.join("pos", "pos-1");
    let rogue = site.join("kiosk", "kiosk-9");
    let edge = Node::start(&site.edge, &[&pos]);
    let pos = Node::start(&pos, &[&site.edge]);
    pos.wait_for("enrolled", SYNC, |n| n.status()["enrolled"] == true);
    let created = edge.post("/v1/shows", show("fri", 10, &[("pos-1", 5)]));
    assert_eq!(created.status, 201, "{}", created.body);
    pos.wait_for("the show", SYNC, |n| {
        n.client()
            .get("/v1/shows/fri/slots/s1900")
            .is_ok_and(|a| a.status == 200)
    });

    // The POS terminal sells two seats and takes a payment; the edge box holds both.
    let booked = pos.post(
        "/v1/shows/fri/slots/s1900/bookings",
        json!({ "seats": 2, "booking_id": "pair" }),
    );
    assert_eq!(booked.status, 201, "{}", booked.body);
    let paid = pos.post("/v1/payments", payment("pos-1-0001", 1250));
    assert_eq!(paid.status, 201, "{}", paid.body);
    let token = paid.json()["receipt"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    edge.wait_for("the POS receipt", SYNC, |n| {
        n.receipt_tokens().contains(&token)
    });

    // The stolen kiosk comes up, enrolled, and syncs the site's documents like any device.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = DataDir::load(&rogue.data).expect("the rogue's data directory");
    let me = dir.device();
    let pos_id = popmesh_crdt::DeviceId::from_hex(&pos.device.device_id()).expect("device id");
    let mut config = Config::load(&DataDir::config_path(&dir.root)).expect("config");
    config.media.port = 0;
    let mesh = popmesh_transport::MeshConfig {
        listen: vec![rogue.addr().parse().expect("addr")],
        bootstrap: vec![site.edge.addr().parse().expect("addr")],
        mdns: false,
        network_key: dir.network_key,
    };
    let options = RunOptions::from_config(&config, mesh);
    let node = runtime
        .block_on(popmesh_node::node::Node::start(dir, options))
        .expect("the rogue starts");
    let ledger = DocName::Ledger {
        show: "fri".into(),
        device: pos_id,
        page: 0,
    };
    let slot = DocName::Slot {
        show: "fri".into(),
        slot: "s1900".into(),
    };
    let started = std::time::Instant::now();
    let (ledger_doc, slot_doc) = loop {
        let held = node.raw_handle(&ledger).zip(node.raw_handle(&slot));
        if let Some((l, s)) = &held
            && l.with_document(|am| {
                am.get(automerge::ROOT, "receipts")
                    .ok()
                    .flatten()
                    .is_some_and(|(_, r)| am.keys(&r).count() == 1)
            })
        {
            break (l.clone(), s.clone());
        }
        assert!(
            started.elapsed() < SYNC,
            "the rogue never got the POS ledger and the slot"
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    // As itself, it writes a transfer of the POS terminal's seats to itself: refused at the edge box before it is
    // applied, and said why, with the rogue named.
    slot_doc.with_document(|am| {
        Doc::<Slot, &mut automerge::Automerge>::attach_as(am, actor_id(me, 77))
            .expect("attach")
            .transfer(pos_id, me, "stolen-seats", 3, UnixMillis(1))
            .expect("written where it may not");
    });
    let refused_for = |n: &Node, what: &str| {
        let refused = n.status()["refused_changes"].clone();
        refused.as_array().is_some_and(|all| {
            all.iter().any(|r| {
                r["author"] == me.to_hex() && r["reason"].as_str().is_some_and(|t| t.contains(what))
            })
        })
    };
    edge.wait_for("the transfer refused", SYNC, |n| {
        refused_for(n, "into what")
    });
    // Then it deletes the POS terminal's receipt: refused too.
    ledger_doc.with_document(|am| {
        am.set_actor(actor_id(me, 77));
        let mut tx = am.transaction();
        let (_, receipts) = tx
            .get(automerge::ROOT, "receipts")
            .expect("read")
            .expect("receipts");
        tx.delete(&receipts, token.as_str()).expect("delete");
        tx.commit();
    });
    edge.wait_for("the deletion refused", SYNC, |n| {
        refused_for(n, "ledger of")
    });
    assert!(edge.metric("popmesh_sync_refused_total") >= 2.0);
    // The receipt is still everywhere, and nobody holds the transfer.
    for n in [&edge, &pos] {
        assert!(n.receipt_tokens().contains(&token), "a receipt was deleted");
        let slot_content = n.get("/v1/documents/show/fri/slot/s1900").to_string();
        assert!(!slot_content.contains("stolen-seats"), "{slot_content}");
    }
    // The console names it, and the edge box wrote it as an incident into its telemetry.
    edge.wait_for("the console's alert", SYNC, |n| {
        n.get("/v1/console")["alerts"]
            .to_string()
            .contains("kiosk-9 sent changes it may not make")
    });
    edge.wait_for("the incident", SYNC, |n| {
        n.get(&format!(
            "/v1/documents/telemetry/{}",
            site.edge.device_id()
        ))
        .to_string()
        .contains("rogue_change")
    });

    // The rest of the site keeps selling: the POS takes another payment and the edge box sees it.
    let again = pos.post("/v1/payments", payment("pos-1-0002", 800));
    assert_eq!(again.status, 201, "{}", again.body);
    let second = again.json()["receipt"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    edge.wait_for("the second receipt", SYNC, |n| {
        n.receipt_tokens().contains(&second)
    });
    runtime.block_on(node.shutdown());
}
