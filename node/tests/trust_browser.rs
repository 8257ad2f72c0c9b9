//! A kiosk's browser opens a page from another site. The page tries what a web page can: rebind its own domain to
//! 127.0.0.1 to read the receipts as if it were the API's origin, open `/v1/sync`, and send the `text/plain` POSTs a
//! browser sends cross-site without asking. Every try is refused and changes nothing; the node's own pages, the CLI
//! and POS apps (which send no Origin) work as before; CORS is off unless the operator names an origin.

mod common;

use std::time::Duration;

use common::hostile::{Answer, exchange};
use common::site::{Node, Site, show};

fn send(node: &Node, head: &str, body: &str) -> Answer {
    let text = format!(
        "{head}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange(node.device.api, text.as_bytes(), Duration::from_secs(20)).expect("an answer")
}

fn heads(node: &Node) -> serde_json::Value {
    node.get("/v1/documents")
}

#[test]
fn a_page_on_another_site_reads_nothing_opens_no_sync_and_changes_nothing() {
    let site = Site::create("browser");
    let edge = Node::start(&site.edge, &[]);
    assert_eq!(edge.post("/v1/shows", show("fri", 10, &[])).status, 201);
    let api = edge.device.api;
    let port = api.port();

    // DNS rebinding: evil.example now resolves to 127.0.0.1, so the page's fetch carries its own Host.
    let rebound = send(
        &edge,
        &format!("GET /v1/receipts HTTP/1.1\r\nHost: evil.example:{port}"),
        "",
    );
    assert_eq!(rebound.status, 421, "{}", rebound.describe());
    assert!(rebound.is_json_error());
    let ours = send(
        &edge,
        &format!("GET /v1/receipts HTTP/1.1\r\nHost: localhost:{port}"),
        "",
    );
    assert_eq!(ours.status, 200, "{}", ours.describe());

    let before = heads(&edge);
    // A WebSocket to /v1/sync from the page.
    let ws = send(
        &edge,
        &format!(
            "GET /v1/sync HTTP/1.1\r\nHost: {api}\r\nOrigin: http://evil.example\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
        ),
        "",
    );
    assert_eq!(ws.status, 403, "{}", ws.describe());
    // A payment with the page's Origin, even as JSON.
    let payment = r#"{"amount_minor":100,"currency":"EUR","idempotency_key":"evil-1"}"#;
    let pay = send(
        &edge,
        &format!(
            "POST /v1/payments HTTP/1.1\r\nHost: {api}\r\nOrigin: http://evil.example\r\nContent-Type: application/json"
        ),
        payment,
    );
    assert_eq!(pay.status, 403, "{}", pay.describe());
    let null = send(
        &edge,
        &format!(
            "POST /v1/payments HTTP/1.1\r\nHost: {api}\r\nOrigin: null\r\nContent-Type: application/json"
        ),
        payment,
    );
    assert_eq!(null.status, 403, "{}", null.describe());
    // The simple requests a page sends cross-site without a preflight (and, in old browsers, without an Origin).
    for (path, body) in [
        ("/v1/blobs", "a blob from nowhere"),
        ("/v1/rehearsals", "{}"),
        ("/v1/payments", payment),
        ("/v1/telemetry", r#"{"counter":"visits"}"#),
    ] {
        for content_type in [
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let a = send(
                &edge,
                &format!("POST {path} HTTP/1.1\r\nHost: {api}\r\nContent-Type: {content_type}"),
                body,
            );
            assert_eq!(a.status, 415, "{path} as {content_type}: {}", a.describe());
            assert!(a.is_json_error());
        }
    }
    // No CORS for anyone the operator did not name.
    let preflight = send(
        &edge,
        &format!(
            "OPTIONS /v1/payments HTTP/1.1\r\nHost: {api}\r\nOrigin: http://evil.example\r\n\
             Access-Control-Request-Method: POST"
        ),
        "",
    );
    assert_eq!(preflight.status, 403, "{}", preflight.describe());
    assert!(preflight.header("access-control-allow-origin").is_none());
    assert_eq!(
        heads(&edge),
        before,
        "nothing the page sent changed a document"
    );

    // The node's own pages (same origin) and apps that send no Origin still work.
    let same = send(
        &edge,
        &format!(
            "POST /v1/payments HTTP/1.1\r\nHost: {api}\r\nOrigin: http://{api}\r\nContent-Type: application/json"
        ),
        payment,
    );
    assert_eq!(same.status, 201, "{}", same.describe());
    let app = edge.post(
        "/v1/payments",
        serde_json::json!({"amount_minor": 100, "currency": "EUR", "idempotency_key": "app-1"}),
    );
    assert_eq!(app.status, 201, "{}", app.body);
}

#[test]
fn an_origin_the_operator_names_gets_cors_and_a_host_name_they_name_is_answered() {
    let site = Site::create("cors");
    let config = site.edge.data.join("popmesh.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text
        .replace(
            "allowed_hosts = []",
            r#"allowed_hosts = ["pos-1.harbour.example"]"#,
        )
        .replace(
            "allowed_origins = []",
            r#"allowed_origins = ["https://kiosk.harbour.example"]"#,
        );
    std::fs::write(&config, text).expect("config");
    let edge = Node::start(&site.edge, &[]);
    let api = edge.device.api;
    let preflight = send(
        &edge,
        &format!(
            "OPTIONS /v1/shows HTTP/1.1\r\nHost: {api}\r\nOrigin: https://kiosk.harbour.example\r\n\
             Access-Control-Request-Method: GET"
        ),
        "",
    );
    assert_eq!(preflight.status, 204, "{}", preflight.describe());
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://kiosk.harbour.example")
    );
    let read = send(
        &edge,
        &format!("GET /v1/shows HTTP/1.1\r\nHost: {api}\r\nOrigin: https://kiosk.harbour.example"),
        "",
    );
    assert_eq!(read.status, 200);
    assert_eq!(
        read.header("access-control-allow-origin"),
        Some("https://kiosk.harbour.example")
    );
    let named = send(
        &edge,
        &format!(
            "GET /v1/status HTTP/1.1\r\nHost: pos-1.harbour.example:{}",
            api.port()
        ),
        "",
    );
    assert_eq!(named.status, 200, "{}", named.describe());
}

#[test]
fn a_node_binds_only_what_it_was_asked_and_the_cli_finds_it_where_it_runs() {
    let site = Site::create("bind");
    // The harness starts the node with `--api` on a free port and the mesh on 127.0.0.1; the config says 7700.
    let edge = Node::start(&site.edge, &[]);
    let port = edge.status()["media_port"].as_u64().expect("a blob port") as u16;
    // The blob endpoint is on the mesh's address, 127.0.0.1, not every interface: another loopback address can
    // still take the same UDP port.
    let other = std::net::UdpSocket::bind(("127.0.0.2", port));
    assert!(
        other.is_ok(),
        "UDP {port} is bound beyond 127.0.0.1: {other:?}"
    );
    // `popmesh status --data DIR` asks the node where it runs, not where the config says.
    let (ok, out, err) = common::site::popmesh(&["status", "--data", site.edge.data_str()]);
    assert!(ok, "status: {out}{err}");
    assert!(out.contains("edge-1"), "{out}");
    let run = std::fs::read_to_string(site.edge.data.join("run.json")).expect("run.json");
    assert!(run.contains(&edge.device.api.to_string()), "{run}");
}
