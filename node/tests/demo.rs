//! The README's main job: `popmesh demo` plays a whole show with real nodes in one process and writes its report.

mod common;

fn demo(args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["demo"];
    all.extend_from_slice(args);
    common::popmesh(&all)
}

#[test]
fn a_whole_show_plays_on_loopback_and_ends_reconciled_with_a_report() {
    let out = common::site::Scratch::new("demo");
    let report_dir = out.0.join("report");
    let (ok, stdout, stderr) = demo(&["--out", report_dir.to_str().expect("utf-8")]);
    assert!(ok, "demo failed: {stderr}\n{stdout}");
    for line in [
        "preseeded them from their peers",
        "retried a payment: replayed, charged once",
        "refused (40000 exceeds the offline limit",
        "the origin's WAN link is cut",
        "kiosk-3 joined with a token and caught up",
        "the edge box moved seats to it and it sold 2",
        "1 declined, 1 charge missing at the site, 0 missing at the processor, 0 amount mismatches",
        "uplink outages 1, MTTR",
        "no seat oversold, every receipt verified, every device converged",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(report_dir.join("report.json")).expect("report.json"),
    )
    .expect("report parses");
    assert_eq!(report["totals"]["attendee_checkins"], 24);
    assert!(report["conversion"]["converted"].as_u64().expect("n") > 0);
    assert!(report["retention"]["returning"].as_u64().expect("n") > 0);
    assert_eq!(
        report["operations"]["uplink_outages"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert!(report_dir.join("report.html").exists());
    assert!(report_dir.join("settlement-batch.csv").exists());
}

#[test]
fn the_core_demo_sells_apart_merges_and_verifies_every_receipt() {
    let (ok, stdout, stderr) = demo(&["--core"]);
    assert!(ok, "demo failed: {stderr}\n{stdout}");
    assert!(
        stdout.contains("both devices hold identical documents: yes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("5 of 10 seats sold (kiosk-1 2, pos-1 3), 5 left"),
        "{stdout}"
    );
    assert!(
        stdout.contains("refused, only 3 left in its quota"),
        "{stdout}"
    );
    assert!(stdout.contains("charged once"), "{stdout}");
    assert_eq!(
        stdout.matches(" verified\n").count(),
        2,
        "two receipts listed as verified: {stdout}"
    );
    assert!(stdout.contains("4 of 4 receipt checks passed"), "{stdout}");
    assert!(stdout.contains("EUR 20.50 unreconciled"), "{stdout}");
}

#[test]
fn a_seeded_core_demo_prints_the_same_story_every_time() {
    let (ok_a, a, _) = demo(&["--core", "--seed", "7"]);
    let (ok_b, b, _) = demo(&["--core", "--seed", "7"]);
    let (_, c, _) = demo(&["--core", "--seed", "8"]);
    assert!(ok_a && ok_b);
    assert_eq!(a, b);
    assert_ne!(a, c, "another seed gives other keys and tokens");
}

#[test]
fn a_bad_flag_is_named() {
    let (ok, _, stderr) = demo(&["--core", "--seed", "seven"]);
    assert!(!ok);
    assert!(stderr.contains("--seed"), "{stderr}");
    let (ok, _, stderr) = demo(&["--seed", "7"]);
    assert!(!ok, "--seed belongs to --core");
    assert!(stderr.contains("--core"), "{stderr}");
}
