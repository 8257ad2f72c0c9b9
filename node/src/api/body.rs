//! What the API takes at the door: JSON objects only, bounded URIs, and a JSON body on every error answer.

use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::ApiError;

/// The longest request URI (path and query) the API reads, in bytes; longer ones answer 414.
pub const URI_BYTES_MAX: usize = 8 * 1024;

/// A JSON request body that must be an object: `[2, "id"]` is refused even where serde would read a struct from
/// a sequence. Content type `application/json` (415 otherwise); at most the route's body limit (413).
#[derive(Debug)]
pub struct JsonObject<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonObject<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be JSON: send Content-Type: application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "the body must be one JSON object ({...})",
            ));
        }
        // The error names the field (`slots[1].capacity: invalid type ...`), as axum's own JSON extractor does.
        let mut json = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut json).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = if path == "." {
                format!("the body: {inner}")
            } else {
                format!("{path}: {inner}")
            };
            ApiError::new(StatusCode::BAD_REQUEST, message)
        })?;
        json.end()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("the body: {e}")))?;
        Ok(JsonObject(value))
    }
}

/// Refuses URIs past [`URI_BYTES_MAX`] with a JSON 414, and gives every error answer that is not JSON yet (the
/// framework's own rejections: a path that does not decode, a wrong method, a body past its limit) a JSON body
/// that says what was wrong.
pub async fn door(req: Request, next: Next) -> Response {
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > URI_BYTES_MAX {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!("the request URI is {uri_len} bytes; at most {URI_BYTES_MAX} are read"),
        )
        .into_response();
    }
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).into_owned(),
        _ => status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_owned(),
    };
    let mut out = ApiError::new(status, text).into_response();
    // Keep what the answer said besides its body (Allow on a 405, Content-Range on a 416, ...).
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}
