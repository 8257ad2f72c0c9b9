//! The simulated site network: one link per pair of devices, carrying samod wire messages in order.
//!
//! The Automerge sync protocol assumes in-order delivery within a connection, so the network never reorders or
//! silently drops inside a connection. Loss, partitions and crashes all end the connection instead: both hubs are
//! told the connection was lost (they reload sync state from scratch on the next one), in-flight messages are
//! discarded, and the link reconnects after a backoff once it may. Which device dials is fixed (the lower index),
//! so there is never a duplicate connection between two devices.

use std::collections::BTreeMap;

use samod_core::ConnectionId;

/// How a link's messages are delayed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub base_ms: u64,
    pub jitter_ms: u64,
}

/// One direction of a link, as seen from its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the lower-index device to the higher.
    Up,
    /// From the higher-index device to the lower.
    Down,
}

/// A connection between devices `a < b`.
#[derive(Debug, Clone)]
pub struct Link {
    pub a: usize,
    pub b: usize,
    pub latency: Latency,
    /// The current connection, if up: (a's connection id, b's connection id).
    pub conns: Option<(ConnectionId, ConnectionId)>,
    /// Bumped on every reset, so messages of an old connection are discarded on arrival.
    pub epoch: u64,
    /// Last scheduled arrival per direction, to keep each direction in order.
    pub last_arrival: [u64; 2],
    /// A reconnect is already scheduled.
    pub reconnect_pending: bool,
    /// When the dialing side tries again after a reset: the device core's rule (`popmesh_device::links`), in
    /// simulated time.
    pub backoff: popmesh_device::links::Backoff<std::time::Duration>,
    /// Messages sent per direction over the link's life: with the link and direction, a message's place in the
    /// event order, independent of the order in which the sync engine emitted messages for different links.
    pub sent: [u64; 2],
    /// Messages and bytes carried.
    pub messages: u64,
    pub bytes: u64,
}

impl Link {
    pub fn new(a: usize, b: usize, latency: Latency) -> Self {
        debug_assert!(a < b);
        Self {
            a,
            b,
            latency,
            conns: None,
            epoch: 0,
            last_arrival: [0; 2],
            reconnect_pending: false,
            backoff: popmesh_device::links::Backoff::new(
                std::time::Duration::ZERO,
                std::time::Duration::ZERO,
            ),
            sent: [0; 2],
            messages: 0,
            bytes: 0,
        }
    }

    /// The direction from `sender`.
    pub fn dir_from(&self, sender: usize) -> Dir {
        if sender == self.a { Dir::Up } else { Dir::Down }
    }

    /// The receiving device and its connection id for a message travelling `dir`.
    pub fn receiver(&self, dir: Dir) -> Option<(usize, ConnectionId)> {
        let (ca, cb) = self.conns?;
        Some(match dir {
            Dir::Up => (self.b, cb),
            Dir::Down => (self.a, ca),
        })
    }

    /// When a message sent now travelling `dir` arrives: after its delay, and never before an earlier one.
    pub fn schedule(&mut self, dir: Dir, now: u64, delay_ms: u64) -> u64 {
        let i = match dir {
            Dir::Up => 0,
            Dir::Down => 1,
        };
        let at = (now + delay_ms).max(self.last_arrival[i]);
        self.last_arrival[i] = at;
        at
    }

    /// Ends the connection; returns the connection ids to report lost, if it was up.
    pub fn reset(&mut self) -> Option<(ConnectionId, ConnectionId)> {
        self.epoch += 1;
        self.last_arrival = [0; 2];
        self.conns.take()
    }
}

/// The links of the site: one per pair of devices the topology connects, with indexes to find them.
#[derive(Debug, Clone, Default)]
pub struct Network {
    pub links: Vec<Link>,
    by_pair: BTreeMap<(usize, usize), usize>,
    by_device: Vec<Vec<usize>>,
    by_conn: BTreeMap<(usize, u32), usize>,
}

impl Network {
    /// Links for each pair in `pairs` (each `(a, b)` with `a < b`).
    pub fn new(
        devices: usize,
        pairs: &[(usize, usize)],
        mut latency: impl FnMut(usize, usize) -> Latency,
    ) -> Self {
        let mut net = Self {
            by_device: vec![Vec::new(); devices],
            ..Self::default()
        };
        for &(a, b) in pairs {
            let i = net.links.len();
            net.links.push(Link::new(a, b, latency(a, b)));
            net.by_pair.insert((a, b), i);
            net.by_device[a].push(i);
            net.by_device[b].push(i);
        }
        net
    }

    /// Adds the link between `a` and `b` (`a < b`), which the topology now names; returns its index.
    pub fn add(&mut self, a: usize, b: usize, latency: Latency) -> usize {
        let i = self.links.len();
        self.links.push(Link::new(a, b, latency));
        self.by_pair.insert((a, b), i);
        self.by_device[a].push(i);
        self.by_device[b].push(i);
        i
    }

    /// The link between two devices, if the topology connects them.
    pub fn between(&self, x: usize, y: usize) -> Option<usize> {
        self.by_pair.get(&(x.min(y), x.max(y))).copied()
    }

    /// The link whose connection on `device`'s side is `conn`.
    pub fn by_conn(&self, device: usize, conn: ConnectionId) -> Option<usize> {
        self.by_conn.get(&(device, u32::from(conn))).copied()
    }

    /// Links touching `device`.
    pub fn of_device(&self, device: usize) -> impl Iterator<Item = usize> + '_ {
        self.by_device[device].iter().copied()
    }

    /// The links of `device` that are connected now, each with the device at its other end.
    pub fn connected(&self, device: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.of_device(device)
            .filter(|l| self.links[*l].conns.is_some())
            .map(move |l| {
                let link = &self.links[l];
                (l, if link.a == device { link.b } else { link.a })
            })
    }

    /// Records a new connection on `link`.
    pub fn connect(&mut self, link: usize, ca: ConnectionId, cb: ConnectionId) {
        let (a, b) = (self.links[link].a, self.links[link].b);
        self.links[link].conns = Some((ca, cb));
        self.by_conn.insert((a, u32::from(ca)), link);
        self.by_conn.insert((b, u32::from(cb)), link);
    }

    /// Ends the connection on `link`; returns its connection ids if it was up.
    pub fn reset(&mut self, link: usize) -> Option<(ConnectionId, ConnectionId)> {
        let (a, b) = (self.links[link].a, self.links[link].b);
        let conns = self.links[link].reset()?;
        self.by_conn.remove(&(a, u32::from(conns.0)));
        self.by_conn.remove(&(b, u32::from(conns.1)));
        Some(conns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connected_pair_has_exactly_one_link_and_finds_it() {
        let pairs = [(0, 1), (0, 2), (1, 3)];
        let mut net = Network::new(4, &pairs, |_, _| Latency {
            base_ms: 1,
            jitter_ms: 0,
        });
        assert_eq!(net.links.len(), 3);
        assert_eq!(net.between(3, 1), Some(2));
        assert_eq!(net.between(2, 3), None);
        assert_eq!(net.of_device(0).collect::<Vec<_>>(), vec![0, 1]);
        net.connect(2, ConnectionId::from(7), ConnectionId::from(9));
        assert_eq!(net.by_conn(3, ConnectionId::from(9)), Some(2));
        assert!(net.reset(2).is_some());
        assert_eq!(net.by_conn(3, ConnectionId::from(9)), None);
    }

    #[test]
    fn a_direction_never_delivers_out_of_order() {
        let mut link = Link::new(
            0,
            1,
            Latency {
                base_ms: 5,
                jitter_ms: 5,
            },
        );
        let first = link.schedule(Dir::Up, 100, 9);
        let second = link.schedule(Dir::Up, 101, 1);
        assert!(second >= first);
    }
}
