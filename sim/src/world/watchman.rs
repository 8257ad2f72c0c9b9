//! The device core's watchman in the simulator: once a simulated second, as the node's task, each device tells it
//! who it reaches and writes the incidents and "sees" it decides into its own telemetry document (acknowledged, so
//! a disk fault makes the core write them again). The origin's show report is computed from these at the end.

use std::collections::{BTreeMap, BTreeSet};

use popmesh_crdt::DeviceId;
use popmesh_crdt::telemetry::TelemetryRecord;

use super::*;

impl World {
    pub(super) fn watch(&mut self, dev: usize) {
        if self.devices[dev].host.is_none() {
            return;
        }
        let Some(id) = self.own_telemetry(dev) else {
            return;
        };
        let at = UnixMillis(self.local_ms(dev));
        if self.devices[dev].own_telemetry_changed {
            let Some(record) = self.replica::<Telemetry, _>(dev, &id, |d| d.record().ok()) else {
                return;
            };
            let d = &mut self.devices[dev];
            d.watchman.handle_recorded(record.incidents.values(), at);
            d.own_telemetry_changed = false;
        }
        let in_reach: BTreeSet<DeviceId> = self
            .net
            .connected(dev)
            .map(|(_, peer)| self.devices[peer].key.public())
            .collect();
        // The devices this device should reach: those its plan names (every listed one while it has none).
        let d = &self.devices[dev];
        let roles: BTreeMap<DeviceId, Role> = d
            .view
            .as_ref()
            .map(|v| {
                v.certificates()
                    .filter(|c| d.plan.as_ref().is_none_or(|p| p.contains(&c.device)))
                    .map(|c| (c.device, c.role))
                    .collect()
            })
            .unwrap_or_default();
        let Some(watch) = self.devices[dev]
            .watchman
            .handle_reach(at, in_reach, &roles)
        else {
            return;
        };
        let (ts, actor) = (self.ts(dev), self.actor(dev));
        let d = &mut self.devices[dev];
        let Some(host) = d.host.as_mut() else {
            return;
        };
        let written = watch.clone();
        let outcome = host.change_acked(&mut d.durability, &id, ts, |am| {
            Doc::<Telemetry, &mut Automerge>::attach_as(am, actor)?
                .record_watch(&written.incidents, written.sees.map(|peers| (peers, at)))
        });
        let ok = matches!(outcome, Ok((Ok(()), Ok(()))));
        d.watchman.handle_written(&watch, ok);
        if ok {
            self.report.incidents_written += watch.incidents.len() as u64;
            self.report.watch_writes += 1;
            self.report.sees_writes += u64::from(watch.sees.is_some());
        }
        self.route(dev);
    }

    /// Every telemetry record device `dev` holds.
    pub(super) fn telemetry_records(&self, dev: usize) -> Vec<TelemetryRecord> {
        self.names
            .iter()
            .filter(|(_, n)| matches!(n, DocName::Telemetry { .. }))
            .filter_map(|(id, _)| self.replica::<Telemetry, _>(dev, id, |d| d.record().ok()))
            .collect()
    }

    /// Once the site has converged after its faults, the origin's show report must say what each device's
    /// watchman knows: the outages open in the report are exactly the incidents the watchmen hold open (none
    /// lost to a disk fault, none forgotten by a restart, every resolution synced).
    pub(super) fn check_outages(&mut self) {
        let origin = self.devices.len() - 1;
        let records = self.telemetry_records(origin);
        let operations = popmesh_crdt::report::operations(&records);
        self.report.outages = operations.outages.len() as u64;
        self.report.outage_mttr_ms = operations.mttr_ms;
        for dev in 0..self.devices.len() {
            let d = &self.devices[dev];
            if d.host.is_none() || d.stolen || d.forged {
                continue;
            }
            let me = d.key.public().to_hex();
            let held: BTreeSet<String> = d.watchman.open().map(|i| i.key()).collect();
            let reported: BTreeSet<String> = records
                .iter()
                .filter(|r| r.device == me)
                .flat_map(|r| r.incidents.values())
                .filter(|i| i.resolved.is_none())
                .map(|i| i.key())
                .collect();
            // An incident open at the end is for a peer this device plans to reach and is not linked to.
            let mut stale = Vec::new();
            for incident in d.watchman.open() {
                let peer = self
                    .devices
                    .iter()
                    .position(|o| o.key.public().to_hex() == incident.subject);
                let planned = peer.is_some_and(|p| {
                    d.plan
                        .as_ref()
                        .is_none_or(|plan| plan.contains(&self.devices[p].key.public()))
                });
                let linked = peer.is_some_and(|p| self.net.connected(dev).any(|(_, o)| o == p));
                if !planned || linked {
                    let why = if linked {
                        "is linked to"
                    } else {
                        "does not plan to reach"
                    };
                    stale.push(format!(
                        "{} holds an incident open for {} at the end, which it {why}",
                        d.name,
                        &incident.subject[..8]
                    ));
                }
            }
            for v in stale {
                self.violation(v);
            }
            let d = &self.devices[dev];
            if held != reported {
                let name = d.name.clone();
                self.violation(format!(
                    "the origin's show report holds {name}'s open incidents {reported:?}, its watchman {held:?}"
                ));
            }
        }
    }
}
