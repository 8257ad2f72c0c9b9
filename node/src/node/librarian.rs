//! The librarian's shell: carries out what `popmesh_device::librarian` decides (finding the directory, enrolling,
//! opening every document it registers) with samod, the store and the mesh.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use popmesh_device::librarian::{Enrolled, Librarian, Step};

use super::*;

/// How often the directory is re-read even without a change notification.
const REREAD_EVERY: Duration = Duration::from_secs(2);

/// What a find spawned by the librarian came back with.
type Found = (
    DocumentId,
    DocName,
    Result<Option<DocHandle>, samod::Stopped>,
);

/// Finds the directory, enrolls this device in it, and keeps every registered document open.
pub(super) async fn librarian(node: Arc<Node>) {
    // The core's time: milliseconds on a monotonic clock (a wall clock stepped back would stall every retry).
    let started = Instant::now();
    let now = move || started.elapsed().as_millis() as u64;
    let mut core = Librarian::<DocumentId>::new();
    let mut last_read = Instant::now();
    let (found_tx, mut found_rx) = tokio::sync::mpsc::unbounded_channel::<Found>();
    let mut changes: Option<Pin<Box<dyn Stream<Item = _> + Send>>> = None;
    loop {
        if core.directory().is_none()
            && let Some(id) = read(&node.gate.directory).clone()
        {
            let recorded = node.dir.site.directory.is_some()
                || node.store.meta("directory").ok().flatten().is_some();
            core.handle_directory_known(id, recorded);
        }
        while let Some(step) = core.poll_step(now()) {
            match step {
                Step::Record(id) => {
                    if let Err(e) = node.store.set_meta("directory", &id.to_string()) {
                        tracing::error!("could not record the directory id: {e}");
                    }
                }
                Step::Find { doc, name } => {
                    let (node, found_tx) = (node.clone(), found_tx.clone());
                    tokio::spawn(async move {
                        let found = node.repo.find(doc.clone()).await;
                        let _ = found_tx.send((doc, name, found));
                    });
                }
                Step::Reverify => node.mesh.reverify().await,
                Step::Enroll => {
                    let cert = node.dir.cert.clone();
                    let outcome = match node.change_directory(move |d| d.add_device(&cert)).await {
                        Ok(Ok(())) => {
                            tracing::info!("enrolled in the site directory");
                            Enrolled::Written
                        }
                        Ok(Err(e)) => {
                            tracing::error!("the directory refused this device's certificate: {e}");
                            Enrolled::Refused
                        }
                        Err(e) => {
                            tracing::error!(
                                "could not enroll in the site directory (will retry): {e}"
                            );
                            Enrolled::StoreFailed
                        }
                    };
                    core.handle_enrolled(outcome, now());
                    read_directory(&node, &mut core, now()).await;
                }
            }
        }
        let wait = core
            .poll_timeout()
            .map(|at| Duration::from_millis(at.saturating_sub(now())))
            .unwrap_or(REREAD_EVERY)
            .min(REREAD_EVERY);
        tokio::select! {
            _ = node.gate.learned.notified(), if core.directory().is_none() => {}
            Some((doc, name, found)) = found_rx.recv() => match found {
                Ok(Some(handle)) => {
                    core.handle_found(doc.clone());
                    if name == DocName::Directory {
                        tracing::info!(directory_id = %doc, "site directory open");
                        *write(&node.directory) = Some(handle.clone());
                        changes = Some(Box::pin(handle.changes()));
                    }
                    node.track(doc, name.clone(), handle);
                    if name == DocName::Directory {
                        read_directory(&node, &mut core, now()).await;
                    }
                }
                Ok(None) => core.handle_not_found(&doc, now()),
                Err(_) => return,
            },
            next = async { changes.as_mut().expect("guarded").next().await }, if changes.is_some() => {
                if next.is_none() {
                    return;
                }
                read_directory(&node, &mut core, now()).await;
            }
            _ = tokio::time::sleep(wait) => {
                // A retry's wake-up is not a reason to re-read the directory: that is every REREAD_EVERY.
                if core.has_directory() && last_read.elapsed() >= REREAD_EVERY {
                    read_directory(&node, &mut core, now()).await;
                    last_read = Instant::now();
                }
            }
        }
    }
}

/// Re-reads the directory into the gate's view and tells the librarian what it registers and whether it lists
/// this device.
async fn read_directory(node: &Node, core: &mut Librarian<DocumentId>, now: u64) {
    node.refresh_view().await;
    let me = node.me();
    let shape = read(&node.gate.shape).clone();
    // Only what the site's shape has this device hold: a kiosk opens the shared documents and its own, not every
    // other kiosk's receipts and counters (`Topology::holds`).
    let holds = |name: &DocName| shape.as_ref().is_none_or(|t| t.holds(&me, name));
    let (registered, listed) = match read(&node.gate.view).as_ref() {
        Some(view) => (
            view.documents
                .iter()
                .filter_map(|(name, id)| Some((name.parse::<DocName>().ok()?, id.parse().ok()?)))
                .filter(|(name, _)| holds(name))
                .collect::<Vec<(DocName, DocumentId)>>(),
            view.certificates().any(|c| c.device == me),
        ),
        None => return,
    };
    core.handle_directory_read(registered, listed, now);
}
