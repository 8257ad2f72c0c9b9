//! The librarian: finds the site directory, enrolls this device in it, and keeps every document it registers open.
//!
//! A device starts knowing its directory's id (from `site init`, its store, or the join token's site) or learns it
//! from the first admitted peer. It then asks its document engine for the directory, and once that is open, for
//! every document the directory registers; a find that comes back empty is retried after [`RETRY_MS`]. A device
//! whose certificate the directory does not list yet (one that joined from a token) writes it in once; a write the
//! store refused is retried, a certificate the directory refused is not. Every change of the directory makes the
//! shell re-check the links it admitted (a revocation may have merged).
//!
//! The shell (the node's librarian task, or the simulator's device) feeds in what happened and carries out
//! [`Step`]s: `Find` is `samod`'s `find` (or samod-core's search), `Enroll` is the directory change adding this
//! device's certificate, `Reverify` is the mesh's re-admission of its open links, `Record` stores the learned
//! directory id so a restart need not learn it again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use popmesh_crdt::docs::DocName;

/// How long after a find came back empty the librarian asks again, in milliseconds.
pub const RETRY_MS: u64 = 500;

/// What the shell must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<D> {
    /// Store the directory's id (it was learned from a peer, not configured).
    Record(D),
    /// Open this document: from storage, or from a peer. Answer with [`Librarian::handle_found`] or
    /// [`Librarian::handle_not_found`].
    Find { doc: D, name: DocName },
    /// Re-check every open link against the directory now held (admission may have changed).
    Reverify,
    /// Add this device's certificate to the directory. Answer with [`Librarian::handle_enrolled`].
    Enroll,
}

/// How an enrollment write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrolled {
    /// The certificate is in the directory.
    Written,
    /// The store refused the write (disk full, fsync failed): try again later.
    StoreFailed,
    /// The directory refused the certificate (another authority, expired): trying again will not help.
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enrolment {
    /// No directory read yet.
    Unknown,
    /// The directory does not list this device; write the certificate (not before the given time).
    Needed { at: u64 },
    /// The write is in flight.
    Writing,
    /// Listed, or refused for good.
    Settled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finding {
    /// Asked for; waiting for the answer.
    Asked,
    /// Not found; ask again at this time.
    RetryAt(u64),
}

/// The librarian's state for one device. `D` is the document id of the shell's engine.
#[derive(Debug)]
pub struct Librarian<D> {
    directory: Option<D>,
    open: BTreeSet<D>,
    finding: BTreeMap<D, (DocName, Finding)>,
    enrolment: Enrolment,
    steps: VecDeque<Step<D>>,
}

impl<D: Ord + Clone> Default for Librarian<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D: Ord + Clone> Librarian<D> {
    /// A librarian that does not know its directory yet.
    pub fn new() -> Self {
        Self {
            directory: None,
            open: BTreeSet::new(),
            finding: BTreeMap::new(),
            enrolment: Enrolment::Unknown,
            steps: VecDeque::new(),
        }
    }

    /// The directory's id, if known.
    pub fn directory(&self) -> Option<&D> {
        self.directory.as_ref()
    }

    /// Whether the directory is open here.
    pub fn has_directory(&self) -> bool {
        self.directory
            .as_ref()
            .is_some_and(|d| self.open.contains(d))
    }

    /// Whether document `doc` is open here.
    pub fn is_open(&self, doc: &D) -> bool {
        self.open.contains(doc)
    }

    /// Documents asked for and not open yet.
    pub fn missing(&self) -> impl Iterator<Item = (&D, &DocName)> {
        self.finding.iter().map(|(d, (n, _))| (d, n))
    }

    /// The directory's id is known: configured or stored (`recorded`), or learned from a peer (not recorded). Only
    /// the first id counts: a device belongs to one site.
    pub fn handle_directory_known(&mut self, id: D, recorded: bool) {
        if self.directory.is_some() {
            return;
        }
        if !recorded {
            self.steps.push_back(Step::Record(id.clone()));
        }
        self.directory = Some(id.clone());
        self.ask(id, DocName::Directory);
    }

    /// Document `doc` is open (found in storage or received from a peer).
    pub fn handle_found(&mut self, doc: D) {
        self.finding.remove(&doc);
        self.open.insert(doc);
    }

    /// The engine did not find `doc` at `now` (no peer had it yet): ask again after [`RETRY_MS`].
    pub fn handle_not_found(&mut self, doc: &D, now: u64) {
        // Only an answer to a request counts: a document already waiting to be asked again keeps its time.
        if let Some((_, state @ Finding::Asked)) = self.finding.get_mut(doc) {
            *state = Finding::RetryAt(now.saturating_add(RETRY_MS));
        }
    }

    /// The directory held here was read (after it opened or changed): the documents it registers, and whether it
    /// lists this device's certificate.
    pub fn handle_directory_read(
        &mut self,
        registered: impl IntoIterator<Item = (DocName, D)>,
        listed: bool,
        now: u64,
    ) {
        self.steps.push_back(Step::Reverify);
        for (name, doc) in registered {
            if !self.open.contains(&doc) && !self.finding.contains_key(&doc) {
                self.ask(doc, name);
            }
        }
        self.enrolment = match (self.enrolment, listed) {
            (_, true) => Enrolment::Settled,
            (Enrolment::Unknown, false) => Enrolment::Needed { at: now },
            (other, false) => other,
        };
    }

    /// The enrollment write ended at `now`.
    pub fn handle_enrolled(&mut self, outcome: Enrolled, now: u64) {
        self.enrolment = match outcome {
            Enrolled::Written | Enrolled::Refused => Enrolment::Settled,
            Enrolled::StoreFailed => Enrolment::Needed {
                at: now.saturating_add(RETRY_MS),
            },
        };
    }

    /// The next thing to do at `now`, if any.
    pub fn poll_step(&mut self, now: u64) -> Option<Step<D>> {
        while let Some(step) = self.steps.pop_front() {
            match &step {
                // Found while the request waited in the queue: nothing to ask.
                Step::Find { doc, .. } if self.open.contains(doc) => continue,
                _ => return Some(step),
            }
        }
        if let Enrolment::Needed { at } = self.enrolment
            && at <= now
            && self.has_directory()
        {
            self.enrolment = Enrolment::Writing;
            return Some(Step::Enroll);
        }
        self.finding
            .iter_mut()
            .find_map(|(doc, (name, state))| match state {
                Finding::RetryAt(at) if *at <= now => {
                    *state = Finding::Asked;
                    Some(Step::Find {
                        doc: doc.clone(),
                        name: name.clone(),
                    })
                }
                _ => None,
            })
    }

    /// When the librarian next has something to do without new input (a retry), if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        let retry = self.finding.values().filter_map(|(_, s)| match s {
            Finding::RetryAt(at) => Some(*at),
            Finding::Asked => None,
        });
        let enroll = match self.enrolment {
            Enrolment::Needed { at } if self.has_directory() => Some(at),
            _ => None,
        };
        retry.chain(enroll).min()
    }

    fn ask(&mut self, doc: D, name: DocName) {
        self.finding
            .insert(doc.clone(), (name.clone(), Finding::Asked));
        self.steps.push_back(Step::Find { doc, name });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(l: &mut Librarian<u32>, now: u64) -> Vec<Step<u32>> {
        std::iter::from_fn(|| l.poll_step(now)).collect()
    }

    #[test]
    fn a_kiosk_with_a_join_token_learns_the_directory_records_it_and_enrolls() {
        let mut l = Librarian::new();
        assert!(
            drain(&mut l, 0).is_empty(),
            "nothing to do before the directory is known"
        );
        l.handle_directory_known(1, false);
        assert_eq!(
            drain(&mut l, 0),
            vec![
                Step::Record(1),
                Step::Find {
                    doc: 1,
                    name: DocName::Directory
                }
            ]
        );
        l.handle_not_found(&1, 10);
        assert!(drain(&mut l, 100).is_empty(), "no retry before RETRY_MS");
        assert_eq!(l.poll_timeout(), Some(10 + RETRY_MS));
        l.handle_not_found(&1, 400);
        assert_eq!(
            l.poll_timeout(),
            Some(10 + RETRY_MS),
            "a second 'not found' does not push the retry"
        );
        assert_eq!(drain(&mut l, 10 + RETRY_MS).len(), 1, "asks again");
        l.handle_found(1);
        let slot = DocName::Telemetry {
            device: popmesh_crdt::DeviceId([7; 32]),
        };
        l.handle_directory_read([(slot.clone(), 2)], false, 600);
        assert_eq!(
            drain(&mut l, 600),
            vec![
                Step::Reverify,
                Step::Find { doc: 2, name: slot },
                Step::Enroll
            ]
        );
        l.handle_enrolled(Enrolled::StoreFailed, 700);
        assert!(
            drain(&mut l, 700).is_empty(),
            "a refused write waits before it is retried"
        );
        assert_eq!(drain(&mut l, 700 + RETRY_MS), vec![Step::Enroll]);
        l.handle_enrolled(Enrolled::Written, 1300);
        l.handle_directory_read([], true, 1300);
        assert_eq!(drain(&mut l, 5000), vec![Step::Reverify]);
    }

    #[test]
    fn an_enrolled_device_never_writes_its_certificate_and_opens_each_document_once() {
        let mut l = Librarian::new();
        l.handle_directory_known(1, true);
        assert_eq!(
            drain(&mut l, 0).len(),
            1,
            "configured ids are not recorded again"
        );
        l.handle_found(1);
        l.handle_directory_read([(DocName::Directory, 1)], true, 0);
        assert_eq!(
            drain(&mut l, 0),
            vec![Step::Reverify],
            "the directory is open already"
        );
        l.handle_directory_known(9, false);
        assert!(drain(&mut l, 0).is_empty(), "a device belongs to one site");
    }

    #[test]
    fn a_certificate_the_directory_refuses_is_not_written_again() {
        let mut l = Librarian::new();
        l.handle_directory_known(1, true);
        l.handle_found(1);
        l.handle_directory_read([], false, 0);
        assert_eq!(
            drain(&mut l, 0),
            vec![Step::Reverify, Step::Enroll],
            "the directory was found before its request was taken"
        );
        l.handle_enrolled(Enrolled::Refused, 0);
        l.handle_directory_read([], false, 10);
        assert_eq!(drain(&mut l, 1_000_000), vec![Step::Reverify]);
        assert_eq!(l.poll_timeout(), None);
    }
}
