//! The `popmesh` binary's commands: what each subcommand does on top of the library (the only code that uses
//! `anyhow`, for messages to a person at a terminal).
//!
//! - [`cli`]: `site init`, `site invite`, `site revoke`, `join`, `run`, `report`; [`cli_status`]: `status`.
//! - [`media_cli`]: `blob add`, `blob get`, `manifest publish` (through the running node's API).
//! - [`demo`], [`showday`]: the in-process demos; [`sim_cmd`]: the chaos simulator's command.
//! - [`warehouse_cli`]: `popmesh warehouse ...`; [`report`]: the show report's files.

pub mod cli;
pub mod cli_status;
pub mod demo;
pub mod media_cli;
pub mod report;
pub mod showday;
pub mod sim_cmd;
pub mod warehouse_cli;
