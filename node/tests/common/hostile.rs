//! Tools for the hostile-input suite (`hostile_api.rs`): requests as exact bytes over raw TCP, a seeded
//! generator, and the `Probe`, which checks every answer and the node's documents and collects every failure
//! by class instead of stopping at the first.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

/// SplitMix64: small, seeded, the same on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// What a request must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Expect {
    /// Anything but a 5xx (an error still in the JSON shape).
    Any,
    /// A 4xx: the input is wrong, and nothing may change.
    Refuse,
    /// HTTP that hyper refuses before the application sees it (a request line it cannot parse, a head past its
    /// buffer, a URI past the `http` crate's 64 KiB): a 4xx and nothing changed, but hyper's answer has an empty
    /// body, which no handler can change.
    BelowTheApi,
}

/// One hostile request, as exact bytes.
#[derive(Debug, Clone)]
pub struct Req {
    /// The route as the router names it (`POST /v1/shows/{show}/slots/{slot}/bookings`), or a group name.
    pub route: String,
    /// What is hostile about it (`seats = u64::MAX`).
    pub what: String,
    pub label: String,
    pub bytes: Vec<u8>,
    pub expect: Expect,
    /// A GET never changes documents, whatever it answers.
    pub read_only: bool,
    /// Accepted, it changes documents a moment later (rehearsal answers, telemetry flushes): wait until the
    /// documents have been quiet this long.
    pub settle: Option<Duration>,
    /// Refused only while the site has no show of this id (a show that a hostile request wrote is found).
    pub unless_show: Option<String>,
}

impl Req {
    pub fn http(
        route: &str,
        what: &str,
        method: &str,
        target: &str,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> Self {
        let mut head =
            format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        let label = format!(
            "{method} {}{}{}",
            preview(target.as_bytes(), 120),
            content_type.map_or(" (no Content-Type)".to_owned(), |ct| format!(" [{ct}]")),
            body.map_or(String::new(), |b| format!(" {}", preview(b, 160)))
        );
        Self {
            route: route.to_owned(),
            what: what.to_owned(),
            label,
            bytes,
            expect: Expect::Refuse,
            read_only: method == "GET",
            settle: None,
            unless_show: None,
        }
    }

    /// A JSON POST/PUT.
    pub fn json(route: &str, what: &str, method: &str, target: &str, body: &[u8]) -> Self {
        Self::http(
            route,
            what,
            method,
            target,
            Some("application/json"),
            Some(body),
        )
    }

    pub fn get(route: &str, what: &str, target: &str) -> Self {
        Self::http(route, what, "GET", target, None, None).expect(Expect::Any)
    }

    /// Bytes written as they are (malformed HTTP).
    pub fn raw(route: &str, what: &str, bytes: Vec<u8>) -> Self {
        Self {
            route: route.to_owned(),
            what: what.to_owned(),
            label: preview(&bytes, 200),
            read_only: bytes.starts_with(b"GET "),
            bytes,
            expect: Expect::Refuse,
            settle: None,
            unless_show: None,
        }
    }

    pub fn expect(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }

    pub fn settling(mut self, calm: Duration) -> Self {
        self.settle = Some(calm);
        self
    }
}

/// Bytes as printable text, long runs cut.
pub fn preview(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    for &b in bytes.iter().take(max) {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    if bytes.len() > max {
        out.push_str(&format!("…({} bytes)", bytes.len()));
    }
    out
}

/// An answer as it came off the wire.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// `{"error": {"status": N, "code": "...", "message": "..."}}` with `Content-Type: application/json`, N the
    /// status.
    pub fn is_json_error(&self) -> bool {
        let v = self.json();
        let error = &v["error"];
        self.header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json"))
            && v.as_object().is_some_and(|o| o.len() == 1)
            && error["status"].as_u64() == Some(u64::from(self.status))
            && error["code"].as_str().is_some_and(|c| !c.is_empty())
            && error["message"].as_str().is_some_and(|m| !m.is_empty())
    }

    pub fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn describe(&self) -> String {
        format!(
            "{} [{}] {}",
            self.status,
            self.header("content-type").unwrap_or("no Content-Type"),
            preview(&self.body, 200)
        )
    }
}

/// Sends `bytes` on a new connection and reads one answer. Large bodies are written from a second thread, so an
/// answer sent before the body is read still arrives.
pub fn exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Result<Answer, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let writer = if bytes.len() > 64 * 1024 {
        let mut w = stream.try_clone().map_err(|e| e.to_string())?;
        let data = bytes.to_vec();
        Some(std::thread::spawn(move || {
            let _ = w.write_all(&data);
        }))
    } else {
        // A refusal may close the connection before all is written; the answer is still there to read.
        let _ = stream.write_all(bytes);
        None
    };
    let answer = read_answer(&mut stream);
    let _ = stream.shutdown(Shutdown::Both);
    if let Some(w) = writer {
        let _ = w.join();
    }
    answer
}

fn read_answer(stream: &mut TcpStream) -> Result<Answer, String> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let mut parsed: Option<(Answer, usize)> = None;
    loop {
        if let Some((answer, start)) = &parsed {
            let body = &raw[*start..];
            let done = if answer
                .header("content-type")
                .is_some_and(|ct| ct.starts_with("text/event-stream"))
            {
                true
            } else if let Some(len) = answer
                .header("content-length")
                .and_then(|l| l.parse::<usize>().ok())
            {
                body.len() >= len
            } else if answer
                .header("transfer-encoding")
                .is_some_and(|t| t.contains("chunked"))
            {
                dechunk(body).is_some()
            } else {
                false
            };
            if done {
                break;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if parsed.is_some() => {
                let _ = e;
                break;
            }
            Err(e) => return Err(format!("read: {e} after {} bytes", raw.len())),
        }
        if parsed.is_none()
            && let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n")
        {
            let head = String::from_utf8_lossy(&raw[..split]).into_owned();
            let mut lines = head.split("\r\n");
            let status = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("no status line in {}", preview(head.as_bytes(), 80)))?;
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            parsed = Some((
                Answer {
                    status,
                    headers,
                    body: Vec::new(),
                },
                split + 4,
            ));
        }
    }
    let (mut answer, start) = parsed
        .ok_or_else(|| format!("the connection closed after {} bytes, no answer", raw.len()))?;
    let body = &raw[start..];
    answer.body = if answer
        .header("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        dechunk(body).unwrap_or_else(|| body.to_vec())
    } else {
        body.to_vec()
    };
    Ok(answer)
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = body.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&body[..end])
                .ok()?
                .split(';')
                .next()?
                .trim(),
            16,
        )
        .ok()?;
        body = &body[end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// Every document's heads, by name and id.
pub type Heads = BTreeMap<String, Vec<String>>;

#[derive(Debug, Default)]
struct Class {
    count: usize,
    example: String,
    variants: BTreeSet<String>,
}

/// Sends hostile requests to one node, checks every answer and the node's documents, and keeps every failure.
#[derive(Debug)]
pub struct Probe {
    pub addr: SocketAddr,
    pub seed: u64,
    pub requests: usize,
    pub client_errors: usize,
    pub server_errors: usize,
    pub json_errors: usize,
    pub accepted: usize,
    timeout: Duration,
    heads: Heads,
    failures: BTreeMap<String, Class>,
}

impl Probe {
    /// Waits until the node's documents are quiet, and remembers their heads.
    pub fn new(addr: SocketAddr, seed: u64) -> Self {
        let mut probe = Self {
            addr,
            seed,
            requests: 0,
            client_errors: 0,
            server_errors: 0,
            json_errors: 0,
            accepted: 0,
            timeout: Duration::from_secs(10),
            heads: Heads::new(),
            failures: BTreeMap::new(),
        };
        probe.heads = probe.quiet(Duration::from_secs(2), Duration::from_secs(20));
        probe
    }

    /// The heads of every document (`GET /v1/documents`).
    pub fn heads(&self) -> Option<Heads> {
        let req = Req::get("-", "-", "/v1/documents");
        let answer = exchange(self.addr, &req.bytes, self.timeout).ok()?;
        let docs = answer.json()["documents"].as_array()?.clone();
        Some(
            docs.iter()
                .map(|d| {
                    let heads = d["heads"]
                        .as_array()
                        .map(|hs| {
                            hs.iter()
                                .filter_map(|h| h.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    (
                        format!(
                            "{} ({})",
                            d["name"].as_str().unwrap_or("?"),
                            d["id"].as_str().unwrap_or("?")
                        ),
                        heads,
                    )
                })
                .collect(),
        )
    }

    /// The ids of the site's shows (`GET /v1/shows`).
    pub fn shows(&self) -> Vec<String> {
        let req = Req::get("-", "-", "/v1/shows");
        exchange(self.addr, &req.bytes, self.timeout)
            .ok()
            .and_then(|a| {
                a.json()["shows"]
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
            })
            .unwrap_or_default()
    }

    /// Heads once they have not changed for `calm` (or after `limit`, the latest).
    pub fn quiet(&self, calm: Duration, limit: Duration) -> Heads {
        let start = Instant::now();
        let mut last = self.heads().unwrap_or_default();
        let mut since = Instant::now();
        while start.elapsed() < limit && since.elapsed() < calm {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.heads().unwrap_or_default();
            if now != last {
                last = now;
                since = Instant::now();
            }
        }
        last
    }

    /// Records a failure in `class`; the first example is kept, every variant named.
    pub fn fail(&mut self, class: &str, variant: &str, example: String) {
        let entry = self.failures.entry(class.to_owned()).or_default();
        entry.count += 1;
        if entry.example.is_empty() {
            entry.example = example;
        }
        if entry.variants.len() < 12 {
            entry.variants.insert(variant.to_owned());
        }
    }

    /// Sends `req`, checks its answer (no 5xx, errors in the JSON shape, refusals where expected) and that a
    /// refused request or a GET left every document as it was.
    pub fn send(&mut self, req: &Req) -> Option<Answer> {
        let expect = match &req.unless_show {
            Some(show) if req.expect == Expect::Refuse && self.shows().contains(show) => {
                Expect::Any
            }
            _ => req.expect,
        };
        self.requests += 1;
        let result = exchange(self.addr, &req.bytes, self.timeout);
        let route = req.route.as_str();
        match &result {
            Err(e) => self.fail(
                &format!("{route}: no answer"),
                &req.what,
                format!("{}\n      -> {e}", req.label),
            ),
            Ok(a) => {
                let example = format!("{}\n      -> {}", req.label, a.describe());
                if a.status >= 400 && a.is_json_error() {
                    self.json_errors += 1;
                }
                if a.status >= 500 {
                    self.server_errors += 1;
                    let class = if a.status == 503 && a.is_json_error() {
                        format!("{route}: 503 from a healthy idle node")
                    } else {
                        format!("{route}: {} (a 5xx)", a.status)
                    };
                    self.fail(&class, &req.what, example);
                } else if a.status >= 400 {
                    self.client_errors += 1;
                    if !a.is_json_error() && expect != Expect::BelowTheApi {
                        let class = format!("{route}: {} without the JSON error body", a.status);
                        self.fail(&class, &req.what, example);
                    }
                } else {
                    self.accepted += 1;
                    if matches!(expect, Expect::Refuse | Expect::BelowTheApi) {
                        let class = format!("{route}: hostile input accepted ({})", a.status);
                        self.fail(&class, &req.what, example);
                    }
                }
            }
        }
        let refused = result.as_ref().map_or(true, |a| a.status >= 400);
        let after = if let Some(calm) = req.settle.filter(|_| !refused) {
            self.quiet(calm, calm + Duration::from_secs(8))
        } else {
            match self.heads() {
                Some(h) => h,
                None => {
                    self.fail(
                        "the node stopped answering GET /v1/documents",
                        &req.what,
                        req.label.clone(),
                    );
                    self.quiet(Duration::from_secs(1), Duration::from_secs(5))
                }
            }
        };
        if (refused || req.read_only) && after != self.heads {
            let changed: Vec<&String> = after
                .iter()
                .filter(|(k, v)| self.heads.get(*k) != Some(*v))
                .map(|(k, _)| k)
                .chain(self.heads.keys().filter(|k| !after.contains_key(*k)))
                .collect();
            let what = if refused {
                "refused, yet changed documents"
            } else {
                "a GET changed documents"
            };
            let answer = result.as_ref().map_or_else(Clone::clone, Answer::describe);
            let example = format!(
                "{}\n      -> {answer}\n      changed: {changed:?}",
                req.label
            );
            self.fail(&format!("{route}: {what}"), &req.what, example);
        }
        self.heads = after;
        result.ok()
    }

    /// Takes `heads` as the documents' state from now on (after a story's own writes).
    pub fn rebase(&mut self, heads: Heads) {
        self.heads = heads;
    }

    /// Records a failed expectation of a story (not of the generic checks).
    pub fn check(&mut self, ok: bool, class: &str, example: impl FnOnce() -> String) {
        if !ok {
            self.fail(class, "-", example());
        }
    }

    /// Prints the summary and every failing class with one example; fails if there is any.
    pub fn finish(self, title: &str) {
        println!(
            "{title}: {} requests, {} 4xx, {} 5xx, {} JSON errors",
            self.requests, self.client_errors, self.server_errors, self.json_errors
        );
        if self.failures.is_empty() {
            return;
        }
        let mut report = String::new();
        for (class, c) in &self.failures {
            report.push_str(&format!(
                "FAIL {class} ({} requests)\n    e.g. {}\n    variants: {}\n",
                c.count,
                c.example,
                c.variants.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        println!("{report}");
        panic!(
            "{title}: {} failing classes (seed {}, POPMESH_HOSTILE_SEED replays it):\n{}",
            self.failures.len(),
            self.seed,
            self.failures.keys().cloned().collect::<Vec<_>>().join("\n")
        );
    }
}
