//! `GET /v1/warehouse` and `POST /v1/warehouse/replay`: the origin's warehouse sink, over HTTP.

use std::sync::Arc;

use super::ApiError;

/// `GET /v1/warehouse`: what this origin owes the warehouse (404 on a device that writes none).
#[utoipa::path(
    get,
    path = "/v1/warehouse",
    tag = "warehouse",
    operation_id = "warehouse",
    summary = "The warehouse sink: connected or why not, what is owed",
    responses((status = 200, description = "The sink's status", body = Object), crate::api::wire::ErrorAnswer)
)]
pub async fn status_route(
    axum::extract::State(node): axum::extract::State<Arc<crate::node::Node>>,
) -> Result<axum::Json<crate::node::warehouse::SinkStatus>, ApiError> {
    crate::node::warehouse::status_of(&node)
        .map(axum::Json)
        .ok_or_else(no_warehouse)
}

/// `POST /v1/warehouse/replay`: every document is compared with the warehouse again and what it lacks written.
#[utoipa::path(
    post,
    path = "/v1/warehouse/replay",
    tag = "warehouse",
    operation_id = "warehouse_replay",
    summary = "Compare every document with the warehouse again",
    responses((status = 202, description = "Replaying", body = Object), crate::api::wire::ErrorAnswer)
)]
pub async fn replay_route(
    axum::extract::State(node): axum::extract::State<Arc<crate::node::Node>>,
) -> Result<(axum::http::StatusCode, axum::Json<serde_json::Value>), ApiError> {
    let sink = node.warehouse().ok_or_else(no_warehouse)?;
    sink.replay();
    Ok((
        axum::http::StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "replaying": true })),
    ))
}

fn no_warehouse() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "this device writes no warehouse: only the origin does, with [warehouse] postgres_url set",
    )
}
