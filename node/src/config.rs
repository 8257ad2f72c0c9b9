//! `DIR/popmesh.toml`: the node's settings, with defaults for everything. Flags to `popmesh run` override it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file `site init` and `join` write, with every default spelled out.
pub const TEMPLATE: &str = r#"# popmesh node settings. Flags given to `popmesh run` override them.

[api]
# The local HTTP API for the kiosk and POS apps: it reads every receipt and takes payments. Clients on another
# device need a client token (`popmesh token issue --role pos|screen|read_only|operator`, on the edge box or the
# origin), sent as Authorization: Bearer. This listener is plain HTTP: keep it on loopback, and give other devices
# the TLS listener below. The address it bound is recorded in run.json for the CLI.
listen = "127.0.0.1:7700"
# Whether a request from this device's own loopback without a token is an operator's (this device's browser, the
# CLI). Off: every client shows a token, and the CLI uses this run's local secret from run.json.
loopback_without_token = true
# The API over TLS for tablets, screens and laptops on the site LAN; every request there needs a client token.
# The certificate is this device's (keys/tls.crt, made on first use; `popmesh pair` prints its fingerprint and the
# address), or a site CA's that managed kiosk browsers trust: tls_cert and tls_key (PEM files).
# tls_listen = "0.0.0.0:7743"
# Host names the API answers to besides loopback names and IP addresses (against DNS rebinding: a web page whose
# domain is made to point at this device is refused), such as "pos-1.harbour.example".
allowed_hosts = []
# Origins whose web pages may call the API from a browser (CORS), such as "https://kiosk.harbour.example". Pages
# the node serves itself always may; every other site's pages may not change anything or open /v1/sync.
allowed_origins = []

[p2p]
# Where the site mesh listens (libp2p multiaddrs). It admits only enrolled devices (the site key, noise, and an
# enrollment certificate checked against the directory). The blob endpoint ([media] port, UDP) binds the address of
# the first of these.
listen = ["/ip4/0.0.0.0/tcp/4701"]
# Peers to dial besides those mDNS finds: the origin over the WAN, networks that block multicast.
bootstrap = []
# Find site peers on the local network by mDNS.
mdns = true

[log]
# "text" or "json".
format = "text"
# A tracing filter, such as "info" or "popmesh_node=debug,info".
filter = "info,samod_core=warn,samod=warn"

[escrow]
# A device holding more than twice this many seats of a slot gives seats to a connected device below it.
low_water = 3
# How often each device looks for a connected peer running low, in seconds (0: never).
rebalance_every_secs = 5

[payments]
# Offline payment limits, in minor units of `currency`.
currency = "EUR"
payment_max_minor = 15000
stored_total_max_minor = 200000
stale_after_hours = 24
# Receipts per ledger page: each page is one document, so none grows with the show.
receipts_per_page = 1000

[media]
# The UDP port of the blob endpoint (iroh, QUIC). Peers learn it through the mesh; 0 picks a free port.
port = 4702
# How often to look for media of the manifests that this device lacks, in seconds.
preseed_every_secs = 2
# How often garbage collection drops blobs that nothing keeps, in seconds.
gc_every_secs = 30
# How long a blob added with `popmesh blob add` (and in no manifest) is kept, in hours.
default_ttl_hours = 24
# Check every complete blob against its hash when the node starts (a damaged copy is fetched again).
verify_on_start = true
# Cap on what this device uploads to peers, in MiB/s, so media never starves sales traffic (0: no cap).
upload_limit_mib_s = 0
# The largest blob `POST /v1/blobs` (and `popmesh blob add`) takes, in MiB.
upload_max_mib = 4096
# Free disk space kept for money, in MiB: below it media preseed and uploads stop, payments and bookings go on.
reserve_mib = 64

[telemetry]
# Past this many counted events in one second the device is overloaded: counters that are not conversion
# signals keep one event in `sample_one_in` (counted that many times, so totals stay unbiased).
events_per_sec_max = 200
sample_one_in = 10
# Conversion signals are always counted exactly: a counter with one of these names, or under one (`purchase.merch`).
conversion = ["checkin", "booking", "purchase", "signup"]

[alerts]
# The operator console (http://API/console) raises an alert when one of these is crossed; 0 turns one off.
# Money taken offline and not yet reconciled, per currency, in minor units.
unreconciled_max_minor = 100000
# Media of the manifests preseeded on this device, in percent.
preseed_min_percent = 100
# Admitted peers this device should see.
peers_min = 0
# A connected peer not heard from for this long, in seconds.
peer_silent_max_secs = 30
# A peer out of reach for this long, in seconds.
outage_max_secs = 60

[uplink]
# The link to the origin, when it is thin: what it may carry, in KiB/s (0: no cap). Whatever the cap, sync
# messages to the origin go out money first: receipts, then bookings and passes, then telemetry, then the rest;
# media waits while documents are queued for the origin.
limit_kib_s = 0

[warehouse]
# At the origin only: the PostgreSQL database that receives this site's show data (receipts with their
# reconciliation outcome, bookings, transfers, check-ins, telemetry, incidents, shows and slots), such as
# "postgresql://popmesh@db.example/shows" or "host=/run/postgresql user=popmesh dbname=shows". Empty: no
# warehouse. Create its tables with `popmesh warehouse migrate --data DIR`. The URL may hold a password: keep
# this file readable by the popmesh user only.
postgres_url = ""
# Connections the origin keeps to the database.
pool_size = 2
# Documents owed to the database while it is unreachable, remembered in this device's data file; past this many
# the origin remembers only that it owes everything, and compares every document when the database is back.
queue_max = 10000
# How often to try the database again while it is unreachable, in seconds.
retry_every_secs = 2
"#;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub api: Api,
    pub p2p: P2p,
    pub log: Log,
    pub escrow: Escrow,
    pub payments: Payments,
    pub media: Media,
    pub telemetry: TelemetryConfig,
    pub alerts: Alerts,
    pub uplink: Uplink,
    pub warehouse: Warehouse,
}

/// `[warehouse]`: where the origin writes the show data (see [`crate::node::warehouse`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Warehouse {
    pub postgres_url: String,
    pub pool_size: usize,
    pub queue_max: usize,
    pub retry_every_secs: u64,
}

impl Default for Warehouse {
    fn default() -> Self {
        Self {
            postgres_url: String::new(),
            pool_size: 2,
            queue_max: 10_000,
            retry_every_secs: 2,
        }
    }
}

/// Thresholds for the operator console's alerts (0: off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Alerts {
    pub unreconciled_max_minor: u64,
    pub preseed_min_percent: u64,
    pub peers_min: u64,
    pub peer_silent_max_secs: u64,
    pub outage_max_secs: u64,
}

impl Default for Alerts {
    fn default() -> Self {
        Self {
            unreconciled_max_minor: 100_000,
            preseed_min_percent: 100,
            peers_min: 0,
            peer_silent_max_secs: 30,
            outage_max_secs: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub events_per_sec_max: u64,
    pub sample_one_in: u32,
    pub conversion: Vec<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            events_per_sec_max: 200,
            sample_one_in: 10,
            conversion: ["checkin", "booking", "purchase", "signup"]
                .map(str::to_owned)
                .to_vec(),
        }
    }
}

impl TelemetryConfig {
    pub fn policy(&self) -> popmesh_crdt::telemetry::SamplingPolicy {
        popmesh_crdt::telemetry::SamplingPolicy {
            events_per_sec_max: self.events_per_sec_max,
            sample_one_in: self.sample_one_in,
            conversion: self.conversion.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Uplink {
    pub limit_kib_s: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Media {
    pub port: u16,
    pub preseed_every_secs: u64,
    pub gc_every_secs: u64,
    pub default_ttl_hours: u64,
    pub verify_on_start: bool,
    pub upload_limit_mib_s: u64,
    pub upload_max_mib: u64,
    pub reserve_mib: u64,
}

impl Default for Media {
    fn default() -> Self {
        Self {
            port: 4702,
            preseed_every_secs: 2,
            gc_every_secs: 30,
            default_ttl_hours: 24,
            verify_on_start: true,
            upload_limit_mib_s: 0,
            upload_max_mib: 4096,
            reserve_mib: 64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Escrow {
    pub low_water: u64,
    pub rebalance_every_secs: u64,
}

impl Default for Escrow {
    fn default() -> Self {
        Self {
            low_water: 3,
            rebalance_every_secs: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    pub listen: SocketAddr,
    pub loopback_without_token: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct P2p {
    pub listen: Vec<String>,
    pub bootstrap: Vec<String>,
    pub mdns: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Payments {
    pub currency: String,
    pub payment_max_minor: u64,
    pub stored_total_max_minor: u64,
    pub stale_after_hours: u64,
    pub receipts_per_page: usize,
}

impl Default for Api {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            loopback_without_token: true,
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }
}

impl Default for P2p {
    fn default() -> Self {
        Self {
            listen: vec!["/ip4/0.0.0.0/tcp/4701".into()],
            bootstrap: Vec::new(),
            mdns: true,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info,samod_core=warn,samod=warn".into(),
        }
    }
}

impl Default for Payments {
    fn default() -> Self {
        let limits = popmesh_crdt::risk::RiskLimits::default();
        Self {
            currency: limits.currency,
            payment_max_minor: limits.payment_max_minor,
            stored_total_max_minor: limits.stored_total_max_minor,
            stale_after_hours: limits.stale_after_ms / 3_600_000,
            receipts_per_page: 1000,
        }
    }
}

impl Media {
    pub fn options(&self) -> crate::media::MediaOptions {
        crate::media::MediaOptions {
            port: self.port,
            preseed_every: std::time::Duration::from_secs(self.preseed_every_secs),
            gc_every: std::time::Duration::from_secs(self.gc_every_secs),
            default_ttl_ms: self.default_ttl_hours.saturating_mul(3_600_000),
            verify_on_start: self.verify_on_start,
            upload_limit: (self.upload_limit_mib_s > 0)
                .then_some(self.upload_limit_mib_s.saturating_mul(1 << 20)),
            upload_max_bytes: self.upload_max_mib.saturating_mul(1 << 20),
            reserve_bytes: self.reserve_mib.saturating_mul(1 << 20),
            bind_ip: std::net::IpAddr::from([0, 0, 0, 0]),
        }
    }
}

impl Payments {
    pub fn limits(&self) -> popmesh_crdt::risk::RiskLimits {
        popmesh_crdt::risk::RiskLimits {
            currency: self.currency.clone(),
            payment_max_minor: self.payment_max_minor,
            stored_total_max_minor: self.stored_total_max_minor,
            stale_after_ms: self.stale_after_hours.saturating_mul(3_600_000),
        }
    }
}

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("{} is not a valid popmesh config: {reason}", path.display())]
    InFile { path: PathBuf, reason: String },
    /// What is wrong, naming the section and field.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Write(#[from] crate::site::SiteError),
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

fn invalid(what: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid(what.to_string())
}

impl Config {
    /// Reads `path`, or the defaults when it does not exist. A bad file is an error naming the file and field.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::parse(&text).map_err(|e| ConfigError::InFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    pub fn parse(text: &str) -> Result<Self> {
        let config: Config = toml::from_str(text).map_err(invalid)?;
        if config.telemetry.sample_one_in == 0 {
            return Err(invalid(
                "telemetry: sample_one_in must be at least 1 (1 keeps every event)",
            ));
        }
        if config.media.preseed_every_secs == 0 || config.media.gc_every_secs == 0 {
            return Err(invalid(
                "media: preseed_every_secs and gc_every_secs must be at least 1",
            ));
        }
        let w = &config.warehouse;
        if w.pool_size == 0 || w.queue_max == 0 || w.retry_every_secs == 0 {
            return Err(invalid(
                "warehouse: pool_size, queue_max and retry_every_secs must be at least 1",
            ));
        }
        if !w.postgres_url.is_empty() {
            w.postgres_url
                .parse::<tokio_postgres::Config>()
                .map_err(|e| invalid(format!("warehouse: postgres_url does not parse: {e}")))?;
        }
        for addr in config.p2p.listen.iter().chain(&config.p2p.bootstrap) {
            addr.parse::<libp2p::Multiaddr>()
                .map_err(|e| invalid(format!("p2p: {addr:?} is not a multiaddr: {e}")))?;
        }
        Ok(config)
    }

    /// Writes [`TEMPLATE`] with `bootstrap` filled in.
    pub fn write_template(path: &Path, bootstrap: &[String]) -> Result<()> {
        let list = bootstrap
            .iter()
            .map(|b| format!("{b:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let text = TEMPLATE.replace("bootstrap = []", &format!("bootstrap = [{list}]"));
        Ok(crate::site::write_atomic(path, text.as_bytes(), false)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_is_the_defaults() {
        assert_eq!(
            Config::parse(TEMPLATE).expect("template parses"),
            Config::default()
        );
    }

    #[test]
    fn the_example_config_of_every_role_in_deploy_is_valid() {
        for (role, text) in [
            ("edge", include_str!("../../deploy/config/edge.toml")),
            ("kiosk", include_str!("../../deploy/config/kiosk.toml")),
            ("pos", include_str!("../../deploy/config/pos.toml")),
            ("origin", include_str!("../../deploy/config/origin.toml")),
        ] {
            let config =
                Config::parse(text).unwrap_or_else(|e| panic!("deploy/config/{role}.toml: {e:#}"));
            assert!(
                text.contains("bootstrap = []"),
                "{role}: provision.sh fills the bootstrap line"
            );
            assert!(
                config.api.listen.ip().is_loopback(),
                "{role}: the API stays on loopback"
            );
        }
    }

    #[test]
    fn a_misspelt_field_is_named() {
        let err = Config::parse("[api]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n")
            .expect_err("unknown field");
        assert!(format!("{err:#}").contains("lisen"), "{err:#}");
        let err =
            Config::parse("[p2p]\nbootstrap = [\"not an addr\"]\n").expect_err("bad multiaddr");
        assert!(format!("{err:#}").contains("not an addr"), "{err:#}");
        let err = Config::parse("[telemetry]\nsample_one_in = 0\n").expect_err("zero");
        assert!(format!("{err:#}").contains("sample_one_in"), "{err:#}");
        let err = Config::parse("[uplink]\nlimit_kbps = 5\n").expect_err("misspelt");
        assert!(format!("{err:#}").contains("limit_kbps"), "{err:#}");
        let err = Config::parse("[warehouse]\npostgres_url = \"postgresql://db:port/x\"\n")
            .expect_err("bad url");
        assert!(format!("{err:#}").contains("postgres_url"), "{err:#}");
        let err = Config::parse("[warehouse]\nqueue_max = 0\n").expect_err("zero");
        assert!(format!("{err:#}").contains("queue_max"), "{err:#}");
    }
}
