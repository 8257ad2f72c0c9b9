//! Money and seats at the edges: what a till app, a hostile client and a restart must never get wrong.
//!
//! - a POS restarted with thousands of receipts says it is loading instead of answering "none" or taking a payment
//!   past a limit it had reached;
//! - an idempotency key names one payment on a device, whatever the show, and a retry that differs is refused
//!   naming the field;
//! - a show with one bad slot writes nothing; seats cannot be given to a device the site does not trust;
//! - a POS revoked as stolen keeps the receipts it took before: they still verify.

mod common;

use std::time::{Duration, Instant};

use common::site::{Node, Site, payment, set_config, show};
use serde_json::json;

fn message(answer: &popmesh_node::client::Answer) -> String {
    answer.json()["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no JSON error: {} {}", answer.status, answer.body))
        .to_owned()
}

#[test]
fn a_pos_restarted_with_many_ledger_pages_says_it_is_loading_and_never_answers_half() {
    let site = Site::create("ready");
    // Small pages, so the device's receipts span many documents to load.
    set_config(
        &site.edge.data,
        "receipts_per_page = 1000",
        "receipts_per_page = 20",
    );
    set_config(
        &site.edge.data,
        "stored_total_max_minor = 200000",
        "stored_total_max_minor = 600000",
    );
    let mut edge = Node::start(&site.edge, &[]);
    assert_eq!(edge.post("/v1/shows", show("fri", 10, &[])).status, 201);
    let total = 600;
    let client = edge.client();
    for i in 0..total {
        let a = client
            .post("/v1/payments", &payment(&format!("k-{i}"), 1000))
            .expect("answer");
        assert_eq!(a.status, 201, "{}", a.body);
    }
    // The till is at its stored limit: one more is refused.
    let over = edge.post("/v1/payments", payment("one-too-many", 1000));
    assert_eq!(over.status, 422, "{}", over.body);
    edge.kill();
    let edge = Node::start(&site.edge, &[]);
    // A new run has a new local secret: the CLI (and this client) read it from run.json again.
    let client = edge.client();
    // From the first answer on: either 503 saying what loads, or every receipt; a payment is never taken past the
    // limit it had reached.
    let start = Instant::now();
    let mut loading_seen = 0;
    loop {
        let page = client.get("/v1/receipts?limit=5000").expect("answer");
        let pay = client
            .post("/v1/payments", &payment("after-restart", 1000))
            .expect("answer");
        assert_ne!(
            pay.status, 201,
            "a payment past the stored limit: {}",
            pay.body
        );
        match page.status {
            503 => {
                assert!(message(&page).contains("loading"), "{}", page.body);
                // The status may already say ready (the last page opened in between); if not, it says what loads.
                let status = edge.status();
                if status["ready"] == false {
                    assert!(
                        status["loading"].as_array().is_some_and(|l| !l.is_empty()),
                        "{status}"
                    );
                }
                loading_seen += 1;
            }
            200 => {
                let n = page.json()["receipts"].as_array().map_or(0, Vec::len);
                assert_eq!(n, total, "a ready node answers every receipt, not some");
                assert_eq!(pay.status, 422, "{}", pay.body);
                break;
            }
            other => panic!("unexpected {other}: {}", page.body),
        }
        assert!(start.elapsed() < Duration::from_secs(60), "never ready");
    }
    assert_eq!(edge.status()["ready"], true);
    eprintln!(
        "ready after {:?} ({loading_seen} answers said loading)",
        start.elapsed()
    );
}

#[test]
fn an_idempotency_key_names_one_payment_per_device_and_a_differing_retry_is_refused() {
    let site = Site::create("keys");
    let edge = Node::start(&site.edge, &[]);
    assert_eq!(edge.post("/v1/shows", show("fri", 10, &[])).status, 201);
    assert_eq!(edge.post("/v1/shows", show("sat", 10, &[])).status, 201);
    let first = edge.post(
        "/v1/payments",
        json!({ "amount_minor": 1250, "currency": "EUR", "idempotency_key": "till-9", "show": "fri", "attendee": "att-a" }),
    );
    assert_eq!(first.status, 201, "{}", first.body);
    // The same key on another show is not a second receipt.
    let other_show = edge.post(
        "/v1/payments",
        json!({ "amount_minor": 1250, "currency": "EUR", "idempotency_key": "till-9", "show": "sat", "attendee": "att-a" }),
    );
    assert_eq!(other_show.status, 409, "{}", other_show.body);
    assert!(message(&other_show).contains("show"), "{}", other_show.body);
    // Another buyer, or another amount, under the same key: refused, naming the field.
    for (body, field) in [
        (
            json!({ "amount_minor": 1250, "currency": "EUR", "idempotency_key": "till-9", "show": "fri", "attendee": "att-b" }),
            "attendee",
        ),
        (
            json!({ "amount_minor": 1300, "currency": "EUR", "idempotency_key": "till-9", "show": "fri", "attendee": "att-a" }),
            "amount_minor",
        ),
    ] {
        let a = edge.post("/v1/payments", body);
        assert_eq!(a.status, 409, "{}", a.body);
        assert!(message(&a).contains(field), "{field}: {}", a.body);
    }
    // The identical retry replays.
    let again = edge.post(
        "/v1/payments",
        json!({ "amount_minor": 1250, "currency": "EUR", "idempotency_key": "till-9", "show": "fri", "attendee": "att-a" }),
    );
    assert_eq!(again.status, 201);
    assert_eq!(again.json()["replayed"], true);
    assert_eq!(edge.receipt_tokens().len(), 1);
}

#[test]
fn a_show_with_one_bad_slot_writes_nothing_and_seats_go_only_to_trusted_devices() {
    let site = Site::create("whole");
    let edge = Node::start(&site.edge, &[]);
    let docs_before = edge.get("/v1/documents");
    for (label, body, field) in [
        (
            "a slot id with a slash",
            json!({ "id": "fri", "name": "Fri", "currency": "EUR", "slots": [
                { "id": "s1", "label": "ok", "starts_at": 1, "capacity": 5 },
                { "id": "../etc", "label": "bad", "starts_at": 1, "capacity": 5 } ] }),
            "slots[1].id",
        ),
        (
            "grants summing past u64 on a slot of one seat",
            json!({ "id": "fri", "name": "Fri", "currency": "EUR", "slots": [
                { "id": "s1", "label": "ok", "starts_at": 1, "capacity": 1,
                  "grants": { "edge-1": 18446744073709551615u64 } } ] }),
            "slots[0].grants",
        ),
        (
            "a grant to a device that is not enrolled",
            json!({ "id": "fri", "name": "Fri", "currency": "EUR", "slots": [
                { "id": "s1", "label": "ok", "starts_at": 1, "capacity": 4,
                  "grants": { "ab".repeat(32): 2 } } ] }),
            "slots[0].grants",
        ),
        (
            "a show id with a newline",
            json!({ "id": "fri\r\nX-Evil: 1", "name": "Fri", "currency": "EUR", "slots": [
                { "id": "s1", "label": "ok", "starts_at": 1, "capacity": 4 } ] }),
            "id",
        ),
        (
            "100 KB of show id",
            json!({ "id": "x".repeat(100_000), "name": "Fri", "currency": "EUR", "slots": [
                { "id": "s1", "label": "ok", "starts_at": 1, "capacity": 4 } ] }),
            "id",
        ),
    ] {
        let a = edge.post("/v1/shows", body);
        assert_eq!(a.status, 400, "{label}: {}", a.body);
        assert!(message(&a).starts_with(field), "{label}: {}", a.body);
        assert!(
            a.body.len() < 2000,
            "{label}: the answer does not echo 100 KB"
        );
    }
    assert_eq!(
        edge.get("/v1/shows")["shows"],
        json!({}),
        "nothing was written"
    );
    assert_eq!(
        edge.get("/v1/documents"),
        docs_before,
        "no document changed"
    );

    // Seats given to a 64-hex id that is no device of the site are refused; nothing moves.
    assert_eq!(edge.post("/v1/shows", show("fri", 4, &[])).status, 201);
    let before = edge.get("/v1/shows/fri/slots/s1900");
    let stranger = "cd".repeat(32);
    let a = edge.post(
        "/v1/shows/fri/slots/s1900/transfers",
        json!({ "to": stranger, "seats": 3 }),
    );
    assert_eq!(a.status, 404, "{}", a.body);
    assert!(message(&a).starts_with("to: "), "{}", a.body);
    assert_eq!(edge.get("/v1/shows/fri/slots/s1900"), before);
    // A telemetry increment that would wrap a counter is refused.
    for by in [i64::MIN, -1, 0, i64::MAX] {
        let a = edge.post("/v1/telemetry", json!({ "counter": "visits", "by": by }));
        assert_eq!(a.status, 400, "by {by}: {}", a.body);
        assert!(message(&a).contains("by must be"), "{}", a.body);
    }
}

#[test]
fn a_pos_revoked_as_stolen_keeps_the_receipts_it_took_before() {
    let site = Site::create("revoke");
    let pos = site.join("pos", "pos-1");
    let edge = Node::start(&site.edge, &[]);
    let mut till = Node::start(&pos, &[&site.edge]);
    // Seats go only to enrolled devices: the show waits until the till's enrollment has reached the edge box.
    edge.wait_for("the till to enroll", Duration::from_secs(30), |n| {
        n.post("/v1/shows", show("fri", 10, &[("edge-1", 5), ("pos-1", 5)]))
            .status
            == 201
    });
    till.wait_for("the show", Duration::from_secs(30), |n| {
        n.get("/v1/shows")["shows"]["fri"].is_object()
    });
    for i in 0..3 {
        let a = till.post("/v1/payments", payment(&format!("p-{i}"), 700));
        assert_eq!(a.status, 201, "{}", a.body);
    }
    edge.wait_for("the till's receipts", Duration::from_secs(30), |n| {
        n.receipt_tokens().len() == 3
    });
    till.kill();
    let (ok, out, err) = common::site::popmesh(&[
        "site",
        "revoke",
        "--data",
        site.edge.data_str(),
        &pos.device_id(),
        "--reason",
        "stolen",
        "--api",
        &site.edge.api.to_string(),
    ]);
    assert!(ok, "revoke: {out}{err}");
    assert!(out.contains("1 to 3 of show fri"), "{out}");
    let receipts = edge.all_receipts();
    assert_eq!(receipts.len(), 3);
    for r in &receipts {
        assert_eq!(r["verified"], true, "taken before the revocation: {r}");
    }
}
