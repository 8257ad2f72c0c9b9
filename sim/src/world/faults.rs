//! The faults drawn from the seed: partitions, crashes, and the end of the fault phase.

use super::*;

impl World {
    pub(super) fn start_partition(&mut self) {
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

    pub(super) fn crash(&mut self, dev: usize) {
        let Some(host) = self.devices[dev].host.take() else {
            return;
        };
        if self.faults_ended_at.is_some() {
            self.devices[dev].host = Some(host);
            return;
        }
        self.report.crashes += 1;
        self.report.changes += host.changes;
        let d = &mut self.devices[dev];
        d.storage = host.crash();
        // In-memory state is gone: unflushed counter increments and transfers in flight.
        d.counter = CounterBuffer::new(FLUSH_MS, UnixMillis(0));
        d.fetching.clear();
        d.known.clear();
        d.view = None;
        d.librarian = Librarian::new();
        d.watchman = Default::default();
        d.own_telemetry_changed = true;
        d.plan = None;
        d.shape = None;
        d.verified.clear();
        // The device core's state is memory: the desk (its queue, batches and key index) and what it knew to be
        // durable. Clients waiting at the desk saw their connection die.
        d.desk = Desk::new(self.mutations);
        d.durability.clear();
        d.tickets.clear();
        d.writes.clear();
        d.pages.clear();
        d.takes.clear();
        d.failed_at = Some(self.now);
        self.heal_pending = None;
        let links: Vec<usize> = self.net.of_device(dev).collect();
        for link in links {
            self.reset(link);
        }
        let down = self.faults.random_range(2_000..90_000);
        self.at(down, Event::Restart { dev });
    }

    pub(super) fn end_faults(&mut self) {
        self.faults_ended_at = Some(self.now);
        for dev in 0..self.devices.len() {
            self.storage_of(dev).set_disk(None);
        }
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
    pub(super) fn fault_active(&self) -> bool {
        !self.blocked.is_empty() || self.devices.iter().any(|d| d.present && d.host.is_none())
    }

    /// Starts the convergence clock when the last active fault has just healed.
    pub(super) fn mark_heal(&mut self) {
        if self.heal_pending.is_none() && !self.fault_active() {
            self.heal_pending = Some(self.now);
        }
    }
}
