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
//! verified, every device holding the same documents.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use popmesh_crdt::Role;
use popmesh_crdt::access::PassKind;
use popmesh_crdt::privacy::{AttendeeProfile, Consent};
use popmesh_crdt::receipt::PaymentRequest;
use popmesh_transport::MeshConfig;

use crate::config::Config;
use crate::node::{EntrySpec, ManifestSpec, Node, RunOptions, ShowSpec, SlotSpec};
use crate::site::DataDir;

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

/// One device of the demo site.
struct Device {
    name: String,
    dir: PathBuf,
    node: Option<Arc<Node>>,
}

impl Device {
    fn node(&self) -> Result<&Arc<Node>> {
        self.node
            .as_ref()
            .with_context(|| format!("{} is not running", self.name))
    }
}

struct Site {
    root: PathBuf,
    devices: BTreeMap<String, Device>,
    bootstrap: Vec<libp2p::Multiaddr>,
}

impl Site {
    fn options(&self, dir: &Path) -> Result<RunOptions> {
        let dir = DataDir::load(dir)?;
        let mut config = Config::load(&DataDir::config_path(&dir.root))?;
        config.escrow.rebalance_every_secs = 1;
        config.media.port = 0;
        config.media.preseed_every_secs = 1;
        Ok(config.run_options(MeshConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            bootstrap: self.bootstrap.clone(),
            mdns: false,
            network_key: dir.network_key,
        }))
    }

    async fn start(&mut self, name: &str) -> Result<Arc<Node>> {
        let dir = self.devices[name].dir.clone();
        let options = self.options(&dir)?;
        // A restarted device may find its data file still closing for a moment.
        let started = Instant::now();
        let node = loop {
            match Node::start(DataDir::load(&dir)?, options.clone()).await {
                Ok(node) => break node,
                Err(e) if started.elapsed() < Duration::from_secs(10) => {
                    tracing::debug!("{name} not started yet: {e:#}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.context(format!("starting {name}"))),
            }
        };
        if let Some(d) = self.devices.get_mut(name) {
            d.node = Some(node.clone());
        }
        Ok(node)
    }

    async fn stop(&mut self, name: &str) {
        if let Some(node) = self.devices.get_mut(name).and_then(|d| d.node.take()) {
            node.shutdown().await;
        }
    }

    fn node(&self, name: &str) -> Result<&Arc<Node>> {
        self.devices
            .get(name)
            .with_context(|| format!("no device {name}"))?
            .node()
    }

    fn running(&self) -> Vec<(&str, &Arc<Node>)> {
        self.devices
            .iter()
            .filter_map(|(n, d)| d.node.as_ref().map(|node| (n.as_str(), node)))
            .collect()
    }

    async fn join(&mut self, token: &str, name: &str) -> Result<()> {
        let dir = self.root.join(name);
        crate::cli::join_site(token, &dir, Some(name.to_owned()))?;
        self.devices.insert(
            name.to_owned(),
            Device {
                name: name.to_owned(),
                dir,
                node: None,
            },
        );
        Ok(())
    }
}

/// Waits until `check` holds, polling; past [`STEP_TIMEOUT`] the error says what was awaited.
async fn until<F, Fut>(what: &str, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Ok(start.elapsed());
        }
        if start.elapsed() > STEP_TIMEOUT {
            bail!("the site did not get there in {STEP_TIMEOUT:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn eur(minor: u64) -> String {
    format!("EUR {}.{:02}", minor / 100, minor % 100)
}

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

async fn play(root: &Path, out: &Path, w: &mut impl Write) -> Result<ShowOutcome> {
    let began = Instant::now();
    writeln!(
        w,
        "popmesh demo: a pop-up show on this machine; every device is a real node on loopback"
    )?;

    // ----- 0. The site -----
    let edge_dir = root.join("edge-1");
    crate::cli::create_site(
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
        crate::cli::invite(&edge_dir, role, uses, 3_600_000, 86_400_000, Vec::new())
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

    // ----- 1. The show and its media -----
    let now = crate::clock::now().0;
    let grants = BTreeMap::from([
        ("edge-1".to_owned(), 24),
        ("kiosk-1".to_owned(), 18),
        ("kiosk-2".to_owned(), 18),
    ]);
    for (id, name, starts) in [
        (PREVIEW, "Harbour preview night", now - 7 * 86_400_000),
        (SHOW, "Harbour Friday", now + 3_600_000),
    ] {
        edge.create_show(ShowSpec {
            id: id.into(),
            name: name.into(),
            currency: "EUR".into(),
            slots: vec![SlotSpec {
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
        entries.push(EntrySpec {
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
        ManifestSpec {
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

    // ----- 2. Doors and sales, origin connected -----
    let attendees: Vec<String> = (0..ATTENDEES).map(|i| format!("att-{i:04x}")).collect();
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
    let sales = crowd.arrive(&attendees, 0..16).await?;
    let (mut seats, paid, mut payments) = (sales.seats, sales.paid, sales.payments);
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

    // ----- 3. The origin's WAN link is cut -----
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
    let later = crowd.arrive(&attendees, 16..ATTENDEES).await?;
    seats += later.seats;
    payments += later.payments;
    writeln!(
        w,
        "   while it is away: 8 more attendees checked in, {} seats booked and {} payments ({}) taken offline",
        later.seats,
        later.payments,
        eur(later.paid)
    )?;
    // A new kiosk is dropped in: it joins with the kiosk token, finds the site, and catches up by itself.
    site.join(&kiosk_token, "kiosk-3").await?;
    let joined = Instant::now();
    let kiosk3 = site.start("kiosk-3").await?;
    let doc_count = edge.documents().await.len();
    {
        let k = kiosk3.clone();
        until("kiosk-3 holding every document and the media", || {
            let k = k.clone();
            async move { k.documents().await.len() >= doc_count && all_hold(&[k], trailer_hash).await }
        })
        .await?;
    }
    let caught_up = joined.elapsed();
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
    seats += 2;
    writeln!(
        w,
        "   kiosk-3 joined with a token and caught up on {doc_count} documents and the media in {}; the edge box \
         moved seats to it and it sold 2",
        secs(caught_up)
    )?;

    // ----- 4. The origin comes back -----
    tokio::time::sleep(Duration::from_millis(1_500)).await;
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
                if n.open_incidents().await > 0 {
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
    let verified = receipts.iter().filter(|r| r.verified).count();
    writeln!(
        w,
        "4. the origin is back: it merged {} receipts from {} devices in {}; {verified} of {} verify",
        receipts.len(),
        receipts
            .iter()
            .map(|r| r.device.as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        secs(merged_in),
        receipts.len()
    )?;
    ensure!(
        verified == receipts.len(),
        "every receipt must verify at the origin"
    );

    // ----- 5. Settlement -----
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut csv = String::from("token,amount_minor,currency,status\n");
    for (i, r) in receipts.iter().enumerate() {
        let status = if i == 3 { "declined" } else { "settled" };
        csv.push_str(&format!(
            "{},{},{},{status}\n",
            r.token, r.amount_minor, r.currency
        ));
    }
    csv.push_str("ch_3PqfZ9offsite,2500,EUR,settled\n");
    let batch_path = out.join("settlement-batch.csv");
    crate::site::write_atomic(&batch_path, csv.as_bytes(), false)?;
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

    // ----- 6. Every device converges; the report -----
    let took = until("every device holding the same documents", || {
        let nodes: Vec<Arc<Node>> = site.running().iter().map(|(_, n)| (*n).clone()).collect();
        async move { converged(&nodes).await }
    })
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
    let report = origin
        .report(Some(SHOW.into()))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let files = crate::report::write(&report, out)?;
    writeln!(
        w,
        "6. every device holds the same documents ({} after the reconciliation); the show report:",
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
            .map(crate::report::duration)
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
            .map(crate::report::duration)
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

    let names: Vec<String> = site
        .running()
        .iter()
        .map(|(n, _)| (*n).to_owned())
        .collect();
    for name in names {
        site.stop(&name).await;
    }
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

/// The attendees, arriving: each is issued a pass at the edge box, checked in at a kiosk door, taps around the
/// kiosk, and some (returning fans more often) book seats and buy merchandise a moment later.
struct Crowd {
    edge: Arc<Node>,
    doors: [Arc<Node>; 2],
    tills: [Arc<Node>; 2],
}

#[derive(Debug, Default)]
struct Sales {
    seats: u64,
    paid: u64,
    payments: usize,
}

impl Crowd {
    async fn arrive(&self, attendees: &[String], range: std::ops::Range<usize>) -> Result<Sales> {
        let visits = range.map(|i| self.visit(i, attendees[i].clone()));
        let mut sales = Sales::default();
        for visit in futures::future::join_all(visits).await {
            let (seats, paid) = visit?;
            sales.seats += seats;
            if paid > 0 {
                sales.paid += paid;
                sales.payments += 1;
            }
        }
        Ok(sales)
    }

    /// One attendee's visit; returns the seats they booked and what they paid.
    async fn visit(&self, i: usize, who: String) -> Result<(u64, u64)> {
        let err = |what: &str, e: crate::node::Failure| anyhow::anyhow!("{what} for {who}: {e}");
        // Arrivals 150 ms apart; buyers decide 0.3 to 2.3 s after check-in.
        tokio::time::sleep(Duration::from_millis(150 * (i as u64 % 16))).await;
        let pass = self
            .edge
            .issue_pass(Some(SHOW.into()), PassKind::Attendee, &who, 4 * 3600)
            .await
            .map_err(|e| err("pass", e))?;
        let door = &self.doors[i % 2];
        door.check_in(&pass.to_text(), Some(SHOW.into()))
            .await
            .map_err(|e| err("check-in", e))?;
        // Half the attendees say yes to analytics at the kiosk; the profile stays on that kiosk.
        door.update_profile(
            &who,
            &AttendeeProfile {
                consent: Consent {
                    analytics: Some(i.is_multiple_of(2)),
                    marketing: Some(i.is_multiple_of(3)),
                },
                fields: BTreeMap::from([("favourite_stage".into(), "harbour".into())]),
                visits: vec![],
            },
        )
        .map_err(|e| err("profile", e))?;
        for _ in 0..(4 + i % 7) {
            door.count("screen.tap", 1, Some(&who))
                .map_err(|e| err("telemetry", e))?;
        }
        door.count("ar.session", 1, Some(&who))
            .map_err(|e| err("telemetry", e))?;
        let buys = if i < RETURNING {
            i % 4 != 3
        } else {
            i.is_multiple_of(3)
        };
        if !buys {
            return Ok((0, 0));
        }
        tokio::time::sleep(Duration::from_millis(300 + 250 * (i as u64 % 9))).await;
        let seats = 1 + (i as u64 % 3);
        door.book(SHOW, SLOT, &format!("bk-{who}"), seats, Some(who.clone()))
            .await
            .map_err(|e| err("booking", e))?;
        let amount = 1_250 + 350 * (i as u64 % 4);
        self.tills[i % 2]
            .pay(
                PaymentRequest {
                    idempotency_key: format!("merch-{who}"),
                    amount_minor: amount,
                    currency: "EUR".into(),
                    attendee: Some(who.clone()),
                },
                Some(SHOW.into()),
            )
            .await
            .map_err(|e| err("payment", e))?;
        Ok((seats, amount))
    }
}

async fn receipts_of(node: &Node) -> usize {
    node.receipts().await.map(|r| r.len()).unwrap_or(0)
}

async fn all_hold(nodes: &[Arc<Node>], hash: iroh_blobs::Hash) -> bool {
    for node in nodes {
        match node.media().state(hash).await {
            Ok(s) if s.state == "complete" => {}
            _ => return false,
        }
    }
    true
}

/// Every node holds every document at the same heads.
async fn converged(nodes: &[Arc<Node>]) -> bool {
    let mut first: Option<BTreeMap<String, Vec<String>>> = None;
    for node in nodes {
        let docs: BTreeMap<String, Vec<String>> = node
            .documents()
            .await
            .into_iter()
            .map(|d| {
                let mut heads = d.heads;
                heads.sort();
                (d.id, heads)
            })
            .collect();
        match &first {
            None => first = Some(docs),
            Some(f) if *f == docs => {}
            Some(_) => return false,
        }
    }
    true
}
