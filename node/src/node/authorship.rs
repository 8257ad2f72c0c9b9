//! The node's shell around the device core's `authorship`: every sync message a site peer sends is judged before
//! samod sees it. A refused one closes that link (samod never applies it; the peer reconnects with backoff and is
//! refused again while it keeps sending it), is counted in `/metrics`, kept for `/v1/status` and the console, and
//! written as an incident into this device's telemetry.

use std::collections::{HashMap, VecDeque};

use popmesh_crdt::telemetry::{Incident, ROGUE_CHANGE};
use popmesh_device::authorship::{self, Kinds};
use tokio::sync::mpsc;

use super::*;

/// Refusals kept for the status and the console.
const RECENT_MAX: usize = 32;
/// At most one incident per author in this long (a rogue that keeps reconnecting is counted, not written 1000 times).
const INCIDENT_EVERY_MS: u64 = 10 * 60 * 1000;

/// A change this device refused, and from whom.
#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    /// The device on the link the change came in on.
    pub peer: String,
    /// The device its actor id names (the same as `peer` for a device writing as itself; another when relayed).
    pub author: Option<String>,
    /// The document's name when known, else its id.
    pub document: String,
    pub reason: String,
    pub at: u64,
}

/// Judges what peers send (the device core's rule), with what this device knows of each document.
pub(crate) struct Judge {
    view: Arc<RwLock<Option<DirectoryView>>>,
    directory: Arc<RwLock<Option<DocumentId>>>,
    /// Document id -> kind: from the names this device tracks and registers, or learned from a creating change.
    /// Shared with the share policy, which announces each document only to the peers that hold its kind.
    kinds: Arc<Mutex<Kinds>>,
    recent: Mutex<VecDeque<Refused>>,
    refused_total: Counter,
    tell: mpsc::UnboundedSender<Refused>,
}

impl Judge {
    pub(super) fn new(
        view: Arc<RwLock<Option<DirectoryView>>>,
        directory: Arc<RwLock<Option<DocumentId>>>,
        kinds: Arc<Mutex<Kinds>>,
        registry: &mut Registry,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Refused>) {
        let refused_total = Counter::default();
        registry.register(
            "popmesh_sync_refused",
            "Sync messages from site peers refused before they were applied: a change its author may not make \
             (another device's receipts, seats or registrations), or a message that does not read",
            refused_total.clone(),
        );
        let (tell, rx) = mpsc::unbounded_channel();
        let judge = Arc::new(Self {
            view,
            directory,
            kinds,
            recent: Mutex::new(VecDeque::new()),
            refused_total,
            tell,
        });
        (judge, rx)
    }

    /// Records the name of a document this device holds.
    pub(super) fn name(&self, id: &DocumentId, name: &DocName) {
        lock(&self.kinds).name(&id.to_string(), name);
    }

    /// Whether one samod message from `peer` may reach samod (the device core's `authorship::judge`). The kinds
    /// are locked only to look up and to learn, not while the changes are checked.
    pub(super) fn judge(&self, peer: DeviceId, message: &[u8]) -> Result<(), String> {
        let directory = read(&self.directory).as_ref().map(|d| d.to_string());
        let kind_of = |id: &str| {
            lock(&self.kinds).kind_of(id, directory.as_deref(), |id| {
                // Registered in the directory but not opened here yet.
                read(&self.view).as_ref().and_then(|v| {
                    v.documents
                        .iter()
                        .find(|(_, d)| d.as_str() == id)
                        .and_then(|(name, _)| name.parse::<DocName>().ok())
                })
            })
        };
        // The view is read per lookup, never held across the judging: `kind_of` reads it too, and a second read
        // of a std `RwLock` this thread already holds blocks behind a waiting writer (the librarian taking a new
        // view), which froze the node (every sync message and `/v1/status` waited on it).
        let role_of = |d: &DeviceId| read(&self.view).as_ref().and_then(|v| v.role_of(d));
        let verdict = authorship::judge(message, kind_of, &role_of);
        match verdict {
            Ok(Some((id, kind))) => {
                lock(&self.kinds).learn(id, kind);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(rejected) => {
                let document = rejected
                    .document
                    .as_deref()
                    .map_or_else(|| "a message".to_owned(), |id| self.shown(id));
                Err(self.refuse(
                    peer,
                    rejected.refusal.author,
                    document,
                    rejected.refusal.reason,
                ))
            }
        }
    }

    fn shown(&self, id: &str) -> String {
        read(&self.view)
            .as_ref()
            .and_then(|v| v.documents.iter().find(|(_, d)| d.as_str() == id))
            .map_or_else(|| id.to_owned(), |(name, _)| name.clone())
    }

    fn refuse(
        &self,
        peer: DeviceId,
        author: Option<DeviceId>,
        document: String,
        reason: String,
    ) -> String {
        self.refused_total.inc();
        let refused = Refused {
            peer: peer.to_hex(),
            author: author.map(|a| a.to_hex()),
            document,
            reason,
            at: clock::now().0,
        };
        let said = format!(
            "refused a sync message from {} for {}: {}",
            peer.short(),
            refused.document,
            refused.reason
        );
        {
            let mut recent = lock(&self.recent);
            if recent.len() == RECENT_MAX {
                recent.pop_front();
            }
            recent.push_back(refused.clone());
        }
        let _ = self.tell.send(refused);
        said
    }

    /// The latest refusals, newest last.
    pub(crate) fn recent(&self) -> Vec<Refused> {
        lock(&self.recent).iter().cloned().collect()
    }
}

/// Logs each refusal and writes it into this device's telemetry as an incident (one per author per
/// [`INCIDENT_EVERY_MS`]): instant (`resolved` = `started`), so it names the device without counting as an outage.
pub(super) async fn recorder(node: Arc<Node>, mut rx: mpsc::UnboundedReceiver<Refused>) {
    let mut written: HashMap<String, u64> = HashMap::new();
    while let Some(refused) = rx.recv().await {
        tracing::warn!(
            peer = %refused.peer,
            author = refused.author.as_deref().unwrap_or("-"),
            document = %refused.document,
            reason = %refused.reason,
            "refused a peer's change and closed its link"
        );
        let subject = refused
            .author
            .clone()
            .unwrap_or_else(|| refused.peer.clone());
        if written
            .get(&subject)
            .is_some_and(|at| refused.at.saturating_sub(*at) < INCIDENT_EVERY_MS)
        {
            continue;
        }
        let incident = Incident {
            kind: ROGUE_CHANGE.into(),
            subject: subject.clone(),
            started: refused.at,
            resolved: Some(refused.at),
        };
        let result = async {
            let handle = node.telemetry_handle().await?;
            let actor = node.actor();
            node.change(&handle, move |am| {
                Doc::<Telemetry, &mut Automerge>::attach_as(am, actor)?.record_incident(&incident)
            })
            .await?
            .map_err(internal)
        }
        .await;
        match result {
            Ok(()) => {
                written.insert(subject, refused.at);
            }
            Err(e) => tracing::error!("could not write the refusal as an incident: {e}"),
        }
    }
}
