//! `popmesh demo`: a whole show on this machine. Seven real nodes (the daemon's own [`Node`]: libp2p mesh with
//! the site key, samod sync, iroh blobs, durable payments) run in one process on loopback: an edge box, two
//! kiosks, two POS terminals and the origin, and later a third kiosk dropped in with a join token.
//!
//! The story: the edge box creates the site and enrolls everyone from join tokens; it publishes the show's media
//! and every device preseeds it. The doors check attendees in with offline passes (some came to last week's
//! preview); kiosks sell seats and POS terminals take payments, one retried and one over the offline limit. The
//! origin's WAN link is cut; the site keeps selling, and a new kiosk joins, catches up and sells from quota the
//! edge box moves to it. The origin comes back, merges and verifies everything, reconciles the show against a
//! settlement batch the demo generates (with one declined card and one charge the site never saw), and writes
//! the show report. The demo checks the site's invariants before it says done: no seat oversold, every receipt
//! verified, every device holding the documents it keeps at the same heads.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};

use self::closing::{close_the_site, every_device_converges, settle, write_the_report};
use self::opening::{doors_open, open_the_show, set_up_site};
use self::outage::{cut_the_origin, kiosk_joins, origin_returns};

mod closing;
mod crowd;
mod opening;
mod outage;
mod site;

const SHOW: &str = "harbour-fri";
const PREVIEW: &str = "harbour-preview";
const SLOT: &str = "main";
const CAPACITY: u64 = 60;
const ATTENDEES: usize = 24;
/// Attendees who also came to last week's preview (the first ones).
const RETURNING: usize = 9;
/// How long any one step may wait for the site before the demo says what it was waiting for.
const STEP_TIMEOUT: Duration = Duration::from_secs(40);

/// What the demo did, for tests and the closing line.
#[derive(Debug, Clone, Default)]
pub struct ShowOutcome {
    pub seats_sold: u64,
    pub receipts: usize,
    pub receipts_verified: usize,
    pub matched: usize,
    pub report_dir: PathBuf,
    pub elapsed: Duration,
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn eur(minor: u64) -> String {
    format!("EUR {}.{:02}", minor / 100, minor % 100)
}

/// Runs the show. `out` receives the report; the devices' data lives in a temporary directory that is removed
/// at the end unless `keep` names a directory to keep it in.
pub fn run(out: &Path, keep: Option<&Path>, w: &mut impl Write) -> Result<ShowOutcome> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (root, temporary) = match keep {
        Some(dir) => {
            ensure!(
                !dir.exists() || std::fs::read_dir(dir)?.next().is_none(),
                "--keep {}: the directory must be new or empty",
                dir.display()
            );
            (dir.to_path_buf(), false)
        }
        None => {
            let mut suffix = [0u8; 6];
            getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
            let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
            (
                std::env::temp_dir().join(format!("popmesh-demo-{hex}")),
                true,
            )
        }
    };
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let outcome = runtime.block_on(play(&root, out, w));
    runtime.shutdown_timeout(Duration::from_secs(2));
    if temporary {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        writeln!(w, "device data kept in {}", root.display())?;
    }
    outcome
}

/// The story, phase by phase; each phase tells what happened as it goes.
async fn play(root: &Path, out: &Path, w: &mut impl Write) -> Result<ShowOutcome> {
    let began = Instant::now();
    writeln!(
        w,
        "popmesh demo: a pop-up show on this machine; every device is a real node on loopback"
    )?;
    let (mut site, edge, kiosk_token) = set_up_site(root, w).await?;
    let trailer_hash = open_the_show(&site, &edge, w).await?;
    let attendees: Vec<String> = (0..ATTENDEES).map(|i| format!("att-{i:04x}")).collect();
    let (crowd, sales) = doors_open(&site, &edge, &attendees, w).await?;
    let (mut seats, mut payments) = (sales.seats, sales.payments);
    let later = cut_the_origin(&mut site, &crowd, &attendees, payments, w).await?;
    seats += later.seats;
    payments += later.payments;
    seats += kiosk_joins(&mut site, &kiosk_token, &attendees, trailer_hash, w).await?;
    let (origin, receipts, verified) = origin_returns(&mut site, payments, w).await?;
    let recon = settle(&origin, &receipts, out, w).await?;
    let (took, sold) = every_device_converges(&site, &origin, seats).await?;
    write_the_report(&origin, out, took, w).await?;
    close_the_site(&mut site).await;
    let elapsed = began.elapsed();
    writeln!(
        w,
        "done in {}: no seat oversold, every receipt verified, every device converged",
        secs(elapsed)
    )?;
    Ok(ShowOutcome {
        seats_sold: sold,
        receipts: receipts.len(),
        receipts_verified: verified,
        matched: recon.matched.len(),
        report_dir: out.to_path_buf(),
        elapsed,
    })
}
