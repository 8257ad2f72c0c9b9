//! Offline passes at the door: the edge box issues them, every device checks them without a network, a revocation
//! reaches every door with the next sync, and the origin's confirmation retires the passes it has accounted for.

mod common;

use std::time::Duration;

use common::site::{Node, Site, show};
use serde_json::{Value, json};

const SYNC: Duration = Duration::from_secs(60);

fn issue(edge: &Node, kind: &str, subject: &str, valid_secs: u64) -> Value {
    let answer = edge.post(
        "/v1/passes",
        json!({ "kind": kind, "subject": subject, "valid_secs": valid_secs }),
    );
    assert_eq!(answer.status, 201, "{}", answer.body);
    answer.json()
}

/// The heads of the show's access list on a device.
fn access_heads(node: &Node) -> Value {
    node.get("/v1/documents")["documents"]
        .as_array()
        .and_then(|d| d.iter().find(|x| x["name"] == "show/fri/access"))
        .map(|x| x["heads"].clone())
        .unwrap_or(Value::Null)
}

/// Presents a pass at a device's door: the status and, when refused, the reason.
fn present(door: &Node, pass: &Value) -> (u16, String) {
    let answer = door.post("/v1/check-ins", json!({ "pass": pass["pass"] }));
    let reason = answer.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (answer.status, reason)
}

#[test]
fn passes_are_checked_offline_revoked_everywhere_and_retired_once_the_origin_confirms() {
    let site = Site::create("access");
    let kiosk = site.join("kiosk", "kiosk-1");
    let pos = site.join("pos", "pos-1");
    let origin = site.join("origin", "origin-1");
    let edge = Node::start(&site.edge, &[]);
    let kiosk = Node::start(&kiosk, &[&site.edge]);
    let pos = Node::start(&pos, &[&site.edge, &kiosk.device]);
    assert_eq!(edge.post("/v1/shows", show("fri", 20, &[])).status, 201);
    for door in [&kiosk, &pos] {
        door.wait_for("the show's access list", SYNC, |n| {
            n.get("/v1/documents")["documents"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x["name"] == "show/fri/access"))
        });
    }

    // The edge box prints an attendee's wristband and a steward's badge.
    let guest = issue(&edge, "attendee", "att-5c1e", 3600);
    let steward = issue(&edge, "staff", "staff-017", 3600);

    // The guest enters at the kiosk. Once the kiosk's check-in has synced to the POS, the same wristband at the
    // POS door is refused, naming where it was used.
    assert_eq!(present(&kiosk, &guest), (201, String::new()));
    pos.wait_for("the kiosk's check-in synced", SYNC, |n| {
        access_heads(n) == access_heads(&kiosk)
    });
    let (status, reason) = present(&pos, &guest);
    assert_eq!(status, 403, "{reason}");
    assert!(
        reason.contains("already used") && reason.contains(&kiosk.device.device_id()),
        "{reason}"
    );
    // Staff come and go.
    assert_eq!(present(&kiosk, &steward).0, 201);
    assert_eq!(present(&pos, &steward).0, 201);

    // A wristband reported lost is revoked on the edge box; every door refuses it after the next sync.
    let lost = issue(&edge, "attendee", "att-77aa", 3600);
    let revoked = edge.post(
        "/v1/passes/revocations",
        json!({ "pass": lost["id"], "reason": "reported lost" }),
    );
    assert_eq!(revoked.status, 201, "{}", revoked.body);
    for door in [&kiosk, &pos] {
        door.wait_for("the revocation synced", SYNC, |n| {
            access_heads(n) == access_heads(&edge)
        });
        let (status, reason) = present(door, &lost);
        assert!(
            status == 403 && reason.contains("reported lost"),
            "{status} {reason}"
        );
    }

    // Forged, expired and malformed passes are refused with the reason.
    let mut forged = issue(&edge, "attendee", "att-0001", 3600);
    let text = forged["pass"].as_str().expect("pass").to_owned();
    let mut chars: Vec<char> = text.chars().collect();
    let i = chars.len() - 10;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    forged["pass"] = json!(chars.into_iter().collect::<String>());
    let (status, reason) = present(&kiosk, &forged);
    assert_eq!(status, 403, "{reason}");
    assert!(reason.contains("signature"), "{reason}");
    let brief = issue(&edge, "staff", "staff-temp", 1);
    std::thread::sleep(Duration::from_millis(1500));
    let (status, reason) = present(&pos, &brief);
    assert!(
        status == 403 && reason.contains("expired"),
        "{status} {reason}"
    );
    let (status, reason) = present(&kiosk, &json!({ "pass": "popmesh-pass1.!!" }));
    assert!(
        status == 400 && reason.contains("not base64"),
        "{status} {reason}"
    );
    // Only edge boxes and the origin issue or revoke.
    let refused = kiosk.post(
        "/v1/passes",
        json!({ "kind": "staff", "subject": "me", "valid_secs": 60 }),
    );
    assert_eq!(refused.status, 403);

    // The origin joins and confirms the check-ins it merged: the steward's badge is retired everywhere.
    let _origin = Node::start(&origin, &[&site.edge]);
    for door in [&kiosk, &pos] {
        door.wait_for("the steward's badge retired", SYNC, |n| {
            let (status, reason) = present(n, &steward);
            status == 403 && reason.contains("retired")
        });
    }
}
