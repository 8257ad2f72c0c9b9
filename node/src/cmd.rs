//! The `popmesh` binary's commands: what each subcommand does on top of the library (the only code that uses
//! `anyhow`, for messages to a person at a terminal).
//!
//! - [`cli`]: `site init`, `site invite`, `site revoke`, `join`, `run`, `report`; [`cli_status`]: `status`.
//! - [`media_cli`]: `blob add`, `blob get`, `manifest publish` (through the running node's API).
//! - [`demo`], [`showday`]: the in-process demos; [`sim_cmd`]: the chaos simulator's command.
//! - [`warehouse_cli`]: `popmesh warehouse ...`; [`report`]: the show report's files.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use popmesh_node::client::Client;
use popmesh_node::config::Config;
use popmesh_node::site::DataDir;

pub mod cli;
pub mod cli_status;
pub mod demo;
pub mod media_cli;
pub mod report;
pub mod run;
pub mod showday;
pub mod sim_cmd;
pub mod token_cli;
pub mod warehouse_cli;

/// A client for the node running on data directory `data`: at `api` if given, else where the running node recorded
/// it bound (`run.json`), else the config's address.
pub fn node_client(
    data: &Path,
    api: Option<SocketAddr>,
    timeout: Duration,
) -> anyhow::Result<Client> {
    let config = Config::load(&DataDir::config_path(data))?;
    let mut client = Client::new(popmesh_node::runfile::api_addr(
        data,
        api,
        config.api.listen,
    ));
    client.timeout = timeout;
    // A client token for a node reached off loopback (`--api`), else the running node's local secret.
    client.token = std::env::var("POPMESH_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| popmesh_node::runfile::local_token(data));
    Ok(client)
}
