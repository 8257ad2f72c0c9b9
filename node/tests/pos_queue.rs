//! A POS app queued payments while it could not reach its device (the node restarting, Wi-Fi down between the
//! till and the edge box) and sends the queue in one `POST /v1/payments/batch`:
//!
//! - each payment is answered as `/v1/payments` would have answered it, in order: taken, replayed, or refused on
//!   its own (a reused key, over the per-payment limit) without holding up the rest;
//! - every taken payment survives a SIGKILL straight after the answer, across ledger pages filled mid-batch;
//! - the same queue sent again after the restart replays every payment (same tokens, nothing charged twice);
//! - a refusal of the whole (empty, too many, unknown show, a malformed payment) writes nothing;
//! - a queue sent while the disk is full takes nothing and says so in its status (503), so a till keeps it.

mod common;

use std::collections::BTreeMap;

use common::site::{Node, Site, payment, set_config, show};
use serde_json::{Value, json};

/// The queue: 250 payments, with a retry of the first, a key the till used before for another amount and one
/// payment over the per-payment limit (15,000 minor units by default).
fn queue() -> Vec<Value> {
    let mut q: Vec<Value> = (0..250)
        .map(|i| payment(&format!("q-{i}"), 100 + i))
        .collect();
    q.insert(10, payment("q-0", 100));
    q.insert(20, payment("before", 999));
    q.insert(30, payment("too-big", 15_001));
    q
}

fn results(answer: &popmesh_node::client::Answer) -> Vec<Value> {
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["results"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no results: {}", answer.body))
}

#[test]
fn a_pos_sends_its_queue_in_one_request_and_every_taken_payment_survives_a_kill() {
    let site = Site::create("posqueue");
    // Small pages, so the queue fills one mid-batch and goes on on the next.
    set_config(
        &site.edge.data,
        "receipts_per_page = 1000",
        "receipts_per_page = 100",
    );
    let mut edge = Node::start(&site.edge, &[]);
    assert_eq!(edge.post("/v1/shows", show("fri", 10, &[])).status, 201);
    assert_eq!(
        edge.post("/v1/payments", payment("before", 500)).status,
        201
    );

    let sent = json!({ "payments": queue() });
    let answer = edge.post("/v1/payments/batch", sent.clone());
    let got = results(&answer);
    assert_eq!(got.len(), 253, "one result per payment, in order");
    assert_eq!(answer.json()["taken"], 251);
    assert_eq!(answer.json()["refused"], 2);
    let mut tokens = BTreeMap::new();
    for (i, r) in got.iter().enumerate() {
        match i {
            10 => {
                assert_eq!(r["status"], 201, "{r}");
                assert_eq!(
                    r["replayed"], true,
                    "the retry of q-0 in the same queue: {r}"
                );
                assert_eq!(r["receipt"]["token"], got[0]["receipt"]["token"]);
            }
            20 => {
                assert_eq!(
                    r["status"], 409,
                    "a key used before for another amount: {r}"
                );
                assert_eq!(r["error"]["code"], "idempotency_key_reused");
                assert!(
                    r["error"]["message"]
                        .as_str()
                        .unwrap_or("")
                        .contains("amount_minor")
                );
            }
            30 => {
                assert_eq!(r["status"], 422, "over the per-payment limit: {r}");
                assert_eq!(r["error"]["code"], "over_limit");
            }
            _ => {
                assert_eq!(r["status"], 201, "payment {i}: {r}");
                assert_eq!(r["replayed"], false, "payment {i}: {r}");
                let key = r["receipt"]["idempotency_key"]
                    .as_str()
                    .expect("key")
                    .to_owned();
                assert_eq!(key, sent["payments"][i]["idempotency_key"], "in order");
                tokens.insert(
                    key,
                    r["receipt"]["token"].as_str().expect("token").to_owned(),
                );
            }
        }
    }
    assert_eq!(tokens.len(), 250);
    let seqs: Vec<u64> = got
        .iter()
        .filter(|r| r["status"] == 201 && r["replayed"] == false)
        .map(|r| r["receipt"]["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (2..252).collect::<Vec<_>>(), "numbered on, in order");

    // SIGKILL straight after the answer: every receipt it named is on the disk.
    edge.kill();
    let edge = Node::start(&site.edge, &[]);
    edge.wait_for("ready", std::time::Duration::from_secs(30), |n| {
        n.status()["ready"] == true
    });
    let held: std::collections::BTreeSet<String> = edge.receipt_tokens().into_iter().collect();
    assert_eq!(held.len(), 251, "the first payment and the queue's 250");
    for (key, token) in &tokens {
        assert!(held.contains(token), "{key} was answered 201 and lost");
    }

    // The till did not see the answer and sends the queue again: every payment replays, nothing is new.
    let again = results(&edge.post("/v1/payments/batch", sent));
    for (i, r) in again.iter().enumerate() {
        if i == 20 || i == 30 {
            assert_eq!(
                r["status"], got[i]["status"],
                "refused again the same way: {r}"
            );
            continue;
        }
        assert_eq!(r["replayed"], true, "payment {i}: {r}");
        assert_eq!(r["receipt"]["token"], got[i]["receipt"]["token"]);
    }
    assert_eq!(edge.receipt_tokens().len(), 251, "nothing charged twice");
}

#[test]
fn a_queue_refused_whole_writes_nothing_and_says_why() {
    let site = Site::create("posqueue-bad");
    let edge = Node::start(&site.edge, &[]);
    assert_eq!(edge.post("/v1/shows", show("fri", 10, &[])).status, 201);
    let many: Vec<Value> = (0..1_001).map(|i| payment(&format!("m-{i}"), 1)).collect();
    let cases = [
        (json!({ "payments": [] }), 400, "empty"),
        (json!({ "payments": many }), 413, "1001"),
        (
            json!({ "show": "sun", "payments": [payment("u-1", 100)] }),
            404,
            "sun",
        ),
        (
            json!({ "show": "../etc", "payments": [payment("u-2", 100)] }),
            400,
            "show",
        ),
        // One malformed payment (an amount that is no number) refuses the whole queue.
        (
            json!({ "payments": [payment("u-3", 100), { "amount_minor": "lots", "currency": "EUR", "idempotency_key": "u-4" }] }),
            400,
            "amount_minor",
        ),
        // The show is named once, for the whole queue, not per payment.
        (
            json!({ "payments": [{ "amount_minor": 1, "currency": "EUR", "idempotency_key": "u-5", "show": "fri" }] }),
            400,
            "show",
        ),
        (json!([payment("u-6", 100)]), 400, "object"),
    ];
    for (body, status, says) in cases {
        let a = edge.post("/v1/payments/batch", body);
        assert_eq!(a.status, status, "{}", a.body);
        let message = a.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert!(message.contains(says), "{says}: {}", a.body);
    }
    assert!(edge.receipt_tokens().is_empty(), "nothing was taken");
    // Nothing was claimed either: each key still takes its payment.
    let ok = edge.post(
        "/v1/payments/batch",
        json!({ "payments": [payment("u-1", 100), payment("u-3", 100), payment("m-0", 1)] }),
    );
    assert_eq!(ok.json()["taken"], 3, "{}", ok.body);
}

#[test]
fn a_queue_sent_while_the_disk_is_full_is_refused_whole_with_503_and_taken_once_it_frees() {
    let site = Site::create("posqueue-disk");
    let control = site.root().join("faults");
    std::fs::write(&control, "").expect("control file");
    let faults = control.to_str().expect("path").to_owned();
    let edge = Node::start_env(&site.edge, &[], &[], &[("POPMESH_STORAGE_FAULTS", &faults)]);
    assert_eq!(edge.post("/v1/shows", show("fri", 10, &[])).status, 201);
    let queue =
        json!({ "payments": (0..20).map(|i| payment(&format!("d-{i}"), 100)).collect::<Vec<_>>() });
    std::fs::write(&control, "disk_full=1").expect("fault on");
    // The fault layer follows its control file every 20 ms: a single payment shows when the disk refuses. What a
    // refused probe wrote in memory may reach the disk once it frees (it was never acknowledged).
    let mut probes = 0;
    while edge
        .post("/v1/payments", payment(&format!("probe-{probes}"), 1))
        .status
        != 503
    {
        probes += 1;
        assert!(probes < 200, "the disk never refused a write");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A till that reads only the status must not clear its queue: nothing was taken, so the answer is a 503.
    let refused = edge.post("/v1/payments/batch", queue.clone());
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.json()["taken"], 0, "{}", refused.body);
    for r in refused.json()["results"].as_array().expect("results") {
        assert_eq!(r["status"], 503, "{r}");
    }
    std::fs::write(&control, "").expect("fault off");
    edge.wait_for(
        "the store recovers",
        std::time::Duration::from_secs(20),
        |n| n.status()["store"]["healthy"] == true,
    );
    let taken = edge.post("/v1/payments/batch", queue);
    assert_eq!(taken.status, 200, "{}", taken.body);
    assert_eq!(taken.json()["taken"], 20, "{}", taken.body);
    let held: std::collections::BTreeSet<String> = edge
        .all_receipts()
        .iter()
        .filter_map(|r| r["idempotency_key"].as_str().map(str::to_owned))
        .filter(|k| k.starts_with("d-"))
        .collect();
    assert_eq!(held.len(), 20, "each of the queue's payments once");
}
