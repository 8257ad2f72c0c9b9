//! The device core's librarian in the simulator: the same decisions the node's librarian task carries out (find
//! the directory, open what it registers, enroll a dropped-in kiosk), with the simulated engine as its hands.

use super::*;

impl World {
    /// Runs the librarian once a simulated second, as the node's task runs on its timers. The simulated engine's
    /// search never answers "not found": a document asked for and not open by the next probe counts as not found,
    /// and the core decides when to ask again.
    pub(super) fn open_documents(&mut self, dev: usize) {
        if self.devices[dev].host.is_none() {
            return;
        }
        let now = self.local_ms(dev);
        let d = &mut self.devices[dev];
        let Some(host) = d.host.as_ref() else {
            return;
        };
        // What was asked before this probe and is still not open; then the directory, if not known yet.
        let asked: Vec<DocumentId> = d.librarian.missing().map(|(id, _)| id.clone()).collect();
        let mut directory_opened = false;
        for id in asked {
            if host.is_open(&id) {
                directory_opened |= id == self.directory;
                d.librarian.handle_found(id);
            } else {
                d.librarian.handle_not_found(&id, now);
            }
        }
        self.know_directory(dev);
        let d = &self.devices[dev];
        if directory_opened || (d.view.is_none() && d.librarian.has_directory()) {
            self.refresh_directory(dev);
        } else {
            self.run_librarian(dev);
        }
        self.route(dev);
    }

    /// Tells `dev`'s librarian what its directory replica registers and whether it lists `dev` (after
    /// `refresh_directory` read it), then carries out what the librarian decides.
    pub(super) fn read_directory(&mut self, dev: usize) {
        self.know_directory(dev);
        let now = self.local_ms(dev);
        let d = &mut self.devices[dev];
        if d.host.as_ref().is_some_and(|h| h.is_open(&self.directory)) {
            d.librarian.handle_found(self.directory.clone());
        }
        if let Some(view) = d.view.as_ref() {
            let me = d.key.public();
            // Only what the site's shape has this device hold, as the node's librarian asks.
            let shape = d.shape.clone();
            let registered: Vec<(DocName, DocumentId)> = d
                .known
                .iter()
                .filter_map(|(name, id)| Some((name.parse().ok()?, id.clone())))
                .filter(|(name, _)| shape.as_ref().is_none_or(|t| t.holds(&me, name)))
                .collect();
            let listed = view.certificates().any(|c| c.device == me);
            d.librarian.handle_directory_read(registered, listed, now);
        }
        self.run_librarian(dev);
    }

    /// Every device knows its site's directory id: from `site init`, its store, or the join token's site. (The
    /// node can also learn it from a peer's hello; the simulator does not model that path.)
    fn know_directory(&mut self, dev: usize) {
        let directory = self.directory.clone();
        let librarian = &mut self.devices[dev].librarian;
        if librarian.directory().is_none() {
            librarian.handle_directory_known(directory, true);
        }
    }

    /// Carries out the librarian's steps.
    fn run_librarian(&mut self, dev: usize) {
        let (now, ts) = (self.local_ms(dev), self.ts(dev));
        while let Some(step) = self.devices[dev].librarian.poll_step(now) {
            match step {
                // Nothing to record: the simulator has no metadata table, and every device knows the id.
                Step::Record(_) => {}
                Step::Find { doc, .. } => {
                    if let Some(host) = self.devices[dev].host.as_mut() {
                        host.find_document(&doc, ts);
                    }
                }
                Step::Reverify => self.recheck_links(dev),
                Step::Enroll => self.enroll(dev, now, ts),
            }
        }
    }

    /// A dropped-in kiosk writes its certificate into the directory (acknowledged; retried by the librarian while
    /// the disk refuses it).
    fn enroll(&mut self, dev: usize, now: u64, ts: UnixTimestamp) {
        let (actor, directory) = (self.actor(dev), self.directory.clone());
        let d = &mut self.devices[dev];
        let (Some(host), Some(cert)) = (d.host.as_mut(), d.cert.clone()) else {
            d.librarian.handle_enrolled(Enrolled::Refused, now);
            return;
        };
        let written = host.change_acked(&mut d.durability, &directory, ts, |am| {
            Doc::<Directory, &mut Automerge>::attach_as(am, actor)
                .map_err(|e| e.to_string())?
                .add_device(&cert)
                .map_err(|e| e.to_string())
        });
        let outcome = match written {
            Ok((Ok(()), Ok(()))) => Enrolled::Written,
            Ok((Ok(()), Err(_))) => Enrolled::StoreFailed,
            other => {
                let name = d.name.clone();
                self.violation(format!(
                    "{name} could not enroll from its join token: {other:?}"
                ));
                Enrolled::Refused
            }
        };
        self.devices[dev].librarian.handle_enrolled(outcome, now);
    }
}
