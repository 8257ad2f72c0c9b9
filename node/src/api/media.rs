//! The media half of the local API: kiosk browsers load media from their own node, never from the internet.
//!
//! - `GET /media/{hash}` and `GET /media/by-name/{name}`: the blob with its manifest's Content-Type, an ETag equal
//!   to the hash, and single HTTP ranges (`Range: bytes=a-b`, `a-`, `-n`). A blob that is not here yet is fetched
//!   from the site peers and streamed as it arrives; when no peer has it, the manifest's fallback entry is served
//!   (with `X-Popmesh-Fallback: name`). Every window is checked against the hash before it is sent.
//! - `POST /v1/blobs`: adds the request body as a blob (`popmesh blob add`).
//! - `GET /v1/manifests`, `POST /v1/manifests/{name}`: the manifests and their preseed state; publishing.

use std::ops::Range;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use iroh_blobs::Hash;
use popmesh_crdt::manifest::{ManifestRecord, MediaEntry};
use serde_json::json;

use super::ApiError;
use super::wire::ManifestBody;
use crate::clock;
use crate::media::{MediaError, parse_hash};
use crate::node::Node;

type Api<T> = Result<T, ApiError>;

/// Custom header naming the fallback entry served in place of the one asked for.
pub const FALLBACK_HEADER: &str = "x-popmesh-fallback";

/// What the manifests say about a blob: its entry, and the manifest's fallback entry.
struct Found {
    name: String,
    entry: MediaEntry,
    fallback: Option<(String, MediaEntry)>,
}

fn fallback_of(m: &ManifestRecord) -> Option<(String, MediaEntry)> {
    let name = m.fallback.as_ref()?;
    Some((name.clone(), m.entries.get(name)?.clone()))
}

async fn find(node: &Node, pick: impl Fn(&str, &MediaEntry) -> bool) -> Option<Found> {
    node.manifests().await.into_iter().find_map(|(_, m)| {
        let (name, entry) = m.entries.iter().find(|(n, e)| pick(n, e))?;
        Some(Found {
            name: name.clone(),
            entry: entry.clone(),
            fallback: fallback_of(&m),
        })
    })
}

/// A hash from the path, or a 400 that says what a hash looks like.
fn hash_param(text: &str) -> Api<Hash> {
    parse_hash(text).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{} is not a BLAKE3 hash (64 lowercase hex digits)",
                popmesh_crdt::naming::shown(text)
            ),
        )
    })
}

#[utoipa::path(
    get,
    path = "/media/{hash}",
    tag = "media",
    operation_id = "by_hash",
    summary = "A blob by hash, with Range, ETag and the manifest's fallback",
    params(("hash" = String, Path)),
    responses((status = 200, description = "The bytes (206 for a range)"), crate::api::wire::ErrorAnswer)
)]
pub async fn by_hash(
    State(node): State<Arc<Node>>,
    Path(text): Path<String>,
    headers: HeaderMap,
) -> Api<Response> {
    let hash = hash_param(&text)?;
    let found = find(&node, |_, e| e.hash == text).await;
    serve(&node, hash, found, &headers, true).await
}

#[utoipa::path(
    get,
    path = "/media/by-name/{name}",
    tag = "media",
    operation_id = "by_name",
    summary = "A manifest entry by name",
    params(("name" = String, Path)),
    responses((status = 200, description = "The bytes (206 for a range)"), crate::api::wire::ErrorAnswer)
)]
pub async fn by_name(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Api<Response> {
    let found = find(&node, |n, _| n == name).await.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no manifest on this device has an entry named {}",
                popmesh_crdt::naming::shown(&name)
            ),
        )
    })?;
    let hash = parse_hash(&found.entry.hash).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "manifest hash unreadable",
        )
    })?;
    serve(&node, hash, Some(found), &headers, false).await
}

/// Parses a single `Range: bytes=...` against a blob of `size` bytes. `Ok(None)`: the whole blob.
fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<Range<u64>>, ApiError> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let unsatisfiable = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!(
                "range {:?} is not one satisfiable byte range of this {size}-byte blob",
                value.to_str().unwrap_or("?")
            ),
        )
    };
    let text = value.to_str().map_err(|_| unsatisfiable())?.trim();
    let spec = text.strip_prefix("bytes=").ok_or_else(unsatisfiable)?;
    if spec.contains(',') {
        // Several ranges (multipart/byteranges) are not offered; browsers ask for one.
        return Err(unsatisfiable());
    }
    let (a, b) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| unsatisfiable())?;
        if n == 0 {
            return Err(unsatisfiable());
        }
        size.saturating_sub(n)..size
    } else {
        let start: u64 = a.parse().map_err(|_| unsatisfiable())?;
        let end = if b.is_empty() {
            size
        } else {
            let last: u64 = b.parse().map_err(|_| unsatisfiable())?;
            if last < start {
                return Err(unsatisfiable());
            }
            last.saturating_add(1).min(size)
        };
        start..end
    };
    if range.start >= size {
        return Err(unsatisfiable());
    }
    Ok(Some(range))
}

async fn serve(
    node: &Arc<Node>,
    hash: Hash,
    found: Option<Found>,
    headers: &HeaderMap,
    immutable: bool,
) -> Api<Response> {
    let media = node.media();
    let etag = format!("\"{}\"", hash.to_hex());
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    // The size: from the manifest, from a complete local copy, or by fetching the blob whole.
    let size = match (&found, media.local_size(hash).await) {
        (Some(f), _) => f.entry.size,
        (None, Some(size)) => size,
        (None, None) => match media.fetch_whole(hash).await {
            Ok(size) => size,
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "blob {} is in no manifest, not on this device, and not to be had from a peer: {e}",
                        hash.to_hex()
                    ),
                ));
            }
        },
    };
    let range = parse_range(headers, size)?;
    let wanted = range.clone().unwrap_or(0..size);
    let fetch = match media.open(hash, wanted.clone()).await {
        Ok(fetch) => fetch,
        Err(e) => return fallback(node, hash, found, e).await,
    };
    let mime = found
        .as_ref()
        .map(|f| f.entry.mime.clone())
        .unwrap_or_else(|| "application/octet-stream".into());
    let body = Body::from_stream(media.stream(hash, wanted.clone(), fetch));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, header_value(&mime));
    sandboxed(h);
    h.insert(header::ETAG, header_value(&etag));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if immutable {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    h.insert(
        header::CONTENT_LENGTH,
        header_value(&(wanted.end - wanted.start).to_string()),
    );
    if range.is_some() {
        h.insert(
            header::CONTENT_RANGE,
            header_value(&format!(
                "bytes {}-{}/{size}",
                wanted.start,
                wanted.end.saturating_sub(1)
            )),
        );
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(response)
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

/// The blob cannot be had: serve the manifest's fallback entry if it is here, else say why not.
async fn fallback(
    node: &Arc<Node>,
    hash: Hash,
    found: Option<Found>,
    why: MediaError,
) -> Api<Response> {
    let media = node.media();
    let fallback = found.as_ref().and_then(|f| f.fallback.clone());
    if let Some((name, entry)) = fallback
        && entry.hash != hash.to_hex().as_str()
        && let Some(fb_hash) = parse_hash(&entry.hash)
        && media.local_size(fb_hash).await == Some(entry.size)
    {
        let fetch = media
            .open(fb_hash, 0..entry.size)
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        media.count_fallback();
        tracing::info!(wanted = %hash, fallback = %name, "serving the fallback: {why}");
        let body = Body::from_stream(media.stream(fb_hash, 0..entry.size, fetch));
        let mut response = Response::new(body);
        let h = response.headers_mut();
        h.insert(header::CONTENT_TYPE, header_value(&entry.mime));
        sandboxed(h);
        h.insert(
            header::CONTENT_LENGTH,
            header_value(&entry.size.to_string()),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(FALLBACK_HEADER, header_value(&name));
        return Ok(response);
    }
    let what = found
        .map(|f| f.name)
        .unwrap_or_else(|| hash.to_hex().to_string());
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{what} cannot be served: {why}; and no fallback entry is on this device"),
    ))
}

/// `POST /v1/blobs`: the body becomes a blob, kept for `[media] default_ttl_hours` unless a manifest names it.
#[utoipa::path(
    post,
    path = "/v1/blobs",
    tag = "media",
    operation_id = "add_blob",
    summary = "The body becomes a blob",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, description = "Its hash and size", body = Object), crate::api::wire::ErrorAnswer)
)]
pub async fn add(
    State(node): State<Arc<Node>>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Api<Response> {
    // A declared size is checked before a byte is stored; a chunked body is checked as it streams.
    if let Some(len) = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        node.media().check_room(len).map_err(media_refusal)?;
    }
    // The store wants a `Sync` stream; the body is not, so it crosses a channel.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
    tokio::spawn(async move {
        let mut data = body.into_data_stream();
        while let Some(chunk) = data.next().await {
            let item = chunk.map_err(std::io::Error::other);
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    let (hash, size) = node
        .media()
        .add(stream, clock::now().0)
        .await
        .map_err(media_refusal)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "hash": hash.to_hex().to_string(), "size": size })),
    )
        .into_response())
}

/// Media is served from the API's own origin, so a published SVG or HTML file must not run as one of the API's
/// pages (it could read receipts and pass the Origin check): every media answer is sandboxed (a script in it runs in
/// an opaque origin, whose requests say `Origin: null`) and never content-sniffed.
fn sandboxed(h: &mut axum::http::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'; img-src 'self' data:; media-src 'self'; style-src 'unsafe-inline'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

/// An upload refused: too large (413), no room beside the money reserve (507), or unreadable (400).
fn media_refusal(e: crate::media::MediaError) -> ApiError {
    use crate::media::MediaError;
    let status = match &e {
        MediaError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        MediaError::LowSpace { .. } => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, format!("the blob was not added: {e}"))
}

/// `GET /v1/blobs/{hash}`: what this device holds of a blob.
#[utoipa::path(
    get,
    path = "/v1/blobs/{hash}",
    tag = "media",
    operation_id = "blob_state",
    summary = "What this device holds of a blob",
    params(("hash" = String, Path)),
    responses((status = 200, description = "complete, partial or missing", body = Object), crate::api::wire::ErrorAnswer)
)]
pub async fn blob_state(State(node): State<Arc<Node>>, Path(text): Path<String>) -> Api<Response> {
    let hash = hash_param(&text)?;
    let state = node
        .media()
        .state(hash)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(state).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/manifests",
    tag = "media",
    operation_id = "manifests",
    summary = "Every media manifest and this device's preseed state",
    responses((status = 200, description = "Manifests", body = Object), crate::api::wire::ErrorAnswer)
)]
pub async fn manifests(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let list: Vec<_> = node
        .manifests()
        .await
        .into_iter()
        .map(|(name, m)| {
            json!({
                "name": name,
                "entries": m.entries.iter().map(|(n, e)| json!({
                    "name": n, "hash": e.hash, "size": e.size, "mime": e.mime,
                    "ttl_ms": e.ttl_ms, "added_at": e.added_at,
                })).collect::<Vec<_>>(),
                "fallback": m.fallback,
                "slices": m.slices.iter().map(|(role, ranges)| (role.clone(), ranges.iter().map(|r| json!({"start": r.start, "end": r.end})).collect::<Vec<_>>())).collect::<std::collections::BTreeMap<_, _>>(),
            })
        })
        .collect();
    Json(json!({ "manifests": list, "preseed": node.media().report() }))
}

#[utoipa::path(
    post,
    path = "/v1/manifests/{name}",
    tag = "media",
    operation_id = "publish",
    summary = "Publish manifest entries, a fallback and slices (edge or origin)",
    params(("name" = String, Path)),
    request_body = ManifestBody,
    responses((status = 201, description = "The manifest", body = Object), crate::api::wire::ErrorAnswer)
)]
pub async fn publish(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
    body: Result<super::JsonObject<ManifestBody>, ApiError>,
) -> Api<Response> {
    popmesh_crdt::naming::check_name("name", &name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let super::JsonObject(spec) = body?;
    node.publish_manifest(&name, spec.into()).await?;
    Ok((StatusCode::CREATED, Json(json!({ "published": name }))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str, size: u64) -> Result<Option<Range<u64>>, StatusCode> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(text).expect("header"));
        parse_range(&h, size).map_err(|e| e.status())
    }

    #[test]
    fn a_browser_asks_for_byte_ranges_the_way_video_players_do() {
        assert_eq!(range("bytes=0-", 1000), Ok(Some(0..1000)));
        assert_eq!(range("bytes=0-99", 1000), Ok(Some(0..100)));
        assert_eq!(range("bytes=900-5000", 1000), Ok(Some(900..1000)));
        assert_eq!(range("bytes=-100", 1000), Ok(Some(900..1000)));
        assert_eq!(range("bytes=-5000", 1000), Ok(Some(0..1000)));
        for bad in [
            "bytes=1000-",
            "bytes=5-4",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=-0",
            "bytes=x-",
        ] {
            assert_eq!(
                range(bad, 1000),
                Err(StatusCode::RANGE_NOT_SATISFIABLE),
                "{bad}"
            );
        }
        assert_eq!(
            parse_range(&HeaderMap::new(), 1000).map_err(|e| e.status()),
            Ok(None)
        );
    }
}
