//! The boundary against web pages in a kiosk's browser (issue 15, part 1).
//!
//! A page the kiosk browser opens, from any site, can make that browser send requests to `127.0.0.1:7700`. Three
//! rules keep such a page from reading receipts or changing anything:
//!
//! - **Host allowlist** (against DNS rebinding, where `evil.example` is made to resolve to 127.0.0.1 so the page
//!   reads the API as its own origin): the `Host` header must be a loopback name (`localhost`, `*.localhost`), an IP
//!   address literal (a browser sends one only when the page itself is served from that address), or a name in
//!   `[api] allowed_hosts`. Anything else is a 421 before any handler runs.
//! - **Origin check** on every WebSocket upgrade and every state-changing request (anything but GET, HEAD and
//!   OPTIONS): an `Origin` header, which browsers always send for these, must be this API's own origin (same
//!   scheme-less host and port as `Host`) or one in `[api] allowed_origins`; `Origin: null` never passes. Clients that
//!   are not browsers (the CLI, POS apps) send no Origin and are not affected.
//! - **No state change from a request a browser sends cross-site without a preflight**: a state-changing request
//!   with a body must not carry a CORS-safelisted content type (`text/plain`, `application/x-www-form-urlencoded`,
//!   `multipart/form-data`) or none at all; the API takes `application/json`, and media uploads
//!   `application/octet-stream`.
//!
//! CORS is explicit: no `Access-Control-Allow-*` header is ever sent, unless `[api] allowed_origins` names the
//! origin, which then gets them on its preflight and its answers.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// Who may talk to the API from a browser, from `[api]` in the config.
#[derive(Debug, Clone, Default)]
pub struct BrowserPolicy {
    /// Host names (without port) besides loopback names and IP literals, e.g. `pos.harbour.example`.
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://kiosk.harbour.example`) whose pages may call the API, with CORS.
    pub allowed_origins: Vec<String>,
}

/// The host part of a `Host` header value (`[::1]:7700` -> `::1`, `localhost:7700` -> `localhost`).
fn host_name(value: &str) -> &str {
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    value.rsplit_once(':').map_or(value, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            value
        }
    })
}

impl BrowserPolicy {
    /// Whether a `Host` header names this API rather than somebody else's domain pointed at it.
    pub fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host).trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            return false;
        }
        name == "localhost"
            || name.ends_with(".localhost")
            || name.parse::<IpAddr>().is_ok()
            || self
                .allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&name))
    }

    fn origin_configured(&self, origin: &str) -> bool {
        self.allowed_origins
            .iter()
            .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin))
    }

    /// Whether a page of `origin` may change state through a request addressed to `host`.
    pub fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        // `null` (a sandboxed frame, a file:// page) passes only where the operator named it.
        if self.origin_configured(origin) {
            return true;
        }
        if origin == "null" {
            return false;
        }
        // Same origin: the page was served by this API under the same host and port.
        let Some(host) = host else { return false };
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        authority.is_some_and(|a| a.eq_ignore_ascii_case(host) && self.host_allowed(host))
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Content types a browser sends cross-site without asking first (the CORS-safelisted ones).
fn simple_content_type(value: Option<&str>) -> bool {
    let Some(value) = value else { return true };
    let essence = value.split(';').next().unwrap_or("").trim();
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ]
    .iter()
    .any(|t| essence.eq_ignore_ascii_case(t))
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

/// The middleware: the three rules above, and CORS for configured origins.
pub async fn guard(State(policy): State<Arc<BrowserPolicy>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = header_str(headers, header::HOST).map(str::to_owned);
    if let Some(h) = &host
        && !policy.host_allowed(h)
    {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this API answers for loopback names, IP addresses and [api] allowed_hosts, not Host {}",
                popmesh_crdt::naming::shown(h)
            ),
        );
    }
    let origin = header_str(headers, header::ORIGIN).map(str::to_owned);
    let method = req.method().clone();
    let upgrade = headers.contains_key(header::UPGRADE);
    let changes = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if method == Method::OPTIONS {
        return preflight(&policy, origin.as_deref());
    }
    if (changes || upgrade)
        && let Some(o) = &origin
        && !policy.origin_allowed(o, host.as_deref())
    {
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "a page of {} may not {} this device's API (its own pages and [api] allowed_origins may)",
                popmesh_crdt::naming::shown(o),
                if upgrade {
                    "open a WebSocket to"
                } else {
                    "change state through"
                }
            ),
        );
    }
    if changes {
        let has_body = header_str(headers, header::CONTENT_LENGTH).is_some_and(|l| l != "0")
            || headers.contains_key(header::TRANSFER_ENCODING);
        let content_type = header_str(headers, header::CONTENT_TYPE);
        if (has_body || content_type.is_some()) && simple_content_type(content_type) {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a request that changes state must say Content-Type: application/json (or application/octet-stream \
                 for media): any web page could send this one from another site",
            );
        }
    }
    let cors = origin.filter(|o| policy.origin_configured(o));
    let mut response = next.run(req).await;
    if let Some(o) = cors
        && let Ok(value) = HeaderValue::from_str(&o)
    {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// A CORS preflight: allowed only for `[api] allowed_origins`; everyone else gets no CORS header at all.
fn preflight(policy: &BrowserPolicy, origin: Option<&str>) -> Response {
    match origin {
        Some(o) if policy.origin_configured(o) => {
            let mut r = StatusCode::NO_CONTENT.into_response();
            let h = r.headers_mut();
            if let Ok(value) = HeaderValue::from_str(o) {
                h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
            }
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, PUT"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("content-type, authorization"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
            r
        }
        _ => refuse(
            StatusCode::FORBIDDEN,
            "no cross-origin access to this API (CORS is off unless [api] allowed_origins names the origin)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_addresses_pass_and_a_rebound_domain_does_not() {
        let p = BrowserPolicy {
            allowed_hosts: vec!["pos.harbour.example".into()],
            allowed_origins: vec!["https://kiosk.harbour.example".into()],
        };
        for ok in [
            "127.0.0.1:7700",
            "localhost:7700",
            "localhost",
            "kiosk.localhost:7700",
            "[::1]:7700",
            "192.168.1.20:7700",
            "pos.harbour.example:7700",
            "LOCALHOST.",
        ] {
            assert!(p.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:7700",
            "evil.example",
            "127.0.0.1.evil.example",
            "",
            "localhost.evil.example",
        ] {
            assert!(!p.host_allowed(bad), "{bad}");
        }
        assert!(p.origin_allowed("http://127.0.0.1:7700", Some("127.0.0.1:7700")));
        assert!(!p.origin_allowed("http://127.0.0.1:7701", Some("127.0.0.1:7700")));
        assert!(!p.origin_allowed("http://evil.example", Some("127.0.0.1:7700")));
        assert!(!p.origin_allowed("null", Some("127.0.0.1:7700")));
        assert!(p.origin_allowed("https://kiosk.harbour.example", Some("127.0.0.1:7700")));
        assert!(simple_content_type(Some("text/plain;charset=UTF-8")));
        assert!(simple_content_type(None));
        assert!(!simple_content_type(Some("application/json")));
        assert!(!simple_content_type(Some("application/octet-stream")));
    }
}
