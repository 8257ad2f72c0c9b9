//! The demo site: its devices (data directories and running nodes), how they join, start and stop, and the checks
//! the story waits on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use popmesh_transport::MeshConfig;

use super::STEP_TIMEOUT;
use popmesh_node::config::Config;
use popmesh_node::node::{Node, RunOptions};
use popmesh_node::site::DataDir;

/// One device of the demo site.
pub(super) struct Device {
    pub(super) name: String,
    pub(super) dir: PathBuf,
    pub(super) node: Option<Arc<Node>>,
}

impl Device {
    fn node(&self) -> Result<&Arc<Node>> {
        self.node
            .as_ref()
            .with_context(|| format!("{} is not running", self.name))
    }
}

pub(super) struct Site {
    pub(super) root: PathBuf,
    pub(super) devices: BTreeMap<String, Device>,
    pub(super) bootstrap: Vec<libp2p::Multiaddr>,
}

impl Site {
    fn options(&self, dir: &Path) -> Result<RunOptions> {
        let dir = DataDir::load(dir)?;
        let mut config = Config::load(&DataDir::config_path(&dir.root))?;
        config.escrow.rebalance_every_secs = 1;
        config.media.port = 0;
        config.media.preseed_every_secs = 1;
        Ok(popmesh_node::node::RunOptions::from_config(
            &config,
            MeshConfig {
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
                bootstrap: self.bootstrap.clone(),
                mdns: false,
                network_key: dir.network_key,
            },
        ))
    }

    pub(super) async fn start(&mut self, name: &str) -> Result<Arc<Node>> {
        let dir = self.devices[name].dir.clone();
        let options = self.options(&dir)?;
        // A restarted device may find its data file still closing for a moment.
        let started = Instant::now();
        let node = loop {
            match Node::start(DataDir::load(&dir)?, options.clone()).await {
                Ok(node) => break node,
                Err(e) if started.elapsed() < Duration::from_secs(10) => {
                    tracing::debug!("{name} not started yet: {e:#}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("starting {name}"))),
            }
        };
        if let Some(d) = self.devices.get_mut(name) {
            d.node = Some(node.clone());
        }
        Ok(node)
    }

    pub(super) async fn stop(&mut self, name: &str) {
        if let Some(node) = self.devices.get_mut(name).and_then(|d| d.node.take()) {
            node.shutdown().await;
        }
    }

    pub(super) fn node(&self, name: &str) -> Result<&Arc<Node>> {
        self.devices
            .get(name)
            .with_context(|| format!("no device {name}"))?
            .node()
    }

    pub(super) fn running(&self) -> Vec<(&str, &Arc<Node>)> {
        self.devices
            .iter()
            .filter_map(|(n, d)| d.node.as_ref().map(|node| (n.as_str(), node)))
            .collect()
    }

    pub(super) async fn join(&mut self, token: &str, name: &str) -> Result<()> {
        let dir = self.root.join(name);
        crate::cmd::cli::join_site(token, &dir, Some(name.to_owned()))?;
        self.devices.insert(
            name.to_owned(),
            Device {
                name: name.to_owned(),
                dir,
                node: None,
            },
        );
        Ok(())
    }
}

/// Waits until `check` holds, polling; past [`STEP_TIMEOUT`] the error says what was awaited.
pub(super) async fn until<F, Fut>(what: &str, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Ok(start.elapsed());
        }
        if start.elapsed() > STEP_TIMEOUT {
            bail!("the site did not get there in {STEP_TIMEOUT:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(super) async fn receipts_of(node: &Node) -> usize {
    node.receipts().await.map(|r| r.len()).unwrap_or(0)
}

pub(super) async fn all_hold(nodes: &[Arc<Node>], hash: iroh_blobs::Hash) -> bool {
    for node in nodes {
        match node.media().state(hash).await {
            Ok(s) if s.state == "complete" => {}
            _ => return false,
        }
    }
    true
}

/// Every node holds every document at the same heads.
pub(super) async fn converged(nodes: &[Arc<Node>]) -> bool {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for node in nodes {
        if !node.documents_missing().is_empty() {
            return false;
        }
        for d in node.documents().await {
            let mut heads = d.heads;
            heads.sort();
            match seen.get(&d.id) {
                None => {
                    seen.insert(d.id, heads);
                }
                Some(h) if *h == heads => {}
                Some(_) => return false,
            }
        }
    }
    true
}
