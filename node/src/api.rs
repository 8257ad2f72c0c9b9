//! The local HTTP API for kiosk and POS apps, under `/v1`, plus `/metrics`.
//!
//! Every error is a JSON body `{"error": {"status": 409, "message": "..."}}` that says what was wrong. Fixed names
//! that apps rely on: `GET /v1/status`, `POST /v1/payments`, `GET /v1/receipts`, `GET /metrics`, and the media
//! routes of [`media`] (`GET /media/{hash}`, `GET /media/by-name/{name}`).

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use popmesh_crdt::enrollment::Revocation;
use serde_json::json;

mod access;
mod body;
mod browser;
pub mod clients;
pub mod console;
mod errors;
pub mod kiosk;
pub mod media;
mod money;
pub mod openapi;
pub mod screens;
pub mod sessions;
pub mod tls;
pub mod warehouse;
pub mod wire;

pub use body::{JsonObject, URI_BYTES_MAX};
pub use browser::BrowserPolicy;
pub use clients::ClientPolicy;

use crate::node::Node;
use wire::*;

/// The longest error message an answer carries, in bytes.
const MESSAGE_BYTES_MAX: usize = 1000;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    /// A stable name for what went wrong, for clients to match on (`api/errors.rs` lists them).
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let mut message: String = message.into();
        // An error never echoes a huge input back (serde quotes the offending value whole).
        if message.len() > MESSAGE_BYTES_MAX {
            let mut cut = MESSAGE_BYTES_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str("...");
        }
        Self {
            status,
            code: default_code(status),
            message,
        }
    }

    pub(crate) fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

/// The code of an answer no operation named more precisely (a body that is not JSON, an unknown endpoint).
fn default_code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "invalid",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "not_json",
        StatusCode::UNPROCESSABLE_ENTITY => "refused",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "error",
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = match r {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::JsonSyntaxError(_) | JsonRejection::JsonDataError(_) => {
                StatusCode::BAD_REQUEST
            }
            _ => r.status(),
        };
        Self::new(status, r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, r.body_text())
    }
}

impl ApiError {
    /// The body every error answer carries (and each refused payment of a batch).
    pub(crate) fn body(self) -> ErrorJson {
        ErrorJson {
            error: ErrorDetail {
                status: self.status.as_u16(),
                code: self.code,
                message: self.message,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        (status, Json(self.body())).into_response()
    }
}

type Api<T> = Result<T, ApiError>;

/// The API with the default browser policy (loopback names and IP addresses; no other origin).
pub fn router(node: Arc<Node>) -> Router {
    router_with(node, BrowserPolicy::default())
}

/// The API, guarded against web pages of other sites by `browser` (see `api/browser.rs`), with loopback open to
/// clients without a token.
pub fn router_with(node: Arc<Node>, browser: BrowserPolicy) -> Router {
    router_guarded(node, browser, ClientPolicy::default())
}

/// The API, guarded against web pages of other sites by `browser` and against clients without the role a route
/// needs by `clients` (see `api/clients.rs`). Serve it with `into_make_service_with_connect_info::<SocketAddr>`,
/// or no request counts as loopback.
pub fn router_guarded(node: Arc<Node>, browser: BrowserPolicy, clients: ClientPolicy) -> Router {
    let gate = clients::ClientGate {
        node: node.clone(),
        policy: Arc::new(clients),
        sessions: Arc::default(),
    };
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/payments", post(money::pay))
        .route("/v1/payments/batch", post(money::pay_batch))
        .route("/v1/receipts", get(receipts))
        .route("/v1/devices/{device}/issued", get(issued))
        .route("/v1/shows", get(shows).post(create_show))
        .route("/v1/shows/{show}/slots/{slot}", get(availability))
        .route("/v1/shows/{show}/slots/{slot}/bookings", post(book))
        .route("/v1/shows/{show}/slots/{slot}/transfers", post(transfer))
        .route("/v1/telemetry", get(counters).post(count))
        .route("/v1/revocations", post(access::revoke))
        .route("/v1/passes", post(access::issue_pass))
        .route("/v1/passes/revocations", post(access::revoke_pass))
        .route("/v1/check-ins", post(access::check_in))
        .route(
            "/v1/reconciliations",
            post(reconcile).layer(axum::extract::DefaultBodyLimit::max(SETTLEMENT_BYTES_MAX)),
        )
        .route("/v1/documents", get(documents))
        .route("/v1/documents/{*which}", get(document))
        .route("/v1/report", get(report))
        .route("/v1/rehearsals", post(call_rehearsal))
        .route("/v1/rehearsals/{id}", get(rehearsal))
        .route("/v1/warehouse", get(warehouse::status_route))
        .route("/v1/warehouse/replay", post(warehouse::replay_route))
        .route("/v1/console", get(console::state))
        .route("/v1/sync", get(screens::upgrade))
        .route(
            "/v1/attendees/{id}",
            get(access::profile).put(access::update_profile),
        )
        .route("/v1/events", get(events))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/suggestions", get(kiosk::suggestions))
        .route("/v1/suggestions/feedback", post(kiosk::feedback))
        .route("/metrics", get(metrics))
        .route("/v1/blobs", post(media::add))
        .route("/v1/blobs/{hash}", get(media::blob_state))
        .route("/v1/manifests", get(media::manifests))
        .route("/v1/manifests/{name}", post(media::publish))
        .route("/media/{hash}", get(media::by_hash))
        .route("/media/by-name/{name}", get(media::by_name))
        // After routing, so the gate knows the route's name (`MatchedPath`); before every handler.
        .route_layer(axum::middleware::from_fn_with_state(
            gate.clone(),
            clients::guard,
        ))
        // Open to every client: the console's page (it holds no data) and its sign-in.
        .route("/console", get(console::page))
        // The attendee's kiosk page and its service worker (they hold no data).
        .route("/kiosk", get(kiosk::page))
        .route("/kiosk/app.js", get(kiosk::script))
        .route("/kiosk/view.js", get(kiosk::view))
        .route("/kiosk/app.css", get(kiosk::style))
        .route("/kiosk-sw.js", get(kiosk::worker))
        .route("/v1/login", post(sessions::login).with_state(gate.clone()))
        .route(
            "/v1/logout",
            post(sessions::logout).with_state(gate.clone()),
        )
        .route("/v1/session", get(sessions::session).with_state(gate))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint; see /v1/status")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .layer(axum::middleware::from_fn(body::door))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(browser),
            browser::guard,
        ))
        .with_state(node)
}

#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "site",
    operation_id = "status",
    summary = "This device, its peers, documents, store health and readiness",
    responses((status = 200, description = "The status", body = Object), crate::api::wire::ErrorAnswer)
)]
async fn status(State(node): State<Arc<Node>>) -> impl IntoResponse {
    Json(node.status().await)
}

/// `GET /v1/receipts[?after=&limit=&device=&show=]`: one page of receipts in (show, device, sequence) order, with
/// `next` for the page after it.
#[utoipa::path(
    get,
    path = "/v1/receipts",
    tag = "money",
    operation_id = "receipts",
    summary = "One page of receipts in (show, device, sequence) order",
    params(ReceiptsQuery),
    responses((status = 200, description = "A page and the cursor of the next", body = ReceiptPageJson), crate::api::wire::ErrorAnswer)
)]
async fn receipts(
    State(node): State<Arc<Node>>,
    query: Result<axum::extract::Query<ReceiptsQuery>, axum::extract::rejection::QueryRejection>,
) -> Api<Response> {
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let device = q
        .device
        .map(|d| {
            popmesh_crdt::DeviceId::from_hex(&d).map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "device must be a device id: 64 hex digits",
                )
            })
        })
        .transpose()?;
    let page = node
        .receipts_page(crate::node::ReceiptQuery {
            after: q.after,
            limit: q.limit,
            device,
            show: q.show,
        })
        .await?;
    Ok(Json(ReceiptPageJson::from(&page)).into_response())
}

/// `GET /v1/devices/{device}/issued`: the device's last receipt sequence number per show, as this device holds
/// its ledgers (what `popmesh site revoke` honours).
#[utoipa::path(
    get,
    path = "/v1/devices/{device}/issued",
    tag = "money",
    operation_id = "issued",
    summary = "The receipt sequence numbers a device has issued, as this device holds them",
    params(("device" = String, Path)),
    responses((status = 200, description = "Sequence numbers", body = Object), crate::api::wire::ErrorAnswer)
)]
async fn issued(
    State(node): State<Arc<Node>>,
    path: Result<Path<String>, PathRejection>,
) -> Api<Response> {
    let Path(device) = path?;
    let device = popmesh_crdt::DeviceId::from_hex(&device).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "device must be a device id: 64 hex digits",
        )
    })?;
    node.money_ready().await?;
    Ok(
        Json(json!({ "device": device.to_hex(), "issued": node.issued_by(device).await? }))
            .into_response(),
    )
}

#[utoipa::path(
    get,
    path = "/v1/shows",
    tag = "shows",
    operation_id = "shows",
    summary = "The site's shows and their slots",
    responses((status = 200, description = "Shows by id", body = Object), crate::api::wire::ErrorAnswer)
)]
async fn shows(State(node): State<Arc<Node>>) -> Api<Response> {
    let view = node.view()?;
    let shows: serde_json::Map<String, serde_json::Value> = view
        .shows
        .iter()
        .map(|(id, s)| {
            let slots: serde_json::Map<String, serde_json::Value> = s
                .slots
                .iter()
                .map(|(sid, slot)| {
                    (
                        sid.clone(),
                        json!({ "label": slot.label, "starts_at": slot.starts_at, "capacity": slot.capacity }),
                    )
                })
                .collect();
            (id.clone(), json!({ "name": s.name, "currency": s.currency, "slots": slots }))
        })
        .collect();
    Ok(Json(json!({ "shows": shows })).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/shows",
    tag = "shows",
    operation_id = "create_show",
    summary = "Create a show and escrow its slots' seats (edge or origin)",
    request_body = ShowBody,
    responses((status = 201, description = "The show created (200: the same definition again)", body = Object), crate::api::wire::ErrorAnswer)
)]
async fn create_show(
    State(node): State<Arc<Node>>,
    body: Result<JsonObject<ShowBody>, ApiError>,
) -> Api<Response> {
    let JsonObject(spec) = body?;
    let id = spec.id.clone();
    let new = node.create_show(spec.into()).await?;
    // A retry of the same definition answers 200 (nothing new), another definition under the same id 409.
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "show": id, "created": new }))).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/shows/{show}/slots/{slot}",
    tag = "shows",
    operation_id = "availability",
    summary = "A slot's seats: capacity, sold, remaining, what this device can sell",
    params(("show" = String, Path), ("slot" = String, Path)),
    responses((status = 200, description = "Availability", body = Object), crate::api::wire::ErrorAnswer)
)]
async fn availability(
    State(node): State<Arc<Node>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Api<Response> {
    let Path((show, slot)) = path?;
    Ok(Json(node.availability(&show, &slot).await?).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/shows/{show}/slots/{slot}/bookings",
    tag = "shows",
    operation_id = "book",
    summary = "Book seats from this device's quota; answered once durable",
    params(("show" = String, Path), ("slot" = String, Path)),
    request_body = BookingBody,
    responses((status = 201, description = "The booking and the slot's availability (200: a replay of the same booking id)", body = Object), crate::api::wire::ErrorAnswer)
)]
async fn book(
    State(node): State<Arc<Node>>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<JsonObject<BookingBody>, ApiError>,
) -> Api<Response> {
    let Path((show, slot)) = path?;
    let JsonObject(body) = body?;
    let booking = match body.booking_id {
        Some(id) => id,
        None => random_id("bk")?,
    };
    let new = node
        .book(&show, &slot, &booking, body.seats, body.attendee)
        .await?;
    let availability = node.availability(&show, &slot).await?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = json!({
        "booking": { "booking_id": booking, "show": show, "slot": slot, "seats": body.seats, "device": node.dir.device().to_hex() },
        "replayed": !new,
        "availability": availability,
    });
    Ok((status, Json(body)).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/shows/{show}/slots/{slot}/transfers",
    tag = "shows",
    operation_id = "transfer",
    summary = "Give seats of this device's quota to another device",
    params(("show" = String, Path), ("slot" = String, Path)),
    request_body = TransferBody,
    responses((status = 201, description = "The transfer", body = Object), crate::api::wire::ErrorAnswer)
)]
async fn transfer(
    State(node): State<Arc<Node>>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<JsonObject<TransferBody>, ApiError>,
) -> Api<Response> {
    let Path((show, slot)) = path?;
    let JsonObject(body) = body?;
    let view = node.view()?;
    let to = node.resolve_device_as(&view, &body.to, "to")?;
    let id = match body.transfer_id {
        Some(id) => id,
        None => random_id("tr")?,
    };
    node.transfer(&show, &slot, to, &id, body.seats).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "transfer": { "transfer_id": id, "to": to.to_hex(), "seats": body.seats } })),
    )
        .into_response())
}

#[utoipa::path(
    post,
    path = "/v1/telemetry",
    tag = "telemetry",
    operation_id = "count",
    summary = "Count an event (consent and overload sampling apply)",
    request_body = CountBody,
    responses((status = 202, description = "Whether it was counted", body = Object), crate::api::wire::ErrorAnswer)
)]
async fn count(
    State(node): State<Arc<Node>>,
    body: Result<JsonObject<CountBody>, ApiError>,
) -> Api<Response> {
    let JsonObject(body) = body?;
    let counted = node.count(&body.counter, body.by, body.attendee.as_deref())?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "counter": body.counter, "by": body.by, "outcome": counted })),
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/telemetry",
    tag = "telemetry",
    operation_id = "counters",
    summary = "Every telemetry counter this device holds, summed over devices",
    responses((status = 200, description = "Counters", body = Object), crate::api::wire::ErrorAnswer)
)]
async fn counters(State(node): State<Arc<Node>>) -> Api<Response> {
    Ok(Json(json!({ "counters": node.counters().await? })).into_response())
}

/// The largest settlement file the API takes.
const SETTLEMENT_BYTES_MAX: usize = 256 << 20;

/// `POST /v1/reconciliations?batch=NAME` with the processor's settlement CSV as the body (origin only).
#[utoipa::path(
    post,
    path = "/v1/reconciliations",
    tag = "money",
    operation_id = "reconcile",
    summary = "Reconcile receipts against a processor's settlement CSV (origin)",
    params(ReconcileQuery),
    request_body(content = String, content_type = "text/csv"),
    responses((status = 200, description = "The findings", body = Object), crate::api::wire::ErrorAnswer)
)]
async fn reconcile(
    State(node): State<Arc<Node>>,
    query: Result<axum::extract::Query<ReconcileQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<String, axum::extract::rejection::StringRejection>,
) -> Api<Response> {
    let axum::extract::Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let text = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    if query.batch.is_empty() || query.batch.len() > 200 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "batch must name the settlement batch in 1 to 200 bytes",
        ));
    }
    let rows = popmesh_crdt::settlement::parse_csv(&text).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the settlement file: {e}"),
        )
    })?;
    let (report, marked) = node.reconcile(&query.batch, &rows).await?;
    Ok(Json(json!({
        "batch": query.batch,
        "rows": rows.len(),
        "marked": marked,
        "clean": report.clean(),
        "report": report,
    }))
    .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/documents",
    tag = "site",
    operation_id = "documents",
    summary = "Every document this device holds, with heads and sync state",
    responses((status = 200, description = "Documents", body = Object), crate::api::wire::ErrorAnswer)
)]
async fn documents(State(node): State<Arc<Node>>) -> impl IntoResponse {
    Json(json!({ "documents": node.documents().await }))
}

#[utoipa::path(
    get,
    path = "/v1/documents/{which}",
    tag = "site",
    operation_id = "document",
    summary = "One document as JSON (its name, such as `show/fri/slot/s1`)",
    params(("which" = String, Path)),
    responses((status = 200, description = "The document", body = Object), crate::api::wire::ErrorAnswer)
)]
async fn document(
    State(node): State<Arc<Node>>,
    path: Result<Path<String>, PathRejection>,
) -> Api<Response> {
    let Path(which) = path?;
    Ok(Json(node.document_content(&which).await?).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/report",
    tag = "site",
    operation_id = "report",
    summary = "The show report",
    params(ReportQuery),
    responses((status = 200, description = "The report", body = Object), crate::api::wire::ErrorAnswer)
)]
async fn report(
    State(node): State<Arc<Node>>,
    query: Result<axum::extract::Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> Api<Response> {
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    Ok(Json(node.report(q.show).await?).into_response())
}

/// `POST /v1/rehearsals`: calls a dry rehearsal; every device answers through the mesh.
#[utoipa::path(
    post,
    path = "/v1/rehearsals",
    tag = "site",
    operation_id = "call_rehearsal",
    summary = "Call a dry rehearsal through the mesh",
    responses((status = 201, description = "The call's id", body = Object), crate::api::wire::ErrorAnswer)
)]
async fn call_rehearsal(State(node): State<Arc<Node>>) -> Api<Response> {
    let call = node.call_rehearsal().await?;
    Ok((StatusCode::CREATED, Json(json!({ "call": call }))).into_response())
}

/// `GET /v1/rehearsals/{id}`: the answers that reached this device so far, the devices enrolled now, and this
/// device's clock (what `popmesh rehearse` measures offsets against).
#[utoipa::path(
    get,
    path = "/v1/rehearsals/{id}",
    tag = "site",
    operation_id = "rehearsal",
    summary = "The answers to a rehearsal that reached this device",
    params(("id" = String, Path)),
    responses((status = 200, description = "Answers", body = Object), crate::api::wire::ErrorAnswer)
)]
async fn rehearsal(
    State(node): State<Arc<Node>>,
    path: Result<Path<String>, PathRejection>,
) -> Api<Response> {
    let Path(id) = path?;
    let view = node.view()?;
    let now = crate::clock::now();
    let enrolled: Vec<serde_json::Value> = view
        .trusted_devices(now)
        .into_iter()
        .map(
            |(device, role, name)| json!({ "device": device.to_hex(), "name": name, "role": role }),
        )
        .collect();
    let answers = node.rehearsal_answers(&id).await;
    Ok(Json(json!({ "now": now.0, "enrolled": enrolled, "answers": answers })).into_response())
}

/// Server-sent events: one `change` event per document change, local or synced. Kiosk screens follow
/// availability with it; a subscriber that falls behind gets a `lagged` event and should re-read what it shows.
/// Server-sent events, one per document change. The stream ends when the node stops, or when the client token it
/// was opened with is revoked or expires (re-checked every `clients::RECHECK`).
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "site",
    operation_id = "events",
    summary = "Server-sent events: one `change` per document change (`lagged` when behind)",
    responses((status = 200, description = "An event stream (text/event-stream)"), crate::api::wire::ErrorAnswer)
)]
async fn events(
    State(node): State<Arc<Node>>,
    caller: Option<axum::Extension<clients::Caller>>,
) -> impl IntoResponse {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let rx = node.subscribe();
    let caller = caller.map(|c| c.0);
    let stream = futures::stream::unfold((rx, node, caller), |(mut rx, node, caller)| async move {
        loop {
            if caller.as_ref().is_some_and(|c| !c.still_valid(&node)) {
                return None;
            }
            let event = match tokio::time::timeout(clients::RECHECK, rx.recv()).await {
                Err(_) => continue,
                Ok(Ok(change)) => Event::default()
                    .event("change")
                    .json_data(&change)
                    .unwrap_or_else(|_| Event::default().event("change")),
                Ok(Err(RecvError::Lagged(n))) => {
                    Event::default().event("lagged").data(n.to_string())
                }
                Ok(Err(RecvError::Closed)) => return None,
            };
            return Some((Ok::<_, std::convert::Infallible>(event), (rx, node, caller)));
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn metrics(State(node): State<Arc<Node>>) -> Api<Response> {
    // The gauges computed on demand; a failure leaves their last values.
    if let Err(e) = node.refresh_gauges().await {
        tracing::debug!("gauges not refreshed: {e}");
    }
    let mut text = String::new();
    {
        let registry = node.registry.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

fn random_id(prefix: &str) -> Api<String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no randomness: {e}"),
        )
    })?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{prefix}-{hex}"))
}
