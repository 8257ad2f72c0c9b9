//! The dry rehearsal the evening before: the operator runs `popmesh rehearse` on the edge box and is told what is
//! not ready: a kiosk that was enrolled but never switched on, a POS whose clock is five minutes fast, and that the
//! origin is not reachable (a note: the site can run offline). Once those are fixed, the site is ready.

mod common;

use std::time::Duration;

use common::site::{Node, Site, popmesh};
use serde_json::Value;

const SYNC: Duration = Duration::from_secs(60);

fn rehearse(edge: &Node, wait: &str, extra: &[&str]) -> (bool, String, String) {
    let api = edge.device.api.to_string();
    let mut args = vec![
        "rehearse",
        "--data",
        edge.device.data_str(),
        "--api",
        &api,
        "--wait",
        wait,
    ];
    args.extend_from_slice(extra);
    popmesh(&args)
}

fn preseeded(n: &Node) -> bool {
    let m = n.get("/v1/manifests");
    m["preseed"]["entries"] == 1 && m["preseed"]["completeness"] == 1.0
}

#[test]
fn the_rehearsal_names_a_silent_kiosk_a_fast_clock_and_then_says_ready() {
    let site = Site::create("rehearsal");
    let kiosk = site.join("kiosk", "kiosk-1");
    let spare = site.join("kiosk", "kiosk-2");
    let pos = site.join("pos", "pos-1");
    let origin = site.join("origin", "origin-1");
    let edge = Node::start(&site.edge, &[]);
    let kiosk_node = Node::start(&kiosk, &[&site.edge]);
    // The POS terminal's clock runs five minutes fast.
    let mut pos_node = Node::start_env(
        &pos,
        &[&site.edge],
        &[],
        &[("POPMESH_CLOCK_SKEW_MS", "300000")],
    );
    // The spare kiosk and the origin enroll (so the directory lists them), then go away.
    for d in [&spare, &origin] {
        let mut n = Node::start(d, &[&site.edge]);
        n.wait_for("enrolled", SYNC, |n| n.status()["enrolled"] == true);
        edge.wait_for("its certificate", SYNC, |e| {
            e.status()["peers"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["name"] == d.name))
        });
        n.kill();
    }
    for n in [&kiosk_node, &pos_node] {
        n.wait_for("enrolled", SYNC, |n| n.status()["enrolled"] == true);
    }
    // Media to preseed.
    edge.publish_images("fri", &["poster.jpg"]);
    for n in [&kiosk_node, &pos_node] {
        n.wait_for("the poster preseeded", SYNC, preseeded);
    }

    let (ok, out, err) = rehearse(&edge, "8", &[]);
    assert!(!ok, "not ready: {out}");
    assert!(err.contains("not ready: 2 problem(s)"), "{err}\n{out}");
    let line = |name: &str| {
        out.lines()
            .skip_while(|l| !l.contains(name))
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(line("kiosk-2").contains("did not answer"), "{out}");
    // Five minutes fast, give or take the rehearsal's own round trip on a loaded machine (299.9 s or 300.0 s).
    assert!(
        line("pos-1").contains("clock off by about 300")
            || line("pos-1").contains("clock off by about 299.9"),
        "{out}"
    );
    assert!(line("kiosk-1").starts_with("  ok "), "{out}");
    assert!(line("edge-1").starts_with("  ok "), "{out}");
    assert!(out.contains("origin: not reachable"), "{out}");
    assert!(
        out.contains("note: the origin origin-1 did not answer"),
        "{out}"
    );

    // The operator fixes the clock and switches the spare kiosk on; the rehearsal passes, and says so in JSON too.
    pos_node.kill();
    let pos_node = Node::start(&pos, &[&site.edge]);
    let spare_node = Node::start(&spare, &[&site.edge]);
    for n in [&pos_node, &spare_node] {
        n.wait_for("admitted again", SYNC, |n| n.admitted_peers() >= 1);
    }
    for n in [&pos_node, &spare_node] {
        n.wait_for("the poster preseeded", SYNC, preseeded);
    }
    let (ok, out, err) = rehearse(&edge, "8", &["--json"]);
    assert!(ok, "ready: {err}\n{out}");
    let result: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(result["ready"], true, "{result}");
    assert_eq!(result["devices"].as_array().map(Vec::len), Some(5));
    // With the origin required, its absence is a problem.
    let (ok, _, err) = rehearse(&edge, "3", &["--require-origin"]);
    assert!(!ok && err.contains("not ready: 1 problem(s)"), "{err}");
}
