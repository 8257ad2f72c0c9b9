//! The console's login: a browser signs in once with a client token and then carries a session cookie
//! (`HttpOnly`, `SameSite=Strict`, `Secure` over TLS), so the token is not kept in the page, and a console on an
//! operator's laptop or a kiosk's screen works without loopback.
//!
//! - `POST /v1/login` with `{"token": "popmesh-client1...."}` checks the token as a bearer would be checked (offline,
//!   against the directory), opens a session and answers its role, its expiry and its CSRF token.
//! - Every later request with the cookie is the token's role, re-checked each time (a token revoked or expired
//!   meanwhile ends the session); one that is not a read must also carry `X-CSRF-Token` (a page of another site
//!   cannot read it, so it cannot send it).
//! - `GET /v1/session` gives a reloaded page its CSRF token back; `POST /v1/logout` ends the session.
//!
//! Sessions live in memory: a restart signs everyone out. One token holds at most [`PER_TOKEN_MAX`] (signing in
//! again past that ends its own oldest), so a stolen screen token cannot push operators out; a listener holds at
//! most [`SESSIONS_MAX`], and past that a sign-in is refused (503) rather than ending someone else's session. A
//! session idle for [`IDLE_MS`] ends. Signing out needs no CSRF token: the worst a forged one does is sign out, and
//! the cookie is `SameSite=Strict` anyway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use popmesh_crdt::client_token::{ClientRole, ClientToken};
use serde::Deserialize;
use serde_json::json;

use super::ApiError;
use super::clients::{Caller, ClientGate};
use crate::clock;

/// The session cookie's name.
pub const COOKIE: &str = "popmesh_session";
/// The header a cookie-authenticated request that changes state carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Sessions held at once.
pub const SESSIONS_MAX: usize = 256;
/// Sessions one token holds at once (a laptop, a tablet, a spare browser).
pub const PER_TOKEN_MAX: usize = 8;
/// A session unused this long ends (12 hours: a show day).
pub const IDLE_MS: u64 = 12 * 60 * 60 * 1000;

#[derive(Debug, Clone)]
struct Session {
    role: ClientRole,
    token: Arc<ClientToken>,
    csrf: String,
    expires: u64,
    used: u64,
}

/// The sessions of one listener.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

/// What a session cookie gave a request.
#[derive(Debug)]
pub enum FromCookie {
    /// No cookie, or one this listener does not know (expired, signed out, from before a restart).
    None,
    Valid {
        caller: Caller,
        csrf: String,
        /// When the session ends at the latest (its token's expiry), in Unix milliseconds.
        expires: u64,
    },
}

fn random_hex() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no randomness for a session: {e}"),
        )
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Sessions {
    fn open_session(
        &self,
        role: ClientRole,
        token: Arc<ClientToken>,
        now: u64,
    ) -> Result<(String, Session), ApiError> {
        let id = random_hex()?;
        let session = Session {
            role,
            expires: token.expires_at.0,
            token,
            csrf: random_hex()?,
            used: now,
        };
        let mut open = lock(&self.open);
        open.retain(|_, s| s.expires > now && now.saturating_sub(s.used) < IDLE_MS);
        let same_token: Vec<(String, u64)> = open
            .iter()
            .filter(|(_, s)| s.token.id == session.token.id)
            .map(|(k, s)| (k.clone(), s.used))
            .collect();
        if same_token.len() >= PER_TOKEN_MAX
            && let Some((oldest, _)) = same_token.iter().min_by_key(|(_, used)| *used)
        {
            open.remove(oldest);
        } else if open.len() >= SESSIONS_MAX {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{SESSIONS_MAX} console sessions are open on this listener: sign out elsewhere, or wait for \
                     idle ones to end; scripts can send Authorization: Bearer instead"
                ),
            )
            .with_code("sessions_full"));
        }
        open.insert(id.clone(), session.clone());
        Ok((id, session))
    }

    /// The session a request's cookie names, if it is open and in time (its token is re-checked by the caller).
    pub fn from_headers(&self, headers: &HeaderMap) -> FromCookie {
        let Some(id) = cookie(headers) else {
            return FromCookie::None;
        };
        let now = clock::now().0;
        let mut open = lock(&self.open);
        let Some(s) = open.get_mut(&id) else {
            return FromCookie::None;
        };
        if s.expires <= now || now.saturating_sub(s.used) >= IDLE_MS {
            open.remove(&id);
            return FromCookie::None;
        }
        s.used = now;
        FromCookie::Valid {
            caller: Caller {
                role: s.role,
                token: Some(s.token.clone()),
            },
            csrf: s.csrf.clone(),
            expires: s.expires,
        }
    }

    /// Ends the session a request's cookie names (its token was revoked or expired meanwhile).
    pub fn drop_session(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers) {
            lock(&self.open).remove(&id);
        }
    }

    /// Whether the request carries a session cookie at all (for saying "sign in again" rather than "send a token").
    pub fn has_cookie(headers: &HeaderMap) -> bool {
        cookie(headers).is_some()
    }

    fn close(&self, headers: &HeaderMap) -> bool {
        cookie(headers).is_some_and(|id| lock(&self.open).remove(&id).is_some())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The session id a request's `Cookie` headers carry (64 hex digits; anything else is no session).
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether a cookie-authenticated request that changes state carries its session's CSRF token.
pub fn csrf_ok(headers: &HeaderMap, csrf: &str) -> bool {
    let mut sent = headers.get_all(CSRF_HEADER).iter();
    match (sent.next().and_then(|v| v.to_str().ok()), sent.next()) {
        (Some(v), None) => super::clients::same_secret(v.trim(), csrf),
        _ => false,
    }
}

fn set_cookie(gate: &ClientGate, value: &str, max_age_secs: u64) -> HeaderValue {
    let secure = if gate.policy.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("popmesh_session=; Max-Age=0"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    token: String,
}

/// `POST /v1/login`.
#[utoipa::path(
    post,
    path = "/v1/login",
    tag = "console",
    operation_id = "login",
    summary = "Sign a browser in with a client token",
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, description = "The session's role and CSRF token (a cookie is set)", body = Object), crate::api::wire::ErrorAnswer)
)]
pub async fn login(
    State(gate): State<ClientGate>,
    body: Result<super::JsonObject<LoginBody>, ApiError>,
) -> Result<Response, ApiError> {
    let super::JsonObject(body) = body?;
    let refused = |why: String| {
        ApiError::new(StatusCode::UNAUTHORIZED, format!("sign-in refused: {why}"))
            .with_code("unauthorized")
    };
    let token = ClientToken::from_text(body.token.trim()).map_err(|e| {
        tracing::warn!("console sign-in refused: {e}");
        refused(e.to_string())
    })?;
    let role = gate
        .node
        .check_client_token(&token)
        .map_err(ApiError::from)?
        .map_err(|e| {
            gate.node.note_client_refused(false);
            tracing::warn!(label = %token.label, "console sign-in refused: {e}");
            refused(e.to_string())
        })?;
    let now = clock::now().0;
    let (label, token_id) = (token.label.clone(), token.id_hex());
    let (id, session) = gate.sessions.open_session(role, Arc::new(token), now)?;
    tracing::info!(role = role.as_str(), %label, token = %token_id, "console sign-in");
    let max_age = session.expires.saturating_sub(now) / 1000;
    let mut answer = Json(json!({
        "role": role.as_str(),
        "csrf": session.csrf,
        "expires_at": session.expires,
    }))
    .into_response();
    answer
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&gate, &id, max_age));
    answer
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(answer)
}

/// `GET /v1/session`: the session's role and CSRF token, for a page that was reloaded.
#[utoipa::path(
    get,
    path = "/v1/session",
    tag = "console",
    operation_id = "session",
    summary = "The session this browser holds",
    responses((status = 200, description = "Its role and CSRF token", body = Object), crate::api::wire::ErrorAnswer)
)]
pub async fn session(
    State(gate): State<ClientGate>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let valid = match gate.sessions.from_headers(&headers) {
        FromCookie::Valid {
            caller,
            csrf,
            expires,
        } if caller.still_valid(&gate.node) => Some((caller.role, csrf, expires)),
        _ => None,
    };
    let Some((role, csrf, expires)) = valid else {
        gate.sessions.drop_session(&headers);
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "not signed in: POST /v1/login with a client token",
        )
        .with_code("unauthorized"));
    };
    let mut answer =
        Json(json!({ "role": role.as_str(), "csrf": csrf, "expires_at": expires })).into_response();
    answer
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(answer)
}

/// `POST /v1/logout`: ends the session (and asks the browser to drop the cookie) whether or not it was open.
#[utoipa::path(
    post,
    path = "/v1/logout",
    tag = "console",
    operation_id = "logout",
    summary = "Sign out",
    responses((status = 200, description = "Signed out", body = Object), crate::api::wire::ErrorAnswer)
)]
pub async fn logout(State(gate): State<ClientGate>, headers: HeaderMap) -> Response {
    let closed = gate.sessions.close(&headers);
    let mut answer = (StatusCode::OK, Json(json!({ "signed_out": closed }))).into_response();
    answer
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&gate, "", 0));
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_cookie_is_read_only_when_it_is_well_formed_and_csrf_must_match_once() {
        let id = "ab".repeat(32);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("theme=dark; {COOKIE}={id}").parse().expect("value"),
        );
        assert_eq!(cookie(&h), Some(id.clone()));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("{COOKIE}=../../etc").parse().expect("value"),
        );
        assert_eq!(cookie(&h), None);
        let mut h = HeaderMap::new();
        h.insert(CSRF_HEADER, "s3cret".parse().expect("value"));
        assert!(csrf_ok(&h, "s3cret"));
        assert!(!csrf_ok(&h, "other"));
        h.append(CSRF_HEADER, "s3cret".parse().expect("value"));
        assert!(!csrf_ok(&h, "s3cret"), "twice");
        assert!(!csrf_ok(&HeaderMap::new(), "s3cret"));
    }
}
