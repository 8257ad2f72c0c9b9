//! Taking payments: `POST /v1/payments` (one) and `POST /v1/payments/batch` (what a POS app queued while it could
//! not reach this device). Both answer only once every receipt they name is on this device's disk.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use popmesh_crdt::receipt::{PaymentRequest, Receipt};
use serde_json::{Value, json};

use super::body::JsonObject;
use super::wire::{PaymentBatchBody, PaymentBody, ReceiptJson};
use super::{Api, ApiError};
use crate::node::{CheckedReceipt, Node, PayError};

#[utoipa::path(
    post,
    path = "/v1/payments",
    tag = "money",
    operation_id = "pay",
    summary = "Take a payment: answered only once its signed receipt is on this device's disk",
    request_body = PaymentBody,
    responses((status = 201, description = "The receipt (`replayed` when the idempotency key was seen before)", body = Object), crate::api::wire::ErrorAnswer)
)]
pub(super) async fn pay(
    State(node): State<Arc<Node>>,
    body: Result<JsonObject<PaymentBody>, ApiError>,
) -> Api<Response> {
    let JsonObject(body) = body?;
    let (request, show) = body.into_request();
    let (receipt, replayed) = node.pay(request, show).await?;
    // A replay answers exactly like the first time, so a retrying client cannot tell the difference.
    Ok((StatusCode::CREATED, Json(taken(receipt, replayed))).into_response())
}

/// `POST /v1/payments/batch`: up to 1,000 payments of one show, taken in order as if each were posted to
/// `/v1/payments` one after another, in one change and one fsync. Each payment stands or falls on its own (a POS
/// app's queue must not be held up by one refused payment): `results[i]` is what `/v1/payments` would have
/// answered for `payments[i]`, its `status` and either `receipt` and `replayed` or `error`. A refusal of the
/// whole (a malformed body, too many payments, an unknown show, money not ready) writes nothing. When nothing was
/// taken and every payment got the same 5xx (the write was not durable), the answer has that status too.
#[utoipa::path(
    post,
    path = "/v1/payments/batch",
    tag = "money",
    operation_id = "pay_batch",
    summary = "Take a queue of payments in one durable write; each is answered as /v1/payments would answer it",
    request_body = PaymentBatchBody,
    responses((status = 200, description = "One result per payment, in order, with counts of taken and refused", body = Object), crate::api::wire::ErrorAnswer)
)]
pub(super) async fn pay_batch(
    State(node): State<Arc<Node>>,
    body: Result<JsonObject<PaymentBatchBody>, ApiError>,
) -> Api<Response> {
    let JsonObject(body) = body?;
    let requests = body
        .payments
        .into_iter()
        .map(PaymentRequest::from)
        .collect();
    let answers = node.pay_many(requests, body.show).await?;
    let taken_count = answers.iter().filter(|a| a.is_ok()).count();
    let results: Vec<Value> = answers.into_iter().map(result_of).collect();
    // Nothing taken, and every payment refused for the same reason on this device's side (not durable, still
    // loading): the answer carries that status too, so a client that reads only the status keeps its queue.
    let statuses: std::collections::BTreeSet<u64> = results
        .iter()
        .filter_map(|r| r["status"].as_u64())
        .collect();
    let status = match statuses.first() {
        Some(&only) if taken_count == 0 && statuses.len() == 1 && only >= 500 => {
            StatusCode::from_u16(only as u16).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
        }
        _ => StatusCode::OK,
    };
    Ok((
        status,
        Json(json!({
            "results": results,
            "taken": taken_count,
            "refused": results.len() - taken_count,
        })),
    )
        .into_response())
}

/// A taken payment as both endpoints answer it.
fn taken(receipt: Receipt, replayed: bool) -> Value {
    let json = ReceiptJson::from(&CheckedReceipt::new(receipt, false, Ok(())));
    json!({ "receipt": json, "replayed": replayed })
}

/// One payment's answer in a batch: its status, and the receipt or the error body `/v1/payments` would send.
fn result_of(answer: Result<(Receipt, bool), PayError>) -> Value {
    match answer {
        Ok((receipt, replayed)) => {
            let mut v = taken(receipt, replayed);
            v["status"] = json!(StatusCode::CREATED.as_u16());
            v
        }
        Err(e) => {
            let e = ApiError::from(e);
            let status = e.status.as_u16();
            let mut v = json!(e.body());
            v["status"] = json!(status);
            v
        }
    }
}
