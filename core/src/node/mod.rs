//! The node state machine: one value per node that turns inputs (peer messages, lease replies,
//! I/O completions, local commits, admin requests, time) into outputs (messages, I/O commands,
//! lease requests, events).
//!
//! It decides everything about replication: who may write and until when (lease deadline), what
//! LTX a commit becomes and when it is durable, what a replica accepts and applies, what a
//! lagging peer is sent, when a new primary may start writing (recovery phase), which files
//! retention deletes. It never performs I/O, never reads a clock and never blocks: every effect
//! is an [`Output`] the driver carries out, every fact an [`Input`] the driver reports.
//!
//! # Driving contract (quinn-proto / str0m style)
//! 1. Call [`Node::handle_input`] or [`Node::handle_timeout`] with the current [`Time`]
//!    (monotonic, never decreasing).
//! 2. Drain [`Node::poll_output`] until it returns `None` before the next `handle_*` call
//!    (debug builds assert it).
//! 3. Ask [`Node::poll_timeout`] and call `handle_timeout` once that time is reached.
//!
//! Handlers are split by concern, one private submodule each: `lease` (roles and deadlines),
//! `primary` (write path, acks, handoff), `serve` (catch-up of peers), `replica` (applying LTX),
//! `recovery` (the new primary's recovery phase), `housekeeping` (retention, index persistence,
//! start-up loading). `api` holds the public vocabulary, re-exported here.
//!
//! # What the driver must guarantee
//! - I/O commands of one database are executed in the order emitted; completions may interleave
//!   across databases. `WriteLtx` completes only once the file is durable.
//! - `Send` may be dropped while the peer is disconnected; report connectivity changes with
//!   `PeerConnected` / `PeerDisconnected` (the node re-sends stream requests and queries then).
//!   Messages between two connected nodes arrive in order (one ordered stream per pair).
//! - Lease replies echo the request id; `LeaseObserved` reports the lease service's watch.
//!
//! # Known limits
//! - LTX files, snapshots and database images travel in memory (`Vec<u8>`); the size of one
//!   incoming file is bounded by `Config::ltx_bytes_max`.
//! - A replica notices a dead primary through the lease watch or a disconnection, not through
//!   missing heartbeats.
//! - A database stopped by a checksum mismatch or an I/O failure stays stopped until the node is
//!   restarted (events say why).

/// `planted!(self, Name)`: whether the planted bug `Name` is switched on; always false unless
/// the `planted-bugs` feature is compiled in.
macro_rules! planted {
    ($node:ident, $bug:ident) => {{
        #[cfg(feature = "planted-bugs")]
        let on = $node.config.planted.is_on(crate::planted::PlantedBug::$bug);
        #[cfg(not(feature = "planted-bugs"))]
        let on = false;
        on
    }};
}

mod api;
mod db;
mod housekeeping;
mod lease;
mod primary;
mod recovery;
mod replica;
mod serve;

pub use api::*;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::ids::{DbName, Epoch, NodeId};
use crate::ltx::Pos;
use crate::msg::{DbPos, Message};
use crate::time::{Time, WallAnchor};

use db::Db;
use lease::{LeaseSent, RoleState};
use serve::Follower;

/// Most outputs queued between two drains; exceeding it is a bug (an unbounded fan-out).
pub const OUTPUT_QUEUE_MAX: usize = 1 << 16;

/// What an outstanding I/O command is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IoPurpose {
    Commit { db: DbName },
    ReplicaWriteLtx { db: DbName },
    ReplicaDeleteReplaced { db: DbName },
    ReplicaApply { db: DbName },
    CatchUpRead { peer: NodeId, db: DbName, from: Option<crate::ltx::Pos>, files: Vec<(u64, u64)> },
    SnapshotRead { peer: NodeId, db: DbName },
    LoadIndex { db: DbName },
    /// Start-up repair of a database found behind its newest LTX: reading that file.
    RepairRead { db: DbName },
    /// Start-up repair: writing that file's pages again.
    RepairApply { db: DbName },
    Housekeeping { db: DbName },
}

/// The I/O commands in flight and what each is for, oldest first. Ids are issued in increasing
/// order and commands mostly complete in that order, so a queue searched from the front serves
/// as the map; it keeps its room when it empties (a B-tree map allocated a node for the first
/// entry and freed it with the last, several times per replicated commit).
#[derive(Debug, Default)]
struct InFlightIo {
    entries: VecDeque<(IoId, IoPurpose)>,
}

impl InFlightIo {
    /// Records a new command; its id must be above every id issued before.
    fn push(&mut self, id: IoId, purpose: IoPurpose) {
        assert!(self.entries.back().is_none_or(|(last, _)| *last < id), "I/O ids are unique and increasing");
        self.entries.push_back((id, purpose));
    }

    /// Takes the command `id` out, if it is in flight.
    fn remove(&mut self, id: IoId) -> Option<IoPurpose> {
        let at = self.entries.iter().position(|(issued, _)| *issued == id)?;
        self.entries.remove(at).map(|(_, purpose)| purpose)
    }
}

/// One ltxfs node. See the module docs for the driving contract.
#[derive(Debug)]
pub struct Node {
    config: Config,
    id: NodeId,
    now: Time,
    wall: WallAnchor,
    role: RoleState,
    /// The highest epoch this node has accepted from anyone (never decreases).
    highest_epoch: Epoch,
    /// The primary this node follows, if known.
    upstream: Option<NodeId>,
    /// The epoch this node had when it last asked its upstream for a stream: a newer lease of
    /// the same upstream means that primary stepped down in between and dropped its followers.
    stream_epoch: Epoch,
    connected: BTreeSet<NodeId>,
    dbs: BTreeMap<DbName, Db>,
    /// LTX files being reassembled from chunks, per database.
    partials: BTreeMap<DbName, db::Partial>,
    followers: BTreeMap<NodeId, Follower>,
    io: InFlightIo,
    lease_requests: BTreeMap<LeaseRequestId, LeaseSent>,
    next_io: u64,
    next_lease_request: u64,
    /// When a candidate without a known primary next tries to acquire.
    acquire_at: Option<Time>,
    /// When a follower re-sends its stream request after the upstream refused it.
    stream_retry_at: Option<Time>,
    heartbeat_at: Time,
    retention_at: Time,
    persist_at: Time,
    outputs: VecDeque<Output>,
    /// LZ4 buffers reused by every local commit's LTX encode (speed only: same bytes).
    ltx_scratch: crate::ltx::EncodeScratch,
    /// The decompression buffer reused by every received LTX's decode (speed only).
    decode_scratch: crate::ltx::DecodeScratch,
    /// The page checksums of the local commit being made (room reused; speed only).
    sums_scratch: Vec<u64>,
}

impl Node {
    /// A node at start-up. Databases found on disk are announced with [`Input::OpenDb`].
    pub fn new(config: Config, id: NodeId, now: Time) -> Node {
        assert!(!config.peers.contains(&id), "peers must not list the node itself");
        assert!((config.sync_replicas as usize) < config.cluster_size(), "sync_replicas must be below the cluster size");
        let mut node = Node {
            heartbeat_at: now + config.heartbeat_interval,
            retention_at: now + config.retention_interval,
            persist_at: now + config.checksum_index_persist_interval,
            config,
            id,
            now,
            wall: WallAnchor::default(),
            role: RoleState::Replica,
            highest_epoch: Epoch::ZERO,
            upstream: None,
            stream_epoch: Epoch::ZERO,
            connected: BTreeSet::new(),
            dbs: BTreeMap::new(),
            partials: BTreeMap::new(),
            followers: BTreeMap::new(),
            io: InFlightIo::default(),
            lease_requests: BTreeMap::new(),
            next_io: 1,
            next_lease_request: 1,
            acquire_at: None,
            stream_retry_at: None,
            outputs: VecDeque::new(),
            ltx_scratch: crate::ltx::EncodeScratch::default(),
            decode_scratch: crate::ltx::DecodeScratch::default(),
            sums_scratch: Vec::new(),
        };
        node.start_lease_role();
        node
    }

    /// Feeds one input. Peer misbehaviour is never an error (it becomes an event); an error
    /// means the driver misused the API, and the node's state is unchanged by that input.
    pub fn handle_input(&mut self, now: Time, input: Input) -> Result<(), InputError> {
        self.advance(now);
        if matches!(self.role, RoleState::Stopped) {
            return self.handle_input_stopped(input);
        }
        match input {
            Input::Receive { from, msg } => self.on_message(from, msg),
            Input::PeerConnected { peer } => self.on_peer_connected(peer),
            Input::PeerDisconnected { peer } => self.on_peer_disconnected(peer),
            Input::LeaseReply { id, result } => return self.on_lease_reply(id, result),
            Input::LeaseObserved { holder, epoch } => self.on_lease_observed(holder, epoch),
            Input::IoDone { id, result } => return self.on_io_done(id, result),
            Input::LocalCommit(c) => return self.on_local_commit(c),
            Input::OpenDb(o) => return self.on_open_db(o),
            Input::Handoff { to } => return self.on_handoff_request(to),
            Input::Shutdown => self.on_shutdown(),
            Input::WallClock(wall) => self.wall.set(now, wall),
        }
        Ok(())
    }

    /// Fires every timer due at or before `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        self.advance(now);
        if matches!(self.role, RoleState::Stopped) {
            return;
        }
        self.lease_timers();
        self.primary_timers();
        self.recovery_timers();
        self.housekeeping_timers();
    }

    /// The next output, or `None` when drained.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The earliest time [`Node::handle_timeout`] has something to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        if matches!(self.role, RoleState::Stopped) {
            return None;
        }
        let candidates = [
            self.lease_timeout(),
            self.primary_timeout(),
            self.recovery_timeout(),
            Some(self.retention_at),
            Some(self.persist_at),
        ];
        candidates.into_iter().flatten().min()
    }

    // ----- getters (for drivers, tests and the simulator's checkers) -----

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The current role.
    pub fn role(&self) -> Role {
        self.role.kind()
    }
    /// The lease epoch while primary (recovering or writable).
    pub fn lease_epoch(&self) -> Option<Epoch> {
        self.role.primary().map(|p| p.epoch)
    }
    /// The local write deadline while primary: writes are accepted only strictly before it.
    pub fn lease_deadline(&self) -> Option<Time> {
        self.role.primary().map(|p| p.deadline)
    }
    /// True iff a local commit arriving at `now` would be accepted (role, phase, deadline).
    pub fn is_writable(&self, now: Time) -> bool {
        self.role.primary().is_some_and(|p| p.is_writable() && now < p.deadline)
    }
    pub fn highest_epoch(&self) -> Epoch {
        self.highest_epoch
    }
    /// The primary this node follows, if any.
    pub fn upstream(&self) -> Option<NodeId> {
        self.upstream
    }
    /// The durable position of `db` (and the epoch of its lineage).
    pub fn db_pos(&self, db: &DbName) -> Option<DbPos> {
        self.dbs.get(db).map(|d| DbPos { epoch: d.pos_epoch, pos: d.pos })
    }
    /// Every database and its position.
    pub fn positions(&self) -> BTreeMap<DbName, DbPos> {
        self.dbs.iter().map(|(n, d)| (n.clone(), DbPos { epoch: d.pos_epoch, pos: d.pos })).collect()
    }
    /// Every database with its position and whether it is halted ([`Node::is_halted`]), in name
    /// order, without copying names: for a driver that looks after every step.
    pub fn db_states(&self) -> impl Iterator<Item = (&DbName, DbPos, bool)> + '_ {
        self.dbs.iter().map(|(n, d)| (n, DbPos { epoch: d.pos_epoch, pos: d.pos }, d.is_halted()))
    }
    /// Whether `db` stopped applying after a checksum mismatch or I/O failure.
    pub fn is_halted(&self, db: &DbName) -> bool {
        self.dbs.get(db).is_some_and(|d| d.is_halted())
    }
    /// The checksum the index computes for `db` (equals `db_pos(db).pos.checksum` at rest).
    pub fn index_checksum(&self, db: &DbName) -> Option<u64> {
        self.dbs.get(db).map(|d| d.index.checksum())
    }

    // ----- shared plumbing -----

    fn advance(&mut self, now: Time) {
        debug_assert!(self.outputs.is_empty(), "drain poll_output before the next handle_* call");
        debug_assert!(now >= self.now, "time went backwards: {now} < {}", self.now);
        self.now = self.now.max(now);
    }

    fn push(&mut self, output: Output) {
        assert!(self.outputs.len() < OUTPUT_QUEUE_MAX, "output queue overflow: driver is not draining");
        self.outputs.push_back(output);
    }

    fn event(&mut self, event: Event) {
        self.push(Output::Event(event));
    }

    fn send(&mut self, to: NodeId, msg: Message) {
        debug_assert_ne!(to, self.id, "a node never sends to itself");
        self.push(Output::Send { to, msg });
    }

    fn io(&mut self, kind: IoKind, purpose: IoPurpose) -> IoId {
        let id = IoId(self.next_io);
        self.next_io += 1;
        self.io.push(id, purpose);
        self.push(Output::Io(IoCommand { id, kind }));
        id
    }

    /// The epoch this node puts on messages: its lease epoch as primary, else the highest seen.
    fn epoch(&self) -> Epoch {
        self.role.primary().map_or(self.highest_epoch, |p| p.epoch)
    }

    /// Accepts `epoch` from a peer if it is not stale; a newer epoch is recorded and, if this
    /// node is primary at an older epoch, makes it step down. Returns false (after an event) if
    /// the epoch is older than the highest accepted.
    fn accept_epoch(&mut self, from: NodeId, epoch: Epoch) -> bool {
        if epoch < self.highest_epoch && !planted!(self, SkipEpochCheck) {
            self.event(Event::StaleEpochRejected { from, epoch, highest: self.highest_epoch });
            return false;
        }
        if epoch > self.highest_epoch {
            self.highest_epoch = epoch;
            if self.role.primary().is_some_and(|p| p.epoch < epoch) {
                self.step_down(StepDownReason::HigherEpoch);
            }
        }
        true
    }

    fn on_message(&mut self, from: NodeId, msg: Message) {
        if from == self.id {
            return;
        }
        if !self.config.peers.contains(&from) {
            // Only configured members take part: this bounds per-peer state.
            return self.event(Event::UnknownPeer { peer: from });
        }
        match msg {
            Message::StreamRequest { epoch, cluster_id, node_id: _, mode, positions } => {
                self.on_stream_request(from, epoch, cluster_id, mode, positions)
            }
            Message::Ltx { epoch, db, offset, total_bytes, bytes } => self.on_ltx_chunk(from, epoch, db, offset, total_bytes, bytes),
            Message::Ready { epoch } => self.on_ready(from, epoch),
            Message::Heartbeat { epoch, .. } => {
                self.accept_epoch(from, epoch);
            }
            Message::Ack { epoch, db, pos } => self.on_ack(from, epoch, db, pos),
            Message::Handoff { epoch, to } => self.on_handoff_message(from, epoch, to),
            Message::Error { epoch: _, code, detail: _ } => self.on_error_message(from, code),
            Message::PositionQuery { epoch, cluster_id } => self.on_position_query(from, epoch, cluster_id),
            Message::PositionAnswer { epoch, cluster_id, positions } => self.on_position_answer(from, epoch, cluster_id, positions),
            Message::Resync { epoch, db, pos } => self.on_resync(from, epoch, db, pos),
        }
    }

    fn on_error_message(&mut self, from: NodeId, code: crate::msg::ErrorCode) {
        self.event(Event::PeerRefused { peer: from, code });
        if code == crate::msg::ErrorCode::NotPrimary && self.upstream == Some(from) {
            // The lease watch can run ahead of the new primary learning it won: ask again later.
            self.stream_retry_at = Some(self.now + self.config.heartbeat_interval);
        }
    }

    fn on_peer_connected(&mut self, peer: NodeId) {
        self.connected.insert(peer);
        if self.upstream == Some(peer) && self.role.is_follower() {
            self.send_stream_request(peer);
        }
        self.recovery_peer_connected(peer);
    }

    fn on_peer_disconnected(&mut self, peer: NodeId) {
        self.connected.remove(&peer);
        self.followers.remove(&peer);
        self.partials.retain(|_, p| p.from != peer);
        self.recovery_peer_disconnected(peer);
    }

    fn on_io_done(&mut self, id: IoId, result: Result<IoOutcome, IoErrorKind>) -> Result<(), InputError> {
        let purpose = self.io.remove(id).ok_or(InputError::UnknownIo(id))?;
        match purpose {
            IoPurpose::Commit { db } => self.on_commit_written(db, result),
            IoPurpose::ReplicaWriteLtx { db } => self.on_replica_ltx_written(db, result),
            IoPurpose::ReplicaDeleteReplaced { db } => self.on_replaced_deleted(db, result),
            IoPurpose::ReplicaApply { db } => self.on_replica_pages_applied(db, result),
            IoPurpose::CatchUpRead { peer, db, from, files } => self.on_catch_up_read(peer, db, from, &files, result),
            IoPurpose::SnapshotRead { peer, db } => self.on_snapshot_read(peer, db, result),
            IoPurpose::LoadIndex { db } => self.on_index_image(db, result),
            IoPurpose::RepairRead { db } => self.on_repair_read(db, result),
            IoPurpose::RepairApply { db } => self.on_repair_applied(db, result),
            IoPurpose::Housekeeping { db } => {
                if let Err(error) = result {
                    self.event(Event::IoFailed { db, error });
                }
            }
        }
        Ok(())
    }

    fn handle_input_stopped(&mut self, input: Input) -> Result<(), InputError> {
        match input {
            Input::IoDone { id, .. } => {
                self.io.remove(id).ok_or(InputError::UnknownIo(id))?;
            }
            Input::LeaseReply { id, .. } => {
                self.lease_requests.remove(&id).ok_or(InputError::UnknownLeaseRequest(id))?;
            }
            Input::LocalCommit(c) => self.event(Event::WriteRejected { db: c.db, reason: RejectReason::ShuttingDown }),
            _ => {}
        }
        Ok(())
    }

    /// Our positions, as sent in stream requests and position answers.
    fn db_positions(&self) -> BTreeMap<DbName, DbPos> {
        self.positions()
    }

    fn db_pos_or_zero(&self, db: &DbName) -> Pos {
        self.dbs.get(db).map_or(Pos::ZERO, |d| d.pos)
    }

    /// Whether `pos` is a position of this node's history of `db` that it can prove: its own
    /// position, or one its retained files start, end or pass through with that checksum.
    /// TXID 0 (nothing) is on every history. A position it cannot prove (older than the
    /// retained files, or inside a merged file without points) counts as not on it.
    fn on_our_history(&self, db: &DbName, pos: Pos) -> bool {
        if pos.txid == 0 {
            return true;
        }
        let Some(d) = self.dbs.get(db) else { return false };
        pos == d.pos || (pos.txid < d.pos.txid && d.files.checksum_at(pos.txid) == Some(pos.checksum))
    }
}
