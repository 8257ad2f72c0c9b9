//! A hostile client against a real edge box: every route of the local API gets wrong types, extreme numbers,
//! odd names, broken JSON, wrong methods and content types, over-long URLs and malformed HTTP, generated from a
//! seed (`POPMESH_HOSTILE_SEED`, printed). Every answer must be a 2xx or a JSON error, never a 5xx; a refused
//! request must leave every document's heads as they were. Failures are collected by class, each printed with
//! one request that shows it, and the test fails at the end if there is any.

mod common;

use std::time::{Duration, Instant};

use common::hostile::{Answer, Expect, Probe, Req, Rng};
use common::hostile_routes::{Ctx, hostile_requests};
use common::site::{Node, Site, show};

/// Issue 13; override with `POPMESH_HOSTILE_SEED`.
const SEED: u64 = 13;
/// Hostile requests the generator makes at least.
const REQUESTS_MIN: usize = 1_100;

fn seed() -> u64 {
    std::env::var("POPMESH_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED)
}

/// An edge box with what a hostile client can aim at: a show `fri` (slot `s1900`, 500 seats), a manifest `fri`
/// with `poster.jpg`, a pass for `att-7`, an attendee profile `att-1`.
fn edge_box_with_a_show(label: &str) -> (Site, Node, Ctx) {
    let site = Site::create(label);
    let edge = Node::start(&site.edge, &[]);
    let created = edge.post("/v1/shows", show("fri", 500, &[]));
    assert_eq!(created.status, 201, "{}", created.body);
    let hash = edge.publish_images("fri", &["poster.jpg"]).remove(0);
    let pass = edge.post(
        "/v1/passes",
        serde_json::json!({ "kind": "attendee", "subject": "att-7", "show": "fri", "valid_secs": 3600 }),
    );
    assert_eq!(pass.status, 201, "{}", pass.body);
    let profile = edge.put(
        "/v1/attendees/att-1",
        serde_json::json!({ "consent": { "analytics": false } }),
    );
    assert_eq!(profile.status, 200, "{}", profile.body);
    let ctx = Ctx {
        hash,
        size: "image poster.jpg".len() as u64,
        pass: pass.json()["pass"].as_str().expect("pass text").to_owned(),
        edge: site.edge.device_id(),
    };
    (site, edge, ctx)
}

/// The site keeps working: status answers, and a valid payment takes.
fn the_site_still_sells(p: &mut Probe, key: &str) {
    let status = p.send(&Req::get("after the storm", "GET /v1/status", "/v1/status"));
    p.check(
        status.as_ref().is_some_and(|a| a.status == 200),
        "after the storm: /v1/status does not answer 200",
        || format!("{status:?}"),
    );
    let body = format!(
        r#"{{"amount_minor":1250,"currency":"EUR","idempotency_key":"{key}","show":"fri"}}"#
    );
    let paid = p.send(
        &Req::json(
            "after the storm",
            "a valid payment",
            "POST",
            "/v1/payments",
            body.as_bytes(),
        )
        .expect(Expect::Any),
    );
    let ok = paid
        .as_ref()
        .is_some_and(|a| a.status == 201 && a.json()["receipt"]["token"].is_string());
    p.check(ok, "after the storm: a valid payment does not take", || {
        paid.map_or("no answer".into(), |a| a.describe())
    });
}

#[test]
fn a_hostile_client_hammering_every_route_gets_json_refusals_and_the_site_keeps_its_documents() {
    let seed = seed();
    println!("hostile: seed {seed} (POPMESH_HOSTILE_SEED={seed} replays this run)");
    let (_site, edge, ctx) = edge_box_with_a_show("hostile");
    let mut rng = Rng::new(seed);
    let requests = hostile_requests(&ctx, &mut rng, REQUESTS_MIN);
    assert!(requests.len() >= 1_000, "only {} requests", requests.len());
    let mut p = Probe::new(edge.device.api, seed);
    let started = Instant::now();
    for req in &requests {
        p.send(req);
    }
    println!(
        "hostile: {} requests sent in {:.1?}",
        requests.len(),
        started.elapsed()
    );
    the_site_still_sells(&mut p, "after-hostile-1");
    p.finish("hostile");
}

/// POSTs `body` to `target`, which must be refused (4xx) with a message naming one of `needles`.
fn refuse(
    p: &mut Probe,
    route: &str,
    what: &str,
    target: &str,
    body: &str,
    needles: &[&str],
) -> Option<Answer> {
    let req = Req::json(route, what, "POST", target, body.as_bytes());
    let answer = p.send(&req)?;
    if (400..500).contains(&answer.status) {
        let message = answer.message();
        let class = format!("{route}: {what}: the refusal names none of {needles:?}");
        p.check(needles.iter().any(|n| message.contains(n)), &class, || {
            format!("{}\n      -> {}", req.label, answer.describe())
        });
    }
    Some(answer)
}

fn show_body(id: &str, capacity: &str, grants: &str) -> String {
    format!(
        r#"{{"id":"{id}","name":"Limits","currency":"EUR","slots":[{{"id":"one","label":"20:00",
        "starts_at":1795900000000,"capacity":{capacity},"grants":{grants}}}]}}"#
    )
}

const STRANGER: &str = "abababababababababababababababababababababababababababababababab";

#[test]
fn a_hostile_operator_granting_seats_that_do_not_exist_is_refused_and_no_show_appears() {
    let (_site, edge, _ctx) = edge_box_with_a_show("hostile-grants");
    let mut p = Probe::new(edge.device.api, seed());
    let max = u64::MAX;
    let bad_slot = r#"{"id":"sat","name":"Saturday","currency":"EUR","slots":[
        {"id":"s1","label":"19:00","starts_at":1795900000000,"capacity":5},
        {"id":"bad slot/x","label":"21:00","starts_at":1795900000000,"capacity":5}]}"#;
    let twin_slots = r#"{"id":"sun","name":"Sunday","currency":"EUR","slots":[
        {"id":"s1","label":"19:00","starts_at":1795900000000,"capacity":5},
        {"id":"s1","label":"21:00","starts_at":1795900000000,"capacity":7}]}"#;
    let shows = [
        (
            "g1",
            "a grant of 2^64-1 on a 1-seat slot",
            show_body("g1", "1", &format!(r#"{{"edge-1":{max}}}"#)),
            "grant",
        ),
        (
            "g2",
            "a grant of 2 on a 1-seat slot",
            show_body("g2", "1", r#"{"edge-1":2}"#),
            "grant",
        ),
        (
            "g3",
            "grants of 2^64-1 and 2 (their sum overflows u64)",
            show_body("g3", "1", &format!(r#"{{"edge-1":{max},"{STRANGER}":2}}"#)),
            "grant",
        ),
        (
            "g4",
            "a grant to a 64-hex id no device is enrolled with",
            show_body("g4", "1", &format!(r#"{{"{STRANGER}":1}}"#)),
            "grant",
        ),
        (
            "sat",
            "a show with one bad slot id",
            bad_slot.to_owned(),
            "bad slot/x",
        ),
        (
            "sun",
            "a show with two slots of one id",
            twin_slots.to_owned(),
            "s1",
        ),
        (
            "a/b",
            "a show whose id holds a '/'",
            show_body("a/b", "1", "{}"),
            "a/b",
        ),
    ];
    for (id, what, body, needle) in &shows {
        let route = if *needle == "grant" {
            "POST /v1/shows (grants past what exists)"
        } else {
            "POST /v1/shows (one bad part)"
        };
        let refused = refuse(&mut p, route, what, "/v1/shows", body, &[*needle]);
        // Refused means nothing written: no show, no slot, no access list (the probe compares every document).
        if refused.is_none_or(|a| a.status >= 400) {
            let listed = p.shows();
            let class = format!("{what}: refused, yet the show is in GET /v1/shows");
            p.check(!listed.iter().any(|s| s == id), &class, || {
                format!("GET /v1/shows: {listed:?}")
            });
        }
    }
    the_site_still_sells(&mut p, "after-grants-1");
    p.finish("hostile (grants)");
}

#[test]
fn a_hostile_till_selling_and_paying_past_every_limit_sells_no_seat_and_takes_no_money() {
    let (_site, edge, ctx) = edge_box_with_a_show("hostile-till");
    let created = edge.post(
        "/v1/shows",
        serde_json::from_str(&show_body("one", "1", "{}")).expect("json"),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let mut p = Probe::new(edge.device.api, seed());
    let (max, two64, min) = (
        u64::MAX.to_string(),
        "18446744073709551616",
        i64::MIN.to_string(),
    );
    let extremes = [
        ("u64::MAX", max.as_str()),
        ("2^64", two64),
        ("0", "0"),
        ("-1", "-1"),
        ("i64::MIN", min.as_str()),
        ("1e400", "1e400"),
    ];

    // One seat: none of these sells it, the one valid booking does, and then nothing more.
    let book = "/v1/shows/one/slots/one/bookings";
    for (what, seats) in extremes.iter().chain([&("2", "2"), &("1.5", "1.5")]) {
        let body = format!(r#"{{"seats":{seats},"booking_id":"bk-{}"}}"#, what.len());
        refuse(
            &mut p,
            "POST bookings (a 1-seat slot)",
            &format!("seats = {what}"),
            book,
            &body,
            &["seat"],
        );
    }
    let last = br#"{"seats":1,"booking_id":"bk-last"}"#;
    let sold = p.send(
        &Req::json(
            "POST bookings (a 1-seat slot)",
            "the last seat",
            "POST",
            book,
            last,
        )
        .expect(Expect::Any),
    );
    p.check(
        sold.is_some_and(|a| a.status == 201),
        "the last seat of a 1-seat slot does not sell",
        String::new,
    );
    refuse(
        &mut p,
        "POST bookings (a 1-seat slot)",
        "a seat past the last",
        book,
        r#"{"seats":1,"booking_id":"bk-over"}"#,
        &["seat"],
    );
    let slot = p.send(&Req::get(
        "GET /v1/shows/{show}/slots/{slot}",
        "availability",
        "/v1/shows/one/slots/one",
    ));
    let sold = slot.map(|a| a.json()["sold"].clone());
    p.check(
        sold == Some(serde_json::json!(1)),
        "a 1-seat slot does not show 1 sold",
        || format!("{sold:?}"),
    );

    // Quota given to nobody: a device id no one enrolled, the zero key, itself.
    let transfer = "/v1/shows/fri/slots/s1900/transfers";
    let zero = "00".repeat(32);
    for (i, (what, to, seats)) in [
        ("to an unenrolled 64-hex id", STRANGER, "1"),
        ("to the all-zero id", zero.as_str(), "1"),
        ("u64::MAX seats to an unenrolled id", STRANGER, max.as_str()),
        ("to itself, by id", ctx.edge.as_str(), "1"),
    ]
    .into_iter()
    .enumerate()
    {
        let body = format!(r#"{{"to":"{to}","seats":{seats},"transfer_id":"tr-{i}"}}"#);
        refuse(
            &mut p,
            "POST transfers (to nobody)",
            what,
            transfer,
            &body,
            &["device", "enrolled", "itself", to],
        );
    }

    // Money: amounts past every limit.
    for (what, amount) in extremes.iter().chain([&("1.5", "1.5")]) {
        let body = format!(
            r#"{{"amount_minor":{amount},"currency":"EUR","idempotency_key":"pay-{}","show":"fri"}}"#,
            what.len()
        );
        refuse(
            &mut p,
            "POST /v1/payments (extremes)",
            &format!("amount_minor = {what}"),
            "/v1/payments",
            &body,
            &["amount", "limit"],
        );
    }
    the_site_still_sells(&mut p, "after-till-1");
    p.finish("hostile (till)");
}

#[test]
fn a_hostile_kiosk_counting_zero_or_less_is_refused_and_no_counter_moves() {
    let (_site, edge, _ctx) = edge_box_with_a_show("hostile-counters");
    let mut p = Probe::new(edge.device.api, seed());
    let before = p.heads();
    let mut counted = Vec::new();
    for (what, by) in [
        ("i64::MIN", i64::MIN.to_string()),
        ("0", "0".into()),
        ("-1", "-1".into()),
        ("-1000", "-1000".into()),
    ] {
        let body = format!(r#"{{"counter":"visits","by":{by}}}"#);
        let answer = refuse(
            &mut p,
            "POST /v1/telemetry (zero or less)",
            &format!("by = {what}"),
            "/v1/telemetry",
            &body,
            &["by"],
        );
        if answer.is_some_and(|a| a.status < 400) {
            counted.push(what);
        }
    }
    // A count lands with the next flush (every 5 s): wait for it, then see whether any document moved.
    std::thread::sleep(Duration::from_millis(5_500));
    let after = p.quiet(Duration::from_secs(1), Duration::from_secs(5));
    let moved = before.as_ref() != Some(&after);
    p.rebase(after);
    let visits = p.send(&Req::get("GET /v1/telemetry", "counters", "/v1/telemetry"));
    let visits = visits.map(|a| a.json()["counters"]["visits"].clone());
    p.check(
        !moved,
        "increments of zero or less reached the telemetry document",
        || format!("accepted: {counted:?}; visits is now {visits:?}"),
    );
    the_site_still_sells(&mut p, "after-counters-1");
    p.finish("hostile (counters)");
}
