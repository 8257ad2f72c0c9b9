//! The node's background tasks: confirmer, rebalancer, blob peers, preseeder, watchman, flusher.

use super::*;

/// At the origin: confirms merged check-ins every few seconds, so passes retire without anyone asking.
pub(super) async fn confirmer(node: Arc<Node>) {
    let mut tick = tokio::time::interval(CONFIRM_EVERY);
    loop {
        tick.tick().await;
        match node.confirm_checkins().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                checkins = n,
                "confirmed check-ins; their passes are retired"
            ),
            Err(e) => tracing::debug!("check-ins not confirmed yet: {e}"),
        }
    }
}

/// Runs [`Node::rebalance`] every `rebalance_every_secs`.
pub(super) async fn rebalancer(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_secs(node.escrow.rebalance_every_secs));
    loop {
        tick.tick().await;
        if let Err(e) = node.rebalance().await {
            tracing::debug!("no rebalancing now: {e}");
        }
    }
}

/// Tells the media side which peers the mesh admits, and where their blob endpoints are. While documents are queued
/// on the uplink, media does not use it: the origin is no blob source for the site, and the origin fetches nothing.
pub(super) async fn blob_peers(node: Arc<Node>) {
    let mut tick = tokio::time::interval(BLOB_PEERS_EVERY);
    let i_am_origin = node.dir.cert.role == Role::Origin;
    loop {
        tick.tick().await;
        let backlog = node.gate.uplink_backlog();
        node.metrics.uplink_backlog.set(backlog as i64);
        let peers: Vec<BlobPeer> = node
            .mesh
            .peers()
            .into_iter()
            .filter(|p| p.admitted)
            .filter(|p| {
                let origin = p
                    .hello
                    .as_ref()
                    .and_then(|h| h.cert_bytes().ok())
                    .and_then(|b| EnrollmentCert::from_bytes(&b).ok())
                    .is_some_and(|c| c.role == Role::Origin);
                backlog == 0 || !(origin || i_am_origin)
            })
            .filter_map(|p| {
                let device = DeviceId::from_hex(&p.device).ok()?;
                let port = p.hello.as_ref().and_then(|h| h.blobs);
                let addr = port
                    .zip(p.remote_ip)
                    .map(|(port, ip)| std::net::SocketAddr::new(ip, port));
                Some(BlobPeer { device, addr })
            })
            .collect();
        node.media.set_peers(&peers);
    }
}

/// Runs a preseed pass every `[media] preseed_every_secs`, and at once when a manifest changes.
pub(super) async fn preseeder(node: Arc<Node>) {
    let every = node.media.preseed_every();
    let mut changes = node.subscribe();
    loop {
        let manifests: Vec<ManifestRecord> =
            node.manifests().await.into_iter().map(|(_, m)| m).collect();
        if let Err(e) = node.media.preseed(&manifests, clock::now().0).await {
            tracing::warn!("preseed pass failed: {e}");
        }
        // Also at once when a manifest changes (published here or synced from a peer).
        let deadline = tokio::time::sleep(every);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = node.preseed_now.notified() => break,
                _ = node.media.wake.notified() => break,
                change = changes.recv() => match change {
                    Ok(c) if c.kind == "manifest" => break,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

/// Records incidents (peers that dropped out of reach, and their return) and answers rehearsal calls.
pub(super) async fn watchman(node: Arc<Node>) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    loop {
        tick.tick().await;
        if let Err(e) = node.watch().await {
            tracing::debug!("incident not recorded yet: {e}");
        }
        if let Err(e) = node.answer_rehearsal().await {
            // Look again next tick.
            node.telemetry_changed.store(true, Ordering::Release);
            tracing::debug!("rehearsal not answered yet: {e}");
        }
    }
}

/// Makes samod's lazy writes durable every [`FLUSH_EVERY`], and writes buffered telemetry.
pub(super) async fn flusher(node: Arc<Node>) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        tick.tick().await;
        let store = node.store.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.flush()).await {
            tracing::error!("flush failed: {e}");
        }
        node.heal_store().await;
        node.metrics
            .store_failed
            .set(i64::from(node.store.has_failed()));
        if let Some(free) = node.store.free_bytes() {
            node.metrics
                .store_free_bytes
                .set(i64::try_from(free).unwrap_or(i64::MAX));
        }
        if let Err(e) = node.flush_telemetry().await {
            tracing::debug!("telemetry not written yet: {e}");
        }
        if let Err(e) = node.flush_tallies().await {
            tracing::debug!("suggestion tallies not written yet: {e}");
        }
    }
}
