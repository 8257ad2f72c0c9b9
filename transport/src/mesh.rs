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
use futures::future::BoxFuture;
use libp2p::core::transport::upgrade::Version;
use libp2p::core::{ConnectedPoint, Transport as _};
use libp2p::metrics::Recorder as _;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, allow_block_list, connection_limits, identify, mdns};
use libp2p::{noise, tcp, yamux};
use popmesh_crdt::SecretKey;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::identity::{device_of_peer, libp2p_keypair};
use crate::link::{self, Gate, Hello, LinkCounters, LinkError, SITE_PROTOCOL};

mod plan;

pub use plan::{LinkReason, PRUNE_AFTER};

/// How long the larger peer waits for the smaller one to dial before dialing itself.
pub const FALLBACK_DIAL: Duration = Duration::from_secs(3);
/// How long a connected peer has to complete the hello.
pub const HELLO_GRACE: Duration = Duration::from_secs(15);
/// How long a refused peer stays blocked before it may try again.
pub const BLOCK_FOR: Duration = Duration::from_secs(60);
/// Redial backoff for bootstrap addresses and known peers.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(15);
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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// The mesh's own metrics, registered beside libp2p-metrics in the node's one registry.
#[derive(Debug, Clone)]
struct MeshMetrics {
    peers_admitted: Gauge,
    connections: Gauge,
    rejected: Family<ReasonLabel, Counter>,
    links: Arc<LinkCounters>,
}

impl MeshMetrics {
    fn register(registry: &mut Registry) -> Self {
        let peers_admitted = Gauge::default();
        let connections = Gauge::default();
        let rejected = Family::<ReasonLabel, Counter>::default();
        let messages = Family::<DirectionLabel, Counter>::default();
        let bytes = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "popmesh_peers_connected",
            "Peers connected and admitted to the site",
            peers_admitted.clone(),
        );
        registry.register(
            "popmesh_connections",
            "Open libp2p connections, admitted or not",
            connections.clone(),
        );
        registry.register(
            "popmesh_peers_rejected",
            "Peers disconnected because they were not admitted, by reason",
            rejected.clone(),
        );
        registry.register(
            "popmesh_sync_messages",
            "Document sync messages, by direction",
            messages.clone(),
        );
        registry.register(
            "popmesh_sync_bytes",
            "Document sync bytes, by direction",
            bytes.clone(),
        );
        let dir = |d| DirectionLabel { direction: d };
        // Each lookup in its own call: `get_or_create` holds the family's lock until its guard drops, so four in one
        // struct expression would deadlock on the second.
        let counter =
            |family: &Family<DirectionLabel, Counter>, d| family.get_or_create(&dir(d)).clone();
        let links = Arc::new(LinkCounters {
            messages_in: counter(&messages, "in"),
            messages_out: counter(&messages, "out"),
            bytes_in: counter(&bytes, "in"),
            bytes_out: counter(&bytes, "out"),
        });
        Self {
            peers_admitted,
            connections,
            rejected,
            links,
        }
    }

    fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    stream: libp2p_stream::Behaviour,
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
        let psk = PreSharedKey::new(config.network_key);
        let mdns_on = config.mdns;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(libp2p_keypair(key))
            .with_tokio()
            .with_other_transport(|key| {
                let noise = noise::Config::new(key)?;
                Ok(
                    tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                        .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
                        .upgrade(Version::V1Lazy)
                        .authenticate(noise)
                        .multiplex(yamux::Config::default())
                        .timeout(Duration::from_secs(10)),
                )
            })
            .map_err(|e| MeshError::Transport(e.to_string()))?
            .with_bandwidth_metrics(registry)
            .with_behaviour(|key| {
                let local = key.public().to_peer_id();
                let mdns = if mdns_on {
                    let cfg = mdns::Config {
                        query_interval: Duration::from_secs(5),
                        ..Default::default()
                    };
                    Some(mdns::tokio::Behaviour::new(cfg, local)?)
                } else {
                    None
                };
                Ok(Behaviour {
                    blocked: Default::default(),
                    limits: connection_limits::Behaviour::new(
                        connection_limits::ConnectionLimits::default()
                            .with_max_pending_incoming(Some(64))
                            .with_max_established(Some(512))
                            .with_max_established_per_peer(Some(4)),
                    ),
                    identify: identify::Behaviour::new(identify::Config::new(
                        "/popmesh/1".into(),
                        key.public(),
                    )),
                    mdns: Toggle::from(mdns),
                    stream: libp2p_stream::Behaviour::new(),
                })
            })
            .map_err(|e| MeshError::Transport(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
            .build();
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
                    backoff: BACKOFF_MIN,
                    next_at: Instant::now(),
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

/// Answers inbound site streams: hello, then hand the stream to samod as an accepted connection.
async fn accept_links(
    mut incoming: libp2p_stream::IncomingStreams,
    acceptor: samod::AcceptorHandle,
    gate: Arc<dyn Gate>,
    counters: Arc<LinkCounters>,
    commands: mpsc::Sender<Command>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(HELLOS_IN_FLIGHT_MAX));
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (gate, counters, commands, acceptor) = (
            gate.clone(),
            counters.clone(),
            commands.clone(),
            acceptor.clone(),
        );
        tokio::spawn(async move {
            let outcome = link::accept(stream, peer, &*gate).await;
            drop(slot);
            match outcome {
                Ok((hello, framed)) => {
                    let policy = link_policy(&*gate, peer, &hello);
                    let _ = commands.send(Command::Admitted { peer, hello }).await;
                    if acceptor
                        .accept(link::into_samod(framed, peer, counters, policy))
                        .is_err()
                    {
                        tracing::debug!(%peer, "document engine stopped; dropping link");
                    }
                }
                Err(e) => report_link_error(&commands, peer, &e).await,
            }
        });
    }
}

fn link_policy(gate: &dyn Gate, peer: PeerId, hello: &Hello) -> link::LinkPolicy {
    match device_of_peer(&peer) {
        Some(device) => gate.link_policy(device, hello),
        None => link::LinkPolicy::default(),
    }
}

async fn report_link_error(commands: &mpsc::Sender<Command>, peer: PeerId, e: &LinkError) {
    if e.is_refusal() {
        tracing::warn!(%peer, "site link refused: {e}");
        let _ = commands
            .send(Command::Refused {
                peer,
                reason: match e {
                    LinkError::TheyRefused { .. } => "they_refused".into(),
                    LinkError::NotADevice(_) | LinkError::Malformed(_) => "malformed_hello".into(),
                    _ => "not_enrolled".into(),
                },
            })
            .await;
    } else {
        tracing::debug!(%peer, "site link failed: {e}");
    }
}

/// samod's dialer for one admitted-or-not-yet peer: each connect opens a fresh site stream and says hello.
struct PeerDialer {
    peer: PeerId,
    control: libp2p_stream::Control,
    gate: Arc<dyn Gate>,
    counters: Arc<LinkCounters>,
    commands: mpsc::Sender<Command>,
}

impl samod::Dialer for PeerDialer {
    type Error = LinkError;

    fn url(&self) -> samod::Url {
        samod::Url::parse(&format!("libp2p://{}", self.peer))
            .expect("a peer id is a valid url host")
    }

    fn connect(&self) -> BoxFuture<'static, Result<samod::Transport, samod::DialError<LinkError>>> {
        let mut control = self.control.clone();
        let (peer, gate, counters, commands) = (
            self.peer,
            self.gate.clone(),
            self.counters.clone(),
            self.commands.clone(),
        );
        Box::pin(async move {
            let stream = control
                .open_stream(peer, SITE_PROTOCOL)
                .await
                .map_err(samod::DialError::transient)?;
            match link::open(stream, peer, &*gate).await {
                Ok((hello, framed)) => {
                    let policy = link_policy(&*gate, peer, &hello);
                    let _ = commands.send(Command::Admitted { peer, hello }).await;
                    Ok(link::into_samod(framed, peer, counters, policy))
                }
                Err(e) if e.is_refusal() => {
                    report_link_error(&commands, peer, &e).await;
                    Err(samod::DialError::PermanentFailure(e))
                }
                Err(e) => Err(samod::DialError::transient(e)),
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DialState {
    Idle,
    Dialing(ConnectionId),
    Connected(ConnectionId),
}

struct Bootstrap {
    addr: Multiaddr,
    state: DialState,
    backoff: Duration,
    next_at: Instant,
    /// The peer this address led to last time.
    peer: Option<PeerId>,
}

struct Conn {
    id: ConnectionId,
    dialed_by_me: bool,
    /// The remote IP address of the connection.
    remote_ip: Option<std::net::IpAddr>,
}

/// Addresses a peer was discovered at (mDNS, identify), and when to try it next.
struct Known {
    addrs: Vec<Multiaddr>,
    next_at: Instant,
    backoff: Duration,
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
            Command::Reverify => {
                let refused: Vec<(PeerId, String)> = self
                    .admitted
                    .iter()
                    .filter_map(|(peer, hello)| {
                        let device = device_of_peer(peer)?;
                        self.gate.admit(device, hello).err().map(|r| (*peer, r))
                    })
                    .collect();
                for (peer, reason) in refused {
                    tracing::warn!(%peer, "admitted peer no longer trusted: {reason}");
                    self.refuse(peer, "not_enrolled");
                }
            }
        }
    }

    fn refuse(&mut self, peer: PeerId, reason: &str) {
        self.metrics.reject(reason);
        self.admitted.remove(&peer);
        if let Some(session) = self.sessions.remove(&peer) {
            session.close();
        }
        self.blocked.insert(peer, Instant::now() + BLOCK_FOR);
        self.swarm.behaviour_mut().blocked.block_peer(peer);
    }

    fn on_event(
        &mut self,
        event: SwarmEvent<BehaviourEvent>,
        connected_at: &mut HashMap<PeerId, Instant>,
    ) {
        self.p2p_metrics.record(&event);
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.lock().listening.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.lock().listening.retain(|a| a != &address);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if peer == self.local {
                        continue;
                    }
                    let first = !self.known.contains_key(&peer);
                    let known = self.known.entry(peer).or_insert_with(|| Known {
                        addrs: Vec::new(),
                        next_at: Instant::now(),
                        backoff: BACKOFF_MIN,
                    });
                    if !known.addrs.contains(&addr) {
                        known.addrs.push(addr);
                    }
                    if first {
                        tracing::info!(%peer, "discovered by mDNS");
                        // The smaller peer dials at once; the larger gives it a head start.
                        known.next_at = if self.local < peer {
                            Instant::now()
                        } else {
                            Instant::now() + FALLBACK_DIAL
                        };
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Expired(gone))) => {
                for (peer, addr) in gone {
                    if let Some(k) = self.known.get_mut(&peer) {
                        k.addrs.retain(|a| a != &addr);
                        if k.addrs.is_empty() {
                            self.known.remove(&peer);
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => {
                self.p2p_metrics.record(&event);
                if let identify::Event::Received { peer_id, info, .. } = event
                    && let Some(k) = self.known.get_mut(&peer_id)
                {
                    for addr in info.listen_addrs {
                        if !k.addrs.contains(&addr) {
                            k.addrs.push(addr);
                        }
                    }
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let dialed_by_me = matches!(endpoint, ConnectedPoint::Dialer { .. });
                for b in &mut self.bootstrap {
                    if b.state == DialState::Dialing(connection_id) {
                        b.state = DialState::Connected(connection_id);
                        b.peer = Some(peer_id);
                        b.backoff = BACKOFF_MIN;
                    }
                }
                if let Some(k) = self.known.get_mut(&peer_id) {
                    k.backoff = BACKOFF_MIN;
                }
                connected_at.entry(peer_id).or_insert_with(Instant::now);
                let remote = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => address,
                    ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr,
                };
                let remote_ip = remote.iter().find_map(|p| match p {
                    libp2p::multiaddr::Protocol::Ip4(ip) => Some(std::net::IpAddr::V4(ip)),
                    libp2p::multiaddr::Protocol::Ip6(ip) => Some(std::net::IpAddr::V6(ip)),
                    _ => None,
                });
                self.conns.entry(peer_id).or_default().push(Conn {
                    id: connection_id,
                    dialed_by_me,
                    remote_ip,
                });
                self.drop_duplicates(peer_id);
                if self.local < peer_id && !self.sessions.contains_key(&peer_id) {
                    self.open_session(peer_id);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                for b in &mut self.bootstrap {
                    if b.state == DialState::Connected(connection_id) {
                        b.state = DialState::Idle;
                        b.next_at = Instant::now() + b.backoff;
                    }
                }
                if let Some(list) = self.conns.get_mut(&peer_id) {
                    list.retain(|c| c.id != connection_id);
                }
                if num_established == 0 {
                    tracing::info!(%peer_id, ?cause, "peer disconnected");
                    self.conns.remove(&peer_id);
                    connected_at.remove(&peer_id);
                    self.admitted.remove(&peer_id);
                    if let Some(session) = self.sessions.remove(&peer_id) {
                        session.close();
                    }
                    if let Some(k) = self.known.get_mut(&peer_id) {
                        k.next_at = Instant::now() + k.backoff;
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                tracing::debug!(?peer_id, "dial failed: {error}");
                for b in &mut self.bootstrap {
                    if b.state == DialState::Dialing(connection_id) {
                        b.state = DialState::Idle;
                        b.next_at = Instant::now() + b.backoff;
                        b.backoff = (b.backoff * 2).min(BACKOFF_MAX);
                    }
                }
                if let Some(k) = peer_id.and_then(|p| self.known.get_mut(&p)) {
                    k.next_at = Instant::now() + k.backoff;
                    k.backoff = (k.backoff * 2).min(BACKOFF_MAX);
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                // A transport error here is most often a device without the site key: the pnet/noise handshake
                // fails. Denials (a blocked peer trying again) were counted when the peer was refused.
                tracing::debug!("inbound connection failed: {error}");
                if matches!(error, libp2p::swarm::ListenError::Transport(_)) {
                    self.metrics.reject("handshake");
                }
            }
            _ => {}
        }
    }

    /// Closes this side's redundant dials to `peer` (see the module notes for why both sides agree).
    fn drop_duplicates(&mut self, peer: PeerId) {
        let Some(list) = self.conns.get(&peer) else {
            return;
        };
        let theirs = list.iter().any(|c| !c.dialed_by_me);
        let mine: Vec<ConnectionId> = list
            .iter()
            .filter(|c| c.dialed_by_me)
            .map(|c| c.id)
            .collect();
        let keep_one_of_mine = self.local < peer || !theirs;
        let close = if keep_one_of_mine {
            mine.get(1..).unwrap_or_default()
        } else {
            &mine[..]
        };
        for id in close {
            tracing::debug!(%peer, "closing a duplicate connection");
            self.swarm.close_connection(*id);
        }
    }

    fn open_session(&mut self, peer: PeerId) {
        let dialer = PeerDialer {
            peer,
            control: self.control.clone(),
            gate: self.gate.clone(),
            counters: self.metrics.links.clone(),
            commands: self.commands.clone(),
        };
        let backoff = samod::BackoffConfig {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_retries: None,
        };
        match self.repo.dial(backoff, Arc::new(dialer)) {
            Ok(handle) => {
                self.sessions.insert(peer, handle);
            }
            Err(_) => tracing::warn!("document engine stopped; no session for {peer}"),
        }
    }

    fn housekeeping(&mut self, connected_at: &HashMap<PeerId, Instant>) {
        let now = Instant::now();
        // Unblock refused peers whose time is up (a revoked peer is refused again on its next hello).
        let expired: Vec<PeerId> = self
            .blocked
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in expired {
            self.blocked.remove(&peer);
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
        }
        // Peers that connected but never said hello.
        let silent: Vec<PeerId> = connected_at
            .iter()
            .filter(|(p, at)| {
                !self.admitted.contains_key(p) && now.duration_since(**at) > HELLO_GRACE
            })
            .map(|(p, _)| *p)
            .collect();
        for peer in silent {
            tracing::warn!(%peer, "no hello within {HELLO_GRACE:?}; disconnecting");
            self.refuse(peer, "no_hello");
        }
        // Bootstrap addresses whose peer is not connected.
        let connected: Vec<PeerId> = self.conns.keys().copied().collect();
        for i in 0..self.bootstrap.len() {
            let b = &self.bootstrap[i];
            let satisfied = b
                .peer
                .is_some_and(|p| connected.contains(&p) || self.blocked.contains_key(&p));
            if b.state != DialState::Idle || satisfied || b.next_at > now {
                continue;
            }
            let opts = DialOpts::unknown_peer_id().address(b.addr.clone()).build();
            let id = opts.connection_id();
            let addr = b.addr.clone();
            match self.swarm.dial(opts) {
                Ok(()) => self.bootstrap[i].state = DialState::Dialing(id),
                Err(e) => {
                    tracing::debug!(%addr, "bootstrap dial refused: {e}");
                    let b = &mut self.bootstrap[i];
                    b.next_at = now + b.backoff;
                    b.backoff = (b.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        // Discovered peers we should be connected to.
        let due: Vec<(PeerId, Vec<Multiaddr>)> = self
            .known
            .iter()
            .filter(|(p, k)| {
                k.next_at <= now
                    && !self.conns.contains_key(p)
                    && !self.blocked.contains_key(p)
                    && self.wanted(p)
                    && !k.addrs.is_empty()
            })
            .map(|(p, k)| (*p, k.addrs.clone()))
            .collect();
        for (peer, addrs) in due {
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Some(k) = self.known.get_mut(&peer) {
                k.next_at = now + k.backoff;
                k.backoff = (k.backoff * 2).min(BACKOFF_MAX);
            }
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%peer, "dial refused: {e}");
            }
        }
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
