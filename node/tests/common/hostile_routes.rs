//! What the hostile suite sends: for every route of the router, each body field bent one way at a time (wrong
//! types, extreme numbers, odd strings), whole bodies broken, wrong content types, odd path segments, wrong
//! methods, odd queries and headers, and HTTP broken below the API; then mutations combined, drawn from a seed.
//! Each request says whether it must be refused, by the rules the node documents for that field.

#![allow(dead_code)]

use std::time::Duration;

use super::hostile::{Expect, Req, Rng};
use super::hostile_json::{
    Field, J, Num, Str, Ty, broken_bodies, dflt, key, mutations, odd_segments, opt, req,
};

const JSON: Option<&str> = Some("application/json");

/// What the edge box holds for the hostile client to aim at: show `fri` (slot `s1900`), manifest `fri` with
/// `poster.jpg` (`hash`, `size`), a pass (`pass`, for `att-7`), this device's id (`edge`).
#[derive(Debug, Clone)]
pub struct Ctx {
    pub hash: String,
    pub size: u64,
    pub pass: String,
    pub edge: String,
}

/// How a route treats an odd segment in its path.
#[derive(Debug, Clone, Copy)]
enum Seg {
    /// Names something that must exist, or a pseudonym: every odd segment is refused.
    Refused,
    /// A manifest name: one non-empty path segment of sane length, without control characters.
    Manifest,
}

fn seg_expect(rule: Seg, label: &str) -> Expect {
    let fine = matches!(
        label,
        ".." | "%2E%2E" | "unicode" | "lone %" | "%G1" | "%20" | "%25FF"
    );
    match rule {
        Seg::Manifest if fine => Expect::Any,
        _ => Expect::Refuse,
    }
}

/// A route that takes a JSON body: a valid base body (`{n}` numbers each request), and its fields.
#[derive(Debug)]
struct BodyRoute {
    route: &'static str,
    method: &'static str,
    target: String,
    base: String,
    fields: Vec<Field>,
    /// `Refuse` when even the base is refused (a transfer to oneself, a forged revocation).
    base_expect: Expect,
    /// Only requests that must be refused (telemetry: a count lands seconds later).
    refuse_only: bool,
    /// How long the documents must stay quiet after an accepted request.
    settle: Option<Duration>,
    segments: Vec<(usize, Seg)>,
}

impl BodyRoute {
    fn new(route: &'static str, target: &str, base: &str, fields: Vec<Field>) -> Self {
        let method = route.split(' ').next().unwrap_or("POST");
        Self {
            route,
            method,
            target: target.to_owned(),
            base: base.to_owned(),
            fields,
            base_expect: Expect::Any,
            refuse_only: false,
            settle: None,
            segments: Vec::new(),
        }
    }

    fn base(&self, n: &mut usize) -> J {
        *n += 1;
        let text = self.base.replace("{n32}", &format!("{n:032x}"));
        J::parse(&text.replace("{n}", &n.to_string()))
    }

    fn req(&self, what: &str, target: &str, ct: Option<&str>, body: &[u8], expect: Expect) -> Req {
        let mut req = Req::http(self.route, what, self.method, target, ct, Some(body));
        req.settle = self.settle;
        req.expect(expect.max(self.base_expect))
    }
}

fn routes(ctx: &Ctx) -> Vec<BodyRoute> {
    use Num::*;
    use Str::*;
    let slot = "/v1/shows/fri/slots/s1900";
    let payments = BodyRoute::new(
        "POST /v1/payments",
        "/v1/payments",
        r#"{"amount_minor":100,"currency":"EUR","idempotency_key":"hk-{n}","show":"fri"}"#,
        vec![
            req("amount_minor", Ty::Num(Amount)),
            req("currency", Ty::Str(Currency)),
            req("idempotency_key", Ty::Str(IdemKey)),
            opt("show", Ty::Str(Show)),
            opt("attendee", Ty::Str(Pseudonym)),
        ],
    );
    let mut bookings = BodyRoute::new(
        "POST /v1/shows/{show}/slots/{slot}/bookings",
        &format!("{slot}/bookings"),
        r#"{"seats":1,"booking_id":"hb-{n}"}"#,
        vec![
            req("seats", Ty::Num(Seats)),
            opt("booking_id", Ty::Str(Id)),
            opt("attendee", Ty::Str(Pseudonym)),
        ],
    );
    bookings.segments = vec![(3, Seg::Refused), (5, Seg::Refused)];
    let mut transfers = BodyRoute::new(
        "POST /v1/shows/{show}/slots/{slot}/transfers",
        &format!("{slot}/transfers"),
        r#"{"to":"edge-1","seats":1,"transfer_id":"ht-{n}"}"#,
        vec![
            req("to", Ty::Str(Device)),
            req("seats", Ty::Num(Seats)),
            opt("transfer_id", Ty::Str(Id)),
        ],
    );
    transfers.base_expect = Expect::Refuse;
    transfers.segments = vec![(3, Seg::Refused), (5, Seg::Refused)];
    let mut telemetry = BodyRoute::new(
        "POST /v1/telemetry",
        "/v1/telemetry",
        r#"{"counter":"visits","by":1}"#,
        vec![
            req("counter", Ty::Str(Counter)),
            dflt("by", Ty::Num(Signed)),
            opt("attendee", Ty::Str(Pseudonym)),
        ],
    );
    telemetry.refuse_only = true;
    telemetry.settle = Some(Duration::from_secs(6));
    let mut revocations = BodyRoute::new(
        "POST /v1/revocations",
        "/v1/revocations",
        r#"{"revocation":"cG9wbWVzaC1yZXZvY2F0aW9uLWZvcmdlZA"}"#,
        vec![req("revocation", Ty::Str(Base64))],
    );
    revocations.base_expect = Expect::Refuse;
    let passes = BodyRoute::new(
        "POST /v1/passes",
        "/v1/passes",
        r#"{"kind":"attendee","subject":"att-7","show":"fri","valid_secs":3600}"#,
        vec![
            req("kind", Ty::Str(Kind)),
            req("subject", Ty::Str(Pseudonym)),
            opt("show", Ty::Str(Show)),
            req("valid_secs", Ty::Num(Secs)),
        ],
    );
    let pass_revocations = BodyRoute::new(
        "POST /v1/passes/revocations",
        "/v1/passes/revocations",
        r#"{"pass":"{n32}","reason":"lost"}"#,
        vec![req("pass", Ty::Str(PassOrId)), req("reason", Ty::Str(Text))],
    );
    let check_ins = BodyRoute::new(
        "POST /v1/check-ins",
        "/v1/check-ins",
        &format!(r#"{{"pass":"{}","show":"fri"}}"#, ctx.pass),
        vec![req("pass", Ty::Str(Pass)), opt("show", Ty::Str(Show))],
    );
    let shows = BodyRoute::new(
        "POST /v1/shows",
        "/v1/shows",
        r#"{"id":"hs-{n}","name":"Late Market","currency":"EUR","slots":[{"id":"s1","label":"21:00",
            "starts_at":1795900000000,"capacity":10,"grants":{}}]}"#,
        vec![
            req("id", Ty::Str(Id)),
            req("name", Ty::Str(Text)),
            req("currency", Ty::Str(Currency)),
            req("slots", Ty::Arr),
            dflt("slots.0", Ty::Obj),
            req("slots.0.id", Ty::Str(Id)),
            req("slots.0.label", Ty::Str(Text)),
            req("slots.0.starts_at", Ty::Num(Free)),
            req("slots.0.capacity", Ty::Num(Free)),
            dflt("slots.0.grants", Ty::Obj),
            key("slots.0.grants.edge-1", Ty::Num(Below(11))),
            key("slots.0.grants.nobody", Ty::Num(Below(0))),
        ],
    );
    let mut attendees = BodyRoute::new(
        "PUT /v1/attendees/{id}",
        "/v1/attendees/att-1",
        r#"{"consent":{"analytics":false},"fields":{"genre":"jazz"}}"#,
        vec![
            dflt("consent", Ty::Obj),
            opt("consent.analytics", Ty::Bool),
            dflt("fields", Ty::Obj),
            key("fields.genre", Ty::Str(ProfileValue)),
            dflt("visits", Ty::Arr),
        ],
    );
    attendees.segments = vec![(3, Seg::Refused)];
    let mut manifests = BodyRoute::new(
        "POST /v1/manifests/{name}",
        "/v1/manifests/fri",
        &format!(
            r#"{{"entries":[{{"name":"poster.jpg","hash":"{}","size":{},"mime":"image/jpeg","ttl_ms":3600000}}],
            "fallback":"poster.jpg","slices":{{"kiosk":[{{"start":0,"end":4}}]}}}}"#,
            ctx.hash, ctx.size
        ),
        vec![
            dflt("entries", Ty::Arr),
            dflt("entries.0", Ty::Obj),
            req("entries.0.name", Ty::Str(EntryName)),
            req("entries.0.hash", Ty::Str(Hash)),
            req("entries.0.size", Ty::Num(Size(ctx.size))),
            req("entries.0.mime", Ty::Str(Mime)),
            req("entries.0.ttl_ms", Ty::Num(Free)),
            opt("fallback", Ty::Str(Fallback)),
            dflt("slices", Ty::Obj),
            key("slices.kiosk", Ty::Arr),
            key("slices.usher", Ty::Arr),
            req("slices.kiosk.0.start", Ty::Num(Below(4))),
            req("slices.kiosk.0.end", Ty::Num(Above(0))),
        ],
    );
    manifests.segments = vec![(3, Seg::Manifest)];
    let feedback = BodyRoute::new(
        "POST /v1/suggestions/feedback",
        "/v1/suggestions/feedback",
        r#"{"zone":"foyer","event":"shown","items":[{"show":"fri","slot":"s1900"}]}"#,
        vec![
            req("zone", Ty::Str(Id)),
            req("event", Ty::Str(Kind)),
            req("items", Ty::Arr),
            dflt("items.0", Ty::Obj),
            req("items.0.show", Ty::Str(Show)),
            req("items.0.slot", Ty::Str(Id)),
        ],
    );
    vec![
        payments,
        bookings,
        transfers,
        telemetry,
        revocations,
        passes,
        pass_revocations,
        check_ins,
        shows,
        attendees,
        manifests,
        feedback,
    ]
}

const WRONG_CONTENT_TYPES: &[Option<&str>] = &[
    None,
    Some("text/plain"),
    Some("application/x-www-form-urlencoded"),
    Some("multipart/form-data; boundary=x"),
    Some("json"),
];

fn with_segment(target: &str, index: usize, segment: &str) -> String {
    let mut parts: Vec<&str> = target.split('/').collect();
    parts[index] = segment;
    parts.join("/")
}

/// Every single mutation of a body route: each field, the whole body, the content type, the path.
fn body_cases(r: &BodyRoute, n: &mut usize) -> Vec<Req> {
    let mut out = Vec::new();
    for field in &r.fields {
        for m in mutations(field) {
            let mut body = r.base(n);
            body.set(field.path, m.value);
            let mut req = r.req(&m.what, &r.target, JSON, body.render().as_bytes(), m.expect);
            req.unless_show = m.show;
            out.push(req);
        }
        if field.required {
            let mut body = r.base(n);
            body.remove(field.path);
            let what = format!("{} missing", field.path);
            out.push(r.req(
                &what,
                &r.target,
                JSON,
                body.render().as_bytes(),
                Expect::Refuse,
            ));
        }
        let mut body = r.base(n);
        if body.duplicate(field.path) {
            let expect = if field.map_key {
                Expect::Any
            } else {
                Expect::Refuse
            };
            let what = format!("{} twice", field.path);
            out.push(r.req(&what, &r.target, JSON, body.render().as_bytes(), expect));
        }
    }
    for (what, bytes) in broken_bodies(&r.base(n)) {
        out.push(r.req(what, &r.target, JSON, &bytes, Expect::Refuse));
    }
    for ct in WRONG_CONTENT_TYPES {
        let what = format!("Content-Type {}", ct.unwrap_or("missing"));
        out.push(r.req(
            &what,
            &r.target,
            *ct,
            r.base(n).render().as_bytes(),
            Expect::Refuse,
        ));
    }
    for (index, rule) in &r.segments {
        for (label, segment) in odd_segments() {
            let target = with_segment(&r.target, *index, &segment);
            let what = format!("path segment {index} = {label}");
            let body = r.base(n).render();
            out.push(r.req(
                &what,
                &target,
                JSON,
                body.as_bytes(),
                seg_expect(*rule, label),
            ));
        }
    }
    if r.refuse_only {
        out.retain(|q| q.expect == Expect::Refuse);
    }
    out
}

/// Two or three mutations of one body at once, drawn from the seed.
fn combined_cases(routes: &[BodyRoute], rng: &mut Rng, n: &mut usize, count: usize) -> Vec<Req> {
    let mut out = Vec::new();
    while out.len() < count {
        let r = rng.pick(routes);
        let mut body = r.base(n);
        let (mut whats, mut used) = (Vec::new(), Vec::<&str>::new());
        // Refused for a reason of its own, or only because it names a show that may not exist.
        let (mut expect, mut show) = (Expect::Any, None);
        for _ in 0..2 + rng.below(2) {
            let field = rng.pick(&r.fields);
            if used
                .iter()
                .any(|p| p.starts_with(field.path) || field.path.starts_with(p))
            {
                continue;
            }
            used.push(field.path);
            let m = rng.pick(&mutations(field)).clone();
            body.set(field.path, m.value);
            whats.push(m.what);
            match m.show {
                Some(s) if m.expect == Expect::Refuse => show = Some(s),
                _ => expect = expect.max(m.expect),
            }
        }
        let refused = if show.is_some() {
            Expect::Refuse
        } else {
            expect
        };
        let mut req = r.req(
            &whats.join(" & "),
            &r.target,
            JSON,
            body.render().as_bytes(),
            refused,
        );
        if expect == Expect::Any {
            req.unless_show = show;
        }
        if !(r.refuse_only && req.expect == Expect::Any) {
            out.push(req);
        }
    }
    out
}

/// Every route of the router, with the methods it takes.
fn every_route(ctx: &Ctx) -> Vec<(String, &'static [&'static str])> {
    let slot = "/v1/shows/fri/slots/s1900";
    let hash = &ctx.hash;
    let get: &[&str] = &["GET"];
    let post: &[&str] = &["POST"];
    vec![
        ("/v1/status".into(), get),
        ("/v1/payments".into(), post),
        ("/v1/receipts".into(), get),
        ("/v1/shows".into(), &["GET", "POST"]),
        (slot.into(), get),
        (format!("{slot}/bookings"), post),
        (format!("{slot}/transfers"), post),
        ("/v1/telemetry".into(), &["GET", "POST"]),
        ("/v1/revocations".into(), post),
        ("/v1/passes".into(), post),
        ("/v1/passes/revocations".into(), post),
        ("/v1/check-ins".into(), post),
        ("/v1/reconciliations?batch=b1".into(), post),
        ("/v1/documents".into(), get),
        ("/v1/documents/directory".into(), get),
        ("/v1/report".into(), get),
        ("/v1/rehearsals".into(), post),
        ("/v1/rehearsals/0011223344556677".into(), get),
        ("/console".into(), get),
        ("/v1/console".into(), get),
        ("/v1/sync".into(), get),
        ("/v1/attendees/att-1".into(), &["GET", "PUT"]),
        ("/v1/events".into(), get),
        ("/v1/suggestions".into(), get),
        ("/v1/openapi.json".into(), get),
        ("/v1/suggestions/feedback".into(), post),
        ("/kiosk".into(), get),
        ("/kiosk/app.js".into(), get),
        ("/kiosk/view.js".into(), get),
        ("/kiosk/app.css".into(), get),
        ("/kiosk-sw.js".into(), get),
        ("/metrics".into(), get),
        ("/v1/blobs".into(), post),
        (format!("/v1/blobs/{hash}"), get),
        ("/v1/manifests".into(), get),
        ("/v1/manifests/fri".into(), post),
        (format!("/media/{hash}"), get),
        ("/media/by-name/poster.jpg".into(), get),
    ]
}

/// GETs with odd path segments, queries and headers; wrong methods; unknown paths.
fn read_cases(ctx: &Ctx) -> Vec<Req> {
    let mut out = Vec::new();
    let hash = &ctx.hash;
    for (target, allowed) in every_route(ctx) {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "FOO"] {
            if !allowed.contains(&method) {
                let what = format!("{method} {}", target.split('?').next().unwrap_or_default());
                out.push(Req::json("wrong method", &what, method, &target, b"{}"));
            }
        }
    }
    let paths: [(&str, String, &[usize]); 7] = [
        (
            "GET /v1/shows/{show}/slots/{slot}",
            "/v1/shows/fri/slots/s1900".into(),
            &[3, 5],
        ),
        (
            "GET /v1/documents/{*which}",
            "/v1/documents/directory".into(),
            &[3],
        ),
        (
            "GET /v1/rehearsals/{id}",
            "/v1/rehearsals/0011223344556677".into(),
            &[3],
        ),
        ("GET /v1/attendees/{id}", "/v1/attendees/att-1".into(), &[3]),
        ("GET /v1/blobs/{hash}", format!("/v1/blobs/{hash}"), &[3]),
        ("GET /media/{hash}", format!("/media/{hash}"), &[2]),
        (
            "GET /media/by-name/{name}",
            "/media/by-name/poster.jpg".into(),
            &[3],
        ),
    ];
    for (route, target, indices) in &paths {
        for index in *indices {
            for (label, segment) in odd_segments() {
                let what = format!("path segment {index} = {label}");
                out.push(Req::get(
                    route,
                    &what,
                    &with_segment(target, *index, &segment),
                ));
            }
        }
    }
    let tails: &[(&str, &str, &str)] = &[
        (
            "GET /v1/report",
            "/v1/report",
            "?show=%FF ?show= ?show=a&show=b ?shows=fri ?show=fri ?show=%00 ?% ?&&&=&",
        ),
        (
            "GET /v1/documents/{*which}",
            "/v1/documents",
            "/show/fri/../../directory // /show%2Ffri%2Fslot%2Fs1900 /%2E%2E/etc",
        ),
        ("GET /v1/status", "/v1/status", "?x=%FF / // ?verbose=1e400"),
        (
            "GET /v1/receipts",
            "/v1/receipts",
            "?limit=-1 ?limit=18446744073709551616",
        ),
        ("GET /v1/telemetry", "/v1/telemetry", "?counter=%00"),
        ("GET /v1/events", "/v1/events", "? ?since=-1"),
        ("GET /v1/sync", "/v1/sync", "? ?x=1"),
        ("GET /v1/console", "/v1/console", "? ?x=%FF"),
        ("GET /console", "/console", "? ?x=%FF"),
        ("GET /kiosk", "/kiosk", "? ?zone=%FF"),
        (
            "GET /v1/suggestions",
            "/v1/suggestions",
            "? ?zone=%FF ?zone= ?zone=.. ?limit=0 ?limit=-1 ?limit=18446744073709551616 ?show=%00 ?show=nope ?x=1",
        ),
        ("GET /metrics", "/metrics", "? ?name[]=1"),
        ("GET /v1/manifests", "/v1/manifests", "? ?name=%FF"),
        ("GET /v1/shows", "/v1/shows", "? ?id=%00"),
        (
            "unknown path",
            "",
            "/ /v1 /v1/ /v1/nope /V1/STATUS //v1/status /v1/status/extra /v1/shows/fri/slots \
             /v1/shows/fri/slots/s1900/bookings/x /media /media/ /v1/st%FFatus /v1/%00 /.. /v1/../v1/status",
        ),
    ];
    for (route, target, list) in tails {
        for tail in list.split_whitespace() {
            out.push(Req::get(
                route,
                &format!("tail {tail:?}"),
                &format!("{target}{tail}"),
            ));
        }
    }
    let ranges = [
        ("bytes=0-0", "bytes=0-0"),
        ("a start of u64::MAX", "bytes=18446744073709551615-"),
        ("an end of 2^64", "bytes=0-18446744073709551616"),
        ("bytes=-0", "bytes=-0"),
        ("backwards", "bytes=5-1"),
        ("two ranges", "bytes=0-1,2-3"),
        ("items", "items=0-1"),
        ("bytes=--1", "bytes=--1"),
        ("a suffix of u64::MAX", "bytes=-18446744073709551615"),
        ("spaces", "bytes= 1 - 2 "),
    ];
    let media = [
        ("GET /media/{hash}", format!("/media/{hash}")),
        (
            "GET /media/by-name/{name}",
            "/media/by-name/poster.jpg".into(),
        ),
    ];
    for (what, value) in ranges {
        for (route, target) in &media {
            out.push(raw_get(
                route,
                &format!("Range {what}"),
                target,
                &format!("Range: {value}"),
            ));
        }
    }
    for (route, what, target, headers) in [
        (
            "GET /media/{hash}",
            "If-None-Match *",
            &media[0].1,
            "If-None-Match: *",
        ),
        (
            "GET /media/{hash}",
            "If-None-Match garbage",
            &media[0].1,
            "If-None-Match: \"x\",,,\"\"",
        ),
        (
            "GET /media/{hash}",
            "Range of non-ASCII",
            &media[0].1,
            "Range: bytes=\u{ff}-",
        ),
        (
            "GET /v1/sync",
            "an upgrade without a key",
            &"/v1/sync".to_owned(),
            "Upgrade: websocket\r\nConnection: upgrade",
        ),
        (
            "GET /v1/sync",
            "WebSocket version 99",
            &"/v1/sync".to_owned(),
            "Upgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 99\r\nSec-WebSocket-Key: x",
        ),
    ] {
        out.push(raw_get(route, what, target, headers));
    }
    out
}

/// The routes whose body is not JSON: blobs, rehearsals, reconciliations.
fn raw_body_cases() -> Vec<Req> {
    let mut out = Vec::new();
    let blobs: [(&str, Option<&str>, Vec<u8>); 4] = [
        ("an empty blob", None, Vec::new()),
        (
            "a 3 MB blob",
            Some("application/octet-stream"),
            vec![7u8; 3 << 20],
        ),
        ("invalid UTF-8 as JSON", JSON, vec![0xff, 0xfe]),
        ("a JSON array", JSON, b"[]".to_vec()),
    ];
    for (what, ct, body) in blobs {
        out.push(
            Req::http("POST /v1/blobs", what, "POST", "/v1/blobs", ct, Some(&body))
                .expect(Expect::Any),
        );
    }
    let rehearsals: [(&str, Option<&str>, Vec<u8>); 3] = [
        ("no body", None, Vec::new()),
        ("a JSON array", JSON, b"[]".to_vec()),
        ("a 3 MB body", Some("text/plain"), vec![b'x'; 3 << 20]),
    ];
    for (what, ct, body) in rehearsals {
        let req = Req::http(
            "POST /v1/rehearsals",
            what,
            "POST",
            "/v1/rehearsals",
            ct,
            Some(&body),
        );
        out.push(
            req.expect(Expect::Any)
                .settling(Duration::from_millis(1500)),
        );
    }
    let csv = "token,amount_minor,currency,status\npm1-aaaa,100,EUR,settled\n";
    let batch300 = format!("?batch={}", "b".repeat(300));
    let settlements: [(&str, &str, Vec<u8>); 12] = [
        ("a settlement at an edge box", "?batch=b1", csv.into()),
        ("no batch", "", csv.into()),
        ("an empty batch", "?batch=", csv.into()),
        ("batch %FF", "?batch=%FF", csv.into()),
        ("two batches", "?batch=a&batch=b", csv.into()),
        ("an unknown parameter", "?batch=b1&x=1", csv.into()),
        ("a batch of 300 bytes", &batch300, csv.into()),
        ("an empty settlement", "?batch=b1", Vec::new()),
        (
            "amounts of 1e400",
            "?batch=b1",
            csv.replace("100", "1e400").into(),
        ),
        (
            "a NUL in the file",
            "?batch=b1",
            csv.replace(',', "\0").into(),
        ),
        ("a 3 MB line", "?batch=b1", vec![b'x'; 3 << 20]),
        (
            "a file that is not UTF-8",
            "?batch=b1",
            vec![b't', b'\n', 0xff, 0xfe, b'\n'],
        ),
    ];
    for (what, query, body) in settlements {
        let target = format!("/v1/reconciliations{query}");
        out.push(Req::http(
            "POST /v1/reconciliations",
            what,
            "POST",
            &target,
            Some("text/csv"),
            Some(&body),
        ));
    }
    out
}

pub fn raw_get(route: &str, what: &str, target: &str, headers: &str) -> Req {
    let text = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n\r\n"
    );
    Req::raw(route, what, text.into_bytes()).expect(Expect::Any)
}

/// HTTP broken below the API: over-long URLs and heads, bad framing, bytes no request line may hold.
fn malformed_http() -> Vec<Req> {
    let raw = |what: &str, text: String| Req::raw("raw HTTP", what, text.into_bytes());
    let get = |target: String| {
        format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    };
    let post = |headers: &str, body: &str| {
        format!(
            "POST /v1/payments HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Type: application/json\r\n{headers}\r\n\r\n{body}"
        )
    };
    let payment = r#"{"amount_minor":100,"currency":"EUR","idempotency_key":"raw-1","show":"fri"}"#;
    let head = |extra: &str| {
        format!("GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n\r\n")
    };
    vec![
        raw("a query of 16 KB", get(format!("/v1/status?{}", "a".repeat(16 << 10)))).expect(Expect::Any),
        raw("an attendee id of 60 KB", get(format!("/v1/attendees/{}", "x".repeat(60 << 10)))),
        raw("a URI of 70 KB", get(format!("/v1/status?{}", "a".repeat(70 << 10)))).expect(Expect::BelowTheApi),
        raw("a path of 70 KB", get(format!("/{}", "x".repeat(70 << 10)))).expect(Expect::BelowTheApi),
        raw("a request head of 600 KB", get(format!("/v1/attendees/{}", "x".repeat(600 << 10)))).expect(Expect::BelowTheApi),
        raw("a header of 600 KB", head(&format!("X-Pad: {}", "p".repeat(600 << 10)))).expect(Expect::BelowTheApi),
        raw("a control byte in a header", head("If-None-Match: \u{1}")).expect(Expect::BelowTheApi),
        raw("a NUL in the request line", get("/v1/sta\0tus".into())).expect(Expect::BelowTheApi),
        raw("a raw space in the path", get("/v1/sta tus".into())).expect(Expect::BelowTheApi),
        raw("a relative path", get("v1/status".into())).expect(Expect::BelowTheApi),
        raw("a lowercase method", "get /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into()),
        raw("HTTP/1.0 without Host", "GET /v1/status HTTP/1.0\r\n\r\n".into()).expect(Expect::Any),
        raw("an absolute-form URI", get("http://127.0.0.1/v1/status".into())).expect(Expect::Any),
        raw("Content-Length abc", post("Content-Length: abc", payment)).expect(Expect::BelowTheApi),
        raw("Content-Length 2^64", post("Content-Length: 18446744073709551616", payment)).expect(Expect::BelowTheApi),
        raw("two different Content-Lengths", post("Content-Length: 5\r\nContent-Length: 6", payment)).expect(Expect::BelowTheApi),
        raw("Content-Length and chunked", post("Content-Length: 5\r\nTransfer-Encoding: chunked", "0\r\n\r\n")),
        raw("a chunk size of zz", post("Transfer-Encoding: chunked", "zz\r\n{}\r\n0\r\n\r\n")),
        raw("an empty chunked body", post("Transfer-Encoding: chunked", "0\r\n\r\n")),
        raw(
            "a chunked blob with a bad chunk",
            "POST /v1/blobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
             3\r\nabc\r\nzz\r\n"
                .into(),
        ),
    ]
}

/// Every hostile request of the suite (at least `min`), in the order the seed gives.
pub fn hostile_requests(ctx: &Ctx, rng: &mut Rng, min: usize) -> Vec<Req> {
    let routes = routes(ctx);
    let mut n = 0;
    let mut all: Vec<Req> = routes.iter().flat_map(|r| body_cases(r, &mut n)).collect();
    all.extend(read_cases(ctx));
    all.extend(raw_body_cases());
    all.extend(malformed_http());
    let extra = min.saturating_sub(all.len()).max(200);
    all.extend(combined_cases(&routes, rng, &mut n, extra));
    rng.shuffle(&mut all);
    all
}
