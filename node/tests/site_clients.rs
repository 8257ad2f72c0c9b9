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

use common::site::{Node, Site, payment, popmesh, set_config, show};
use popmesh_node::client::{Answer, Client};
use serde_json::json;

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
    // Attendee profiles are personal data kept on the device: not for a screen.
    assert_eq!(
        screen.get("/v1/attendees/att-1").expect("answers").status,
        403
    );
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

    // The operator revokes the tablet's token; the CLI reaches the node with the run's local secret. The event
    // stream the tablet holds open ends too.
    let mut stream = std::net::TcpStream::connect(edge.device.api).expect("API reachable");
    {
        use std::io::Write as _;
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        let head = format!(
            "GET /v1/events HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer {pos_token}\r\n\r\n",
            edge.device.api
        );
        stream.write_all(head.as_bytes()).expect("sent");
    }
    let (ok, out, err) = popmesh(&["token", "revoke", "--data", data, &pos_id]);
    assert!(ok, "token revoke failed: {out}{err}");
    edge.wait_for("the revocation to apply", Duration::from_secs(10), |_| {
        tablet.get("/v1/status").is_ok_and(|a| a.status == 401)
    });
    refused_401(&tablet.get("/v1/status").expect("answers"), "revoked");
    let ended = {
        use std::io::Read as _;
        let mut sink = Vec::new();
        stream.read_to_end(&mut sink)
    };
    assert!(
        ended.is_ok(),
        "the revoked token's event stream ended instead of staying open: {ended:?}"
    );
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

/// A tablet's TLS client that trusts exactly the certificate whose SHA-256 the pairing code carries.
#[derive(Debug)]
struct Pinned {
    sha256: String,
    provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use sha2::Digest as _;
        let got: String = sha2::Sha256::digest(end_entity)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if got == self.sha256 {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate {got} is not the paired one"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// Opens a TLS session to `addr` pinned to `sha256`, and sends one request on it.
fn tls_request(
    addr: std::net::SocketAddr,
    sha256: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&serde_json::Value>,
) -> std::io::Result<Tls> {
    use std::io::Write as _;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(Pinned {
            sha256: sha256.to_owned(),
            provider,
        }))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(std::io::Error::other)?;
    let tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(head.as_bytes())?;
    Ok(tls)
}

/// The status of a whole answer read from a TLS session.
fn tls_status(mut tls: Tls) -> (u16, String) {
    use std::io::Read as _;
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[test]
fn a_tablet_pairs_over_tls_pins_the_certificate_follows_a_slot_live_and_pays_only_with_a_pos_token()
{
    let site = Site::create("clients-tls");
    let tls_port = common::site::free_port();
    set_config(
        &site.edge.data,
        "# tls_listen = \"0.0.0.0:7743\"",
        &format!("tls_listen = \"127.0.0.1:{tls_port}\""),
    );
    let edge = Node::start(&site.edge, &[]);
    let created = edge.post("/v1/shows", show("fri", 20, &[("edge-1", 20)]));
    assert_eq!(created.status, 201, "{}", created.body);
    let data = site.edge.data_str();

    // The operator shows the tablet one pairing code: the TLS address, the certificate to pin, and a token.
    let (ok, out, err) = popmesh(&["pair", "--data", data, "--role", "screen", "--json"]);
    assert!(ok, "pair failed: {err}");
    let paired: serde_json::Value = serde_json::from_str(&out).expect("json");
    let code = paired["code"].as_str().expect("code");
    use base64::Engine as _;
    let inside = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(code.strip_prefix("popmesh-pair1.").expect("prefix"))
        .expect("base64");
    let inside: serde_json::Value = serde_json::from_slice(&inside).expect("json inside");
    assert_eq!(inside["api"], format!("https://127.0.0.1:{tls_port}"));
    let sha256 = inside["sha256"].as_str().expect("sha256").to_owned();
    let screen = inside["token"].as_str().expect("token").to_owned();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{tls_port}").parse().expect("addr");

    // A client that pins another certificate never gets a session.
    let wrong =
        tls_request(addr, &"0".repeat(64), "GET", "/v1/status", &screen, None).and_then(|mut t| {
            use std::io::Read as _;
            let mut buf = [0u8; 1];
            t.read(&mut buf)
        });
    assert!(
        wrong.is_err(),
        "a wrongly pinned client must not get through"
    );

    // Over TLS nothing is loopback's: no token, no answer.
    let (status, text) =
        tls_status(tls_request(addr, &sha256, "GET", "/v1/status", "", None).expect("session"));
    assert_eq!(status, 401, "{text}");

    // The screen follows the slot live: an event for it arrives once a seat is booked.
    let events =
        tls_request(addr, &sha256, "GET", "/v1/events", &screen, None).expect("events session");
    // Its answer's head first: only then is the stream subscribed, and the booking cannot come before it.
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(events));
    for line in lines.by_ref() {
        if line.expect("the events answer").is_empty() {
            break;
        }
    }
    let (status, text) = tls_status(
        tls_request(
            addr,
            &sha256,
            "POST",
            "/v1/shows/fri/slots/s1900/bookings",
            &screen,
            Some(&json!({ "seats": 1 })),
        )
        .expect("session"),
    );
    assert_eq!(status, 201, "{text}");
    let saw_slot = lines
        .by_ref()
        .take(200)
        .map_while(Result::ok)
        .any(|l| l.starts_with("data:") && l.contains("\"kind\":\"slot\""));
    assert!(saw_slot, "the screen saw the slot change over TLS");

    // The screen's token takes no payment; a POS token does, over the same listener.
    let (status, text) = tls_status(
        tls_request(
            addr,
            &sha256,
            "POST",
            "/v1/payments",
            &screen,
            Some(&payment("tls-1", 700)),
        )
        .expect("session"),
    );
    assert_eq!(status, 403, "{text}");
    let (pos, _) = issue(data, "pos", "1h", "tablet-1");
    let (status, text) = tls_status(
        tls_request(
            addr,
            &sha256,
            "POST",
            "/v1/payments",
            &pos,
            Some(&payment("tls-2", 700)),
        )
        .expect("session"),
    );
    assert_eq!(status, 201, "{text}");
    assert_eq!(edge.receipt_tokens().len(), 1);
}
