//! The `/v1` contract: an OpenAPI 3.1 document generated from the handlers' `#[utoipa::path]` attributes and the
//! wire types (`api/wire.rs`), served at `GET /v1/openapi.json`. `node/tests/openapi.rs` checks it against the
//! router's routes both ways; the kiosk page reads the operations it calls from it.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi as _;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// The document (see the module docs).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "popmesh local API",
        description = "The API a popmesh device serves to kiosk and POS apps on the site. Every error is \
            `{\"error\": {\"status\", \"code\", \"message\"}}`. A request carries a client token \
            (`Authorization: Bearer popmesh-client1....`) unless it comes from this device's loopback; each route \
            admits some roles (node/src/api/clients.rs)."
    ),
    paths(
        super::status,
        super::money::pay,
        super::money::pay_batch,
        super::receipts,
        super::issued,
        super::shows,
        super::create_show,
        super::availability,
        super::book,
        super::transfer,
        super::counters,
        super::count,
        super::access::revoke,
        super::access::issue_pass,
        super::access::revoke_pass,
        super::access::check_in,
        super::reconcile,
        super::documents,
        super::document,
        super::report,
        super::call_rehearsal,
        super::rehearsal,
        super::access::profile,
        super::access::update_profile,
        super::events,
        super::warehouse::status_route,
        super::warehouse::replay_route,
        super::console::state,
        super::screens::upgrade,
        super::kiosk::suggestions,
        super::kiosk::feedback,
        super::media::add,
        super::media::blob_state,
        super::media::manifests,
        super::media::publish,
        super::media::by_hash,
        super::media::by_name,
        super::sessions::login,
        super::sessions::logout,
        super::sessions::session,
        document,
    ),
    modifiers(&Bearer),
    security(("bearer" = []))
)]
#[derive(Debug)]
pub struct ApiDoc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("popmesh client token")
                    .build(),
            ),
        );
    }
}

/// The document as JSON, made once.
pub fn json() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"the contract did not serialize: {e}\"}}"))
    })
}

#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "site",
    operation_id = "openapi",
    summary = "This document",
    responses((status = 200, description = "The OpenAPI 3.1 document of /v1", body = Object))
)]
pub async fn document() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        json(),
    )
        .into_response()
}
