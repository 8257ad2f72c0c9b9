//! The show end to end over real processes: a kiosk takes attendees' profiles and consent, counts interactions
//! through an overload, sells to checked-in attendees; the POS takes their payments; the origin joins late, and
//! its show report measures conversion and engagement. No personal data reaches any document that syncs.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::site::{Node, Site, popmesh, show};
use serde_json::{Value, json};

const SYNC: Duration = Duration::from_secs(60);

/// Contact data one attendee gives the kiosk; none of it may leave the kiosk.
const EMAIL: &str = "ann.lee@example.org";
const NAME: &str = "Ann Lee";

fn set_telemetry(data: &std::path::Path, max_per_sec: u64, one_in: u32) {
    let path = data.join("popmesh.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    let text = text
        .replace(
            "events_per_sec_max = 200",
            &format!("events_per_sec_max = {max_per_sec}"),
        )
        .replace("sample_one_in = 10", &format!("sample_one_in = {one_in}"));
    std::fs::write(&path, text).expect("config written");
}

fn count(kiosk: &Node, counter: &str, attendee: Option<&str>) -> String {
    let mut body = json!({ "counter": counter });
    if let Some(a) = attendee {
        body["attendee"] = json!(a);
    }
    let answer = kiosk.post("/v1/telemetry", body);
    assert_eq!(answer.status, 202, "{}", answer.body);
    let outcome = &answer.json()["outcome"];
    outcome
        .as_str()
        .map(str::to_owned)
        .or_else(|| outcome.as_object().and_then(|o| o.keys().next().cloned()))
        .expect("outcome")
}

fn check_in(edge: &Node, door: &Node, who: &str) {
    let pass = edge.post(
        "/v1/passes",
        json!({ "kind": "attendee", "subject": who, "valid_secs": 3600 }),
    );
    assert_eq!(pass.status, 201, "{}", pass.body);
    let text = pass.json()["pass"].as_str().expect("pass text").to_owned();
    let admitted = door.post("/v1/check-ins", json!({ "pass": text }));
    assert_eq!(admitted.status, 201, "{}", admitted.body);
}

#[test]
fn a_kiosk_keeps_profiles_to_itself_counts_through_an_overload_and_the_origin_reports_conversion() {
    let site = Site::create("show");
    let kiosk = site.join("kiosk", "kiosk-1");
    let pos = site.join("pos", "pos-1");
    let origin = site.join("origin", "origin-1");
    // The kiosk is overloaded past 50 events a second; it then keeps one tap in 10.
    set_telemetry(&kiosk.data, 50, 10);
    let edge = Node::start(&site.edge, &[]);
    let kiosk = Node::start(&kiosk, &[&site.edge]);
    let pos = Node::start(&pos, &[&site.edge]);
    for n in [&kiosk, &pos] {
        n.wait_for("enrolled", SYNC, |n| n.status()["enrolled"] == true);
    }
    assert_eq!(
        edge.post("/v1/shows", show("fri", 30, &[("kiosk-1", 20)]))
            .status,
        201
    );
    kiosk.wait_for("the show", SYNC, |n| {
        n.get("/v1/shows")["shows"]["fri"].is_object()
    });
    // Media, so that every kind of synced document exists when the privacy check runs.
    edge.publish_images("fri", &["poster.jpg"]);

    // Ann says yes to analytics and leaves her name and e-mail at the kiosk; Bo says no.
    let ann = kiosk.put(
        "/v1/attendees/att-ann",
        json!({ "consent": { "analytics": true, "marketing": true }, "fields": { "first_name": NAME, "email": EMAIL } }),
    );
    assert_eq!(ann.status, 200, "{}", ann.body);
    let bo = kiosk.put(
        "/v1/attendees/att-bo",
        json!({ "consent": { "analytics": false } }),
    );
    assert_eq!(bo.status, 200, "{}", bo.body);
    assert_eq!(
        kiosk.get("/v1/attendees/att-ann")["profile"]["fields"]["email"],
        EMAIL
    );
    let elsewhere = edge.client().get("/v1/attendees/att-ann").expect("answer");
    assert_eq!(
        elsewhere.status, 404,
        "a profile stays on the kiosk: {}",
        elsewhere.body
    );
    let email_as_id = kiosk.put("/v1/attendees/ann@example.org", json!({}));
    assert_eq!(
        email_as_id.status, 400,
        "contact data is not an id: {}",
        email_as_id.body
    );

    // Consent decides whether an attendee's interactions count.
    assert_eq!(count(&kiosk, "ar.session", Some("att-ann")), "counted");
    assert_eq!(count(&kiosk, "ar.session", Some("att-bo")), "no_consent");
    assert_eq!(
        count(&kiosk, "ar.session", Some("att-cy")),
        "no_consent",
        "no profile, no consent"
    );

    // Ann and Cy check in at the kiosk door; both buy a few seconds later (Cy only a seat, Ann merch too).
    check_in(&edge, &kiosk, "att-ann");
    check_in(&edge, &kiosk, "att-cy");
    check_in(&edge, &kiosk, "att-dee");
    std::thread::sleep(Duration::from_millis(1_100));
    for (who, id) in [("att-ann", "bk-ann"), ("att-cy", "bk-cy")] {
        let booked = kiosk.post(
            "/v1/shows/fri/slots/s1900/bookings",
            json!({ "seats": 2, "booking_id": id, "attendee": who }),
        );
        assert_eq!(booked.status, 201, "{}", booked.body);
    }
    let paid = pos.post(
        "/v1/payments",
        json!({ "amount_minor": 1500, "currency": "EUR", "idempotency_key": "merch-ann", "attendee": "att-ann" }),
    );
    assert_eq!(paid.status, 201, "{}", paid.body);
    let bad = pos.post(
        "/v1/payments",
        json!({ "amount_minor": 100, "currency": "EUR", "idempotency_key": "x", "attendee": EMAIL }),
    );
    assert_eq!(
        bad.status, 400,
        "an e-mail is refused as a buyer id: {}",
        bad.body
    );

    // A burst: 600 taps and 40 purchases signals as fast as the kiosk app can send them.
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..640 {
        let counter = if i % 16 == 0 {
            "purchase.merch"
        } else {
            "screen.tap"
        };
        *outcomes
            .entry(format!("{counter} {}", count(&kiosk, counter, None)))
            .or_default() += 1;
    }
    assert_eq!(
        outcomes.get("purchase.merch counted"),
        Some(&40),
        "conversion signals are never sampled: {outcomes:?}"
    );
    assert!(
        outcomes.get("screen.tap sampled_out").copied().unwrap_or(0) > 0,
        "the overload was sampled: {outcomes:?}"
    );
    assert!(kiosk.metric("popmesh_telemetry_sampled_out") > 0.0);
    kiosk.wait_for("the burst flushed", SYNC, |n| {
        let c = &n.get("/v1/telemetry")["counters"];
        c["purchase.merch"] == 40
    });
    let taps = kiosk.get("/v1/telemetry")["counters"]["screen.tap"]
        .as_i64()
        .expect("taps");
    assert!(
        (480..=720).contains(&taps),
        "sampled taps still estimate the 600 sent: {taps}"
    );

    // The origin joins late over the WAN and merges the show.
    let origin = Node::start(&origin, &[&site.edge]);
    origin.wait_for("the show merged", SYNC, |n| {
        n.get("/v1/receipts")["receipts"]
            .as_array()
            .is_some_and(|r| r.len() == 1)
            && n.get("/v1/telemetry")["counters"]["purchase.merch"] == 40
            && n.get("/v1/shows/fri/slots/s1900")["sold"] == 4
    });

    // The show report, from the origin.
    let out = site.root().join("report");
    let (ok, stdout, stderr) = popmesh(&[
        "report",
        "--data",
        origin.device.data_str(),
        "--api",
        &origin.device.api.to_string(),
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert!(ok, "popmesh report failed: {stderr}");
    assert!(stdout.contains("4 of 30 seats"), "{stdout}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("json"))
            .expect("report.json parses");
    assert_eq!(report["totals"]["seats"], 4);
    assert_eq!(report["totals"]["payments"], 1);
    assert_eq!(report["conversion"]["checked_in"], 3);
    assert_eq!(
        report["conversion"]["converted"], 2,
        "Ann and Cy bought after check-in"
    );
    let median = report["conversion"]["median_ms"].as_u64().expect("median");
    assert!(median >= 1_000, "bought a second after check-in: {median}");
    assert!(report["engagement"]["interactions"].as_i64().expect("n") >= 480);
    let html = std::fs::read_to_string(out.join("report.html")).expect("html");
    assert!(html.contains("<svg") && html.contains("Conversion velocity"));
    for csv in ["timeline.csv", "devices.csv", "outages.csv"] {
        let text = std::fs::read_to_string(out.join(csv)).expect(csv);
        assert!(text.lines().count() >= 1, "{csv}");
    }
    assert!(
        std::fs::read_to_string(out.join("devices.csv"))
            .expect("csv")
            .contains("kiosk-1")
    );

    // Privacy: every document that syncs, as the origin and the edge hold it, carries no personal data. Every
    // kind of document is present, so a new kind with a personal field would be caught here.
    for node in [&origin, &edge] {
        let docs = node.get("/v1/documents")["documents"]
            .as_array()
            .cloned()
            .expect("documents");
        let mut kinds = BTreeSet::new();
        for doc in &docs {
            let id = doc["id"].as_str().expect("id");
            let content = node.get(&format!("/v1/documents/{id}"));
            kinds.insert(content["kind"].as_str().expect("kind").to_owned());
            let text = content["content"].to_string();
            for personal in [EMAIL, NAME, "Ann", "example.org", "first_name", "email"] {
                assert!(
                    !text.contains(personal),
                    "{personal:?} reached {} on {}: {text}",
                    content["name"],
                    node.device.name
                );
            }
        }
        let all: BTreeSet<String> = [
            "directory",
            "slot",
            "ledger",
            "telemetry",
            "manifest",
            "access",
        ]
        .map(str::to_owned)
        .into();
        assert_eq!(
            kinds, all,
            "every kind of synced document was checked on {}",
            node.device.name
        );
    }
}
