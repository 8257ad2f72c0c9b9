//! The watchman: who this device reaches, the incidents it records when a peer drops out of reach, and its answer to
//! a dry rehearsal call.
//!
//! Every device records what *it* lost (`popmesh_crdt::report::operations` merges the site's incidents into
//! outages, so one kiosk going dark counts once). An incident opens when an enrolled peer this device reached
//! before has been out of reach for [`INCIDENT_AFTER_MS`], as `origin_lost` when that peer is the origin, and
//! resolves when the peer is back. It starts when the peer was first missed; a peer back sooner was a blip (a
//! connection reset and redialled), and recording every blip would make each one a change every device syncs.
//! Who this device sees is written when it changed, counting a peer missed for less than the grace as still seen,
//! so it changes with the incidents (or a new peer) and is written in the same change. What to write is kept until the shell says
//! the write succeeded, so an incident the disk refused is written again on the next look, not lost.
//!
//! The shell also shows the watchman this device's own telemetry document whenever it changed
//! ([`Watchman::handle_recorded`]): after a restart it holds the incidents this device left open, and later it may
//! receive more from peers (a write the disk refused before a crash still synced). Each open incident there that
//! the watchman does not hold is taken up again, so the peer's return resolves it and the show report does not
//! count an outage that ended.

use std::collections::{BTreeMap, BTreeSet};

use popmesh_crdt::telemetry::{Incident, RehearsalAnswer, RehearsalCall, TelemetryRecord};
use popmesh_crdt::{DeviceId, Role, UnixMillis};

/// How long a peer must be out of reach before its absence is an incident, in milliseconds.
pub const INCIDENT_AFTER_MS: u64 = 3_000;

/// What the shell must write into this device's telemetry document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// Incidents opened or resolved (written by key: a resolution overwrites its opening).
    pub incidents: Vec<Incident>,
    /// Who this device sees now (device hex, sorted), when that changed.
    pub sees: Option<Vec<String>>,
}

/// The watchman's state for one device (memory only: a restarted device starts with nobody reached).
#[derive(Debug, Default)]
pub struct Watchman {
    reached: BTreeSet<DeviceId>,
    /// Peers reached before and missed since this time, not yet an incident.
    missed: BTreeMap<DeviceId, u64>,
    /// Peers in reach, and since when (for an incident taken up late, while its peer is already back).
    since: BTreeMap<DeviceId, u64>,
    open: BTreeMap<DeviceId, Incident>,
    unwritten: Vec<Incident>,
    sees_written: Option<BTreeSet<DeviceId>>,
    answered: Option<String>,
}

impl Watchman {
    pub fn new() -> Self {
        Self::default()
    }

    /// The devices in reach at `now` (admitted links open), and the devices this device should reach, with their
    /// roles: those its link plan names (`links::planned`), or every device its directory lists while it has no
    /// plan. A peer outside them is not lost when unlinked (the ring let it go on purpose), and an incident for one
    /// that leaves them ends. Returns what must be written, if anything.
    pub fn handle_reach(
        &mut self,
        now: UnixMillis,
        in_reach: BTreeSet<DeviceId>,
        roles: &BTreeMap<DeviceId, Role>,
    ) -> Option<Watch> {
        self.reached.extend(in_reach.iter().copied());
        self.since.retain(|d, _| in_reach.contains(d));
        for device in &in_reach {
            self.since.entry(*device).or_insert(now.0);
        }
        // A peer no longer expected (revoked, or out of the plan) is not waited for: it is simply not seen.
        self.missed
            .retain(|d, _| roles.contains_key(d) && !in_reach.contains(d));
        let lost: Vec<DeviceId> = self.reached.difference(&in_reach).copied().collect();
        for device in lost {
            let Some(role) = roles.get(&device) else {
                continue;
            };
            if self.open.contains_key(&device) {
                continue;
            }
            let since = *self.missed.entry(device).or_insert(now.0);
            if now.0 < since.saturating_add(INCIDENT_AFTER_MS) {
                continue;
            }
            self.missed.remove(&device);
            let kind = if *role == Role::Origin {
                "origin_lost"
            } else {
                "peer_lost"
            };
            let incident = Incident {
                kind: kind.into(),
                subject: device.to_hex(),
                started: since,
                resolved: None,
            };
            self.open.insert(device, incident.clone());
            self.unwritten.push(incident);
        }
        // Back in reach, or no longer expected (revoked, or no longer in this device's plan): the outage it stood
        // for is over.
        let back: Vec<DeviceId> = self
            .open
            .keys()
            .filter(|d| in_reach.contains(d) || (!roles.is_empty() && !roles.contains_key(d)))
            .copied()
            .collect();
        for device in back {
            if let Some(mut incident) = self.open.remove(&device) {
                incident.resolved = Some(now.0.max(incident.started));
                self.unwritten.retain(|i| i.key() != incident.key());
                self.unwritten.push(incident);
            }
        }
        // A peer missed for less than the grace is still seen: a blip changes nothing on the site.
        let seen: BTreeSet<DeviceId> = in_reach.iter().chain(self.missed.keys()).copied().collect();
        let sees = (self.sees_written.as_ref() != Some(&seen))
            .then(|| seen.iter().map(DeviceId::to_hex).collect());
        (!self.unwritten.is_empty() || sees.is_some()).then(|| Watch {
            incidents: self.unwritten.clone(),
            sees,
        })
    }

    /// The write of `watch` ended; on success nothing of it is written again.
    pub fn handle_written(&mut self, watch: &Watch, ok: bool) {
        if !ok {
            return;
        }
        self.unwritten.retain(|i| !watch.incidents.contains(i));
        if let Some(sees) = &watch.sees {
            let sees = sees
                .iter()
                .filter_map(|h| DeviceId::from_hex(h).ok())
                .collect();
            self.sees_written = Some(sees);
        }
    }

    /// The incidents this device's own telemetry document holds (after a start, and whenever it changed), at
    /// `now`. An open one the watchman does not hold is taken up again (resolved at once when it holds a newer
    /// incident for the same peer); one the document says resolved is no longer held.
    pub fn handle_recorded<'a>(
        &mut self,
        incidents: impl IntoIterator<Item = &'a Incident>,
        now: UnixMillis,
    ) {
        for incident in incidents {
            let key = incident.key();
            if self.unwritten.iter().any(|i| i.key() == key) {
                continue;
            }
            let Ok(device) = DeviceId::from_hex(&incident.subject) else {
                continue;
            };
            let held = self.open.get(&device).map(Incident::key);
            match (incident.resolved, held) {
                (Some(_), Some(held)) if held == key => {
                    self.open.remove(&device);
                }
                (Some(_), _) => {}
                (None, Some(held)) if held == key => {}
                (None, Some(_)) => {
                    let mut orphan = incident.clone();
                    orphan.resolved = Some(now.0.max(orphan.started));
                    self.unwritten.push(orphan);
                }
                (None, None) => match self.since.get(&device) {
                    // The peer is back already: the outage ended when this device first saw it again.
                    Some(back) => {
                        let mut ended = incident.clone();
                        ended.resolved = Some((*back).max(ended.started));
                        self.unwritten.push(ended);
                    }
                    None => {
                        self.open.insert(device, incident.clone());
                        self.reached.insert(device);
                        self.missed.remove(&device);
                    }
                },
            }
        }
    }

    /// The incidents open now (peers out of reach).
    pub fn open(&self) -> impl Iterator<Item = &Incident> {
        self.open.values()
    }

    /// The rehearsal call to answer, given every telemetry record this device holds: the newest call any device
    /// made, unless this device answered it already (here, or before a restart: its own record holds the answer).
    pub fn rehearsal_to_answer(
        &mut self,
        records: &[TelemetryRecord],
        me: &DeviceId,
    ) -> Option<RehearsalCall> {
        let call = records
            .iter()
            .filter_map(|r| r.rehearsal.clone())
            .max_by_key(|c| (c.at, c.id.clone()))?;
        if self.answered.as_deref() == Some(call.id.as_str()) {
            return None;
        }
        let me = me.to_hex();
        let answered_before = records.iter().any(|r| {
            r.device == me && r.rehearsal_answer.as_ref().is_some_and(|a| a.id == call.id)
        });
        if answered_before {
            self.answered = Some(call.id);
            return None;
        }
        Some(call)
    }

    /// The answer to `call` at `now`: this device's clock, how much of the manifests' media it holds, whom it
    /// reaches. Write it, then report with [`Watchman::handle_answered`].
    pub fn answer(
        call: &RehearsalCall,
        now: UnixMillis,
        preseed_completeness: f64,
        peers: Vec<String>,
    ) -> RehearsalAnswer {
        RehearsalAnswer {
            id: call.id.clone(),
            at: now.0,
            preseed_permille: (preseed_completeness * 1000.0).floor().clamp(0.0, 1000.0) as u32,
            peers,
        }
    }

    /// The answer to rehearsal call `id` is written.
    pub fn handle_answered(&mut self, id: String) {
        self.answered = Some(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    fn set(devices: &[u8]) -> BTreeSet<DeviceId> {
        devices.iter().map(|n| dev(*n)).collect()
    }

    fn roles() -> BTreeMap<DeviceId, Role> {
        [
            (dev(1), Role::Origin),
            (dev(2), Role::Kiosk),
            (dev(3), Role::Pos),
        ]
        .into()
    }

    #[test]
    fn the_origin_drops_out_and_comes_back_one_incident_opened_and_resolved() {
        let mut w = Watchman::new();
        let first = w
            .handle_reach(UnixMillis(0), set(&[1, 2]), &roles())
            .expect("sees");
        assert!(first.incidents.is_empty());
        w.handle_written(&first, true);
        assert_eq!(
            w.handle_reach(UnixMillis(1000), set(&[1, 2]), &roles()),
            None,
            "nothing changed"
        );
        assert_eq!(
            w.handle_reach(UnixMillis(2000), set(&[2]), &roles()),
            None,
            "missed, not yet an incident"
        );
        let lost = w
            .handle_reach(UnixMillis(5000), set(&[2]), &roles())
            .expect("lost");
        assert_eq!(lost.incidents.len(), 1);
        assert_eq!(lost.incidents[0].kind, "origin_lost");
        assert_eq!(
            lost.incidents[0].started, 2000,
            "it starts when the origin was first missed"
        );
        w.handle_written(&lost, true);
        assert_eq!(w.open().count(), 1);
        let back = w
            .handle_reach(UnixMillis(9000), set(&[1, 2]), &roles())
            .expect("back");
        assert_eq!(back.incidents[0].resolved, Some(9000));
        w.handle_written(&back, true);
        assert_eq!(w.open().count(), 0);
    }

    #[test]
    fn an_incident_the_disk_refused_is_written_again_and_a_stranger_opens_none() {
        let mut w = Watchman::new();
        let first = w
            .handle_reach(UnixMillis(0), set(&[3, 9]), &roles())
            .expect("sees");
        w.handle_written(&first, true);
        let stranger_gone = w
            .handle_reach(UnixMillis(10), set(&[]), &roles())
            .expect("sees");
        assert_eq!(
            (stranger_gone.incidents.len(), stranger_gone.sees.clone()),
            (0, Some(vec![dev(3).to_hex()])),
            "device 9 is not in the directory: no grace, no incident; device 3 is still seen in its grace"
        );
        w.handle_written(&stranger_gone, true);
        let t = 10 + INCIDENT_AFTER_MS;
        let lost = w
            .handle_reach(UnixMillis(t), set(&[]), &roles())
            .expect("lost");
        assert_eq!(lost.incidents.len(), 1);
        w.handle_written(&lost, false);
        let again = w
            .handle_reach(UnixMillis(t + 10), set(&[]), &roles())
            .expect("again");
        assert_eq!(
            again.incidents, lost.incidents,
            "the refused incident is written again"
        );
        assert_eq!(again.sees, Some(vec![]), "nor is who it sees");
        w.handle_written(&again, true);
        assert_eq!(w.handle_reach(UnixMillis(t + 20), set(&[]), &roles()), None);
    }

    #[test]
    fn a_connection_reset_and_redialled_within_the_grace_is_no_incident() {
        let mut w = Watchman::new();
        let first = w
            .handle_reach(UnixMillis(0), set(&[2]), &roles())
            .expect("sees");
        w.handle_written(&first, true);
        assert_eq!(
            w.handle_reach(UnixMillis(10), set(&[]), &roles()),
            None,
            "missed: still seen"
        );
        assert_eq!(
            w.handle_reach(UnixMillis(1000), set(&[2]), &roles()),
            None,
            "back: nothing to write"
        );
        assert_eq!(w.open().count(), 0);
    }

    #[test]
    fn a_restarted_device_resolves_the_incident_it_left_open() {
        let before = Incident {
            kind: "peer_lost".into(),
            subject: dev(2).to_hex(),
            started: 5,
            resolved: None,
        };
        let mut w = Watchman::new();
        w.handle_recorded([&before], UnixMillis(6));
        assert_eq!(w.open().count(), 1);
        w.handle_recorded([&before], UnixMillis(7));
        assert_eq!(w.open().count(), 1, "read twice, held once");
        let back = w
            .handle_reach(UnixMillis(50), set(&[2]), &roles())
            .expect("back");
        assert_eq!(
            back.incidents[0].key(),
            before.key(),
            "the same incident, resolved"
        );
        assert_eq!(back.incidents[0].resolved, Some(50));
    }

    #[test]
    fn an_incident_that_syncs_back_after_a_crash_is_resolved_not_left_open() {
        // Before a crash this device wrote an incident the disk refused; it synced anyway. After the restart the
        // device opened its own incident for the same peer, then the old one comes back from a peer.
        let mut w = Watchman::new();
        w.handle_recorded([], UnixMillis(0));
        let first = w
            .handle_reach(UnixMillis(0), set(&[2]), &roles())
            .expect("sees");
        w.handle_written(&first, true);
        w.handle_reach(UnixMillis(10), set(&[]), &roles());
        let lost = w
            .handle_reach(UnixMillis(10 + INCIDENT_AFTER_MS), set(&[]), &roles())
            .expect("lost");
        w.handle_written(&lost, true);
        let old = Incident {
            kind: "peer_lost".into(),
            subject: dev(2).to_hex(),
            started: 1,
            resolved: None,
        };
        w.handle_recorded([&lost.incidents[0], &old], UnixMillis(9000));
        let orphan = w
            .handle_reach(UnixMillis(9001), set(&[]), &roles())
            .expect("orphan");
        assert_eq!(orphan.incidents.len(), 1);
        assert_eq!(
            (orphan.incidents[0].key(), orphan.incidents[0].resolved),
            (old.key(), Some(9000))
        );
        w.handle_written(&orphan, true);
        assert_eq!(w.open().count(), 1, "the current incident stays open");
    }

    #[test]
    fn an_incident_taken_up_while_its_peer_is_back_ends_when_the_peer_was_first_seen_again() {
        let mut w = Watchman::new();
        w.handle_reach(UnixMillis(100), set(&[2]), &roles());
        let old = Incident {
            kind: "peer_lost".into(),
            subject: dev(2).to_hex(),
            started: 5,
            resolved: None,
        };
        w.handle_recorded([&old], UnixMillis(900));
        let ended = w
            .handle_reach(UnixMillis(1000), set(&[2]), &roles())
            .expect("ended");
        assert_eq!(
            (ended.incidents[0].key(), ended.incidents[0].resolved),
            (old.key(), Some(100))
        );
        assert_eq!(w.open().count(), 0);
    }

    #[test]
    fn a_peer_revoked_while_out_of_reach_ends_its_incident_and_is_no_longer_seen() {
        let mut w = Watchman::new();
        let first = w
            .handle_reach(UnixMillis(0), set(&[2, 3]), &roles())
            .expect("sees");
        w.handle_written(&first, true);
        w.handle_reach(UnixMillis(10), set(&[3]), &roles());
        let lost = w
            .handle_reach(UnixMillis(5000), set(&[3]), &roles())
            .expect("lost");
        w.handle_written(&lost, true);
        let revoked: BTreeMap<DeviceId, Role> =
            [(dev(1), Role::Origin), (dev(3), Role::Pos)].into();
        let over = w
            .handle_reach(UnixMillis(6000), set(&[3]), &revoked)
            .expect("over");
        assert_eq!(over.incidents[0].resolved, Some(6000));
        assert_eq!(over.sees, None, "it was already not seen");
        w.handle_written(&over, true);
        assert_eq!(w.open().count(), 0);
    }

    #[test]
    fn a_rehearsal_is_answered_once_even_across_a_restart() {
        let call = RehearsalCall {
            id: "c1".into(),
            at: 5,
        };
        let mut records = vec![TelemetryRecord {
            device: dev(1).to_hex(),
            rehearsal: Some(call.clone()),
            ..TelemetryRecord::default()
        }];
        let mut w = Watchman::new();
        assert_eq!(w.rehearsal_to_answer(&records, &dev(2)), Some(call.clone()));
        let answer = Watchman::answer(&call, UnixMillis(7), 0.9999, vec![]);
        assert_eq!(answer.preseed_permille, 999);
        w.handle_answered(call.id.clone());
        assert_eq!(w.rehearsal_to_answer(&records, &dev(2)), None);
        records.push(TelemetryRecord {
            device: dev(2).to_hex(),
            rehearsal_answer: Some(answer),
            ..TelemetryRecord::default()
        });
        let mut restarted = Watchman::new();
        assert_eq!(restarted.rehearsal_to_answer(&records, &dev(2)), None);
    }
}
