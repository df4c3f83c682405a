//! The production driver of [`ltxfs_core::node::Node`]: one tokio task owns the node and feeds it
//! everything that happens (peer messages, lease replies and watch, I/O completions, local
//! commits, admin requests, timers); it executes what the node outputs on the real data
//! directory ([`disk`]), the network ([`peers`], carried by `crate::http`) and the lease backend
//! (`crate::lease`).
//!
//! It decides nothing about replication, leases or catch-up — every such decision is the core's.
//! It decides only plumbing: the clock mapping (tokio's `Instant` → core [`Time`] from a per-process
//! origin, `SystemTime` → [`WallMs`]), per-database I/O ordering, which connection carries a
//! message to a peer, and how outcomes reach callers. It never blocks the node task on disk or
//! network I/O (disk runs on tokio's blocking pool, one FIFO worker per database).
//!
//! # Interface for the FUSE layer (`ltxfs` binary, `fs.rs`)
//! The FUSE layer detects commits and writes SQLite's pages into `<data>/dbs/<db>/database`
//! (WAL mode: into `wal`); for each commit it calls, from its own thread,
//! ```ignore
//! let outcome = handle.commit_blocking(db, page_size, commit, pages, wal, wal_backed)?; // CommitOutcome
//! ```
//! and lets SQLite's commit complete only on [`CommitOutcome::Committed`] (anything else is an
//! I/O error to SQLite). The first commit of a database carries every page (LTX snapshot).
//! Read-only state and `.primary`/`.lag`/`-pos` come from [`RuntimeHandle::status`]. On replicas
//! the runtime writes pages into the same `database` file; it calls the [`ApplyHook`] the FUSE
//! layer installs around every apply (take SQLite's locks, then invalidate the kernel page
//! cache for the pages written, rewrite the WAL index) and around whole-file reads (snapshots
//! served to peers, `/export`; in WAL mode the hook supplies the image with committed WAL pages).
//! Before letting a write through, the FUSE layer asks [`Status::writable_now`]: it is false on a
//! replica, on a primary still in its recovery phase, and from the moment the lease deadline
//! passes — even if the node task has not run since (a paused process), so SQLite gets a clear
//! "readonly database" error instead of a commit the core would refuse.
//!
//! # Readiness
//! [`RuntimeHandle::ready`] says when the node is first ready, like LiteFS's ready channel
//! that `litefs mount` waits on before running its `exec` command: a primary once it accepts
//! writes (lease held, recovery done); a replica once its primary said the initial catch-up is
//! sent (`Ready`) and every LTX that stream carried before it is applied here. It latches: a
//! later disconnect does not make the node unready again.
//!
//! # Event log
//! Every role change and every accepted local commit is appended as one JSON line to
//! `<data>/events.ndjson` (no fsync: it survives a process crash, not a power cut) with the
//! epoch, the wall time the core accepted the commit and the wall time of the lease deadline it
//! was accepted under. Tests check from these files that at most one node accepted writes at any
//! moment; operators can read who wrote what under which epoch. It is bounded: past
//! [`EVENT_LOG_BYTES_MAX`] it is renamed `events.ndjson.1` (replacing the previous one) and a
//! new one is started.

pub mod disk;
pub mod peers;
pub mod stats;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
// tokio's `Instant` is std's in production; under a paused or simulated tokio clock (turmoil
// tests) the core's time and every runtime timer follow that clock instead of the machine's.
use tokio::time::Instant;

use ltxfs_core::ids::{DbName, Epoch, NodeId};
use ltxfs_core::ltx::Pos;
use ltxfs_core::msg::Message;
use ltxfs_core::node::{
    Config as CoreConfig, Event, Input, InputError, IoCommand, IoId, IoErrorKind, IoKind, IoOutcome, LeaseKind, LeaseResult, LocalCommit,
    Node, Output, RejectReason, Role, WalFrames,
};
use ltxfs_core::time::{Time, WallMs};

use crate::lease::{LeaseBackend, LeaseView};
use disk::DataDir;
use peers::{ConnId, Peers};

/// Most peer messages queued from the network before readers wait (back-pressure on sockets).
pub const NET_QUEUE_MAX: usize = 1024;
/// Most events buffered per `/events` or FUSE subscriber; a slower subscriber misses events.
pub const EVENT_BUFFER_MAX: usize = 1024;

/// Everything the runtime needs. The node's YAML configuration maps onto it (see the module
/// docs of `crate::http` for the keys).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub node_id: NodeId,
    /// `lease.hostname`: this node's name in `.primary`, `/info` and the lease value.
    pub hostname: String,
    /// `lease.advertise-url`: where peers reach this node's HTTP API.
    pub advertise_url: String,
    /// `data.dir`.
    pub data_dir: PathBuf,
    /// Cluster id, members, lease mode, timings, `replication.sync`, retention, compression.
    pub core: CoreConfig,
    /// `http.auth-token`: presented to peers and required from them.
    pub auth_token: Option<String>,
    /// `lease.reconnect-delay`: first reconnect backoff to the primary (doubles up to 8×).
    pub reconnect_delay: Duration,
}

/// What became of a local commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum CommitOutcome {
    /// Durable (and, in sync mode, acknowledged by enough replicas) at `pos`.
    Committed { txid: u64, checksum: u64 },
    /// The lease ended or acks timed out: it may or may not survive. Never report success.
    Unknown { txid: u64, checksum: u64 },
    /// The LTX could not be written: not durable.
    Failed {
        #[serde(skip)]
        error: IoErrorKind,
    },
    /// Refused before anything was written (not primary, lease deadline, commit in flight, …).
    Rejected {
        #[serde(skip)]
        reason: RejectReason,
    },
}

/// Why the runtime could not take a request.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the node runtime has stopped")]
    Stopped,
    #[error("invalid request: {0}")]
    Invalid(#[from] InputError),
    #[error("database {0} does not exist here")]
    NoSuchDb(DbName),
    #[error("I/O failed: {0}")]
    Io(String),
}

/// Hooks the FUSE layer implements so a replica's apply is atomic for SQLite readers.
/// Called on a blocking thread, for one database at a time, never while receiving from the
/// network. The default does nothing (no mount: tests, `ltxfs` without FUSE).
pub trait ApplyHook: Send + Sync + 'static {
    /// Before pages are written into `<data>/dbs/<db>/database`: take SQLite's locks.
    fn before_apply(&self, _db: &DbName) {}
    /// After the write + truncate + fsync (also called if it failed): invalidate the kernel
    /// page cache for `pages` and the size (`commit` pages), rewrite the WAL index if needed,
    /// release the locks. `pages` empty means the whole file was replaced (`/import`).
    fn after_apply(&self, _db: &DbName, _pages: &[u32], _commit: u32) {}
    /// After [`ApplyHook::before_apply`] when nothing was written after all (an `/import` the
    /// core refused): release the locks.
    fn abort_apply(&self, _db: &DbName) {}
    /// Before the whole database file is read (snapshot for a peer, `/export`): take a read lock.
    /// Must not wait without bound: the read runs in the database's I/O queue, ahead of a commit
    /// the FUSE layer may be waiting for (an image that is not at the node's position is
    /// refused by the core and read again later).
    fn before_read(&self, _db: &DbName) {}
    /// The database image at the node's position, if the hook knows better than the file
    /// (WAL mode: committed pages still in the WAL). `None`: read `<data>/dbs/<db>/database`.
    fn read_database(&self, _db: &DbName) -> Option<std::io::Result<Vec<u8>>> {
        None
    }
    fn after_read(&self, _db: &DbName) {}
}

/// The no-op hook.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHook;
impl ApplyHook for NoHook {}

/// One database's position as reported to callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DbStatus {
    pub txid: u64,
    /// Hex, as LiteFS prints checksums.
    #[serde(serialize_with = "hex16")]
    pub checksum: u64,
    pub epoch: u64,
}

fn hex16<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:016x}"))
}

/// The primary as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrimaryInfo {
    #[serde(rename = "nodeID")]
    pub node_id: String,
    pub hostname: String,
    #[serde(rename = "advertiseURL")]
    pub advertise_url: String,
}

/// A snapshot of the node's state, refreshed after every step of the node task.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(rename = "nodeID")]
    pub node_id: String,
    pub hostname: String,
    #[serde(rename = "clusterID")]
    pub cluster_id: String,
    pub role: &'static str,
    pub is_primary: bool,
    pub writable: bool,
    pub candidate: bool,
    /// Lease epoch while primary, else the highest epoch accepted.
    pub epoch: u64,
    /// The primary (absent on the primary itself).
    pub primary: Option<PrimaryInfo>,
    /// Whether a replica has a live connection to its primary (`.primary` exists only then).
    pub connected_to_primary: bool,
    pub positions: BTreeMap<String, DbStatus>,
    /// Replica: wall ms since the primary's last heartbeat timestamp (None before the first).
    pub lag_ms: Option<i64>,
    /// Recovering primary: positions known (this node included) and needed before it writes.
    pub recovery: Option<RecoveryStatus>,
    /// When local writes stop being accepted (the lease deadline; `None` when not writable, and
    /// far in the future under a static lease).
    #[serde(skip)]
    pub writable_until: Option<Instant>,
}

/// Progress of a new primary's recovery phase (`/info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RecoveryStatus {
    pub have: usize,
    pub need: usize,
}

impl Status {
    /// Whether a local write may start now: writable at the last refresh and the lease deadline
    /// not yet passed (checked against the clock, so a node task that has not run since — a
    /// paused process — cannot let a write through after its deadline).
    pub fn writable_now(&self) -> bool {
        self.writable && self.writable_until.is_some_and(|t| Instant::now() < t)
    }
}

/// What subscribers (`/events`, the FUSE layer) are told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum RuntimeEvent {
    /// A transaction reached `db`'s position (local commit or replicated apply).
    #[serde(rename_all = "camelCase")]
    Tx {
        db: String,
        #[serde(rename = "txID")]
        txid: u64,
        #[serde(serialize_with = "hex16")]
        post_apply_checksum: u64,
        local: bool,
        /// Local commit: the lease epoch it was written under; applied: the highest epoch seen.
        epoch: u64,
    },
    /// Role or epoch changed; `writable` says whether local writes are accepted.
    Role { role: &'static str, epoch: u64, writable: bool },
    /// The primary this node follows changed (`None`: unknown or this node).
    PrimaryChange { primary: Option<PrimaryInfo> },
    /// Any other core event, as text (for logs and debugging).
    Core { detail: String },
}

/// How far a node is from being ready once (see the module docs, "Readiness").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Not primary and no complete initial catch-up from a primary yet (see [`Status`] for
    /// the role, the primary and the connection).
    Waiting,
    /// The primary sent its initial catch-up; these databases are still being applied:
    /// `(db, txid applied here, txid the catch-up reaches)`.
    Applying { behind: Vec<(String, u64, u64)> },
    /// Ready (latched).
    Ready,
}

/// Counters behind `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub messages_received: AtomicU64,
    /// Snapshots this node decided to send to peers.
    pub snapshots_sent: AtomicU64,
    /// Snapshot LTX files received from peers.
    pub snapshots_received: AtomicU64,
    /// Messages refused because their epoch was older than the highest accepted.
    pub stale_frames_rejected: AtomicU64,
    /// Frames that did not decode or broke a size limit (the connection was closed).
    pub frames_rejected: AtomicU64,
    /// LTX files refused (decode error, page error, dropped, checksum mismatch).
    pub ltx_rejected: AtomicU64,
    pub commits: AtomicU64,
    pub commits_rejected: AtomicU64,
    pub applied: AtomicU64,
    pub cluster_mismatches: AtomicU64,
    /// This node's history of a database was replaced by a peer's snapshot (a deposed primary's
    /// unreplicated commits are discarded this way; see the warning in the log for the TXIDs).
    pub history_resets: AtomicU64,
    /// TXIDs of this node's replaced histories beyond the new history's TXID (a lower bound of
    /// what was discarded: the divergence may start earlier).
    pub discarded_txids: AtomicU64,
    /// Peers this (primary) node reset by snapshot because they had commits not in its history.
    pub diverged_peers_reset: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Requests to the node task.
enum Cmd {
    PeerUp { peer: NodeId, conn: ConnId, tx: mpsc::Sender<Message>, closer: oneshot::Sender<()> },
    PeerDown { peer: NodeId, conn: ConnId },
    IoDone { id: ltxfs_core::node::IoId, result: Result<IoOutcome, IoErrorKind> },
    LeaseReply { id: ltxfs_core::node::LeaseRequestId, result: LeaseResult },
    LeaseView(LeaseView),
    /// `wal_backed`: see [`RuntimeHandle::commit_blocking`].
    Commit { commit: LocalCommit, reply: CommitReply, wal_backed: bool },
    Handoff { to: NodeId, reply: oneshot::Sender<Result<(), RuntimeError>> },
    ReadDatabase { db: DbName, reply: oneshot::Sender<Result<Vec<u8>, RuntimeError>> },
    Shutdown { reply: oneshot::Sender<()> },
}

type CommitReply = oneshot::Sender<Result<CommitOutcome, RuntimeError>>;

/// A network message for the node task; `None`: the connection ended. The end travels on the
/// same queue as the messages, so every frame read before it reaches the core first.
struct NetMsg {
    peer: NodeId,
    conn: ConnId,
    msg: Option<Message>,
}

/// A job for one database's I/O worker, run in order.
enum DiskJob {
    /// `wal_backed`: the LTX of a local WAL commit whose frames are durable ([`DataDir::execute_with`]).
    Io { command: IoCommand, epoch: Epoch, pos: Pos, wal_backed: bool },
    Read { reply: oneshot::Sender<Result<Vec<u8>, RuntimeError>> },
}

/// A cheap, cloneable handle to a running node.
#[derive(Clone)]
pub struct RuntimeHandle {
    /// Role changes only (also on `events`): for listeners that must not wake per transaction.
    roles: broadcast::Sender<RuntimeEvent>,
    cmd: mpsc::UnboundedSender<Cmd>,
    net: mpsc::Sender<NetMsg>,
    status: Arc<Mutex<Status>>,
    events: broadcast::Sender<RuntimeEvent>,
    metrics: Arc<Metrics>,
    config: Arc<RuntimeConfig>,
    primary_target: watch::Receiver<Option<(NodeId, String)>>,
    ready: watch::Receiver<Readiness>,
    next_conn: Arc<AtomicU64>,
    data: DataDir,
    hook: Arc<dyn ApplyHook>,
    /// The node task's state, for a commit stepped into the core on the caller's thread.
    direct: Arc<dyn DirectCommit>,
}

/// A local commit stepped into the core by the committing thread itself (the FUSE thread),
/// under the lock the node task holds while it handles anything: no hand-off to the node
/// task and back, and no wait for it to be scheduled, when the commit completes at once
/// (a WAL-backed LTX, written in the background; asynchronous replication).
trait DirectCommit: Send + Sync {
    fn commit(&self, commit: LocalCommit, reply: CommitReply, wal_backed: bool);
}

impl RuntimeHandle {
    /// Submits a transaction SQLite committed on this node (pages already in the database file)
    /// and waits for the core's verdict.
    pub async fn commit(&self, db: DbName, page_size: u32, commit: u32, pages: Vec<(u32, Vec<u8>)>) -> Result<CommitOutcome, RuntimeError> {
        let (reply, rx) = oneshot::channel();
        let commit = LocalCommit { db, page_size, commit, pages, wall: wall_now(), wal: None };
        self.cmd.send(Cmd::Commit { commit, reply, wal_backed: false }).map_err(|_| RuntimeError::Stopped)?;
        rx.await.map_err(|_| RuntimeError::Stopped)?
    }

    /// [`RuntimeHandle::commit`] for a non-async caller (the FUSE thread). Must not be called
    /// from inside the tokio runtime. `wal`: in WAL mode, where the transaction's frames lie
    /// (stamped into the LTX header). `wal_backed`: the caller made those frames durable (fsync
    /// of the WAL) and they follow, in the same WAL generation, frames whose LTX was written
    /// before (the first commit of each WAL generation is never WAL-backed: it anchors the
    /// chain start-up recovery rebuilds from). The LTX is then written without its own fsync,
    /// and the caller must call [`RuntimeHandle::sync_wal_backed`] before the frames can go.
    pub fn commit_blocking(
        &self,
        db: DbName,
        page_size: u32,
        commit: u32,
        pages: Vec<(u32, Vec<u8>)>,
        wal: Option<WalFrames>,
        wal_backed: bool,
    ) -> Result<CommitOutcome, RuntimeError> {
        let (reply, rx) = oneshot::channel();
        let wal_backed = wal_backed && wal.is_some();
        let commit = LocalCommit { db, page_size, commit, pages, wall: wall_now(), wal };
        self.direct.commit(commit, reply, wal_backed);
        rx.blocking_recv().map_err(|_| RuntimeError::Stopped)?
    }

    /// Makes the WAL-backed LTX files of `db` durable now (blocking; the FUSE thread calls it
    /// before SQLite restarts or truncates the WAL their frames are in). See
    /// [`DataDir::sync_wal_backed`].
    pub fn sync_wal_backed(&self, db: &DbName) -> std::io::Result<usize> {
        self.data.sync_wal_backed(db)
    }

    /// A WAL checkpoint of `db` started: its WAL-backed LTX files get synced in the background
    /// ([`DataDir::sync_before_wal_restart`]).
    pub fn sync_before_wal_restart(&self, db: &DbName) {
        self.data.sync_before_wal_restart(db)
    }

    /// Reads the latest state without copying it (the FUSE thread asks on every write).
    pub fn with_status<T>(&self, f: impl FnOnce(&Status) -> T) -> T {
        f(&self.status.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The latest state snapshot.
    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the node has been ready once (see the module docs, "Readiness").
    pub fn ready(&self) -> watch::Receiver<Readiness> {
        self.ready.clone()
    }

    /// The [`RuntimeEvent::Role`] changes from now on (no per-transaction events).
    pub fn subscribe_roles(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.roles.subscribe()
    }

    /// A stream of [`RuntimeEvent`]s from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Admin (primary only): hand the lease to `to`, a connected follower.
    pub async fn handoff(&self, to: NodeId) -> Result<(), RuntimeError> {
        let (reply, rx) = oneshot::channel();
        self.cmd.send(Cmd::Handoff { to, reply }).map_err(|_| RuntimeError::Stopped)?;
        rx.await.map_err(|_| RuntimeError::Stopped)?
    }

    /// The whole database file at the node's current position (in the database's I/O order).
    pub async fn export(&self, db: DbName) -> Result<Vec<u8>, RuntimeError> {
        let (reply, rx) = oneshot::channel();
        self.cmd.send(Cmd::ReadDatabase { db, reply }).map_err(|_| RuntimeError::Stopped)?;
        rx.await.map_err(|_| RuntimeError::Stopped)?
    }

    /// Replaces `db` with `image` (a whole SQLite file) as one transaction on the primary.
    /// The caller validated the image (page size, length). Refused unless writable.
    pub async fn import(&self, db: DbName, page_size: u32, image: Vec<u8>) -> Result<CommitOutcome, RuntimeError> {
        if !self.status().writable {
            return Ok(CommitOutcome::Rejected { reason: RejectReason::NotPrimary });
        }
        let pages = image.chunks(page_size as usize).enumerate().map(|(i, p)| ((i + 1) as u32, p.to_vec())).collect();
        drop(image);
        self.import_pages(db, page_size, pages).await
    }

    /// [`RuntimeHandle::import`] from a file (the HTTP layer's temporary copy of an upload),
    /// read once, page by page: the pages are the only copy of the file in memory. The caller
    /// validated the file (page size, length) and removes it afterwards. Refused unless
    /// writable.
    pub async fn import_file(&self, db: DbName, page_size: u32, path: PathBuf) -> Result<CommitOutcome, RuntimeError> {
        if !self.status().writable {
            return Ok(CommitOutcome::Rejected { reason: RejectReason::NotPrimary });
        }
        let pages = tokio::task::spawn_blocking(move || read_pages(&path, page_size))
            .await
            .map_err(|e| RuntimeError::Io(e.to_string()))?
            .map_err(|e| RuntimeError::Io(e.to_string()))?;
        self.import_pages(db, page_size, pages).await
    }

    /// Commits `pages` (1..=n, in order) as the whole database, then writes them as its file —
    /// under SQLite's locks from before the commit to after the write, so that no local
    /// transaction runs in between and a refused import changes nothing. A crash between the
    /// durable LTX and the file write is repaired at start-up (the last LTX is re-applied).
    async fn import_pages(&self, db: DbName, page_size: u32, pages: Vec<(u32, Vec<u8>)>) -> Result<CommitOutcome, RuntimeError> {
        let commit = u32::try_from(pages.len()).map_err(|_| RuntimeError::Io("database has more than 2^32 pages".into()))?;
        let (hook, name) = (self.hook.clone(), db.clone());
        tokio::task::spawn_blocking(move || hook.before_apply(&name)).await.map_err(|e| RuntimeError::Io(e.to_string()))?;
        // The core takes the pages; the file is written from the copy it hands back.
        let (reply, rx) = oneshot::channel();
        let local = LocalCommit { db: db.clone(), page_size, commit, pages: pages.clone(), wall: wall_now(), wal: None };
        let outcome = match self.cmd.send(Cmd::Commit { commit: local, reply, wal_backed: false }) {
            Ok(()) => rx.await.unwrap_or(Err(RuntimeError::Stopped)),
            Err(_) => Err(RuntimeError::Stopped),
        };
        let (hook, data, name) = (self.hook.clone(), self.data.clone(), db.clone());
        if !matches!(outcome, Ok(CommitOutcome::Committed { .. })) {
            tokio::task::spawn_blocking(move || hook.abort_apply(&name)).await.map_err(|e| RuntimeError::Io(e.to_string()))?;
            return outcome;
        }
        let written = tokio::task::spawn_blocking(move || {
            let result = write_pages(&data, &name, page_size, &pages);
            hook.after_apply(&name, &[], commit);
            result
        })
        .await
        .map_err(|e| RuntimeError::Io(e.to_string()))?;
        if let Err(e) = written {
            // The LTX is durable: start-up recovery writes it into the file again.
            tracing::error!(%db, error = %e, "imported LTX is durable but the database file could not be written");
            return Err(RuntimeError::Io(e.to_string()));
        }
        outcome
    }

    /// Stops the node cleanly (releases the lease, persists checksum indexes).
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Shutdown { reply }).is_ok() {
            let _ = rx.await;
        }
    }

    /// Resolves once the node task has stopped.
    pub async fn stopped(&self) {
        self.cmd.closed().await;
    }

    // ----- transport side (used by crate::http) -----

    /// A new connection to `peer`: messages for it go into `tx`; `closer` fires when the
    /// runtime closes the connection (after an error frame or a full queue).
    pub(crate) fn peer_up(&self, peer: NodeId, tx: mpsc::Sender<Message>, closer: oneshot::Sender<()>) -> ConnId {
        let conn = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        let _ = self.cmd.send(Cmd::PeerUp { peer, conn, tx, closer });
        conn
    }
    /// The connection ended (after every message read from it was delivered).
    pub(crate) async fn peer_down(&self, peer: NodeId, conn: ConnId) {
        let _ = self.net.send(NetMsg { peer, conn, msg: None }).await;
    }
    /// Delivers one decoded message (waits when the node task is behind).
    pub(crate) async fn peer_message(&self, peer: NodeId, conn: ConnId, msg: Message) -> Result<(), RuntimeError> {
        self.net.send(NetMsg { peer, conn, msg: Some(msg) }).await.map_err(|_| RuntimeError::Stopped)
    }
    /// The primary this node should stream from: `(node id, advertise url)`.
    pub(crate) fn primary_target(&self) -> watch::Receiver<Option<(NodeId, String)>> {
        self.primary_target.clone()
    }
}

/// Starts the node task on the current tokio runtime.
pub fn start<L: LeaseBackend>(config: RuntimeConfig, lease: Arc<L>, hook: Arc<dyn ApplyHook>) -> Result<RuntimeHandle, RuntimeError> {
    let origin = Instant::now();
    let data = DataDir::new(config.data_dir.clone());
    let opened = data.scan(Time::ZERO).map_err(|e| RuntimeError::Io(e.to_string()))?;
    let node = Node::new(config.core.clone(), config.node_id, Time::ZERO);
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (net_tx, net_rx) = mpsc::channel(NET_QUEUE_MAX);
    let (events, _) = broadcast::channel(EVENT_BUFFER_MAX);
    let (roles, _) = broadcast::channel(EVENT_BUFFER_MAX);
    let (target_tx, target_rx) = watch::channel(None);
    let (ready_tx, ready_rx) = watch::channel(Readiness::Waiting);
    let data_dir_path = config.data_dir.clone();
    let config = Arc::new(config);
    let status = Arc::new(Mutex::new(initial_status(&config)));
    let metrics = Arc::new(Metrics::default());
    let rt = tokio::runtime::Handle::current();
    let mut task = NodeTask {
        node,
        origin,
        data: data.clone(),
        hook: hook.clone(),
        lease,
        cmd_tx: cmd_tx.clone(),
        rt,
        peers: Peers::default(),
        workers: BTreeMap::new(),
        worker_jobs: BTreeMap::new(),
        inline_done: Vec::new(),
        commits: BTreeMap::new(),
        wal_backed: BTreeSet::new(),
        status: status.clone(),
        events: events.clone(),
        roles: roles.clone(),
        metrics: metrics.clone(),
        config: config.clone(),
        view: LeaseView::default(),
        target_tx,
        last_heartbeat_wall: None,
        last_role: None,
        shutdown_reply: None,
        outstanding: 0,
        replies: Vec::new(),
        accepted: BTreeMap::new(),
        event_log: EventLog::open(&data_dir_path, EVENT_LOG_BYTES_MAX),
        recovery: None,
        ready_tx,
        catchup: None,
        stopped: false,
    };
    task.drain(); // Node::new may already have outputs (a static primary's role change)
    task.step_input(Input::WallClock(wall_now()))?;
    for open in opened {
        tracing::info!(db = %open.db, pos = %open.pos, "database found on disk");
        task.step_input(Input::OpenDb(open))?;
    }
    task.refresh_status();
    task.flush_replies();
    let cell = Arc::new(TaskCell { task: Mutex::new(task), wake: tokio::sync::Notify::new() });
    let handle = RuntimeHandle {
        cmd: cmd_tx.clone(),
        net: net_tx,
        status: status.clone(),
        events: events.clone(),
        roles: roles.clone(),
        metrics: metrics.clone(),
        config: config.clone(),
        primary_target: target_rx,
        ready: ready_rx,
        next_conn: Arc::new(AtomicU64::new(1)),
        data,
        hook,
        direct: cell.clone(),
    };
    let mut watch_rx = cell.lock().lease.watch();
    let view_tx = cmd_tx.clone();
    tokio::spawn(async move {
        loop {
            let view = watch_rx.borrow_and_update().clone();
            if view_tx.send(Cmd::LeaseView(view)).is_err() {
                return;
            }
            if watch_rx.changed().await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(run(cell, cmd_rx, net_rx));
    Ok(handle)
}

/// Size from which `<data>/events.ndjson` is rotated (one older file is kept).
pub const EVENT_LOG_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// `<data>/events.ndjson`, appended to, rotated past a size (see the module docs).
struct EventLog {
    path: PathBuf,
    file: std::fs::File,
    bytes: u64,
    bytes_max: u64,
}

impl EventLog {
    /// Opens `<dir>/events.ndjson` for appending (a failure is logged, never fatal).
    fn open(dir: &std::path::Path, bytes_max: u64) -> Option<EventLog> {
        let path = dir.join("events.ndjson");
        let opened = std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|f| Ok((f.metadata()?.len(), f)));
        match opened {
            Ok((bytes, file)) => Some(EventLog { path, file, bytes, bytes_max }),
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot open the event log");
                None
            }
        }
    }

    fn append(&mut self, line: &str) -> std::io::Result<()> {
        use std::io::Write as _;
        if self.bytes > 0 && self.bytes + line.len() as u64 > self.bytes_max {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            std::fs::rename(&self.path, &old)?;
            self.file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
            self.bytes = 0;
        }
        self.file.write_all(line.as_bytes())?;
        self.bytes += line.len() as u64;
        Ok(())
    }
}

fn initial_status(config: &RuntimeConfig) -> Status {
    Status {
        node_id: config.node_id.to_string(),
        hostname: config.hostname.clone(),
        cluster_id: config.core.cluster_id.to_string(),
        role: "replica",
        is_primary: false,
        writable: false,
        candidate: false,
        epoch: 0,
        primary: None,
        connected_to_primary: false,
        positions: BTreeMap::new(),
        lag_ms: None,
        recovery: None,
        writable_until: None,
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Replica => "replica",
        Role::Candidate => "candidate",
        Role::Recovering => "recovering",
        Role::Primary => "primary",
        Role::Stopped => "stopped",
    }
}

/// The wall clock as the core wants it.
pub fn wall_now() -> WallMs {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    WallMs(i64::try_from(ms).unwrap_or(i64::MAX))
}

struct NodeTask<L: LeaseBackend> {
    node: Node,
    origin: Instant,
    data: DataDir,
    hook: Arc<dyn ApplyHook>,
    lease: Arc<L>,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
    /// Where its tasks are spawned (it also runs on the committing thread: [`DirectCommit`]).
    rt: tokio::runtime::Handle,
    peers: Peers,
    workers: BTreeMap<DbName, mpsc::UnboundedSender<DiskJob>>,
    /// Jobs sent to each database's disk worker and not finished yet.
    worker_jobs: BTreeMap<DbName, Arc<AtomicUsize>>,
    /// Completions of I/O done inline by this task ([`NodeTask::drain`]), fed to the core
    /// once the outputs that asked for them are all taken.
    inline_done: Vec<(IoId, Result<IoOutcome, IoErrorKind>)>,
    /// The caller waiting for each database's commit in flight (one per database).
    commits: BTreeMap<DbName, CommitReply>,
    /// Databases whose commit in flight came with durable WAL frames (not its first commit).
    wal_backed: BTreeSet<DbName>,
    status: Arc<Mutex<Status>>,
    events: broadcast::Sender<RuntimeEvent>,
    roles: broadcast::Sender<RuntimeEvent>,
    metrics: Arc<Metrics>,
    config: Arc<RuntimeConfig>,
    view: LeaseView,
    target_tx: watch::Sender<Option<(NodeId, String)>>,
    last_heartbeat_wall: Option<i64>,
    last_role: Option<(Role, Epoch)>,
    shutdown_reply: Option<oneshot::Sender<()>>,
    /// I/O commands and lease requests sent but not answered yet.
    outstanding: u64,
    /// Commit outcomes to send after the status is refreshed, so a caller that reads the status
    /// after its commit returns sees its position.
    replies: Vec<(CommitReply, Result<CommitOutcome, RuntimeError>)>,
    /// Per database in flight: (wall ms the core accepted it, wall ms of the lease deadline).
    accepted: BTreeMap<DbName, (i64, Option<i64>)>,
    /// `<data>/events.ndjson` (see the module docs); `None` if it cannot be opened.
    event_log: Option<EventLog>,
    recovery: Option<RecoveryStatus>,
    ready_tx: watch::Sender<Readiness>,
    /// Until ready: the initial catch-up of the current follow stream (`None` before it).
    catchup: Option<Catchup>,
    /// The task loop has ended: a direct commit is answered `Stopped`.
    stopped: bool,
}

/// The node task's state behind the lock that lets a committing thread step the core itself
/// ([`DirectCommit`]); `wake` tells the task loop that the core's next timeout may be earlier.
struct TaskCell<L: LeaseBackend> {
    task: Mutex<NodeTask<L>>,
    wake: tokio::sync::Notify,
}

impl<L: LeaseBackend> TaskCell<L> {
    fn lock(&self) -> MutexGuard<'_, NodeTask<L>> {
        self.task.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<L: LeaseBackend> DirectCommit for TaskCell<L> {
    fn commit(&self, commit: LocalCommit, reply: CommitReply, wal_backed: bool) {
        let mut task = self.lock();
        if task.stopped {
            let _ = reply.send(Err(RuntimeError::Stopped));
            return;
        }
        let before = task.node.poll_timeout();
        task.on_commit(commit, reply, wal_backed);
        task.refresh_status();
        task.flush_replies();
        let after = task.node.poll_timeout();
        drop(task);
        if after.is_some_and(|a| before.is_none_or(|b| a < b)) {
            self.wake.notify_one();
        }
    }
}

/// The node task: handles commands, network messages and the core's timeouts, one at a time
/// under the cell's lock (never held across an await).
async fn run<L: LeaseBackend>(cell: Arc<TaskCell<L>>, mut cmd_rx: mpsc::UnboundedReceiver<Cmd>, mut net_rx: mpsc::Receiver<NetMsg>) {
    loop {
        let deadline = {
            let task = cell.lock();
            task.node.poll_timeout().map(|t| task.instant_of(t))
        };
        let ended = tokio::select! {
            biased;
            cmd = cmd_rx.recv() => match cmd {
                Some(cmd) => {
                    cell.lock().on_cmd(cmd);
                    false
                }
                None => true,
            },
            msg = net_rx.recv() => match msg {
                Some(m) => {
                    cell.lock().on_net(m);
                    false
                }
                None => true,
            },
            () = sleep_until_opt(deadline) => {
                let mut task = cell.lock();
                let now = task.now();
                let _ = task.node.handle_input(now, Input::WallClock(wall_now()));
                task.drain();
                task.node.handle_timeout(now);
                task.drain();
                false
            }
            () = cell.wake.notified() => false,
        };
        let mut task = cell.lock();
        task.refresh_status();
        task.flush_replies();
        if ended || (task.node.role() == Role::Stopped && task.shutdown_reply.is_some() && task.workers_idle()) {
            break;
        }
    }
    let mut task = cell.lock();
    task.stopped = true;
    task.refresh_status();
    task.flush_replies();
    task.peers.close_all();
    if let Err(e) = task.data.sync_all_deferred() {
        tracing::error!(error = %e, "cannot sync WAL-backed LTX files or applied database files at shutdown");
    }
    if let Some(reply) = task.shutdown_reply.take() {
        let _ = reply.send(());
    }
    for (_, reply) in std::mem::take(&mut task.commits) {
        let _ = reply.send(Err(RuntimeError::Stopped));
    }
}

/// The initial catch-up a follow stream carries (readiness only; decides nothing).
#[derive(Default)]
struct Catchup {
    /// Per database, the highest TXID of the LTX files received from the primary so far.
    reaches: BTreeMap<DbName, u64>,
    /// The primary sent `Ready`: `reaches` is complete.
    sent: bool,
}

/// Counts a disk worker's job as finished when dropped (also if the job panicked).
struct JobDone<'a>(&'a AtomicUsize);

impl Drop for JobDone<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<L: LeaseBackend> NodeTask<L> {
    fn now(&self) -> Time {
        Time::from_nanos(u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn instant_of(&self, t: Time) -> Instant {
        self.origin.checked_add(Duration::from_nanos(t.as_nanos())).unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365))
    }

    /// No I/O command or lease request is outstanding (a clean shutdown waits for them).
    fn workers_idle(&self) -> bool {
        self.outstanding == 0
    }

    fn step_input(&mut self, input: Input) -> Result<(), InputError> {
        let now = self.now();
        let result = self.node.handle_input(now, input);
        self.drain();
        result
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::PeerUp { peer, conn, tx, closer } => {
                // The new connection becomes the peer's link; the one it replaces is closed
                // (see `peers`). That is the old link's end as far as the core is concerned:
                // what was in flight on it may be lost, and its later end changes nothing.
                if let Some(replaced) = self.peers.add(peer, conn, tx, closer) {
                    tracing::debug!(%peer, ?replaced, new = ?conn, "a new connection replaces the peer's link");
                    let _ = self.step_input(Input::PeerDisconnected { peer });
                }
                let _ = self.step_input(Input::PeerConnected { peer });
            }
            Cmd::PeerDown { peer, conn } => {
                // Only the link's end is news to the core; a replaced connection's was reported.
                if self.peers.remove(peer, conn) {
                    let _ = self.step_input(Input::PeerDisconnected { peer });
                }
            }
            Cmd::IoDone { id, result } => {
                self.outstanding -= 1;
                if let Err(e) = self.step_input(Input::IoDone { id, result }) {
                    tracing::error!(error = %e, "I/O completion refused by the core");
                }
            }
            Cmd::LeaseReply { id, result } => {
                self.outstanding -= 1;
                if let Err(e) = self.step_input(Input::LeaseReply { id, result }) {
                    tracing::debug!(error = %e, "late lease reply ignored");
                }
            }
            Cmd::LeaseView(view) => self.on_lease_view(view),
            Cmd::Commit { commit, reply, wal_backed } => self.on_commit(commit, reply, wal_backed),
            Cmd::Handoff { to, reply } => {
                let _ = reply.send(self.step_input(Input::Handoff { to }).map_err(RuntimeError::from));
            }
            Cmd::ReadDatabase { db, reply } => {
                if self.node.db_pos(&db).is_none() {
                    let _ = reply.send(Err(RuntimeError::NoSuchDb(db)));
                } else {
                    self.worker_jobs.entry(db.clone()).or_default().fetch_add(1, Ordering::AcqRel);
                    self.worker(&db).send(DiskJob::Read { reply }).ok();
                }
            }
            Cmd::Shutdown { reply } => {
                self.shutdown_reply = Some(reply);
                let _ = self.step_input(Input::Shutdown);
            }
        }
    }

    fn on_commit(&mut self, commit: LocalCommit, reply: CommitReply, wal_backed: bool) {
        let db = commit.db.clone();
        if self.commits.contains_key(&db) {
            Metrics::add(&self.metrics.commits_rejected, 1);
            let _ = reply.send(Ok(CommitOutcome::Rejected { reason: RejectReason::CommitInFlight }));
            return;
        }
        self.commits.insert(db.clone(), reply);
        // The first commit of a database (its snapshot LTX) is always fsynced: without any LTX
        // start-up recovery has no chain to rebuild WAL frames onto.
        if wal_backed && self.node.db_pos(&db).is_some_and(|p| p.pos.txid > 0) {
            self.wal_backed.insert(db.clone());
        }
        let now = self.now();
        let accepted_wall = wall_now().0;
        let deadline_wall = self.node.lease_deadline().filter(|d| *d != Time::MAX).map(|d| {
            let left_ms = i64::try_from(d.saturating_since(now).as_nanos() / 1_000_000).unwrap_or(i64::MAX);
            accepted_wall.saturating_add(left_ms)
        });
        self.accepted.insert(db.clone(), (accepted_wall, deadline_wall));
        if let Err(e) = self.step_input(Input::LocalCommit(commit)) {
            self.wal_backed.remove(&db);
            if let Some(reply) = self.commits.remove(&db) {
                let _ = reply.send(Err(RuntimeError::Invalid(e)));
            }
        }
    }

    fn on_net(&mut self, m: NetMsg) {
        let (peer, conn) = (m.peer, m.conn);
        let Some(msg) = m.msg else {
            return self.on_cmd(Cmd::PeerDown { peer, conn });
        };
        if !self.peers.is_live(peer, conn) {
            return; // from a connection already closed: the core was told it is gone
        }
        if let Message::Heartbeat { wall_ms, epoch } = &msg {
            // Only the current primary's heartbeats measure lag (never a stale epoch's).
            if self.node.upstream() == Some(peer) && *epoch >= self.node.highest_epoch() {
                self.last_heartbeat_wall = Some(*wall_ms);
            }
        }
        if let Message::Ltx { offset: 0, bytes, .. } = &msg {
            if bytes.len() >= ltxfs_core::ltx::HEADER_SIZE {
                let mut h = [0u8; ltxfs_core::ltx::HEADER_SIZE];
                h.copy_from_slice(&bytes[..ltxfs_core::ltx::HEADER_SIZE]);
                if let Ok(header) = ltxfs_core::ltx::Header::from_bytes(&h) {
                    if header.is_snapshot() {
                        Metrics::add(&self.metrics.snapshots_received, 1);
                    }
                    self.note_catchup_ltx(peer, &msg, header.max_txid);
                }
            }
        }
        let _ = self.step_input(Input::Receive { from: peer, msg });
    }

    fn on_lease_view(&mut self, view: LeaseView) {
        self.view = view.clone();
        let target = view.holder.as_ref().filter(|h| h.node_id != self.config.node_id).map(|h| (h.node_id, h.advertise_url.clone()));
        self.target_tx.send_if_modified(|t| {
            let changed = *t != target;
            *t = target.clone();
            changed
        });
        let primary = view.holder.as_ref().filter(|h| h.node_id != self.config.node_id).map(|h| PrimaryInfo {
            node_id: h.node_id.to_string(),
            hostname: h.hostname.clone(),
            advertise_url: h.advertise_url.clone(),
        });
        let _ = self.events.send(RuntimeEvent::PrimaryChange { primary });
        if view.dynamic {
            let _ = self.step_input(Input::LeaseObserved { holder: view.holder.map(|h| h.node_id), epoch: view.epoch });
        }
    }

    fn worker(&mut self, db: &DbName) -> mpsc::UnboundedSender<DiskJob> {
        if let Some(w) = self.workers.get(db) {
            return w.clone();
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<DiskJob>();
        let data = self.data.clone();
        let hook = self.hook.clone();
        let cmd = self.cmd_tx.clone();
        let name = db.clone();
        let jobs = self.worker_jobs.entry(db.clone()).or_default().clone();
        self.rt.spawn(async move {
            while let Some(job) = rx.recv().await {
                let _done = JobDone(&jobs);
                let (data, hook, name) = (data.clone(), hook.clone(), name.clone());
                match job {
                    DiskJob::Io { command, epoch, pos, wal_backed } => {
                        let result = tokio::task::spawn_blocking(move || data.execute_with(&command.kind, epoch, pos, hook.as_ref(), wal_backed))
                            .await
                            .unwrap_or(Err(IoErrorKind::Failed));
                        let _ = cmd.send(Cmd::IoDone { id: command.id, result });
                    }
                    DiskJob::Read { reply } => {
                        let kind = IoKind::ReadDatabase { db: name };
                        let result = tokio::task::spawn_blocking(move || data.execute(&kind, Epoch::ZERO, Pos::ZERO, hook.as_ref()))
                            .await
                            .unwrap_or(Err(IoErrorKind::Failed));
                        let _ = reply.send(match result {
                            Ok(IoOutcome::Database(image)) => Ok(image),
                            other => Err(RuntimeError::Io(format!("{other:?}"))),
                        });
                    }
                }
            }
        });
        self.workers.insert(db.clone(), tx.clone());
        tx
    }

    /// Executes every pending output of the node.
    fn drain(&mut self) {
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Send { to, msg } => {
                    if matches!(msg, Message::StreamRequest { mode: ltxfs_core::msg::StreamMode::Follow, .. }) && !self.is_ready() {
                        self.catchup = Some(Catchup::default()); // a new stream: a new initial catch-up
                    }
                    let bytes = msg.encode().len() as u64;
                    if self.peers.send(to, msg) {
                        Metrics::add(&self.metrics.bytes_sent, bytes + 4);
                        Metrics::add(&self.metrics.messages_sent, 1);
                    }
                }
                Output::Io(command) => {
                    let db = command.kind.db().clone();
                    let at = self.node.db_pos(&db).unwrap_or_default();
                    self.outstanding += 1;
                    // Only the commit's own LTX: while a local commit is in flight the core writes
                    // no other LTX for its database.
                    let wal_backed = matches!(command.kind, IoKind::WriteLtx { .. }) && self.wal_backed.contains(&db);
                    let worker_idle = self.worker_jobs.get(&db).is_none_or(|n| n.load(Ordering::Acquire) == 0);
                    if wal_backed && worker_idle {
                        // A WAL-backed LTX is one small write without an fsync, and nothing is
                        // queued before it for this database: doing it here saves the commit
                        // two thread hand-offs each way (disk worker, blocking pool).
                        let result = self.data.execute_with(&command.kind, at.epoch, at.pos, self.hook.as_ref(), true);
                        self.inline_done.push((command.id, result));
                        continue;
                    }
                    self.worker_jobs.entry(db.clone()).or_default().fetch_add(1, Ordering::AcqRel);
                    self.worker(&db).send(DiskJob::Io { command, epoch: at.epoch, pos: at.pos, wal_backed }).ok();
                }
                Output::Lease(request) => {
                    self.outstanding += 1;
                    let lease = self.lease.clone();
                    let cmd = self.cmd_tx.clone();
                    self.rt.spawn(async move {
                        let result = match request.kind {
                            LeaseKind::Acquire => lease.acquire().await,
                            LeaseKind::Renew { epoch } => lease.renew(epoch).await,
                            LeaseKind::Release { epoch } => lease.release(epoch).await,
                            LeaseKind::Handoff { epoch, to } => lease.handoff(epoch, to).await,
                        };
                        let _ = cmd.send(Cmd::LeaseReply { id: request.id, result });
                    });
                }
                Output::Event(event) => self.on_event(event),
            }
        }
        // Bounded: each completion is one I/O command the core asked for.
        for (id, result) in std::mem::take(&mut self.inline_done) {
            self.outstanding -= 1;
            if let Err(e) = self.step_input(Input::IoDone { id, result }) {
                tracing::error!(error = %e, "I/O completion refused by the core");
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        tracing::debug!(?event, "core event");
        match &event {
            Event::Committed { db, pos } => {
                Metrics::add(&self.metrics.commits, 1);
                self.resolve(db, Ok(CommitOutcome::Committed { txid: pos.txid, checksum: pos.checksum }));
                let epoch = self.node.lease_epoch().unwrap_or(self.node.highest_epoch());
                let (accepted, deadline) = self.accepted.remove(db).unwrap_or((wall_now().0, None));
                self.log_event(serde_json::json!({
                    "type": "commit", "db": db.to_string(), "txID": pos.txid, "checksum": format!("{:016x}", pos.checksum),
                    "epoch": epoch.0, "acceptedWallMs": accepted, "deadlineWallMs": deadline,
                }));
                self.tx_event(db, *pos, true);
                return;
            }
            Event::HistoryReplaced { db, from, old, old_epoch, new } => {
                let beyond = old.txid.saturating_sub(new.txid);
                tracing::warn!(
                    %db, from = %from, old = %old, old_epoch = old_epoch.0, new = %new,
                    "a snapshot replaced this node's history: its TXIDs up to {} (epoch {}) that the new history lacks are discarded ({} beyond the new TXID {})",
                    old.txid, old_epoch.0, beyond, new.txid
                );
                Metrics::add(&self.metrics.history_resets, 1);
                Metrics::add(&self.metrics.discarded_txids, beyond);
                self.log_event(serde_json::json!({
                    "type": "historyReplaced", "db": db.to_string(), "from": from.to_string(),
                    "oldTxID": old.txid, "oldChecksum": format!("{:016x}", old.checksum), "oldEpoch": old_epoch.0,
                    "newTxID": new.txid, "newChecksum": format!("{:016x}", new.checksum),
                }));
            }
            Event::SnapshotNeeded { peer, db, reason } => {
                Metrics::add(&self.metrics.snapshots_sent, 1);
                use ltxfs_core::catchup::SnapshotReason;
                if matches!(reason, SnapshotReason::PeerAhead | SnapshotReason::Diverged) {
                    tracing::warn!(%db, peer = %peer, ?reason, "peer has commits not in this history: it is reset by snapshot");
                    Metrics::add(&self.metrics.diverged_peers_reset, 1);
                }
            }
            Event::RecoveryWaiting { have, need } => {
                self.recovery = Some(RecoveryStatus { have: *have, need: *need });
                tracing::info!(have, need, "primary but not writable yet: waiting for positions of enough nodes");
            }
            Event::CommitOutcomeUnknown { db, pos } => {
                self.resolve(db, Ok(CommitOutcome::Unknown { txid: pos.txid, checksum: pos.checksum }));
            }
            Event::CommitFailed { db, error } => self.resolve(db, Ok(CommitOutcome::Failed { error: *error })),
            Event::WriteRejected { db, reason } => {
                Metrics::add(&self.metrics.commits_rejected, 1);
                self.resolve(db, Ok(CommitOutcome::Rejected { reason: *reason }));
            }
            Event::Applied { db, pos, from } => {
                Metrics::add(&self.metrics.applied, 1);
                let frame_epoch = self.node.db_pos(db).map_or(0, |p| p.epoch.0);
                self.log_event(serde_json::json!({
                    "type": "applied", "db": db.to_string(), "txID": pos.txid, "from": from.to_string(),
                    "frameEpoch": frame_epoch, "highestEpoch": self.node.highest_epoch().0,
                }));
                self.tx_event(db, *pos, false);
                return;
            }
            Event::PrimaryReady { .. } => {
                if let Some(c) = self.catchup.as_mut() {
                    c.sent = true;
                }
            }
            Event::StaleEpochRejected { .. } => Metrics::add(&self.metrics.stale_frames_rejected, 1),
            Event::InvalidLtx { .. } | Event::InvalidLtxPages { .. } | Event::LtxDropped { .. } | Event::ChecksumMismatch { .. } => {
                tracing::warn!(?event, "LTX refused");
                Metrics::add(&self.metrics.ltx_rejected, 1);
            }
            Event::ClusterMismatch { .. } => {
                tracing::warn!(?event, "peer of another cluster refused");
                Metrics::add(&self.metrics.cluster_mismatches, 1);
            }
            Event::PeerRefused { .. } | Event::SteppedDown { .. } | Event::IoFailed { .. } => tracing::warn!(?event, "core event"),
            _ => {}
        }
        let _ = self.events.send(RuntimeEvent::Core { detail: format!("{event:?}") });
    }

    fn tx_event(&self, db: &DbName, pos: Pos, local: bool) {
        let epoch = self.node.lease_epoch().unwrap_or(self.node.highest_epoch()).0;
        let _ = self.events.send(RuntimeEvent::Tx { db: db.to_string(), txid: pos.txid, post_apply_checksum: pos.checksum, local, epoch });
    }

    /// Appends one line to `<data>/events.ndjson` with the wall time and this node's id.
    fn log_event(&mut self, mut record: serde_json::Value) {
        let Some(log) = self.event_log.as_mut() else { return };
        record["wallMs"] = wall_now().0.into();
        record["node"] = self.config.node_id.to_string().into();
        let mut line = record.to_string();
        line.push('\n');
        if let Err(e) = log.append(&line) {
            tracing::warn!(error = %e, "cannot append to the event log");
        }
    }

    /// Answers the commit waiting on `db` once the status reflects it (see `flush_replies`).
    fn resolve(&mut self, db: &DbName, outcome: Result<CommitOutcome, RuntimeError>) {
        self.wal_backed.remove(db);
        if let Some(reply) = self.commits.remove(db) {
            self.replies.push((reply, outcome));
        }
    }

    fn flush_replies(&mut self) {
        for (reply, outcome) in self.replies.drain(..) {
            let _ = reply.send(outcome);
        }
    }

    fn is_ready(&self) -> bool {
        *self.ready_tx.borrow() == Readiness::Ready
    }

    /// An LTX from the primary during the initial catch-up: the catch-up reaches `max_txid`.
    fn note_catchup_ltx(&mut self, peer: NodeId, msg: &Message, max_txid: u64) {
        let Message::Ltx { db, .. } = msg else { return };
        if self.node.upstream() != Some(peer) {
            return;
        }
        if let Some(c) = self.catchup.as_mut().filter(|c| !c.sent) {
            let reach = c.reaches.entry(db.clone()).or_insert(0);
            *reach = (*reach).max(max_txid);
        }
    }

    /// Latches [`Readiness::Ready`] once writable, or once the initial catch-up is applied.
    fn refresh_readiness(&mut self) {
        if self.is_ready() {
            return;
        }
        let next = if self.node.is_writable(self.now()) {
            Readiness::Ready
        } else {
            match self.catchup.as_ref().filter(|c| c.sent) {
                None => Readiness::Waiting,
                Some(c) => {
                    let behind: Vec<(String, u64, u64)> = c
                        .reaches
                        .iter()
                        .map(|(db, reach)| (db, self.node.db_pos(db).map_or(0, |p| p.pos.txid), *reach))
                        .filter(|(_, at, reach)| at < reach)
                        .map(|(db, at, reach)| (db.to_string(), at, reach))
                        .collect();
                    if behind.is_empty() { Readiness::Ready } else { Readiness::Applying { behind } }
                }
            }
        };
        if next == Readiness::Ready {
            self.catchup = None;
            tracing::info!("ready: connected to the cluster");
        }
        self.ready_tx.send_if_modified(|r| {
            let changed = *r != next;
            *r = next;
            changed
        });
    }

    fn refresh_status(&mut self) {
        self.refresh_readiness();
        let now = self.now();
        let role = self.node.role();
        let epoch = self.node.lease_epoch().unwrap_or(self.node.highest_epoch());
        let writable = self.node.is_writable(now);
        if self.last_role != Some((role, epoch)) {
            self.last_role = Some((role, epoch));
            let _ = self.events.send(RuntimeEvent::Role { role: role_name(role), epoch: epoch.0, writable });
            let _ = self.roles.send(RuntimeEvent::Role { role: role_name(role), epoch: epoch.0, writable });
            self.log_event(serde_json::json!({ "type": "role", "role": role_name(role), "epoch": epoch.0, "writable": writable }));
            tracing::info!(role = role_name(role), epoch = epoch.0, writable, "role");
        }
        if role != Role::Recovering {
            self.recovery = None;
        }
        let writable_until = match self.node.lease_deadline() {
            Some(d) if writable => Some(self.instant_of(d)),
            _ => None,
        };
        let upstream = self.node.upstream();
        let primary = self.view.holder.as_ref().filter(|h| h.node_id != self.config.node_id && Some(h.node_id) == upstream).map(|h| {
            PrimaryInfo { node_id: h.node_id.to_string(), hostname: h.hostname.clone(), advertise_url: h.advertise_url.clone() }
        });
        let connected_to_primary = upstream.is_some_and(|p| self.peers.is_connected(p));
        let positions = self
            .node
            .positions()
            .into_iter()
            .map(|(db, p)| (db.to_string(), DbStatus { txid: p.pos.txid, checksum: p.pos.checksum, epoch: p.epoch.0 }))
            .collect();
        let lag_ms = match role {
            Role::Primary | Role::Recovering => None,
            _ => self.last_heartbeat_wall.map(|w| (wall_now().0 - w).max(0)),
        };
        let candidate = matches!(self.config.core.lease, ltxfs_core::node::LeaseMode::Dynamic { candidate: true, .. })
            || matches!(self.config.core.lease, ltxfs_core::node::LeaseMode::Static { primary } if primary == self.config.node_id);
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.role = role_name(role);
        s.is_primary = matches!(role, Role::Primary | Role::Recovering);
        s.writable = writable;
        s.candidate = candidate;
        s.epoch = epoch.0;
        s.primary = primary;
        s.connected_to_primary = connected_to_primary;
        s.positions = positions;
        s.lag_ms = lag_ms;
        s.recovery = self.recovery;
        s.writable_until = writable_until;
    }
}

/// Bytes buffered per write while an import replaces a database file.
const IMPORT_WRITE_BUFFER_BYTES: usize = 1 << 20;

/// The pages of a SQLite file whose length is a whole number of `page_size` pages, numbered
/// from 1, read in one pass.
fn read_pages(path: &std::path::Path, page_size: u32) -> std::io::Result<Vec<(u32, Vec<u8>)>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let ps = u64::from(page_size);
    if page_size == 0 || len % ps != 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "file length is not a whole number of pages"));
    }
    let count = u32::try_from(len / ps).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "more than 2^32 pages"))?;
    let mut reader = std::io::BufReader::with_capacity(IMPORT_WRITE_BUFFER_BYTES, file);
    let mut pages = Vec::with_capacity(count as usize);
    for pgno in 1..=count {
        let mut page = vec![0u8; page_size as usize];
        reader.read_exact(&mut page)?;
        pages.push((pgno, page));
    }
    Ok(pages)
}

/// Replaces `<data>/dbs/<db>/database` with `pages` (1..=n, in order), durably, inside the
/// [`ApplyHook`] (the same steps as a whole-file apply: locks, write, truncate, fsync, cache
/// invalidation).
/// Writes `pages` (1..=n, in order) as the whole database file, fsynced. The caller holds
/// SQLite's locks ([`ApplyHook::before_apply`]).
fn write_pages(data: &DataDir, db: &DbName, page_size: u32, pages: &[(u32, Vec<u8>)]) -> std::io::Result<()> {
    use std::io::Write as _;
    std::fs::create_dir_all(data.db_dir(db))?;
    let file = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(data.database_path(db))?;
    let mut out = std::io::BufWriter::with_capacity(IMPORT_WRITE_BUFFER_BYTES, &file);
    for (_, page) in pages {
        out.write_all(page)?;
    }
    out.flush()?;
    drop(out);
    file.set_len(pages.len() as u64 * u64::from(page_size))?;
    file.sync_all()
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A stable node id from a node's name (CRC-64 of the UTF-8 bytes, never 0), for configs that
/// name members by hostname.
pub fn node_id_from_name(name: &str) -> NodeId {
    NodeId(ltxfs_core::ltx::checksum::crc64_go_iso(name.as_bytes()).max(1))
}

#[cfg(test)]
mod tests {
    use super::EventLog;

    #[test]
    fn the_event_log_is_rotated_past_its_size_keeping_one_older_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(dir.path(), 100).unwrap();
        let line = format!("{}\n", "x".repeat(39)); // 40 bytes
        for _ in 0..2 {
            log.append(&line).unwrap();
        }
        assert!(!dir.path().join("events.ndjson.1").exists(), "80 bytes: not rotated yet");
        log.append(&line).unwrap(); // would make 120
        assert_eq!(std::fs::read_to_string(dir.path().join("events.ndjson.1")).unwrap(), line.repeat(2));
        assert_eq!(std::fs::read_to_string(dir.path().join("events.ndjson")).unwrap(), line);
        // Reopened (a restart): the size already there counts.
        drop(log);
        let mut log = EventLog::open(dir.path(), 100).unwrap();
        log.append(&line).unwrap();
        log.append(&line).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("events.ndjson.1")).unwrap(), line.repeat(2));
        assert_eq!(std::fs::read_to_string(dir.path().join("events.ndjson")).unwrap(), line);
    }
}
