//! Who may fetch from this device: the admitted peers, the node's gate, and the task that answers every blob
//! connection and request (and paces uploads under the cap).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iroh::{EndpointAddr, EndpointId};
use iroh_blobs::provider::events::{AbortReason, ProviderMessage};
use popmesh_crdt::identity::DeviceId;

use super::{BlobPeer, Gate, Media, endpoint_of, lock};

impl Media {
    /// The peers the mesh admits now, with their blob addresses: only they may fetch from this device, and only
    /// those with an address are asked for blobs.
    pub fn set_peers(&self, peers: &[BlobPeer]) {
        let mut next = BTreeMap::new();
        for p in peers {
            let Some(id) = endpoint_of(&p.device) else {
                continue;
            };
            if let Some(addr) = p.addr {
                self.lookup
                    .set_endpoint_info(EndpointAddr::new(id).with_ip_addr(addr));
            }
            next.insert(id, p.addr);
        }
        let mut mine = self.peers.write().unwrap_or_else(|e| e.into_inner());
        for gone in mine.keys().filter(|k| !next.contains_key(*k)) {
            self.lookup.remove_endpoint_info(*gone);
        }
        let changed = *mine != next;
        *mine = next;
        drop(mine);
        if changed {
            self.wake.notify_one();
        }
    }

    fn admitted(&self, id: &EndpointId) -> bool {
        self.peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
            && self
                .gate
                .get()
                .is_none_or(|gate| gate(&DeviceId(*id.as_bytes())))
    }

    /// Installs the node's check of a device (see [`Media::gate`]); once.
    pub fn set_gate(&self, gate: Gate) {
        let _ = self.gate.set(gate);
    }
}

/// Answers the blob protocol's questions: may this endpoint connect, may it make this request.
pub(super) async fn gatekeeper(
    media: std::sync::Weak<Media>,
    mut requests: tokio::sync::mpsc::Receiver<ProviderMessage>,
) {
    let mut connections: HashMap<u64, EndpointId> = HashMap::new();
    // The upload cap: when the next byte may go out, over all peers.
    let next_free = Arc::new(Mutex::new(tokio::time::Instant::now()));
    while let Some(msg) = requests.recv().await {
        let Some(media) = media.upgrade() else {
            return;
        };
        let allowed = |conn: u64| connections.get(&conn).is_some_and(|id| media.admitted(id));
        let verdict = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(AbortReason::Permission)
            }
        };
        match msg {
            ProviderMessage::ClientConnected(msg) => {
                let ok = msg.endpoint_id.is_some_and(|id| media.admitted(&id));
                if ok {
                    if let Some(id) = msg.endpoint_id {
                        connections.insert(msg.connection_id, id);
                    }
                } else {
                    media.metrics.refused.inc();
                    tracing::warn!(
                        endpoint = ?msg.endpoint_id,
                        "refused a blob connection from a device the mesh does not admit"
                    );
                }
                msg.tx.send(verdict(ok)).await.ok();
            }
            ProviderMessage::ConnectionClosed(msg) => {
                connections.remove(&msg.connection_id);
            }
            ProviderMessage::GetRequestReceived(msg) => {
                let ok = allowed(msg.connection_id);
                msg.tx.send(verdict(ok)).await.ok();
            }
            ProviderMessage::GetManyRequestReceived(msg) => {
                let ok = allowed(msg.connection_id);
                msg.tx.send(verdict(ok)).await.ok();
            }
            ProviderMessage::Throttle(msg) => {
                let Some(rate) = media.options.upload_limit else {
                    msg.tx.send(Ok(())).await.ok();
                    continue;
                };
                let slot = {
                    let mut next = lock(&next_free);
                    let now = tokio::time::Instant::now();
                    let slot = (*next).max(now);
                    *next = slot + Duration::from_secs_f64(msg.size as f64 / rate as f64);
                    slot
                };
                tokio::spawn(async move {
                    tokio::time::sleep_until(slot).await;
                    msg.tx.send(Ok(())).await.ok();
                });
            }
            _ => {}
        }
    }
}
