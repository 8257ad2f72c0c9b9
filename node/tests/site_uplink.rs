//! A thin uplink: the edge box may send the origin 2 KiB a second. When the origin joins late, money goes first:
//! every receipt is at the origin before the bookings are complete, the bookings before the telemetry, and the
//! telemetry before the large media manifest.

mod common;

use std::time::{Duration, Instant};

use common::site::{Node, Site, payment, show};
use serde_json::json;

const SYNC: Duration = Duration::from_secs(90);

fn limit_uplink(data: &std::path::Path, kib_s: u64) {
    let path = data.join("popmesh.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    let text = text.replace("limit_kib_s = 0", &format!("limit_kib_s = {kib_s}"));
    std::fs::write(&path, text).expect("config written");
}

#[test]
fn on_a_thin_uplink_receipts_reach_the_origin_first_then_bookings_then_telemetry_then_media() {
    let site = Site::create("uplink");
    let origin = site.join("origin", "origin-1");
    limit_uplink(&site.edge.data, 2);
    let edge = Node::start(&site.edge, &[]);
    assert_eq!(edge.post("/v1/shows", show("fri", 100, &[])).status, 201);

    // The evening, while the origin is away: 20 payments, 20 bookings, 200 counters, a 300-item media manifest.
    for i in 0..20 {
        let paid = edge.post("/v1/payments", payment(&format!("sale-{i}"), 1_000 + i));
        assert_eq!(paid.status, 201, "{}", paid.body);
        let booked = edge.post(
            "/v1/shows/fri/slots/s1900/bookings",
            json!({ "seats": 1, "booking_id": format!("bk-{i}") }),
        );
        assert_eq!(booked.status, 201, "{}", booked.body);
    }
    for i in 0..200 {
        let counted = edge.post(
            "/v1/telemetry",
            json!({ "counter": format!("kiosk.screen_{i:03}.dwell_seconds") }),
        );
        assert_eq!(counted.status, 202, "{}", counted.body);
    }
    let mut entries = Vec::new();
    for i in 0..300 {
        let blob = edge
            .client()
            .post_raw("/v1/blobs", format!("product image {i}").as_bytes())
            .expect("blob");
        assert_eq!(blob.status, 201, "{}", blob.body);
        let v = blob.json();
        entries.push(json!({
            "name": format!("catalogue-product-{i:04}-front-view-large.jpg"),
            "hash": v["hash"], "size": v["size"], "mime": "image/jpeg", "ttl_ms": 86_400_000u64
        }));
    }
    let published = edge.post("/v1/manifests/fri", json!({ "entries": entries }));
    assert_eq!(published.status, 201, "{}", published.body);
    edge.wait_for(
        "the counters written to the telemetry document",
        SYNC,
        |n| {
            n.get("/v1/documents")["documents"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["kind"] == "telemetry"))
        },
    );

    // The origin joins over the thin link and we watch what arrives when.
    let origin = Node::start(&origin, &[&site.edge]);
    let start = Instant::now();
    let (mut receipts, mut bookings, mut telemetry, mut media) = (None, None, None, None);
    let mut backlog_seen = 0.0_f64;
    while media.is_none() || telemetry.is_none() || bookings.is_none() || receipts.is_none() {
        assert!(
            start.elapsed() < SYNC,
            "the origin did not merge the show: receipts {receipts:?} bookings {bookings:?} telemetry {telemetry:?} media {media:?}\n{}",
            origin.log_tail()
        );
        let now = start.elapsed();
        backlog_seen = backlog_seen.max(edge.metric("popmesh_uplink_backlog_bytes"));
        if receipts.is_none()
            && origin.get("/v1/receipts")["receipts"]
                .as_array()
                .is_some_and(|r| r.len() == 20 && r.iter().all(|r| r["verified"] == true))
        {
            receipts = Some(now);
        }
        if bookings.is_none() && origin.get("/v1/shows/fri/slots/s1900")["sold"] == 20 {
            bookings = Some(now);
        }
        if telemetry.is_none()
            && origin.get("/v1/telemetry")["counters"]
                .as_object()
                .is_some_and(|c| c.len() >= 200)
        {
            telemetry = Some(now);
        }
        if media.is_none()
            && origin.get("/v1/manifests")["manifests"]
                .as_array()
                .and_then(|l| l.iter().find(|m| m["name"] == "fri").cloned())
                .is_some_and(|m| m["entries"].as_array().is_some_and(|e| e.len() == 300))
        {
            media = Some(now);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (r, b, t, m) = (
        receipts.expect("r"),
        bookings.expect("b"),
        telemetry.expect("t"),
        media.expect("m"),
    );
    eprintln!(
        "origin complete: receipts {r:?}, bookings {b:?}, telemetry {t:?}, media manifest {m:?}"
    );
    assert!(r <= b, "receipts ({r:?}) before bookings ({b:?})");
    assert!(b <= t, "bookings ({b:?}) before telemetry ({t:?})");
    assert!(
        t <= m,
        "telemetry ({t:?}) before the media manifest ({m:?})"
    );
    assert!(
        m >= r + Duration::from_secs(2),
        "the cap made the link thin: the manifest took longer ({m:?} vs receipts {r:?})"
    );
    assert!(backlog_seen > 0.0, "the edge reported its uplink backlog");
}
