//! Money under pressure, with real `popmesh run` processes (release build), recorded in BENCHMARKS.md.
//!
//! ```text
//! cargo bench -p popmesh-node --bench money -- readers 20000 8   payment latency with 8 clients paging receipts
//! cargo bench -p popmesh-node --bench money -- soak-pos 100      SIGKILL a POS 100 times under payment load
//! cargo bench -p popmesh-node --bench money -- soak-edge 100     SIGKILL the edge box 100 times under booking load
//! ```
//!
//! The soaks count every 201 the clients got, kill the device at a random moment (seeded, printed), restart it, wait
//! until `/v1/status` says ready, and check every acknowledged payment or booking is there: `lost` must be 0.

#[path = "../tests/common/site.rs"]
mod site;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use site::{Device, Node, Site, payment, show};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let what = args.first().map(String::as_str).unwrap_or("readers");
    let arg = |i: usize, default: usize| -> usize {
        args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default)
    };
    match what {
        "readers" => readers(arg(1, 20_000), arg(2, 8)),
        "soak-pos" => soak_pos(arg(1, 100)),
        "soak-edge" => soak_edge(arg(1, 100)),
        other => panic!("unknown benchmark {other:?}: readers N R | soak-pos K | soak-edge K"),
    }
}

fn relax(device: &Device) {
    let path = device.data.join("popmesh.toml");
    let text = std::fs::read_to_string(&path)
        .expect("config")
        .replace(
            "stored_total_max_minor = 200000",
            "stored_total_max_minor = 100000000000",
        )
        .replace("rebalance_every_secs = 5", "rebalance_every_secs = 0");
    std::fs::write(&path, text).expect("config");
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// A small xorshift: the soaks' kill moments, from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Takes `n` payments as fast as 16 clients can.
fn fill(node: &Node, n: usize) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (client, next) = (node.client(), next.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let a = client
                        .post("/v1/payments", &payment(&format!("fill-{i}"), 100))
                        .expect("answer");
                    assert_eq!(a.status, 201, "{}", a.body);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("filler");
    }
}

fn payment_latencies(node: &Node, n: usize, tag: &str) -> Vec<f64> {
    let client = node.client();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        let a = client
            .post("/v1/payments", &payment(&format!("{tag}-{i}"), 100))
            .expect("answer");
        assert_eq!(a.status, 201, "{}", a.body);
        out.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    out.sort_by(f64::total_cmp);
    out
}

/// Payment latency on a POS holding `receipts` receipts, alone and with `readers` clients paging through them.
fn readers(receipts: usize, readers: usize) {
    let site = Site::create("readers");
    relax(&site.edge);
    let edge = Node::start(&site.edge, &[]);
    assert_eq!(edge.post("/v1/shows", show("fri", 10, &[])).status, 201);
    let start = Instant::now();
    fill(&edge, receipts);
    println!(
        "filled {receipts} receipts in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let alone = payment_latencies(&edge, 500, "alone");
    let stop = Arc::new(AtomicBool::new(false));
    let pages = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..readers)
        .map(|_| {
            let (client, stop, pages) = (edge.client(), stop.clone(), pages.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut path = "/v1/receipts".to_owned();
                    loop {
                        let a = client.get(&path).expect("answer");
                        assert_eq!(a.status, 200, "{}", a.body);
                        pages.fetch_add(1, Ordering::Relaxed);
                        match a.json()["next"].as_str() {
                            Some(next) => path = format!("/v1/receipts?after={next}"),
                            None => break,
                        }
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let read_start = Instant::now();
    let busy = payment_latencies(&edge, 500, "busy");
    let read_secs = read_start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("reader");
    }
    let pages = pages.load(Ordering::Relaxed);
    println!(
        "payments on a POS holding {receipts} receipts: alone p50 {:.2} ms p99 {:.2} ms; with {readers} readers \
         paging GET /v1/receipts ({:.0} pages/s of 500) p50 {:.2} ms p99 {:.2} ms",
        quantile(&alone, 0.5),
        quantile(&alone, 0.99),
        pages as f64 / read_secs,
        quantile(&busy, 0.5),
        quantile(&busy, 0.99),
    );
}

type Acked = Arc<Mutex<BTreeMap<String, String>>>;

/// Clients writing as fast as the node answers until `stop`; each 201's key (and what proves it) in `acked`.
fn load(
    node: &Node,
    clients: usize,
    round: usize,
    stop: &Arc<AtomicBool>,
    acked: &Acked,
    write: fn(&popmesh_node::client::Client, &str) -> Option<String>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (client, stop, acked) = (node.client(), stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("r{round}-c{c}-{i}");
                    i += 1;
                    match write(&client, &key) {
                        Some(proof) => {
                            acked.lock().expect("acked").insert(key, proof);
                        }
                        None => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        })
        .collect()
}

fn pay_once(client: &popmesh_node::client::Client, key: &str) -> Option<String> {
    let a = client.post("/v1/payments", &payment(key, 100)).ok()?;
    (a.status == 201).then(|| a.json()["receipt"]["token"].as_str().map(str::to_owned))?
}

fn book_once(client: &popmesh_node::client::Client, key: &str) -> Option<String> {
    // Bookings spread over slots, so no slot document fills.
    let slot = format!("s{}", blake3::hash(key.as_bytes()).as_bytes()[0] % 8);
    let a = client
        .post(
            &format!("/v1/shows/fri/slots/{slot}/bookings"),
            &json!({ "seats": 1, "booking_id": key }),
        )
        .ok()?;
    (a.status == 201).then_some(slot)
}

fn soak(
    kills: usize,
    label: &str,
    write: fn(&popmesh_node::client::Client, &str) -> Option<String>,
) {
    let site = Site::create(label);
    relax(&site.edge);
    let seed = std::env::var("POPMESH_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    let mut rng = Rng(seed | 1);
    let mut node = Node::start(&site.edge, &[]);
    let slots: Vec<serde_json::Value> = (0..8)
        .map(|i| json!({ "id": format!("s{i}"), "label": "hall", "starts_at": 1, "capacity": 1_000_000 }))
        .collect();
    let created = node.post(
        "/v1/shows",
        json!({ "id": "fri", "name": "Friday", "currency": "EUR", "slots": slots }),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let _ = show;
    let acked: Acked = Arc::default();
    let mut back = Vec::new();
    for round in 0..kills {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = load(&node, 4, round, &stop, &acked, write);
        std::thread::sleep(Duration::from_millis(200 + rng.next() % 1300));
        node.kill();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().expect("client");
        }
        let start = Instant::now();
        node = Node::start(&site.edge, &[]);
        node.wait_for("ready", Duration::from_secs(60), |n| {
            n.status()["ready"] == true
        });
        back.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let acked = acked.lock().expect("acked").clone();
    let lost = if label == "soak-pos" {
        let held: BTreeSet<String> = node.receipt_tokens().into_iter().collect();
        acked.values().filter(|t| !held.contains(*t)).count()
    } else {
        let mut held = BTreeSet::new();
        for slot in 0..8 {
            let doc = node.get(&format!("/v1/documents/show/fri/slot/s{slot}"));
            let me = site.edge.device_id();
            if let Some(sales) = doc["content"]["devices"][&me]["sales"].as_object() {
                held.extend(sales.keys().cloned());
            } else if let Some(sales) = doc["devices"][&me]["sales"].as_object() {
                held.extend(sales.keys().cloned());
            }
        }
        acked.keys().filter(|k| !held.contains(*k)).count()
    };
    back.sort_by(f64::total_cmp);
    println!(
        "{label}: seed {seed}, {kills} SIGKILLs, {} acknowledged, {lost} lost; back to ready p50 {:.0} ms, max {:.0} ms",
        acked.len(),
        quantile(&back, 0.5),
        back.last().copied().unwrap_or(0.0),
    );
    assert_eq!(lost, 0, "acknowledged writes lost");
}

fn soak_pos(kills: usize) {
    soak(kills, "soak-pos", pay_once);
}

fn soak_edge(kills: usize) {
    soak(kills, "soak-edge", book_once);
}
