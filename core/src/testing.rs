//! An in-process cluster driver with a perfect network, perfect disks and a perfect lease
//! service (quinn-proto's `Pair`, str0m's `progress` style): the seed of the simulator.
//!
//! It decides nothing about replication: it only executes what nodes output — delivering every
//! message exactly once in order, completing every I/O command immediately and successfully,
//! answering lease requests against one true clock — and records every event per node. Time moves
//! only when the test says so ([`Cluster::advance`]); nodes share the cluster's clock (no drift).
//! Faults are the simulator's job (`sim/`), which can reuse [`FakeDisk`] and [`FakeLease`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::ids::{ClusterId, DbName, Epoch, NodeId};
use crate::msg::Message;
use crate::node::{Config, Event, Input, IoCommand, IoErrorKind, IoKind, IoOutcome, LeaseKind, LeaseMode, LeaseRequest, LeaseResult, LocalCommit, Node, Output};
use crate::time::{Time, WallMs};

/// Most deliveries [`Cluster::run`] processes before declaring a livelock.
pub const STEPS_MAX: usize = 1_000_000;

/// One database on a fake disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskDb {
    pub image: Vec<u8>,
    pub ltx: BTreeMap<(u64, u64), Vec<u8>>,
    pub checksum_index: Option<Vec<u8>>,
}

/// A disk that executes every [`IoKind`] in memory, instantly and durably.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeDisk {
    pub dbs: BTreeMap<DbName, DiskDb>,
    /// Store a one-transaction LTX merged with the newest file before it while that file holds
    /// fewer than this many transactions ([`IoOutcome::LtxMerged`], as `ltxfs` does with the
    /// LTX of WAL-mode commits); 0: never.
    pub merge_txids_max: u64,
}

/// The LTX `prev` (ending at TXID `min_txid - 1`) and `next` merged into one, if `next`
/// continues `prev`'s chain (its pre-apply checksum is `prev`'s post-apply one).
pub fn merge_ltx(prev: &[u8], next: &[u8]) -> Option<Vec<u8>> {
    let (ph, _, pt) = crate::ltx::decode_slice(prev).ok()?;
    let (nh, _, _) = crate::ltx::decode_slice(next).ok()?;
    if ph.max_txid + 1 != nh.min_txid || pt.post_apply_checksum != nh.pre_apply_checksum || ph.page_size != nh.page_size {
        return None;
    }
    let decoders = vec![crate::ltx::Decoder::new(prev).ok()?, crate::ltx::Decoder::new(next).ok()?];
    let (bytes, _, _) = crate::ltx::compact(decoders, Vec::new(), nh.flags).ok()?;
    Some(bytes)
}

impl FakeDisk {
    pub fn execute(&mut self, kind: &IoKind) -> Result<IoOutcome, IoErrorKind> {
        let merge_txids_max = self.merge_txids_max;
        let db = self.dbs.entry(kind.db().clone()).or_default();
        match kind {
            IoKind::WriteLtx { min_txid, max_txid, bytes, .. } => {
                let prev = db.ltx.iter().next_back().map(|(r, b)| (*r, b));
                if let Some(((pmin, pmax), prev)) = prev.filter(|((pmin, pmax), _)| {
                    min_txid == max_txid && *pmin > 1 && pmax + 1 == *min_txid && pmax - pmin + 1 < merge_txids_max
                }) {
                    if let Some(merged) = merge_ltx(prev, bytes) {
                        db.ltx.remove(&(pmin, pmax));
                        db.ltx.insert((pmin, *max_txid), merged);
                        return Ok(IoOutcome::LtxMerged { min_txid: pmin });
                    }
                }
                db.ltx.insert((*min_txid, *max_txid), bytes.clone());
            }
            IoKind::ApplyPages { page_size, commit, pages, .. } => {
                let page_bytes = *page_size as usize;
                db.image.resize(*commit as usize * page_bytes, 0);
                for (pgno, data) in pages {
                    let at = (*pgno as usize - 1) * page_bytes;
                    db.image[at..at + page_bytes].copy_from_slice(data);
                }
            }
            IoKind::ReadLtx { files, .. } => {
                let read: Option<Vec<Vec<u8>>> = files.iter().map(|r| db.ltx.get(r).cloned()).collect();
                return read.map(IoOutcome::LtxFiles).ok_or(IoErrorKind::NotFound);
            }
            IoKind::ReadDatabase { .. } => return Ok(IoOutcome::Database(db.image.clone())),
            IoKind::DeleteLtx { files, .. } => {
                for r in files {
                    db.ltx.remove(r);
                }
            }
            IoKind::WriteChecksumIndex { bytes, .. } => db.checksum_index = Some(bytes.clone()),
        }
        Ok(IoOutcome::Done)
    }

    /// What SQLite does through the FUSE mount before a commit: write pages, resize the file.
    pub fn write_pages(&mut self, db: &DbName, page_size: u32, commit: u32, pages: &[(u32, Vec<u8>)]) {
        let kind = IoKind::ApplyPages { db: db.clone(), page_size, commit, pages: pages.to_vec() };
        self.execute(&kind).expect("the fake disk never fails");
    }
}

/// A lease service with one key: strictly increasing epochs, TTL expiry on the true clock,
/// handoff reservations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeLease {
    pub ttl: Duration,
    pub holder: Option<NodeId>,
    pub epoch: Epoch,
    pub expires_at: Time,
    pub reserved_for: Option<NodeId>,
}

impl FakeLease {
    pub fn new(ttl: Duration) -> FakeLease {
        FakeLease { ttl, holder: None, epoch: Epoch::ZERO, expires_at: Time::ZERO, reserved_for: None }
    }

    /// Drops the holder once its TTL has passed on the true clock.
    pub fn expire(&mut self, now: Time) {
        if self.holder.is_some() && now >= self.expires_at {
            self.holder = None;
        }
    }

    /// Handles one request at true time `now`.
    pub fn handle(&mut self, from: NodeId, kind: LeaseKind, now: Time) -> LeaseResult {
        self.expire(now);
        match kind {
            LeaseKind::Acquire => {
                let free = self.holder.is_none() && self.reserved_for.is_none_or(|r| r == from);
                if !free {
                    return LeaseResult::Denied { holder: self.holder, epoch: self.epoch };
                }
                self.epoch = Epoch(self.epoch.0 + 1);
                self.holder = Some(from);
                self.reserved_for = None;
                self.expires_at = now + self.ttl;
                LeaseResult::Granted { epoch: self.epoch, ttl: self.ttl }
            }
            LeaseKind::Renew { epoch } if self.holder == Some(from) && epoch == self.epoch => {
                self.expires_at = now + self.ttl;
                LeaseResult::Granted { epoch, ttl: self.ttl }
            }
            LeaseKind::Renew { .. } => LeaseResult::Lost,
            LeaseKind::Release { epoch } | LeaseKind::Handoff { epoch, .. } if self.holder != Some(from) || epoch != self.epoch => LeaseResult::Lost,
            LeaseKind::Release { .. } => {
                self.holder = None;
                LeaseResult::Released
            }
            LeaseKind::Handoff { to, .. } => {
                self.holder = None;
                self.reserved_for = Some(to);
                LeaseResult::Released
            }
        }
    }
}

/// One node of the cluster with its disk and the events it emitted.
#[derive(Debug)]
pub struct TestNode {
    pub node: Node,
    pub disk: FakeDisk,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone)]
enum Delivery {
    Message { from: NodeId, to: NodeId, bytes: Vec<u8> },
    Io { node: NodeId, command: IoCommand },
    Lease { node: NodeId, request: LeaseRequest },
    Watch { node: NodeId, holder: Option<NodeId>, epoch: Epoch },
}

/// Nodes, disks, a lease service and a FIFO of pending deliveries.
#[derive(Debug)]
pub struct Cluster {
    pub now: Time,
    pub nodes: BTreeMap<NodeId, TestNode>,
    pub lease: FakeLease,
    pending: VecDeque<Delivery>,
    /// Messages delivered so far.
    pub messages_delivered: u64,
    /// Cut links (both directions): messages across them are dropped.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Nodes that cannot reach the lease service (requests dropped, no watch).
    lease_unreachable: BTreeSet<NodeId>,
}

impl Cluster {
    /// `n` nodes with ids 1..=n; `configure` may change each node's config (all start as
    /// dynamic-lease candidates with a 1 s clock margin). Every pair is connected.
    pub fn new(n: u64, lease_ttl: Duration, configure: impl Fn(NodeId, &mut Config)) -> Cluster {
        let ids: BTreeSet<NodeId> = (1..=n).map(NodeId).collect();
        let mut nodes = BTreeMap::new();
        for &id in &ids {
            let peers = ids.iter().copied().filter(|p| *p != id).collect();
            let lease = LeaseMode::Dynamic { candidate: true, clock_margin: Duration::from_secs(1) };
            let mut config = Config::new(ClusterId(7), peers, lease);
            configure(id, &mut config);
            let node = Node::new(config, id, Time::ZERO);
            nodes.insert(id, TestNode { node, disk: FakeDisk::default(), events: Vec::new() });
        }
        let mut cluster = Cluster {
            now: Time::ZERO,
            nodes,
            lease: FakeLease::new(lease_ttl),
            pending: VecDeque::new(),
            messages_delivered: 0,
            cut: BTreeSet::new(),
            lease_unreachable: BTreeSet::new(),
        };
        for &a in &ids {
            for &b in &ids {
                if a != b {
                    cluster.input(a, Input::PeerConnected { peer: b });
                }
            }
        }
        cluster
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[&id].node
    }

    /// Feeds one input to a node and collects its outputs.
    pub fn input(&mut self, id: NodeId, input: Input) {
        let now = self.now;
        let t = self.nodes.get_mut(&id).expect("known node");
        t.node.handle_input(now, input).expect("the driver uses the API correctly");
        self.drain(id);
    }

    fn drain(&mut self, id: NodeId) {
        let t = self.nodes.get_mut(&id).expect("known node");
        while let Some(output) = t.node.poll_output() {
            match output {
                Output::Send { to, msg } => self.pending.push_back(Delivery::Message { from: id, to, bytes: msg.encode() }),
                Output::Io(command) => self.pending.push_back(Delivery::Io { node: id, command }),
                Output::Lease(request) => self.pending.push_back(Delivery::Lease { node: id, request }),
                Output::Event(e) => t.events.push(e),
            }
        }
    }

    /// Delivers pending messages, I/O and lease replies until nothing is pending.
    pub fn run(&mut self) {
        for _ in 0..STEPS_MAX {
            let Some(d) = self.pending.pop_front() else { return };
            self.deliver(d);
        }
        panic!("cluster did not quiesce within {STEPS_MAX} deliveries");
    }

    fn deliver(&mut self, d: Delivery) {
        match d {
            Delivery::Message { from, to, .. } if self.cut.contains(&(from, to)) => {}
            Delivery::Lease { node, .. } | Delivery::Watch { node, .. } if self.lease_unreachable.contains(&node) => {}
            Delivery::Message { from, to, bytes } => {
                let msg = Message::decode(&bytes).expect("nodes only send valid messages");
                self.messages_delivered += 1;
                self.input(to, Input::Receive { from, msg });
            }
            Delivery::Io { node, command } => {
                let result = self.nodes.get_mut(&node).expect("known").disk.execute(&command.kind);
                self.input(node, Input::IoDone { id: command.id, result });
            }
            Delivery::Lease { node, request } => {
                let before = (self.lease.holder, self.lease.epoch);
                let result = self.lease.handle(node, request.kind, self.now);
                self.input(node, Input::LeaseReply { id: request.id, result });
                if (self.lease.holder, self.lease.epoch) != before {
                    self.broadcast_watch();
                }
            }
            Delivery::Watch { node, holder, epoch } => self.input(node, Input::LeaseObserved { holder, epoch }),
        }
    }

    fn broadcast_watch(&mut self) {
        let (holder, epoch) = (self.lease.holder, self.lease.epoch);
        for &id in self.nodes.keys() {
            self.pending.push_back(Delivery::Watch { node: id, holder, epoch });
        }
    }

    /// Cuts the link between `a` and `b` both ways; both sides see a disconnection.
    pub fn cut(&mut self, a: NodeId, b: NodeId) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
        self.input(a, Input::PeerDisconnected { peer: b });
        self.input(b, Input::PeerDisconnected { peer: a });
    }

    /// Restores the link between `a` and `b`.
    pub fn heal(&mut self, a: NodeId, b: NodeId) {
        self.cut.remove(&(a, b));
        self.cut.remove(&(b, a));
        self.input(a, Input::PeerConnected { peer: b });
        self.input(b, Input::PeerConnected { peer: a });
    }

    /// Cuts `id` from every peer and from the lease service.
    pub fn isolate(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self.nodes.keys().copied().filter(|p| *p != id).collect();
        for p in others {
            self.cut(id, p);
        }
        self.lease_unreachable.insert(id);
    }

    /// Undoes [`Cluster::isolate`]; the node then sees the lease service's current state.
    pub fn rejoin(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self.nodes.keys().copied().filter(|p| *p != id).collect();
        for p in others {
            self.heal(id, p);
        }
        self.lease_unreachable.remove(&id);
        let (holder, epoch) = (self.lease.holder, self.lease.epoch);
        self.pending.push_back(Delivery::Watch { node: id, holder, epoch });
    }

    /// Moves time forward by `d`, firing every node timer on the way and running to quiescence
    /// after each.
    pub fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        self.run();
        for _ in 0..STEPS_MAX {
            let lease_expiry = self.lease.holder.map(|_| self.lease.expires_at);
            let next = self.nodes.values().filter_map(|t| t.node.poll_timeout()).chain(lease_expiry).min();
            let Some(next) = next.filter(|t| *t <= until) else { break };
            self.now = self.now.max(next);
            if lease_expiry.is_some_and(|t| t <= self.now) {
                self.lease.expire(self.now);
                self.broadcast_watch();
            }
            let due: Vec<NodeId> = self.nodes.iter().filter(|(_, t)| t.node.poll_timeout().is_some_and(|x| x <= self.now)).map(|(id, _)| *id).collect();
            for id in due {
                let now = self.now;
                self.nodes.get_mut(&id).expect("known").node.handle_timeout(now);
                self.drain(id);
            }
            self.run();
        }
        self.now = until;
    }

    /// The node that is currently primary and writable, if exactly one is.
    pub fn writable_primary(&self) -> Option<NodeId> {
        let writable: Vec<NodeId> = self.nodes.iter().filter(|(_, t)| t.node.is_writable(self.now)).map(|(id, _)| *id).collect();
        match writable.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// A transaction on `id`: SQLite writes `pages` (page number, fill byte) through the mount,
    /// then the node sees the commit. Runs to quiescence.
    pub fn commit(&mut self, id: NodeId, db: &DbName, page_size: u32, commit: u32, pages: &[(u32, u8)]) {
        let pages: Vec<(u32, Vec<u8>)> = pages.iter().map(|&(p, fill)| (p, vec![fill; page_size as usize])).collect();
        let t = self.nodes.get_mut(&id).expect("known");
        t.disk.write_pages(db, page_size, commit, &pages);
        let wall = WallMs(1_700_000_000_000 + self.now.as_millis() as i64);
        self.input(id, Input::LocalCommit(LocalCommit { db: db.clone(), page_size, commit, pages, wall, wal: None }));
        self.run();
    }

    /// Every event of `id` matching `f`.
    pub fn events_of(&self, id: NodeId, f: impl Fn(&Event) -> bool) -> Vec<Event> {
        self.nodes[&id].events.iter().filter(|e| f(e)).cloned().collect()
    }
}
