//! The attendee's kiosk: `GET /kiosk` is one offline-first page (plain HTML, CSS and JavaScript embedded in the
//! binary, no build step: `kiosk.js` and `kiosk-view.js` are two classic scripts sharing one scope) with its service worker at `/kiosk-sw.js`, and the suggestions it shows
//! (`GET /v1/suggestions`, `POST /v1/suggestions/feedback`; the bandit is `popmesh_device::suggest`).
//!
//! The page keeps what an attendee answers on the screen's own browser; no request it makes carries a profile
//! (`node/tests/kiosk.rs` records every request and checks).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::wire::{FeedbackBody, FeedbackEvent, SuggestionsJson, SuggestionsQuery};
use super::{Api, ApiError, JsonObject};
use crate::node::{Feedback, Node};

const PAGE: &str = include_str!("kiosk.html");
const SCRIPT: &str = include_str!("kiosk.js");
const VIEW: &str = include_str!("kiosk-view.js");
const STYLE: &str = include_str!("kiosk.css");
const WORKER: &str = include_str!("kiosk-sw.js");

/// Suggestions an answer holds when the screen does not say.
const LIMIT_DEFAULT: usize = 5;

fn asset(mime: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, mime),
            // The service worker keeps its own copy; the browser asks again each time it is online.
            (header::CACHE_CONTROL, "no-cache"),
            // No page of another site frames the kiosk (a booking button under someone else's overlay).
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn view() -> Response {
    asset("text/javascript; charset=utf-8", VIEW)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

pub async fn worker() -> Response {
    asset("text/javascript; charset=utf-8", WORKER)
}

/// `GET /v1/suggestions[?zone=&limit=&show=]`.
#[utoipa::path(
    get,
    path = "/v1/suggestions",
    tag = "suggestions",
    operation_id = "suggestions",
    summary = "What a kiosk suggests now, and others-also-booked past the minimum count",
    params(SuggestionsQuery),
    responses((status = 200, description = "Suggestions, best first", body = SuggestionsJson), crate::api::wire::ErrorAnswer)
)]
pub(super) async fn suggestions(
    State(node): State<Arc<Node>>,
    query: Result<Query<SuggestionsQuery>, QueryRejection>,
) -> Api<Response> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let zone = q.zone.unwrap_or_else(|| "site".to_owned());
    let answer = node
        .suggestions(&zone, q.show.as_deref(), q.limit.unwrap_or(LIMIT_DEFAULT))
        .await?;
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(SuggestionsJson::from(&answer)),
    )
        .into_response())
}

/// `POST /v1/suggestions/feedback`.
#[utoipa::path(
    post,
    path = "/v1/suggestions/feedback",
    tag = "suggestions",
    operation_id = "feedback",
    summary = "Report suggestions shown, or a booking made after one (no attendee)",
    request_body = FeedbackBody,
    responses((status = 202, description = "How many slots were counted", body = Object), crate::api::wire::ErrorAnswer)
)]
pub(super) async fn feedback(
    State(node): State<Arc<Node>>,
    body: Result<JsonObject<FeedbackBody>, ApiError>,
) -> Api<Response> {
    let JsonObject(body) = body?;
    let event = match body.event {
        FeedbackEvent::Shown => Feedback::Shown,
        FeedbackEvent::Booked => Feedback::Booked,
    };
    let items: Vec<(String, String)> = body.items.into_iter().map(|i| (i.show, i.slot)).collect();
    let counted = node
        .tally(&body.zone, event, &items, body.booking_id.as_deref())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "counted": counted }))).into_response())
}
