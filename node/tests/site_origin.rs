//! The origin joins late over the WAN (a bootstrap address), merges the show, verifies every receipt and reconciles
//! it against the payment processor's settlement batch.

mod common;

use std::time::Duration;

use common::site::{Node, Site, payment, popmesh, show};
use serde_json::Value;

const SYNC: Duration = Duration::from_secs(60);

fn pay(node: &Node, key: &str, amount_minor: u64) -> String {
    let answer = node.post("/v1/payments", payment(key, amount_minor));
    assert_eq!(answer.status, 201, "{}", answer.body);
    answer.json()["receipt"]["token"]
        .as_str()
        .expect("token")
        .to_owned()
}

fn receipts(node: &Node) -> Vec<Value> {
    node.get("/v1/receipts")["receipts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn heads(node: &Node) -> Value {
    node.get("/v1/documents")
}

#[test]
fn the_pos_and_edge_sell_offline_the_origin_joins_late_and_the_batch_reconciles_with_every_kind_of_mismatch()
 {
    let site = Site::create("origin");
    let pos = site.join("pos", "pos-1");
    let origin = site.join("origin", "origin-1");
    let edge = Node::start(&site.edge, &[]);
    let pos = Node::start(&pos, &[&site.edge]);
    pos.wait_for("enrolled", SYNC, |n| n.status()["enrolled"] == true);
    assert_eq!(edge.post("/v1/shows", show("fri", 20, &[])).status, 201);
    pos.wait_for("the show", SYNC, |n| {
        n.get("/v1/shows")["shows"]["fri"].is_object()
    });

    // The evening's takings, while the uplink is down.
    let door = pay(&pos, "door-1", 1250);
    let bar = pay(&pos, "bar-1", 990);
    let merch = pay(&pos, "merch-1", 500);
    let vip = pay(&edge, "vip-1", 2000);

    // The origin comes up at head office and dials the edge box over the WAN.
    let origin = Node::start(&origin, &[&site.edge]);
    origin.wait_for("every receipt merged and verified", SYNC, |n| {
        let rs = receipts(n);
        rs.len() == 4 && rs.iter().all(|r| r["verified"] == true)
    });

    // The processor's batch: the door sale settled (and listed twice), the bar sale settled for less, the merch sale
    // never reached the processor, the VIP sale was declined, and a charge the site never took.
    let csv = format!(
        "token,amount,currency,status\n\
         {door},12.50,EUR,settled\n\
         {bar},9.00,EUR,settled\n\
         {vip},20.00,EUR,declined\n\
         {door},12.50,EUR,settled\n\
         ffffffffffffffffffffffffffffffff,3.10,EUR,settled\n"
    );
    let file = site.root().join("batch-fri.csv");
    std::fs::write(&file, csv).expect("settlement file");
    let report_file = site.root().join("report.json");
    let api = origin.device.api.to_string();
    let reconcile = || {
        popmesh(&[
            "reconcile",
            "--data",
            origin.device.data_str(),
            "--api",
            &api,
            "--settlement",
            file.to_str().expect("utf-8"),
            "--out",
            report_file.to_str().expect("utf-8"),
        ])
    };
    let (ok, out, err) = reconcile();
    assert!(ok, "reconcile failed: {err}\n{out}");
    assert!(out.contains("the batch and the site disagree"), "{out}");
    let first: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).expect("report"))
            .expect("json");
    let r = &first["report"];
    let tokens = |key: &str| -> Vec<String> {
        r[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| x["token"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(tokens("matched"), vec![door.clone()]);
    assert_eq!(tokens("amount_mismatches"), vec![bar.clone()]);
    assert_eq!(r["amount_mismatches"][0]["processor_amount_minor"], 900);
    assert_eq!(tokens("missing_at_processor"), vec![merch.clone()]);
    assert_eq!(tokens("declined"), vec![vip.clone()]);
    assert_eq!(
        tokens("missing_at_site"),
        vec!["ffffffffffffffffffffffffffffffff".to_owned()]
    );
    assert_eq!(tokens("duplicates"), vec![door.clone()]);
    assert!(tokens("rejected").is_empty());
    assert_eq!(first["marked"], 1);
    assert_eq!(r["site_totals"]["EUR"], 1250 + 990 + 500 + 2000);

    // The mark travels back to the site: the POS learns the door sale is settled.
    pos.wait_for("the door sale marked reconciled on the POS", SYNC, |n| {
        receipts(n)
            .iter()
            .any(|x| x["token"] == door.as_str() && x["reconciled"] == true)
    });

    // Running it again changes nothing: no writes, the same findings.
    let before = heads(&origin);
    let (ok, out, err) = reconcile();
    assert!(ok, "second reconcile failed: {err}\n{out}");
    let second: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).expect("report"))
            .expect("json");
    assert_eq!(second["marked"], 0);
    assert_eq!(
        second["report"]["amount_mismatches"],
        first["report"]["amount_mismatches"]
    );
    assert_eq!(
        second["report"]["missing_at_site"],
        first["report"]["missing_at_site"]
    );
    assert_eq!(second["report"]["matched"][0]["already_marked"], true);
    assert_eq!(heads(&origin), before, "the second run wrote nothing");

    // Only the origin reconciles; a malformed batch is named by line and column.
    let refused = edge
        .client()
        .post_raw(
            "/v1/reconciliations?batch=x",
            b"token,amount,currency,status\n",
        )
        .expect("answer");
    assert_eq!(refused.status, 403, "{}", refused.body);
    let bad = origin
        .client()
        .post_raw(
            "/v1/reconciliations?batch=x",
            b"token,amount,currency,status\nabc,12.5.0,EUR,settled\n",
        )
        .expect("answer");
    assert_eq!(bad.status, 422);
    assert!(bad.body.contains("line 2, column amount"), "{}", bad.body);
    let missing = site.root().join("no-such.csv");
    let (ok, _, err) = popmesh(&[
        "reconcile",
        "--data",
        origin.device.data_str(),
        "--api",
        &api,
        "--settlement",
        missing.to_str().expect("utf-8"),
    ]);
    assert!(!ok && err.contains("no-such.csv"), "{err}");
}
