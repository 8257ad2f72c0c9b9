//! The operator looks at a screen, not at logs: the console page, driven in headless Chromium, shows the peers and
//! their roles, who sees whom, sync lag, media, unreconciled money and the alerts a threshold raises, and follows
//! the site live when a kiosk drops out. A screenshot of the page is kept under the target directory.
//!
//! Needs Debian's `chromium` (`.ci/run` installs it); says SKIPPED otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::site::{Node, Site, payment, show};

const SYNC: Duration = Duration::from_secs(60);

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

fn headless(browser: &str, profile: &Path, args: &[&str]) -> String {
    let out = Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", profile.display()),
        ])
        .args(args)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The page as a person sees it after its script has run: the DOM's text, tags stripped.
fn page_text(browser: &str, profile: &Path, url: &str) -> String {
    let dom = headless(
        browser,
        profile,
        &["--virtual-time-budget=5000", "--dump-dom", url],
    );
    let mut text = String::new();
    let mut in_tag = false;
    for c in dom.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn set_alerts(data: &Path) {
    let path = data.join("popmesh.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    let text = text
        .replace(
            "unreconciled_max_minor = 100000",
            "unreconciled_max_minor = 1000",
        )
        .replace("peers_min = 0", "peers_min = 2")
        .replace("outage_max_secs = 60", "outage_max_secs = 1");
    std::fs::write(&path, text).expect("config written");
}

#[test]
fn the_console_shows_the_site_at_a_glance_and_follows_a_kiosk_dropping_out() {
    let Some(browser) = chromium() else {
        common::site::skipped("needs Debian's chromium package (.ci/run installs it)");
        return;
    };
    let site = Site::create("console");
    let kiosk = site.join("kiosk", "kiosk-1");
    let pos = site.join("pos", "pos-1");
    set_alerts(&site.edge.data);
    let edge = Node::start(&site.edge, &[]);
    let mut kiosk = Node::start(&kiosk, &[&site.edge]);
    let pos = Node::start(&pos, &[&site.edge]);
    assert_eq!(edge.post("/v1/shows", show("fri", 20, &[])).status, 201);
    pos.wait_for("the show", SYNC, |n| {
        n.get("/v1/shows")["shows"]["fri"].is_object()
    });
    assert_eq!(pos.post("/v1/payments", payment("bar-1", 1500)).status, 201);
    edge.publish_images("fri", &["poster.jpg"]);
    edge.wait_for(
        "the console seeing both peers, the payment and who sees whom",
        SYNC,
        |n| {
            let c = n.get("/v1/console");
            c["peers"]
                .as_array()
                .is_some_and(|p| p.iter().filter(|p| p["admitted"] == true).count() == 2)
                && c["payments"]["receipts"] == 1
                && c["devices"].as_array().is_some_and(|d| {
                    d.iter()
                        .all(|d| d["sees"].as_array().is_some_and(|s| !s.is_empty()))
                })
        },
    );

    let scratch = site.root().join("chromium");
    let url = format!("http://{}/console", site.edge.api);
    let before = page_text(browser, &scratch, &url);
    for seen in [
        "Harbour Market",
        "this device: edge-1 (edge)",
        "kiosk-1",
        "pos-1",
        "Peers in reach 2",
        "Who sees whom",
        "15.00 EUR taken offline and not reconciled, over the limit of 10.00 EUR",
        "show/fri/manifest",
        "show/fri/ledger/pos-1",
        "1 verified receipts on this device; unreconciled: 15.00 EUR",
        "live ·",
    ] {
        assert!(before.contains(seen), "{seen:?} not on the page:\n{before}");
    }
    assert!(
        before.contains("✓"),
        "the reach matrix shows links:\n{before}"
    );
    assert!(!before.contains("out of reach"), "{before}");

    // The kiosk drops out; the page shows it on its next refresh, with the alerts it raises.
    kiosk.kill();
    edge.wait_for("the kiosk out of reach for over a second", SYNC, |n| {
        n.get("/v1/console")["alerts"].as_array().is_some_and(|a| {
            a.iter().any(|a| {
                a["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("kiosk-1 out of reach"))
            })
        })
    });
    let after = page_text(browser, &scratch, &url);
    for seen in [
        "kiosk-1 out of reach for",
        "1 peer(s) in reach, fewer than 2",
        "Peers in reach 1",
    ] {
        assert!(after.contains(seen), "{seen:?} not on the page:\n{after}");
    }

    // The screenshot an operator would see, kept for the record.
    let shot: PathBuf = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        browser,
        &scratch,
        &[
            "--virtual-time-budget=5000",
            "--window-size=1280,1100",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "a real screenshot: {} bytes",
        png.len()
    );
    eprintln!("console screenshot: {}", shot.display());
}

/// A raw HTTP/1.1 request to `node`, with extra header lines.
fn raw(
    node: &Node,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> common::hostile::Answer {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        node.device.api,
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.push_str(body);
    common::hostile::exchange(node.device.api, head.as_bytes(), Duration::from_secs(10))
        .expect("answers")
}

/// `POST /v1/login` with `token`.
fn login(node: &Node, token: &str) -> common::hostile::Answer {
    raw(
        node,
        "POST",
        "/v1/login",
        &[],
        &format!(r#"{{"token":"{token}"}}"#),
    )
}

/// The `Cookie:` header a sign-in's `Set-Cookie` asks the browser to send.
fn cookie_of(answer: &common::hostile::Answer) -> String {
    let set = answer.header("set-cookie").expect("a cookie");
    format!("Cookie: {}", set.split(';').next().expect("pair"))
}

fn issue_token(data: &str, role: &str) -> (String, String) {
    let (ok, out, err) = common::site::popmesh(&[
        "token", "issue", "--data", data, "--role", role, "--valid", "1h", "--label", "laptop",
        "--json",
    ]);
    assert!(ok, "token issue failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    (
        v["token"].as_str().expect("token").into(),
        v["id"].as_str().expect("id").into(),
    )
}

#[test]
fn the_console_behind_its_login_signs_an_operator_in_keeps_others_out_and_ends_with_the_token() {
    let Some(browser) = chromium() else {
        common::site::skipped("needs Debian's chromium package (.ci/run installs it)");
        return;
    };
    let site = Site::create("console-login");
    let path = site.edge.data.join("popmesh.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    assert!(text.contains("loopback_without_token = true"));
    std::fs::write(
        &path,
        text.replace(
            "loopback_without_token = true",
            "loopback_without_token = false",
        ),
    )
    .expect("config written");
    let edge = Node::start(&site.edge, &[]);
    let data = site.edge.data_str();
    let (operator, operator_id) = issue_token(data, "operator");
    let (read_only, _) = issue_token(data, "read_only");
    let url = format!("http://{}/console", site.edge.api);

    // A browser without a token gets the sign-in form and nothing of the site.
    let dom = headless(
        browser,
        &site.root().join("chromium-1"),
        &["--virtual-time-budget=5000", "--dump-dom", &url],
    );
    assert!(dom.contains(r#"class="signed-out""#), "{dom}");
    assert!(!dom.contains("this device: edge-1"), "{dom}");
    // The operator's pairing link signs in (the token in the fragment, which no server sees) and the console shows.
    let signed_in = format!("{url}#token={operator}");
    let dom = headless(
        browser,
        &site.root().join("chromium-2"),
        &["--virtual-time-budget=5000", "--dump-dom", &signed_in],
    );
    assert!(!dom.contains(r#"class="signed-out""#), "{dom}");
    let text = page_text(browser, &site.root().join("chromium-3"), &signed_in);
    assert!(
        text.contains("this device: edge-1 (edge)") && text.contains("live ·"),
        "{text}"
    );
    // A read-only token signs in but may not see the console: the page says so.
    let text = page_text(
        browser,
        &site.root().join("chromium-4"),
        &format!("{url}#token={read_only}"),
    );
    assert!(text.contains("may not GET /v1/console"), "{text}");

    // The session itself: an HttpOnly, SameSite=Strict cookie; what changes something needs the CSRF token too.
    let signed_in = login(&edge, &operator);
    assert_eq!(signed_in.status, 200, "{}", signed_in.describe());
    let set = signed_in.header("set-cookie").expect("a cookie").to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && !set.contains("Secure"),
        "{set}"
    );
    let cookie = cookie_of(&signed_in);
    let csrf = signed_in.json()["csrf"].as_str().expect("csrf").to_owned();
    assert_eq!(raw(&edge, "GET", "/v1/console", &[&cookie], "").status, 200);
    let forged = raw(&edge, "POST", "/v1/rehearsals", &[&cookie], "{}");
    assert_eq!(forged.status, 403, "{}", forged.describe());
    assert!(forged.message().contains("CSRF"), "{}", forged.describe());
    let called = raw(
        &edge,
        "POST",
        "/v1/rehearsals",
        &[&cookie, &format!("X-CSRF-Token: {csrf}")],
        "{}",
    );
    assert!(called.status < 300, "{}", called.describe());
    // A bad token does not sign in; a cookie nobody issued is nobody.
    let bad = login(&edge, "popmesh-client1.AAAA");
    assert_eq!(bad.status, 401, "{}", bad.describe());
    let guessed = format!("Cookie: popmesh_session={}", "0".repeat(64));
    assert_eq!(
        raw(&edge, "GET", "/v1/console", &[&guessed], "").status,
        401
    );

    // Revoking the token ends the session.
    let (ok, out, err) = common::site::popmesh(&["token", "revoke", "--data", data, &operator_id]);
    assert!(ok, "token revoke failed: {out}{err}");
    edge.wait_for(
        "the revocation to end the session",
        Duration::from_secs(10),
        |n| raw(n, "GET", "/v1/console", &[&cookie], "").status == 401,
    );
    let ended = raw(&edge, "GET", "/v1/session", &[&cookie], "");
    assert_eq!(ended.status, 401, "{}", ended.describe());

    // A stolen screen token signing in over and over cannot push an operator out: it holds at most 8 sessions,
    // and its own oldest go.
    let (operator, _) = issue_token(data, "operator");
    let (screen, _) = issue_token(data, "screen");
    let kept = cookie_of(&login(&edge, &operator));
    let first = cookie_of(&login(&edge, &screen));
    for _ in 0..300 {
        let again = login(&edge, &screen);
        assert_eq!(again.status, 200, "{}", again.describe());
    }
    assert_eq!(raw(&edge, "GET", "/v1/console", &[&kept], "").status, 200);
    assert_eq!(raw(&edge, "GET", "/v1/status", &[&first], "").status, 401);

    // Signing out ends one that was still good.
    let (second, _) = issue_token(data, "operator");
    let cookie = cookie_of(&login(&edge, &second));
    assert_eq!(raw(&edge, "GET", "/v1/status", &[&cookie], "").status, 200);
    assert_eq!(
        raw(&edge, "POST", "/v1/logout", &[&cookie], "{}").status,
        200
    );
    assert_eq!(raw(&edge, "GET", "/v1/status", &[&cookie], "").status, 401);
}
