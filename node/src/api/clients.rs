//! Who may call which route (issue 15, part 2): every request carries a role, and every route admits some roles.
//!
//! - A request with `Authorization: Bearer popmesh-client1....` carries the role of that client token
//!   (`popmesh_crdt::client_token`), checked offline against this device's directory replica: an enrolled,
//!   unrevoked edge box or origin signed it, it has not expired, and the directory does not revoke it.
//! - `Authorization: Bearer local.<secret>` is the CLI on this device: the secret is this run's, in `run.json`
//!   (mode 0600), so only this device's own user has it. It is an operator.
//! - A request with neither is an operator only from loopback and only while `[api] loopback_without_token` is on
//!   (the default, so a kiosk's own browser and the CLI keep working); anything else is refused with a 401 that says
//!   how to get a token.
//!
//! Then the route's roles ([`allowed`]) decide: a kiosk-screen token reads manifests, media and slots, checks
//! passes in and books, and a payment answers 403. A route not in the table is the operator's.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use popmesh_crdt::client_token::{ClientRole, ClientToken};

use super::ApiError;
use crate::node::Node;

/// How the API treats clients without a token, from `[api]` in the config.
#[derive(Debug, Clone)]
pub struct ClientPolicy {
    /// Whether a request from loopback without a token is an operator's.
    pub loopback_without_token: bool,
    /// This run's local secret (`runfile::RunFile::local_secret`), if the CLI is to reach the node with it.
    pub local_secret: Option<String>,
    /// Whether session cookies are marked `Secure` (the TLS listener's are).
    pub secure_cookies: bool,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        Self {
            loopback_without_token: true,
            local_secret: None,
            secure_cookies: false,
        }
    }
}

/// The guard's state: the node (for its directory replica) and the policy.
#[derive(Clone)]
pub struct ClientGate {
    pub node: Arc<Node>,
    pub policy: Arc<ClientPolicy>,
    /// The console's sign-in sessions on this listener (`api/sessions.rs`).
    pub sessions: Arc<super::sessions::Sessions>,
}

impl std::fmt::Debug for ClientGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientGate")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// The role a request was let in with, and the token that gave it (an extension, for handlers that care: a
/// long-lived session re-checks the token, so one revoked or expired meanwhile ends it).
#[derive(Debug, Clone)]
pub struct Caller {
    pub role: ClientRole,
    pub token: Option<Arc<ClientToken>>,
}

/// How often a long-lived session (`/v1/events`, `/v1/sync`) re-checks the token it was opened with.
pub const RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

impl Caller {
    /// Whether the token this session was opened with is still good (no token: loopback or the local secret,
    /// which last as long as the run).
    pub fn still_valid(&self, node: &Node) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        node.check_client_token(token).is_ok_and(|r| r.is_ok())
    }
}

/// The subprotocol prefix a browser's WebSocket carries its token in (browsers cannot set headers on a WebSocket).
pub const WS_TOKEN_PREFIX: &str = "popmesh.token.";

/// What a request says about who it is.
#[derive(Debug, PartialEq, Eq)]
enum Credential {
    None,
    Bearer(String),
    /// An `Authorization` header this API does not take (another scheme, twice, not text): refused, never read
    /// as "no token".
    Unusable(&'static str),
}

/// The bearer token of a request: the `Authorization` header, or on a WebSocket upgrade (a browser cannot set
/// headers there) a subprotocol `popmesh.token.<token>`.
fn credential(headers: &HeaderMap) -> Credential {
    let mut auth = headers.get_all(header::AUTHORIZATION).iter();
    if let Some(v) = auth.next() {
        if auth.next().is_some() {
            return Credential::Unusable("send one Authorization header, not several");
        }
        let Ok(v) = v.to_str() else {
            return Credential::Unusable("the Authorization header is not text");
        };
        let v = v.trim();
        return match v.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => {
                Credential::Bearer(v[7..].trim().to_owned())
            }
            _ => Credential::Unusable("the Authorization scheme this API takes is Bearer"),
        };
    }
    if !headers.contains_key(header::UPGRADE) {
        return Credential::None;
    }
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(WS_TOKEN_PREFIX).map(str::to_owned))
        .map_or(Credential::None, Credential::Bearer)
}

fn unauthorized(message: String) -> Box<Response> {
    let mut answer = ApiError::new(StatusCode::UNAUTHORIZED, message)
        .with_code("unauthorized")
        .into_response();
    answer.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer realm=\"popmesh\""),
    );
    Box::new(answer)
}

/// Compares two secrets in time that does not depend on where they differ.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Which role the request carries, or the answer that refuses it.
fn role_of(gate: &ClientGate, req: &Request) -> Result<Caller, Box<Response>> {
    // `to_canonical`: on a dual-stack listener an IPv4 client arrives as ::ffff:127.0.0.1.
    let loopback = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|c| c.0.ip().to_canonical().is_loopback());
    let token = match credential(req.headers()) {
        Credential::Bearer(token) => token,
        Credential::Unusable(why) => return Err(unauthorized(why.into())),
        Credential::None => {
            // A browser signed in at `/v1/login`: its cookie, and for a request that changes state its CSRF token.
            if let super::sessions::FromCookie::Valid { caller, csrf, .. } =
                gate.sessions.from_headers(req.headers())
            {
                if !caller.still_valid(&gate.node) {
                    gate.sessions.drop_session(req.headers());
                    return Err(unauthorized(
                        "the token this session was signed in with is revoked or expired: sign in again".into(),
                    ));
                }
                let reads = matches!(*req.method(), Method::GET | Method::HEAD);
                if !reads && !super::sessions::csrf_ok(req.headers(), &csrf) {
                    return Err(Box::new(
                        ApiError::new(
                            StatusCode::FORBIDDEN,
                            format!(
                                "a signed-in request that changes something carries the session's CSRF token in \
                                 {} (from POST /v1/login or GET /v1/session)",
                                super::sessions::CSRF_HEADER
                            ),
                        )
                        .with_code("csrf")
                        .into_response(),
                    ));
                }
                return Ok(caller);
            }
            if loopback && gate.policy.loopback_without_token {
                return Ok(Caller {
                    role: ClientRole::Operator,
                    token: None,
                });
            }
            if super::sessions::Sessions::has_cookie(req.headers()) {
                return Err(unauthorized(
                    "this console session has ended (signed out, idle, or from before a restart): sign in again at \
                     /console, or send Authorization: Bearer"
                        .into(),
                ));
            }
            return Err(unauthorized(
                "this API needs a client token: send Authorization: Bearer popmesh-client1...., which an \
                 operator issues with `popmesh token issue --role ROLE` on the edge box or the origin"
                    .into(),
            ));
        }
    };
    if let Some(secret) = token.strip_prefix(crate::runfile::LOCAL_TOKEN_PREFIX) {
        let ours = gate.policy.local_secret.as_deref();
        if loopback && ours.is_some_and(|s| same_secret(s, secret)) {
            return Ok(Caller {
                role: ClientRole::Operator,
                token: None,
            });
        }
        return Err(unauthorized(
            "that local token is not this run's (it comes from run.json of the running node, on this device only)"
                .into(),
        ));
    }
    let token = ClientToken::from_text(&token).map_err(|e| unauthorized(e.to_string()))?;
    let role = gate
        .node
        .check_client_token(&token)
        .map_err(|e| Box::new(ApiError::from(e).into_response()))?
        .map_err(|e| unauthorized(format!("the client token is refused: {e}")))?;
    Ok(Caller {
        role,
        token: Some(Arc::new(token)),
    })
}

pub async fn guard(State(gate): State<ClientGate>, mut req: Request, next: Next) -> Response {
    let caller = match role_of(&gate, &req) {
        Ok(caller) => caller,
        Err(answer) => {
            gate.node.note_client_refused(false);
            return *answer;
        }
    };
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let role = caller.role;
    let roles = allowed(req.method(), &path);
    if !roles.contains(&role) {
        gate.node.note_client_refused(true);
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "a {role} client may not {} {path}; it takes {}",
                req.method(),
                names.join(" or ")
            ),
        )
        .with_code("role_forbidden")
        .into_response();
    }
    let by_cookie = caller.token.is_some()
        && !req.headers().contains_key(header::AUTHORIZATION)
        && path.starts_with("/v1/");
    req.extensions_mut().insert(caller);
    let mut answer = next.run(req).await;
    // What a signed-in browser reads is not for its cache (a shared kiosk's next user).
    if by_cookie && !answer.headers().contains_key(header::CACHE_CONTROL) {
        answer.headers_mut().insert(
            header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        );
    }
    answer
}

/// The roles a route admits, by method and the router's name for the path.
pub fn allowed(method: &Method, path: &str) -> &'static [ClientRole] {
    use ClientRole::{Operator, Pos, ReadOnly, Screen};
    const EVERYONE: &[ClientRole] = &[Operator, Pos, Screen, ReadOnly];
    // Selling seats and admitting attendees: the kiosk flow.
    const SELLERS: &[ClientRole] = &[Operator, Pos, Screen];
    const MONEY: &[ClientRole] = &[Operator, Pos];
    const READ_MONEY: &[ClientRole] = &[Operator, Pos, ReadOnly];
    const READ_SITE: &[ClientRole] = &[Operator, ReadOnly];
    const OPERATOR: &[ClientRole] = &[Operator];
    let read = matches!(*method, Method::GET | Method::HEAD);
    match (read, path) {
        (true, "/v1/status" | "/v1/shows" | "/v1/shows/{show}/slots/{slot}") => EVERYONE,
        (
            true,
            "/v1/manifests" | "/v1/blobs/{hash}" | "/media/{hash}" | "/media/by-name/{name}",
        ) => EVERYONE,
        // Screens sync manifests and slots live; the share policy keeps everything else from them.
        (true, "/v1/sync" | "/v1/events") => EVERYONE,
        // Suggestions name slots and aggregate counts only; a screen reports what it showed (no attendee).
        (true, "/v1/suggestions" | "/v1/openapi.json") => EVERYONE,
        (false, "/v1/suggestions/feedback") => SELLERS,
        (false, "/v1/payments" | "/v1/payments/batch") => MONEY,
        (false, "/v1/passes") => MONEY,
        (true, "/v1/receipts" | "/v1/report") => READ_MONEY,
        (false, "/v1/shows/{show}/slots/{slot}/bookings" | "/v1/check-ins" | "/v1/telemetry") => {
            SELLERS
        }
        // Profiles are personal data kept on this device: not for a screen.
        (_, "/v1/attendees/{id}") => MONEY,
        (
            true,
            "/v1/telemetry"
            | "/v1/documents"
            | "/v1/documents/{*which}"
            | "/v1/devices/{device}/issued"
            | "/v1/rehearsals/{id}"
            | "/v1/warehouse"
            | "/metrics",
        ) => READ_SITE,
        _ => OPERATOR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_screen_books_and_reads_but_takes_no_payment_and_changes_no_show() {
        let screen = ClientRole::Screen;
        assert!(allowed(&Method::GET, "/v1/shows/{show}/slots/{slot}").contains(&screen));
        assert!(allowed(&Method::POST, "/v1/shows/{show}/slots/{slot}/bookings").contains(&screen));
        assert!(!allowed(&Method::POST, "/v1/payments").contains(&screen));
        assert!(!allowed(&Method::POST, "/v1/payments/batch").contains(&screen));
        assert!(allowed(&Method::POST, "/v1/payments/batch").contains(&ClientRole::Pos));
        assert!(!allowed(&Method::GET, "/v1/receipts").contains(&screen));
        assert!(!allowed(&Method::POST, "/v1/shows").contains(&screen));
        assert!(!allowed(&Method::POST, "/v1/revocations").contains(&ClientRole::Pos));
        assert!(!allowed(&Method::POST, "/v1/telemetry").contains(&ClientRole::ReadOnly));
        assert_eq!(
            allowed(&Method::DELETE, "/v1/anything"),
            &[ClientRole::Operator]
        );
        assert!(allowed(&Method::HEAD, "/media/{hash}").contains(&ClientRole::ReadOnly));
    }

    #[test]
    fn a_bearer_comes_from_the_header_or_a_websocket_subprotocol() {
        let bearer = |t: &str| Credential::Bearer(t.into());
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().expect("value"));
        assert_eq!(credential(&h), bearer("abc"));
        h.append(header::AUTHORIZATION, "Bearer def".parse().expect("value"));
        assert!(
            matches!(credential(&h), Credential::Unusable(_)),
            "two headers"
        );
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic YTpi".parse().expect("value"));
        assert!(
            matches!(credential(&h), Credential::Unusable(_)),
            "another scheme"
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "popmesh.v1, popmesh.token.xyz".parse().expect("value"),
        );
        assert_eq!(
            credential(&h),
            Credential::None,
            "a subprotocol outside an upgrade"
        );
        h.insert(header::UPGRADE, "websocket".parse().expect("value"));
        assert_eq!(credential(&h), bearer("xyz"));
        assert_eq!(credential(&HeaderMap::new()), Credential::None);
        assert!(
            same_secret("abcd", "abcd") && !same_secret("abcd", "abce") && !same_secret("a", "ab")
        );
    }
}
