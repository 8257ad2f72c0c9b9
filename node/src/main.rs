//! `popmesh`: the daemon every kiosk, POS terminal, edge box and origin runs, and its command-line tools.
//!
//! Today it runs the in-process demo (`popmesh demo`) and the chaos simulator (`popmesh sim`). The daemon (`popmesh run`), site administration
//! (`site init`, `site invite`, `join`) and the HTTP API arrive with the site mesh.

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod clock;
mod demo;
mod sim_cmd;

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
    /// Play a site in one process: enroll two devices, sell and take payments while they are apart, merge, verify.
    Demo {
        /// Derive every key and the clock from this seed, so the output is the same every run.
        #[arg(long)]
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { seed } => {
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
