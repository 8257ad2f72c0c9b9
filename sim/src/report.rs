//! What a simulation run found: violations, convergence times, MTTR, traffic, and a hash of the whole trace.

use serde::Serialize;

/// Percentiles of a list of durations, in simulated milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Quantiles {
    pub count: usize,
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

impl Quantiles {
    pub fn of(samples: &[u64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        Self {
            count: sorted.len(),
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: *sorted.last().unwrap_or(&0),
        }
    }
}

impl std::fmt::Display for Quantiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {} ms, p95 {} ms, p99 {} ms, max {} ms ({} samples)",
            self.p50_ms, self.p95_ms, self.p99_ms, self.max_ms, self.count
        )
    }
}

/// One run's outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    pub seed: u64,
    pub devices: usize,
    pub simulated_ms: u64,
    /// BLAKE3 of every event the run processed, in order: equal for equal seeds.
    pub trace_hash: String,
    /// Invariant violations, each saying what broke and where.
    pub violations: Vec<String>,
    /// Time from each heal (partition end, device restart, origin arrival) to full convergence.
    pub convergence_after_heal: Quantiles,
    /// Time from the end of faults to full convergence, if it converged.
    pub final_convergence_ms: Option<u64>,
    /// Time from each device failure to its full feature parity (documents open and caught up, media preseeded).
    pub mttr: Quantiles,
    /// Incidents the devices' watchmen wrote (openings and resolutions), and the outages and MTTR the origin's
    /// show report computes from them at the end.
    pub incidents_written: u64,
    /// Changes the watchmen wrote, and how many of them carried who a device sees.
    pub watch_writes: u64,
    pub sees_writes: u64,
    pub outages: u64,
    pub outage_mttr_ms: Option<u64>,
    pub messages: u64,
    pub bytes: u64,
    /// Changes devices made to documents (each crossing links to every device holding it).
    pub changes: u64,
    pub documents: usize,
    pub seats_sold: u64,
    pub sales_refused: u64,
    /// Bookings refused because the store had failed, or whose write the disk refused.
    pub sales_refused_disk: u64,
    pub quota_transfers: u64,
    pub receipts: u64,
    /// Refused over the risk limits (per payment, or the stored limit across both shows).
    pub payments_refused: u64,
    /// Receipts the origin marked reconciled against the processor's batch (which frees the stored limits).
    pub receipts_reconciled: u64,
    pub payment_retries: u64,
    /// Payments the desk refused while this device's pages were loading after a start.
    pub payments_loading: u64,
    /// Refused at once on a failed store, and answered "not durable" when the fsync failed.
    pub payments_refused_disk: u64,
    pub payments_not_durable: u64,
    /// Disks that began refusing writes, and stores that reopened once they worked again.
    pub disk_faults: u64,
    pub store_recoveries: u64,
    /// Link openings a gate refused (the stolen device, mostly).
    pub links_refused: u64,
    /// Whether a revoked (stolen) or a forged device came on site in this run.
    pub stolen_devices: u64,
    pub forged_devices: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub connection_resets: u64,
    pub blob_fetch_failures: u64,
    #[serde(skip)]
    pub heal_samples_ms: Vec<u64>,
    #[serde(skip)]
    pub mttr_samples_ms: Vec<u64>,
    /// One line per event, when asked for.
    #[serde(skip)]
    pub trace: Vec<String>,
    /// Every delivered wire message, when a trace is kept.
    #[serde(skip)]
    pub messages_seen: Vec<Vec<u8>>,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn messages_per_document(&self) -> f64 {
        self.messages as f64 / self.documents.max(1) as f64
    }

    pub fn bytes_per_document(&self) -> f64 {
        self.bytes as f64 / self.documents.max(1) as f64
    }

    /// Each device's share of the wire messages one change costs: flat, not growing with the site's size, when
    /// no device's work grows with it.
    pub fn messages_per_change_per_device(&self) -> f64 {
        self.messages as f64 / self.changes.max(1) as f64 / self.devices.max(1) as f64
    }

    /// [`RunReport::messages_per_change_per_device`] in bytes.
    pub fn bytes_per_change_per_device(&self) -> f64 {
        self.bytes as f64 / self.changes.max(1) as f64 / self.devices.max(1) as f64
    }
}

/// A sweep over many seeds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SweepReport {
    pub seeds_run: usize,
    pub failed_seeds: Vec<u64>,
    pub violations: Vec<String>,
    pub convergence_after_heal: Quantiles,
    pub final_convergence: Quantiles,
    pub mttr: Quantiles,
    pub messages_per_document: f64,
    pub bytes_per_document: f64,
    /// The runs' [`RunReport::messages_per_change_per_device`], over all their messages and changes.
    pub messages_per_change_per_device: f64,
    pub bytes_per_change_per_device: f64,
    pub simulated_ms: u64,
    /// Filled in by the caller, which owns the wall clock.
    pub wall_ms: Option<u64>,
}

impl SweepReport {
    pub fn of(runs: &[RunReport]) -> Self {
        let heal_samples: Vec<u64> = runs
            .iter()
            .flat_map(|r| r.heal_samples_ms.iter().copied())
            .collect();
        let mttr_samples: Vec<u64> = runs
            .iter()
            .flat_map(|r| r.mttr_samples_ms.iter().copied())
            .collect();
        let finals: Vec<u64> = runs.iter().filter_map(|r| r.final_convergence_ms).collect();
        let docs: usize = runs.iter().map(|r| r.documents).sum();
        Self {
            seeds_run: runs.len(),
            failed_seeds: runs
                .iter()
                .filter(|r| !r.passed())
                .map(|r| r.seed)
                .collect(),
            violations: runs
                .iter()
                .flat_map(|r| {
                    r.violations
                        .iter()
                        .map(move |v| format!("seed {}: {v}", r.seed))
                })
                .collect(),
            convergence_after_heal: Quantiles::of(&heal_samples),
            final_convergence: Quantiles::of(&finals),
            mttr: Quantiles::of(&mttr_samples),
            messages_per_document: runs.iter().map(|r| r.messages).sum::<u64>() as f64
                / docs.max(1) as f64,
            bytes_per_document: runs.iter().map(|r| r.bytes).sum::<u64>() as f64
                / docs.max(1) as f64,
            messages_per_change_per_device: per_change_per_device(runs, |r| r.messages),
            bytes_per_change_per_device: per_change_per_device(runs, |r| r.bytes),
            simulated_ms: runs.iter().map(|r| r.simulated_ms).sum(),
            wall_ms: None,
        }
    }
}

/// `what` summed over `runs`, per change made and per device (each run weighted by its changes and devices).
fn per_change_per_device(runs: &[RunReport], what: impl Fn(&RunReport) -> u64) -> f64 {
    let total: u64 = runs.iter().map(&what).sum();
    let weight: f64 = runs
        .iter()
        .map(|r| r.changes as f64 * r.devices as f64)
        .sum();
    total as f64 / weight.max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_known_list() {
        let q = Quantiles::of(&(1..=100).collect::<Vec<u64>>());
        assert_eq!(
            (q.count, q.p50_ms, q.p95_ms, q.p99_ms, q.max_ms),
            (100, 51, 95, 99, 100)
        );
        assert_eq!(Quantiles::of(&[]), Quantiles::default());
    }
}
