//! What the kiosk's suggestions learn from, told as the site sees it: a screen reports the slots it showed and a
//! booking made after one, and the next suggestions say so; a booking report must name a booking this kiosk made,
//! and counts once, so a screen cannot make a slot look popular by reporting alone; "others also booked" names a
//! pair only when five checked-in passes booked both, never from made-up attendee ids.

mod common;

use common::site::{Node, Site};
use serde_json::{Value, json};

fn feedback(node: &Node, body: Value) -> (u16, Value) {
    let a = node.post("/v1/suggestions/feedback", body);
    (a.status, a.json())
}

fn suggested(node: &Node, slot: &str) -> Value {
    node.get("/v1/suggestions?zone=foyer&limit=20")["suggestions"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["slot"] == slot).cloned())
        .unwrap_or(Value::Null)
}

#[test]
fn a_screen_reports_what_it_showed_and_only_real_bookings_count_as_booked() {
    let site = Site::create("suggestions");
    let edge = Node::start(&site.edge, &[]);
    let slot = |id: &str| json!({ "id": id, "label": id, "starts_at": 1_795_892_400_000u64, "capacity": 40, "grants": {} });
    let created = edge.post(
        "/v1/shows",
        json!({ "id": "fri", "name": "Fri", "currency": "EUR", "slots": [slot("jazz"), slot("magic"), slot("poetry")] }),
    );
    assert_eq!(created.status, 201, "{}", created.body);

    let shown = json!({ "zone": "foyer", "event": "shown", "items": [{ "show": "fri", "slot": "jazz" }, { "show": "fri", "slot": "magic" }] });
    assert_eq!(feedback(&edge, shown).0, 202);
    assert_eq!(suggested(&edge, "jazz")["shown"], 1);

    // A booking after the suggestion: reported with the booking's id, counted once.
    let booked = edge.post(
        "/v1/shows/fri/slots/jazz/bookings",
        json!({ "seats": 1, "booking_id": "bk-kiosk-1" }),
    );
    assert_eq!(booked.status, 201, "{}", booked.body);
    let report = json!({ "zone": "foyer", "event": "booked", "items": [{ "show": "fri", "slot": "jazz" }], "booking_id": "bk-kiosk-1" });
    assert_eq!(feedback(&edge, report.clone()).0, 202);
    assert_eq!(suggested(&edge, "jazz")["booked"], 1);
    let (status, again) = feedback(&edge, report);
    assert_eq!(status, 409, "{again}");
    assert_eq!(again["error"]["code"], "not_a_booking");

    // Reports alone make nothing popular: a booking this kiosk never made, or none named, is refused.
    let (status, made_up) = feedback(
        &edge,
        json!({ "zone": "foyer", "event": "booked", "items": [{ "show": "fri", "slot": "magic" }], "booking_id": "bk-never" }),
    );
    assert_eq!(status, 409, "{made_up}");
    let (status, _) = feedback(
        &edge,
        json!({ "zone": "foyer", "event": "booked", "items": [{ "show": "fri", "slot": "magic" }] }),
    );
    assert_eq!(status, 400);
    assert_eq!(suggested(&edge, "magic")["booked"], 0);
    // Unknown shows and slots are named as such.
    assert_eq!(
        edge.client()
            .get("/v1/suggestions?zone=foyer&show=nope")
            .expect("answer")
            .status,
        404
    );
    let (status, _) = feedback(
        &edge,
        json!({ "zone": "foyer", "event": "shown", "items": [{ "show": "fri", "slot": "nope" }] }),
    );
    assert_eq!(status, 404);

    // "Others also booked": four made-up attendee ids and one real, checked-in pass are not five passes.
    for who in ["syb-1", "syb-2", "syb-3", "syb-4"] {
        for s in ["magic", "poetry"] {
            let b = edge.post(
                &format!("/v1/shows/fri/slots/{s}/bookings"),
                json!({ "seats": 1, "attendee": who }),
            );
            assert_eq!(b.status, 201, "{}", b.body);
        }
    }
    let checked_in = |subject: &str| {
        let pass = edge.post(
            "/v1/passes",
            json!({ "kind": "attendee", "subject": subject, "valid_secs": 3600 }),
        );
        assert_eq!(pass.status, 201, "{}", pass.body);
        let c = edge.post("/v1/check-ins", json!({ "pass": pass.json()["pass"] }));
        assert_eq!(c.status, 201, "{}", c.body);
    };
    checked_in("att-victim");
    for s in ["magic", "poetry"] {
        let b = edge.post(
            &format!("/v1/shows/fri/slots/{s}/bookings"),
            json!({ "seats": 1, "attendee": "att-victim" }),
        );
        assert_eq!(b.status, 201, "{}", b.body);
    }
    let answer = edge.get("/v1/suggestions?zone=foyer");
    assert_eq!(answer["also_booked"], json!([]), "{answer}");
    // Five real, checked-in passes are.
    for i in 0..4 {
        let who = format!("att-real-{i}");
        checked_in(&who);
        for s in ["magic", "poetry"] {
            let b = edge.post(
                &format!("/v1/shows/fri/slots/{s}/bookings"),
                json!({ "seats": 1, "attendee": who }),
            );
            assert_eq!(b.status, 201, "{}", b.body);
        }
    }
    let answer = edge.get("/v1/suggestions?zone=foyer");
    let from_magic = answer["also_booked"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["slot"] == "magic").cloned())
        .unwrap_or(Value::Null);
    assert_eq!(
        from_magic["with"],
        json!([{ "show": "fri", "slot": "poetry", "attendees": 5 }]),
        "{answer}"
    );
    assert!(
        !answer.to_string().contains("att-"),
        "no attendee id in an answer: {answer}"
    );
}
