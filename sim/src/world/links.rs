//! The site links: which are wanted, opening and resetting connections, and carrying wire messages.

use super::*;

impl World {
    pub(super) fn link_wanted(&self, link: usize) -> bool {
        let l = &self.net.links[link];
        let up = |i: usize| self.devices[i].present && self.devices[i].host.is_some();
        up(l.a)
            && up(l.b)
            && !self.blocked.contains(&(l.a, l.b))
            && !self.blocked.contains(&(l.b, l.a))
    }

    pub(super) fn link_all(&mut self, dev: usize) {
        let links: Vec<usize> = self.net.of_device(dev).collect();
        for link in links {
            self.want_reconnect(link, 0);
        }
    }

    pub(super) fn want_reconnect(&mut self, link: usize, backoff_ms: u64) {
        let l = &mut self.net.links[link];
        if l.conns.is_none() && !l.reconnect_pending {
            l.reconnect_pending = true;
            self.at(backoff_ms, Event::Reconnect { link });
        }
    }

    /// Ends a connection: both hubs hear it is lost, in-flight messages die with it.
    pub(super) fn reset(&mut self, link: usize) {
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
    pub(super) fn route(&mut self, dev: usize) {
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

    pub(super) fn deliver(&mut self, link: usize, epoch: u64, up: bool, msg: Vec<u8>) {
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

    pub(super) fn reconnect(&mut self, link: usize) {
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
}
