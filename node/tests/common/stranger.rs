//! A device that is not enrolled in the site: its own random key, a real iroh-blobs client.

#![allow(dead_code)]

/// Asks the blob endpoint of device `device_hex` at 127.0.0.1:`port` for `hash_hex`, with a key the site never
/// enrolled. Returns whether the download succeeded and whether the stranger ended up holding any of the blob.
/// `key` is the asking device's secret seed (a revoked device's own key), or `None` for a fresh random key.
pub async fn try_fetch(
    device_hex: &str,
    port: u16,
    hash_hex: &str,
    key: Option<[u8; 32]>,
) -> (Result<(), String>, bool) {
    let seed = popmesh_crdt::identity::hex_decode::<32>(device_hex).expect("device id hex");
    let edge = iroh::EndpointId::from_bytes(&seed).expect("device id is an ed25519 key");
    let hash: iroh_blobs::Hash = hash_hex.parse().expect("hash");
    let lookup = iroh::address_lookup::MemoryLookup::new();
    lookup.set_endpoint_info(
        iroh::EndpointAddr::new(edge)
            .with_ip_addr(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
    );
    let mut builder = iroh::Endpoint::builder(iroh::endpoint::presets::Minimal);
    if let Some(seed) = key {
        builder = builder.secret_key(iroh::SecretKey::from_bytes(&seed));
    }
    let endpoint = builder
        .relay_mode(iroh::RelayMode::Disabled)
        .address_lookup(lookup)
        .bind_addr("127.0.0.1:0")
        .expect("bind address")
        .bind()
        .await
        .expect("stranger endpoint");
    let store = iroh_blobs::store::mem::MemStore::new();
    let download = store.downloader(&endpoint).download(hash, Some(edge));
    let result = match tokio::time::timeout(std::time::Duration::from_secs(15), download).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    };
    let held = store
        .blobs()
        .observe(hash)
        .await
        .is_ok_and(|bitfield| !bitfield.ranges.is_empty());
    let complete = matches!(
        store.blobs().status(hash).await,
        Ok(iroh_blobs::api::blobs::BlobStatus::Complete { .. })
    );
    endpoint.close().await;
    (
        if complete {
            result
        } else {
            result.and(Err("incomplete".into()))
        },
        held,
    )
}
