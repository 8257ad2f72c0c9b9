//! The show opens: the edge box creates the site and enrolls every device, publishes the show's media for them to
//! preseed, and the doors open (check-ins, sales, a retried payment and one over the offline limit).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail, ensure};
use popmesh_crdt::Role;
use popmesh_crdt::access::PassKind;
use popmesh_crdt::receipt::PaymentRequest;

use super::crowd::{Crowd, Sales};
use super::site::{Device, Site, all_hold, until};
use super::{CAPACITY, PREVIEW, RETURNING, SHOW, SLOT, eur, secs};
use popmesh_node::node::{ManifestUpdate, NewEntry, NewShow, NewSlot, Node};

/// Deterministic demo bytes (a stand-in for the trailer and the poster).
fn media_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u64;
    while out.len() < len {
        let mut input = seed.to_le_bytes().to_vec();
        input.extend_from_slice(&counter.to_le_bytes());
        out.extend_from_slice(blake3::hash(&input).as_bytes());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// The site: the edge box creates it and enrolls the kiosks, the POS terminals and the origin from join tokens;
/// every device starts and is admitted. Returns the site, the edge box and the kiosk token (kiosk-3 joins with it
/// later).
pub(super) async fn set_up_site(
    root: &Path,
    w: &mut impl Write,
) -> Result<(Site, Arc<Node>, String)> {
    let edge_dir = root.join("edge-1");
    crate::cmd::cli::create_site(
        &edge_dir,
        "Harbour Pop-up",
        Role::Edge,
        Some("edge-1".into()),
    )
    .await?;
    let mut site = Site {
        root: root.to_path_buf(),
        devices: BTreeMap::new(),
        bootstrap: Vec::new(),
    };
    site.devices.insert(
        "edge-1".into(),
        Device {
            name: "edge-1".into(),
            dir: edge_dir.clone(),
            node: None,
        },
    );
    let invite = |role: Role, uses: u32| {
        crate::cmd::cli::invite(&edge_dir, role, uses, 3_600_000, 86_400_000, Vec::new())
    };
    let kiosk_token = invite(Role::Kiosk, 3)?;
    let pos_token = invite(Role::Pos, 2)?;
    let origin_token = invite(Role::Origin, 1)?;
    for (token, name) in [
        (&kiosk_token, "kiosk-1"),
        (&kiosk_token, "kiosk-2"),
        (&pos_token, "pos-1"),
        (&pos_token, "pos-2"),
        (&origin_token, "origin"),
    ] {
        site.join(token, name).await?;
    }
    let edge = site.start("edge-1").await?;
    site.bootstrap = edge.mesh().listening();
    if site.bootstrap.is_empty() {
        until("the edge box listening", || async {
            !edge.mesh().listening().is_empty()
        })
        .await?;
        site.bootstrap = edge.mesh().listening();
    }
    for name in ["kiosk-1", "kiosk-2", "pos-1", "pos-2", "origin"] {
        site.start(name).await?;
    }
    let took = until(
        "every device admitted and holding the site directory",
        || {
            let nodes: Vec<Arc<Node>> = site.running().iter().map(|(_, n)| (*n).clone()).collect();
            let edge = edge.clone();
            async move {
                for node in &nodes {
                    let Ok(view) = node.view() else { return false };
                    if view.certificates().count() < 6 {
                        return false;
                    }
                }
                edge.mesh().peers().iter().filter(|p| p.admitted).count() >= 5
            }
        },
    )
    .await?;
    writeln!(
        w,
        "  site \"Harbour Pop-up\": edge-1 holds the authority key; kiosk-1, kiosk-2, pos-1, pos-2 and the \
         origin enrolled from join tokens and were admitted in {}",
        secs(took)
    )?;
    Ok((site, edge, kiosk_token))
}

/// The show and its media: the edge box creates the preview and the show, publishes the trailer and the
/// poster, and every kiosk and POS terminal preseeds them. Returns the trailer's hash.
pub(super) async fn open_the_show(
    site: &Site,
    edge: &Arc<Node>,
    w: &mut impl Write,
) -> Result<iroh_blobs::Hash> {
    let now = popmesh_node::clock::now().0;
    let grants = BTreeMap::from([
        ("edge-1".to_owned(), 24),
        ("kiosk-1".to_owned(), 18),
        ("kiosk-2".to_owned(), 18),
    ]);
    for (id, name, starts) in [
        (PREVIEW, "Harbour preview night", now - 7 * 86_400_000),
        (SHOW, "Harbour Friday", now + 3_600_000),
    ] {
        edge.create_show(NewShow {
            id: id.into(),
            name: name.into(),
            currency: "EUR".into(),
            slots: vec![NewSlot {
                id: SLOT.into(),
                label: "Main hall".into(),
                starts_at: starts,
                capacity: CAPACITY,
                grants: grants.clone(),
            }],
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating {id}: {e}"))?;
    }
    let trailer = media_bytes(8 << 20, 1);
    let poster = media_bytes(180 << 10, 2);
    let mut entries = Vec::new();
    for (name, bytes, mime) in [
        ("trailer.mp4", &trailer, "video/mp4"),
        ("poster.jpg", &poster, "image/jpeg"),
    ] {
        let body = bytes::Bytes::from(bytes.clone());
        let (hash, size) = edge
            .media()
            .add(futures::stream::iter([Ok(body)]), now)
            .await
            .map_err(|e| anyhow::anyhow!("adding {name}: {e}"))?;
        entries.push(NewEntry {
            name: name.into(),
            hash: hash.to_hex().to_string(),
            size,
            mime: mime.into(),
            ttl_ms: 86_400_000,
        });
    }
    let trailer_hash: iroh_blobs::Hash = entries[0].hash.parse()?;
    edge.publish_manifest(
        SHOW,
        ManifestUpdate {
            entries,
            fallback: Some("poster.jpg".into()),
            slices: BTreeMap::new(),
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("publishing the media: {e}"))?;
    let holders: Vec<Arc<Node>> = ["kiosk-1", "kiosk-2", "pos-1", "pos-2"]
        .iter()
        .map(|n| site.node(n).cloned())
        .collect::<Result<_>>()?;
    let took = until("every device holding the show's media", || {
        let holders = holders.clone();
        async move { all_hold(&holders, trailer_hash).await }
    })
    .await?;
    writeln!(
        w,
        "1. media: edge-1 published trailer.mp4 (8 MiB) and poster.jpg; both kiosks and both POS terminals \
         preseeded them from their peers in {}",
        secs(took)
    )?;
    Ok(trailer_hash)
}

/// Doors open with the origin connected: last week's preview check-ins, the first 16 attendees, a retried
/// payment that replays, and one refused over the offline limit. Returns the crowd (it keeps arriving) and its
/// sales so far.
pub(super) async fn doors_open(
    site: &Site,
    edge: &Arc<Node>,
    attendees: &[String],
    w: &mut impl Write,
) -> Result<(Crowd, Sales)> {
    // Last week's preview: the returning fans checked in there.
    for who in attendees.iter().take(RETURNING) {
        let pass = edge
            .issue_pass(Some(PREVIEW.into()), PassKind::Attendee, who, 86_400)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        edge.check_in(&pass.to_text(), Some(PREVIEW.into()))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let doors = [site.node("kiosk-1")?.clone(), site.node("kiosk-2")?.clone()];
    let tills = [site.node("pos-1")?.clone(), site.node("pos-2")?.clone()];
    let crowd = Crowd {
        edge: edge.clone(),
        doors: doors.clone(),
        tills: tills.clone(),
    };
    let sales = crowd.arrive(attendees, 0..16).await?;
    let (seats, paid, payments) = (sales.seats, sales.paid, sales.payments);
    // A terminal loses the answer and retries: the same idempotency key replays the receipt.
    let retry = PaymentRequest {
        idempotency_key: format!("merch-{}", attendees[0]),
        amount_minor: 1_250,
        currency: "EUR".into(),
        attendee: Some(attendees[0].clone()),
    };
    let (_, replayed) = tills[0]
        .pay(retry, Some(SHOW.into()))
        .await
        .map_err(|e| anyhow::anyhow!("retried payment: {e}"))?;
    ensure!(replayed, "a retried payment must replay, not charge again");
    let over = tills[1]
        .pay(
            PaymentRequest {
                idempotency_key: "bar-tab-7".into(),
                amount_minor: 40_000,
                currency: "EUR".into(),
                attendee: None,
            },
            Some(SHOW.into()),
        )
        .await;
    let refusal = match over {
        Err(e) => e.to_string(),
        Ok(_) => bail!("a EUR 400.00 offline payment must be refused over the limit"),
    };
    writeln!(
        w,
        "2. doors open: 16 attendees checked in at the kiosks ({} came to last week's preview); {} seats booked, \
         {payments} payments ({}) at the POS terminals",
        RETURNING,
        seats,
        eur(paid)
    )?;
    writeln!(
        w,
        "   pos-1 retried a payment: replayed, charged once; pos-2 tried {}: refused ({refusal})",
        eur(40_000)
    )?;
    Ok((crowd, sales))
}
