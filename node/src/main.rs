//! `popmesh`: the daemon every kiosk, POS terminal, edge box and origin runs, and its command-line tools.
//!
//! `site init` creates a site, `site invite` prints join tokens, `join` enrolls a new device from one, `run` is the
//! daemon (site mesh, document sync, local HTTP API), `status` asks a running daemon. `blob` and `manifest` add
//! media and publish what every device preseeds. `warehouse` loads the origin's show data into PostgreSQL. `demo`
//! plays a site in one process and `sim` rehearses a show in the chaos simulator.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use popmesh_crdt::Role;
use popmesh_node::config::LogFormat;
mod cmd;

use cmd::{cli, demo, media_cli, showday, sim_cmd, warehouse_cli};

#[derive(Debug, Parser)]
#[command(
    name = "popmesh",
    version,
    about = "Keeps pop-up sites selling when the internet does not"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, invite to, and administer a site.
    #[command(subcommand)]
    Site(SiteCommand),
    /// Print the pairing code a tablet or screen scans: the API's TLS address and certificate fingerprint, and
    /// with --role a client token (edge box or origin). Needs the node running with [api] tls_listen.
    Pair {
        #[arg(long)]
        data: PathBuf,
        /// The address tablets reach this device at (needed when the listener is on 0.0.0.0).
        #[arg(long)]
        host: Option<String>,
        /// Also issue a client token with this role.
        #[arg(long)]
        role: Option<popmesh_crdt::client_token::ClientRole>,
        #[arg(long, default_value = "12h", value_parser = cli::parse_span)]
        valid: u64,
        #[arg(long, default_value = "")]
        label: String,
        #[arg(long)]
        json: bool,
    },
    /// Client tokens for the API: a POS app on a tablet, a kiosk screen, an operator's laptop.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Enroll this device in a site from a join token (printed by `popmesh site invite`).
    Join {
        /// The one-line join token.
        token: String,
        /// The new device's data directory.
        #[arg(long)]
        data: PathBuf,
        /// A name for this device, such as kiosk-3 (default: role and a short id).
        #[arg(long)]
        name: Option<String>,
    },
    /// Run the node: join the site mesh, sync documents, serve the local API.
    Run {
        #[arg(long)]
        data: PathBuf,
        /// Local API address (default from popmesh.toml: 127.0.0.1:7700).
        #[arg(long)]
        api: Option<SocketAddr>,
        /// Mesh listen address (multiaddr); repeat for several. Replaces the config's list.
        #[arg(long)]
        listen: Vec<String>,
        /// A peer to dial besides mDNS discovery (multiaddr); repeat for several. Added to the config's list.
        #[arg(long)]
        bootstrap: Vec<String>,
        /// Do not use mDNS discovery.
        #[arg(long)]
        no_mdns: bool,
        /// Log format.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
        /// UDP port of the blob endpoint (default from popmesh.toml: 4702; 0 picks a free one).
        #[arg(long)]
        media_port: Option<u16>,
    },
    /// Add media blobs to this node, or get one from it (it fetches from the site peers when it lacks it).
    #[command(subcommand)]
    Blob(BlobCommand),
    /// Publish media manifests: what every device preseeds and kiosks show by name.
    #[command(subcommand)]
    Manifest(ManifestCommand),
    /// At the origin: match every receipt against the processor's settlement batch (CSV with token, amount,
    /// currency, status) and mark the matched ones; prints what did not match. Running it twice changes nothing.
    Reconcile {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        api: Option<SocketAddr>,
        /// The processor's settlement batch.
        #[arg(long)]
        settlement: PathBuf,
        /// Also write the whole report as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write the show report from a running node (the origin, once it has merged the show): report.json,
    /// timeline.csv, devices.csv, outages.csv and a self-contained report.html with charts.
    Report {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        api: Option<SocketAddr>,
        /// The directory to write into (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// The show (default: the one on now).
        #[arg(long)]
        show: Option<String>,
    },
    /// The dry rehearsal against the running site: every enrolled device answers through the mesh with its clock
    /// and preseed; prints what is not ready (exit status 1 when something is).
    Rehearse {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        api: Option<SocketAddr>,
        /// How long to wait for every device to answer, in seconds.
        #[arg(long, default_value_t = 10)]
        wait: u64,
        /// How far a device's clock may be from this one's, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        clock_tolerance_ms: u64,
        /// An origin that does not answer is a problem (default: a note; the site can run offline).
        #[arg(long)]
        require_origin: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// At the origin: the show data in PostgreSQL ([warehouse] postgres_url): create or upgrade its tables,
    /// see what it holds and what the origin owes it, or send it everything again.
    #[command(subcommand)]
    Warehouse(WarehouseCommand),
    /// Show a running node's peers, documents and sync lag.
    Status {
        #[arg(long)]
        data: PathBuf,
        /// The node's API address (default from popmesh.toml).
        #[arg(long)]
        api: Option<SocketAddr>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Play a whole show in one process, every device a real node on loopback: an edge box, two kiosks, two POS
    /// terminals and the origin; preseed media, check in, sell, cut the origin off, drop in a new kiosk, bring the
    /// origin back, reconcile a generated settlement batch and write the show report.
    Demo {
        /// Where the show report goes.
        #[arg(long, default_value = "popmesh-demo-report")]
        out: PathBuf,
        /// Keep the devices' data directories here (a new or empty directory) instead of a temporary one.
        #[arg(long)]
        keep: Option<PathBuf>,
        /// Instead: the domain core alone, two replicas in memory with no network, apart and merged.
        #[arg(long)]
        core: bool,
        /// With --core: derive every key and the clock from this seed, so the output is the same every run.
        #[arg(long, requires = "core")]
        seed: Option<u64>,
    },
    /// Rehearse a show in the deterministic chaos simulator: real sync and domain code under partitions, crashes,
    /// loss and clock skew; checks that no receipt is lost, no seat oversold, and every device converges.
    Sim {
        /// Replay one seed.
        #[arg(long, conflicts_with = "seeds")]
        seed: Option<u64>,
        /// Sweep a range of seeds, such as 0..200.
        #[arg(long, value_parser = sim_cmd::parse_seeds)]
        seeds: Option<std::ops::Range<u64>>,
        /// Devices on the site, the origin and a late kiosk included.
        #[arg(long, default_value_t = 6)]
        devices: usize,
        /// Length of the show, such as 1h or 20m.
        #[arg(long, default_value = "10m", value_parser = sim_cmd::parse_duration)]
        duration: u64,
        /// Run the show without faults.
        #[arg(long)]
        no_faults: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum WarehouseCommand {
    /// Apply the schema's migrations the database lacks (several origins may run it at once).
    Migrate {
        #[arg(long)]
        data: PathBuf,
        /// The database (default: [warehouse] postgres_url in popmesh.toml).
        #[arg(long)]
        url: Option<String>,
    },
    /// The schema version, rows per site, each origin's progress, and what the running origin still owes.
    Status {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        url: Option<String>,
        #[arg(long)]
        api: Option<SocketAddr>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the running origin to compare every document with the database again and write what it lacks (after
    /// restoring the database from a backup, say). Rows already there are left as they are.
    Replay {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        api: Option<SocketAddr>,
    },
}

#[derive(Debug, Subcommand)]
enum BlobCommand {
    /// Add files as blobs; prints each one's hash, size and name.
    Add {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        api: Option<SocketAddr>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Write a blob to a file, checked against its hash.
    Get {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        api: Option<SocketAddr>,
        /// The blob's BLAKE3 hash (hex).
        hash: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ManifestCommand {
    /// Add files and publish them in a manifest (edge box or origin); every device preseeds them.
    Publish {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        api: Option<SocketAddr>,
        /// The manifest's name, such as the show's id.
        #[arg(long)]
        name: String,
        /// The entry (file name) served when a blob cannot be had from any peer.
        #[arg(long)]
        fallback: Option<String>,
        /// How long a device keeps a blob after no manifest references it any more.
        #[arg(long, default_value_t = 72)]
        ttl_hours: u64,
        /// Ask a role to preseed only these bytes of each entry, such as kiosk=0-4M; repeat for several.
        #[arg(long, value_parser = cmd::media_cli::parse_slice)]
        slice: Vec<(String, popmesh_crdt::manifest::ByteRange)>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum SiteCommand {
    /// Create a new site; this data directory becomes its first device and holds the site authority key.
    Init {
        #[arg(long)]
        data: PathBuf,
        /// The site's name, such as "Harbour Market".
        #[arg(long)]
        name: String,
        /// This device's role.
        #[arg(long, default_value = "edge")]
        role: Role,
        /// This device's name (default: edge-1).
        #[arg(long)]
        device_name: Option<String>,
    },
    /// Print a one-line join token for new devices (needs the site authority key).
    Invite {
        #[arg(long)]
        data: PathBuf,
        /// The role the new devices get.
        #[arg(long)]
        role: Role,
        /// How many devices may enroll with this token.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long the token can be used, such as 24h.
        #[arg(long, default_value = "24h", value_parser = cli::parse_span)]
        expires: u64,
        /// How long the new devices' certificates are valid, such as 30d.
        #[arg(long, default_value = "30d", value_parser = cli::parse_span)]
        valid: u64,
        /// An address the new device dials to find the site (multiaddr); repeat for several. Without one it
        /// relies on mDNS.
        #[arg(long)]
        bootstrap: Vec<String>,
    },
    /// Revoke a device (needs the site authority key and this device's node running).
    Revoke {
        #[arg(long)]
        data: PathBuf,
        /// The device id (hex) to revoke.
        device: String,
        #[arg(long, default_value = "revoked by the operator")]
        reason: String,
        #[arg(long)]
        api: Option<SocketAddr>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Sign a client token with this device's key (the edge box or the origin); prints it.
    Issue {
        #[arg(long)]
        data: PathBuf,
        /// operator, pos, screen or read_only.
        #[arg(long)]
        role: popmesh_crdt::client_token::ClientRole,
        /// How long it is valid, such as 12h (at most 7d).
        #[arg(long, default_value = "12h", value_parser = cli::parse_span)]
        valid: u64,
        /// Which tablet or screen it is for.
        #[arg(long, default_value = "")]
        label: String,
        /// Print the token, its id and expiry as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a client token by its id (needs the site authority key and this device's node running).
    Revoke {
        #[arg(long)]
        data: PathBuf,
        /// The token id (hex), as `token issue` printed it.
        id: String,
        #[arg(long, default_value = "revoked by the operator")]
        reason: String,
        #[arg(long)]
        api: Option<SocketAddr>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Site(SiteCommand::Init {
            data,
            name,
            role,
            device_name,
        }) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(cli::init(&data, &name, role, device_name))),
        Command::Site(SiteCommand::Invite {
            data,
            role,
            uses,
            expires,
            valid,
            bootstrap,
        }) => {
            cli::invite(&data, role, uses, expires, valid, bootstrap).map(|line| println!("{line}"))
        }
        Command::Site(SiteCommand::Revoke {
            data,
            device,
            reason,
            api,
        }) => cli::revoke(&data, &device, &reason, api),
        Command::Token(TokenCommand::Issue {
            data,
            role,
            valid,
            label,
            json,
        }) => cmd::token_cli::issue(&data, role, valid, &label, json),
        Command::Pair {
            data,
            host,
            role,
            valid,
            label,
            json,
        } => cmd::token_cli::pair(
            &data,
            host.as_deref(),
            role.map(|r| (r, valid, label.as_str())),
            json,
        ),
        Command::Token(TokenCommand::Revoke {
            data,
            id,
            reason,
            api,
        }) => cmd::token_cli::revoke(&data, &id, &reason, api),
        Command::Join { token, data, name } => cli::join(&token, &data, name),
        Command::Run {
            data,
            api,
            listen,
            bootstrap,
            no_mdns,
            log_format,
            media_port,
        } => cmd::run::run(
            data,
            cmd::run::RunFlags {
                api,
                listen,
                bootstrap,
                no_mdns,
                log_format,
                media_port,
            },
        ),
        Command::Blob(BlobCommand::Add { data, api, files }) => {
            media_cli::blob_add(&data, api, &files).map(|_| ())
        }
        Command::Blob(BlobCommand::Get {
            data,
            api,
            hash,
            out,
        }) => media_cli::blob_get(&data, api, &hash, &out).map(|n| {
            println!(
                "{hash}  {n} bytes  written to {} (hash checked)",
                out.display()
            );
        }),
        Command::Manifest(ManifestCommand::Publish {
            data,
            api,
            name,
            fallback,
            ttl_hours,
            slice,
            files,
        }) => media_cli::manifest_publish(
            &data,
            api,
            &name,
            &files,
            fallback.as_deref(),
            ttl_hours,
            &slice,
        ),
        Command::Status { data, api, json } => cli::status(&data, api, json),
        Command::Warehouse(WarehouseCommand::Migrate { data, url }) => {
            warehouse_cli::migrate(&data, url)
        }
        Command::Warehouse(WarehouseCommand::Status {
            data,
            url,
            api,
            json,
        }) => warehouse_cli::status(&data, url, api, json),
        Command::Warehouse(WarehouseCommand::Replay { data, api }) => {
            warehouse_cli::replay(&data, api)
        }
        Command::Rehearse {
            data,
            api,
            wait,
            clock_tolerance_ms,
            require_origin,
            json,
        } => cli::rehearse(
            &data,
            api,
            &cli::RehearseFlags {
                wait: std::time::Duration::from_secs(wait),
                clock_tolerance_ms,
                require_origin,
                json,
            },
        ),
        Command::Report {
            data,
            api,
            out,
            show,
        } => cli::report(&data, api, &out, show.as_deref()),
        // Disagreement is a finding, not a failure: the exit status stays 0 and the report says what differs.
        Command::Reconcile {
            data,
            api,
            settlement,
            out,
        } => cli::reconcile(&data, api, &settlement, out.as_deref()).map(|_| ()),
        Command::Demo {
            out,
            keep,
            core: false,
            ..
        } => {
            let mut stdout = std::io::stdout().lock();
            showday::run(&out, keep.as_deref(), &mut stdout).and_then(|outcome| {
                anyhow::ensure!(
                    outcome.seats_sold > 0
                        && outcome.receipts_verified == outcome.receipts
                        && outcome.matched > 0,
                    "the demo did not end reconciled: {outcome:?}"
                );
                tracing::debug!(report = %outcome.report_dir.display(), elapsed = ?outcome.elapsed, "demo done");
                Ok(())
            })
        }
        Command::Demo { seed, .. } => {
            let entropy = seed.map_or(demo::Entropy::Os, demo::Entropy::Seeded);
            let mut out = std::io::stdout().lock();
            demo::run(entropy, &mut out).and_then(|outcome| {
                anyhow::ensure!(
                    outcome.receipts_verified == outcome.receipts_total
                        && outcome.replicas_identical,
                    "the demo did not end in agreement: {outcome:?}"
                );
                out.flush()?;
                Ok(())
            })
        }
        Command::Sim {
            seed,
            seeds,
            devices,
            duration,
            no_faults,
            json,
        } => {
            let args = sim_cmd::SimArgs {
                seed,
                seeds,
                devices,
                duration_ms: duration,
                no_faults,
                json,
            };
            let mut out = std::io::stdout().lock();
            sim_cmd::run(args, &mut out).and_then(|passed| {
                out.flush()?;
                anyhow::ensure!(
                    passed,
                    "the simulation found invariant violations (see above)"
                );
                Ok(())
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("popmesh: {err:#}");
            ExitCode::FAILURE
        }
    }
}
