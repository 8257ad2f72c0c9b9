//! Site mesh benchmarks with real `popmesh run` processes (release build), recorded in BENCHMARKS.md.
//!
//! ```text
//! cargo bench -p popmesh-node --bench mesh -- latency 3     write-to-visible across 3 nodes (10, 50: relays)
//! cargo bench -p popmesh-node --bench mesh -- bulk 16       back-to-back payments from 16 clients, rate visible on a peer
//!                                                   (`bulk C N`: N payments; a new connection per payment)
//! cargo bench -p popmesh-node --bench mesh -- keepalive 16  the same, each client on one kept-alive connection
//! cargo bench -p popmesh-node --bench mesh -- batch 4 250   4 POS apps each sending queues of 250 (`/v1/payments/batch`)
//! cargo bench -p popmesh-node --bench mesh -- join          fresh device joining 10,000 bookings + 20,000 receipts
//! cargo bench -p popmesh-node --bench mesh -- idle          idle RSS and CPU of a 3-node site
//! ```
//!
//! Write-to-visible: a POS takes a payment through the API; the clock stops when each node holding its ledger
//! reports the change on its `/v1/events` stream; then it books a seat, until every other node reports the slot.
//! Writes are sequential. The payment is fsync'd on the POS before its 201; the peers do not wait for that.

#[path = "../tests/common/site.rs"]
mod site;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use popmesh_crdt::{DeviceId, Role};
use popmesh_device::authorship::DocKind;
use popmesh_device::topology::{Part, Topology};
use serde_json::{Value, json};
use site::{Device, Node, Site, payment, show};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let what = args.first().map(String::as_str).unwrap_or("all");
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    match what {
        "latency" => latency(n, 300),
        "bulk" | "keepalive" => bulk(
            args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8_000),
            args.get(1).and_then(|s| s.parse().ok()).unwrap_or(16),
            if what == "bulk" {
                Send::NewConnection
            } else {
                Send::KeepAlive
            },
        ),
        "batch" => bulk(
            args.get(3).and_then(|s| s.parse().ok()).unwrap_or(40_000),
            args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4),
            Send::Batch(args.get(2).and_then(|s| s.parse().ok()).unwrap_or(250)),
        ),
        "join" => join(
            args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000),
            args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20_000),
        ),
        "idle" => idle(),
        "all" => {
            latency(3, 300);
            latency(10, 200);
            bulk(8_000, 16, Send::NewConnection);
            join(10_000, 20_000);
            idle();
        }
        other => panic!(
            "unknown benchmark {other:?}: latency N | bulk C [N] | keepalive C [N] | batch C B [N] | join | idle | all"
        ),
    }
}

/// Raises the stored-payments limit so a benchmark can take thousands of payments on one device, and turns quota
/// rebalancing off so the edge box can sell every seat it was granted.
fn relax_limits(device: &Device) {
    let path = device.data.join("popmesh.toml");
    let text = std::fs::read_to_string(&path)
        .expect("config")
        .replace(
            "stored_total_max_minor = 200000",
            "stored_total_max_minor = 100000000000",
        )
        .replace("rebalance_every_secs = 5", "rebalance_every_secs = 0");
    assert!(
        text.contains("rebalance_every_secs = 0"),
        "the config template changed"
    );
    std::fs::write(&path, text).expect("config");
}

/// A site of `n` nodes (the edge box and POS terminals), each given only the edge box's address, as on venue
/// Wi-Fi that blocks multicast; returns once every node holds exactly the links the site's shape names
/// (`popmesh_device::topology`: a full mesh up to five devices, relays past that), with a show of one slot whose
/// seats are granted 1,000 to each POS.
fn mesh(label: &str, n: usize) -> (Site, Vec<Node>, Topology) {
    let site = Site::create(label);
    let mut devices = vec![site.edge.clone()];
    for i in 1..n {
        devices.push(site.join("pos", &format!("pos-{i}")));
    }
    for d in &devices {
        relax_limits(d);
    }
    let mut nodes: Vec<Node> = vec![Node::start(&devices[0], &[])];
    for d in &devices[1..] {
        nodes.push(Node::start(d, &[&site.edge]));
    }
    let ids: Vec<(DeviceId, Role)> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let id = DeviceId::from_hex(&d.device_id()).expect("a device id");
            (id, if i == 0 { Role::Edge } else { Role::Pos })
        })
        .collect();
    let shape = Topology::of(&ids);
    let started = Instant::now();
    loop {
        let off = nodes
            .iter()
            .zip(&ids)
            .filter(|(node, (id, _))| {
                let plan: BTreeSet<String> = shape.links(id).iter().map(|p| p.to_hex()).collect();
                node.linked_devices() != plan
            })
            .count();
        if off == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{off} of {n} nodes do not hold the links the shape names after 300 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let grants: Vec<(String, u64)> = (1..n).map(|i| (format!("pos-{i}"), 1_000)).collect();
    let grants: Vec<(&str, u64)> = grants.iter().map(|(d, s)| (d.as_str(), *s)).collect();
    assert_eq!(
        nodes[0]
            .post("/v1/shows", show("fri", 100_000, &grants))
            .status,
        201
    );
    (site, nodes, shape)
}

/// Follows a node's `/v1/events`, sending (arrival time, document name) for every change.
fn follow(node: &Node, tx: mpsc::Sender<(Instant, usize, String)>, index: usize) {
    let addr = node.device.api;
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("events");
        write!(
            stream,
            "GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .expect("request");
        let reader = BufReader::new(stream);
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if let Some(data) = line.strip_prefix("data:") {
                let event: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                if let Some(doc) = event["doc"].as_str()
                    && tx.send((Instant::now(), index, doc.to_owned())).is_err()
                {
                    return;
                }
            }
        }
    });
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// Waits until every node of `want` has reported a change of `doc` since `start`; the time each took, in ms.
fn seen_by(
    rx: &mpsc::Receiver<(Instant, usize, String)>,
    want: &BTreeSet<usize>,
    doc: &str,
    start: Instant,
    what: &str,
) -> Vec<f64> {
    let mut seen: BTreeMap<usize, f64> = BTreeMap::new();
    let deadline = start + Duration::from_secs(10);
    while seen.len() < want.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((at, node, got)) = rx.recv_timeout(left) else {
            panic!("{what} not visible everywhere after 10 s: seen by {seen:?} of {want:?}");
        };
        if got == doc && at >= start && want.contains(&node) {
            seen.entry(node)
                .or_insert_with(|| at.duration_since(start).as_secs_f64() * 1e3);
        }
    }
    seen.into_values().collect()
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    kb as f64 / 1024.0
}

fn summary(label: &str, mut samples: Vec<f64>) -> String {
    samples.sort_by(f64::total_cmp);
    format!(
        "{label} p50 {:.2} ms p99 {:.2} ms max {:.2} ms ({} samples)",
        quantile(&samples, 0.5),
        quantile(&samples, 0.99),
        quantile(&samples, 1.0),
        samples.len()
    )
}

/// Write-to-visible on a site of `n` nodes. Each round a POS that is no relay (any POS on a small site) takes a
/// payment, fsync'd before its 201, timed until every device holding its ledger (the relays; every device on a
/// small site) reports it; then it books a seat, timed until every other device reports the slot changed. The
/// farthest device's time per booking is reported apart.
fn latency(n: usize, writes: usize) {
    let (_site, nodes, shape) = mesh(&format!("lat{n}"), n);
    let ids: Vec<DeviceId> = nodes
        .iter()
        .map(|n| DeviceId::from_hex(&n.device.device_id()).expect("id"))
        .collect();
    let member = (1..n).find(|i| shape.part(&ids[*i]) == Some(Part::Member));
    let w = member.unwrap_or(1);
    let writer = &nodes[w];
    let ledger = format!("show/fri/ledger/{}", writer.device.device_id());
    let slot = "show/fri/slot/s1900";
    let holders: BTreeSet<usize> = (0..n)
        .filter(|i| *i != w && shape.holds_kind(&ids[*i], DocKind::Ledger(ids[w])))
        .collect();
    let everyone: BTreeSet<usize> = (0..n).filter(|i| *i != w).collect();
    // Create the ledger (first payment) before measuring, and let every holder open it.
    assert_eq!(
        writer.post("/v1/payments", payment("warm-0", 1)).status,
        201
    );
    for i in &holders {
        nodes[*i].wait_for("the writer's ledger", Duration::from_secs(60), |n| {
            heads_of(n, &ledger).is_some()
        });
    }
    for node in &nodes {
        node.wait_for("the slot", Duration::from_secs(60), |n| {
            heads_of(n, slot).is_some()
        });
    }
    let (tx, rx) = mpsc::channel();
    for (i, node) in nodes.iter().enumerate() {
        if i != w {
            follow(node, tx.clone(), i);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let client = writer.client();
    let (mut paid, mut booked, mut farthest, mut acked) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let run = Instant::now();
    let cpu_before: Vec<u64> = nodes.iter().map(|n| cpu_ticks(n.pid())).collect();
    for k in 0..writes {
        while rx.try_recv().is_ok() {}
        let start = Instant::now();
        let answer = client
            .post("/v1/payments", &payment(&format!("lat-{k}"), 1))
            .expect("payment");
        assert_eq!(answer.status, 201, "{}", answer.body);
        acked.push(start.elapsed().as_secs_f64() * 1e3);
        let to_holders = seen_by(&rx, &holders, &ledger, start, &format!("payment {k}"));
        while rx.try_recv().is_ok() {}
        let start = Instant::now();
        let body = json!({ "seats": 1, "booking_id": format!("lat-{k}") });
        let answer = client
            .post("/v1/shows/fri/slots/s1900/bookings", &body)
            .expect("booking");
        assert_eq!(answer.status, 201, "{}", answer.body);
        let to_all = seen_by(&rx, &everyone, slot, start, &format!("booking {k}"));
        if k >= 20 {
            farthest.push(to_all.iter().copied().fold(0.0, f64::max));
            paid.extend(to_holders);
            booked.extend(to_all);
        }
    }
    let took = run.elapsed().as_secs_f64();
    let relays: Vec<usize> = (0..n)
        .filter(|i| shape.part(&ids[*i]) == Some(Part::Relay))
        .collect();
    let cpu = |i: usize| (cpu_ticks(nodes[i].pid()) - cpu_before[i]) as f64 / took;
    let rss: Vec<f64> = nodes.iter().map(|n| rss_mb(n.pid())).collect();
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let relay_cpu: Vec<f64> = relays.iter().map(|i| cpu(*i)).collect();
    let member_cpu: Vec<f64> = (0..n).filter(|i| !relays.contains(i)).map(cpu).collect();
    let bytes = |i: usize| nodes[i].metric("libp2p_bandwidth_bytes");
    println!(
        "latency nodes={n} relays={} writer={} rounds={}: {}; {}; {}; payment acknowledged (fsync'd) {}",
        relays.len(),
        nodes[w].device.name,
        writes - 20,
        summary("payment to every holder of the ledger", paid),
        summary("booking to every device", booked),
        summary("booking to the farthest device", farthest),
        summary("", acked),
    );
    println!(
        "  RSS per node mean {:.1} MB max {:.1} MB; CPU over the run: relays {:.1}% mean of one core, others {:.1}%; \
         mesh bytes since start: relays {:.1} MB mean, others {:.1} MB mean",
        mean(&rss),
        rss.iter().copied().fold(0.0, f64::max),
        mean(&relay_cpu),
        mean(&member_cpu),
        mean(&relays.iter().map(|i| bytes(*i)).collect::<Vec<_>>()) / 1e6,
        mean(
            &(0..n)
                .filter(|i| !relays.contains(i))
                .map(bytes)
                .collect::<Vec<_>>()
        ) / 1e6,
    );
}

/// A process's CPU time in clock ticks (1/100 s): utime and stime of `/proc/PID/stat`.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of /proc/PID/stat; after the ')' they are the 12th and 13th.
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|u| u.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

fn heads_of(node: &Node, name: &str) -> Option<Value> {
    node.get("/v1/documents")["documents"]
        .as_array()?
        .iter()
        .find(|d| d["name"] == name)
        .map(|d| d["heads"].clone())
}

/// How the bulk benchmark's clients send their payments.
#[derive(Debug, Clone, Copy)]
enum Send {
    /// One request per connection, as the test client does.
    NewConnection,
    /// One kept-alive connection per client, one payment per request.
    KeepAlive,
    /// One kept-alive connection per client, queues of this many payments per request.
    Batch(usize),
}

fn bulk(total: usize, clients: usize, send: Send) {
    let (_site, nodes, _) = mesh("bulk", 2);
    let (edge, pos) = (&nodes[0], &nodes[1]);
    let ledger = format!("show/fri/ledger/{}", pos.device.device_id());
    assert_eq!(pos.post("/v1/payments", payment("warm-0", 1)).status, 201);
    let start = Instant::now();
    let per = total / clients;
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let client = pos.client();
            std::thread::spawn(move || {
                let keys: Vec<String> = (0..per).map(|i| format!("bulk-{c}-{i}")).collect();
                match send {
                    Send::NewConnection => {
                        for key in &keys {
                            let a = client
                                .post("/v1/payments", &payment(key, 1))
                                .expect("payment");
                            assert_eq!(a.status, 201, "{}", a.body);
                        }
                    }
                    Send::KeepAlive => {
                        let mut conn = KeepAlive::open(&client);
                        for key in &keys {
                            let (status, body) =
                                conn.post("/v1/payments", &payment(key, 1).to_string());
                            assert_eq!(status, 201, "{body}");
                        }
                    }
                    Send::Batch(size) => {
                        let mut conn = KeepAlive::open(&client);
                        for queue in keys.chunks(size) {
                            let payments: Vec<Value> =
                                queue.iter().map(|k| payment(k, 1)).collect();
                            let body = json!({ "payments": payments }).to_string();
                            let (status, answer) = conn.post("/v1/payments/batch", &body);
                            let short: String = answer.chars().take(300).collect();
                            assert_eq!(status, 200, "{short}");
                            let answer: Value = serde_json::from_str(&answer).expect("JSON");
                            assert_eq!(answer["taken"], queue.len(), "{short}");
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client");
    }
    let acked = start.elapsed();
    let final_heads = heads_of(pos, &ledger).expect("ledger heads");
    edge.wait_for("every payment", Duration::from_secs(300), |e| {
        heads_of(e, &ledger) == Some(final_heads.clone())
    });
    let visible = start.elapsed();
    let count = edge.receipt_tokens().len();
    assert_eq!(count, per * clients + 1, "the edge box holds every receipt");
    println!(
        "bulk payments={} clients={clients} send={send:?}: acknowledged (fsync'd) at {:.0}/s; all visible on the peer after {:.2} s = {:.0} changes/s",
        per * clients,
        (per * clients) as f64 / acked.as_secs_f64(),
        visible.as_secs_f64(),
        (per * clients) as f64 / visible.as_secs_f64()
    );
}

/// A client on one kept-alive HTTP/1.1 connection, as a POS app holds its connection to its device.
struct KeepAlive {
    reader: BufReader<TcpStream>,
    head: String,
}

impl KeepAlive {
    fn open(client: &popmesh_node::client::Client) -> Self {
        let stream = TcpStream::connect(client.addr).expect("API reachable");
        stream.set_nodelay(true).expect("nodelay");
        let auth = client
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "Host: {}\r\nContent-Type: application/json\r\n{auth}",
            client.addr
        );
        Self {
            reader: BufReader::new(stream),
            head,
        }
    }

    /// POSTs `body` and reads the answer by its Content-Length.
    fn post(&mut self, path: &str, body: &str) -> (u16, String) {
        let request = format!(
            "POST {path} HTTP/1.1\r\n{}Content-Length: {}\r\n\r\n{body}",
            self.head,
            body.len()
        );
        self.reader
            .get_mut()
            .write_all(request.as_bytes())
            .expect("request sent");
        let mut status = 0;
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("answer");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(code) = lower.strip_prefix("http/1.1 ") {
                status = code[..3].parse().expect("status");
            } else if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
        }
        let mut answer = vec![0; length];
        std::io::Read::read_exact(&mut self.reader, &mut answer).expect("body");
        (status, String::from_utf8_lossy(&answer).into_owned())
    }
}

fn join(bookings: usize, receipts: usize) {
    let (site, nodes, _) = mesh("join", 2);
    let (edge, pos) = (&nodes[0], &nodes[1]);
    // Ten slots of 1,000 seats; the edge box sells every seat, one booking each.
    let slots: Vec<Value> = (0..10)
        .map(|i| json!({ "id": format!("t{i}"), "label": format!("{i}:00"), "starts_at": 1_795_900_000_000u64 + i, "capacity": bookings / 10, "grants": {} }))
        .collect();
    let spec = json!({ "id": "sat", "name": "Saturday", "currency": "EUR", "slots": slots });
    assert_eq!(edge.post("/v1/shows", spec).status, 201);
    // Filling is not what is measured. Bookings go to ten small slot documents from 4 clients; payments from
    // 32 clients per device, so they arrive in batches (one change per batch; see BENCHMARKS.md on why a
    // 20,000-receipt ledger written one change at a time is slow to fill).
    let fill = Instant::now();
    let mut threads = Vec::new();
    for t in 0..4 {
        let ec = edge.client();
        threads.push(std::thread::spawn(move || {
            for b in (t..bookings).step_by(4) {
                let path = format!("/v1/shows/sat/slots/t{}/bookings", b % 10);
                let a = ec
                    .post(&path, &json!({ "seats": 1, "booking_id": format!("b{b}") }))
                    .expect("booking");
                assert_eq!(a.status, 201, "{}", a.body);
            }
        }));
    }
    for t in threads.drain(..) {
        t.join().expect("booking filler");
    }
    const PAYERS: usize = 32;
    for t in 0..PAYERS {
        let mut ec = edge.client();
        let mut pc = pos.client();
        ec.timeout = Duration::from_secs(120);
        pc.timeout = Duration::from_secs(120);
        threads.push(std::thread::spawn(move || {
            for r in (t..receipts).step_by(PAYERS) {
                let c = if (r / PAYERS).is_multiple_of(2) {
                    &ec
                } else {
                    &pc
                };
                let a = c
                    .post("/v1/payments", &payment(&format!("r{r}"), 1))
                    .expect("payment");
                assert_eq!(a.status, 201, "{}", a.body);
            }
        }));
    }
    for t in threads {
        t.join().expect("payment filler");
    }
    let filled = fill.elapsed();
    let want: BTreeMap<String, Value> = edge.get("/v1/documents")["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap_or_default().to_owned(),
                d["heads"].clone(),
            )
        })
        .collect();
    pos.wait_for(
        "the pos to hold everything",
        Duration::from_secs(120),
        |p| {
            p.get("/v1/documents")["documents"]
                .as_array()
                .is_some_and(|ds| ds.len() == want.len())
        },
    );
    let store_bytes = edge.status()["store"]["bytes"].as_u64().unwrap_or(0);

    let fresh = site.join("kiosk", "kiosk-new");
    let started = Instant::now();
    let kiosk = Node::start(&fresh, &[&site.edge]);
    let api_up = started.elapsed();
    kiosk.wait_for(
        "every document at the edge box's heads",
        Duration::from_secs(300),
        |k| {
            let got: BTreeMap<String, Value> = k.get("/v1/documents")["documents"]
                .as_array()
                .map(|ds| {
                    ds.iter()
                        .map(|d| {
                            (
                                d["name"].as_str().unwrap_or_default().to_owned(),
                                d["heads"].clone(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            want.iter()
                .all(|(name, heads)| name == "directory" || got.get(name) == Some(heads))
        },
    );
    let caught_up = started.elapsed();
    let held = kiosk.receipt_tokens().len();
    let sold: u64 = (0..10)
        .map(|i| {
            kiosk.get(&format!("/v1/shows/sat/slots/t{i}"))["sold"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(held, receipts, "the new kiosk holds every receipt");
    assert_eq!(sold as usize, bookings, "the new kiosk sees every booking");
    println!(
        "join bookings={bookings} receipts={receipts} (site filled in {:.1} s, edge data file {:.1} MB): fresh device API up after {:.2} s, every document caught up after {:.2} s",
        filled.as_secs_f64(),
        store_bytes as f64 / 1e6,
        api_up.as_secs_f64(),
        caught_up.as_secs_f64()
    );
}

fn idle() {
    let (_site, nodes, _) = mesh("idle", 3);
    assert_eq!(
        nodes[1].post("/v1/payments", payment("p-1", 100)).status,
        201
    );
    std::thread::sleep(Duration::from_secs(10));
    let pids: Vec<u32> = nodes.iter().map(Node::pid).collect();
    let ticks = cpu_ticks;
    let before: Vec<u64> = pids.iter().map(|p| ticks(*p)).collect();
    let window = Duration::from_secs(30);
    std::thread::sleep(window);
    for (i, pid) in pids.iter().enumerate() {
        let rss = rss_mb(*pid);
        let cpu_ticks = ticks(*pid) - before[i];
        // Linux reports CPU time in clock ticks of 1/100 s.
        let cpu_pct = cpu_ticks as f64 / window.as_secs_f64();
        println!(
            "idle node {i}: RSS {rss:.1} MB, CPU {cpu_pct:.2}% of one core over {} s",
            window.as_secs()
        );
    }
}
