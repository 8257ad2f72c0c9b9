//! Clients with tokens (issue 15, part 2): the edge box requires a client token even on loopback; a POS app on a
//! tablet and a kiosk screen each get one from `popmesh token issue`, and the API gives each what its role may do.
//!
//! - a request without a token, with a tampered one, one from another site, an expired one, a revoked one, or a
//!   local secret that is not this run's is a 401 with a JSON body saying why;
//! - a screen token reads slots and books, and a payment with it is a 403 that writes nothing;
//! - a POS token takes a payment; a read-only token reads and changes nothing;
//! - the CLI keeps working through the run's local secret; a kiosk may not issue tokens;
//! - every refusal is counted in /metrics.

mod common;

use std::time::Duration;

use common::site::{Node, Site, payment, popmesh, show};
use popmesh_node::client::{Answer, Client};
use serde_json::json;

fn set_config(data: &std::path::Path, from: &str, to: &str) {
    let path = data.join("popmesh.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    assert!(text.contains(from), "{from} in {}", path.display());
    std::fs::write(&path, text.replace(from, to)).expect("config written");
}

fn issue(data: &str, role: &str, valid: &str, label: &str) -> (String, String) {
    let (ok, out, err) = popmesh(&[
        "token", "issue", "--data", data, "--role", role, "--valid", valid, "--label", label,
        "--json",
    ]);
    assert!(ok, "token issue failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    (
        v["token"].as_str().expect("token").to_owned(),
        v["id"].as_str().expect("id").to_owned(),
    )
}

fn as_client(node: &Node, token: Option<&str>) -> Client {
    let mut c = Client::new(node.device.api);
    c.timeout = Duration::from_secs(20);
    c.token = token.map(str::to_owned);
    c
}

/// Opens a WebSocket on `/v1/sync` as a browser does (it cannot set headers, so the token rides as a second
/// subprotocol) and returns the status line and headers of the answer.
fn upgrade(node: &Node, protocols: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(node.device.api).expect("API reachable");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let head = format!(
        "GET /v1/sync HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: {protocols}\r\n\r\n",
        node.device.api
    );
    stream.write_all(head.as_bytes()).expect("sent");
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
        got.push(byte[0]);
    }
    String::from_utf8_lossy(&got).to_ascii_lowercase()
}

fn code(answer: &Answer) -> String {
    answer.json()["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no JSON error: {} {}", answer.status, answer.body))
        .to_owned()
}

fn refused_401(answer: &Answer, says: &str) {
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(code(answer), "unauthorized");
    let message = answer.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains(says), "{message:?} should say {says:?}");
}

#[test]
fn a_tablet_pos_and_a_kiosk_screen_get_what_their_tokens_allow_and_strangers_get_nothing() {
    let site = Site::create("clients");
    set_config(
        &site.edge.data,
        "loopback_without_token = true",
        "loopback_without_token = false",
    );
    let kiosk = site.join("kiosk", "kiosk-1");
    let edge = Node::start(&site.edge, &[]);
    let created = edge.post("/v1/shows", show("fri", 20, &[("edge-1", 20)]));
    assert_eq!(created.status, 201, "{}", created.body);
    let data = site.edge.data_str();

    // Nobody without a token, not even on loopback, as the config says.
    let stranger = as_client(&edge, None);
    let status = stranger.get("/v1/status").expect("answers");
    refused_401(&status, "popmesh token issue");
    let paid = stranger
        .post("/v1/payments", &payment("s-1", 500))
        .expect("answers");
    refused_401(&paid, "client token");

    // The tablet's POS app takes a payment with its token.
    let (pos_token, pos_id) = issue(data, "pos", "1h", "tablet-3");
    let tablet = as_client(&edge, Some(&pos_token));
    let paid = tablet
        .post("/v1/payments", &payment("t-1", 1_250))
        .expect("answers");
    assert_eq!(paid.status, 201, "{}", paid.body);
    assert_eq!(tablet.get("/v1/receipts").expect("answers").status, 200);

    // The kiosk screen reads the slot and books, and cannot take money or read receipts.
    let (screen_token, _) = issue(data, "screen", "8h", "lobby screen");
    let screen = as_client(&edge, Some(&screen_token));
    let slot = screen.get("/v1/shows/fri/slots/s1900").expect("answers");
    assert_eq!(slot.status, 200, "{}", slot.body);
    let booked = screen
        .post("/v1/shows/fri/slots/s1900/bookings", &json!({ "seats": 2 }))
        .expect("answers");
    assert_eq!(booked.status, 201, "{}", booked.body);
    let paid = screen
        .post("/v1/payments", &payment("k-1", 900))
        .expect("answers");
    assert_eq!(paid.status, 403, "{}", paid.body);
    assert_eq!(code(&paid), "role_forbidden");
    assert!(
        paid.body.contains("pos"),
        "says which roles may: {}",
        paid.body
    );
    assert_eq!(screen.get("/v1/receipts").expect("answers").status, 403);
    assert_eq!(
        edge.receipt_tokens().len(),
        1,
        "the screen's payment wrote nothing"
    );

    // The screen's browser opens the live sync with its token as a subprotocol; the chosen one is popmesh.v1, so
    // the token is never echoed. Without a token the upgrade is refused.
    let opened = upgrade(&edge, &format!("popmesh.v1, popmesh.token.{screen_token}"));
    assert!(opened.starts_with("http/1.1 101"), "{opened}");
    assert!(
        opened.contains("sec-websocket-protocol: popmesh.v1\r\n"),
        "{opened}"
    );
    let refused = upgrade(&edge, "popmesh.v1");
    assert!(refused.starts_with("http/1.1 401"), "{refused}");

    // Read-only reads the site and changes nothing.
    let (reader_token, _) = issue(data, "read_only", "1h", "laptop");
    let reader = as_client(&edge, Some(&reader_token));
    assert_eq!(reader.get("/v1/receipts").expect("answers").status, 200);
    let counted = reader
        .post("/v1/telemetry", &json!({ "counter": "visits", "by": 1 }))
        .expect("answers");
    assert_eq!(counted.status, 403, "{}", counted.body);

    // Tampered, foreign, expired and forged-local tokens.
    let mut tampered = pos_token.clone();
    let last = tampered.pop().expect("non-empty");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    refused_401(
        &as_client(&edge, Some(&tampered))
            .get("/v1/status")
            .expect("answers"),
        "token",
    );
    let other = Site::create("clients-other");
    let (foreign, _) = issue(other.edge.data_str(), "operator", "1h", "");
    refused_401(
        &as_client(&edge, Some(&foreign))
            .get("/v1/status")
            .expect("answers"),
        "another site",
    );
    let (short, _) = issue(data, "pos", "1s", "");
    std::thread::sleep(Duration::from_millis(1_500));
    refused_401(
        &as_client(&edge, Some(&short))
            .get("/v1/status")
            .expect("answers"),
        "expired",
    );
    refused_401(
        &as_client(&edge, Some("local.00ff"))
            .get("/v1/status")
            .expect("answers"),
        "not this run's",
    );
    refused_401(
        &as_client(&edge, Some("popmesh-client1.bm90IGEgdG9rZW4"))
            .get("/v1/status")
            .expect("answers"),
        "not a client token",
    );

    // The operator revokes the tablet's token; the CLI reaches the node with the run's local secret.
    let (ok, out, err) = popmesh(&["token", "revoke", "--data", data, &pos_id]);
    assert!(ok, "token revoke failed: {out}{err}");
    edge.wait_for("the revocation to apply", Duration::from_secs(10), |_| {
        tablet.get("/v1/status").is_ok_and(|a| a.status == 401)
    });
    refused_401(&tablet.get("/v1/status").expect("answers"), "revoked");
    let (ok, out, err) = popmesh(&["status", "--data", data]);
    assert!(ok, "popmesh status with the local secret: {out}{err}");

    // Only the edge box and the origin issue tokens.
    let (ok, _, err) = popmesh(&[
        "token",
        "issue",
        "--data",
        kiosk.data_str(),
        "--role",
        "operator",
    ]);
    assert!(!ok && err.contains("edge box or the origin"), "{err}");
    let (ok, _, err) = popmesh(&["token", "issue", "--data", data, "--role", "root"]);
    assert!(!ok && err.contains("not a role"), "{err}");
    let (ok, _, err) = popmesh(&[
        "token", "issue", "--data", data, "--role", "pos", "--valid", "30d",
    ]);
    assert!(!ok && err.contains("valid for"), "{err}");

    assert!(edge.metric("popmesh_api_unauthorized") >= 8.0);
    assert!(edge.metric("popmesh_api_role_refused") >= 3.0);
}
