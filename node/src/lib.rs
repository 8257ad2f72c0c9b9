//! The popmesh node: the daemon every kiosk, POS terminal, edge box and origin runs, and the commands around it.
//!
//! - [`cli`]: `site init`, `site invite`, `site revoke`, `join`, `run`, `status`.
//! - [`node`]: the running daemon: samod on the data file, the site mesh, and the operations the API offers.
//! - [`api`]: the HTTP layer: the local API (axum), `/metrics`, the console, kiosk screens' `/v1/sync`, and media
//!   for kiosk browsers (`api::media`: types, ETags, ranges, fetch on miss, fallback); it owns the mapping of
//!   failures to status codes.
//! - [`media`]: content-addressed blobs (iroh-blobs): the blob endpoint, preseeding, checked reads for kiosks.
//! - [`media_cli`]: `blob add`, `blob get`, `manifest publish` (through the running node's API).
//! - [`store`]: the data file (redb): samod's storage and acknowledged writes, fsync'd before the answer.
//! - [`site`], [`config`]: the data directory's files.
//! - [`client`]: a small HTTP client for the CLI and the tests.
//! - [`demo`], [`sim_cmd`]: the in-process demo and the chaos simulator's command.
//! - [`warehouse`], [`warehouse_cli`]: at the origin, the show data into PostgreSQL; `popmesh warehouse ...`.

pub mod api;
pub mod cli;
pub mod cli_status;
pub mod client;
pub mod clock;
pub mod config;
pub mod demo;
pub mod faults;
pub mod media;
pub mod media_cli;
pub mod node;
pub mod report;
pub mod runfile;
pub mod showday;
pub mod sim_cmd;
pub mod site;
pub mod store;
pub mod warehouse_cli;

/// The origin's warehouse sink lives with the node that runs it ([`node::warehouse`]).
pub use node::warehouse;
