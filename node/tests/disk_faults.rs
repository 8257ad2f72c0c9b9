//! A POS whose disk fills up, fails to fsync, or tears a write mid-burst, then is killed: every payment it answered
//! 201 (first answer or replay) is still there after the restart, and it takes payments again by itself once the
//! disk takes writes again. Driven through the storage fault layer (`POPMESH_STORAGE_FAULTS`), on a real process.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::site::{Node, Site, payment, show};
use popmesh_node::client::Client;

/// What the tills were told, by idempotency key: the status, and the token when it was 201.
type Answers = Arc<Mutex<BTreeMap<String, (u16, Option<String>)>>>;

/// Four tills paying as fast as the node answers, until `stop`.
fn burst(
    client: &Client,
    stop: &Arc<AtomicBool>,
    answers: &Answers,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..4)
        .map(|till| {
            let (client, stop, answers) = (client.clone(), stop.clone(), answers.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("t{till}-{i}");
                    i += 1;
                    let Ok(a) = client.post("/v1/payments", &payment(&key, 100)) else {
                        continue;
                    };
                    let token = (a.status == 201)
                        .then(|| a.json()["receipt"]["token"].as_str().map(str::to_owned))
                        .flatten();
                    assert!(
                        a.status == 201 || a.status == 503,
                        "{key}: {} {}",
                        a.status,
                        a.body
                    );
                    answers
                        .lock()
                        .expect("answers")
                        .insert(key, (a.status, token));
                }
            })
        })
        .collect()
}

fn acknowledged(answers: &Answers) -> BTreeMap<String, String> {
    answers
        .lock()
        .expect("answers")
        .iter()
        .filter_map(|(k, (_, t))| t.clone().map(|t| (k.clone(), t)))
        .collect()
}

fn refused(answers: &Answers) -> Vec<String> {
    answers
        .lock()
        .expect("answers")
        .iter()
        .filter(|(_, (s, _))| *s == 503)
        .map(|(k, _)| k.clone())
        .collect()
}

/// Restarts the device without faults and checks every acknowledged receipt is there.
fn restart_and_count(site: &Site, acked: &BTreeMap<String, String>) -> Node {
    let edge = Node::start(&site.edge, &[]);
    edge.wait_for("ready", Duration::from_secs(30), |n| {
        n.status()["ready"] == true
    });
    let held: std::collections::BTreeSet<String> = edge.receipt_tokens().into_iter().collect();
    let lost: Vec<&String> = acked.values().filter(|t| !held.contains(*t)).collect();
    if !lost.is_empty() {
        let docs = edge.get("/v1/documents");
        for d in docs["documents"].as_array().cloned().unwrap_or_default() {
            let name = d["name"].as_str().unwrap_or("").to_owned();
            let content = edge.get(&format!("/v1/documents/{name}")).to_string();
            let found: Vec<&&String> = lost
                .iter()
                .filter(|t| content.contains(t.as_str()))
                .collect();
            eprintln!(
                "DEBUG {name}: {} bytes, holds {} lost",
                content.len(),
                found.len()
            );
        }
        let key_of: Vec<&String> = acked
            .iter()
            .filter(|(_, t)| lost.contains(t))
            .map(|(k, _)| k)
            .collect();
        eprintln!("DEBUG lost keys {key_of:?}");
        eprintln!("{}", edge.log_tail());
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged receipts lost: {lost:?}",
        lost.len(),
        acked.len()
    );
    edge
}

fn site_with_faults(label: &str) -> (Site, std::path::PathBuf) {
    let site = Site::create(label);
    let control = site.root().join("faults");
    std::fs::write(&control, "").expect("control file");
    // Room for the whole test's payments under the stored limit.
    let config = site.edge.data.join("popmesh.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace(
            "stored_total_max_minor = 200000",
            "stored_total_max_minor = 100000000",
        ),
    )
    .expect("config");
    (site, control)
}

#[test]
fn a_full_disk_and_failing_fsyncs_mid_burst_lose_no_acknowledged_payment() {
    let (site, control) = site_with_faults("diskfull");
    let faults = control.to_str().expect("path").to_owned();
    let mut edge = Node::start_env(&site.edge, &[], &[], &[("POPMESH_STORAGE_FAULTS", &faults)]);
    assert_eq!(edge.post("/v1/shows", show("fri", 10, &[])).status, 201);
    let client = edge.client();
    let answers: Answers = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tills = burst(&client, &stop, &answers);
    let mut rounds = 0;
    for (fault, hold_ms) in [
        ("disk_full=1", 400),
        ("fsync_error=1", 300),
        ("disk_full=1", 150),
        ("fsync_error=1", 700),
    ] {
        std::thread::sleep(Duration::from_millis(250));
        std::fs::write(&control, fault).expect("fault on");
        std::thread::sleep(Duration::from_millis(hold_ms));
        // While the disk refuses writes, a retry of a refused payment is never told 201.
        let status = edge.status();
        if status["store"]["healthy"] == false {
            rounds += 1;
            assert!(status["store"]["fault"]["reason"].is_string(), "{status}");
            assert_eq!(edge.metric("popmesh_store_failed"), 1.0);
            for key in refused(&answers).into_iter().take(5) {
                let a = client
                    .post("/v1/payments", &payment(&key, 100))
                    .expect("answer");
                assert_eq!(
                    a.status, 503,
                    "retry of {key} while the disk refuses writes: {}",
                    a.body
                );
            }
        }
        std::fs::write(&control, "").expect("fault off");
        // Back by itself, without a restart.
        edge.wait_for("the store to recover", Duration::from_secs(20), |n| {
            n.status()["store"]["healthy"] == true
        });
    }
    assert!(
        rounds >= 2,
        "the faults were seen by the node ({rounds} rounds)"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for t in tills {
        t.join().expect("till");
    }
    let acked = acknowledged(&answers);
    let retried = refused(&answers);
    assert!(
        acked.len() > 20 && !retried.is_empty(),
        "{} acked, {} refused",
        acked.len(),
        retried.len()
    );
    edge.kill();

    let edge = restart_and_count(&site, &acked);
    // Each refused payment can be retried now: a new receipt or the replay of one that did reach the disk.
    for key in retried.iter().take(20) {
        let a = edge.post("/v1/payments", payment(key, 100));
        assert_eq!(a.status, 201, "{key}: {}", a.body);
    }
    eprintln!(
        "disk faults: {} acknowledged, 0 lost, {} refused with 503, {rounds} fault rounds",
        acked.len(),
        retried.len()
    );
}

#[test]
fn a_write_torn_by_a_crash_mid_burst_loses_no_acknowledged_payment() {
    let (site, control) = site_with_faults("torn");
    let faults = control.to_str().expect("path").to_owned();
    let edge = Node::start_env(&site.edge, &[], &[], &[("POPMESH_STORAGE_FAULTS", &faults)]);
    assert_eq!(edge.post("/v1/shows", show("fri", 10, &[])).status, 201);
    let client = edge.client();
    let answers: Answers = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tills = burst(&client, &stop, &answers);
    std::thread::sleep(Duration::from_millis(500));
    // The process tears its 40th write from now in half and dies there.
    std::fs::write(&control, "torn_write_after=40").expect("arm");
    let start = Instant::now();
    while client.get("/v1/status").is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the torn write never came"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for t in tills {
        t.join().expect("till");
    }
    drop(edge);
    std::fs::write(&control, "").expect("disarm");
    let acked = acknowledged(&answers);
    let _edge = restart_and_count(&site, &acked);
    assert!(!acked.is_empty());
    eprintln!(
        "torn write: {} acknowledged before the crash, 0 lost",
        acked.len()
    );
}
