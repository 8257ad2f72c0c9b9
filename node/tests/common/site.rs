//! A site of real `popmesh run` processes on 127.0.0.1, for the scenario tests.
//!
//! Each device gets its own data directory, API port and mesh port. Devices find each other through bootstrap
//! addresses (mDNS is off, so parallel tests never see each other). When a wait times out, the panic message
//! carries the tail of every device's log.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use popmesh_node::client::{Answer, Client};
use serde_json::Value;

/// The `popmesh` binary: cargo names it for the node package's tests; elsewhere it sits beside the test binary's
/// directory (`target/<profile>/popmesh`).
pub fn binary() -> PathBuf {
    // A benchmark can compare two builds in one session: `POPMESH_BIN=/path/to/older/popmesh cargo bench ...`.
    if let Some(path) = std::env::var_os("POPMESH_BIN") {
        return PathBuf::from(path);
    }
    if let Some(path) = option_env!("CARGO_BIN_EXE_popmesh") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let path = profile_dir.join("popmesh");
    if !path.exists() {
        // Run alone (`cargo test -p popmesh-tests`), nothing has built the binary yet.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "-p", "popmesh-node", "--bin", "popmesh"])
            .status()
            .expect("cargo runs");
        assert!(built.success(), "building the popmesh binary failed");
    }
    path
}

/// Says a test was skipped, where a person running `cargo test` sees it: written to the process's stderr directly,
/// past the test harness's capture (which would swallow an `eprintln!` of a passing test).
pub fn skipped(why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// Runs `popmesh ARGS...` to completion.
pub fn popmesh(args: &[&str]) -> (bool, String, String) {
    popmesh_env(args, &[])
}

/// [`popmesh`] with environment variables (such as `POPMESH_TOKEN`).
pub fn popmesh_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(binary())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("popmesh runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A free port below Linux's ephemeral range (32768 and up), so an outgoing connection's source port cannot take
/// it between this check and the daemon's bind. Each test process starts at its own offset.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 120) * 100;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (base + n % 12_000) as u16;
        if port < 32_000 && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A scratch directory removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "popmesh-{label}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("POPMESH_KEEP_SCRATCH").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One device's data directory and ports.
#[derive(Debug, Clone)]
pub struct Device {
    pub name: String,
    pub data: PathBuf,
    pub api: SocketAddr,
    pub p2p: u16,
    /// A client token the test's requests carry (an API off loopback needs one); else the run's local secret.
    pub token: Option<String>,
}

impl Device {
    pub fn new(root: &Path, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            data: root.join(name),
            api: SocketAddr::from(([127, 0, 0, 1], free_port())),
            p2p: free_port(),
            token: None,
        }
    }

    pub fn addr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}", self.p2p)
    }

    pub fn data_str(&self) -> &str {
        self.data.to_str().expect("utf-8 path")
    }

    /// The device id, from the device's key file.
    pub fn device_id(&self) -> String {
        let seed = std::fs::read_to_string(self.data.join("keys/device.key")).expect("device.key");
        let seed = popmesh_crdt::identity::hex_decode::<32>(seed.trim()).expect("hex");
        popmesh_crdt::SecretKey::from_seed(seed).public().to_hex()
    }
}

/// A raw HTTP answer.
#[derive(Debug)]
pub struct Raw {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A site under test: an edge box that created it, and the devices that joined.
pub struct Site {
    pub scratch: Scratch,
    pub edge: Device,
}

impl Site {
    /// `popmesh site init`: the edge box creates the site.
    pub fn create(label: &str) -> Self {
        let scratch = Scratch::new(label);
        let edge = Device::new(&scratch.0, "edge-1");
        let (ok, out, err) = popmesh(&[
            "site",
            "init",
            "--data",
            edge.data_str(),
            "--name",
            "Harbour Market",
            "--device-name",
            "edge-1",
        ]);
        assert!(ok, "site init failed: {out}{err}");
        Self { scratch, edge }
    }

    /// `popmesh site invite` on the edge box, with the edge's mesh address as bootstrap.
    pub fn invite(&self, role: &str) -> String {
        let (ok, out, err) = popmesh(&[
            "site",
            "invite",
            "--data",
            self.edge.data_str(),
            "--role",
            role,
            "--bootstrap",
            &self.edge.addr(),
        ]);
        assert!(ok, "site invite failed: {err}");
        out.trim().to_owned()
    }

    /// `popmesh join` for a new device named `name`.
    pub fn join(&self, role: &str, name: &str) -> Device {
        let token = self.invite(role);
        let device = Device::new(&self.scratch.0, name);
        let (ok, out, err) =
            popmesh(&["join", &token, "--data", device.data_str(), "--name", name]);
        assert!(ok, "join failed: {out}{err}");
        device
    }

    pub fn root(&self) -> &Path {
        &self.scratch.0
    }
}

/// A running `popmesh run`, killed with SIGKILL when dropped.
pub struct Node {
    pub device: Device,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    /// Starts the daemon and waits until its API answers.
    pub fn start(device: &Device, bootstrap: &[&Device]) -> Self {
        Self::start_with(device, bootstrap, &[])
    }

    pub fn start_with(device: &Device, bootstrap: &[&Device], extra: &[&str]) -> Self {
        Self::start_env(device, bootstrap, extra, &[])
    }

    /// [`Node::start_with`] with environment variables for the daemon.
    pub fn start_env(
        device: &Device,
        bootstrap: &[&Device],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut args: Vec<String> = vec!["--listen".into(), device.addr(), "--no-mdns".into()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        for b in bootstrap {
            args.extend(["--bootstrap".to_owned(), b.addr()]);
        }
        Self::launch_env(device, &[], &args, env)
    }

    /// Runs `WRAPPER... popmesh run --data D --api A ARGS...` (the wrapper is, say, `ip netns exec lab-a`).
    pub fn launch(device: &Device, wrapper: &[&str], args: &[String]) -> Self {
        Self::launch_env(device, wrapper, args, &[])
    }

    pub fn launch_env(
        device: &Device,
        wrapper: &[&str],
        args: &[String],
        env: &[(&str, &str)],
    ) -> Self {
        let log = device
            .data
            .with_extension(format!("log.{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        let file = std::fs::File::create(&log).expect("log file");
        let binary = binary();
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        cmd.args(["run", "--data", device.data_str()])
            .args(["--api", &device.api.to_string()])
            .args(args)
            // Several nodes share this host: each blob endpoint takes a free UDP port unless the test picks one.
            .args(if args.iter().any(|a| a == "--media-port") {
                &[][..]
            } else {
                &["--media-port", "0"][..]
            })
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        let child = cmd.spawn().expect("popmesh run starts");
        let node = Self {
            device: device.clone(),
            child: Some(child),
            log,
        };
        node.wait_for("its API to answer", Duration::from_secs(30), |n| {
            n.client().get("/v1/status").is_ok_and(|a| a.status == 200)
        });
        node
    }

    /// A client of this node as its own CLI is: with the running node's local secret (from `run.json`), so it
    /// works also where the config requires a token on loopback.
    pub fn client(&self) -> Client {
        let mut c = Client::new(self.device.api);
        c.timeout = Duration::from_secs(20);
        c.token = self
            .device
            .token
            .clone()
            .or_else(|| popmesh_node::runfile::local_token(&self.device.data));
        c
    }

    pub fn get(&self, path: &str) -> Value {
        let answer = self.client().get(path).unwrap_or_else(|e| {
            panic!(
                "GET {path} on {}: {e}\n{}",
                self.device.name,
                self.log_tail()
            )
        });
        answer.json()
    }

    pub fn post(&self, path: &str, body: Value) -> Answer {
        self.client().post(path, &body).unwrap_or_else(|e| {
            panic!(
                "POST {path} on {}: {e}\n{}",
                self.device.name,
                self.log_tail()
            )
        })
    }

    /// Publishes manifest `manifest` with one small image blob per name (the first is the fallback), through this
    /// node's API, as an edge box does. Returns the blobs' hashes.
    pub fn publish_images(&self, manifest: &str, names: &[&str]) -> Vec<String> {
        let mut entries = Vec::new();
        let mut hashes = Vec::new();
        for name in names {
            let blob = self
                .client()
                .post_raw("/v1/blobs", format!("image {name}").as_bytes())
                .expect("blob");
            assert_eq!(blob.status, 201, "{}", blob.body);
            let v = blob.json();
            hashes.push(v["hash"].as_str().expect("hash").to_owned());
            entries.push(serde_json::json!({ "name": name, "hash": v["hash"], "size": v["size"], "mime": "image/jpeg", "ttl_ms": 3_600_000u64 }));
        }
        let answer = self.post(
            &format!("/v1/manifests/{manifest}"),
            serde_json::json!({ "entries": entries, "fallback": names.first() }),
        );
        assert_eq!(answer.status, 201, "{}", answer.body);
        hashes
    }

    /// The sum of every series of a Prometheus metric (all label sets).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.client().get("/metrics").expect("metrics").body;
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn put(&self, path: &str, body: Value) -> Answer {
        self.client().put(path, &body).unwrap_or_else(|e| {
            panic!(
                "PUT {path} on {}: {e}\n{}",
                self.device.name,
                self.log_tail()
            )
        })
    }

    /// A raw GET with extra headers, for the media routes: status, headers (lower-case names), body bytes.
    pub fn http(&self, path: &str, headers: &[(&str, &str)]) -> Raw {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(self.device.api).expect("API reachable");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut head = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.device.api
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(token) = self.client().token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("request sent");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("answer read");
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end of headers");
        let text = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = text.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Raw {
            status,
            headers,
            body: raw[split + 4..].to_vec(),
        }
    }

    pub fn status(&self) -> Value {
        self.get("/v1/status")
    }

    /// Tokens of every receipt this node has merged (every page of `GET /v1/receipts`).
    pub fn receipt_tokens(&self) -> Vec<String> {
        self.all_receipts()
            .iter()
            .filter_map(|r| r["token"].as_str().map(str::to_owned))
            .collect()
    }

    /// Every receipt this node has merged, following `next` through the pages; none while it is not ready.
    pub fn all_receipts(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut path = "/v1/receipts?limit=5000".to_owned();
        loop {
            let page = self.get(&path);
            out.extend(page["receipts"].as_array().cloned().unwrap_or_default());
            match page["next"].as_str() {
                Some(next) => path = format!("/v1/receipts?limit=5000&after={next}"),
                None => return out,
            }
        }
    }

    /// Follows `/v1/events` on a thread: every change event's JSON arrives on the returned channel.
    pub fn follow_events(&self) -> std::sync::mpsc::Receiver<Value> {
        use std::io::{BufRead as _, Write as _};
        let addr = self.device.api;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
                return;
            };
            if write!(
                stream,
                "GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .is_err()
            {
                return;
            }
            for line in std::io::BufReader::new(stream).lines() {
                let Ok(line) = line else { return };
                if let Some(data) = line.strip_prefix("data:")
                    && let Ok(event) = serde_json::from_str::<Value>(data.trim())
                    && tx.send(event).is_err()
                {
                    return;
                }
            }
        });
        rx
    }

    pub fn admitted_peers(&self) -> usize {
        self.status()["peers"]
            .as_array()
            .map(|ps| ps.iter().filter(|p| p["admitted"] == true).count())
            .unwrap_or(0)
    }

    /// The device ids (hex) of the admitted links this node holds now.
    pub fn linked_devices(&self) -> std::collections::BTreeSet<String> {
        self.status()["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["admitted"] == true)
            .filter_map(|p| p["device"].as_str().map(str::to_owned))
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("--- last log lines of {} ---\n{tail}", self.device.name)
    }

    /// Polls `cond` every 100 ms until it holds, or panics after `limit` with this node's log.
    pub fn wait_for(&self, what: &str, limit: Duration, mut cond: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{} waited {limit:?} for {what}\n{}",
            self.device.name,
            self.log_tail()
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A show with one slot of `capacity` seats escrowed to the named devices.
pub fn show(id: &str, capacity: u64, grants: &[(&str, u64)]) -> Value {
    let grants: serde_json::Map<String, Value> = grants
        .iter()
        .map(|(n, s)| ((*n).to_owned(), Value::from(*s)))
        .collect();
    serde_json::json!({
        "id": id,
        "name": "Friday Night Market",
        "currency": "EUR",
        "slots": [{ "id": "s1900", "label": "19:00", "starts_at": 1_795_892_400_000u64, "capacity": capacity, "grants": grants }]
    })
}

/// Replaces `from` (which must be there) with `to` in the device's `popmesh.toml`, before the node starts.
pub fn set_config(data: &std::path::Path, from: &str, to: &str) {
    let path = data.join("popmesh.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    assert!(text.contains(from), "{from} in {}", path.display());
    std::fs::write(&path, text.replace(from, to)).expect("config written");
}

pub fn payment(key: &str, amount_minor: u64) -> Value {
    serde_json::json!({ "amount_minor": amount_minor, "currency": "EUR", "idempotency_key": key })
}
