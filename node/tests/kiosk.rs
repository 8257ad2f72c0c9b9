//! An attendee at the kiosk, in headless Chromium, reading what a person sees: the show's gallery (images and a
//! video) and live seats render; a pass checks in, two questions are answered on the screen, a booking succeeds
//! and the seats drop; a suggestion shows with its reason ("others also booked", from five earlier attendees);
//! the node is killed and the reloaded page still shows the gallery from the service worker's cache with the
//! offline banner and booking off; the node comes back and the page goes live again by itself. Every request the
//! page and its service worker made is recorded: none carries the attendee's answers, and none goes to another
//! site. Screenshots are kept in `target/tmp/`.
//!
//! The story itself is `node/tests/kiosk/story.mjs` (playwright-core driving Debian's chromium); this test runs
//! the site around it and kills and restarts the node when the story asks. Needs chromium, Node.js and
//! `npm install` in `node/tests/kiosk` (`.ci/run` does all three); says SKIPPED otherwise.

mod common;

use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::site::{Node, Site};
use serde_json::{Value, json};

const STEP: Duration = Duration::from_secs(90);

fn kiosk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kiosk")
}

fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|b| std::path::Path::new(b).exists())
}

/// Uploads a file of `tests/kiosk/media` and returns its manifest entry.
fn upload(edge: &Node, name: &str, mime: &str) -> Value {
    let bytes = std::fs::read(kiosk_dir().join("media").join(name)).expect("fixture");
    let blob = edge.client().post_raw("/v1/blobs", &bytes).expect("blob");
    assert_eq!(blob.status, 201, "{}", blob.body);
    let v = blob.json();
    json!({ "name": name, "hash": v["hash"], "size": v["size"], "mime": mime, "ttl_ms": 3_600_000u64 })
}

#[test]
fn an_attendee_checks_in_books_and_gets_a_suggestion_and_the_kiosk_keeps_its_gallery_offline() {
    attendee_story(Screen::OnTheNode);
}

/// The same story on a screen that is not the node's own device: the node takes no request without a token
/// (`loopback_without_token = false`), and the page, opened from its pairing link (`#token=`), carries its
/// kiosk-screen token on every request, its service worker's included.
#[test]
fn a_screen_elsewhere_tells_the_same_story_with_its_kiosk_screen_token() {
    attendee_story(Screen::Elsewhere);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Screen {
    OnTheNode,
    Elsewhere,
}

fn attendee_story(screen: Screen) {
    let Some(browser) = chromium() else {
        common::site::skipped("needs Debian's chromium package (.ci/run installs it)");
        return;
    };
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok || !kiosk_dir().join("node_modules/playwright-core").exists() {
        common::site::skipped(&format!(
            "needs Node.js and `npm install` in {} (.ci/run does both)",
            kiosk_dir().display()
        ));
        return;
    }
    let site = Site::create("kiosk");
    let token = (screen == Screen::Elsewhere).then(|| {
        let config = site.edge.data.join("popmesh.toml");
        let text = std::fs::read_to_string(&config).expect("config");
        assert!(text.contains("loopback_without_token = true"), "{text}");
        std::fs::write(
            &config,
            text.replace(
                "loopback_without_token = true",
                "loopback_without_token = false",
            ),
        )
        .expect("config written");
        let data = site.edge.data_str();
        let (ok, out, err) = common::site::popmesh(&[
            "token",
            "issue",
            "--data",
            data,
            "--role",
            "screen",
            "--valid",
            "8h",
            "--label",
            "kiosk screen",
            "--json",
        ]);
        assert!(ok, "token issue failed: {err}");
        let v: Value = serde_json::from_str(&out).expect("json");
        v["token"].as_str().expect("token").to_owned()
    });
    let mut edge = Node::start(&site.edge, &[]);
    if token.is_some() {
        let bare = popmesh_node::client::Client::new(site.edge.api)
            .get("/v1/shows")
            .expect("answer");
        assert_eq!(bare.status, 401, "no token, no answer: {}", bare.body);
    }
    let now = popmesh_node::clock::now().0;
    let slot = |id: &str, label: &str, in_min: u64| json!({ "id": id, "label": label, "starts_at": now + in_min * 60_000, "capacity": 40, "grants": {} });
    let created = edge.post(
        "/v1/shows",
        json!({ "id": "fri", "name": "Friday Night Market", "currency": "EUR", "slots": [
            slot("s1900", "Jazz trio", 30), slot("s2000", "Street magic", 90), slot("s2100", "Poetry slam", 150)
        ]}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let entries = vec![
        upload(&edge, "poster.png", "image/png"),
        upload(&edge, "stage.png", "image/png"),
        upload(&edge, "map.png", "image/png"),
        upload(&edge, "trailer.webm", "video/webm"),
    ];
    let published = edge.post(
        "/v1/manifests/fri",
        json!({ "entries": entries, "fallback": "map.png" }),
    );
    assert_eq!(published.status, 201, "{}", published.body);
    // Five earlier attendees checked in and booked both the jazz and the magic: enough for "others also booked"
    // to name the pair (a booking's attendee counts only once their pass was checked in).
    for i in 0..5 {
        let early = edge.post(
            "/v1/passes",
            json!({ "kind": "attendee", "subject": format!("att-early-{i}"), "valid_secs": 3600 }),
        );
        assert_eq!(early.status, 201, "{}", early.body);
        let checked = edge.post("/v1/check-ins", json!({ "pass": early.json()["pass"] }));
        assert_eq!(checked.status, 201, "{}", checked.body);
        for s in ["s1900", "s2000"] {
            let booked = edge.post(
                &format!("/v1/shows/fri/slots/{s}/bookings"),
                json!({ "seats": 1, "attendee": format!("att-early-{i}") }),
            );
            assert_eq!(booked.status, 201, "{}", booked.body);
        }
    }
    let pass = edge.post(
        "/v1/passes",
        json!({ "kind": "attendee", "subject": "att-kiosk-7", "valid_secs": 3600 }),
    );
    assert_eq!(pass.status, 201, "{}", pass.body);
    let pass = pass.json()["pass"].as_str().expect("pass text").to_owned();

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(match screen {
        Screen::OnTheNode => "kiosk",
        Screen::Elsewhere => "kiosk-screen-token",
    });
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let config = json!({
        "base": format!("http://{}", site.edge.api),
        "zone": "foyer",
        "pass": pass,
        "subject": "att-kiosk-7",
        "token": token,
        "shots": shots,
        "chromium": browser,
        "profile": { "group": "3", "first_name_marker": "Quillon" },
    });
    let mut story = Command::new("node")
        .current_dir(kiosk_dir())
        .args(["story.mjs", &config.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node starts");
    let (tx, rx) = mpsc::channel::<String>();
    let out = story.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut stdin = story.stdin.take().expect("stdin");
    let mut steps = Vec::new();
    let mut infos = Vec::new();
    loop {
        let line = match rx.recv_timeout(STEP) {
            Ok(line) => line,
            Err(e) => {
                let _ = story.kill();
                panic!(
                    "the story said nothing for {STEP:?} ({e}); steps passed: {steps:?}\n{}",
                    edge.log_tail()
                );
            }
        };
        eprintln!("story: {line}");
        match line.trim() {
            "KILL" => {
                edge.kill();
                writeln!(stdin, "killed").expect("story reads");
            }
            "RESTART" => {
                edge = Node::start(&site.edge, &[]);
                writeln!(stdin, "restarted").expect("story reads");
            }
            "OK" => break,
            l if l.starts_with("STEP ") => steps.push(l[5..].to_owned()),
            l if l.starts_with("INFO ") => infos.push(l[5..].to_owned()),
            l if l.starts_with("FAIL") => {
                let _ = story.wait();
                panic!(
                    "{l}\nsteps passed: {steps:?}; screenshots in {}",
                    shots.display()
                );
            }
            _ => {}
        }
    }
    let status = story.wait().expect("story ends");
    assert!(status.success(), "the story exited {status}");
    assert_eq!(
        steps,
        [
            "gallery",
            "booked",
            "suggestion",
            "offline",
            "live-again",
            "forget",
            "privacy"
        ],
        "every step of the story passed"
    );
    assert!(
        infos
            .iter()
            .any(|i| i.contains("5 others who booked Jazz trio also booked Street magic")),
        "the suggestion said why, from the five earlier attendees: {infos:?}"
    );
    // The suggestions the page showed were counted (the attendee said yes), with no attendee in them.
    edge.wait_for("the kiosk's tallies", STEP, |n| {
        n.get("/v1/suggestions?zone=foyer&limit=3")["suggestions"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["shown"].as_u64() > Some(0)))
    });
}
