//! The simulated site: devices, a network, a show's workload and the faults, advanced one event at a time.
//!
//! A run has two phases, as TigerBeetle's VOPR does. In the *fault phase* (the show), devices sell and take
//! payments while partitions come and go, connections reset, devices crash and restart and clocks disagree; the
//! safety checkers run after every event. In the *liveness phase* every fault stops, and every device must converge
//! within a bound of simulated time, or the run fails with its seed.
//!
//! All randomness comes from streams derived from the run's seed, one per purpose (workload, faults, each link's
//! latency, each device's sync engine), so that a change in one part of the world does not reshuffle the others.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use automerge::{Automerge, ChangeHash};
use popmesh_crdt::directory::{Directory, DirectoryView, ShowRecord, SlotRecord};
use popmesh_crdt::doc::Schema;
use popmesh_crdt::docs::DocName;
use popmesh_crdt::enrollment::{InviteTerms, JoinToken, RevocationTarget, SiteAuthority};
use popmesh_crdt::escrow::{EscrowError, SaleOutcome, Slot};
use popmesh_crdt::ledger::{Ledger, PaymentError};
use popmesh_crdt::manifest::{Manifest, MediaEntry};
use popmesh_crdt::receipt::{PaymentRequest, ReceiptError};
use popmesh_crdt::risk::RiskLimits;
use popmesh_crdt::telemetry::{CounterBuffer, Telemetry};
use popmesh_crdt::{Doc, Role, SecretKey, UnixMillis, actor_id};
use popmesh_device::topology::Topology;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use samod_core::{DocumentId, UnixTimestamp};
use std::rc::Rc;

use crate::host::{DiskFault, Host, PendingAck, Side, Storage};
use crate::net::{Dir, Latency, Network};
use crate::report::{Quantiles, RunReport};
use popmesh_crdt::enrollment::EnrollmentCert;
use popmesh_device::desk::BatchId;
use popmesh_device::librarian::{Enrolled, Librarian, Step};
use popmesh_device::links as mesh_rules;
use popmesh_device::{Desk, Durability, Mutation, Mutations, gate};
use std::time::Duration;

mod authorship;
mod checks;
mod desk;
mod faults;
mod librarian;
mod links;
mod ops;
mod reconcile;
mod setup;
mod watchman;

/// The show whose slots kiosks and POS terminals sell; POS terminals take payments for both shows, under the one
/// stored limit of each device.
const SHOW: &str = "show-1";
const SHOWS: [&str; 2] = [SHOW, "show-2"];
/// How often a payment at a POS comes with a second one for the other show at the same moment (two lanes).
const TWO_LANES: f64 = 0.3;
/// Between a batch's start (when the shell reads what the device's other shows hold) and its change, as the node's
/// desk task reads other ledgers before it changes the page: another show's batch may change its page meanwhile.
const TAKE_READ_MS: u64 = 2;
/// When the origin first reconciles against the processor's batch, and how often after.
const RECONCILE_FIRST_MS: u64 = 60_000;
const RECONCILE_EVERY_MS: u64 = 240_000;
const SLOTS: usize = 3;
/// Seats per seller per slot granted at the start; the edge box holds half as many again in reserve.
const GRANT_PER_SELLER: u64 = 8;
const LOW_WATER: u64 = 3;
const BLOBS: usize = 4;
/// The hub tick. samod ticks every 100 ms to drive dialer backoff, which the simulator replaces with its own
/// reconnects, so a slower tick changes no outcome and saves most of the hub's per-event bookkeeping.
const TICK_MS: u64 = 5_000;
const PROBE_MS: u64 = 1_000;
/// How often every changed slot replica is re-checked in full, behind the writer-side check.
const SWEEP_MS: u64 = 60_000;
const FLUSH_MS: u64 = 120_000;
/// Mean time between sales at a seller, between payments at a POS terminal, and between rebalancing checks.
const SELL_EVERY_MS: u64 = 45_000;
const PAY_EVERY_MS: u64 = 60_000;
const REBALANCE_EVERY_MS: u64 = 60_000;
/// Simulated bandwidth for media between two devices, bytes per millisecond (about 20 MB/s).
const BLOB_BYTES_PER_MS: u64 = 20_000;
/// How long a one-way-broken connection takes to be noticed and reset.
const DEAD_CONNECTION_MS: u64 = 5_000;

/// How often each device's store flushes its lazy tier (the node's `FLUSH_EVERY`).
const STORE_FLUSH_MS: u64 = 2_000;
/// How long an acknowledged write's fsync takes.
const FSYNC_MS: u64 = 4;
/// Receipts per ledger page (the node's `receipts_per_page`, small here so pages fill during a show).
const RECEIPTS_PER_PAGE: usize = 8;

/// A deliberately broken device, to prove the checkers bite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// Device 1 discards every message it receives.
    DropsIncoming,
    /// Device 1 sells whatever is asked, ignoring its quota.
    Oversells,
    /// The device core's desk answers payments before their write is durable (every device).
    AnswersBeforeDurable,
    /// The device core's rebalancer gives quota it does not hold (every device).
    GivesUnheldQuota,
    /// The device core's desk leaves other shows' batches in flight out of the stored limit (every device).
    IgnoresOtherShows,
    /// The device core's durability plan saves a change without the synced changes it rests on (every device).
    SavesChangeAlone,
    /// The device core's gate admits revoked devices (every device).
    AdmitsRevoked,
}

impl Broken {
    /// The device-core mutation this breakage is, if it is one.
    fn mutations(self) -> Mutations {
        let m = match self {
            Broken::AnswersBeforeDurable => Mutation::AnswerBeforeDurable,
            Broken::GivesUnheldQuota => Mutation::GiveUnheldQuota,
            Broken::AdmitsRevoked => Mutation::AdmitRevoked,
            Broken::IgnoresOtherShows => Mutation::IgnoreOtherShows,
            Broken::SavesChangeAlone => Mutation::SaveChangeAlone,
            Broken::DropsIncoming | Broken::Oversells => return Mutations::none(),
        };
        Mutations::none().with(m)
    }
}

/// How to run one simulation.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    /// Devices in all, at least 5: an edge box, kiosks and POS terminals, a kiosk dropped in mid-show, the origin.
    pub devices: usize,
    /// Length of the show (the fault phase), in simulated milliseconds.
    pub duration_ms: u64,
    pub faults: bool,
    /// How long after faults stop every device must have converged.
    pub liveness_bound_ms: u64,
    pub broken: Option<Broken>,
    /// Keep a line per event in the report, for finding where two runs part.
    pub keep_trace: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            devices: 6,
            duration_ms: 10 * 60_000,
            faults: true,
            liveness_bound_ms: 120_000,
            broken: None,
            keep_trace: false,
        }
    }
}

/// An event at a time, with its order key among events of that time.
type Scheduled = (u64, (u8, u64, u64), Event);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Deliver {
        link: usize,
        epoch: u64,
        up: bool,
        msg: Vec<u8>,
    },
    DeadConnection {
        link: usize,
        epoch: u64,
    },
    Reconnect {
        link: usize,
    },
    Tick {
        dev: usize,
    },
    Sell {
        dev: usize,
    },
    Pay {
        dev: usize,
    },
    Count {
        dev: usize,
    },
    Flush {
        dev: usize,
    },
    Rebalance {
        dev: usize,
    },
    BlobDone {
        dev: usize,
        blob: usize,
        link: usize,
        epoch: u64,
    },
    Crash {
        dev: usize,
    },
    /// A device serving media drops off the network for a moment (its links reset; it reconnects on backoff).
    Vanish {
        dev: usize,
    },
    Restart {
        dev: usize,
    },
    Join {
        dev: usize,
    },
    Leave {
        dev: usize,
    },
    /// A desk batch started `TAKE_READ_MS` ago is taken on its page now (unless the device crashed meanwhile).
    Take {
        dev: usize,
        epoch: u32,
        take: u64,
    },
    /// The origin reconciles every receipt it holds against the processor's batch.
    Reconcile {
        dev: usize,
    },
    /// The simulated fsync of acknowledged write `write` of a device's incarnation `epoch` is done.
    Durable {
        dev: usize,
        epoch: u32,
        write: u64,
    },
    StoreFlush {
        dev: usize,
    },
    /// A device's disk starts refusing writes.
    DiskFault {
        dev: usize,
        kind: DiskFault,
    },
    /// It works again; with `reboot`, someone power-cycles the device first.
    DiskHeal {
        dev: usize,
        reboot: bool,
    },
    PartitionStart,
    PartitionEnd,
    Probe,
    EndFaults,
}

struct Device {
    name: String,
    role: Role,
    key: SecretKey,
    epoch: u32,
    host: Option<Host>,
    storage: Storage,
    present: bool,
    clock_offset_ms: i64,
    sells: bool,
    pays: bool,
    acked_receipts: BTreeSet<String>,
    acked_seats: BTreeMap<String, u64>,
    counter: CounterBuffer,
    confirmed: i64,
    attempted: i64,
    next_op: u64,
    /// The last payment asked for, and its show, for a client that retries it.
    last_payment: Option<(&'static str, PaymentRequest)>,
    blobs: BTreeSet<usize>,
    fetching: BTreeSet<usize>,
    failed_at: Option<u64>,
    /// The join token a dropped-in device enrolls with.
    token: Option<String>,
    /// When this device last dropped off the network as a media provider (at most once a minute).
    vanished_at: Option<u64>,
    /// What this device knows from its directory replica, refreshed when that replica changes.
    known: BTreeMap<String, DocumentId>,
    view: Option<DirectoryView>,
    /// Receipts this device has already verified.
    verified: BTreeSet<String>,
    /// Its enrollment certificate (a dropped-in kiosk makes its own from the join token when it arrives).
    cert: Option<EnrollmentCert>,
    /// The device core's librarian: which documents it has asked for and opened, and whether it must enroll.
    librarian: Librarian<DocumentId>,
    /// The links this device's plan names (`None` before it holds a directory: it links with every peer).
    plan: Option<BTreeSet<popmesh_crdt::DeviceId>>,
    /// The site's shape over the devices its directory replica trusts (`None` before it holds one).
    shape: Option<Rc<Topology>>,
    /// The device core's watchman: peers reached, incidents open.
    watchman: popmesh_device::watchman::Watchman,
    /// Whether this device's own telemetry document changed since its watchman last read it.
    own_telemetry_changed: bool,
    /// Reported stolen: the directory revokes it from the start, so no honest device may link with it.
    stolen: bool,
    /// A forgery: its certificate chains to another authority.
    forged: bool,
    /// The device core: the payment desk and what is known to be durable (both lost on a crash).
    desk: Desk,
    durability: Durability<DocumentId>,
    /// Payment requests at the desk, by ticket; acknowledged writes waiting for their fsync.
    tickets: BTreeMap<u64, (&'static str, PaymentRequest)>,
    writes: BTreeMap<u64, (BatchId, PendingAck)>,
    next_ticket: u64,
    /// Each show's open ledger page and the pages before it, once opened.
    pages: BTreeMap<String, desk::Pages>,
    /// Batches started and not taken yet (see `TAKE_READ_MS`).
    takes: BTreeMap<u64, desk::PendingTake>,
    /// Seats written but not acknowledged (the write failed): they may still have synced from memory.
    unacked_seats: BTreeMap<String, u64>,
}

/// A simulation in progress.
pub struct World {
    opts: SimOptions,
    now: u64,
    seq: u64,
    /// Events by (time, order key): deliveries order by link, direction and index on that direction; everything
    /// else by the sequence in which it was scheduled. So the engine's internal iteration order never leaks.
    queue: BinaryHeap<Reverse<Scheduled>>,
    workload: StdRng,
    faults: StdRng,
    /// One latency stream per link direction.
    latency: Vec<[StdRng; 2]>,
    devices: Vec<Device>,
    net: Network,
    blocked: BTreeSet<(usize, usize)>,
    loss_per_message: f64,
    authority: SiteAuthority,
    directory: DocumentId,
    /// Every document any device created, with its name: the world's bookkeeping, not any device's knowledge.
    names: BTreeMap<DocumentId, DocName>,
    slots: Vec<DocumentId>,
    manifest: DocumentId,
    blob_sizes: Vec<u64>,
    limits: RiskLimits,
    trace: blake3::Hasher,
    report: RunReport,
    heal_pending: Option<u64>,
    /// Slot replicas changed since the last backstop sweep.
    dirty_slots: BTreeSet<(usize, DocumentId)>,
    faults_ended_at: Option<u64>,
    /// The device-core mutations in force (none but in the mutation tests).
    mutations: Mutations,
    converged_at: Option<u64>,
    /// Shapes already computed, by the trusted devices they were computed over (devices whose replicas agree
    /// share one: the rule is a function of the set).
    shapes: BTreeMap<Vec<(popmesh_crdt::DeviceId, Role)>, Rc<Topology>>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("seed", &self.opts.seed)
            .field("now_ms", &self.now)
            .field("devices", &self.devices.len())
            .field("documents", &self.names.len())
            .finish_non_exhaustive()
    }
}

fn seeded(seed: u64, label: &str) -> StdRng {
    let mut input = seed.to_be_bytes().to_vec();
    input.extend_from_slice(label.as_bytes());
    StdRng::from_seed(blake3::derive_key("popmesh sim stream v1", &input))
}

/// The latency of the link between devices `a` and `b`: a WAN hop to the origin, a LAN hop otherwise. Drawn from
/// the pair's own stream, so a link added late (a plan naming it) does not reshuffle any other.
fn link_latency(seed: u64, a: usize, b: usize, origin: usize) -> Latency {
    let mut shape = seeded(seed, &format!("latency-{a}-{b}"));
    if b == origin || a == origin {
        Latency {
            base_ms: shape.random_range(40..200),
            jitter_ms: shape.random_range(5..60),
        }
    } else {
        Latency {
            base_ms: shape.random_range(1..8),
            jitter_ms: shape.random_range(0..6),
        }
    }
}

/// The jitter streams of the link between `a` and `b`, one per direction.
fn link_rngs(seed: u64, a: usize, b: usize) -> [StdRng; 2] {
    [
        seeded(seed, &format!("latency-{a}-{b}-up")),
        seeded(seed, &format!("latency-{a}-{b}-down")),
    ]
}

impl World {
    pub fn new(opts: SimOptions) -> Self {
        assert!(
            opts.devices >= 5,
            "a site needs at least 5 devices (edge, 2 sellers, a late kiosk, the origin)"
        );
        let n = opts.devices;
        let seed = opts.seed;
        let mutations = opts.broken.map_or(Mutations::none(), Broken::mutations);
        let mut faults = seeded(seed, "faults");
        let authority =
            SiteAuthority::new(SecretKey::from_seed(seeded(seed, "authority").random()));
        let origin = n - 1;
        let late = n - 2;
        let devices: Vec<Device> = (0..n)
            .map(|i| {
                let role = match i {
                    0 => Role::Edge,
                    _ if i == origin => Role::Origin,
                    _ if i == late => Role::Kiosk,
                    _ if i % 2 == 1 => Role::Kiosk,
                    _ => Role::Pos,
                };
                let offset = if opts.faults {
                    faults.random_range(-300_000..=300_000)
                } else {
                    0
                };
                Device {
                    name: format!("{role}-{i}"),
                    role,
                    key: SecretKey::from_seed(seeded(seed, &format!("device-{i}")).random()),
                    epoch: 0,
                    host: None,
                    storage: Storage::default(),
                    present: false,
                    clock_offset_ms: offset,
                    sells: matches!(role, Role::Kiosk | Role::Pos),
                    pays: role == Role::Pos,
                    acked_receipts: BTreeSet::new(),
                    acked_seats: BTreeMap::new(),
                    counter: CounterBuffer::new(FLUSH_MS, UnixMillis(0)),
                    confirmed: 0,
                    attempted: 0,
                    next_op: 0,
                    last_payment: None,
                    blobs: BTreeSet::new(),
                    fetching: BTreeSet::new(),
                    failed_at: None,
                    token: None,
                    vanished_at: None,
                    known: BTreeMap::new(),
                    view: None,
                    verified: BTreeSet::new(),
                    cert: None,
                    librarian: Librarian::new(),
                    plan: None,
                    shape: None,
                    watchman: Default::default(),
                    own_telemetry_changed: true,
                    stolen: false,
                    forged: false,
                    desk: Desk::new(mutations),
                    durability: Durability::new(mutations),
                    tickets: BTreeMap::new(),
                    writes: BTreeMap::new(),
                    next_ticket: 0,
                    pages: BTreeMap::new(),
                    takes: BTreeMap::new(),
                    unacked_seats: BTreeMap::new(),
                }
            })
            .collect();
        // The links the site starts with: the site's shape over every device (`popmesh_device::topology`). Each
        // device then plans its links as the node does, over the devices its own directory replica trusts now, so
        // the shape closes over a revoked device and opens for a dropped-in kiosk; a link a plan names that the
        // network does not hold yet is added then (`plan_links`), with its own seeded latency.
        let ids: Vec<(popmesh_crdt::DeviceId, Role)> =
            devices.iter().map(|d| (d.key.public(), d.role)).collect();
        let everyone = Topology::of(&ids);
        let mut pairs = Vec::new();
        for (a, (me, _)) in ids.iter().enumerate() {
            let mine = everyone.links(me);
            for (b, (peer, _)) in ids.iter().enumerate().skip(a + 1) {
                if mine.contains(peer) {
                    pairs.push((a, b));
                }
            }
        }
        let net = Network::new(n, &pairs, |a, b| link_latency(seed, a, b, origin));
        let latency = pairs.iter().map(|&(a, b)| link_rngs(seed, a, b)).collect();
        let mut world = Self {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            workload: seeded(seed, "workload"),
            faults,
            latency,
            devices,
            net,
            blocked: BTreeSet::new(),
            loss_per_message: 0.0,
            authority,
            directory: DocumentId::new(&mut seeded(seed, "placeholder")),
            names: BTreeMap::new(),
            slots: Vec::new(),
            manifest: DocumentId::new(&mut seeded(seed, "placeholder")),
            blob_sizes: Vec::new(),
            limits: RiskLimits {
                // EUR 200, so that it binds: a POS fills it in a few payments, and the origin's reconciliation
                // (every `RECONCILE_EVERY_MS`) frees it once its marks sync back.
                stored_total_max_minor: 20_000,
                ..RiskLimits::default()
            },
            trace: blake3::Hasher::new(),
            report: RunReport {
                seed,
                devices: n,
                ..RunReport::default()
            },
            heal_pending: None,
            dirty_slots: BTreeSet::new(),
            mutations,
            faults_ended_at: None,
            converged_at: None,
            shapes: BTreeMap::new(),
            opts,
        };
        world.set_up_site();
        world
    }

    fn at(&mut self, delay_ms: u64, event: Event) {
        // Link-scoped events order by their link, so the order in which the sync engine happened to touch its
        // connections (it iterates hash maps) never decides which of two same-time events runs first.
        let key = match &event {
            Event::DeadConnection { link, epoch } => (2, *link as u64, *epoch),
            Event::Reconnect { link } => (3, *link as u64, 0),
            _ => {
                self.seq += 1;
                (1, self.seq, 0)
            }
        };
        self.queue.push(Reverse((self.now + delay_ms, key, event)));
    }

    /// The actor a device writes as in this incarnation.
    fn actor(&self, dev: usize) -> automerge::ActorId {
        actor_id(self.devices[dev].key.public(), self.devices[dev].epoch)
    }

    /// A device's own clock, which may be off by minutes.
    fn local_ms(&self, dev: usize) -> u64 {
        self.now
            .saturating_add_signed(self.devices[dev].clock_offset_ms)
            + 1_795_888_800_000
    }

    fn ts(&self, dev: usize) -> UnixTimestamp {
        UnixTimestamp::from_millis(u128::from(self.local_ms(dev)))
    }

    fn violation(&mut self, what: String) {
        if self.report.violations.len() < 20 {
            self.report
                .violations
                .push(format!("t={}ms: {what}", self.now));
        }
    }

    /// Runs the whole simulation and reports.
    pub fn run(mut self) -> RunReport {
        let horizon = self.opts.duration_ms + self.opts.liveness_bound_ms;
        while let Some(Reverse((at, _, event))) = self.queue.pop() {
            if at > horizon || self.converged_at.is_some() {
                break;
            }
            self.now = at;
            self.trace_event(&event);
            self.handle(event);
            self.check_changes();
        }
        self.finish()
    }

    fn trace_event(&mut self, event: &Event) {
        self.trace.update(&self.now.to_be_bytes());
        let tag = match event {
            // The wire bytes are not traced: Automerge 0.12 assembles a change bundle through hash maps, so two
            // equivalent messages can differ in encoding. What a message *did* is traced instead (the heads of
            // every document it changed, in `check_changes`).
            Event::Deliver { link, up, msg, .. } => {
                if self.opts.keep_trace {
                    self.report.messages_seen.push(msg.clone());
                }
                format!("deliver link={link} up={up}")
            }
            other => format!("{other:?}"),
        };
        self.trace.update(tag.as_bytes());
        if self.opts.keep_trace {
            self.report.trace.push(format!("{} {tag}", self.now));
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver {
                link,
                epoch,
                up,
                msg,
            } => self.deliver(link, epoch, up, msg),
            Event::DeadConnection { link, epoch } => {
                if self.net.links[link].epoch == epoch {
                    self.reset(link);
                }
            }
            Event::Reconnect { link } => self.reconnect(link),
            Event::Tick { dev } => {
                let ts = self.ts(dev);
                if let Some(host) = self.devices[dev].host.as_mut() {
                    host.tick(ts);
                    self.route(dev);
                    self.at(TICK_MS, Event::Tick { dev });
                }
            }
            Event::Sell { dev } => {
                self.sell(dev);
                let next = self
                    .workload
                    .random_range(SELL_EVERY_MS / 4..SELL_EVERY_MS * 7 / 4);
                self.reschedule(dev, next, Event::Sell { dev });
            }
            Event::Pay { dev } => {
                self.pay(dev);
                let next = self
                    .workload
                    .random_range(PAY_EVERY_MS / 4..PAY_EVERY_MS * 7 / 4);
                self.reschedule(dev, next, Event::Pay { dev });
            }
            Event::Count { dev } => {
                let by = self.workload.random_range(1..5);
                let d = &mut self.devices[dev];
                if d.host.is_some() && d.counter.handle_increment("visits", by).is_ok() {
                    d.attempted += by;
                }
                let next = self.workload.random_range(200..3_000);
                self.reschedule(dev, next, Event::Count { dev });
            }
            Event::Flush { dev } => {
                self.flush(dev);
                self.reschedule(dev, FLUSH_MS, Event::Flush { dev });
            }
            Event::Rebalance { dev } => {
                self.rebalance(dev);
                self.reschedule(dev, REBALANCE_EVERY_MS, Event::Rebalance { dev });
            }
            Event::BlobDone {
                dev,
                blob,
                link,
                epoch,
            } => {
                self.devices[dev].fetching.remove(&blob);
                if self.net.links[link].epoch == epoch
                    && self.net.links[link].conns.is_some()
                    && self.devices[dev].host.is_some()
                {
                    self.devices[dev].blobs.insert(blob);
                } else {
                    // The provider vanished mid-transfer: the next probe picks another.
                    self.report.blob_fetch_failures += 1;
                }
            }
            Event::Crash { dev } => self.crash(dev),
            Event::Vanish { dev } => {
                if self.faults_ended_at.is_none() {
                    let links: Vec<usize> = self.net.of_device(dev).collect();
                    for link in links {
                        self.reset(link);
                    }
                }
            }
            Event::Restart { dev } => {
                if self.devices[dev].host.is_none() {
                    self.devices[dev].epoch += 1;
                    self.boot(dev);
                    if self.devices[dev].present {
                        self.schedule_device(dev);
                        self.link_all(dev);
                    }
                    self.mark_heal();
                }
            }
            Event::Join { dev } => {
                if !self.devices[dev].present {
                    self.join(dev);
                }
            }
            Event::Leave { dev } => {
                self.devices[dev].present = false;
                let links: Vec<usize> = self.net.of_device(dev).collect();
                for link in links {
                    self.reset(link);
                }
            }
            Event::Take { dev, epoch, take } => self.take(dev, epoch, take),
            Event::Reconcile { dev } => {
                self.reconcile(dev);
                self.reschedule(dev, RECONCILE_EVERY_MS, Event::Reconcile { dev });
            }
            Event::Durable { dev, epoch, write } => self.durable(dev, epoch, write),
            Event::StoreFlush { dev } => {
                self.store_flush(dev);
                self.reschedule(dev, STORE_FLUSH_MS, Event::StoreFlush { dev });
            }
            Event::DiskFault { dev, kind } => self.disk_fault(dev, kind),
            Event::DiskHeal { dev, reboot } => self.disk_heal(dev, reboot),
            Event::PartitionStart => self.start_partition(),
            Event::PartitionEnd => {
                self.blocked.clear();
                for link in 0..self.net.links.len() {
                    if self.link_wanted(link) {
                        self.want_reconnect(link, 0);
                    }
                }
                self.mark_heal();
                if self.faults_ended_at.is_none() {
                    let next = self.faults.random_range(20_000..120_000);
                    self.at(next, Event::PartitionStart);
                }
            }
            Event::Probe => {
                self.probe();
                self.at(PROBE_MS, Event::Probe);
            }
            Event::EndFaults => self.end_faults(),
        }
    }

    /// Re-arms a periodic device event while the device is on site and up; a restart re-arms it afresh.
    fn reschedule(&mut self, dev: usize, delay: u64, event: Event) {
        let d = &self.devices[dev];
        if d.present && d.host.is_some() {
            self.at(delay, event);
        }
    }
}
