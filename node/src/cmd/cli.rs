//! The site commands: `site init`, `site invite`, `site revoke`, `join`, `run`, `status`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use popmesh_crdt::directory::Directory;
use popmesh_crdt::enrollment::{InviteTerms, JoinToken, RevocationTarget, SiteAuthority};
use popmesh_crdt::{DeviceId, Doc, Role, SecretKey, actor_id};

use popmesh_node::clock;
use popmesh_node::config::Config;
use popmesh_node::site::{DataDir, SiteFile, random_seed};
use popmesh_node::store::Store;

const DAY_MS: u64 = 24 * 3_600_000;

/// Parses a span such as `30d`, `24h`, `90m` or `45s` into milliseconds.
pub fn parse_span(s: &str) -> Result<u64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a span: use a number with d, h, m or s, such as 24h"))?;
    let unit_ms = match unit {
        "d" => DAY_MS,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1_000,
        other => return Err(format!("unknown unit '{other}' in '{s}': use d, h, m or s")),
    };
    n.checked_mul(unit_ms)
        .filter(|ms| *ms > 0)
        .ok_or_else(|| format!("'{s}' is not a usable span"))
}

/// `popmesh site init`: a new site whose first device is `data`.
pub async fn init(data: &Path, name: &str, role: Role, device_name: Option<String>) -> Result<()> {
    let (site, device, device_name) = create_site(data, name, role, device_name).await?;
    println!("site \"{name}\" created: site id {site}");
    println!("  this device: {device_name} ({role}) {device}");
    println!("  data directory: {}", data.display());
    println!(
        "  invite devices: popmesh site invite --data {} --role pos",
        data.display()
    );
    println!("  start the node: popmesh run --data {}", data.display());
    Ok(())
}

/// Creates a site whose first device (holding the authority key) is `data`. Returns the site, the device and
/// its name.
pub async fn create_site(
    data: &Path,
    name: &str,
    role: Role,
    device_name: Option<String>,
) -> Result<(popmesh_crdt::SiteId, popmesh_crdt::DeviceId, String)> {
    if name.trim().is_empty() {
        bail!("--name must not be empty");
    }
    // Checked before anything is written: init creates the data file before the device's files.
    DataDir::ensure_new(data)?;
    let authority = SiteAuthority::new(SecretKey::from_seed(random_seed()?));
    let key = SecretKey::from_seed(random_seed()?);
    let network_key = random_seed()?;
    let now = clock::now();
    let device_name = device_name.unwrap_or_else(|| format!("{role}-1"));
    let cert = authority.enroll(
        key.public(),
        role,
        &device_name,
        now,
        now.saturating_add_ms(365 * DAY_MS),
    );
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;

    // The site directory: created here, so this device knows its id from the start.
    let store = Store::open(&DataDir::store_path(data))?;
    store.set_meta("epoch", "0")?;
    let mut directory =
        Doc::<Directory>::create_site(actor_id(key.public(), 0), authority.public(), name)?;
    directory.add_device(&cert)?;
    let content = directory.into_automerge();
    let bytes = content.save();
    let engine = popmesh_node::store::EngineStorage::new(store.clone());
    let repo = samod::Repo::build_tokio()
        .with_storage(engine.clone())
        .with_peer_id(samod::PeerId::from_string(key.public().to_hex()))
        .load()
        .await;
    let handle = repo
        .create(content)
        .await
        .map_err(|_| anyhow::anyhow!("document engine stopped"))?;
    let directory_id = handle.document_id().to_string();
    store.put_ack(&directory_id, &bytes)?;
    repo.stop().await;
    engine.release();
    store.flush()?;
    drop(store);

    let site = SiteFile {
        site_name: name.to_owned(),
        site_id: authority.site().to_hex(),
        authority: authority.public().to_hex(),
        device_name: device_name.clone(),
        role,
        cert: DataDir::encode_cert(&cert),
        directory: Some(directory_id),
    };
    DataDir::create(data, &site, &key, &network_key, Some(&authority))?;
    Config::write_template(&DataDir::config_path(data), &[])?;
    Ok((authority.site(), key.public(), device_name))
}

/// `popmesh site invite`: prints a one-line join token.
pub fn invite(
    data: &Path,
    role: Role,
    uses: u32,
    expires_ms: u64,
    valid_ms: u64,
    bootstrap: Vec<String>,
) -> Result<String> {
    let dir = DataDir::load(data)?;
    let authority = dir.authority_key()?;
    for addr in &bootstrap {
        addr.parse::<libp2p::Multiaddr>()
            .map_err(|e| anyhow::anyhow!("--bootstrap {addr:?} is not a multiaddr: {e}"))?;
    }
    if uses == 0 {
        bail!("--uses must be at least 1");
    }
    let now = clock::now();
    let (invite, invite_key) = authority.invite(
        random_seed()?,
        InviteTerms {
            role,
            expires_at: now.saturating_add_ms(expires_ms),
            max_uses: uses,
            cert_valid_until: now.saturating_add_ms(valid_ms),
        },
    );
    Ok(JoinToken {
        site_name: dir.site.site_name.clone(),
        authority: authority.public(),
        invite,
        invite_secret: invite_key.seed(),
        network_key: dir.network_key,
        bootstrap,
    }
    .to_line())
}

/// `popmesh join`: a new device enrolled from a join token.
pub fn join(token: &str, data: &Path, name: Option<String>) -> Result<()> {
    let (token, cert) = join_site(token, data, name)?;
    println!(
        "joined site \"{}\" ({}) as {} ({}) {}",
        token.site_name,
        token.site(),
        cert.name,
        cert.role,
        cert.device
    );
    println!("  start the node: popmesh run --data {}", data.display());
    Ok(())
}

/// Enrolls a new device at `data` from a join token. Returns the token and the device's certificate.
pub fn join_site(
    token: &str,
    data: &Path,
    name: Option<String>,
) -> Result<(JoinToken, popmesh_crdt::enrollment::EnrollmentCert)> {
    let token = JoinToken::from_line(token.trim()).context("the join token")?;
    let key = SecretKey::from_seed(random_seed()?);
    let name =
        name.unwrap_or_else(|| format!("{}-{}", token.invite.role, &key.public().to_hex()[..6]));
    let cert = token
        .enroll(key.public(), &name, clock::now())
        .context("enrolling with the join token")?;
    let site = SiteFile {
        site_name: token.site_name.clone(),
        site_id: token.site().to_hex(),
        authority: token.authority.to_hex(),
        device_name: name.clone(),
        role: cert.role,
        cert: DataDir::encode_cert(&cert),
        directory: None,
    };
    DataDir::create(data, &site, &key, &token.network_key, None)?;
    Config::write_template(&DataDir::config_path(data), &token.bootstrap)?;
    Ok((token, cert))
}

/// Hands an authority-signed revocation to the running node, which records it in the directory.
pub fn post_revocation(
    client: &popmesh_node::client::Client,
    revocation: &popmesh_crdt::enrollment::Revocation,
) -> Result<()> {
    let body = serde_json::json!({
        "revocation": base64::engine::general_purpose::STANDARD_NO_PAD.encode(revocation.to_bytes())
    });
    let answer = client.post("/v1/revocations", &body)?;
    if answer.status != 201 {
        bail!(
            "the node refused the revocation ({}): {}",
            answer.status,
            answer.body
        );
    }
    Ok(())
}

/// `popmesh site revoke`: signs a revocation with the authority key and hands it to the running node.
pub fn revoke(data: &Path, device: &str, reason: &str, api: Option<SocketAddr>) -> Result<()> {
    let dir = DataDir::load(data)?;
    let authority = dir.authority_key()?;
    let device =
        DeviceId::from_hex(device).map_err(|e| anyhow::anyhow!("DEVICE {device:?}: {e}"))?;
    let client = crate::cmd::node_client(data, api, std::time::Duration::from_secs(30))?;
    // Not retroactive: the receipts the device issued that this node holds stay valid; later ones do not.
    let issued = client.get(&format!("/v1/devices/{}/issued", device.to_hex()))?;
    if issued.status != 200 {
        bail!(
            "the node could not say which receipts the device issued ({}): {}",
            issued.status,
            issued.body
        );
    }
    let honoured: std::collections::BTreeMap<String, u64> =
        serde_json::from_value(issued.json()["issued"].clone())
            .map_err(|e| anyhow::anyhow!("the node's answer about issued receipts: {e}"))?;
    let revocation = authority.revoke_honouring(
        RevocationTarget::Device(device),
        clock::now(),
        reason,
        honoured.clone(),
    );
    post_revocation(&client, &revocation)?;
    println!("device {device} revoked; the site drops it as the directory syncs");
    for (show, seq) in &honoured {
        println!("  its receipts 1 to {seq} of show {show} stay valid; any later one is refused");
    }
    Ok(())
}

pub use crate::cmd::cli_status::status;

/// `popmesh report --out DIR`: asks the node for the show report and writes its files.
pub fn report(data: &Path, api: Option<SocketAddr>, out: &Path, show: Option<&str>) -> Result<()> {
    let client = crate::cmd::node_client(data, api, std::time::Duration::from_secs(120))?;
    let path = match show {
        Some(s) => format!("/v1/report?show={}", query_escape(s)),
        None => "/v1/report".to_owned(),
    };
    let answer = client.get(&path).map_err(|e| {
        anyhow::anyhow!("{e}\n(is `popmesh run --data {}` running?)", data.display())
    })?;
    if answer.status != 200 {
        bail!(
            "the node made no report ({}): {}",
            answer.status,
            answer.json()["error"]["message"]
                .as_str()
                .unwrap_or(&answer.body)
        );
    }
    let report: popmesh_crdt::report::ShowReport = serde_json::from_str(&answer.body).context(
        "the node's report is not in the shape this popmesh reads (different versions?)",
    )?;
    let files = crate::cmd::report::write(&report, out)?;
    print_report_summary(&report);
    for f in files {
        println!("  wrote {}", f.display());
    }
    Ok(())
}

/// The few lines of a show report a producer reads first.
pub fn print_report_summary(r: &popmesh_crdt::report::ShowReport) {
    let money = |m: &std::collections::BTreeMap<String, u64>| {
        if m.is_empty() {
            return "nothing".to_owned();
        }
        m.iter()
            .map(|(c, v)| format!("{}.{:02} {c}", v / 100, v % 100))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let t = &r.totals;
    println!(
        "show {}: {} of {} seats in {} bookings; {} payments, {} taken, {} unreconciled",
        r.show,
        t.seats,
        t.capacity,
        t.bookings,
        t.payments,
        money(&t.amounts),
        money(&t.unreconciled)
    );
    let c = &r.conversion;
    println!(
        "  {} attendees checked in, {} bought after check-in (median {}); engagement {} / 100; retention lift {}",
        c.checked_in,
        c.converted,
        c.median_ms
            .map(crate::cmd::report::duration)
            .unwrap_or_else(|| "n/a".into()),
        r.engagement.score,
        r.retention
            .lift
            .map(|l| format!("{l:.2}x"))
            .unwrap_or_else(|| "n/a".into())
    );
    let o = &r.operations;
    println!(
        "  {} outage(s), MTTR {}; {} uplink outage(s), MTTR {}",
        o.outages.len(),
        o.mttr_ms
            .map(crate::cmd::report::duration)
            .unwrap_or_else(|| "n/a".into()),
        o.uplink_outages.len(),
        o.uplink_mttr_ms
            .map(crate::cmd::report::duration)
            .unwrap_or_else(|| "n/a".into())
    );
}

/// What `popmesh rehearse` was asked.
#[derive(Debug, Clone)]
pub struct RehearseFlags {
    pub wait: std::time::Duration,
    pub clock_tolerance_ms: u64,
    pub require_origin: bool,
    pub json: bool,
}

/// `popmesh rehearse`: the seed's dry rehearsal against the running site. Calls a rehearsal through the node,
/// collects every device's answer (each proves the device enrolled and reachable through the mesh, and carries its
/// clock and preseed), and says what is not ready. Exits non-zero when something is not.
pub fn rehearse(data: &Path, api: Option<SocketAddr>, flags: &RehearseFlags) -> Result<()> {
    use popmesh_crdt::rehearsal::{Enrolled, Seen, evaluate};
    use popmesh_crdt::telemetry::{RehearsalAnswer, RehearsalCall};
    let client = crate::cmd::node_client(data, api, std::time::Duration::from_secs(30))?;
    let running = |e: popmesh_node::client::ClientError| {
        anyhow::anyhow!("{e}\n(is `popmesh run --data {}` running?)", data.display())
    };
    let answer = client
        .post("/v1/rehearsals", &serde_json::json!({}))
        .map_err(running)?;
    if answer.status != 201 {
        bail!(
            "the node did not call the rehearsal ({}): {}",
            answer.status,
            answer.body
        );
    }
    let call: RehearsalCall = serde_json::from_value(answer.json()["call"].clone())
        .context("the node's rehearsal call")?;
    let started = std::time::Instant::now();
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let mut enrolled: Vec<Enrolled>;
    loop {
        let state = client
            .get(&format!("/v1/rehearsals/{}", call.id))
            .map_err(running)?
            .json();
        let now = state["now"].as_u64().unwrap_or(0);
        enrolled = state["enrolled"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|d| {
                        Some(Enrolled {
                            device: d["device"].as_str()?.to_owned(),
                            name: d["name"].as_str()?.to_owned(),
                            role: d["role"].as_str()?.parse().ok()?,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(answers) = state["answers"].as_object() {
            for (device, a) in answers {
                if seen.contains_key(device) {
                    continue;
                }
                if let Ok(answer) = serde_json::from_value::<RehearsalAnswer>(a.clone()) {
                    seen.insert(
                        device.clone(),
                        Seen {
                            answer,
                            first_seen: now,
                        },
                    );
                }
            }
        }
        let everyone = enrolled.iter().all(|d| seen.contains_key(&d.device));
        if everyone || started.elapsed() >= flags.wait {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    enrolled.sort_by(|a, b| (a.role, &a.name).cmp(&(b.role, &b.name)));
    let result = evaluate(
        &call,
        &enrolled,
        &seen,
        flags.clock_tolerance_ms,
        flags.require_origin,
    );
    if flags.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!(
            "dry rehearsal {} ({} devices enrolled, waited {:.1} s)",
            result.id,
            result.devices.len(),
            started.elapsed().as_secs_f64()
        );
        for d in &result.devices {
            let mark = if d.problems.is_empty() { "ok " } else { "NOT" };
            let detail = if d.answered {
                format!(
                    "clock {:+.2} s (±{:.2}), media {:.0}%, {} peer(s) in reach",
                    d.clock_offset_ms.unwrap_or(0) as f64 / 1000.0,
                    d.clock_uncertainty_ms.unwrap_or(0) as f64 / 1000.0,
                    d.preseed_percent.unwrap_or(0.0),
                    d.peers.unwrap_or(0)
                )
            } else {
                "no answer".to_owned()
            };
            println!("  {mark} {:<12} {:<7} {detail}", d.name, d.role);
            for p in &d.problems {
                println!("      - {p}");
            }
        }
        println!(
            "  origin: {}",
            if result.origin_reachable {
                "reachable (the uplink works now)"
            } else {
                "not reachable"
            }
        );
        for n in &result.notes {
            println!("  note: {n}");
        }
    }
    if !result.ready {
        bail!(
            "not ready: {} problem(s) above; fix them and rehearse again",
            result.problems
        );
    }
    if !flags.json {
        println!("ready for the show");
    }
    Ok(())
}

/// `popmesh reconcile --settlement FILE.csv`: the origin matches every receipt against the processor's batch,
/// marks the matched ones, and prints (and with `--out`, writes as JSON) what did not match.
pub fn reconcile(
    data: &Path,
    api: Option<SocketAddr>,
    settlement: &Path,
    out: Option<&Path>,
) -> Result<bool> {
    let text = std::fs::read_to_string(settlement)
        .with_context(|| format!("reading the settlement file {}", settlement.display()))?;
    let batch = settlement
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("settlement")
        .to_owned();
    let client = crate::cmd::node_client(data, api, std::time::Duration::from_secs(300))?;
    let path = format!("/v1/reconciliations?batch={}", query_escape(&batch));
    let answer = client.post_raw(&path, text.as_bytes()).map_err(|e| {
        anyhow::anyhow!("{e}\n(is `popmesh run --data {}` running?)", data.display())
    })?;
    let v = answer.json();
    if answer.status == 422 {
        // The node parsed the file and says which line and column are wrong.
        bail!(
            "{}: {}",
            settlement.display(),
            v["error"]["message"].as_str().unwrap_or(&answer.body)
        );
    }
    if answer.status != 200 {
        bail!(
            "the node did not reconcile ({}): {}",
            answer.status,
            v["error"]["message"].as_str().unwrap_or(&answer.body)
        );
    }
    if let Some(out) = out {
        popmesh_node::site::write_atomic(out, serde_json::to_string_pretty(&v)?.as_bytes(), false)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    let r = &v["report"];
    let len = |k: &str| r[k].as_array().map_or(0, Vec::len);
    println!(
        "settlement batch {batch}: {} rows against the site's receipts; {} reconciled now",
        v["rows"], v["marked"]
    );
    let money = |t: &serde_json::Value| {
        t.as_object()
            .map(|m| {
                m.iter()
                    .map(|(c, n)| format!("{} {c}", n.as_u64().unwrap_or(0)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    println!(
        "  site receipts (verified)  {} (minor units)",
        money(&r["site_totals"])
    );
    println!(
        "  settled by the processor  {} (minor units)",
        money(&r["settled_totals"])
    );
    for (key, label) in [
        ("matched", "matched"),
        ("missing_at_processor", "missing at the processor"),
        ("missing_at_site", "missing at the site"),
        ("amount_mismatches", "amount mismatches"),
        ("declined", "declined by the processor"),
        ("duplicates", "duplicates in the batch"),
        ("rejected", "rejected receipts (do not verify)"),
    ] {
        println!("  {label:<34} {}", len(key));
        if key == "matched" {
            continue;
        }
        for item in r[key].as_array().into_iter().flatten().take(10) {
            let token = item["token"].as_str().unwrap_or("?");
            let detail = match key {
                "amount_mismatches" => format!(
                    "site {} {}, processor {} {} (line {})",
                    item["site_amount_minor"],
                    item["site_currency"].as_str().unwrap_or(""),
                    item["processor_amount_minor"],
                    item["processor_currency"].as_str().unwrap_or(""),
                    item["line"]
                ),
                "duplicates" => format!("lines {}", item["lines"]),
                "rejected" => item["reason"].as_str().unwrap_or("").to_owned(),
                "declined" => format!(
                    "{} (line {})",
                    item["status"].as_str().unwrap_or(""),
                    item["line"]
                ),
                "missing_at_site" => format!(
                    "{} {} (line {})",
                    item["amount_minor"],
                    item["currency"].as_str().unwrap_or(""),
                    item["line"]
                ),
                _ => format!(
                    "{} {}",
                    item["amount_minor"],
                    item["currency"].as_str().unwrap_or("")
                ),
            };
            println!("      {token}  {detail}");
        }
    }
    let clean = v["clean"] == true;
    println!(
        "  {}",
        if clean {
            "the batch and the site agree"
        } else {
            "the batch and the site disagree: see above"
        }
    );
    Ok(clean)
}

fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
