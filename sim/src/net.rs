//! The simulated network: who can talk to whom, and when a message arrives.
//!
//! Per-link latency is a minimum plus an exponential tail (with rare spikes); messages can be lost,
//! duplicated, and — unless the link is FIFO — reordered by their independent delays. Partitions
//! are given as groups: two participants can talk iff some group holds both, and a participant
//! named in no group keeps all its links. One-way blocks cut a single direction. A clogged
//! participant's messages are held (not lost) until it is unclogged — FoundationDB's swizzle
//! clogs a few nodes one by one and unclogs them in random order.
//!
//! Connectivity is checked when a message is sent and again when it arrives (a partition breaks
//! the connection that carried it). This module decides delays and drops; the world owns the
//! event queue.

use std::collections::{BTreeMap, BTreeSet};

use crate::clock::TrueUs;
use crate::machine::Peer;
use crate::rng::Rng;

/// Network quality knobs; a random run derives them from its seed.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConfig {
    pub latency_us_min: u64,
    pub latency_us_mean_extra: u64,
    pub loss: f64,
    pub duplicate: f64,
    /// False: each link delivers in send order (a TCP stream); true: independent delays.
    pub reorder: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig { latency_us_min: 500, latency_us_mean_extra: 1_500, loss: 0.0, duplicate: 0.0, reorder: false }
    }
}

#[derive(Debug, Clone)]
pub struct Network {
    pub config: NetConfig,
    groups: Option<Vec<BTreeSet<Peer>>>,
    blocked: BTreeSet<(Peer, Peer)>,
    clogged: BTreeSet<Peer>,
    /// Last scheduled arrival per directed link, for FIFO links.
    last_arrival: BTreeMap<(Peer, Peer), TrueUs>,
}

impl Network {
    pub fn new(config: NetConfig) -> Network {
        Network { config, groups: None, blocked: BTreeSet::new(), clogged: BTreeSet::new(), last_arrival: BTreeMap::new() }
    }

    pub fn partition(&mut self, groups: Vec<BTreeSet<Peer>>) {
        self.groups = Some(groups);
    }

    pub fn block_oneway(&mut self, from: Peer, to: Peer) {
        self.blocked.insert((from, to));
    }

    pub fn clog(&mut self, who: Peer) {
        self.clogged.insert(who);
    }

    pub fn unclog(&mut self, who: Peer) {
        self.clogged.remove(&who);
    }

    pub fn is_clogged(&self, from: Peer, to: Peer) -> bool {
        self.clogged.contains(&from) || self.clogged.contains(&to)
    }

    /// Ends every partition, one-way block and clog.
    pub fn heal(&mut self) {
        self.groups = None;
        self.blocked.clear();
        self.clogged.clear();
    }

    pub fn connected(&self, from: Peer, to: Peer) -> bool {
        if from == to {
            return true;
        }
        if self.blocked.contains(&(from, to)) {
            return false;
        }
        let Some(groups) = &self.groups else { return true };
        let in_any = |p: Peer| groups.iter().any(|g| g.contains(&p));
        if !in_any(from) || !in_any(to) {
            return true;
        }
        groups.iter().any(|g| g.contains(&from) && g.contains(&to))
    }

    /// Arrival times for one send (empty if dropped; two if duplicated).
    pub fn schedule(&mut self, rng: &mut Rng, now: TrueUs, from: Peer, to: Peer) -> Arrivals {
        self.schedule_on(rng, now, from, to, false)
    }

    /// Arrival times for one send; `stream`: on an ordered stream (TCP), which never duplicates
    /// or reorders, whatever the link does to datagrams (a loss breaks the stream instead).
    pub fn schedule_on(&mut self, rng: &mut Rng, now: TrueUs, from: Peer, to: Peer, stream: bool) -> Arrivals {
        let mut arrivals = Arrivals { at: [0; 2], len: 0 };
        if !self.connected(from, to) || rng.chance(self.config.loss) {
            return arrivals;
        }
        let duplicated = rng.chance(self.config.duplicate);
        let copies = if duplicated && !stream { 2 } else { 1 };
        for _ in 0..copies {
            let mut delay = self.config.latency_us_min + rng.exponential(self.config.latency_us_mean_extra as f64);
            if rng.chance(0.001) {
                delay += rng.range(10_000, 200_000); // latency spike
            }
            let mut at = now + delay.max(1);
            if !self.config.reorder || stream {
                let last = self.last_arrival.entry((from, to)).or_insert(0);
                at = at.max(*last + 1);
                *last = at;
            }
            arrivals.at[arrivals.len] = at;
            arrivals.len += 1;
        }
        arrivals
    }
}

/// The arrival instants of one message: none (lost), one, or two (duplicated), in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrivals {
    at: [TrueUs; 2],
    len: usize,
}

impl Arrivals {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl IntoIterator for Arrivals {
    type Item = TrueUs;
    type IntoIter = std::iter::Take<std::array::IntoIter<TrueUs, 2>>;

    fn into_iter(self) -> Self::IntoIter {
        self.at.into_iter().take(self.len)
    }
}

impl std::ops::Index<usize> for Arrivals {
    type Output = TrueUs;

    fn index(&self, index: usize) -> &TrueUs {
        assert!(index < self.len, "arrival {index} of {}", self.len);
        &self.at[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(peers: &[Peer]) -> BTreeSet<Peer> {
        peers.iter().copied().collect()
    }

    #[test]
    fn groups_decide_connectivity_and_unlisted_peers_keep_links() {
        let mut net = Network::new(NetConfig::default());
        let (n1, n2, n3) = (Peer::Node(0), Peer::Node(1), Peer::Node(2));
        net.partition(vec![group(&[n1]), group(&[n2, Peer::Lease])]);
        assert!(!net.connected(n1, n2));
        assert!(!net.connected(n1, Peer::Lease));
        assert!(net.connected(n2, Peer::Lease));
        assert!(net.connected(n3, n1), "n3 is in no group");
        net.heal();
        assert!(net.connected(n1, n2));
    }

    #[test]
    fn overlapping_groups_and_oneway_blocks() {
        let mut net = Network::new(NetConfig::default());
        let (n1, n2, n3) = (Peer::Node(0), Peer::Node(1), Peer::Node(2));
        net.partition(vec![group(&[n1, n2]), group(&[n2, n3])]);
        assert!(net.connected(n1, n2));
        assert!(net.connected(n2, n3));
        assert!(!net.connected(n1, n3));
        net.heal();
        net.block_oneway(n1, n2);
        assert!(!net.connected(n1, n2));
        assert!(net.connected(n2, n1));
    }

    #[test]
    fn fifo_links_never_reorder() {
        let mut net = Network::new(NetConfig::default());
        let mut rng = Rng::new(3, "net");
        let mut last = 0;
        for i in 0..200 {
            let at = net.schedule(&mut rng, i * 10, Peer::Node(0), Peer::Node(1));
            assert_eq!(at.len(), 1);
            assert!(at[0] > last);
            last = at[0];
        }
    }
}
