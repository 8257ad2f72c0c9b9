//! The origin's WAN link is cut and comes back: the site keeps selling, a new kiosk joins and catches up, and the
//! origin merges and verifies every receipt when it returns.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, ensure};

use super::crowd::{Crowd, Sales};
use super::site::{Site, all_hold, receipts_of, until};
use super::{ATTENDEES, SHOW, SLOT, eur, secs};
use popmesh_node::node::{CheckedReceipt, Node};

/// The origin's WAN link is cut once it has merged the receipts so far; the rest of the crowd arrives and the
/// site keeps selling offline. Returns those later sales.
pub(super) async fn cut_the_origin(
    site: &mut Site,
    crowd: &Crowd,
    attendees: &[String],
    payments: usize,
    w: &mut impl Write,
) -> Result<Sales> {
    let origin = site.node("origin")?.clone();
    until("the origin merging the receipts so far", || {
        let o = origin.clone();
        async move { receipts_of(&o).await >= payments }
    })
    .await?;
    let origin_receipts_before = receipts_of(&origin).await;
    drop(origin);
    site.stop("origin").await;
    writeln!(
        w,
        "3. the origin's WAN link is cut (it had merged {origin_receipts_before} receipts); the site keeps selling"
    )?;
    let later = crowd.arrive(attendees, 16..ATTENDEES).await?;
    writeln!(
        w,
        "   while it is away: 8 more attendees checked in, {} seats booked and {} payments ({}) taken offline",
        later.seats,
        later.payments,
        eur(later.paid)
    )?;
    Ok(later)
}

/// While the origin is away, a new kiosk is dropped in: it joins with the kiosk token, catches up on every document it
/// keeps and the media, gets seats from the edge box's rebalancer and sells 2. Returns the seats it sold.
pub(super) async fn kiosk_joins(
    site: &mut Site,
    kiosk_token: &str,
    attendees: &[String],
    trailer_hash: iroh_blobs::Hash,
    w: &mut impl Write,
) -> Result<u64> {
    // A new kiosk is dropped in: it joins with the kiosk token, finds the site, and catches up by itself.
    site.join(kiosk_token, "kiosk-3").await?;
    let joined = Instant::now();
    let kiosk3 = site.start("kiosk-3").await?;
    {
        let k = kiosk3.clone();
        until(
            "kiosk-3 holding every document it keeps, and the media",
            || {
                let k = k.clone();
                async move {
                    k.status().await.enrolled
                        && k.documents_missing().is_empty()
                        && all_hold(&[k], trailer_hash).await
                }
            },
        )
        .await?;
    }
    let caught_up = joined.elapsed();
    let doc_count = kiosk3.documents().await.len();
    // It has no seats of its own: the edge box's rebalancer moves some to it.
    {
        let k = kiosk3.clone();
        until("the edge box moving seats to kiosk-3", || {
            let k = k.clone();
            async move {
                k.availability(SHOW, SLOT)
                    .await
                    .is_ok_and(|a| a.available_here > 0)
            }
        })
        .await?;
    }
    let who = &attendees[17];
    kiosk3
        .book(SHOW, SLOT, &format!("bk-{who}"), 2, Some(who.clone()))
        .await
        .map_err(|e| anyhow::anyhow!("kiosk-3 booking: {e}"))?;
    writeln!(
        w,
        "   kiosk-3 joined with a token and caught up on {doc_count} documents and the media in {}; the edge box \
         moved seats to it and it sold 2",
        secs(caught_up)
    )?;
    Ok(2)
}

/// The origin comes back: it merges every receipt, every device sees it again, the kiosks' telemetry reaches it,
/// and every receipt verifies. Returns the origin, its receipts and how many verify.
pub(super) async fn origin_returns(
    site: &mut Site,
    payments: usize,
    w: &mut impl Write,
) -> Result<(Arc<Node>, Vec<CheckedReceipt>, usize)> {
    // The edge box records the origin's absence (after the watchman's grace) before the origin comes back, so the
    // show report has an uplink outage to measure.
    let edge = site.node("edge-1")?.clone();
    until("the edge box recording the origin's absence", || {
        let edge = edge.clone();
        async move {
            edge.open_incident_list()
                .iter()
                .any(|i| i.kind == "origin_lost")
        }
    })
    .await?;
    let back = Instant::now();
    let origin = site.start("origin").await?;
    let expected = payments;
    {
        let o = origin.clone();
        until("the origin merging every receipt", || {
            let o = o.clone();
            async move { receipts_of(&o).await >= expected }
        })
        .await?;
    }
    let merged_in = back.elapsed();
    // The devices that saw the origin go record that it is back; kiosk counters reach it within a flush window.
    let running: Vec<Arc<Node>> = site.running().iter().map(|(_, n)| (*n).clone()).collect();
    until("every device seeing the origin again", || {
        let nodes = running.clone();
        async move {
            for n in &nodes {
                if n.open_incidents() > 0 {
                    return false;
                }
            }
            true
        }
    })
    .await?;
    until("the kiosks' telemetry reaching the origin", || {
        let o = origin.clone();
        async move {
            o.counters()
                .await
                .is_ok_and(|c| c.get("ar.session").copied().unwrap_or(0) >= 8)
        }
    })
    .await?;
    let receipts = origin
        .receipts()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let verified = receipts.iter().filter(|r| r.verified.is_ok()).count();
    writeln!(
        w,
        "4. the origin is back: it merged {} receipts from {} devices in {}; {verified} of {} verify",
        receipts.len(),
        receipts
            .iter()
            .map(|r| r.receipt.device)
            .collect::<BTreeSet<_>>()
            .len(),
        secs(merged_in),
        receipts.len()
    )?;
    ensure!(
        verified == receipts.len(),
        "every receipt must verify at the origin"
    );
    Ok((origin, receipts, verified))
}
