//! `popmesh run`: the daemon until SIGINT or SIGTERM: the node, the local API on loopback, the same API over TLS
//! for the site LAN when `[api] tls_listen` is set, and `run.json` for the CLI.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use popmesh_node::config::{Config, LogFormat};
use popmesh_node::node::{Node, RunOptions};
use popmesh_node::site::DataDir;
use popmesh_transport::MeshConfig;

/// How long requests in flight may take to finish once the node is told to stop.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Flags to `popmesh run` that override the config file.
#[derive(Debug, Clone, Default)]
pub struct RunFlags {
    pub api: Option<SocketAddr>,
    pub listen: Vec<String>,
    pub bootstrap: Vec<String>,
    pub no_mdns: bool,
    pub log_format: Option<LogFormat>,
    pub media_port: Option<u16>,
}

/// `popmesh run`: the daemon, until SIGINT or SIGTERM.
pub fn run(data: PathBuf, flags: RunFlags) -> Result<()> {
    let dir = DataDir::load(&data)?;
    let mut config = Config::load(&DataDir::config_path(&data))?;
    if let Some(api) = flags.api {
        config.api.listen = api;
    }
    if !flags.listen.is_empty() {
        config.p2p.listen = flags.listen;
    }
    config.p2p.bootstrap.extend(flags.bootstrap);
    if flags.no_mdns {
        config.p2p.mdns = false;
    }
    if let Some(f) = flags.log_format {
        config.log.format = f;
    }
    if let Some(port) = flags.media_port {
        config.media.port = port;
    }
    init_logging(&config)?;
    let parse = |flag: &str, addrs: &[String]| -> Result<Vec<libp2p::Multiaddr>> {
        addrs
            .iter()
            .map(|a| {
                a.parse()
                    .map_err(|e| anyhow::anyhow!("{flag} {a:?} is not a multiaddr: {e}"))
            })
            .collect()
    };
    let mesh = MeshConfig {
        listen: parse("--listen", &config.p2p.listen)?,
        bootstrap: parse("--bootstrap", &config.p2p.bootstrap)?,
        mdns: config.p2p.mdns,
        network_key: dir.network_key,
    };
    let options = popmesh_node::node::RunOptions::from_config(&config, mesh);
    let tls = tls_settings(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(
        dir,
        options,
        config.api.listen,
        popmesh_node::api::BrowserPolicy {
            allowed_hosts: config.api.allowed_hosts.clone(),
            allowed_origins: config.api.allowed_origins.clone(),
        },
        config.api.loopback_without_token,
        tls,
    ))
}

/// Where the API's TLS listener goes and which certificate it serves, from `[api]`.
struct TlsSettings {
    listen: Option<SocketAddr>,
    site_ca: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

fn tls_settings(config: &Config) -> Result<TlsSettings> {
    let site_ca = match (&config.api.tls_cert, &config.api.tls_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => bail!(
            "[api] tls_cert and tls_key go together: set both (a site CA's certificate) or neither"
        ),
    };
    Ok(TlsSettings {
        listen: config.api.tls_listen,
        site_ca,
    })
}

async fn serve(
    dir: DataDir,
    options: RunOptions,
    api: SocketAddr,
    browser: popmesh_node::api::BrowserPolicy,
    loopback_without_token: bool,
    tls: TlsSettings,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(api)
        .await
        .with_context(|| format!("the API cannot listen on {api} (--api or [api] listen)"))?;
    let name = dir.site.device_name.clone();
    // The TLS certificate before the node starts: a bad [api] tls_cert or tls_key stops the start with its reason
    // alone.
    let identity = match tls.listen {
        Some(_) => {
            let keys = dir.root.join("keys");
            let site_ca = tls
                .site_ca
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path()));
            Some(popmesh_node::api::tls::identity(&keys, &name, site_ca)?)
        }
        None => None,
    };
    let node = Node::start(dir, options).await?;
    let api_addr = listener.local_addr()?;
    tracing::info!(device = %node.dir.device(), %name, api = %api_addr, "popmesh node running");
    // This run's local secret: the CLI reads it from run.json (0600) and is an operator with it.
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).context("drawing the local secret")?;
    let local_secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let clients = popmesh_node::api::ClientPolicy {
        loopback_without_token,
        local_secret: Some(local_secret.clone()),
        secure_cookies: false,
    };
    let app = popmesh_node::api::router_guarded(node.clone(), browser.clone(), clients);
    // The same API over TLS for the site LAN, where nothing is loopback: every request shows a client token.
    let mut tls_bound = None;
    if let (Some(addr), Some(identity)) = (tls.listen, identity) {
        let fingerprint = identity.fingerprint.clone();
        let listener = popmesh_node::api::tls::TlsListener::bind(addr, identity).await?;
        let bound = axum::serve::Listener::local_addr(&listener)?;
        tracing::info!(tls = %bound, %fingerprint, "API over TLS for the site LAN");
        tls_bound = Some((bound, fingerprint));
        // Its own router: over TLS no request is an operator's for coming from loopback, nor by the local secret.
        let strict = popmesh_node::api::ClientPolicy {
            loopback_without_token: false,
            local_secret: None,
            secure_cookies: true,
        };
        let app = popmesh_node::api::router_guarded(node.clone(), browser, strict);
        tokio::spawn(async move {
            use axum::serve::ListenerExt as _;
            let served = axum::serve(
                listener.tap_io(|_| {}),
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
            if let Err(e) = served {
                tracing::error!("the TLS listener stopped: {e}");
            }
        });
    }
    let run = popmesh_node::runfile::RunFile {
        pid: std::process::id(),
        api: api_addr,
        mesh: node
            .mesh()
            .listening()
            .iter()
            .map(ToString::to_string)
            .collect(),
        media: node
            .media()
            .port()
            .map(|port| SocketAddr::new(node.media().bind_ip(), port)),
        local_secret: Some(local_secret),
        tls: tls_bound.as_ref().map(|(a, _)| *a),
        tls_fingerprint: tls_bound.map(|(_, f)| f),
    };
    if let Err(e) = run.write(&node.dir.root) {
        tracing::warn!("the CLI will not find this node's API by its data directory: {e}");
    }
    let (stopping, mut stopped) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler installs");
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        let _ = stopping.send(true);
    };
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .into_future();
    // Requests in flight get a moment to finish; a stream a client holds open (/v1/events) does not keep the node
    // from stopping.
    let deadline = async move {
        let _ = stopped.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server => served.context("serving the API")?,
        () = deadline => tracing::info!("connections still open {SHUTDOWN_GRACE:?} after the signal: closing them"),
    }
    tracing::info!("shutting down");
    popmesh_node::runfile::RunFile::remove(&node.dir.root);
    node.shutdown().await;
    Ok(())
}

fn init_logging(config: &Config) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.filter)
        .map_err(|e| anyhow::anyhow!("[log] filter {:?}: {e}", config.log.filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let result = match config.log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("logging: {e}"))
}
