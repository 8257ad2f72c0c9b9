//! `popmesh`: the daemon every kiosk, POS terminal, edge box and origin runs, and its command-line tools.
//!
//! Today it runs the in-process demo (`popmesh demo`). The daemon (`popmesh run`), site administration
//! (`site init`, `site invite`, `join`) and the HTTP API arrive with the site mesh.

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod clock;
mod demo;

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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("popmesh: {err:#}");
            ExitCode::FAILURE
        }
    }
}
