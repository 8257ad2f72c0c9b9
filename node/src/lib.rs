//! The popmesh node: the daemon every kiosk, POS terminal, edge box and origin runs, and the commands around it.
//!
//! The commands themselves (`site init`, `join`, `run`, `status`, `blob`, `demo`, `sim`, `warehouse`) live in the
//! binary (`src/cmd/`), the only place `anyhow` is used: library errors are enums (`SiteError`, `ConfigError`,
//! `StartError`, `StoreError`, `MediaError`, one per operation the API offers such as `PayError`), and the HTTP
//! layer maps them to status codes.
//!
//! - [`node`]: the running daemon: samod on the data file, the site mesh, and the operations the API offers.
//! - [`api`]: the HTTP layer: the local API (axum), `/metrics`, the console, kiosk screens' `/v1/sync`, and media
//!   for kiosk browsers (`api::media`: types, ETags, ranges, fetch on miss, fallback), the TLS listener for the
//!   site LAN (`api::tls`); it owns the mapping of
//!   failures to status codes.
//! - [`media`]: content-addressed blobs (iroh-blobs): the blob endpoint, preseeding, checked reads for kiosks.
//! - [`store`]: the data file (redb): samod's storage and acknowledged writes, fsync'd before the answer.
//! - [`site`], [`config`]: the data directory's files.
//! - [`client`]: a small HTTP client for the CLI and the tests.
//! - [`warehouse`]: at the origin, the show data into PostgreSQL.

pub mod api;
pub mod client;
pub mod clock;
pub mod config;
pub mod faults;
pub mod media;
pub mod node;
pub mod runfile;
pub mod site;
pub mod store;

/// The origin's warehouse sink lives with the node that runs it ([`node::warehouse`]).
pub use node::warehouse;
