//! Bad input gets a clear answer and loses nothing: the local API's 4xx answers and the CLI's errors.

mod common;

use common::site::{Node, Scratch, Site, payment, popmesh, show};
use serde_json::json;

fn error_message(answer: &popmesh_node::client::Answer) -> String {
    let body = answer.json();
    body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no JSON error body: {} {}", answer.status, answer.body))
        .to_owned()
}

#[test]
fn a_kiosk_app_sending_bad_requests_gets_json_errors_that_say_what_was_wrong() {
    let site = Site::create("api");
    let edge = Node::start(&site.edge, &[]);
    let c = edge.client();

    // Before any show exists, a payment has nowhere to go.
    let early = edge.post("/v1/payments", payment("k-0", 500));
    assert_eq!(early.status, 409);
    assert!(error_message(&early).contains("no show"), "{}", early.body);

    assert_eq!(edge.post("/v1/shows", show("fri", 3, &[])).status, 201);
    // The same show again is a retry (200, nothing new); another definition under its id is a conflict.
    let again = edge.post("/v1/shows", show("fri", 3, &[]));
    assert_eq!(again.status, 200, "{}", again.body);
    let other = edge.post("/v1/shows", show("fri", 4, &[]));
    assert_eq!(other.status, 409, "{}", other.body);

    // Malformed JSON, a missing field, an unknown field, and the wrong content type.
    let broken = c
        .post_raw("/v1/payments", b"{\"amount_minor\": 12")
        .expect("answer");
    assert_eq!(broken.status, 400);
    error_message(&broken);
    let missing = edge.post(
        "/v1/payments",
        json!({ "amount_minor": 100, "currency": "EUR" }),
    );
    assert_eq!(missing.status, 400, "{}", missing.body);
    assert!(
        error_message(&missing).contains("idempotency_key"),
        "{}",
        missing.body
    );
    let unknown = edge.post(
        "/v1/payments",
        json!({ "amount_minor": 1, "currency": "EUR", "idempotency_key": "a", "tip": 5 }),
    );
    assert_eq!(unknown.status, 400);
    assert!(error_message(&unknown).contains("tip"), "{}", unknown.body);
    let negative = edge.post(
        "/v1/payments",
        json!({ "amount_minor": -5, "currency": "EUR", "idempotency_key": "a" }),
    );
    assert_eq!(negative.status, 400);
    assert!(
        error_message(&negative).contains("amount_minor"),
        "{}",
        negative.body
    );

    // Domain rules: a bad currency code, a zero amount, over the offline limit.
    let bad_currency = edge.post(
        "/v1/payments",
        json!({ "amount_minor": 100, "currency": "eur", "idempotency_key": "b" }),
    );
    assert_eq!(bad_currency.status, 400);
    assert!(
        error_message(&bad_currency).contains("currency"),
        "{}",
        bad_currency.body
    );
    let zero = edge.post("/v1/payments", payment("z", 0));
    assert_eq!(zero.status, 400);
    let too_much = edge.post("/v1/payments", payment("big", 15_001));
    assert_eq!(too_much.status, 422, "{}", too_much.body);
    assert!(
        error_message(&too_much).contains("15000"),
        "{}",
        too_much.body
    );
    let dollars = edge.post(
        "/v1/payments",
        json!({ "amount_minor": 100, "currency": "USD", "idempotency_key": "usd" }),
    );
    assert_eq!(dollars.status, 422, "{}", dollars.body);

    // An idempotency key reused for a different amount is a conflict, not a second charge.
    let first = edge.post("/v1/payments", payment("order-17", 1200));
    assert_eq!(first.status, 201);
    let replay = edge.post("/v1/payments", payment("order-17", 1200));
    assert_eq!(replay.status, 201);
    assert_eq!(replay.json()["replayed"], true);
    assert_eq!(
        replay.json()["receipt"]["token"],
        first.json()["receipt"]["token"]
    );
    let reused = edge.post("/v1/payments", payment("order-17", 1300));
    assert_eq!(reused.status, 409, "{}", reused.body);
    assert!(
        error_message(&reused).contains("order-17"),
        "{}",
        reused.body
    );

    // Bookings: the quota runs out with a 409 that says how many seats are left.
    let ok = edge.post("/v1/shows/fri/slots/s1900/bookings", json!({ "seats": 2 }));
    assert_eq!(ok.status, 201, "{}", ok.body);
    let spent = edge.post("/v1/shows/fri/slots/s1900/bookings", json!({ "seats": 2 }));
    assert_eq!(spent.status, 409);
    assert!(
        error_message(&spent).contains("1 seats left"),
        "{}",
        spent.body
    );
    let none = edge.post("/v1/shows/fri/slots/s1900/bookings", json!({ "seats": 0 }));
    assert_eq!(none.status, 400, "{}", none.body);
    let nowhere = edge.post("/v1/shows/fri/slots/s2300/bookings", json!({ "seats": 1 }));
    assert_eq!(nowhere.status, 404);
    assert!(
        error_message(&nowhere).contains("s2300"),
        "{}",
        nowhere.body
    );

    // Telemetry: a counter name that is too long, and a good one.
    let long = edge.post("/v1/telemetry", json!({ "counter": "x".repeat(100) }));
    assert_eq!(long.status, 400, "{}", long.body);
    assert_eq!(
        edge.post("/v1/telemetry", json!({ "counter": "visits", "by": 3 }))
            .status,
        202
    );
    assert_eq!(edge.get("/v1/telemetry")["counters"]["visits"], 3);

    // Attendee ids must be pseudonyms; profiles and reports say what was wrong.
    let email_buyer = edge.post(
        "/v1/shows/fri/slots/s1900/bookings",
        json!({ "seats": 1, "attendee": "ann@example.org" }),
    );
    assert_eq!(email_buyer.status, 400, "{}", email_buyer.body);
    assert!(
        error_message(&email_buyer).contains("pseudonymous"),
        "{}",
        email_buyer.body
    );
    let odd_profile = c
        .put(
            "/v1/attendees/att-1",
            &json!({ "consent": { "analytics": "yes" } }),
        )
        .expect("answer");
    assert_eq!(odd_profile.status, 400, "{}", odd_profile.body);
    error_message(&odd_profile);
    let unknown_field = c
        .put("/v1/attendees/att-1", &json!({ "phone": "123" }))
        .expect("answer");
    assert_eq!(unknown_field.status, 400, "{}", unknown_field.body);
    assert!(
        error_message(&unknown_field).contains("phone"),
        "{}",
        unknown_field.body
    );
    let nobody = c.get("/v1/attendees/att-404").expect("answer");
    assert_eq!(nobody.status, 404);
    error_message(&nobody);
    let no_show = c.get("/v1/report?show=sat").expect("answer");
    assert_eq!(no_show.status, 404, "{}", no_show.body);
    assert!(error_message(&no_show).contains("sat"), "{}", no_show.body);
    let bad_query = c.get("/v1/report?shows=fri").expect("answer");
    assert_eq!(bad_query.status, 400, "{}", bad_query.body);
    let no_doc = c.get("/v1/documents/show/sat/slot/x").expect("answer");
    assert_eq!(no_doc.status, 404, "{}", no_doc.body);
    error_message(&no_doc);
    let tap = edge.post(
        "/v1/telemetry",
        json!({ "counter": "screen.tap", "attendee": "Ann Lee" }),
    );
    assert_eq!(tap.status, 400, "{}", tap.body);

    // Unknown endpoints and methods answer in JSON too.
    let lost = c.get("/v1/nope").expect("answer");
    assert_eq!(lost.status, 404);
    error_message(&lost);
    let wrong_method = c.get("/v1/payments").expect("answer");
    assert_eq!(wrong_method.status, 405);
    error_message(&wrong_method);

    // Each refusal also carries a stable code, so a POS app can tell a spent quota from a reused key without
    // parsing the message.
    for (answer, code) in [
        (&early, "no_show_open"),
        (&other, "show_exists"),
        (&broken, "invalid"),
        (&too_much, "over_limit"),
        (&reused, "idempotency_key_reused"),
        (&spent, "quota_spent"),
        (&none, "invalid"),
        (&nowhere, "unknown_slot"),
        (&no_show, "unknown_show"),
        (&no_doc, "unknown_document"),
        (&lost, "not_found"),
        (&wrong_method, "method_not_allowed"),
    ] {
        assert_eq!(answer.json()["error"]["code"], code, "{}", answer.body);
    }

    // Nothing that was refused left a trace: one receipt, two seats.
    assert_eq!(edge.receipt_tokens().len(), 1);
    assert_eq!(edge.get("/v1/shows/fri/slots/s1900")["sold"], 2);
}

#[test]
fn an_operator_making_mistakes_at_the_command_line_is_told_which_file_or_flag() {
    let scratch = Scratch::new("cli");
    let dir = scratch.0.join("edge");
    let dir_s = dir.to_str().expect("utf-8");

    let (ok, _, err) = popmesh(&["join", "popmesh-join1.not-base64!", "--data", dir_s]);
    assert!(!ok);
    assert!(err.contains("join token"), "{err}");

    let (ok, _, err) = popmesh(&["run", "--data", dir_s]);
    assert!(!ok);
    assert!(
        err.contains("site.json") && err.contains("site init"),
        "{err}"
    );

    let (ok, _, err) = popmesh(&["site", "init", "--data", dir_s, "--name", "Harbour Market"]);
    assert!(ok, "{err}");
    let (ok, _, err) = popmesh(&["site", "init", "--data", dir_s, "--name", "Again"]);
    assert!(!ok);
    assert!(err.contains("already holds a device"), "{err}");

    let (ok, _, err) = popmesh(&["site", "invite", "--data", dir_s, "--role", "cashier"]);
    assert!(!ok);
    assert!(err.contains("cashier"), "{err}");
    let (ok, _, err) = popmesh(&[
        "site",
        "invite",
        "--data",
        dir_s,
        "--role",
        "pos",
        "--bootstrap",
        "not-an-address",
    ]);
    assert!(!ok);
    assert!(err.contains("--bootstrap"), "{err}");

    // A joined device holds no authority key and cannot invite.
    let (ok, token, err) = popmesh(&["site", "invite", "--data", dir_s, "--role", "pos"]);
    assert!(ok, "{err}");
    let pos = scratch.0.join("pos");
    let pos_s = pos.to_str().expect("utf-8");
    let (ok, _, err) = popmesh(&["join", token.trim(), "--data", pos_s]);
    assert!(ok, "{err}");
    let (ok, _, err) = popmesh(&["site", "invite", "--data", pos_s, "--role", "pos"]);
    assert!(!ok);
    assert!(err.contains("authority.key"), "{err}");

    // `status` without a running node says so.
    let (ok, _, err) = popmesh(&["status", "--data", pos_s, "--api", "127.0.0.1:9"]);
    assert!(!ok);
    assert!(err.contains("popmesh run"), "{err}");

    // `report` without a running node says so; the demo's --keep must be a new directory.
    let (ok, _, err) = popmesh(&[
        "report",
        "--data",
        pos_s,
        "--api",
        "127.0.0.1:9",
        "--out",
        pos_s,
    ]);
    assert!(!ok);
    assert!(err.contains("popmesh run"), "{err}");
    let (ok, _, err) = popmesh(&["demo", "--keep", pos_s, "--out", pos_s]);
    assert!(!ok);
    assert!(
        err.contains("--keep") && err.contains("new or empty"),
        "{err}"
    );

    // A config file with a misspelt field.
    std::fs::write(pos.join("popmesh.toml"), "[p2p]\nmnds = false\n").expect("write");
    let (ok, _, err) = popmesh(&["run", "--data", pos_s]);
    assert!(!ok);
    assert!(
        err.contains("popmesh.toml") && err.contains("mnds"),
        "{err}"
    );

    // A damaged data file is named, not a panic.
    let store = dir.join("store.redb");
    let mut bytes = std::fs::read(&store).expect("read");
    for b in bytes.iter_mut().take(8192) {
        *b ^= 0x5a;
    }
    std::fs::write(&store, bytes).expect("write");
    let (ok, _, err) = popmesh(&[
        "run",
        "--data",
        dir_s,
        "--no-mdns",
        "--api",
        "127.0.0.1:0",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]);
    assert!(!ok);
    assert!(
        err.contains("store.redb") && err.contains("damaged"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn media_mistakes_get_answers_that_name_the_blob_the_file_or_the_flag() {
    let site = Site::create("media-errors");
    let edge = Node::start(&site.edge, &[]);
    let c = edge.client();
    let api = site.edge.api.to_string();
    let data = site.edge.data_str();

    // A manifest entry whose blob this device does not hold, a bad hash, a bad name, an unknown role.
    let absent = "ab".repeat(32);
    let entry = |hash: &str| json!({ "name": "trailer.mp4", "hash": hash, "size": 10, "mime": "video/mp4", "ttl_ms": 1 });
    let not_here = edge.post("/v1/manifests/fri", json!({ "entries": [entry(&absent)] }));
    assert_eq!(not_here.status, 400);
    assert!(
        error_message(&not_here).contains("not on this device"),
        "{}",
        not_here.body
    );
    let bad_hash = edge.post("/v1/manifests/fri", json!({ "entries": [entry("xyz")] }));
    assert_eq!(bad_hash.status, 400);
    assert!(
        error_message(&bad_hash).contains("64 lowercase hex"),
        "{}",
        bad_hash.body
    );
    let bad_role = edge.post(
        "/v1/manifests/fri",
        json!({ "slices": { "usher": [{ "start": 0, "end": 10 }] } }),
    );
    assert_eq!(bad_role.status, 400);
    assert!(
        error_message(&bad_role).contains("usher"),
        "{}",
        bad_role.body
    );
    let unknown_field = edge.post("/v1/manifests/fri", json!({ "entrys": [] }));
    assert_eq!(unknown_field.status, 400);
    assert!(
        error_message(&unknown_field).contains("entrys"),
        "{}",
        unknown_field.body
    );

    // Blob routes: a bad hash, a blob nobody has.
    let bad = c.get("/v1/blobs/zzz").expect("answer");
    assert_eq!(bad.status, 400);
    assert!(error_message(&bad).contains("BLAKE3"), "{}", bad.body);
    let nobody = c.get(&format!("/media/{absent}")).expect("answer");
    assert_eq!(nobody.status, 404);
    assert!(error_message(&nobody).contains(&absent), "{}", nobody.body);
    assert_eq!(
        c.get(&format!("/v1/blobs/{absent}"))
            .expect("answer")
            .json()["state"],
        "missing"
    );

    // The CLI names what was wrong.
    let cli = |command: &[&str], rest: &[&str]| {
        let mut args = command.to_vec();
        args.extend(["--data", data, "--api", &api]);
        args.extend(rest);
        popmesh(&args)
    };
    let out = site.root().join("out.bin");
    let out_s = out.to_str().expect("utf-8");
    let (ok, _, err) = cli(&["blob", "get"], &["nothex", "--out", out_s]);
    assert!(
        !ok && err.contains("HASH") && err.contains("nothex"),
        "{err}"
    );
    let (ok, _, err) = cli(&["blob", "get"], &[&absent, "--out", out_s]);
    assert!(!ok && err.contains(&absent), "{err}");
    assert!(
        !out.exists(),
        "nothing written for a blob that could not be had"
    );
    let publish = ["manifest", "publish"];
    let (ok, _, err) = cli(&publish, &["--name", "fri", "no-such.mp4"]);
    assert!(!ok && err.contains("no-such.mp4"), "{err}");
    let (ok, _, err) = cli(
        &publish,
        &["--name", "fri", "--slice", "kiosk=9-1", "x.mp4"],
    );
    assert!(
        !ok && err.contains("--slice") && err.contains("empty"),
        "{err}"
    );
}
