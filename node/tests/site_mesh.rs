//! The site mesh with real processes: `popmesh run` daemons on 127.0.0.1 that find each other by bootstrap address.

mod common;

use std::time::Duration;

use common::site::{Node, Site, payment, show};
use serde_json::json;

const SYNC: Duration = Duration::from_secs(30);

#[test]
fn a_booking_and_a_payment_made_on_one_device_appear_on_all_three() {
    // The edge box creates the site; a kiosk and a POS terminal join it with tokens.
    let site = Site::create("three");
    let kiosk = site.join("kiosk", "kiosk-1");
    let pos = site.join("pos", "pos-1");
    // Every device is given every other's address, so pairs dial each other from both ends at once.
    let edge = Node::start(&site.edge, &[&kiosk, &pos]);
    let kiosk = Node::start(&kiosk, &[&site.edge]);
    let pos = Node::start(&pos, &[&site.edge, &kiosk.device]);

    // Both newcomers learn where the directory is from the edge box and enroll themselves in it.
    for n in [&kiosk, &pos] {
        n.wait_for("the directory and its own enrollment", SYNC, |n| {
            n.status()["enrolled"] == true
        });
    }
    edge.wait_for("both newcomers admitted", SYNC, |n| n.admitted_peers() == 2);

    // The edge box opens tonight's show, escrowing four seats to each device.
    let created = edge.post(
        "/v1/shows",
        show("fri", 12, &[("edge-1", 4), ("kiosk-1", 4), ("pos-1", 4)]),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    for n in [&kiosk, &pos] {
        n.wait_for("the show's slot", SYNC, |n| {
            n.client()
                .get("/v1/shows/fri/slots/s1900")
                .is_ok_and(|a| a.status == 200)
        });
    }

    // The edge box's screen follows the site's changes as they arrive.
    let screen = edge.follow_events();
    std::thread::sleep(Duration::from_millis(200));

    // The kiosk sells two seats; the POS takes a payment.
    let booked = kiosk.post(
        "/v1/shows/fri/slots/s1900/bookings",
        json!({ "seats": 2, "booking_id": "family-of-two" }),
    );
    assert_eq!(booked.status, 201, "{}", booked.body);
    assert_eq!(booked.json()["availability"]["available_here"], 2);
    let paid = pos.post("/v1/payments", payment("pos-1-0001", 1250));
    assert_eq!(paid.status, 201, "{}", paid.body);
    let token = paid.json()["receipt"]["token"]
        .as_str()
        .expect("a receipt token")
        .to_owned();
    assert!(token.starts_with("rcpt_"), "{token}");

    // Both appear on every device, and the receipt verifies everywhere.
    for n in [&edge, &kiosk, &pos] {
        n.wait_for("the kiosk's booking", SYNC, |n| {
            n.get("/v1/shows/fri/slots/s1900")["sold"] == 2
        });
        n.wait_for("the POS receipt", SYNC, |n| {
            n.receipt_tokens().contains(&token)
        });
        let receipts = n.get("/v1/receipts");
        assert_eq!(receipts["receipts"][0]["verified"], true, "{receipts}");
        assert_eq!(receipts["receipts"][0]["amount_minor"], 1250);
    }
    let slot_changed = std::iter::from_fn(|| screen.recv_timeout(SYNC).ok())
        .any(|e| e["doc"] == "show/fri/slot/s1900" && e["kind"] == "slot");
    assert!(
        slot_changed,
        "the edge box's event stream never reported the kiosk's sale"
    );
    let seen_by_edge = edge.get("/v1/shows/fri/slots/s1900");
    assert_eq!(seen_by_edge["remaining"], 10, "{seen_by_edge}");

    // One connection per pair, although both ends of every pair dialed.
    for n in [&edge, &kiosk, &pos] {
        n.wait_for("exactly one connection to each peer", SYNC, |n| {
            let peers = n.status()["peers"].as_array().cloned().unwrap_or_default();
            peers.len() == 2 && peers.iter().all(|p| p["connections"] == 1)
        });
    }

    // Status names the peers and shows them in sync; metrics count them.
    edge.wait_for("every document acknowledged by both peers", SYNC, |n| {
        let peers = n.status()["peers"].as_array().cloned().unwrap_or_default();
        peers.len() == 2 && peers.iter().all(|p| p["documents_behind"] == 0)
    });
    let status = edge.status();
    let mut names: Vec<&str> = status["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["kiosk-1", "pos-1"]);
    let metrics = edge.client().get("/metrics").expect("metrics");
    assert_eq!(metrics.status, 200);
    for family in [
        "popmesh_peers_connected",
        "popmesh_sync_messages_total",
        "popmesh_documents",
        "popmesh_receipts{",
        "libp2p_swarm_connections_established",
    ] {
        assert!(
            metrics.body.contains(family),
            "metrics lack {family}:\n{}",
            metrics.body
        );
    }
    assert!(
        metrics.body.contains("popmesh_peers_connected{device="),
        "{}",
        metrics.body
    );
}

#[test]
fn a_pos_killed_mid_sale_restarts_with_every_acknowledged_payment_and_catches_up() {
    let site = Site::create("sigkill");
    let pos_dir = site.join("pos", "pos-1");
    let edge = Node::start(&site.edge, &[]);
    let mut pos = Node::start(&pos_dir, &[&site.edge]);
    pos.wait_for("enrollment", SYNC, |n| n.status()["enrolled"] == true);
    assert_eq!(
        edge.post("/v1/shows", show("fri", 10, &[("edge-1", 5), ("pos-1", 5)]))
            .status,
        201
    );
    pos.wait_for("the show", SYNC, |n| {
        n.get("/v1/shows")["shows"]["fri"].is_object()
    });

    // A client hammers the POS with payments from another thread; the POS is killed while they are in flight.
    let client = pos.client();
    let seller = std::thread::spawn(move || {
        let mut acknowledged = Vec::new();
        for i in 0..400 {
            match client.post("/v1/payments", &payment(&format!("sale-{i:04}"), 100 + i)) {
                Ok(a) if a.status == 201 => acknowledged.push(
                    a.json()["receipt"]["token"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                ),
                Ok(a) => panic!("payment {i} refused: {} {}", a.status, a.body),
                Err(_) => break, // the node is gone
            }
        }
        acknowledged
    });
    std::thread::sleep(Duration::from_millis(1500));
    pos.kill();
    let acknowledged = seller.join().expect("the selling thread");
    assert!(
        acknowledged.len() >= 3,
        "the POS acknowledged only {} payments before the kill",
        acknowledged.len()
    );

    // While the POS is down, the edge box sells.
    let booked = edge.post(
        "/v1/shows/fri/slots/s1900/bookings",
        json!({ "seats": 3, "booking_id": "walk-in" }),
    );
    assert_eq!(booked.status, 201, "{}", booked.body);

    // The POS restarts from its data file: every acknowledged payment is there, and it catches up.
    let pos = Node::start(&pos_dir, &[&site.edge]);
    let held = pos.receipt_tokens();
    let lost: Vec<&String> = acknowledged.iter().filter(|t| !held.contains(t)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged then lost after SIGKILL: {lost:?}"
    );
    pos.wait_for("the edge box's sale made while it was down", SYNC, |n| {
        n.get("/v1/shows/fri/slots/s1900")["sold"] == 3
    });
    edge.wait_for("every acknowledged receipt", SYNC, |n| {
        let tokens = n.receipt_tokens();
        acknowledged.iter().all(|t| tokens.contains(t))
    });
    // A retry of the last acknowledged payment replays it instead of charging twice.
    let last = acknowledged.len() - 1;
    let retry = pos.post(
        "/v1/payments",
        payment(&format!("sale-{last:04}"), 100 + last as u64),
    );
    assert_eq!(retry.status, 201, "{}", retry.body);
    assert_eq!(retry.json()["replayed"], true);
    assert_eq!(
        retry.json()["receipt"]["token"],
        acknowledged[last].as_str()
    );
}

#[test]
fn devices_with_the_wrong_site_key_or_a_forged_or_revoked_enrollment_receive_nothing() {
    let site = Site::create("gate");
    let honest = site.join("pos", "pos-1");
    let wrong_key = site.join("kiosk", "kiosk-wrong-key");
    let revoked = site.join("kiosk", "kiosk-revoked");

    // A device with a valid enrollment but a different network key: its handshake cannot complete.
    std::fs::write(
        wrong_key.data.join("keys/network.key"),
        format!("{}\n", "ab".repeat(32)),
    )
    .expect("write");

    // A forged device: it holds the site's network key and claims the site, but its certificate is signed by an
    // authority of its own making.
    let forger_site = Site::create("forger");
    let forged = forger_site.edge.clone();
    let mut site_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(forged.data.join("site.json")).expect("read"),
    )
    .expect("json");
    let real: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(site.edge.data.join("site.json")).expect("read"),
    )
    .expect("json");
    site_json["authority"] = real["authority"].clone();
    site_json["site_id"] = real["site_id"].clone();
    site_json["directory"] = serde_json::Value::Null;
    std::fs::write(forged.data.join("site.json"), site_json.to_string()).expect("write");
    std::fs::copy(
        site.edge.data.join("keys/network.key"),
        forged.data.join("keys/network.key"),
    )
    .expect("copy");

    let edge = Node::start(&site.edge, &[]);
    assert_eq!(edge.post("/v1/shows", show("fri", 10, &[])).status, 201);
    let honest = Node::start(&honest, &[&site.edge]);
    let revoked = Node::start(&revoked, &[&site.edge]);
    revoked.wait_for("enrollment", SYNC, |n| n.status()["enrolled"] == true);
    honest.wait_for("enrollment", SYNC, |n| n.status()["enrolled"] == true);

    // The operator revokes one kiosk from the edge box; it is dropped at once.
    let revoked_id = revoked.device.device_id();
    let (ok, out, err) = common::site::popmesh(&[
        "site",
        "revoke",
        "--data",
        site.edge.data_str(),
        &revoked_id,
        "--reason",
        "reported stolen",
        "--api",
        &site.edge.api.to_string(),
    ]);
    assert!(ok, "site revoke failed: {out}{err}");
    edge.wait_for("the revoked kiosk dropped", SYNC, |n| {
        n.status()["peers"].as_array().is_some_and(|ps| {
            ps.iter()
                .all(|p| p["device"] != revoked_id.as_str() || p["admitted"] == false)
        })
    });

    let wrong_key = Node::start(&wrong_key, &[&site.edge]);
    let forged = Node::start(&forged, &[&site.edge]);

    // Now the site sells: the honest POS sees the payment; the three outsiders see nothing.
    let paid = edge.post("/v1/payments", payment("edge-0001", 990));
    assert_eq!(paid.status, 201, "{}", paid.body);
    let token = paid.json()["receipt"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    honest.wait_for("the edge box's payment", SYNC, |n| {
        n.receipt_tokens().contains(&token)
    });
    std::thread::sleep(Duration::from_secs(3));
    for outsider in [&wrong_key, &forged] {
        let status = outsider.status();
        assert_eq!(
            status["directory_synced"], false,
            "{} got the directory: {status}",
            outsider.device.name
        );
        assert!(
            outsider.receipt_tokens().is_empty(),
            "{} got receipts",
            outsider.device.name
        );
        assert_eq!(outsider.admitted_peers(), 0, "{status}");
    }
    assert!(
        !revoked.receipt_tokens().contains(&token),
        "the revoked kiosk received a payment made after its revocation"
    );
    assert_eq!(revoked.admitted_peers(), 0, "{}", revoked.status());

    // The edge box counted them (a handshake with the wrong key may take until its 10 s timeout to fail).
    let rejected = |n: &Node, reason: &str| {
        let metrics = n
            .client()
            .get("/metrics")
            .map(|a| a.body)
            .unwrap_or_default();
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("popmesh_peers_rejected_total")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    edge.wait_for("the wrong-key handshake counted", SYNC, |n| {
        rejected(n, "handshake") >= 1
    });
    edge.wait_for("the forged and the revoked device counted", SYNC, |n| {
        rejected(n, "not_enrolled") >= 2
    });
}

#[test]
fn a_kiosk_that_sells_out_its_quota_is_topped_up_by_the_edge_box_and_sells_again() {
    let site = Site::create("rebalance");
    let kiosk = site.join("kiosk", "kiosk-1");
    let edge = Node::start(&site.edge, &[]);
    let kiosk = Node::start(&kiosk, &[&site.edge]);
    kiosk.wait_for("enrollment", SYNC, |n| n.status()["enrolled"] == true);
    edge.wait_for("the kiosk admitted", SYNC, |n| n.admitted_peers() == 1);

    // The edge box keeps most seats in reserve; the kiosk starts with two.
    let created = edge.post(
        "/v1/shows",
        show("fri", 20, &[("edge-1", 18), ("kiosk-1", 2)]),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    kiosk.wait_for("the slot", SYNC, |n| {
        n.client()
            .get("/v1/shows/fri/slots/s1900")
            .is_ok_and(|a| a.status == 200)
    });
    let book = |id: &str| {
        kiosk.post(
            "/v1/shows/fri/slots/s1900/bookings",
            json!({ "seats": 2, "booking_id": id }),
        )
    };
    assert_eq!(book("first").status, 201);

    // The kiosk runs dry; the edge box notices within a rebalancing round and gives it seats.
    kiosk.wait_for("seats from the edge box", SYNC, |n| {
        n.get("/v1/shows/fri/slots/s1900")["available_here"]
            .as_u64()
            .unwrap_or(0)
            >= 2
    });
    let again = book("second");
    assert_eq!(again.status, 201, "{}", again.body);

    // The whole slot is never oversold: seats sold plus every device's quota is the capacity.
    edge.wait_for("the second sale", SYNC, |n| {
        n.get("/v1/shows/fri/slots/s1900")["sold"] == 4
    });
    let slot = edge.get("/v1/shows/fri/slots/s1900");
    let quotas: u64 = slot["devices"]
        .as_object()
        .expect("devices")
        .values()
        .map(|d| d["available"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(quotas + 4, 20, "{slot}");
}

#[test]
fn a_long_show_fills_ledger_pages_and_a_retry_of_an_early_payment_still_replays() {
    let site = Site::create("pages");
    let pos_dir = site.join("pos", "pos-1");
    // Four receipts a page, so a short story crosses several pages.
    let config = pos_dir.data.join("popmesh.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("receipts_per_page = 1000", "receipts_per_page = 4"),
    )
    .expect("config");
    let edge = Node::start(&site.edge, &[]);
    let mut pos = Node::start(&pos_dir, &[&site.edge]);
    pos.wait_for("enrollment", SYNC, |n| n.status()["enrolled"] == true);
    assert_eq!(edge.post("/v1/shows", show("fri", 10, &[])).status, 201);
    pos.wait_for("the show", SYNC, |n| {
        n.get("/v1/shows")["shows"]["fri"].is_object()
    });

    let mut tokens = Vec::new();
    for i in 0..10 {
        let paid = pos.post("/v1/payments", payment(&format!("p-{i}"), 100));
        assert_eq!(paid.status, 201, "{}", paid.body);
        assert_eq!(paid.json()["receipt"]["seq"], i + 1);
        tokens.push(
            paid.json()["receipt"]["token"]
                .as_str()
                .expect("token")
                .to_owned(),
        );
    }
    let ledgers = |n: &Node| {
        n.get("/v1/documents")["documents"]
            .as_array()
            .map(|ds| ds.iter().filter(|d| d["kind"] == "ledger").count())
            .unwrap_or(0)
    };
    assert_eq!(ledgers(&pos), 3, "ten receipts at four a page");

    // A retry of the very first payment replays it from page 0; its key for another amount is refused.
    let retry = pos.post("/v1/payments", payment("p-0", 100));
    assert_eq!(retry.status, 201);
    assert_eq!(retry.json()["replayed"], true);
    assert_eq!(retry.json()["receipt"]["token"], tokens[0].as_str());
    assert_eq!(pos.post("/v1/payments", payment("p-0", 200)).status, 409);

    // After a restart the numbering and the pages carry on.
    pos.kill();
    let pos = Node::start(&pos_dir, &[&site.edge]);
    let next = pos.post("/v1/payments", payment("p-10", 100));
    assert_eq!(next.status, 201, "{}", next.body);
    assert_eq!(next.json()["receipt"]["seq"], 11);
    tokens.push(
        next.json()["receipt"]["token"]
            .as_str()
            .expect("token")
            .to_owned(),
    );

    // The edge box holds every page and every receipt.
    edge.wait_for("all eleven receipts", SYNC, |n| {
        let held = n.receipt_tokens();
        tokens.iter().all(|t| held.contains(t))
    });
    assert_eq!(ledgers(&edge), 3);
}
