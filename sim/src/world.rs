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
use popmesh_crdt::enrollment::{InviteTerms, JoinToken, SiteAuthority};
use popmesh_crdt::escrow::{EscrowError, SaleOutcome, Slot, plan_rebalance};
use popmesh_crdt::ledger::{Ledger, PaymentError};
use popmesh_crdt::manifest::{Manifest, MediaEntry};
use popmesh_crdt::receipt::{PaymentRequest, ReceiptError};
use popmesh_crdt::risk::RiskLimits;
use popmesh_crdt::telemetry::{CounterBuffer, Telemetry};
use popmesh_crdt::{Doc, Role, SecretKey, UnixMillis, actor_id, topology};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use samod_core::{DocumentId, UnixTimestamp};

use crate::host::{Host, Side, Storage};
use crate::net::{Dir, Latency, Network};
use crate::report::{Quantiles, RunReport};

const SHOW: &str = "show-1";
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

/// A deliberately broken device, to prove the checkers bite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// Device 1 discards every message it receives.
    DropsIncoming,
    /// Device 1 sells whatever is asked, ignoring its quota.
    Oversells,
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
    last_payment: Option<PaymentRequest>,
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
    converged_at: Option<u64>,
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

impl World {
    pub fn new(opts: SimOptions) -> Self {
        assert!(
            opts.devices >= 5,
            "a site needs at least 5 devices (edge, 2 sellers, a late kiosk, the origin)"
        );
        let n = opts.devices;
        let seed = opts.seed;
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
                }
            })
            .collect();
        // The site mesh is the one the node builds: hubs plus ring neighbours (popmesh_crdt::topology).
        let ids: Vec<(popmesh_crdt::DeviceId, Role)> =
            devices.iter().map(|d| (d.key.public(), d.role)).collect();
        let mut pairs = Vec::new();
        for (a, (me, _)) in ids.iter().enumerate() {
            let mine = topology::neighbours(*me, &ids, topology::RING_K_DEFAULT);
            for (b, (peer, _)) in ids.iter().enumerate().skip(a + 1) {
                if mine.contains(peer) {
                    pairs.push((a, b));
                }
            }
        }
        let mut shape = seeded(seed, "latency");
        let net = Network::new(n, &pairs, |a, b| {
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
        });
        let latency = (0..net.links.len())
            .map(|l| {
                [
                    seeded(seed, &format!("latency-{l}-up")),
                    seeded(seed, &format!("latency-{l}-down")),
                ]
            })
            .collect();
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
                stored_total_max_minor: 500_000,
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
            faults_ended_at: None,
            converged_at: None,
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

    /// The edge box runs `site init`: directory, show, slots, manifest; every device but the late kiosk enrolled.
    fn set_up_site(&mut self) {
        let n = self.devices.len();
        let late = n - 2;
        let edge_actor = actor_id(self.devices[0].key.public(), 0);
        let mut directory = Doc::<Directory>::create_site(
            edge_actor.clone(),
            self.authority.public(),
            "Simulated Site",
        )
        .expect("new site");
        let start = UnixMillis(0);
        let end = UnixMillis(u64::MAX / 2);
        for (i, d) in self.devices.iter().enumerate() {
            if i != late {
                let cert = self
                    .authority
                    .enroll(d.key.public(), d.role, &d.name, start, end);
                directory.add_device(&cert).expect("authority certificate");
            }
        }
        let (invite, secret) = self.authority.invite(
            seeded(self.opts.seed, "invite").random(),
            InviteTerms {
                role: Role::Kiosk,
                expires_at: end,
                max_uses: 1,
                cert_valid_until: end,
            },
        );
        self.devices[late].token = Some(
            JoinToken {
                site_name: "Simulated Site".into(),
                authority: self.authority.public(),
                invite,
                invite_secret: secret.seed(),
                network_key: [0; 32],
                bootstrap: vec![],
            }
            .to_line(),
        );
        directory
            .add_show(
                SHOW,
                &ShowRecord {
                    name: "Simulated Show".into(),
                    currency: "EUR".into(),
                    slots: BTreeMap::new(),
                },
            )
            .expect("show");
        let sellers: Vec<usize> = (0..n)
            .filter(|i| self.devices[*i].sells && *i != late)
            .collect();
        // Each seller starts with a grant; the edge box holds a reserve that it hands out to sellers running low.
        let reserve = GRANT_PER_SELLER * sellers.len() as u64 / 2;
        let capacity = GRANT_PER_SELLER * sellers.len() as u64 + reserve;
        for s in 0..SLOTS {
            let label = format!("slot-{s}");
            directory
                .add_slot(
                    SHOW,
                    &label,
                    &SlotRecord {
                        label: label.clone(),
                        starts_at: 0,
                        capacity,
                    },
                )
                .expect("slot");
        }
        self.boot(0);
        let ts = self.ts(0);
        let host = self.devices[0].host.as_mut().expect("edge is up");
        let directory_id = host
            .create_document(directory.into_automerge(), ts)
            .expect("directory stored");
        self.directory = directory_id.clone();
        self.names.insert(directory_id.clone(), DocName::Directory);
        for s in 0..SLOTS {
            let mut grants: BTreeMap<popmesh_crdt::DeviceId, u64> = sellers
                .iter()
                .map(|i| (self.devices[*i].key.public(), GRANT_PER_SELLER))
                .collect();
            grants.insert(self.devices[0].key.public(), reserve);
            let slot = Doc::<Slot>::create_slot(
                edge_actor.clone(),
                SHOW,
                &format!("slot-{s}"),
                capacity,
                &grants,
            )
            .expect("grants fit");
            let id = self.create_and_register(
                0,
                slot.into_automerge(),
                DocName::Slot {
                    show: SHOW.into(),
                    slot: format!("slot-{s}"),
                },
            );
            self.slots.push(id);
        }
        let mut manifest = Doc::<Manifest>::create_manifest(edge_actor, SHOW).expect("manifest");
        for b in 0..BLOBS {
            let size = self.workload.random_range(1_000_000..50_000_000);
            self.blob_sizes.push(size);
            let hash = blake3::hash(format!("{}-{b}", self.opts.seed).as_bytes())
                .to_hex()
                .to_string();
            let entry = MediaEntry {
                hash,
                size,
                mime: "video/mp4".into(),
                ttl_ms: 86_400_000,
                added_at: 0,
                added_by: String::new(),
            };
            manifest
                .publish(&format!("clip-{b}.mp4"), &entry)
                .expect("valid entry");
        }
        self.manifest = self.create_and_register(
            0,
            manifest.into_automerge(),
            DocName::Manifest { show: SHOW.into() },
        );
        self.devices[0].blobs = (0..BLOBS).collect();

        // Everyone but the late kiosk and the origin is on site from the start.
        for dev in 1..n {
            if dev != late && dev != n - 1 {
                self.join(dev);
            }
        }
        self.devices[0].present = true;
        self.schedule_device(0);
        let duration = self.opts.duration_ms;
        self.at(duration * 2 / 5, Event::Join { dev: late });
        self.at(duration / 4, Event::Join { dev: n - 1 });
        if self.opts.faults {
            self.at(duration / 2, Event::Leave { dev: n - 1 });
            self.at(duration * 3 / 4, Event::Join { dev: n - 1 });
            let first = self.faults.random_range(10_000..60_000);
            self.at(first, Event::PartitionStart);
            self.loss_per_message = self.faults.random_range(0.0..0.002);
            let crashes = self.faults.random_range(1..=3);
            for _ in 0..crashes {
                let dev = self.faults.random_range(0..n - 1);
                let when = self.faults.random_range(30_000..duration.max(30_001));
                self.at(when, Event::Crash { dev });
            }
        }
        self.at(PROBE_MS, Event::Probe);
        self.at(duration, Event::EndFaults);
        self.link_all(0);
    }

    /// The id of one of the device's own documents (its ledger, its telemetry), creating and registering it the
    /// first time. `None` while the device is down or does not hold the directory yet.
    fn own_document(
        &mut self,
        dev: usize,
        name: DocName,
        make: impl FnOnce(automerge::ActorId) -> Automerge,
    ) -> Option<DocumentId> {
        if let Some(id) = self.doc_id(dev, &name) {
            return Some(id);
        }
        if !self.devices[dev].host.as_ref()?.is_open(&self.directory) {
            return None;
        }
        let content = make(self.actor(dev));
        Some(self.create_and_register(dev, content, name))
    }

    fn create_and_register(&mut self, dev: usize, content: Automerge, name: DocName) -> DocumentId {
        let ts = self.ts(dev);
        let host = self.devices[dev].host.as_mut().expect("device is up");
        let id = host.create_document(content, ts).expect("document stored");
        let directory = self.directory.clone();
        let key = id.to_string();
        let actor = actor_id(self.devices[dev].key.public(), self.devices[dev].epoch);
        let host = self.devices[dev].host.as_mut().expect("device is up");
        let registered = host.change(&directory, ts, |am| {
            Doc::<Directory, &mut Automerge>::attach_as(am, actor)
                .map(|mut d| d.register_document(&name, &key).is_ok())
        });
        debug_assert!(matches!(registered, Ok(Ok(true))), "{registered:?}");
        self.names.insert(id.clone(), name);
        id
    }

    fn boot(&mut self, dev: usize) {
        let d = &mut self.devices[dev];
        let rng = seeded(self.opts.seed, &format!("engine-{dev}-{}", d.epoch));
        let storage = std::mem::take(&mut d.storage);
        let now = UnixTimestamp::from_millis(u128::from(self.now));
        d.host = Some(Host::boot(&d.key.public().to_hex(), storage, rng, now));
    }

    /// A device arrives on the site network (a dropped-in kiosk enrolls itself from its join token first).
    fn join(&mut self, dev: usize) {
        if self.devices[dev].host.is_none() {
            self.boot(dev);
        }
        self.devices[dev].present = true;
        self.schedule_device(dev);
        self.link_all(dev);
        self.mark_heal();
    }

    fn schedule_device(&mut self, dev: usize) {
        let jitter = self.workload.random_range(0..TICK_MS);
        self.at(jitter, Event::Tick { dev });
        let (sells, pays, counts, gives) = {
            let d = &self.devices[dev];
            (
                d.sells,
                d.pays,
                d.role != Role::Origin,
                d.sells || d.role == Role::Edge,
            )
        };
        if sells {
            let next = self.workload.random_range(1_000..SELL_EVERY_MS);
            self.at(next, Event::Sell { dev });
        }
        if gives {
            let next = self.workload.random_range(1_000..REBALANCE_EVERY_MS);
            self.at(next, Event::Rebalance { dev });
        }
        if pays {
            let next = self.workload.random_range(1_000..PAY_EVERY_MS);
            self.at(next, Event::Pay { dev });
        }
        if counts {
            let next = self.workload.random_range(100..2_000);
            self.at(next, Event::Count { dev });
            self.at(FLUSH_MS, Event::Flush { dev });
        }
    }

    fn link_wanted(&self, link: usize) -> bool {
        let l = &self.net.links[link];
        let up = |i: usize| self.devices[i].present && self.devices[i].host.is_some();
        up(l.a)
            && up(l.b)
            && !self.blocked.contains(&(l.a, l.b))
            && !self.blocked.contains(&(l.b, l.a))
    }

    fn link_all(&mut self, dev: usize) {
        let links: Vec<usize> = self.net.of_device(dev).collect();
        for link in links {
            self.want_reconnect(link, 0);
        }
    }

    fn want_reconnect(&mut self, link: usize, backoff_ms: u64) {
        let l = &mut self.net.links[link];
        if l.conns.is_none() && !l.reconnect_pending {
            l.reconnect_pending = true;
            self.at(backoff_ms, Event::Reconnect { link });
        }
    }

    /// Ends a connection: both hubs hear it is lost, in-flight messages die with it.
    fn reset(&mut self, link: usize) {
        let (a, b) = (self.net.links[link].a, self.net.links[link].b);
        if let Some((ca, cb)) = self.net.reset(link) {
            self.report.connection_resets += 1;
            for (dev, conn) in [(a, ca), (b, cb)] {
                let ts = self.ts(dev);
                if let Some(host) = self.devices[dev].host.as_mut() {
                    host.connection_lost(conn, ts);
                }
                self.route(dev);
            }
        }
        if self.link_wanted(link) {
            let backoff = self.faults.random_range(500..3_000);
            self.want_reconnect(link, backoff);
        }
    }

    /// Sends whatever a device's hub produced onto its links.
    fn route(&mut self, dev: usize) {
        let Some(host) = self.devices[dev].host.as_mut() else {
            return;
        };
        let outbox = host.take_outbox();
        let closed = host.take_disconnects();
        host.take_established();
        for (conn, msg) in outbox {
            let Some(link) = self.net.by_conn(dev, conn) else {
                continue;
            };
            let dir = self.net.links[link].dir_from(dev);
            let (from, to) = match dir {
                Dir::Up => (self.net.links[link].a, self.net.links[link].b),
                Dir::Down => (self.net.links[link].b, self.net.links[link].a),
            };
            if self.blocked.contains(&(from, to)) {
                // One-way loss: the sender cannot tell yet; the connection dies when the silence is noticed.
                let epoch = self.net.links[link].epoch;
                self.at(DEAD_CONNECTION_MS, Event::DeadConnection { link, epoch });
                continue;
            }
            let lat = self.net.links[link].latency;
            let d = usize::from(dir == Dir::Down);
            let delay = lat.base_ms + self.latency[link][d].random_range(0..=lat.jitter_ms);
            let l = &mut self.net.links[link];
            l.messages += 1;
            l.bytes += msg.len() as u64;
            l.sent[d] += 1;
            let order = (0, (link * 2 + d) as u64, l.sent[d]);
            let arrival = l.schedule(dir, self.now, delay);
            let epoch = l.epoch;
            self.queue.push(Reverse((
                arrival,
                order,
                Event::Deliver {
                    link,
                    epoch,
                    up: dir == Dir::Up,
                    msg,
                },
            )));
        }
        for conn in closed {
            if let Some(link) = self.net.by_conn(dev, conn) {
                self.reset(link);
            }
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

    fn deliver(&mut self, link: usize, epoch: u64, up: bool, msg: Vec<u8>) {
        let l = &self.net.links[link];
        if l.epoch != epoch {
            return;
        }
        let dir = if up { Dir::Up } else { Dir::Down };
        let Some((to, conn)) = l.receiver(dir) else {
            return;
        };
        if self.opts.faults
            && self.faults_ended_at.is_none()
            && self.faults.random_bool(self.loss_per_message)
        {
            // A lost message ends the connection; sync state reloads on the next one.
            self.reset(link);
            return;
        }
        if self.opts.broken == Some(Broken::DropsIncoming) && to == 1 {
            return;
        }
        let ts = self.ts(to);
        if let Some(host) = self.devices[to].host.as_mut() {
            if let Some(error) = host.receive(conn, msg, ts) {
                self.violation(format!(
                    "{} rejected a peer message: {error}",
                    self.devices[to].name
                ));
            }
            self.route(to);
        }
    }

    fn reconnect(&mut self, link: usize) {
        self.net.links[link].reconnect_pending = false;
        if !self.link_wanted(link) || self.net.links[link].conns.is_some() {
            return;
        }
        let (a, b) = (self.net.links[link].a, self.net.links[link].b);
        let (ta, tb) = (self.ts(a), self.ts(b));
        // The lower index dials: never two connections between the same pair.
        let ca = self.devices[a]
            .host
            .as_mut()
            .expect("wanted link has both hosts")
            .open_connection(Side::Dialer, ta);
        let cb = self.devices[b]
            .host
            .as_mut()
            .expect("wanted link has both hosts")
            .open_connection(Side::Listener, tb);
        self.net.connect(link, ca, cb);
        self.route(a);
        self.route(b);
    }

    fn start_partition(&mut self) {
        if self.faults_ended_at.is_some() {
            return;
        }
        let n = self.devices.len();
        let origin = n - 1;
        self.report.partitions += 1;
        let kind = self.faults.random_range(0..4);
        let cut = |x: usize, y: usize, blocked: &mut BTreeSet<(usize, usize)>| {
            blocked.insert((x, y));
            blocked.insert((y, x));
        };
        let mut blocked = BTreeSet::new();
        match kind {
            0 => {
                // Isolate one device.
                let lone = self.faults.random_range(0..n);
                (0..n)
                    .filter(|d| *d != lone)
                    .for_each(|d| cut(lone, d, &mut blocked));
            }
            1 => {
                // A random split in two.
                let side: Vec<bool> = (0..n).map(|_| self.faults.random_bool(0.5)).collect();
                for x in 0..n {
                    for y in x + 1..n {
                        if side[x] != side[y] {
                            cut(x, y, &mut blocked);
                        }
                    }
                }
            }
            2 => {
                // Asymmetric: one device's messages to a few peers vanish, theirs still arrive.
                let from = self.faults.random_range(0..n);
                for to in 0..n {
                    if to != from && self.faults.random_bool(0.5) {
                        blocked.insert((from, to));
                    }
                }
            }
            _ => {
                // The site is cut off from the origin.
                (0..origin).for_each(|d| cut(d, origin, &mut blocked));
            }
        }
        self.blocked = blocked;
        self.heal_pending = None;
        for link in 0..self.net.links.len() {
            let l = &self.net.links[link];
            let both_ways_cut =
                self.blocked.contains(&(l.a, l.b)) && self.blocked.contains(&(l.b, l.a));
            if both_ways_cut {
                self.reset(link);
            }
        }
        let length = self.faults.random_range(5_000..180_000);
        self.at(length, Event::PartitionEnd);
    }

    fn crash(&mut self, dev: usize) {
        let Some(host) = self.devices[dev].host.take() else {
            return;
        };
        if self.faults_ended_at.is_some() {
            self.devices[dev].host = Some(host);
            return;
        }
        self.report.crashes += 1;
        let d = &mut self.devices[dev];
        d.storage = host.crash();
        // In-memory state is gone: unflushed counter increments and transfers in flight.
        d.counter = CounterBuffer::new(FLUSH_MS, UnixMillis(0));
        d.fetching.clear();
        d.known.clear();
        d.view = None;
        d.verified.clear();
        d.failed_at = Some(self.now);
        self.heal_pending = None;
        let links: Vec<usize> = self.net.of_device(dev).collect();
        for link in links {
            self.reset(link);
        }
        let down = self.faults.random_range(2_000..90_000);
        self.at(down, Event::Restart { dev });
    }

    fn end_faults(&mut self) {
        self.faults_ended_at = Some(self.now);
        self.blocked.clear();
        self.loss_per_message = 0.0;
        let n = self.devices.len();
        for dev in 0..n {
            if self.devices[dev].host.is_none() {
                self.devices[dev].epoch += 1;
                self.boot(dev);
                self.schedule_device(dev);
            }
            if !self.devices[dev].present {
                self.join(dev);
            }
        }
        for link in 0..self.net.links.len() {
            if self.link_wanted(link) {
                self.want_reconnect(link, 0);
            }
        }
    }

    /// Is any fault still in force: a cut link or a device down?
    fn fault_active(&self) -> bool {
        !self.blocked.is_empty() || self.devices.iter().any(|d| d.present && d.host.is_none())
    }

    /// Starts the convergence clock when the last active fault has just healed.
    fn mark_heal(&mut self) {
        if self.heal_pending.is_none() && !self.fault_active() {
            self.heal_pending = Some(self.now);
        }
    }
}

/// Domain operations, each through the real crdt code on the document the device's sync engine holds.
impl World {
    fn doc_id(&self, dev: usize, name: &DocName) -> Option<DocumentId> {
        self.devices[dev].known.get(&name.to_string()).cloned()
    }

    /// Reads device `dev`'s replica of `id` as an `S` document. `None` when the device is down, does not hold the
    /// document, or `f` finds nothing.
    fn replica<S: Schema, T>(
        &self,
        dev: usize,
        id: &DocumentId,
        f: impl FnOnce(&Doc<S, &Automerge>) -> Option<T>,
    ) -> Option<T> {
        let host = self.devices[dev].host.as_ref()?;
        host.read(id, |am| {
            Doc::<S, &Automerge>::attach(am).ok().and_then(|d| f(&d))
        })
        .ok()
        .flatten()
    }

    /// The receipt tokens in device `dev`'s replica of ledger `id`.
    fn receipt_tokens(&self, dev: usize, id: &DocumentId) -> BTreeSet<String> {
        self.replica::<Ledger, _>(dev, id, |d| d.view().ok())
            .map(|v| v.receipts.iter().map(|r| r.token.to_string()).collect())
            .unwrap_or_default()
    }

    /// The `visits` counter in device `dev`'s replica of telemetry document `id`.
    fn visits(&self, dev: usize, id: &DocumentId) -> i64 {
        self.replica::<Telemetry, _>(dev, id, |d| d.counters().ok())
            .and_then(|c| c.get("visits").copied())
            .unwrap_or(0)
    }

    /// Re-reads this device's directory replica: the documents it registers and the verified view of its
    /// certificates. Runs when the replica changes, as a node would on a change notification.
    fn refresh_directory(&mut self, dev: usize) {
        if self.devices[dev].host.is_none() {
            return;
        }
        let view = self.replica::<Directory, _>(dev, &self.directory, |d| d.view().ok());
        let d = &mut self.devices[dev];
        d.known = view
            .as_ref()
            .map(|v| {
                v.documents
                    .iter()
                    .filter_map(|(k, id)| id.parse().ok().map(|id| (k.clone(), id)))
                    .collect()
            })
            .unwrap_or_default();
        d.view = view;
    }

    fn sell(&mut self, dev: usize) {
        let Some(slot_index) =
            (!self.slots.is_empty()).then(|| self.workload.random_range(0..self.slots.len()))
        else {
            return;
        };
        let slot = self.slots[slot_index].clone();
        let oversell = self.opts.broken == Some(Broken::Oversells) && dev == 1;
        // The broken device sells in blocks, so it runs out of quota (and past it) early in the show.
        let seats = if oversell {
            8
        } else {
            self.workload.random_range(1..=3)
        };
        let d = &mut self.devices[dev];
        d.next_op += 1;
        let booking = format!("{}-b{}-e{}", dev, d.next_op, d.epoch);
        let me = d.key.public();
        let at = UnixMillis(self.local_ms(dev));
        let ts = self.ts(dev);
        let actor = self.actor(dev);
        let Some(host) = self.devices[dev].host.as_mut() else {
            return;
        };
        let outcome = host.change(&slot, ts, |am| {
            let mut doc =
                Doc::<Slot, &mut Automerge>::attach_as(am, actor).map_err(EscrowError::from)?;
            match doc.sell(me, &booking, seats, at) {
                Err(EscrowError::QuotaSpent { .. }) if oversell => {
                    // The broken device writes the sale anyway.
                    crate::broken::write_sale_without_quota(
                        doc.automerge_mut(),
                        me,
                        &booking,
                        seats,
                        at,
                    )
                    .map(|()| SaleOutcome::Recorded)
                    .map_err(EscrowError::from)
                }
                other => other,
            }
        });
        match outcome {
            Ok(Ok(SaleOutcome::Recorded)) => {
                *self.devices[dev]
                    .acked_seats
                    .entry(slot.to_string())
                    .or_default() += seats;
                self.report.seats_sold += seats;
                self.check_writer(dev, &slot);
            }
            Ok(Ok(SaleOutcome::AlreadyRecorded)) => {}
            Ok(Err(EscrowError::QuotaSpent { .. })) => self.report.sales_refused += 1,
            Ok(Err(other)) => self.violation(format!(
                "{} could not sell: {other}",
                self.devices[dev].name
            )),
            Err(_) => {} // the slot has not reached this device yet
        }
        self.route(dev);
    }

    fn pay(&mut self, dev: usize) {
        let name = DocName::Ledger {
            show: SHOW.into(),
            device: self.devices[dev].key.public(),
            page: 0,
        };
        let site = self.authority.site();
        let me = self.devices[dev].key.public();
        let Some(ledger) = self.own_document(dev, name, |actor| {
            Doc::<Ledger>::create_ledger(actor, site, SHOW, me)
                .expect("ledger")
                .into_automerge()
        }) else {
            return;
        };
        let retry = self.workload.random_bool(0.1) && self.devices[dev].last_payment.is_some();
        let request = if retry {
            self.report.payment_retries += 1;
            self.devices[dev].last_payment.clone().expect("checked")
        } else {
            let d = &mut self.devices[dev];
            d.next_op += 1;
            PaymentRequest {
                idempotency_key: format!("{}-o{}-e{}", dev, d.next_op, d.epoch),
                amount_minor: self.workload.random_range(500..9_000),
                currency: "EUR".into(),
                attendee: None,
            }
        };
        let key = self.devices[dev].key.clone();
        let limits = self.limits.clone();
        let at = UnixMillis(self.local_ms(dev));
        let ts = self.ts(dev);
        let actor = self.actor(dev);
        let Some(host) = self.devices[dev].host.as_mut() else {
            return;
        };
        // A replayed payment must leave the ledger exactly as it was.
        let heads = |host: &Host| host.read(&ledger, |am| am.get_heads()).ok();
        let before = heads(host);
        let outcome = host.change(&ledger, ts, |am| {
            let mut doc =
                Doc::<Ledger, &mut Automerge>::attach_as(am, actor).map_err(PaymentError::from)?;
            doc.take_payment(&key, &limits, &request, 0, at)
        });
        let after = heads(host);
        match outcome {
            Ok(Ok(taken)) => {
                if taken.replayed && before != after {
                    self.violation(format!(
                        "{} charged a retried payment twice",
                        self.devices[dev].name
                    ));
                }
                if !taken.replayed {
                    self.report.receipts += 1;
                }
                let d = &mut self.devices[dev];
                d.acked_receipts.insert(taken.receipt.token.to_string());
                d.last_payment = Some(request);
            }
            Ok(Err(PaymentError::OverLimit(_))) => self.report.payments_refused += 1,
            Ok(Err(other)) => self.violation(format!(
                "{} could not take a payment: {other}",
                self.devices[dev].name
            )),
            Err(_) => {}
        }
        self.route(dev);
    }

    fn flush(&mut self, dev: usize) {
        let at = UnixMillis(self.now);
        let Some(increments) = self.devices[dev].counter.poll_flush(at) else {
            return;
        };
        let name = DocName::Telemetry {
            device: self.devices[dev].key.public(),
        };
        let me = self.devices[dev].key.public();
        let Some(id) = self.own_document(dev, name, |actor| {
            Doc::<Telemetry>::create_telemetry(actor, me)
                .expect("telemetry")
                .into_automerge()
        }) else {
            return;
        };
        let ts = self.ts(dev);
        let actor = self.actor(dev);
        let Some(host) = self.devices[dev].host.as_mut() else {
            return;
        };
        let sum: i64 = increments.values().sum();
        let flushed = host.change(&id, ts, |am| {
            Doc::<Telemetry, &mut Automerge>::attach_as(am, actor)
                .and_then(|mut d| d.flush(&increments))
        });
        if matches!(flushed, Ok(Ok(()))) {
            self.devices[dev].confirmed += sum;
        }
        self.route(dev);
    }

    fn rebalance(&mut self, dev: usize) {
        let me = self.devices[dev].key.public();
        let connected: Vec<String> = self
            .net
            .of_device(dev)
            .filter(|l| self.net.links[*l].conns.is_some())
            .map(|l| {
                if self.net.links[l].a == dev {
                    self.net.links[l].b
                } else {
                    self.net.links[l].a
                }
            })
            .filter(|peer| self.devices[*peer].sells)
            .map(|peer| self.devices[peer].key.public().to_hex())
            .collect();
        for slot in self.slots.clone() {
            let ts = self.ts(dev);
            let actor = self.actor(dev);
            let at = UnixMillis(self.local_ms(dev));
            let d = &mut self.devices[dev];
            d.next_op += 1;
            let transfer = format!("{}-t{}-e{}", dev, d.next_op, d.epoch);
            let Some(host) = d.host.as_mut() else { return };
            let moved = host.change(&slot, ts, |am| {
                let mut doc = Doc::<Slot, &mut Automerge>::attach_as(am, actor)?;
                let view = doc.view()?;
                match plan_rebalance(&view, &me.to_hex(), &connected, LOW_WATER) {
                    Some((to, seats)) => {
                        let to = popmesh_crdt::DeviceId::from_hex(&to)
                            .map_err(|_| EscrowError::BadId(to.clone()))?;
                        doc.transfer(me, to, &transfer, seats, at).map(|()| true)
                    }
                    None => Ok(false),
                }
            });
            if matches!(moved, Ok(Ok(true))) {
                self.report.quota_transfers += 1;
                self.check_writer(dev, &slot);
            }
        }
        self.route(dev);
    }
}

/// Checkers: safety after every event, liveness at every probe.
impl World {
    /// The escrow invariant for the device that just wrote, on its own replica (cheap: its own entries only).
    fn check_writer(&mut self, dev: usize, id: &DocumentId) {
        let me = self.devices[dev].key.public().to_hex();
        let verdict = self.replica::<Slot, _>(dev, id, |d| Some(d.check_device(&me)));
        if let Some(Err(broken)) = verdict {
            let name = self.devices[dev].name.clone();
            self.violation(format!("seat oversold on {name} as it wrote: {broken}"));
        }
    }

    /// The escrow invariant on one device's replica of a slot.
    ///
    /// Run on the writer's replica right after every sale and transfer: by causality (see `popmesh_crdt::escrow`),
    /// a replica that holds a device's sale holds everything that justified it, so an oversell is visible on the
    /// writer's replica the moment it is written. Other replicas are swept every minute and at the end.
    fn check_slot(&mut self, dev: usize, id: &DocumentId) {
        let verdict =
            self.replica::<Slot, _>(dev, id, |d| d.view().ok().map(|v| v.check_invariant()));
        if let Some(Err(broken)) = verdict {
            let slot = match self.names.get(id) {
                Some(DocName::Slot { slot, .. }) => slot.clone(),
                _ => id.to_string(),
            };
            let name = self.devices[dev].name.clone();
            self.violation(format!(
                "seat oversold in {slot} as seen on {name}: {broken}"
            ));
        }
    }

    /// Every document a device changed since the last event is checked against its invariant at once.
    fn check_changes(&mut self) {
        for dev in 0..self.devices.len() {
            let Some(host) = self.devices[dev].host.as_mut() else {
                continue;
            };
            let changed = host.take_changed();
            for id in &changed {
                let heads = host.read(id, |am| am.get_heads()).unwrap_or_default();
                self.trace.update(&(dev as u64).to_be_bytes());
                self.trace.update(id.as_bytes());
                for head in &heads {
                    self.trace.update(&head.0);
                }
                if self.opts.keep_trace {
                    let short: Vec<String> = heads
                        .iter()
                        .map(|h| h.to_string()[..8].to_owned())
                        .collect();
                    self.report
                        .trace
                        .push(format!("{} dev={dev} doc={id} heads={short:?}", self.now));
                }
            }
            if changed.contains(&self.directory) {
                self.refresh_directory(dev);
            }
            for id in changed {
                match self.names.get(&id) {
                    Some(DocName::Slot { .. }) => {
                        // The writer's replica was checked when it wrote (see `check_slot`); other replicas are
                        // swept every minute as a backstop.
                        self.dirty_slots.insert((dev, id.clone()));
                    }
                    Some(DocName::Ledger { device, .. }) => {
                        if *device == self.devices[dev].key.public() {
                            self.check_own_receipts(dev);
                        }
                        self.check_ledger(dev, &id, false);
                    }
                    Some(DocName::Telemetry { device }) => {
                        let owner = self.devices.iter().position(|d| d.key.public() == *device);
                        let value = self.visits(dev, &id);
                        if let Some(owner) = owner {
                            // Jepsen's counter bound: no read exceeds what was attempted.
                            if value > self.devices[owner].attempted {
                                let name = self.devices[dev].name.clone();
                                self.violation(format!(
                                    "{name} reads {value} visits from a device that counted {}",
                                    self.devices[owner].attempted
                                ));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Every receipt in a ledger replica must verify; an issuer not yet in this replica's directory is only an error
    /// once everything has converged (`strict`).
    fn check_ledger(&mut self, dev: usize, id: &DocumentId, strict: bool) {
        if self.devices[dev].view.is_none() {
            self.refresh_directory(dev);
        }
        let Some(ledger) = self.replica::<Ledger, _>(dev, id, |d| d.view().ok()) else {
            return;
        };
        let d = &self.devices[dev];
        let Some(directory) = d.view.as_ref() else {
            return;
        };
        let mut problems = Vec::new();
        for (token, err) in &ledger.malformed {
            problems.push(format!("malformed receipt {token}: {err}"));
        }
        let mut newly_verified = Vec::new();
        for receipt in &ledger.receipts {
            let token = receipt.token.to_string();
            if !strict && d.verified.contains(&token) {
                continue;
            }
            match receipt.verify(directory) {
                Ok(()) => newly_verified.push(token),
                Err(ReceiptError::Untrusted(_)) if !strict => {}
                Err(err) => {
                    problems.push(format!("receipt {} does not verify: {err}", receipt.token))
                }
            }
        }
        self.devices[dev].verified.extend(newly_verified);
        let name = self.devices[dev].name.clone();
        for p in problems {
            self.violation(format!("on {name}: {p}"));
        }
    }

    /// No acknowledged receipt lost: a device still holds every receipt it acknowledged.
    fn check_own_receipts(&mut self, dev: usize) {
        let Some(host) = self.devices[dev].host.as_ref() else {
            return;
        };
        if self.devices[dev].view.is_none() {
            return;
        }
        let name = DocName::Ledger {
            show: SHOW.into(),
            device: self.devices[dev].key.public(),
            page: 0,
        };
        let Some(id) = self.doc_id(dev, &name) else {
            if !self.devices[dev].acked_receipts.is_empty() {
                let who = self.devices[dev].name.clone();
                self.violation(format!("{who} lost the registration of its ledger"));
            }
            return;
        };
        if !host.is_open(&id) {
            return;
        }
        let held = self.receipt_tokens(dev, &id);
        let lost: Vec<String> = self.devices[dev]
            .acked_receipts
            .difference(&held)
            .cloned()
            .collect();
        if !lost.is_empty() {
            let who = self.devices[dev].name.clone();
            self.violation(format!(
                "{who} lost {} acknowledged receipts, e.g. {}",
                lost.len(),
                lost[0]
            ));
        }
    }

    /// The slow checks and the convergence clock, once a simulated second.
    fn probe(&mut self) {
        let n = self.devices.len();
        for dev in 0..n {
            self.open_documents(dev);
            self.preseed(dev);
        }
        // No acknowledged receipt lost (also checked whenever a device's own ledger changes).
        if self.now.is_multiple_of(10_000) {
            for dev in 0..n {
                self.check_own_receipts(dev);
            }
        }
        if self.now.is_multiple_of(SWEEP_MS) {
            for (dev, id) in std::mem::take(&mut self.dirty_slots) {
                self.check_slot(dev, &id);
            }
        }
        // Feature parity after a failure: documents open and caught up, media preseeded.
        for dev in 0..n {
            if let Some(failed) = self.devices[dev].failed_at
                && self.has_parity(dev)
            {
                self.report.mttr_samples_ms.push(self.now - failed);
                self.devices[dev].failed_at = None;
            }
        }
        if self.converged() {
            if let Some(healed) = self.heal_pending.take() {
                self.report.heal_samples_ms.push(self.now - healed);
            }
            if let Some(ended) = self.faults_ended_at {
                self.report.final_convergence_ms = Some(self.now - ended);
                self.converged_at = Some(self.now);
            }
        }
    }

    /// Finds the directory, then every document it registers.
    fn open_documents(&mut self, dev: usize) {
        let ts = self.ts(dev);
        let at = UnixMillis(self.local_ms(dev));
        let directory = self.directory.clone();
        let me = self.devices[dev].key.public();
        let name = self.devices[dev].name.clone();
        let mut token = self.devices[dev].token.take();
        let actor = self.actor(dev);
        let Some(host) = self.devices[dev].host.as_mut() else {
            self.devices[dev].token = token;
            return;
        };
        if !host.is_open(&directory) {
            host.find_document(&directory, ts);
            self.devices[dev].token = token;
            self.route(dev);
            return;
        }
        if self.devices[dev].view.is_none() {
            self.refresh_directory(dev);
        }
        let registered: Vec<DocumentId> = self.devices[dev].known.values().cloned().collect();
        let Some(host) = self.devices[dev].host.as_mut() else {
            return;
        };
        for id in registered {
            if !host.is_open(&id) {
                host.find_document(&id, ts);
            }
        }
        // A dropped-in kiosk enrolls itself from its token once it holds the directory.
        if let Some(token) = token.take() {
            let enrolled = host.change(&directory, ts, |am| {
                let token = JoinToken::from_line(&token).map_err(|e| e.to_string())?;
                let cert = token.enroll(me, &name, at).map_err(|e| e.to_string())?;
                Doc::<Directory, &mut Automerge>::attach_as(am, actor)
                    .map_err(|e| e.to_string())?
                    .add_device(&cert)
                    .map_err(|e| e.to_string())
            });
            if !matches!(enrolled, Ok(Ok(()))) {
                self.violation(format!(
                    "{name} could not enroll from its join token: {enrolled:?}"
                ));
            }
        }
        self.route(dev);
    }

    /// Fetches missing media of the manifest from a connected peer that has it.
    fn preseed(&mut self, dev: usize) {
        let d = &self.devices[dev];
        if d.host.is_none() || !d.present || d.blobs.len() + d.fetching.len() >= BLOBS {
            return;
        }
        let wanted = self
            .replica::<Manifest, _>(dev, &self.manifest, |d| d.record().ok())
            .map_or(0, |r| r.entries.len());
        for blob in 0..wanted.min(BLOBS) {
            let d = &self.devices[dev];
            if d.blobs.contains(&blob) || d.fetching.contains(&blob) {
                continue;
            }
            let providers: Vec<(usize, usize)> = self
                .net
                .of_device(dev)
                .filter(|l| self.net.links[*l].conns.is_some())
                .map(|l| {
                    (
                        l,
                        if self.net.links[l].a == dev {
                            self.net.links[l].b
                        } else {
                            self.net.links[l].a
                        },
                    )
                })
                .filter(|(_, peer)| self.devices[*peer].blobs.contains(&blob))
                .collect();
            if providers.is_empty() {
                continue;
            }
            let (link, provider) = providers[self.workload.random_range(0..providers.len())];
            let time =
                self.blob_sizes[blob] / BLOB_BYTES_PER_MS + self.net.links[link].latency.base_ms;
            let calm = self.devices[provider]
                .vanished_at
                .is_none_or(|t| self.now >= t + 60_000);
            if self.opts.faults
                && self.faults_ended_at.is_none()
                && calm
                && self.faults.random_bool(0.1)
            {
                self.devices[provider].vanished_at = Some(self.now);
                // The provider vanishes mid-transfer; the fetch fails and the next probe picks another provider.
                self.at(time / 2, Event::Vanish { dev: provider });
            }
            let epoch = self.net.links[link].epoch;
            self.devices[dev].fetching.insert(blob);
            self.at(
                time,
                Event::BlobDone {
                    dev,
                    blob,
                    link,
                    epoch,
                },
            );
        }
    }

    fn heads_of(&self, dev: usize) -> Option<BTreeMap<DocumentId, Vec<ChangeHash>>> {
        let host = self.devices[dev].host.as_ref()?;
        self.names
            .keys()
            .map(|id| {
                host.read(id, |am| am.get_heads())
                    .ok()
                    .map(|h| (id.clone(), h))
            })
            .collect()
    }

    /// Every present device holds every document, with the same heads, and every media blob of the manifest.
    fn converged(&self) -> bool {
        let mut first: Option<BTreeMap<DocumentId, Vec<ChangeHash>>> = None;
        for dev in 0..self.devices.len() {
            if !self.devices[dev].present {
                continue;
            }
            if self.devices[dev].blobs.len() < BLOBS {
                return false;
            }
            let Some(heads) = self.heads_of(dev) else {
                return false;
            };
            match &first {
                None => first = Some(heads),
                Some(f) if *f != heads => return false,
                Some(_) => {}
            }
        }
        first.is_some()
    }

    fn has_parity(&self, dev: usize) -> bool {
        let d = &self.devices[dev];
        if d.host.is_none() || d.blobs.len() < BLOBS {
            return false;
        }
        let Some(mine) = self.heads_of(dev) else {
            return false;
        };
        // Caught up with every connected peer.
        self.net
            .of_device(dev)
            .filter(|l| self.net.links[*l].conns.is_some())
            .all(|l| {
                let peer = if self.net.links[l].a == dev {
                    self.net.links[l].b
                } else {
                    self.net.links[l].a
                };
                self.heads_of(peer).is_none_or(|theirs| theirs == mine)
            })
    }

    /// The end of the run: liveness, then the checks that need a converged site.
    fn finish(mut self) -> RunReport {
        self.report.simulated_ms = self.now;
        self.report.documents = self.names.len();
        self.report.messages = self.net.links.iter().map(|l| l.messages).sum();
        self.report.bytes = self.net.links.iter().map(|l| l.bytes).sum();
        self.report.convergence_after_heal = Quantiles::of(&self.report.heal_samples_ms);
        self.report.mttr = Quantiles::of(&self.report.mttr_samples_ms);
        if self.converged_at.is_none() {
            let bound = self.opts.liveness_bound_ms;
            let missing = self.describe_divergence();
            self.violation(format!(
                "no convergence within {bound} ms after faults stopped: {missing}"
            ));
        } else {
            self.final_checks();
        }
        self.report.trace_hash = self.trace.finalize().to_hex().to_string();
        self.report
    }

    fn describe_divergence(&self) -> String {
        let mut out = Vec::new();
        for dev in 0..self.devices.len() {
            let d = &self.devices[dev];
            if d.present && d.blobs.len() < BLOBS {
                out.push(format!(
                    "{} holds {} of {BLOBS} media blobs",
                    d.name,
                    d.blobs.len()
                ));
            }
            if self.heads_of(dev).is_none() {
                let open = d
                    .host
                    .as_ref()
                    .map_or(0, |h| self.names.keys().filter(|id| h.is_open(id)).count());
                out.push(format!(
                    "{} holds {open} of {} documents",
                    d.name,
                    self.names.len()
                ));
            }
        }
        if out.is_empty() {
            "every device holds every document but their heads differ".into()
        } else {
            out.join("; ")
        }
    }

    fn final_checks(&mut self) {
        let origin = self.devices.len() - 1;
        // The origin holds every receipt any device acknowledged, and every one verifies.
        let all_acked: BTreeSet<String> = self
            .devices
            .iter()
            .flat_map(|d| d.acked_receipts.iter().cloned())
            .collect();
        let ledgers: Vec<DocumentId> = self
            .names
            .iter()
            .filter(|(_, n)| matches!(n, DocName::Ledger { .. }))
            .map(|(id, _)| id.clone())
            .collect();
        let mut at_origin = BTreeSet::new();
        for id in &ledgers {
            self.check_ledger(origin, id, true);
            at_origin.extend(self.receipt_tokens(origin, id));
        }
        let missing = all_acked.difference(&at_origin).count();
        if missing > 0 {
            self.violation(format!(
                "the origin is missing {missing} acknowledged receipts"
            ));
        }
        // No seat lost or oversold: each slot holds exactly what was acknowledged, within capacity.
        for slot in self.slots.clone() {
            let Some(view) = self.replica::<Slot, _>(origin, &slot, |d| d.view().ok()) else {
                continue;
            };
            let acked: u64 = self
                .devices
                .iter()
                .map(|d| d.acked_seats.get(&slot.to_string()).copied().unwrap_or(0))
                .sum();
            if view.total_sold() != acked {
                self.violation(format!(
                    "slot holds {} sold seats but {acked} were acknowledged",
                    view.total_sold()
                ));
            }
            if let Err(broken) = view.check_invariant() {
                self.violation(format!("after convergence: {broken}"));
            }
        }
        // Counters: every converged read lies between what was confirmed and what was attempted.
        let confirmed: i64 = self.devices.iter().map(|d| d.confirmed).sum();
        let attempted: i64 = self.devices.iter().map(|d| d.attempted).sum();
        let read: i64 = self
            .names
            .iter()
            .filter(|(_, n)| matches!(n, DocName::Telemetry { .. }))
            .map(|(id, _)| self.visits(origin, id))
            .sum();
        if read < confirmed || read > attempted {
            self.violation(format!(
                "visits read {read}, outside [confirmed {confirmed}, attempted {attempted}]"
            ));
        }
        // Equal materialized state on every device, not only equal heads.
        let digests: BTreeSet<String> = (0..self.devices.len())
            .filter_map(|dev| self.state_digest(dev))
            .collect();
        if digests.len() > 1 {
            self.violation(format!(
                "devices with equal heads materialize {} different states",
                digests.len()
            ));
        }
    }

    fn state_digest(&self, dev: usize) -> Option<String> {
        let host = self.devices[dev].host.as_ref()?;
        let mut hasher = blake3::Hasher::new();
        for (id, name) in &self.names {
            let text = host
                .read(id, |am| match name {
                    DocName::Slot { .. } => Doc::<Slot, &Automerge>::attach(am)
                        .ok()
                        .and_then(|d| d.view().ok())
                        .map(|v| format!("{:?}", v.record)),
                    DocName::Ledger { .. } => Doc::<Ledger, &Automerge>::attach(am)
                        .ok()
                        .and_then(|d| d.record().ok())
                        .map(|r| format!("{r:?}")),
                    DocName::Directory => Doc::<Directory, &Automerge>::attach(am)
                        .ok()
                        .and_then(|d| d.record().ok())
                        .map(|r| format!("{r:?}")),
                    _ => Some(String::new()),
                })
                .ok()
                .flatten()?;
            hasher.update(text.as_bytes());
        }
        Some(hasher.finalize().to_hex().to_string())
    }
}
