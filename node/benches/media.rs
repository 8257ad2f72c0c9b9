//! Media benchmarks with real `popmesh run` processes (release build), recorded in BENCHMARKS.md.
//!
//! ```text
//! cargo bench -p popmesh-node --bench media -- transfer 1024    a 1 GiB blob edge -> POS, against sendme
//! cargo bench -p popmesh-node --bench media -- preseed 5 200    five nodes preseed a 200 MB manifest, against one
//! cargo bench -p popmesh-node --bench media -- preseed 5 200 40 the same with every node's uploads capped at 40 MiB/s
//! ```
//!
//! Preseed: one seeding node (the edge box, which published the manifest) and four others that each want the whole
//! blob; the clock stops when the last holds it. Against the time one node alone takes for the same blob, in the
//! same run. Uncapped, all five processes share this machine's two cores and the work (decrypt, verify, write) grows
//! with the receivers; capped, each node's uplink is the limit, as on a site network, and peers serving each other
//! is what keeps the total near a single transfer.
//!
//! Transfer: the edge box holds the blob; the clock starts when the manifest naming it is published and stops when
//! the POS holds every byte (its `/v1/blobs/{hash}` says `complete`; the store has checked every chunk group against
//! the hash on the way in). The anchor is iroh's own `sendme` (crates.io, built on the same iroh-blobs) moving the
//! same bytes between two processes on loopback in the same run: wall time of `sendme receive`, which includes its
//! connection setup and the copy out of its store into the target file. Found as `$SENDME`, else `sendme` on
//! `PATH`; without it the anchor is skipped and said so.

#[path = "../tests/common/site.rs"]
mod site;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use site::{Node, Site};

const MIB: u64 = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let what = args.first().map(String::as_str).unwrap_or("all");
    let arg = |i: usize, default: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    match what {
        "transfer" => transfer(arg(1, 1024) * MIB, arg(2, 3) as usize),
        "preseed" => preseed(arg(1, 5) as usize, arg(2, 200) * 1_000_000, arg(3, 0)),
        "all" => {
            transfer(1024 * MIB, 3);
            preseed(5, 200_000_000, 0);
            preseed(5, 200_000_000, 40);
        }
        other => panic!(
            "unknown benchmark {other:?}: transfer MIB [ROUNDS] | preseed NODES MB [CAP_MIB_S] | all"
        ),
    }
}

/// A file of `len` bytes that do not compress (a video would not either).
fn media_file(dir: &Path, name: &str, len: u64, seed: u64) -> PathBuf {
    let path = dir.join(name);
    let mut out = std::io::BufWriter::with_capacity(
        8 << 20,
        std::fs::File::create(&path).expect("media file"),
    );
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        out.write_all(&buf[..n]).expect("write media");
        left -= n as u64;
    }
    out.flush().expect("flush media");
    path
}

/// Adds `file` on `node`; returns its hash and size.
fn add(node: &Node, file: &Path) -> (String, u64) {
    let mut client = node.client();
    client.timeout = Duration::from_secs(600);
    let answer = client
        .upload("/v1/blobs", file, &mut |_| {})
        .expect("upload");
    assert_eq!(answer.status, 201, "{}", answer.body);
    let v = answer.json();
    (
        v["hash"].as_str().expect("hash").to_owned(),
        v["size"].as_u64().expect("size"),
    )
}

fn publish(node: &Node, manifest: &str, name: &str, hash: &str, size: u64) {
    let answer = node.post(
        &format!("/v1/manifests/{manifest}"),
        json!({ "entries": [{
            "name": name, "hash": hash, "size": size,
            "mime": "video/mp4", "ttl_ms": 3_600_000u64,
        }] }),
    );
    assert_eq!(answer.status, 201, "{}", answer.body);
}

/// Waits until every node in `nodes` holds `hash` whole; returns when each finished, from `t0`.
fn wait_complete(nodes: &[&Node], hash: &str, t0: Instant) -> Vec<Duration> {
    let mut done: Vec<Option<Duration>> = vec![None; nodes.len()];
    let limit = Duration::from_secs(600);
    while done.iter().any(Option::is_none) {
        for (i, n) in nodes.iter().enumerate() {
            if done[i].is_none()
                && n.client()
                    .get(&format!("/v1/blobs/{hash}"))
                    .is_ok_and(|a| a.json()["state"] == "complete")
            {
                done[i] = Some(t0.elapsed());
            }
        }
        assert!(t0.elapsed() < limit, "preseed did not finish in {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    done.into_iter().flatten().collect()
}

/// A site of an edge box and `n - 1` POS terminals, every node bootstrapped to every earlier one.
/// With `cap` (MiB/s), every node's uploads are capped (`[media] upload_limit_mib_s`), as on a busy site network.
fn site(label: &str, n: usize, cap: u64) -> (Site, Vec<Node>) {
    let site = Site::create(label);
    let mut devices = vec![site.edge.clone()];
    for i in 1..n {
        devices.push(site.join("pos", &format!("pos-{i}")));
    }
    for d in &devices {
        let path = d.data.join("popmesh.toml");
        let text = std::fs::read_to_string(&path).expect("config");
        let capped = text.replace(
            "upload_limit_mib_s = 0",
            &format!("upload_limit_mib_s = {cap}"),
        );
        assert!(cap == 0 || capped != text, "the config template changed");
        std::fs::write(&path, capped).expect("config");
    }
    let mut nodes: Vec<Node> = Vec::new();
    for d in &devices {
        let earlier: Vec<&site::Device> = nodes.iter().map(|n| &n.device).collect();
        nodes.push(Node::start(d, &earlier));
    }
    for n in &nodes {
        n.wait_for("every peer admitted", Duration::from_secs(60), |n| {
            n.admitted_peers() == devices.len() - 1
        });
    }
    (site, nodes)
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

fn sendme_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SENDME") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("sendme"))
            .find(|p| p.is_file())
    })
}

/// What one sendme run measured: the receive's wall time, and the transfer rate sendme itself reports (its
/// `stats.elapsed`: the download alone, without connection setup and the export copy).
struct SendmeRun {
    wall: Duration,
    transfer_mib_s: Option<f64>,
}

/// Reads sendme's `downloaded ... took ... (365.12 MiB/s)` line.
fn sendme_rate(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("downloaded "))?;
    let inner = line
        .rsplit('(')
        .next()?
        .trim_end_matches(')')
        .trim_end_matches("/s");
    let (n, unit) = inner.split_once(' ')?;
    let n: f64 = n.parse().ok()?;
    let scale = match unit {
        "B" => 1.0 / MIB as f64,
        "KiB" => 1.0 / 1024.0,
        "MiB" => 1.0,
        "GiB" => 1024.0,
        _ => return None,
    };
    Some(n * scale)
}

/// `sendme send FILE` in one process and `sendme receive TICKET` in another, on loopback without relays.
fn sendme_once(sendme: &Path, file: &Path, scratch: &Path) -> SendmeRun {
    let mut sender = Command::new(sendme)
        .current_dir(file.parent().expect("dir"))
        .args([
            "send",
            "--relay",
            "disabled",
            "--ticket-type",
            "addresses",
            "--no-progress",
        ])
        .arg(file.file_name().expect("name"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sendme send");
    let stdout = sender.stdout.take().expect("stdout");
    let ticket = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.trim().strip_prefix("sendme receive ").map(str::to_owned))
        .expect("sendme printed a ticket");
    let into = scratch.join(format!("sendme-recv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&into);
    std::fs::create_dir_all(&into).expect("receive dir");
    let t0 = Instant::now();
    let output = Command::new(sendme)
        .current_dir(&into)
        .args([
            "receive",
            "-v",
            "--relay",
            "disabled",
            "--no-progress",
            &ticket,
        ])
        .stderr(Stdio::null())
        .output()
        .expect("sendme receive");
    let took = t0.elapsed();
    assert!(output.status.success(), "sendme receive failed");
    let _ = sender.kill();
    let _ = sender.wait();
    let _ = std::fs::remove_dir_all(&into);
    SendmeRun {
        wall: took,
        transfer_mib_s: sendme_rate(&String::from_utf8_lossy(&output.stdout)),
    }
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of /proc/PID/stat (utime, stime), counted from after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// A blob of `size` bytes from the edge box to one POS terminal, `rounds` times, alternating with sendme.
fn transfer(size: u64, rounds: usize) {
    let (site, nodes) = site("bench-transfer", 2, 0);
    let (edge, pos) = (&nodes[0], &nodes[1]);
    let media = site.root().join("media");
    std::fs::create_dir_all(&media).expect("media dir");
    let sendme = sendme_binary();
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut rates = Vec::new();
    for round in 0..rounds {
        let file = media_file(
            &media,
            &format!("trailer-{round}.mp4"),
            size,
            100 + round as u64,
        );
        let t_add = Instant::now();
        let (hash, size) = add(edge, &file);
        let added = t_add.elapsed();
        let cpu0 = (cpu_secs(edge.pid()), cpu_secs(pos.pid()));
        let t0 = Instant::now();
        publish(edge, "bench", &format!("trailer-{round}.mp4"), &hash, size);
        let took = wait_complete(&[pos], &hash, t0)[0];
        let cpu = (cpu_secs(edge.pid()) - cpu0.0, cpu_secs(pos.pid()) - cpu0.1);
        println!(
            "transfer round {round}: popmesh {:.2} s = {:.0} MiB/s; CPU: sender {:.2} s, receiver {:.2} s \
             ({:.0}% of the 2 cores); adding it on the edge over HTTP took {:.2} s",
            took.as_secs_f64(),
            mib_per_s(size, took),
            cpu.0,
            cpu.1,
            100.0 * (cpu.0 + cpu.1) / (2.0 * took.as_secs_f64()),
            added.as_secs_f64()
        );
        ours.push(took);
        if let Some(sendme) = &sendme {
            let run = sendme_once(sendme, &file, site.root());
            println!(
                "transfer round {round}: sendme  {:.2} s wall = {:.0} MiB/s; its own transfer rate {}",
                run.wall.as_secs_f64(),
                mib_per_s(size, run.wall),
                run.transfer_mib_s
                    .map_or("not reported".to_owned(), |r| format!("{r:.0} MiB/s"))
            );
            theirs.push(run.wall);
            rates.extend(run.transfer_mib_s);
        }
        std::fs::remove_file(&file).expect("remove media file");
    }
    let ours = median(ours);
    println!(
        "transfer {} MiB, median of {rounds}: popmesh {:.2} s ({:.0} MiB/s)",
        size / MIB,
        ours.as_secs_f64(),
        mib_per_s(size, ours)
    );
    match sendme {
        Some(_) => {
            let theirs = median(theirs);
            println!(
                "  sendme wall {:.2} s ({:.0} MiB/s): popmesh / sendme = {:.2}x",
                theirs.as_secs_f64(),
                mib_per_s(size, theirs),
                theirs.as_secs_f64() / ours.as_secs_f64()
            );
            if !rates.is_empty() {
                rates.sort_by(f64::total_cmp);
                let rate = rates[rates.len() / 2];
                println!(
                    "  sendme's own transfer rate {rate:.0} MiB/s: popmesh / sendme = {:.2}x",
                    mib_per_s(size, ours) / rate
                );
            }
        }
        None => {
            println!("  sendme: SKIPPED (set SENDME or put sendme on PATH: cargo install sendme)")
        }
    }
}

/// One seeding node and `n - 1` others preseed a `bytes` manifest entry; against a single transfer of the same size.
fn preseed(n: usize, bytes: u64, cap: u64) {
    let single = {
        let (site, nodes) = site("bench-preseed-1", 2, cap);
        let media = site.root().join("media");
        std::fs::create_dir_all(&media).expect("media dir");
        let file = media_file(&media, "show.mp4", bytes, 7);
        let (hash, size) = add(&nodes[0], &file);
        let t0 = Instant::now();
        publish(&nodes[0], "bench", "show.mp4", &hash, size);
        wait_complete(&[&nodes[1]], &hash, t0)[0]
    };
    let (site, nodes) = site("bench-preseed-n", n, cap);
    let media = site.root().join("media");
    std::fs::create_dir_all(&media).expect("media dir");
    let file = media_file(&media, "show.mp4", bytes, 8);
    let (hash, size) = add(&nodes[0], &file);
    let t0 = Instant::now();
    publish(&nodes[0], "bench", "show.mp4", &hash, size);
    let others: Vec<&Node> = nodes[1..].iter().collect();
    let each = wait_complete(&others, &hash, t0);
    let all = each.iter().max().copied().unwrap_or_default();
    let served: Vec<String> = nodes
        .iter()
        .map(|node| {
            let text = node
                .client()
                .get("/metrics")
                .map(|a| a.body)
                .unwrap_or_default();
            let sent: f64 = text
                .lines()
                .filter(|l| l.starts_with("popmesh_media_wire_sent_bytes_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            format!("{}={:.0}MB", node.device.name, sent / 1e6)
        })
        .collect();
    let capped = if cap > 0 {
        format!(" (uploads capped at {cap} MiB/s per node)")
    } else {
        String::new()
    };
    println!(
        "preseed {} MB{capped}: one node {:.2} s; {} nodes from one seed {:.2} s (each: {}); ratio {:.2}x",
        bytes / 1_000_000,
        single.as_secs_f64(),
        n - 1,
        all.as_secs_f64(),
        each.iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        all.as_secs_f64() / single.as_secs_f64()
    );
    println!("  bytes each node sent (wire): {}", served.join(", "));
}
