//! The site links: which are wanted, opening and resetting connections, and carrying wire messages.

use super::*;

impl World {
    pub(super) fn link_wanted(&self, link: usize) -> bool {
        let l = &self.net.links[link];
        let up = |i: usize| self.devices[i].present && self.devices[i].host.is_some();
        // One side's plan is enough: the other accepts the link its peer dialed (the node's `TheirPlan`).
        let plans = |me: usize, peer: usize| {
            self.devices[me]
                .plan
                .as_ref()
                .is_none_or(|p| p.contains(&self.devices[peer].key.public()))
        };
        up(l.a)
            && up(l.b)
            && !self.blocked.contains(&(l.a, l.b))
            && !self.blocked.contains(&(l.b, l.a))
            && (plans(l.a, l.b) || plans(l.b, l.a))
    }

    /// The site's shape over the devices `dev`'s directory replica trusts at its local time, as the node's linker
    /// computes it (`popmesh_device::topology::Topology::of_view`); shared between devices whose replicas agree.
    fn shape_of(&mut self, dev: usize) -> Option<Rc<Topology>> {
        let at = UnixMillis(self.local_ms(dev));
        let view = self.devices[dev].view.as_ref()?;
        let mut trusted: Vec<(popmesh_crdt::DeviceId, Role)> = view
            .trusted_devices(at)
            .into_iter()
            .map(|(d, r, _)| (d, r))
            .collect();
        trusted.sort();
        if let Some(shape) = self.shapes.get(&trusted) {
            return Some(shape.clone());
        }
        let shape = Rc::new(Topology::of(&trusted));
        if self.shapes.len() >= 512 {
            self.shapes.clear();
        }
        self.shapes.insert(trusted, shape.clone());
        Some(shape)
    }

    /// Re-plans `dev`'s links from its directory replica, as the node's linker does: dials what the plan newly
    /// names (adding the link to the simulated network if no plan named it before), and lets go of links neither
    /// side plans any more (the node closes those after `PRUNE_AFTER`; the simulator at once).
    pub(super) fn plan_links(&mut self, dev: usize) {
        let shape = self.shape_of(dev);
        let me = self.devices[dev].key.public();
        let plan = shape.as_ref().map(|t| t.links(&me));
        if let Some(host) = self.devices[dev].host.as_mut() {
            host.set_shape(shape.clone());
        }
        self.devices[dev].shape = shape;
        if plan == self.devices[dev].plan {
            return;
        }
        if let Some(planned) = &plan {
            let origin = self.devices.len() - 1;
            for peer in planned {
                let Some(other) = self.devices.iter().position(|o| o.key.public() == *peer) else {
                    continue;
                };
                if self.net.between(dev, other).is_none() {
                    let (a, b) = (dev.min(other), dev.max(other));
                    let seed = self.report.seed;
                    self.net.add(a, b, link_latency(seed, a, b, origin));
                    self.latency.push(link_rngs(seed, a, b));
                }
            }
        }
        self.devices[dev].plan = plan;
        let links: Vec<usize> = self.net.of_device(dev).collect();
        for link in links {
            let connected = self.net.links[link].conns.is_some();
            match (self.link_wanted(link), connected) {
                (true, false) => self.want_reconnect(link, 0),
                (false, true) => self.reset(link),
                _ => {}
            }
        }
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
            // The dialer waits as the node's mesh does after a closed connection (the device core's backoff).
            let now = Duration::from_millis(self.now);
            let l = &mut self.net.links[link];
            l.backoff.failed(now);
            let wait = l.backoff.next_at.saturating_sub(now).as_millis() as u64;
            self.want_reconnect(link, wait);
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
        let directory = self.directory.clone();
        let had_directory = self.devices[to]
            .host
            .as_ref()
            .is_some_and(|h| h.is_open(&directory));
        if self.devices[to].host.is_none() {
            return;
        }
        // The node's links judge every message before samod sees it (`popmesh_device::authorship`); no device in
        // this world writes what it may not, so a refusal is a false one: the rule would cut honest peers apart.
        if let Err(why) = self.judge(to, &msg) {
            self.violation(format!(
                "{} refused an honest peer's message: {why}",
                self.devices[to].name
            ));
            self.reset(link);
            return;
        }
        let Some(host) = self.devices[to].host.as_mut() else {
            return;
        };
        let rejected = host.receive(conn, msg, ts);
        // A device that has just received its first directory reads it (and re-checks its links) before it sends
        // anything on: peers it admitted on the certificate chain alone may be revoked. (The node's librarian
        // re-checks the mesh as soon as the directory opens; ARCHITECTURE.md says what window remains there.)
        if !had_directory && host.is_open(&directory) {
            self.refresh_directory(to);
        }
        if let Some(error) = rejected {
            self.violation(format!(
                "{} rejected a peer message: {error}",
                self.devices[to].name
            ));
        }
        self.route(to);
    }

    pub(super) fn reconnect(&mut self, link: usize) {
        self.net.links[link].reconnect_pending = false;
        if !self.link_wanted(link) || self.net.links[link].conns.is_some() {
            return;
        }
        let (a, b) = (self.net.links[link].a, self.net.links[link].b);
        // Both gates decide before anything reaches the sync engine, as the link's hello does in the node.
        if !self.admits(a, b) || !self.admits(b, a) {
            // Refused: blocked for the mesh's `BLOCK_FOR`, then tried again.
            self.report.links_refused += 1;
            self.want_reconnect(link, mesh_rules::BLOCK_FOR.as_millis() as u64);
            return;
        }
        let (ta, tb) = (self.ts(a), self.ts(b));
        // One connection per pair, dialed by the side the mesh's rule names (the smaller device id).
        let a_dials =
            mesh_rules::dials_first(&self.devices[a].key.public(), &self.devices[b].key.public());
        let (side_a, side_b) = if a_dials {
            (Side::Dialer, Side::Listener)
        } else {
            (Side::Listener, Side::Dialer)
        };
        let ca = self.devices[a]
            .host
            .as_mut()
            .expect("wanted link has both hosts")
            .open_connection(side_a, ta);
        let cb = self.devices[b]
            .host
            .as_mut()
            .expect("wanted link has both hosts")
            .open_connection(side_b, tb);
        self.net.connect(link, ca, cb);
        self.net.links[link].backoff.connected();
        self.check_link_trust(link);
        self.route(a);
        self.route(b);
    }

    /// Whether `me`'s gate admits `peer` now: the device core's `gate::admit`, on `me`'s directory replica (none
    /// yet on a device that has not synced it: then the certificate's chain alone decides, as in the node).
    pub(super) fn admits(&self, me: usize, peer: usize) -> bool {
        let p = &self.devices[peer];
        let Some(cert) = p.cert.as_ref() else {
            return false;
        };
        let bytes = cert.to_bytes();
        let site = self.authority.site().to_hex();
        let claim = gate::Claim {
            version: gate::HELLO_VERSION,
            site: &site,
            cert: &bytes,
        };
        let at = UnixMillis(self.local_ms(me));
        let view = self.devices[me].view.as_ref();
        gate::admit(
            &self.authority.public(),
            &p.key.public(),
            claim,
            at,
            view,
            self.mutations,
        )
        .is_ok()
    }

    /// Re-checks `dev`'s open links after its directory replica changed (a revocation merged): a peer its gate no
    /// longer admits is disconnected, as the node's mesh does when asked to re-check.
    pub(super) fn recheck_links(&mut self, dev: usize) {
        let links: Vec<(usize, usize)> = self.net.connected(dev).collect();
        for (link, peer) in links {
            if !self.admits(dev, peer) {
                self.report.links_refused += 1;
                self.reset(link);
            }
        }
    }

    /// A device that holds a revocation never links with the device it revokes, and no device links with one whose
    /// certificate does not chain to the site's authority.
    fn check_link_trust(&mut self, link: usize) {
        let (a, b) = (self.net.links[link].a, self.net.links[link].b);
        let (authority, site) = (self.authority.public(), self.authority.site());
        for (me, peer) in [(a, b), (b, a)] {
            let target = RevocationTarget::Device(self.devices[peer].key.public());
            let revokes = self.devices[me]
                .view
                .as_ref()
                .is_some_and(|v| v.revocation_of(target).is_some());
            let forged = self.devices[peer]
                .cert
                .as_ref()
                .is_none_or(|c| c.verify_chain(&authority, site).is_err());
            let (me, peer) = (
                self.devices[me].name.clone(),
                self.devices[peer].name.clone(),
            );
            if revokes {
                self.violation(format!(
                    "{me} linked with {peer}, which its directory revokes"
                ));
            }
            if forged {
                self.violation(format!(
                    "{me} linked with {peer}, whose certificate is not the site's"
                ));
            }
        }
    }
}
