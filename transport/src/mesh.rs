//! The site mesh: a libp2p swarm (TCP, the site's pre-shared key, noise, yamux; mDNS; identify) whose admitted
//! peers sync documents through samod.
//!
//! Rules the swarm task keeps:
//! - **Who dials.** Of two peers, the one with the smaller PeerId dials when mDNS shows the other; the larger one
//!   dials only if it is still not connected [`FALLBACK_DIAL`] later (multicast can be one-way). Bootstrap
//!   addresses carry no peer id, so they are dialed regardless, and redialed with backoff while the peer behind
//!   them is not connected.
//! - **One connection per pair.** When two connections to one peer exist, each side closes only connections it
//!   dialed itself: the smaller peer keeps its earliest dial, the larger peer drops its dials once the smaller peer
//!   has dialed it. Both sides end up agreeing without a message.
//! - **One sync session per pair.** The smaller peer opens the [`SITE_PROTOCOL`](crate::link::SITE_PROTOCOL) stream
//!   as samod's dialer; samod reconnects it with backoff while the libp2p connection lives.
//! - **Admission.** Nothing but the hello moves before both [`Gate`]s admit. A refused peer, or one that has not
//!   said hello within [`HELLO_GRACE`], is disconnected, counted, and blocked for [`BLOCK_FOR`]. Peers are
//!   re-checked when the node asks ([`Mesh::reverify`]), e.g. after a revocation merges into the directory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use libp2p::{Multiaddr, PeerId, Swarm};
use popmesh_crdt::SecretKey;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::mpsc;

use self::connections::Conn;
use self::dial::{Bootstrap, DialState, Known};
use self::links::accept_links;
use self::metrics::MeshMetrics;
use self::swarm::Behaviour;
use crate::identity::device_of_peer;
use crate::link::{Gate, Hello, LinkError, SITE_PROTOCOL};

mod admission;
mod connections;
mod dial;
mod events;
mod links;
mod metrics;
mod plan;
mod swarm;

pub use plan::{LinkReason, PRUNE_AFTER};

// The rules between two devices (who dials, which duplicate closes, backoff, blocking) are the device core's,
// so the simulator runs them too.
use popmesh_device::links::{self as rules, Backoff};
pub use popmesh_device::links::{BLOCK_FOR, FALLBACK_DIAL, HELLO_GRACE};
/// Bounded queue from link tasks to the swarm task.
const COMMANDS_MAX: usize = 1024;
/// Hellos being answered at once; more inbound streams wait.
const HELLOS_IN_FLIGHT_MAX: usize = 64;

/// What the mesh needs to start.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    /// The site's pre-shared key (libp2p pnet): peers without it cannot finish a handshake.
    pub network_key: [u8; 32],
}

/// A peer as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub peer_id: String,
    /// The device id (hex) behind the peer id.
    pub device: String,
    pub connections: usize,
    pub admitted: bool,
    /// The peer's hello, once admitted (its certificate says its name and role).
    #[serde(skip)]
    pub hello: Option<Hello>,
    pub connected_for_ms: u64,
    pub addresses: Vec<String>,
    /// The remote IP address of a connection to the peer (where its blob endpoint is reached).
    #[serde(skip)]
    pub remote_ip: Option<std::net::IpAddr>,
    /// Why the link exists: the node's plan names the peer, a bootstrap address led to it, or the peer's plan
    /// names this device (it dialed).
    pub why: LinkReason,
}

#[derive(Debug, Default)]
struct Shared {
    peers: BTreeMap<PeerId, PeerStatus>,
    listening: Vec<Multiaddr>,
}

enum Command {
    Admitted {
        peer: PeerId,
        hello: Hello,
    },
    Refused {
        peer: PeerId,
        reason: String,
    },
    Reverify,
    /// The node's link plan: the peers to hold links to, with addresses to reach them at.
    Plan(HashMap<PeerId, Vec<Multiaddr>>),
    /// Close every connection and listener, and end the swarm.
    Stop,
}

/// Handle to the running mesh.
#[derive(Clone)]
pub struct Mesh {
    local: PeerId,
    shared: Arc<Mutex<Shared>>,
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// Why the mesh could not start.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("could not build the libp2p transport: {0}")]
    Transport(String),
    #[error("could not listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("the document engine has stopped")]
    Stopped,
}

impl Mesh {
    /// Starts the swarm task: listens, dials the bootstrap addresses, discovers by mDNS, and links admitted peers
    /// to `repo`.
    pub fn start(
        key: &SecretKey,
        config: MeshConfig,
        repo: samod::Repo,
        gate: Arc<dyn Gate>,
        registry: &mut Registry,
    ) -> Result<Self, MeshError> {
        let metrics = MeshMetrics::register(registry);
        let p2p_metrics = libp2p::metrics::Metrics::new(registry);
        let mut swarm = swarm::build(key, &config, registry)?;
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| MeshError::Listen {
                    addr: addr.clone(),
                    reason: format!("{e:?}"),
                })?;
        }
        let local = *swarm.local_peer_id();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (tx, rx) = mpsc::channel(COMMANDS_MAX);
        let mut control = swarm.behaviour().stream.new_control();
        let incoming = control
            .accept(SITE_PROTOCOL)
            .map_err(|e| MeshError::Transport(e.to_string()))?;
        let acceptor = repo
            .make_acceptor(
                samod::Url::parse("libp2p://site")
                    .map_err(|e| MeshError::Transport(e.to_string()))?,
            )
            .map_err(|_| MeshError::Stopped)?;
        tokio::spawn(accept_links(
            incoming,
            acceptor,
            gate.clone(),
            metrics.links.clone(),
            tx.clone(),
        ));
        let task = SwarmTask {
            swarm,
            local,
            repo,
            gate,
            control,
            metrics,
            p2p_metrics,
            shared: shared.clone(),
            commands: tx.clone(),
            bootstrap: config
                .bootstrap
                .into_iter()
                .map(|addr| Bootstrap {
                    addr,
                    state: DialState::Idle,
                    backoff: Backoff::new(Instant::now(), Duration::ZERO),
                    peer: None,
                })
                .collect(),
            conns: HashMap::new(),
            known: HashMap::new(),
            sessions: HashMap::new(),
            blocked: HashMap::new(),
            admitted: HashMap::new(),
            plan: None,
        };
        tokio::spawn(task.run(rx));
        Ok(Self {
            local,
            shared,
            commands: tx,
        })
    }

    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// Addresses the swarm listens on (known once the listeners are up).
    pub fn listening(&self) -> Vec<Multiaddr> {
        self.lock().listening.clone()
    }

    /// Every connected peer, admitted or not.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let shared = self.lock();
        shared.peers.values().cloned().collect()
    }

    /// Stops the mesh: every connection and listener closes (peers see this device go), and the swarm ends.
    pub async fn stop(&self) {
        let _ = self.commands.send(Command::Stop).await;
    }

    /// Asks the gate again about every admitted peer, and drops those it now refuses.
    pub async fn reverify(&self) {
        let _ = self.commands.send(Command::Reverify).await;
    }

    /// Hands the mesh the node's link plan (see `mesh/plan.rs`): planned peers are dialed, links this side dialed
    /// to anyone else are let go.
    pub async fn set_plan(&self, plan: HashMap<PeerId, Vec<Multiaddr>>) {
        let _ = self.commands.send(Command::Plan(plan)).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A poisoned lock only means a panic elsewhere mid-update of plain data; the data is still usable.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct SwarmTask {
    swarm: Swarm<Behaviour>,
    local: PeerId,
    repo: samod::Repo,
    gate: Arc<dyn Gate>,
    control: libp2p_stream::Control,
    metrics: MeshMetrics,
    p2p_metrics: libp2p::metrics::Metrics,
    shared: Arc<Mutex<Shared>>,
    commands: mpsc::Sender<Command>,
    bootstrap: Vec<Bootstrap>,
    /// Open connections per peer, in the order they were established.
    conns: HashMap<PeerId, Vec<Conn>>,
    known: HashMap<PeerId, Known>,
    sessions: HashMap<PeerId, samod::DialerHandle<LinkError>>,
    blocked: HashMap<PeerId, Instant>,
    /// Admitted peers and when they connected.
    admitted: HashMap<PeerId, Hello>,
    /// The node's link plan, once it has one (see `mesh/plan.rs`).
    plan: Option<HashMap<PeerId, Vec<Multiaddr>>>,
}

impl SwarmTask {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut connected_at: HashMap<PeerId, Instant> = HashMap::new();
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event, &mut connected_at),
                Some(cmd) = commands.recv() => {
                    if matches!(cmd, Command::Stop) {
                        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
                        shared.peers.clear();
                        return;
                    }
                    self.on_command(cmd)
                }
                _ = tick.tick() => self.housekeeping(&connected_at),
            }
            self.publish(&connected_at);
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Admitted { peer, hello } => {
                if self.conns.contains_key(&peer) {
                    tracing::info!(%peer, "peer admitted to the site");
                    self.admitted.insert(peer, hello);
                }
            }
            Command::Refused { peer, reason } => self.refuse(peer, &reason),
            Command::Plan(plan) => self.set_plan(plan),
            Command::Stop => {}
            Command::Reverify => self.reverify(),
        }
    }

    fn housekeeping(&mut self, connected_at: &HashMap<PeerId, Instant>) {
        let now = Instant::now();
        self.unblock_expired(now);
        self.disconnect_silent(connected_at, now);
        self.dial_bootstrap(now);
        self.dial_known(now);
        self.prune(connected_at, now);
    }

    fn publish(&self, connected_at: &HashMap<PeerId, Instant>) {
        let now = Instant::now();
        let peers: BTreeMap<PeerId, PeerStatus> = self
            .conns
            .iter()
            .map(|(peer, list)| {
                let status = PeerStatus {
                    peer_id: peer.to_string(),
                    device: device_of_peer(peer).map(|d| d.to_hex()).unwrap_or_default(),
                    connections: list.len(),
                    admitted: self.admitted.contains_key(peer),
                    hello: self.admitted.get(peer).cloned(),
                    connected_for_ms: connected_at
                        .get(peer)
                        .map(|at| now.duration_since(*at).as_millis() as u64)
                        .unwrap_or(0),
                    addresses: self
                        .known
                        .get(peer)
                        .map(|k| k.addrs.iter().map(|a| a.to_string()).collect())
                        .unwrap_or_default(),
                    remote_ip: list.iter().find_map(|c| c.remote_ip),
                    why: self.reason(peer),
                };
                (*peer, status)
            })
            .collect();
        self.metrics.peers_admitted.set(self.admitted.len() as i64);
        self.metrics
            .connections
            .set(self.conns.values().map(Vec::len).sum::<usize>() as i64);
        self.lock().peers = peers;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}
