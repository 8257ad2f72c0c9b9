//! The show closes: the origin reconciles against a settlement batch, every device converges with no seat
//! oversold, the show report is written, and the devices shut down.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use popmesh_crdt::settlement::Reconciliation;

use super::site::{Site, converged, until};
use super::{SHOW, SLOT, eur, secs};
use popmesh_node::node::{CheckedReceipt, Node};

/// Settlement: the demo writes the processor's batch (one card declined, one charge the site never saw) and the
/// origin reconciles the show against it.
pub(super) async fn settle(
    origin: &Node,
    receipts: &[CheckedReceipt],
    out: &Path,
    w: &mut impl Write,
) -> Result<Reconciliation> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut csv = String::from("token,amount_minor,currency,status\n");
    for (i, r) in receipts.iter().enumerate() {
        let status = if i == 3 { "declined" } else { "settled" };
        csv.push_str(&format!(
            "{},{},{},{status}\n",
            r.token, r.receipt.amount_minor, r.receipt.currency
        ));
    }
    csv.push_str("ch_3PqfZ9offsite,2500,EUR,settled\n");
    let batch_path = out.join("settlement-batch.csv");
    popmesh_node::site::write_atomic(&batch_path, csv.as_bytes(), false)?;
    let rows = popmesh_crdt::settlement::parse_csv(&csv)?;
    let (recon, marked) = origin
        .reconcile("settlement-batch.csv", &rows)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    writeln!(
        w,
        "5. settlement: {} rows from the processor; {} matched and marked ({marked} now), {} declined, {} charge \
         missing at the site, {} missing at the processor, {} amount mismatches",
        rows.len(),
        recon.matched.len(),
        recon.declined.len(),
        recon.missing_at_site.len(),
        recon.missing_at_processor.len(),
        recon.amount_mismatches.len()
    )?;
    Ok(recon)
}

/// Every device converges on the documents it keeps (`Topology::holds`), none sees a seat oversold, and the origin counts every seat the
/// demo sold. Returns how long convergence took and the seats sold.
pub(super) async fn every_device_converges(
    site: &Site,
    origin: &Node,
    seats: u64,
) -> Result<(Duration, u64)> {
    let took = until(
        "every device holding the documents it keeps, at the same heads",
        || {
            let nodes: Vec<Arc<Node>> = site.running().iter().map(|(_, n)| (*n).clone()).collect();
            async move { converged(&nodes).await }
        },
    )
    .await?;
    for (name, node) in site.running() {
        let a = node
            .availability(SHOW, SLOT)
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        ensure!(
            a.sold <= a.capacity,
            "{name} sees {} seats sold of {}",
            a.sold,
            a.capacity
        );
    }
    let sold = origin
        .availability(SHOW, SLOT)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .sold;
    ensure!(
        sold == seats,
        "the origin sees {sold} seats sold, the demo sold {seats}"
    );
    Ok((took, sold))
}

/// The show report: written to `out`, and its headline figures told.
pub(super) async fn write_the_report(
    origin: &Node,
    out: &Path,
    took: Duration,
    w: &mut impl Write,
) -> Result<()> {
    let report = origin
        .report(Some(SHOW.into()))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let files = crate::cmd::report::write(&report, out)?;
    writeln!(
        w,
        "6. every device holds the documents it keeps, at the same heads ({} after the reconciliation); the show \
         report:",
        secs(took)
    )?;
    let r = &report;
    writeln!(
        w,
        "   {} of {} seats booked; {} payments, {} taken, {} unreconciled",
        r.totals.seats,
        r.totals.capacity,
        r.totals.payments,
        eur(r.totals.amounts.get("EUR").copied().unwrap_or(0)),
        eur(r.totals.unreconciled.get("EUR").copied().unwrap_or(0))
    )?;
    writeln!(
        w,
        "   {} of {} checked-in attendees bought (median {} after check-in); retention lift {}; engagement {} / 100",
        r.conversion.converted,
        r.conversion.checked_in,
        r.conversion
            .median_ms
            .map(crate::cmd::report::duration)
            .unwrap_or_else(|| "n/a".into()),
        r.retention
            .lift
            .map(|l| format!("{l:.2}x"))
            .unwrap_or_else(|| "n/a".into()),
        r.engagement.score
    )?;
    writeln!(
        w,
        "   uplink outages {}, MTTR {}",
        r.operations.uplink_outages.len(),
        r.operations
            .uplink_mttr_ms
            .map(crate::cmd::report::duration)
            .unwrap_or_else(|| "n/a".into())
    )?;
    writeln!(
        w,
        "   written: {} (and {})",
        files
            .iter()
            .find(|f| f.ends_with("report.html"))
            .map(|f| f.display().to_string())
            .unwrap_or_default(),
        files
            .iter()
            .filter(|f| !f.ends_with("report.html"))
            .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
            .chain(["settlement-batch.csv".to_owned()])
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    Ok(())
}

/// The show is over: every running device shuts down.
pub(super) async fn close_the_site(site: &mut Site) {
    let names: Vec<String> = site
        .running()
        .iter()
        .map(|(n, _)| (*n).to_owned())
        .collect();
    for name in names {
        site.stop(&name).await;
    }
}
