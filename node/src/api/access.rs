//! Passes at the door, device and pass revocations, and what attendees tell this device: the handlers of
//! `/v1/passes`, `/v1/check-ins`, `/v1/passes/revocations`, `/v1/revocations` and `/v1/attendees/{id}`.

use super::*;

fn pass_json(pass: &popmesh_crdt::access::Pass) -> serde_json::Value {
    json!({
        "pass": pass.to_text(),
        "id": pass.id_hex(),
        "show": pass.show,
        "kind": pass.kind,
        "subject": pass.subject,
        "issuer": pass.issuer.to_hex(),
        "issued_at": pass.issued_at.0,
        "expires_at": pass.expires_at.0,
    })
}

/// `POST /v1/passes` (edge box or origin): a signed pass every device checks offline.
#[utoipa::path(
    post,
    path = "/v1/passes",
    tag = "access",
    operation_id = "issue_pass",
    summary = "Issue an offline pass (edge or origin)",
    request_body = PassBody,
    responses((status = 201, description = "The pass text and its id", body = Object), crate::api::wire::ErrorAnswer)
)]
pub(super) async fn issue_pass(
    State(node): State<Arc<Node>>,
    body: Result<JsonObject<PassBody>, ApiError>,
) -> Api<Response> {
    let JsonObject(b) = body?;
    let pass = node
        .issue_pass(b.show, b.kind, &b.subject, b.valid_secs)
        .await?;
    Ok((StatusCode::CREATED, Json(pass_json(&pass))).into_response())
}

/// `POST /v1/check-ins`: checks a pass offline and records the check-in; 403 with the reason when refused.
#[utoipa::path(
    post,
    path = "/v1/check-ins",
    tag = "access",
    operation_id = "check_in",
    summary = "Check a pass in at this door, offline",
    request_body = CheckInBody,
    responses((status = 201, description = "The pass admitted: its subject, kind and show", body = Object), crate::api::wire::ErrorAnswer)
)]
pub(super) async fn check_in(
    State(node): State<Arc<Node>>,
    body: Result<JsonObject<CheckInBody>, ApiError>,
) -> Api<Response> {
    let JsonObject(b) = body?;
    let pass = node.check_in(&b.pass, b.show).await?;
    let mut out = pass_json(&pass);
    out["checked_in"] = json!(true);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// `POST /v1/passes/revocations` (edge box or origin).
#[utoipa::path(
    post,
    path = "/v1/passes/revocations",
    tag = "access",
    operation_id = "revoke_pass",
    summary = "Revoke a pass at every door",
    request_body = PassRevocationBody,
    responses((status = 201, description = "The revocation", body = Object), crate::api::wire::ErrorAnswer)
)]
pub(super) async fn revoke_pass(
    State(node): State<Arc<Node>>,
    body: Result<JsonObject<PassRevocationBody>, ApiError>,
) -> Api<Response> {
    let JsonObject(b) = body?;
    node.revoke_pass(&b.pass, &b.reason).await?;
    Ok((StatusCode::CREATED, Json(json!({ "revoked": true }))).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/revocations",
    tag = "trust",
    operation_id = "revoke",
    summary = "Record an authority-signed device revocation",
    request_body = RevocationBody,
    responses((status = 201, description = "The revocation recorded", body = Object), crate::api::wire::ErrorAnswer)
)]
pub(super) async fn revoke(
    State(node): State<Arc<Node>>,
    body: Result<JsonObject<RevocationBody>, ApiError>,
) -> Api<Response> {
    let JsonObject(body) = body?;
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(body.revocation.trim_end_matches('='))
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("revocation: not base64: {e}"),
            )
        })?;
    let revocation = Revocation::from_bytes(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("revocation: {e}")))?;
    node.revoke(revocation).await?;
    Ok((StatusCode::CREATED, Json(json!({ "revoked": true }))).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/attendees/{id}",
    tag = "attendees",
    operation_id = "profile",
    summary = "What an attendee told this device (kept here only)",
    params(("id" = String, Path)),
    responses((status = 200, description = "The profile", body = Object), crate::api::wire::ErrorAnswer)
)]
pub(super) async fn profile(
    State(node): State<Arc<Node>>,
    path: Result<Path<String>, PathRejection>,
) -> Api<Response> {
    let Path(who) = path?;
    match node.profile(&who)? {
        Some(p) => Ok(Json(json!({ "attendee": who, "profile": p })).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "attendee {} has told this device nothing (profiles stay on the device that took them)",
                popmesh_crdt::naming::shown(&who)
            ),
        )),
    }
}

#[utoipa::path(
    put,
    path = "/v1/attendees/{id}",
    tag = "attendees",
    operation_id = "update_profile",
    summary = "Fold one visit's answers into an attendee's profile on this device",
    params(("id" = String, Path)),
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, description = "The profile", body = Object), crate::api::wire::ErrorAnswer)
)]
pub(super) async fn update_profile(
    State(node): State<Arc<Node>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<JsonObject<popmesh_crdt::privacy::AttendeeProfile>, ApiError>,
) -> Api<Response> {
    let Path(who) = path?;
    let JsonObject(update) = body?;
    let profile = node.update_profile(&who, &update)?;
    Ok(Json(json!({ "attendee": who, "profile": profile })).into_response())
}
