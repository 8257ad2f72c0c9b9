//! The site gate: the node's shell around the device core's `gate` (admission on every link, document classes, sharing with kiosk screens).

use popmesh_crdt::UnixMillis;
use popmesh_device::authorship::Kinds;
use popmesh_device::topology::Topology;

use super::*;

/// Admission against this device's replica of the directory (`popmesh_device::gate::admit`).
pub(super) struct SiteGate {
    pub(super) site_hex: String,
    pub(super) authority: DeviceId,
    pub(super) cert: Vec<u8>,
    pub(super) directory: Arc<RwLock<Option<DocumentId>>>,
    pub(super) view: Arc<RwLock<Option<DirectoryView>>>,
    /// The site's shape over that view (`popmesh_device::topology`): the links to hold, what to announce to whom.
    pub(super) shape: Shape,
    /// Judges every sync message a site peer sends before samod applies it (`popmesh_device::authorship`).
    pub(super) judge: Arc<super::authorship::Judge>,
    pub(super) learned: tokio::sync::Notify,
    /// The UDP port of this device's blob endpoint, said in every hello.
    pub(super) blob_port: Option<u16>,
    pub(super) role: Role,
    /// Document id -> the class its sync messages travel in on every link (`popmesh_device::gate::class_of`).
    pub(super) priorities: Arc<RwLock<std::collections::HashMap<String, u8>>>,
    /// `[uplink] limit_kib_s`, in bytes per second, for links to the origin.
    pub(super) uplink_limit: Option<u64>,
    /// Bytes queued on each uplink (links to the origin, or every link when this device is the origin).
    pub(super) uplinks: Mutex<Vec<std::sync::Weak<std::sync::atomic::AtomicU64>>>,
}

/// Who may read and write which document through samod.
///
/// Site devices (peer ids that are device ids, bound to the noise-authenticated key on every mesh link) read and
/// write everything. Anyone else is a kiosk screen on `/v1/sync`: it may read the documents a screen shows
/// (manifests and slots), never write them (its changes are ignored), and gets nothing else. A screen cannot pose
/// as a device: `/v1/sync` refuses peer ids that look like device ids.
/// The site's shape this device computed last (none before it reads a directory).
pub(crate) type Shape = Arc<RwLock<Option<Arc<Topology>>>>;

/// What the share policy needs to tell a site peer only of the documents it holds: the shape, and the kind of
/// each document (the judge's `Kinds`, named as documents open, learned from creating changes).
#[derive(Clone)]
pub(super) struct Announce {
    pub(super) shape: Shape,
    pub(super) kinds: Arc<Mutex<Kinds>>,
    pub(super) directory: Arc<RwLock<Option<DocumentId>>>,
}

impl Announce {
    fn to(&self, doc: &samod::DocumentId, peer: &str) -> bool {
        let shape = read(&self.shape).clone();
        let directory = read(&self.directory).as_ref().map(|d| d.to_string());
        let kind = lock(&self.kinds).known_kind(&doc.to_string(), directory.as_deref());
        gate::announce(shape.as_deref(), peer, kind)
    }
}

pub(super) fn share_policy(
    screen_docs: Arc<RwLock<std::collections::HashSet<String>>>,
    announce: Announce,
) -> impl Fn(
    samod::DocumentId,
    samod::PeerId,
) -> futures::stream::Iter<std::array::IntoIter<samod::ShareConfig, 1>>
+ Clone
+ Send
+ 'static {
    move |doc: samod::DocumentId, peer: samod::PeerId| {
        let readable = read(&screen_docs).contains(&doc.to_string());
        let config = match gate::share(peer.as_str(), readable) {
            gate::Share::ReadWrite => {
                samod::ShareConfig::read_write().with_announce(announce.to(&doc, peer.as_str()))
            }
            gate::Share::ReadOnly => samod::ShareConfig::read_only().with_announce(false),
            gate::Share::None => samod::ShareConfig::none(),
        };
        futures::stream::iter([config])
    }
}

impl SiteGate {
    /// Takes a directory view read at `now`, and the site's shape over it.
    pub(super) fn set_view(&self, view: DirectoryView, now: UnixMillis) {
        let shape = Topology::of_view(&view, now);
        // Every registered document is named before the librarian opens it, as the simulator's devices name
        // theirs: the share policy decides each peer's announce flag once, when a document's actor meets the
        // peer, and a kind not known then (a slot opened here before its creating change arrived) was never
        // announced to the ring neighbours, so with both relays down the ring carried no bookings.
        for (name, id) in &view.documents {
            if let (Ok(name), Ok(id)) = (name.parse::<DocName>(), id.parse::<DocumentId>()) {
                self.judge.name(&id, &name);
            }
        }
        *write(&self.view) = Some(view);
        self.set_shape(shape);
    }

    /// Takes a recomputed shape (certificates expire with time), keeping the old one if it did not change.
    pub(super) fn set_shape(&self, shape: Topology) {
        let mut current = write(&self.shape);
        if current.as_deref() != Some(&shape) {
            *current = Some(Arc::new(shape));
        }
    }

    /// Reads the directory from this device's store, if it is there (no peer is linked yet: a directory that is
    /// not on disk is not found, and the gate starts without a view).
    pub(super) async fn preload(&self, repo: &samod::Repo, id: &DocumentId) {
        let found = tokio::time::timeout(Duration::from_secs(5), repo.find(id.clone())).await;
        let Ok(Ok(Some(handle))) = found else {
            return;
        };
        if let Ok(Ok(view)) = super::read_view(&handle, None).await {
            self.set_view(view, clock::now());
        }
    }

    /// Bytes waiting on the links to the origin.
    pub(super) fn uplink_backlog(&self) -> u64 {
        let mut links = lock(&self.uplinks);
        links.retain(|w| w.strong_count() > 0);
        links
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .map(|b| b.load(Ordering::Relaxed))
            .fold(0u64, u64::saturating_add)
    }
}

impl Gate for SiteGate {
    fn hello(&self) -> Hello {
        let directory = read(&self.directory).as_ref().map(|d| d.to_string());
        Hello::new(self.site_hex.clone(), &self.cert, directory).with_blobs(self.blob_port)
    }

    fn admit(&self, device: DeviceId, hello: &Hello) -> Result<(), String> {
        let cert = hello.cert_bytes()?;
        let claim = gate::Claim {
            version: hello.v,
            site: &hello.site,
            cert: &cert,
        };
        gate::admit(
            &self.authority,
            &device,
            claim,
            clock::now(),
            read(&self.view).as_ref(),
            popmesh_device::Mutations::none(),
        )
        .map_err(|e| e.to_string())?;
        // A new device learns where the directory is from the first peer it admits.
        if let Some(id) = &hello.directory {
            let mut mine = write(&self.directory);
            if mine.is_none()
                && let Ok(id) = id.parse::<DocumentId>()
            {
                *mine = Some(id);
                self.learned.notify_one();
            }
        }
        Ok(())
    }

    fn link_policy(&self, device: DeviceId, hello: &Hello) -> LinkPolicy {
        let peer_role = hello
            .cert_bytes()
            .ok()
            .and_then(|b| EnrollmentCert::from_bytes(&b).ok())
            .map(|c| c.role);
        let priorities = self.priorities.clone();
        let classify = move |message: &[u8]| -> u8 {
            match popmesh_transport::outbox::document_id(message) {
                // Handshakes and peer messages go first.
                None => 0,
                Some(id) => read(&priorities).get(id).copied().unwrap_or(1),
            }
        };
        let uplink = self.role == Role::Origin || peer_role == Some(Role::Origin);
        let backlog = uplink.then(|| {
            let b = Arc::new(std::sync::atomic::AtomicU64::new(0));
            lock(&self.uplinks).push(Arc::downgrade(&b));
            b
        });
        let judge = self.judge.clone();
        LinkPolicy {
            classify: Some(Arc::new(classify)),
            limit: if uplink { self.uplink_limit } else { None },
            backlog,
            inspect: Some(Arc::new(move |message: &[u8]| judge.judge(device, message))),
        }
    }
}
