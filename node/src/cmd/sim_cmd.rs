//! `popmesh sim`: runs the chaos simulator from the command line and prints its report.
//!
//! The simulator never reads the wall clock; this command does, to report simulated seconds per wall second.

use std::io::Write;
use std::ops::Range;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use popmesh_sim::{RunReport, SimOptions, SweepReport};

/// Parses `1h`, `90m`, `45s` or plain milliseconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| {
        format!("'{s}' is not a duration: use a number with h, m, s or ms, such as 1h or 90s")
    })?;
    let ms = match unit {
        "h" => n * 3_600_000,
        "m" => n * 60_000,
        "s" => n * 1_000,
        "ms" | "" => n,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{s}': use h, m, s or ms"
            ));
        }
    };
    if ms < 60_000 {
        return Err(format!(
            "'{s}' is too short: a show lasts at least a minute"
        ));
    }
    Ok(ms)
}

/// Parses `A..B` (B excluded).
pub fn parse_seeds(s: &str) -> Result<Range<u64>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("'{s}' is not a seed range: write it as A..B, such as 0..200"))?;
    let a: u64 = a
        .parse()
        .map_err(|_| format!("'{a}' in --seeds is not a number"))?;
    let b: u64 = b
        .parse()
        .map_err(|_| format!("'{b}' in --seeds is not a number"))?;
    if b <= a {
        return Err(format!(
            "--seeds {s} is empty: the end must be greater than the start"
        ));
    }
    Ok(a..b)
}

#[derive(Debug)]
pub struct SimArgs {
    pub seed: Option<u64>,
    pub seeds: Option<Range<u64>>,
    pub devices: usize,
    pub duration_ms: u64,
    pub no_faults: bool,
    pub json: bool,
}

pub fn run(args: SimArgs, out: &mut impl Write) -> Result<bool> {
    if args.devices < 5 {
        bail!(
            "--devices {} is too few: a simulated site needs at least 5 (edge, two sellers, a late kiosk, the origin)",
            args.devices
        );
    }
    let options = SimOptions {
        seed: args.seed.unwrap_or(0),
        devices: args.devices,
        duration_ms: args.duration_ms,
        faults: !args.no_faults,
        ..SimOptions::default()
    };
    let seeds = match (args.seed, args.seeds) {
        (Some(_), Some(_)) => bail!("give either --seed or --seeds, not both"),
        (Some(seed), None) => seed..seed + 1,
        (None, Some(range)) => range,
        (None, None) => 0..1,
    };
    let single = seeds.end - seeds.start == 1;
    let started = Instant::now();
    let mut runs = Vec::new();
    for seed in seeds {
        let report = popmesh_sim::run(SimOptions {
            seed,
            ..options.clone()
        });
        if !args.json && !single {
            let verdict = if report.passed() { "ok" } else { "FAILED" };
            writeln!(out, "seed {seed}: {verdict}")?;
        }
        runs.push(report);
    }
    let wall_ms = u64::try_from(started.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut sweep = SweepReport::of(&runs);
    sweep.wall_ms = Some(wall_ms);
    if args.json {
        let value = if single {
            serde_json::to_value(&runs[0]).context("report to JSON")?
        } else {
            serde_json::to_value(&sweep).context("report to JSON")?
        };
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else if single {
        print_run(out, &runs[0], wall_ms)?;
    } else {
        print_sweep(out, &sweep, args.devices)?;
    }
    Ok(sweep.failed_seeds.is_empty())
}

fn print_run(out: &mut impl Write, r: &RunReport, wall_ms: u64) -> Result<()> {
    writeln!(
        out,
        "seed {} with {} devices, {:.1} simulated minutes",
        r.seed,
        r.devices,
        r.simulated_ms as f64 / 60_000.0
    )?;
    writeln!(out, "  trace            {}", r.trace_hash)?;
    writeln!(
        out,
        "  sold             {} seats ({} refused for quota, {} quota transfers)",
        r.seats_sold, r.sales_refused, r.quota_transfers
    )?;
    writeln!(
        out,
        "  payments         {} receipts ({} retries replayed, {} over the risk limits, {} reconciled by the \
         origin)",
        r.receipts, r.payment_retries, r.payments_refused, r.receipts_reconciled
    )?;
    writeln!(
        out,
        "  faults           {} partitions, {} crashes, {} connection resets, {} blob fetches cut",
        r.partitions, r.crashes, r.connection_resets, r.blob_fetch_failures
    )?;
    writeln!(
        out,
        "  disks            {} faults, {} store recoveries; refused for the disk: {} payments at once, {} not \
         durable, {} bookings",
        r.disk_faults,
        r.store_recoveries,
        r.payments_refused_disk,
        r.payments_not_durable,
        r.sales_refused_disk
    )?;
    writeln!(
        out,
        "  gate             {} link openings refused; {} payments refused while pages loaded",
        r.links_refused, r.payments_loading
    )?;
    writeln!(out, "  heal -> converge {}", r.convergence_after_heal)?;
    match r.final_convergence_ms {
        Some(ms) => writeln!(out, "  after faults     converged in {ms} ms")?,
        None => writeln!(out, "  after faults     DID NOT CONVERGE")?,
    }
    writeln!(out, "  MTTR             {}", r.mttr)?;
    writeln!(
        out,
        "  traffic          {:.0} messages and {:.0} bytes per document ({} documents); per change per \
         device {:.2} messages, {:.0} bytes ({} changes)",
        r.messages_per_document(),
        r.bytes_per_document(),
        r.documents,
        r.messages_per_change_per_device(),
        r.bytes_per_change_per_device(),
        r.changes
    )?;
    writeln!(
        out,
        "  speed            {:.2} simulated seconds per wall second",
        r.simulated_ms as f64 / wall_ms as f64
    )?;
    if r.passed() {
        writeln!(
            out,
            "  invariants       held: no receipt lost, no seat oversold, every receipt verified, counters in \
             bounds, every acknowledged payment on disk, every POS within its stored limit across shows, no link \
             to a revoked device"
        )?;
    } else {
        writeln!(
            out,
            "  VIOLATIONS (replay with: popmesh sim --seed {} --devices {}):",
            r.seed, r.devices
        )?;
        for v in &r.violations {
            writeln!(out, "    {v}")?;
        }
    }
    Ok(())
}

fn print_sweep(out: &mut impl Write, s: &SweepReport, devices: usize) -> Result<()> {
    let wall_ms = s.wall_ms.unwrap_or(1);
    writeln!(
        out,
        "{} seeds, {} failed",
        s.seeds_run,
        s.failed_seeds.len()
    )?;
    writeln!(out, "  heal -> converge {}", s.convergence_after_heal)?;
    let f = &s.final_convergence;
    writeln!(
        out,
        "  after faults     p50 {} ms, p99 {} ms, max {} ms",
        f.p50_ms, f.p99_ms, f.max_ms
    )?;
    writeln!(out, "  MTTR             {}", s.mttr)?;
    writeln!(
        out,
        "  traffic          {:.0} messages and {:.0} bytes per document; per change per device {:.2} \
         messages, {:.0} bytes",
        s.messages_per_document,
        s.bytes_per_document,
        s.messages_per_change_per_device,
        s.bytes_per_change_per_device
    )?;
    let device_hours = s.simulated_ms as f64 * devices as f64 / 3_600_000.0;
    writeln!(
        out,
        "  speed            {:.2} simulated seconds per wall second; {:.2} device-hours per wall minute",
        s.simulated_ms as f64 / wall_ms as f64,
        device_hours / (wall_ms as f64 / 60_000.0)
    )?;
    for v in &s.violations {
        writeln!(out, "  {v}")?;
    }
    for seed in &s.failed_seeds {
        writeln!(
            out,
            "  replay: popmesh sim --seed {seed} --devices {devices}"
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_seed_ranges_parse_or_say_why_not() {
        assert_eq!(parse_duration("1h"), Ok(3_600_000));
        assert_eq!(parse_duration("90s"), Ok(90_000));
        assert!(matches!(parse_duration("1d"), Err(e) if e.contains("unknown unit")));
        assert!(matches!(parse_duration("10s"), Err(e) if e.contains("too short")));
        assert_eq!(parse_seeds("0..200"), Ok(0..200));
        assert!(matches!(parse_seeds("5..5"), Err(e) if e.contains("empty")));
        assert!(matches!(parse_seeds("x"), Err(e) if e.contains("A..B")));
    }
}
