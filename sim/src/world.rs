//! The world: one discrete-event loop that owns every source of nondeterminism.
//!
//! Events are ordered by (true time, sequence number); each is handled to completion — deliver
//! one input to one node, drain that node's outputs into the network, disk and lease service,
//! re-arm its timer — before the next. Nodes see only their own local clock. The run has two
//! phases (TigerBeetle's VOPR): safety (workload, scripted and random faults, invariants after
//! every event) until `duration_ms`; then liveness: everything is healed and the cluster must
//! converge within `liveness_ms`.
//!
//! This module decides the order of events and carries out faults; it never decides anything a
//! node decides, and it never reads the host's clock or entropy.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use crate::checker::{Checker, Invariant, Violation};
use crate::clock::{NodeClock, TrueUs};
use crate::disk::SimDisk;
use crate::lease::LeaseService;
use crate::machine::{
    DbId, IoKind, IoValue, LeaseOp, LtxMerge, LeaseResult, Machine, MachineConfig, MachineEvent, MachineInput, MachineOutput,
    MachineView, NodeIdx, Peer,
};
use crate::net::Network;
use crate::rng::Rng;
use crate::scenario::{Action, Scenario};
use crate::trace::Trace;
use crate::workload::{self, History, OpKind, Outcome, Session};

/// Upper bound on events in one run; exceeding it is reported (a livelock or a timer storm).
pub const EVENTS_MAX: u64 = 20_000_000;
/// Outputs drained after one input, at most (a bounded loop).
const OUTPUTS_PER_STEP_MAX: usize = 100_000;
/// How often quiescent nodes are checked against their pages, and liveness is evaluated.
const SWEEP_US: u64 = 50_000;
/// Client write queue per (node, db): SQLite's writers waiting for the lock.
const WRITE_QUEUE_MAX: usize = 8;
/// Client sessions.
const SESSIONS: u32 = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Running,
    Paused,
    Crashed,
}

enum Ev<Msg> {
    Deliver { from: NodeIdx, from_inc: u32, to: NodeIdx, to_inc: u32, gen: u64, msg: Msg },
    /// A message on the stream (a, b) was lost: the stream breaks (TCP reset).
    StreamBreak { a: NodeIdx, b: NodeIdx },
    LeaseRequest { from: NodeIdx, inc: u32, id: u64, op: LeaseOp },
    LeaseReply { to: NodeIdx, inc: u32, id: u64, result: LeaseResult },
    Timer { node: NodeIdx, token: u64 },
    /// `synced_at`: the command may be stored merged ([`LtxMerge::Try`]); if it is, the merged
    /// file is durable at this instant, before `done_at` (when the replaced file is unlinked).
    IoWritten { node: NodeIdx, inc: u32, id: u64, done_at: TrueUs, synced_at: Option<TrueUs> },
    /// A merged LTX file is durable (and the commit point of a local commit passed); the file it
    /// replaced is still there until the command completes.
    IoSynced { node: NodeIdx, inc: u32, id: u64 },
    IoDone { node: NodeIdx, inc: u32, id: u64, failed: Option<crate::machine::IoError> },
    Step(usize),
    ClientWrite,
    ClientRead,
    Sweep,
    Heal,
    Probe,
    /// SQLite's write lock is free again on (node, db): hand over the next waiting write.
    WriteReady { node: NodeIdx, db: DbId },
    /// The lease client gives up on request `id`.
    LeaseTimeout { node: NodeIdx, inc: u32, id: u64 },
    /// The lease service's watch fires (periodically, and reports changes).
    LeaseWatch { tick: u64 },
    LeaseObserved { to: NodeIdx, inc: u32, holder: Option<NodeIdx>, epoch: u64 },
}

/// The scheduled events. Events run in (true time, sequence number) order; sequence numbers are
/// unique, so the order is total. The heap holds only that key and the event's slot in `slab`
/// (events are large, and a heap moves its entries on every push and pop); freed slots are
/// reused, and since no two keys are equal the slot index never decides the order.
struct EventQueue<Msg> {
    heap: BinaryHeap<Reverse<(TrueUs, u64, u32)>>,
    slab: Vec<Option<Ev<Msg>>>,
    free: Vec<u32>,
}

impl<Msg> EventQueue<Msg> {
    fn new() -> Self {
        EventQueue { heap: BinaryHeap::new(), slab: Vec::new(), free: Vec::new() }
    }

    fn push(&mut self, at: TrueUs, seq: u64, ev: Ev<Msg>) {
        let slot = match self.free.pop() {
            Some(slot) => {
                debug_assert!(self.slab[slot as usize].is_none());
                self.slab[slot as usize] = Some(ev);
                slot
            }
            None => {
                let slot = u32::try_from(self.slab.len()).expect("fewer than 2^32 pending events");
                self.slab.push(Some(ev));
                slot
            }
        };
        self.heap.push(Reverse((at, seq, slot)));
    }

    /// The earliest event and its time.
    fn pop(&mut self) -> Option<(TrueUs, Ev<Msg>)> {
        let Reverse((at, _, slot)) = self.heap.pop()?;
        let ev = self.slab[slot as usize].take().expect("a queued slot holds its event");
        self.free.push(slot);
        Some((at, ev))
    }
}

/// How long the lease client waits for an answer before reporting an error.
const LEASE_TIMEOUT_US: u64 = 500_000;
/// Period of the lease watch; every tenth tick re-sends the state even if unchanged.
const LEASE_WATCH_US: u64 = 100_000;

/// A client write waiting for SQLite's write lock: (history op index, the input to deliver).
type WaitingWrite<Msg> = (usize, MachineInput<Msg>);

struct Slot<M: Machine> {
    machine: Option<M>,
    clock: NodeClock,
    disk: SimDisk,
    status: Status,
    incarnation: u32,
    inbox: Vec<MachineInput<M::Msg>>,
    timer: Option<(TrueUs, u64)>,
    io: crate::pending::Pending<IoKind>,
    disk_free_at: TrueUs,
    /// Lease requests waiting for an answer.
    lease_pending: std::collections::BTreeSet<u64>,
    /// Client writes handed to the node, per db, oldest first (op indices).
    writes_in_node: BTreeMap<String, VecDeque<usize>>,
    /// Client writes waiting for SQLite's write lock, per db.
    writes_waiting: BTreeMap<String, VecDeque<WaitingWrite<M::Msg>>>,
}

/// The summary of one run.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub name: String,
    pub seed: u64,
    pub commits: u64,
    pub failovers: u64,
    pub lost_acked_writes: u64,
    pub simulated_us: u64,
    pub events: u64,
    pub trace_hash: u64,
    pub violation: Option<Violation>,
    pub trace_tail: Vec<String>,
    pub trace_full: Option<Vec<String>>,
    pub writes_ok: u64,
    pub writes_failed: u64,
    pub writes_unknown: u64,
    pub reads: u64,
    /// LTX writes the disks stored merged ([`crate::scenario::MergeLtx`]).
    pub merged_ltx: u64,
    /// Snapshots replicas applied.
    pub snapshots: u64,
}

pub struct World<M: Machine> {
    scenario: Scenario,
    now: TrueUs,
    seq: u64,
    queue: EventQueue<M::Msg>,
    slots: Vec<Slot<M>>,
    net: Network,
    lease: LeaseService,
    rng_net: Rng,
    rng_disk: Rng,
    rng_work: Rng,
    /// Which LTX writes the disks store merged, and how long the unlink after a merge takes
    /// (a stream of its own: runs without merging draw nothing from it).
    rng_merge: Rng,
    /// LTX writes the disks stored merged.
    merged_ltx: u64,
    config: MachineConfig,
    sessions: Vec<Session>,
    pub history: History,
    pub checker: Checker,
    pub trace: Trace,
    healed: bool,
    converged: bool,
    /// Streams that are up, as (lower, higher) node pairs, with a generation per pair: messages
    /// sent on an older generation are lost.
    streams: BTreeMap<(NodeIdx, NodeIdx), (bool, u64)>,
    last_observed: Option<(Option<NodeIdx>, u64)>,
    probe_ok: bool,
    commits: u64,
    /// While a local commit is being handed to a node: the database file before its pages.
    commit_undo: Option<(NodeIdx, crate::disk::DbUndo)>,
    /// Local commits handed to nodes so far (makes every commit's pages unique).
    commit_seq: u64,
    /// Per directed node link: messages arriving before this instant wait for it (a held
    /// message of an ordered stream holds back the ones behind it).
    stream_hold: BTreeMap<(NodeIdx, NodeIdx), TrueUs>,
    /// The view taken after each step (a buffer reused across steps).
    step_view: MachineView,
}

fn ms(value: u64) -> u64 {
    value * 1000
}

impl<M: Machine> World<M> {
    pub fn new(scenario: Scenario, trace_full: bool, trace_tail: bool) -> World<M> {
        let seed = scenario.seed;
        let nodes = scenario.nodes;
        let mut rng_clock = Rng::new(seed, "clock");
        let config = MachineConfig {
            cluster_size: nodes,
            lease_ttl_ms: scenario.lease_ttl_ms,
            sync_replicas: scenario.sync_replicas,
            seed: Rng::new(seed, "node").next_u64(),
            planted: scenario.planted.clone(),
            other_cluster: scenario.other_cluster.clone(),
            compress_ltx: scenario.compress_ltx,
        };
        let slots = (0..nodes)
            .map(|_| Slot {
                machine: None,
                // Arbitrary per-node clock origin: node clocks are not comparable.
                clock: NodeClock::new(rng_clock.range(1_000_000, 1_000_000_000), 0),
                disk: SimDisk::default(),
                status: Status::Crashed,
                incarnation: 0,
                inbox: Vec::new(),
                timer: None,
                io: crate::pending::Pending::default(),
                disk_free_at: 0,
                lease_pending: std::collections::BTreeSet::new(),
                writes_in_node: BTreeMap::new(),
                writes_waiting: BTreeMap::new(),
            })
            .collect();
        let mut rng_work = Rng::new(seed, "workload");
        let sessions = (0..SESSIONS)
            .map(|_| Session { believed_primary: rng_work.below(u64::from(nodes)) as NodeIdx, outstanding: None })
            .collect();
        let mut world = World {
            net: Network::new(scenario.network.clone()),
            lease: LeaseService::new(scenario.lease_ttl_ms),
            rng_net: Rng::new(seed, "net"),
            rng_disk: Rng::new(seed, "disk"),
            rng_work,
            rng_merge: Rng::new(seed, "merge"),
            merged_ltx: 0,
            config,
            sessions,
            // Sized for the whole run: every client request of the safety phase is recorded.
            history: History::with_capacity(
                (u64::from(scenario.workload.writes_per_s) + u64::from(scenario.workload.reads_per_s)) * scenario.duration_ms / 1000,
            ),
            checker: Checker::new(nodes),
            trace: Trace::new(trace_full, trace_tail),
            now: 0,
            seq: 0,
            queue: EventQueue::new(),
            slots,
            healed: false,
            converged: false,
            streams: BTreeMap::new(),
            last_observed: None,
            probe_ok: false,
            commits: 0,
            commit_undo: None,
            commit_seq: 0,
            stream_hold: BTreeMap::new(),
            step_view: MachineView::default(),
            scenario,
        };
        // Faults happen before `duration_ms` only; a step at or after it is ignored (the world
        // heals then).
        for index in 0..world.scenario.steps.len() {
            let at_ms = world.scenario.steps[index].at_ms;
            if at_ms < world.scenario.duration_ms {
                world.push(ms(at_ms), Ev::Step(index));
            }
        }
        world.push(ms(world.scenario.duration_ms), Ev::Heal);
        world.push(SWEEP_US, Ev::Sweep);
        world.push(LEASE_WATCH_US, Ev::LeaseWatch { tick: 1 });
        world.schedule_client_write();
        world.schedule_client_read();
        for node in 0..nodes {
            world.start_node(node);
        }
        world
    }

    fn push(&mut self, at: TrueUs, ev: Ev<M::Msg>) {
        self.seq += 1;
        self.queue.push(at.max(self.now), self.seq, ev);
    }

    fn local(&self, node: NodeIdx) -> u64 {
        self.slots[usize::from(node)].clock.local(self.now)
    }

    fn schedule_client_write(&mut self) {
        let rate = self.scenario.workload.writes_per_s;
        if rate > 0 && !self.healed {
            let gap = self.rng_work.exponential(1_000_000.0 / f64::from(rate)).max(1);
            self.push(self.now + gap, Ev::ClientWrite);
        }
    }

    fn schedule_client_read(&mut self) {
        let rate = self.scenario.workload.reads_per_s;
        if rate > 0 && !self.healed {
            let gap = self.rng_work.exponential(1_000_000.0 / f64::from(rate)).max(1);
            self.push(self.now + gap, Ev::ClientRead);
        }
    }

    /// Runs to the end: a violation, or convergence after healing, or the liveness deadline.
    pub fn run(mut self) -> RunReport {
        let deadline = ms(self.scenario.duration_ms + self.scenario.liveness_ms);
        while self.checker.violation.is_none() && !self.converged {
            let Some((at, ev)) = self.queue.pop() else { break };
            if at > deadline {
                break;
            }
            assert!(at >= self.now, "time never runs backwards");
            self.now = at;
            if self.trace.events >= EVENTS_MAX {
                self.checker.fail(Invariant::Crash, self.now, format!("event budget of {EVENTS_MAX} exceeded"));
                break;
            }
            self.handle(ev);
        }
        if self.checker.violation.is_none() {
            if self.converged {
                self.final_checks();
            } else {
                let why = self.liveness_problem().unwrap_or_else(|| "event queue ran dry".into());
                self.checker.fail(
                    Invariant::Liveness,
                    self.now,
                    format!("not converged {} ms after healing: {why}", self.scenario.liveness_ms),
                );
            }
        }
        self.report()
    }

    fn report(self) -> RunReport {
        let count = |f: &dyn Fn(&Outcome) -> bool| {
            self.history.count(|op| matches!(op.kind, OpKind::Write { .. }) && f(&op.outcome)) as u64
        };
        RunReport {
            name: self.scenario.name.clone(),
            seed: self.scenario.seed,
            commits: self.commits,
            failovers: self.checker.failovers(),
            lost_acked_writes: self.checker.lost_acked_writes,
            simulated_us: self.now,
            events: self.trace.events,
            trace_hash: self.trace.hash(),
            violation: self.checker.violation.clone(),
            trace_tail: self.trace.tail(),
            writes_ok: count(&|o| matches!(o, Outcome::Ok { .. })),
            writes_failed: count(&|o| matches!(o, Outcome::Failed(_))),
            writes_unknown: count(&|o| matches!(o, Outcome::Unknown)),
            reads: self.history.count(|op| matches!(op.kind, OpKind::Read { .. })) as u64,
            merged_ltx: self.merged_ltx,
            snapshots: self.checker.snapshot_resets,
            trace_full: self.trace.full,
        }
    }

    fn handle(&mut self, ev: Ev<M::Msg>) {
        match ev {
            Ev::StreamBreak { a, b } => {
                let key = (a.min(b), a.max(b));
                if self.streams.get(&key).is_some_and(|(up, _)| *up) {
                    self.set_stream(key, false);
                }
            }
            Ev::Deliver { from, from_inc, to, to_inc, gen, msg } => {
                let slot = &self.slots[usize::from(to)];
                let same_stream = !M::STREAMS || self.streams.get(&(from.min(to), from.max(to))) == Some(&(true, gen));
                let alive = same_stream
                    && slot.incarnation == to_inc
                    && self.slots[usize::from(from)].incarnation == from_inc;
                let connected = self.net.connected(Peer::Node(from), Peer::Node(to));
                if !alive || !connected {
                    return;
                }
                // A held message holds back every later one of its stream (FIFO): same instant,
                // later sequence number.
                let hold = self.stream_hold.get(&(from, to)).copied().unwrap_or(0);
                if self.net.is_clogged(Peer::Node(from), Peer::Node(to)) || (M::STREAMS && self.now < hold) {
                    let at = if self.now < hold { hold } else { self.now + 10_000 };
                    self.stream_hold.insert((from, to), at);
                    self.push(at, Ev::Deliver { from, from_inc, to, to_inc, gen, msg });
                    return;
                }
                let d = M::msg_digest(&msg);
                self.trace.record(self.now, &(1u8, from, to, d), || {
                    let mut text = format!("n{} -> n{} {}", from + 1, to + 1, M::msg_text(&msg));
                    if text.len() > 200 {
                        let mut cut = 200;
                        while !text.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        text.truncate(cut);
                        text.push_str("...");
                    }
                    text
                });
                self.input(to, MachineInput::Receive { from, msg });
            }
            Ev::LeaseRequest { from, inc, id, op } => {
                if !self.net.connected(Peer::Node(from), Peer::Lease) {
                    return;
                }
                if self.net.is_clogged(Peer::Node(from), Peer::Lease) {
                    self.push(self.now + 10_000, Ev::LeaseRequest { from, inc, id, op });
                    return;
                }
                let result = self.lease.handle(self.now, from, &op);
                self.trace.record(self.now, &(2u8, from, &op, &result), || format!("lease <- n{} {op:?} => {result:?}", from + 1));
                for at in self.net.schedule(&mut self.rng_net, self.now, Peer::Lease, Peer::Node(from)) {
                    self.push(at, Ev::LeaseReply { to: from, inc, id, result: result.clone() });
                }
            }
            Ev::LeaseReply { to, inc, id, result } => {
                if self.slots[usize::from(to)].incarnation != inc || !self.net.connected(Peer::Lease, Peer::Node(to)) {
                    return;
                }
                if !self.slots[usize::from(to)].lease_pending.contains(&id) {
                    return; // a duplicate, or the client already gave up
                }
                if self.net.is_clogged(Peer::Lease, Peer::Node(to)) {
                    self.push(self.now + 10_000, Ev::LeaseReply { to, inc, id, result });
                    return;
                }
                self.trace.record(self.now, &(3u8, to, id), || format!("n{} <- lease {result:?}", to + 1));
                self.slots[usize::from(to)].lease_pending.remove(&id);
                self.input(to, MachineInput::LeaseReply { id, result });
            }
            Ev::LeaseTimeout { node, inc, id } => {
                let slot = &mut self.slots[usize::from(node)];
                if slot.incarnation == inc && slot.lease_pending.remove(&id) {
                    self.trace.record(self.now, &(11u8, node, id), || format!("n{} lease request {id} timed out", node + 1));
                    self.input(node, MachineInput::LeaseReply { id, result: LeaseResult::Error });
                }
            }
            Ev::LeaseWatch { tick } => {
                self.push(self.now + LEASE_WATCH_US, Ev::LeaseWatch { tick: tick + 1 });
                let observed = self.lease.observed(self.now);
                if self.last_observed != Some(observed) || tick % 10 == 0 {
                    self.last_observed = Some(observed);
                    for to in 0..self.scenario.nodes {
                        let inc = self.slots[usize::from(to)].incarnation;
                        for at in self.net.schedule(&mut self.rng_net, self.now, Peer::Lease, Peer::Node(to)) {
                            self.push(at, Ev::LeaseObserved { to, inc, holder: observed.0, epoch: observed.1 });
                        }
                    }
                }
            }
            Ev::LeaseObserved { to, inc, holder, epoch } => {
                if self.slots[usize::from(to)].incarnation == inc && self.net.connected(Peer::Lease, Peer::Node(to)) {
                    self.trace.record(self.now, &(14u8, to, holder, epoch), || format!("n{} <- watch {holder:?} epoch {epoch}", to + 1));
                    self.input(to, MachineInput::LeaseObserved { holder, epoch });
                }
            }
            Ev::Timer { node, token } => {
                let slot = &mut self.slots[usize::from(node)];
                if slot.timer.map(|(_, t)| t) != Some(token) || slot.status != Status::Running {
                    return;
                }
                slot.timer = None;
                let local = self.local(node);
                self.trace.record(self.now, &(4u8, node), || format!("n{} timeout", node + 1));
                if let Some(machine) = self.slots[usize::from(node)].machine.as_mut() {
                    machine.handle_timeout(local);
                }
                self.after_call(node, false);
            }
            Ev::IoWritten { node, inc, id, done_at, synced_at } => {
                let slot = &mut self.slots[usize::from(node)];
                if slot.incarnation != inc {
                    return;
                }
                let Some(kind) = slot.io.get_mut(id) else { return };
                if let Some(synced_at) = synced_at {
                    if slot.disk.write_merged(kind, M::merge_stored_ltx) {
                        self.merged_ltx += 1;
                        if let IoKind::WriteFile { path, .. } = &*kind {
                            let text = path.to_string();
                            self.trace.record(self.now, &(15u8, node, id), || format!("n{} io {id} stored merged as {text}", node + 1));
                        }
                        self.push(synced_at, Ev::IoSynced { node, inc, id });
                        self.push(done_at, Ev::IoDone { node, inc, id, failed: None });
                        return;
                    }
                }
                let result = slot.disk.write_taking(kind);
                self.push(done_at, Ev::IoDone { node, inc, id, failed: result.err() });
            }
            Ev::IoSynced { node, inc, id } => {
                let slot = &mut self.slots[usize::from(node)];
                if slot.incarnation != inc {
                    return;
                }
                let Some(kind) = slot.io.get_mut(id) else { return };
                slot.disk.fsync(kind);
                // The commit point: the merged file holds the commit durably.
                if let IoKind::WriteFile { commit_of: Some(db), .. } = &*kind {
                    let db = db.clone();
                    slot.disk.sync_db(&db);
                }
            }
            Ev::IoDone { node, inc, id, failed } => {
                let slot = &mut self.slots[usize::from(node)];
                if slot.incarnation != inc {
                    return;
                }
                let Some(kind) = slot.io.remove(id) else { return };
                let commit_of = match &kind {
                    IoKind::WriteFile { commit_of: Some(db), .. } => Some(&**db),
                    _ => None,
                };
                let result = match failed {
                    Some(error) => {
                        // The commit's LTX is not durable: SQLite rolls back from its journal.
                        if let Some(db) = commit_of {
                            slot.disk.rollback_db(db);
                        }
                        Err(error)
                    }
                    None => {
                        slot.disk.fsync(&kind);
                        // The commit point: the journal goes, the client's pages are durable.
                        if let Some(db) = commit_of {
                            slot.disk.sync_db(db);
                        }
                        match &kind {
                            // Stored merged (durable since `IoSynced`): the replaced file goes.
                            IoKind::WriteFile { merge: LtxMerge::Stored { min_txid, replaced }, .. } => {
                                slot.disk.remove_file(replaced);
                                Ok(IoValue::Merged { min_txid: *min_txid })
                            }
                            _ => slot.disk.read(&kind),
                        }
                    }
                };
                self.trace.record(self.now, &(5u8, node, id, result.is_ok()), || format!("n{} io {id} done {:?}", node + 1, result.as_ref().err()));
                self.input(node, MachineInput::IoDone { id, result });
            }
            Ev::Step(index) => {
                let step = self.scenario.steps[index].clone();
                self.trace.record(self.now, &(6u8, index), || format!("step {:?}", step.action));
                self.apply(&step.action);
            }
            Ev::ClientWrite => {
                self.schedule_client_write();
                let session = self.rng_work.below(u64::from(SESSIONS)) as u32;
                let db = workload::DBS[usize::from(self.rng_work.chance(0.2))];
                self.client_write(session, db);
            }
            Ev::ClientRead => {
                self.schedule_client_read();
                self.client_read();
            }
            Ev::Sweep => {
                self.push(self.now + SWEEP_US, Ev::Sweep);
                if self.healed {
                    for node in 0..self.scenario.nodes {
                        self.restart_if_halted(node);
                    }
                }
                // Broken streams reconnect here.
                self.refresh_streams();
                self.sweep();
            }
            Ev::Heal => self.heal(),
            Ev::WriteReady { node, db } => self.next_waiting_write(node, db),
            Ev::Probe => {
                if !self.probe_ok && !self.converged {
                    self.push(self.now + 250_000, Ev::Probe);
                    let session = self.rng_work.below(u64::from(SESSIONS)) as u32;
                    self.client_write(session, workload::DBS[0]);
                }
            }
        }
    }

    /// Delivers an input to a node, queueing it while the node is paused.
    fn input(&mut self, node: NodeIdx, input: MachineInput<M::Msg>) {
        let slot = &mut self.slots[usize::from(node)];
        match slot.status {
            Status::Crashed => {}
            Status::Paused => slot.inbox.push(input),
            Status::Running => self.deliver(node, input),
        }
    }

    /// Hands an input to a running node and drains it. A local commit is preceded by what
    /// SQLite does through the mount: it writes the transaction's pages into the database file
    /// (visible, not durable before the commit point); if the node refuses the commit on the spot
    /// the pages are rolled back.
    fn deliver(&mut self, node: NodeIdx, mut input: MachineInput<M::Msg>) {
        let slot = &mut self.slots[usize::from(node)];
        if let MachineInput::LocalCommit { db, page_size, commit, pages, .. } = &mut input {
            let current = slot.disk.db(db).map(|f| f.commit).unwrap_or(0);
            self.commit_seq += 1;
            (*commit, *pages) = workload::write_pages(&mut self.rng_work, self.commit_seq, current);
            let undo = slot.disk.write_pages_undoable(db, *page_size, *commit, pages);
            self.commit_undo = Some((node, undo));
        }
        let local = slot.clock.local(self.now);
        slot.machine.as_mut().expect("running node has a machine").handle_input(local, input);
        self.after_call(node, false);
        self.commit_undo = None;
    }

    /// Drains a node's outputs and re-arms its timer.
    fn after_call(&mut self, node: NodeIdx, restarted: bool) {
        let n = usize::from(node);
        let mut drained = 0;
        loop {
            let Some(machine) = self.slots[n].machine.as_mut() else { return };
            let Some(output) = machine.poll_output() else { break };
            drained += 1;
            assert!(drained <= OUTPUTS_PER_STEP_MAX, "n{} produced unbounded output", node + 1);
            self.output(node, output);
        }
        let slot = &self.slots[n];
        let machine = slot.machine.as_ref().expect("machine present");
        let view = &mut self.step_view;
        machine.view_into(view);
        self.checker.after_step(node, view, restarted);
        if view.writable {
            let deadline = view.deadline_local_us.map(|local| slot.clock.true_at(self.now, local));
            self.checker.check_writable(self.now, node, view.epoch, deadline, &self.lease);
        }
        let want = machine.poll_timeout().map(|local| slot.clock.true_at(self.now, local));
        if want != slot.timer.map(|(at, _)| at) {
            match want {
                Some(at) => {
                    self.seq += 1;
                    let token = self.seq;
                    self.slots[n].timer = Some((at, token));
                    self.queue.push(at.max(self.now), token, Ev::Timer { node, token });
                }
                None => self.slots[n].timer = None,
            }
        }
    }

    fn output(&mut self, node: NodeIdx, output: MachineOutput<M::Msg>) {
        let inc = self.slots[usize::from(node)].incarnation;
        match output {
            MachineOutput::Send { to, msg } => {
                if usize::from(to) >= self.slots.len() {
                    return;
                }
                let to_inc = self.slots[usize::from(to)].incarnation;
                let key = (node.min(to), node.max(to));
                let gen = match self.streams.get(&key) {
                    Some(&(true, gen)) => gen,
                    _ if !M::STREAMS => 0,
                    _ => return,
                };
                let arrivals = self.net.schedule_on(&mut self.rng_net, self.now, Peer::Node(node), Peer::Node(to), M::STREAMS);
                if arrivals.is_empty() && M::STREAMS {
                    // Lost on a stream: the connection breaks (not re-entrantly).
                    self.push(self.now, Ev::StreamBreak { a: node, b: to });
                }
                // Duplicates get copies; the last arrival takes the message itself.
                let mut msg = Some(msg);
                let count = arrivals.len();
                for (i, at) in arrivals.into_iter().enumerate() {
                    let msg = if i + 1 == count { msg.take().expect("moved once") } else { msg.clone().expect("not yet moved") };
                    self.push(at, Ev::Deliver { from: node, from_inc: inc, to, to_inc, gen, msg });
                }
            }
            MachineOutput::Lease { id, op } => {
                self.slots[usize::from(node)].lease_pending.insert(id);
                self.push(self.now + LEASE_TIMEOUT_US, Ev::LeaseTimeout { node, inc, id });
                for at in self.net.schedule(&mut self.rng_net, self.now, Peer::Node(node), Peer::Lease) {
                    self.push(at, Ev::LeaseRequest { from: node, inc, id, op: op.clone() });
                }
            }
            MachineOutput::Io { id, mut kind } => {
                // One disk per node, one command at a time: commands complete in the order issued.
                let slot = &mut self.slots[usize::from(node)];
                let failure = slot.disk.take_failure();
                let start = self.now.max(slot.disk_free_at);
                let write_at = start + self.rng_disk.range(20, 300);
                let fsync = matches!(kind, IoKind::WriteFile { fsync: true, .. } | IoKind::WritePages { fsync: true, .. });
                let mut done_at = write_at + if fsync { self.rng_disk.range(500, 4_000) } else { 10 };
                // A write the binding allows to merge: merged with the seeded probability. The
                // unlink of the replaced file takes a while after the merged file is durable.
                let mut synced_at = None;
                if let (IoKind::WriteFile { merge: merge @ LtxMerge::Allowed, .. }, Some(m)) = (&mut kind, &self.scenario.merge_ltx) {
                    if failure.is_none() && self.rng_merge.chance(m.probability) {
                        *merge = LtxMerge::Try { txids_max: m.txids_max };
                        synced_at = Some(done_at);
                        // Unlink and directory fsync.
                        done_at += self.rng_merge.range(100, 2_000);
                    }
                }
                slot.disk_free_at = done_at;
                slot.io.insert(id, kind);
                match failure {
                    Some(error) => self.push(write_at, Ev::IoDone { node, inc, id, failed: Some(error) }),
                    None => self.push(write_at, Ev::IoWritten { node, inc, id, done_at, synced_at }),
                }
            }
            MachineOutput::Event(event) => {
                self.trace.record(self.now, &(7u8, node, &event), || format!("n{} event {event:?}", node + 1));
                self.checker.on_event(self.now, node, &event, &self.lease);
                if self.scenario.other_cluster.contains(&node)
                    && matches!(event, MachineEvent::Applied { .. } | MachineEvent::SnapshotReset { .. })
                {
                    let detail = format!("n{} belongs to another cluster but applied {event:?}", node + 1);
                    self.checker.fail(Invariant::PrefixConsistency, self.now, detail);
                }
                if let MachineEvent::Committed { db, txid, .. } = &event {
                    // Invariant 4 at its source: an acknowledged commit's LTX is durable.
                    // (Merged or not, the file holding it ends at `txid`.)
                    if self.slots[usize::from(node)].disk.is_ltx_unsynced(db, *txid) {
                        let detail = format!("n{} acknowledged {db} txid {txid} before its LTX file was durable", node + 1);
                        self.checker.fail(Invariant::Durability, self.now, detail);
                    }
                }
                self.client_outcome(node, &event);
            }
        }
    }

    fn client_outcome(&mut self, node: NodeIdx, event: &MachineEvent) {
        let (db, outcome) = match event {
            MachineEvent::Committed { db, txid, checksum, .. } => {
                self.commits += 1;
                (db, Outcome::Ok { txid: *txid, checksum: *checksum })
            }
            MachineEvent::CommitUnknown { db } => (db, Outcome::Unknown),
            MachineEvent::WriteRejected { db, reason } => {
                // Refused on the spot: SQLite rolls its pages back from the journal.
                if let Some((n, before)) = self.commit_undo.take() {
                    if n == node && before.db() == &**db {
                        self.slots[usize::from(node)].disk.undo_pages(before);
                    } else {
                        self.commit_undo = Some((n, before));
                    }
                }
                (db, Outcome::Failed(reason.clone()))
            }
            _ => return,
        };
        let slot = &mut self.slots[usize::from(node)];
        let Some(op) = slot.writes_in_node.get_mut(&**db).and_then(|q| q.pop_front()) else { return };
        self.finish_write(op, outcome);
        // Not re-entrantly: the node is still in the middle of its step.
        self.push(self.now, Ev::WriteReady { node, db: db.clone() });
    }

    fn finish_write(&mut self, op: usize, outcome: Outcome) {
        let session = self.history.ops[op].session as usize;
        let node = self.history.ops[op].node;
        if self.healed && matches!(outcome, Outcome::Ok { .. }) {
            self.probe_ok = true;
        }
        if !matches!(outcome, Outcome::Ok { .. }) {
            // Try another node next time.
            let nodes = self.scenario.nodes;
            self.sessions[session].believed_primary = (node + 1) % nodes;
        }
        self.history.complete(op, outcome, self.now);
        self.sessions[session].outstanding = None;
    }

    fn next_waiting_write(&mut self, node: NodeIdx, db: DbId) {
        let slot = &mut self.slots[usize::from(node)];
        if slot.writes_in_node.get(&*db).is_some_and(|q| !q.is_empty()) {
            return;
        }
        let Some((op, input)) = slot.writes_waiting.get_mut(&*db).and_then(|q| q.pop_front()) else { return };
        match slot.writes_in_node.get_mut(&*db) {
            Some(queue) => queue.push_back(op),
            None => {
                slot.writes_in_node.insert(db.to_string(), VecDeque::from([op]));
            }
        }
        self.input(node, input);
    }

    fn client_write(&mut self, session: u32, db: &'static str) {
        if self.sessions[session as usize].outstanding.is_some() {
            return;
        }
        let node = self.sessions[session as usize].believed_primary;
        let op = self.history.invoke(session, node, OpKind::Write { db }, self.now);
        self.sessions[session as usize].outstanding = Some(op);
        let slot = &self.slots[usize::from(node)];
        if slot.status == Status::Crashed {
            self.finish_write(op, Outcome::Failed("node down".into()));
            return;
        }
        // The pages are chosen when the node gets the commit ([`World::deliver`]): SQLite writes
        // them against the database as it is then.
        let input = MachineInput::LocalCommit {
            db,
            page_size: workload::PAGE_SIZE,
            commit: 0,
            pages: Vec::new(),
            wall_ms: 1_700_000_000_000 + self.now / 1000,
        };
        self.trace.record(self.now, &(8u8, node, op), || format!("client s{session} write op {op} -> n{} {db}", node + 1));
        let slot = &mut self.slots[usize::from(node)];
        let busy = slot.writes_in_node.get(db).is_some_and(|q| !q.is_empty());
        if busy {
            let waiting = slot.writes_waiting.entry(db.to_string()).or_default();
            if waiting.len() >= WRITE_QUEUE_MAX {
                self.finish_write(op, Outcome::Failed("busy".into()));
            } else {
                waiting.push_back((op, input));
            }
            return;
        }
        match slot.writes_in_node.get_mut(db) {
            Some(queue) => queue.push_back(op),
            None => {
                slot.writes_in_node.insert(db.to_string(), VecDeque::from([op]));
            }
        }
        self.input(node, input);
    }

    fn client_read(&mut self) {
        // A uniform pick among the running nodes without disk commands in flight (the draw
        // `Rng::pick` makes over their list, without building the list).
        let slots = &self.slots;
        let ready = move |n: &NodeIdx| slots[usize::from(*n)].status == Status::Running && slots[usize::from(*n)].io.is_empty();
        let count = (0..self.scenario.nodes).filter(ready).count();
        if count == 0 {
            return;
        }
        let pick = self.rng_work.below(count as u64) as usize;
        let node = (0..self.scenario.nodes).filter(ready).nth(pick).expect("pick < count");
        let db = workload::DBS[usize::from(self.rng_work.chance(0.3))];
        let session = self.rng_work.below(u64::from(SESSIONS)) as u32;
        let slot = &self.slots[usize::from(node)];
        let view = &mut self.step_view;
        slot.machine.as_ref().expect("running").view_into(view);
        let checksum = slot.disk.db_checksum(db);
        let position = view.positions.iter().find(|(d, ..)| **d == *db);
        let txid = position.map(|(_, t, c)| if *c == checksum { *t } else { 0 });
        let op = self.history.invoke(session, node, OpKind::Read { db }, self.now);
        self.history.complete(op, Outcome::Ok { txid: txid.unwrap_or(0), checksum }, self.now);
        if let (Some((id, ..)), Some(txid)) = (position, txid.filter(|t| *t > 0)) {
            self.checker.on_read(self.now, node, id, txid, checksum);
        }
    }

    /// Brings stream `key` up or down, bumping its generation (in-flight messages are lost) and
    /// telling both live ends.
    fn set_stream(&mut self, key: (NodeIdx, NodeIdx), up: bool) {
        let entry = self.streams.entry(key).or_insert((false, 0));
        entry.0 = up;
        entry.1 += 1;
        self.trace.record(self.now, &(12u8, key, up), || format!("stream n{}-n{} {}", key.0 + 1, key.1 + 1, if up { "up" } else { "down" }));
        for (end, peer) in [(key.0, key.1), (key.1, key.0)] {
            if !M::STREAMS || self.slots[usize::from(end)].status == Status::Crashed {
                continue;
            }
            let input = if up { MachineInput::PeerConnected { peer } } else { MachineInput::PeerDisconnected { peer } };
            self.input(end, input);
        }
    }

    /// A stream between two nodes is up iff both run (or are paused) and can reach each other
    /// both ways. Called after every change of processes or network, and periodically (so a
    /// stream broken by a lost message reconnects).
    fn refresh_streams(&mut self) {
        let nodes = self.scenario.nodes;
        let mut changes = Vec::new();
        for a in 0..nodes {
            for b in a + 1..nodes {
                let alive = |n: NodeIdx| self.slots[usize::from(n)].status != Status::Crashed;
                let want = alive(a)
                    && alive(b)
                    && self.net.connected(Peer::Node(a), Peer::Node(b))
                    && self.net.connected(Peer::Node(b), Peer::Node(a));
                let have = self.streams.get(&(a, b)).is_some_and(|(up, _)| *up);
                if want != have {
                    changes.push(((a, b), want));
                }
            }
        }
        for (key, up) in changes {
            self.set_stream(key, up);
        }
    }

    fn start_node(&mut self, node: NodeIdx) {
        let local = self.local(node);
        let slot = &mut self.slots[usize::from(node)];
        assert_eq!(slot.status, Status::Crashed);
        slot.machine = Some(M::start(&self.config, node, local, &mut slot.disk));
        slot.status = Status::Running;
        self.trace.record(self.now, &(9u8, node), || format!("n{} started", node + 1));
        self.after_call(node, true);
        self.refresh_streams();
    }

    fn crash(&mut self, node: NodeIdx) {
        let slot = &mut self.slots[usize::from(node)];
        if slot.status == Status::Crashed {
            return;
        }
        slot.machine = None;
        slot.status = Status::Crashed;
        slot.incarnation += 1;
        slot.disk.crash();
        slot.inbox.clear();
        slot.io.clear();
        slot.lease_pending.clear();
        slot.timer = None;
        let in_node: Vec<usize> = std::mem::take(&mut slot.writes_in_node).into_values().flatten().collect();
        let waiting: Vec<usize> =
            std::mem::take(&mut slot.writes_waiting).into_values().flatten().map(|(op, _)| op).collect();
        for op in in_node {
            self.finish_write(op, Outcome::Unknown);
        }
        for op in waiting {
            self.finish_write(op, Outcome::Failed("node down".into()));
        }
        self.refresh_streams();
    }

    fn pause(&mut self, node: NodeIdx) {
        let slot = &mut self.slots[usize::from(node)];
        if slot.status == Status::Running {
            slot.status = Status::Paused;
        }
    }

    fn resume(&mut self, node: NodeIdx) {
        let slot = &mut self.slots[usize::from(node)];
        if slot.status != Status::Paused {
            return;
        }
        slot.status = Status::Running;
        slot.timer = None;
        let inbox = std::mem::take(&mut slot.inbox);
        for input in inbox {
            if self.slots[usize::from(node)].status != Status::Running {
                break;
            }
            self.deliver(node, input);
        }
        let local = self.local(node);
        if let Some(machine) = self.slots[usize::from(node)].machine.as_mut() {
            machine.handle_timeout(local);
            self.after_call(node, false);
        }
    }

    pub fn apply(&mut self, action: &Action) {
        match action {
            Action::Pause { node } => self.pause(*node),
            Action::Resume { node } => self.resume(*node),
            Action::Crash { node } => self.crash(*node),
            Action::Restart { node } => {
                self.crash(*node);
                self.start_node(*node);
            }
            Action::Partition { groups } => self.net.partition(groups.clone()),
            Action::Heal => self.net.heal(),
            Action::Clock { node, offset_ms, drift_ppm } => {
                let now = self.now;
                let clock = &mut self.slots[usize::from(*node)].clock;
                if let Some(drift) = drift_ppm {
                    clock.set_drift(now, *drift);
                }
                if let Some(offset) = offset_ms {
                    clock.set_offset(now, offset * 1000);
                }
            }
            Action::LeaseRevoke => self.lease.revoke(self.now),
            Action::Handoff { node } => {
                // The admin request goes to the current primary (whoever the lease names).
                if let Some((_, record)) = self.lease.live(self.now) {
                    let holder = record.holder;
                    self.input(holder, MachineInput::Handoff { to: *node });
                }
            }
            Action::DiskFault { node, kind } => self.slots[usize::from(*node)].disk.arm(*kind, 3),
            Action::Clog { node } => self.net.clog(*node),
            Action::Unclog { node } => self.net.unclog(*node),
            Action::Block { from, to } => self.net.block_oneway(*from, *to),
        }
        self.refresh_streams();
    }

    /// End of the safety phase: heal everything, stop the random workload, start probing.
    fn heal(&mut self) {
        self.trace.record(self.now, &10u8, || "heal: liveness phase".to_string());
        self.healed = true;
        self.net.heal();
        self.refresh_streams();
        for node in 0..self.scenario.nodes {
            self.slots[usize::from(node)].disk.disarm();
            match self.slots[usize::from(node)].status {
                Status::Paused => self.resume(node),
                Status::Crashed => self.start_node(node),
                Status::Running => {}
            }
            self.restart_if_halted(node);
        }
        self.push(self.now + 1, Ev::Probe);
    }

    /// A database stopped by an error stays stopped until its node restarts (the core's
    /// documented limit): once the faults end, the operator restarts such a node — at the heal,
    /// or later when an I/O issued before the heal fails after it (its error was drawn then).
    fn restart_if_halted(&mut self, node: NodeIdx) {
        let slot = &self.slots[usize::from(node)];
        let halted = slot.status == Status::Running && slot.machine.as_ref().is_some_and(|m| !m.view().halted.is_empty());
        if halted {
            self.trace.record(self.now, &(13u8, node), || format!("n{} restarted: a database had halted", node + 1));
            self.crash(node);
            self.start_node(node);
        }
    }

    fn sweep(&mut self) {
        for node in 0..self.scenario.nodes {
            let slot = &self.slots[usize::from(node)];
            if slot.status != Status::Running || !slot.io.is_empty() {
                continue;
            }
            // The step view's buffer, reused (a fresh view allocated its lists every sweep).
            slot.machine.as_ref().expect("running").view_into(&mut self.step_view);
            self.checker.sweep(self.now, node, &self.step_view, &slot.disk);
        }
        if self.healed && self.liveness_problem().is_none() {
            self.converged = true;
        }
    }

    fn views(&self) -> Vec<Option<MachineView>> {
        self.slots.iter().map(|s| s.machine.as_ref().map(|m| m.view())).collect()
    }

    /// Invariant 5 (liveness): after healing, the cluster has converged when exactly one node is
    /// a writable primary, holding the lease service's live epoch; every node is running and at
    /// the primary's position for every database; a fresh write has been acknowledged after
    /// healing; and no client request is pending. Returns what is still missing.
    fn liveness_problem(&self) -> Option<String> {
        if let Some(op) = self.history.pending().next() {
            return Some(format!("client request {} ({:?}) to n{} still pending", op.id, op.kind, op.node + 1));
        }
        if !self.probe_ok {
            return Some("no write acknowledged since healing".into());
        }
        let views = self.views();
        let primaries: Vec<usize> =
            (0..views.len()).filter(|i| views[*i].as_ref().is_some_and(|v| v.primary && v.writable)).collect();
        let members = |i: &usize| !self.scenario.other_cluster.contains(&(*i as NodeIdx));
        if primaries.len() != 1 {
            return Some(format!("{} writable primaries", primaries.len()));
        }
        let primary = primaries[0];
        let pview = views[primary].as_ref().expect("primary has a view");
        match self.lease.live(self.now) {
            Some((epoch, record)) if usize::from(record.holder) == primary && epoch == pview.epoch => {}
            _ => return Some(format!("n{} is primary without holding the live lease", primary + 1)),
        }
        for (i, view) in views.iter().enumerate().filter(|(i, _)| members(i)) {
            let Some(view) = view else { return Some(format!("n{} not running", i + 1)) };
            for position in &pview.positions {
                if !view.positions.contains(position) {
                    return Some(format!("n{} is not at the primary's position {:?}", i + 1, position));
                }
            }
        }
        None
    }

    fn final_checks(&mut self) {
        let views = self.views();
        let live: Vec<NodeIdx> = (0..self.scenario.nodes).filter(|n| views[usize::from(*n)].is_some()).collect();
        self.checker.check_no_divergence(self.now, &live);
        let finals = views
            .iter()
            .flatten()
            .find(|v| v.primary && v.writable)
            .map(|v| v.positions.clone())
            .unwrap_or_default();
        self.checker.check_durability(self.now, &self.history, &finals, self.scenario.sync_replicas);
        if self.checker.violation.is_some() {
            return;
        }
        let expect = self.scenario.expect.clone();
        if let Some(max) = expect.lost_acked_writes {
            if self.checker.lost_acked_writes > max {
                let lost = self.checker.lost_acked_writes;
                self.checker.fail(Invariant::Expectation, self.now, format!("lost_acked_writes = {lost} > {max}"));
            }
        }
        if let Some(min) = expect.min_cluster_mismatches {
            let seen = self.checker.cluster_mismatches;
            if seen < min {
                self.checker.fail(Invariant::Expectation, self.now, format!("cluster mismatches = {seen} < {min}"));
            }
        }
        if let Some(max) = expect.max_snapshots {
            let seen = self.checker.snapshot_resets;
            if seen > max {
                self.checker.fail(Invariant::Expectation, self.now, format!("snapshots applied = {seen} > {max}"));
            }
        }
        if let Some(min) = expect.min_merged_ltx {
            if self.merged_ltx < min {
                let merged = self.merged_ltx;
                self.checker.fail(Invariant::Expectation, self.now, format!("merged LTX writes = {merged} < {min}"));
            }
        }
        if let Some(min) = expect.min_failovers {
            let failovers = self.checker.failovers();
            if failovers < min {
                self.checker.fail(Invariant::Expectation, self.now, format!("failovers = {failovers} < {min}"));
            }
        }
    }
}
