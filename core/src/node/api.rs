//! The node's public vocabulary: configuration, inputs, outputs, I/O commands, lease requests
//! and events.
//!
//! This module decides nothing; it names what crosses the boundary between the pure node and
//! its driver. Every output the node emits and every input it accepts is one of these types.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::catchup::{LtxFileMeta, SnapshotReason};
use crate::chkindex::IndexError;
use crate::ids::{ClusterId, DbName, Epoch, NodeId};
use crate::ltx::{LtxError, Pos};
use crate::msg::{ErrorCode, Message};
use crate::retention::RetentionPolicy;
use crate::time::WallMs;

/// How this node takes part in leadership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseMode {
    /// `primary` is the permanent primary (epoch 1, never expires); every other node is a replica
    /// of it. The production node's default with a single node.
    Static { primary: NodeId },
    /// An outside lease service grants epochs with a TTL.
    Dynamic {
        /// Whether this node may acquire the lease; non-candidates only ever replicate.
        candidate: bool,
        /// Safety margin subtracted from every grant's TTL: the node stops writing at
        /// `sent_at(request) + ttl − clock_margin`. It must cover the worst clock drift over one
        /// TTL between this node and the lease service (e.g. ttl × max drift rate) plus the time
        /// a write takes to become durable.
        clock_margin: Duration,
    },
}

/// Static configuration of one node. [`Config::new`] gives the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub cluster_id: ClusterId,
    /// Every other member of the cluster. `cluster_size()` = `peers.len() + 1`: it is configured,
    /// never discovered, so it cannot shrink when nodes die.
    pub peers: BTreeSet<NodeId>,
    pub lease: LeaseMode,
    /// Primary → replica heartbeats; also the bound of the async-mode recovery phase.
    pub heartbeat_interval: Duration,
    /// Replica acks a commit needs before it is reported committed (0 = asynchronous, LiteFS).
    pub sync_replicas: u32,
    /// How long a sync commit waits for acks before its outcome is reported unknown.
    pub sync_ack_timeout: Duration,
    /// How often a candidate without a known primary retries acquiring the lease.
    pub acquire_retry: Duration,
    /// How long a handoff waits for the target to catch up before giving up.
    pub handoff_timeout: Duration,
    /// How long a recovery-phase fetch from a peer may take before the phase retries (sync) or
    /// gives up (async).
    pub recovery_fetch_timeout: Duration,
    pub retention: RetentionPolicy,
    pub retention_interval: Duration,
    /// How often changed checksum indexes are persisted.
    pub checksum_index_persist_interval: Duration,
    /// Whether LTX files this node writes are LZ4-compressed (LiteFS default: yes).
    pub compress_ltx: bool,
    /// Largest LTX file accepted from a peer (reassembled from chunks).
    pub ltx_bytes_max: u64,
    /// Most decoded LTX files queued per database behind one being applied.
    pub apply_queue_max: usize,
    /// Known-bad behaviours switched on by name (simulator only).
    #[cfg(feature = "planted-bugs")]
    pub planted: crate::planted::PlantedBugs,
}

impl Config {
    /// Defaults: LiteFS-like timings, asynchronous replication.
    pub fn new(cluster_id: ClusterId, peers: BTreeSet<NodeId>, lease: LeaseMode) -> Config {
        Config {
            cluster_id,
            peers,
            lease,
            heartbeat_interval: Duration::from_secs(1),
            sync_replicas: 0,
            sync_ack_timeout: Duration::from_secs(10),
            acquire_retry: Duration::from_secs(1),
            handoff_timeout: Duration::from_secs(10),
            recovery_fetch_timeout: Duration::from_secs(30),
            retention: RetentionPolicy::default(),
            retention_interval: Duration::from_secs(60),
            checksum_index_persist_interval: Duration::from_secs(60),
            compress_ltx: true,
            ltx_bytes_max: 1 << 32,
            apply_queue_max: 64,
            #[cfg(feature = "planted-bugs")]
            planted: crate::planted::PlantedBugs::default(),
        }
    }

    /// Members including this node.
    pub fn cluster_size(&self) -> usize {
        self.peers.len() + 1
    }
}

/// Identifies one I/O command; the driver echoes it in [`Input::IoDone`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IoId(pub u64);

/// Identifies one lease request; the driver echoes it in [`Input::LeaseReply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseRequestId(pub u64);

/// A file-system command. The driver executes it and answers with [`Input::IoDone`] carrying
/// the same id. Commands for one database must be executed in the order they were emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoCommand {
    pub id: IoId,
    pub kind: IoKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoKind {
    /// Write the LTX file `min_txid-max_txid` atomically. Completion means durable (`fsync` is
    /// always true outside planted bugs): the file survives a crash under its name, or the
    /// driver states and tests a start-up recovery rule that provably restores it before the
    /// data directory is read (the `ltxfs` driver writes into a spare file whose name is
    /// already durable, fdatasyncs it and renames it without a directory fsync; start-up renames
    /// a spare still holding a complete LTX that continues the chain). Answer:
    /// [`IoOutcome::Done`]. `epoch` is the lineage epoch of the position the file ends at: the
    /// driver must make it durable no later than the file (a restarted node reports it as
    /// [`OpenDb::epoch`]; a crashed replica that reported epoch 0 for the acknowledged commits
    /// it holds would lose them to an older chain in a new primary's recovery).
    ///
    /// The driver may instead store it merged with the newest retained files before it, from
    /// the one starting at TXID `m`, into one file `m..max_txid` (a valid LTX from that file's
    /// pre-apply checksum to this one's post-apply checksum, durable as above) and answer
    /// [`IoOutcome::LtxMerged`]: from then on [`IoKind::ReadLtx`] and [`IoKind::DeleteLtx`] name
    /// that file, and a [`IoKind::ReadLtx`] emitted before the answer that names one of the
    /// files it replaced may fail with [`IoErrorKind::NotFound`] (the node falls back to a
    /// snapshot). `ltxfs` merges the LTX files of WAL-mode commits so that a burst of small
    /// transactions does not cost one file each.
    WriteLtx { db: DbName, min_txid: u64, max_txid: u64, bytes: Vec<u8>, fsync: bool, epoch: Epoch },
    /// Write `pages` into the database file, resize it to `commit` pages (0 = delete the
    /// database), fsync — under SQLite's locks so readers see all or nothing.
    /// Answer: [`IoOutcome::Done`].
    ApplyPages { db: DbName, page_size: u32, commit: u32, pages: Vec<(u32, Vec<u8>)> },
    /// Read these retained LTX files in full. Answer: [`IoOutcome::LtxFiles`], same order.
    ReadLtx { db: DbName, files: Vec<(u64, u64)> },
    /// Read the whole database file as it is at the node's current position (the driver holds
    /// SQLite's read lock while reading). Answer: [`IoOutcome::Database`].
    ReadDatabase { db: DbName },
    /// Delete these LTX files (retention, or superseded by a snapshot), durably: a crash after
    /// the answer must not bring them back (a snapshot that replaces them is written only after
    /// it, and a stale newer file beside it would be taken for the position at start-up).
    /// Answer: `Done`.
    DeleteLtx { db: DbName, files: Vec<(u64, u64)> },
    /// Persist the checksum index (atomically replace the previous one). Answer: `Done`.
    WriteChecksumIndex { db: DbName, bytes: Vec<u8> },
}

impl IoKind {
    pub fn db(&self) -> &DbName {
        match self {
            IoKind::WriteLtx { db, .. }
            | IoKind::ApplyPages { db, .. }
            | IoKind::ReadLtx { db, .. }
            | IoKind::ReadDatabase { db }
            | IoKind::DeleteLtx { db, .. }
            | IoKind::WriteChecksumIndex { db, .. } => db,
        }
    }
}

/// A successful I/O completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoOutcome {
    Done,
    /// A [`IoKind::WriteLtx`] stored merged with the retained files from `min_txid` on: one
    /// file `min_txid..max_txid`.
    LtxMerged { min_txid: u64 },
    LtxFiles(Vec<Vec<u8>>),
    /// The database image (a multiple of the page size; empty if the file does not exist).
    Database(Vec<u8>),
}

/// A failed I/O completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoErrorKind {
    NotFound,
    NoSpace,
    /// Any other failure (EIO, …).
    Failed,
}

/// A request to the outside lease service. The driver answers with [`Input::LeaseReply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRequest {
    pub id: LeaseRequestId,
    pub kind: LeaseKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseKind {
    /// Take the lease if free (or reserved for this node by a handoff). Grants a new epoch.
    Acquire,
    /// Extend the lease held at `epoch`.
    Renew { epoch: Epoch },
    /// Give the lease up now (clean shutdown, step-down).
    Release { epoch: Epoch },
    /// Give the lease up and reserve it for `to`, which will acquire it.
    Handoff { epoch: Epoch, to: NodeId },
}

/// The lease service's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseResult {
    /// Acquire or renew succeeded: the lease is held at `epoch` for `ttl` from when the service
    /// handled the request.
    Granted { epoch: Epoch, ttl: Duration },
    /// Acquire refused: someone else holds it.
    Denied { holder: Option<NodeId>, epoch: Epoch },
    /// Renew refused: the lease at that epoch is gone.
    Lost,
    /// Release or handoff done.
    Released,
    /// The service could not be reached or failed; the request may or may not have taken effect.
    Error,
}

/// A transaction SQLite committed through the FUSE mount on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCommit {
    pub db: DbName,
    pub page_size: u32,
    /// Database size in pages after the transaction.
    pub commit: u32,
    /// Dirty pages, ascending page number.
    pub pages: Vec<(u32, Vec<u8>)>,
    /// Wall clock at commit, stamped into the LTX header.
    pub wall: WallMs,
    /// WAL mode: the WAL frames the transaction occupies (the LTX header's WAL fields, which a
    /// restarted node uses to match its WAL against its last LTX). `None` in rollback modes.
    pub wal: Option<WalFrames>,
}

/// Where a WAL-mode transaction lies in the WAL file (LTX header `WALOffset`/`WALSize`/salts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalFrames {
    /// Byte offset of the transaction's first frame in the WAL.
    pub offset: u64,
    /// Bytes of the transaction's frames.
    pub size: u64,
    pub salt1: u32,
    pub salt2: u32,
}

/// A database the driver found on disk at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenDb {
    pub db: DbName,
    pub page_size: u32,
    /// The last LTX file's post-apply position (the database's position).
    pub pos: Pos,
    /// The epoch of the lineage that position belongs to, as last persisted (0 if unknown).
    pub epoch: Epoch,
    /// Retained LTX files.
    pub files: Vec<LtxFileMeta>,
    /// Positions inside merged files where one of their transactions ended, as the driver
    /// recorded them when it merged them ([`IoOutcome::LtxMerged`]): a peer at one still
    /// catches up incrementally. Positions not strictly inside a retained file are ignored.
    pub points: Vec<Pos>,
    /// The persisted checksum index, if any.
    pub checksum_index: Option<Vec<u8>>,
}

/// Everything that can happen to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Receive { from: NodeId, msg: Message },
    PeerConnected { peer: NodeId },
    PeerDisconnected { peer: NodeId },
    LeaseReply { id: LeaseRequestId, result: LeaseResult },
    /// The lease service's watch: `holder` holds the lease at `epoch` (`None`: nobody holds it;
    /// `epoch` is then the last granted epoch).
    LeaseObserved { holder: Option<NodeId>, epoch: Epoch },
    IoDone { id: IoId, result: Result<IoOutcome, IoErrorKind> },
    LocalCommit(LocalCommit),
    OpenDb(OpenDb),
    /// Admin: move the primary role to `to` (primary only).
    Handoff { to: NodeId },
    /// Admin: stop cleanly (release the lease, persist checksum indexes).
    Shutdown,
    /// A fresh wall-clock reading (heartbeats extrapolate from the last one).
    WallClock(WallMs),
}

/// Everything a node asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Deliver `msg` to `to` (may be dropped if not connected; the node re-sends what matters
    /// on [`Input::PeerConnected`]).
    Send { to: NodeId, msg: Message },
    Io(IoCommand),
    Lease(LeaseRequest),
    Event(Event),
}

/// This node's role as reported in [`Event::RoleChanged`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Replica,
    /// Acquiring the lease.
    Candidate,
    /// Holds the lease but does not accept writes yet (recovery phase).
    Recovering,
    /// Holds the lease and accepts writes.
    Primary,
    /// Shut down; accepts nothing.
    Stopped,
}

/// Why a local write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    NotPrimary,
    /// The lease deadline (`sent_at + ttl − margin`) has passed.
    LeaseDeadline,
    Recovering,
    HandoffInProgress,
    /// A commit of this database is not durable yet.
    CommitInFlight,
    /// The database is being loaded or has stopped after an error.
    DbUnavailable,
    ShuttingDown,
}

/// Why a primary stepped down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepDownReason {
    /// The lease service refused a renewal.
    LeaseLost,
    /// No renewal succeeded before `sent_at + ttl − margin`.
    DeadlinePassed,
    /// A peer or the lease watch showed a higher epoch.
    HigherEpoch,
    HandedOff,
    Shutdown,
    /// A commit could not be made durable.
    WriteFailed,
}

/// Something the shell (or simulator) should know; events never require an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    RoleChanged { role: Role, epoch: Epoch },
    SteppedDown { reason: StepDownReason, epoch: Epoch },
    /// The commit at `pos` is durable (and, in sync mode, acked by enough replicas).
    Committed { db: DbName, pos: Pos },
    /// The lease was lost or the ack wait timed out before the commit was confirmed: it may or
    /// may not survive. Never reported as success.
    CommitOutcomeUnknown { db: DbName, pos: Pos },
    /// The LTX write failed: the commit is not durable.
    CommitFailed { db: DbName, error: IoErrorKind },
    WriteRejected { db: DbName, reason: RejectReason },
    /// A peer acknowledged our position after a catch-up (or first reached it).
    ReplicaCaughtUp { peer: NodeId, db: DbName, pos: Pos },
    /// A peer will get a full snapshot of `db`.
    SnapshotNeeded { peer: NodeId, db: DbName, reason: SnapshotReason },
    /// This node applied an LTX from `from`; `db` is now at `pos`.
    Applied { db: DbName, pos: Pos, from: NodeId },
    /// A message from an epoch older than the highest accepted was refused.
    StaleEpochRejected { from: NodeId, epoch: Epoch, highest: Epoch },
    /// After an LTX the checksum is not the file's post-apply checksum: `db` stops applying.
    ChecksumMismatch { db: DbName, expected: u64, actual: u64 },
    /// An incremental LTX did not start at our position: a resync was requested from `from`.
    PreApplyMismatch { db: DbName, have: Pos, need: Pos, from: NodeId },
    /// A peer sent an LTX that does not decode.
    InvalidLtx { db: DbName, from: NodeId, error: LtxError },
    /// A peer sent an LTX whose pages do not fit the database (bad page list for the index).
    InvalidLtxPages { db: DbName, from: NodeId, error: IndexError },
    /// A peer announced an LTX larger than `Config::ltx_bytes_max`, or its chunks arrived out of
    /// order; it was dropped and a resync requested.
    LtxDropped { db: DbName, from: NodeId, total_bytes: u64 },
    /// The primary finished our initial catch-up.
    PrimaryReady { primary: NodeId },
    /// Recovery phase: `have` of the `need` positions (self included) are known.
    RecoveryWaiting { have: usize, need: usize },
    RecoveryComplete { epoch: Epoch },
    /// A peer of another cluster tried to stream with us, or refused us for that reason.
    ClusterMismatch { peer: NodeId, theirs: ClusterId },
    /// A peer sent us an error frame.
    PeerRefused { peer: NodeId, code: ErrorCode },
    /// The persisted checksum index could not be used; the database is read in full.
    ChecksumIndexRebuilt { db: DbName },
    /// A snapshot from `from` replaced this node's history of `db` at `old` (lineage epoch
    /// `old_epoch`) with `new`. Transactions this node had that the new history lacks (e.g. a
    /// deposed primary's unreplicated commits) are discarded here; the driver must log and count
    /// it. Also raised when a lagging replica is caught up by snapshot because the files it
    /// needed were no longer retained (then nothing is lost: `new` extends `old`).
    HistoryReplaced { db: DbName, from: NodeId, old: Pos, old_epoch: Epoch, new: Pos },
    /// An I/O command other than a commit write failed.
    IoFailed { db: DbName, error: IoErrorKind },
    HandoffFailed { to: NodeId },
    /// A message from a node that is not a configured member was dropped.
    UnknownPeer { peer: NodeId },
}

/// A misuse of the API by the driver (never caused by peer input: peer problems are events).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("no I/O command {0:?} is outstanding")]
    UnknownIo(IoId),
    #[error("I/O completion {0:?} carries the wrong kind of outcome")]
    WrongIoOutcome(IoId),
    #[error("no lease request {0:?} is outstanding")]
    UnknownLeaseRequest(LeaseRequestId),
    #[error("page size {0} is not valid")]
    BadPageSize(u32),
    #[error("database {db} has page size {was}, commit says {now}")]
    PageSizeChanged { db: DbName, was: u32, now: u32 },
    #[error("invalid commit for {db}: {error}")]
    InvalidCommit { db: DbName, error: IndexError },
    #[error("cannot encode LTX: {0}")]
    Ltx(#[from] LtxError),
    #[error("database {0} is already open")]
    DbAlreadyOpen(DbName),
    #[error("handoff target {0} is not a connected follower")]
    HandoffTargetUnknown(NodeId),
}
