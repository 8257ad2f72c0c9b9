//! The README's main job: `popmesh demo` plays the site's story and ends with every receipt verified.

mod common;

fn demo(args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["demo"];
    all.extend_from_slice(args);
    common::popmesh(&all)
}

#[test]
fn two_devices_sell_apart_merge_and_verify_every_receipt() {
    let (ok, stdout, stderr) = demo(&[]);
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
fn a_seeded_demo_prints_the_same_story_every_time() {
    let (ok_a, a, _) = demo(&["--seed", "7"]);
    let (ok_b, b, _) = demo(&["--seed", "7"]);
    let (_, c, _) = demo(&["--seed", "8"]);
    assert!(ok_a && ok_b);
    assert_eq!(a, b);
    assert_ne!(a, c, "another seed gives other keys and tokens");
}

#[test]
fn a_bad_flag_is_named() {
    let (ok, _, stderr) = demo(&["--seed", "seven"]);
    assert!(!ok);
    assert!(stderr.contains("--seed"), "{stderr}");
}
