//! Kiosk screens are web pages: one running `@automerge/automerge-repo` 2.5 with its WebSocket client adapter (on
//! Node, as in CI) holds the media manifest and a slot's availability live from a running node, cannot change
//! them, cannot see a POS ledger, and cannot pose as a site device.
//!
//! Needs Node.js and `npm install` in `node/tests/screens` (`.ci/run` does both); says SKIPPED otherwise.

mod common;

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::site::{Node, Site, payment, show};
use serde_json::{Value, json};

fn screens_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/screens")
}

fn doc_id(node: &Node, name: &str) -> String {
    node.get("/v1/documents")["documents"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == name))
        .and_then(|d| d["id"].as_str())
        .unwrap_or_else(|| panic!("no document {name}"))
        .to_owned()
}

#[test]
fn a_kiosk_screen_follows_the_manifest_and_seats_live_and_can_neither_write_nor_see_money() {
    let modules = screens_dir().join("node_modules/@automerge/automerge-repo");
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok || !modules.exists() {
        common::site::skipped(&format!(
            "needs Node.js and `npm install` in {} (.ci/run does both)",
            screens_dir().display()
        ));
        return;
    }
    let site = Site::create("screens");
    let edge = Node::start(&site.edge, &[]);
    assert_eq!(edge.post("/v1/shows", show("fri", 12, &[])).status, 201);
    edge.publish_images("fri", &["poster.jpg", "trailer.jpg"]);
    assert_eq!(
        edge.post("/v1/payments", payment("door-1", 1200)).status,
        201
    );
    let manifest = doc_id(&edge, "show/fri/manifest");
    let slot = doc_id(&edge, "show/fri/slot/s1900");
    let ledger = doc_id(&edge, &format!("show/fri/ledger/{}", site.edge.device_id()));

    let mut screen = Command::new("node")
        .current_dir(screens_dir())
        .args([
            "kiosk.mjs",
            &format!("ws://{}/v1/sync", site.edge.api),
            &manifest,
            &slot,
            &ledger,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node starts");
    let (tx, rx) = mpsc::channel::<Value>();
    let out = screen.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let next = |event: &str| -> Value {
        let v = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the screen never said {event}\n{}", edge.log_tail()));
        assert_eq!(v["event"], event, "{v}");
        v
    };

    // The screen holds what it shows.
    assert_eq!(
        next("manifest")["entries"],
        json!(["poster.jpg", "trailer.jpg"])
    );
    let seats = next("slot");
    assert_eq!(
        (seats["capacity"].as_u64(), seats["sold"].as_u64()),
        (Some(12), Some(0))
    );
    next("ready");

    // Live: a new poster is published and a seat is sold through the HTTP API; the screen follows both.
    edge.publish_images("fri", &["poster.jpg", "trailer.jpg", "late-poster.jpg"]);
    let booked = edge.post("/v1/shows/fri/slots/s1900/bookings", json!({ "seats": 2 }));
    assert_eq!(booked.status, 201, "{}", booked.body);
    assert!(
        next("manifest-updated")["entries"]
            .as_array()
            .is_some_and(|e| e.contains(&json!("late-poster.jpg")))
    );
    assert_eq!(next("slot-updated")["sold"], 2);

    // Its writes are ignored by the node.
    next("wrote");
    let m = edge.get(&format!("/v1/documents/{manifest}"));
    assert_eq!(m["content"]["fallback"], "poster.jpg", "{m}");
    let s = edge.get(&format!("/v1/documents/{slot}"));
    assert_eq!(s["content"]["capacity"], 12, "{s}");

    // Money stays out of reach, and posing as a device gets nothing.
    let forbidden = next("forbidden");
    assert_eq!(
        forbidden["available"], false,
        "a screen saw a ledger: {forbidden}"
    );
    eprintln!("forbidden ledger: {forbidden}");
    let imposter = next("imposter");
    eprintln!("imposter: {imposter}");
    assert_eq!(imposter["available"], false, "{imposter}");
    assert!(screen.wait().expect("node exits").success());
}
