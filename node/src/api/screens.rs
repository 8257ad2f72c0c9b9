//! `/v1/sync`: kiosk screens (web pages running `@automerge/automerge-repo` with its WebSocket client adapter) hold
//! the documents they show and follow them live.
//!
//! A screen is not a site device: it has no key and no enrollment. What it may see is decided by the node's share
//! policy (`share_policy` in `node.rs`): read-only access to media manifests and slots, nothing else, and its
//! changes are ignored (writes go through the validated HTTP API). Because that policy trusts peer ids that are
//! device ids, a connection whose first message claims one is closed before samod sees it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{
    CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::http::StatusCode;
use axum::response::Response;
use futures::{SinkExt as _, StreamExt as _};
use popmesh_transport::link::FRAME_BYTES_MAX;
use popmesh_transport::outbox::text_field;

use super::ApiError;
use crate::node::{Node, is_device_peer};

/// How long a screen may take to say who it is.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

#[utoipa::path(
    get,
    path = "/v1/sync",
    tag = "site",
    operation_id = "sync",
    summary = "automerge-repo WebSocket sync for kiosk screens (manifests and slots, read only)",
    responses((status = 101, description = "Switching to the WebSocket protocol"), crate::api::wire::ErrorAnswer)
)]
pub async fn upgrade(
    State(node): State<Arc<Node>>,
    caller: Option<axum::Extension<super::clients::Caller>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let caller = caller.map(|c| c.0);
    let ws = ws.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "/v1/sync is the WebSocket endpoint for automerge-repo clients (kiosk screens): {}",
                e.body_text()
            ),
        )
    })?;
    // A browser carries its client token as a second subprotocol (`popmesh.token.<token>`, read by the client
    // gate) beside `popmesh.v1`, which is the one chosen: the token is never echoed back.
    Ok(ws
        .protocols(["popmesh.v1"])
        .max_message_size(FRAME_BYTES_MAX)
        .on_upgrade(move |socket| session(node, socket, caller)))
}

async fn close(mut sink: impl futures::Sink<Message> + Unpin, reason: &str) {
    tracing::info!("kiosk screen refused: {reason}");
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: 1008,
            reason: reason.to_owned().into(),
        })))
        .await;
}

async fn session(node: Arc<Node>, socket: WebSocket, caller: Option<super::clients::Caller>) {
    let (sink, mut stream) = socket.split();
    // The client's first message is its join; its senderId is the peer id samod will know it by.
    let first = loop {
        match tokio::time::timeout(JOIN_TIMEOUT, stream.next()).await {
            Ok(Some(Ok(Message::Binary(bytes)))) => break bytes.to_vec(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Text(_)))) => {
                return close(sink, "automerge-repo messages are binary").await;
            }
            _ => return,
        }
    };
    let Some(sender) = text_field(&first, "senderId").map(str::to_owned) else {
        return close(
            sink,
            "the first message must be an automerge-repo join with a senderId",
        )
        .await;
    };
    if is_device_peer(&sender) || sender.is_empty() || sender.len() > 128 {
        return close(
            sink,
            "a kiosk screen's peer id may not look like a device id (64 hex digits)",
        )
        .await;
    }
    let rest = stream.filter_map(|m| async move {
        match m {
            Ok(Message::Binary(bytes)) => Some(Ok(bytes.to_vec())),
            Ok(Message::Text(_)) => Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "text message on an automerge-repo socket",
            ))),
            Ok(_) => None,
            Err(e) => Some(Err(io::Error::other(e))),
        }
    });
    // A screen whose token is revoked or expires is cut off: its incoming stream ends, and samod closes it.
    let watched = node.clone();
    let revoked = async move {
        loop {
            tokio::time::sleep(super::clients::RECHECK).await;
            if caller.as_ref().is_some_and(|c| !c.still_valid(&watched)) {
                tracing::info!(
                    "a kiosk screen's client token is no longer valid: closing its sync"
                );
                return;
            }
        }
    };
    let messages = futures::stream::once(async move { Ok::<_, io::Error>(first) })
        .chain(rest)
        .take_until(Box::pin(revoked));
    let sink = sink
        .with(|bytes: Vec<u8>| async move { Ok::<_, axum::Error>(Message::Binary(bytes.into())) });
    tracing::info!(screen = %sender, "kiosk screen connected");
    let transport = samod::Transport::new(Box::pin(messages), Box::pin(sink))
        .with_expected_peer_id(samod::PeerId::from(sender));
    if let Err(e) = node.accept_screen(transport) {
        tracing::debug!("kiosk screen not accepted: {e}");
    }
}
