//! The boundary between the world and a node state machine.
//!
//! The world drives anything that implements [`Machine`]: the real `ltxfs-core` node through
//! [`crate::core_binding`]. The types here are the
//! simulator's own, neutral view of inputs, outputs and observations, so the checkers never
//! depend on the exact shape of the core's API: a binding translates.
//!
//! This module decides nothing; it only names things.

use std::fmt::Debug;
use std::hash::Hash;

use crate::disk::SimDisk;

/// A node index, 0-based (`n1` is 0).
pub type NodeIdx = u8;

/// A database name in events and views: shared, so that passing one on costs a reference count,
/// not an allocation (views are taken after every step of every node).
///
/// It behaves as its text (`str`'s equality, order, hash, `Debug` and `Display`), but compares
/// in place: names are compared on every step (views, checker maps, disk maps), most often with
/// the same allocation (equal at once) or a name differing within a few bytes, where a call into
/// the C library's `memcmp` costs more than the comparison.
#[derive(Clone)]
pub struct DbId(std::rc::Rc<str>);

impl DbId {
    /// Whether both are the same allocation (then they are equal).
    pub fn ptr_eq(a: &DbId, b: &DbId) -> bool {
        std::rc::Rc::ptr_eq(&a.0, &b.0)
    }
}

impl From<&str> for DbId {
    fn from(name: &str) -> DbId {
        DbId(std::rc::Rc::from(name))
    }
}

impl std::ops::Deref for DbId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Consistent with `str`'s order and equality (see [`Ord for DbId`](DbId)), so maps keyed by
/// `DbId` can be searched with a `&str`.
impl std::borrow::Borrow<str> for DbId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq for DbId {
    fn eq(&self, other: &DbId) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for DbId {}

impl PartialOrd for DbId {
    fn partial_cmp(&self, other: &DbId) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for DbId {
    fn cmp(&self, other: &DbId) -> std::cmp::Ordering {
        if DbId::ptr_eq(self, other) {
            return std::cmp::Ordering::Equal;
        }
        ltxfs_core::ids::cmp_names(&self.0, &other.0)
    }
}

impl Hash for DbId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Debug for DbId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for DbId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

/// Something that can send or receive over the simulated network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    Node(NodeIdx),
    Lease,
}

impl Peer {
    pub fn name(self) -> String {
        match self {
            Peer::Node(index) => format!("n{}", index + 1),
            Peer::Lease => "lease".to_string(),
        }
    }
}

/// A path on a simulated disk. LTX files in the core binding's layout (`DB/ltx/MIN-MAX.ltx`) are
/// kept as their numbers, so that naming and finding one costs no formatting and no string
/// comparison (the binding names every LTX file this way; the same text given as `Other` would be
/// another key). Any other path is text. `Display` gives the path as text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FilePath {
    Ltx { min_txid: u64, max_txid: u64, db: DbId },
    Other(String),
}

impl FilePath {
    pub fn ltx(db: DbId, min_txid: u64, max_txid: u64) -> FilePath {
        FilePath::Ltx { min_txid, max_txid, db }
    }

    /// The first component of the path (the database directory).
    pub fn dir(&self) -> Option<&str> {
        match self {
            FilePath::Ltx { db, .. } => Some(db),
            FilePath::Other(path) => path.split_once('/').map(|(dir, _)| dir),
        }
    }
}

impl From<&str> for FilePath {
    fn from(path: &str) -> FilePath {
        FilePath::Other(path.to_string())
    }
}

impl std::fmt::Display for FilePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FilePath::Ltx { min_txid, max_txid, db } => {
                write!(f, "{db}/ltx/{}", ltxfs_core::ltx::file_name(*min_txid, *max_txid))
            }
            FilePath::Other(path) => f.write_str(path),
        }
    }
}

/// What the world needs to know to start a node.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub cluster_size: u8,
    pub lease_ttl_ms: u64,
    pub sync_replicas: u8,
    /// Seed for any randomness inside the node (jitter), derived from the run seed.
    pub seed: u64,
    /// Name of the planted bug to enable, if the machine supports planted bugs.
    pub planted: Option<String>,
    /// Nodes configured with another cluster id than the rest (scenario key `other_cluster`).
    /// They are not lease candidates: a misconfigured replica trying to join.
    pub other_cluster: Vec<NodeIdx>,
    /// Whether LTX files are LZ4-compressed (scenario key `compress_ltx`, default true).
    pub compress_ltx: bool,
}

/// A lease-service operation, as carried over the simulated network.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LeaseOp {
    Acquire,
    Renew { epoch: u64 },
    Release { epoch: u64 },
    /// Ends `epoch` and reserves the next one for `to` for one TTL.
    Handoff { epoch: u64, to: NodeIdx },
}

/// The lease service's answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LeaseResult {
    Granted { epoch: u64, ttl_ms: u64 },
    Renewed { epoch: u64, ttl_ms: u64 },
    /// Someone else holds it (or it is reserved / in lock delay).
    Held { holder: Option<NodeIdx>, epoch: u64 },
    /// The lease named in the request is not (or no longer) the caller's.
    Lost { epoch: u64 },
    Released,
    /// No answer within the client timeout: the request may or may not have taken effect.
    Error,
}

/// An I/O command for the simulated disk. Every command is written, then (if `fsync`) made
/// durable, then completed; a crash in between loses what was not fsynced.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IoKind {
    /// Writes a whole file. `atomic`: written to a temporary name and renamed, so a crash never
    /// leaves part of it (no torn write); without `fsync` it is still lost by a crash.
    /// `commit_of`: this is the LTX of a local commit of that database — its completion is the
    /// commit point (SQLite deletes its journal), so the database pages the client wrote become
    /// durable then, or are rolled back (hot journal) if the write failed.
    /// `merge`: whether the disk may store it merged with the file before it ([`LtxMerge`]).
    WriteFile { path: FilePath, data: Vec<u8>, fsync: bool, atomic: bool, commit_of: Option<DbId>, merge: LtxMerge },
    /// Writes pages into a database file and sets its size to `commit` pages.
    WritePages { db: DbId, page_size: u32, commit: u32, pages: Vec<(u32, Vec<u8>)>, fsync: bool },
    /// Deletes files (a journaled unlink: durable at once; a missing file is not an error).
    DeleteFiles { paths: Vec<FilePath> },
    /// Reads whole files, in order; answers [`IoValue::Files`].
    ReadFiles { paths: Vec<FilePath> },
    /// Reads a database file as an image of `commit` pages; answers [`IoValue::Data`].
    ReadDb { db: String },
}

/// Whether an LTX file write may be stored merged with the newest LTX file of its database
/// (the core's `IoOutcome::LtxMerged`: `ltxfs` stores a burst of WAL-mode commits as one file).
/// The binding allows it, the world decides it (seeded), the disk carries it out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum LtxMerge {
    /// Stored as written.
    #[default]
    No,
    /// A one-transaction incremental LTX: the world may have the disk try to merge it.
    Allowed,
    /// The world decided to try: the disk merges it if the newest LTX file of its database ends
    /// right before it and the merged file spans at most `txids_max` TXIDs
    /// ([`crate::disk::SimDisk::write_merged`]).
    Try { txids_max: u64 },
    /// The disk stored it merged, as the file `min_txid..` (the command's `path` now names it);
    /// the file it replaces is `replaced`, unlinked when the command completes.
    Stored { min_txid: u64, replaced: FilePath },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoError {
    Eio,
    Enospc,
    NotFound,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IoValue {
    Done,
    /// A file write with [`LtxMerge::Stored`] completed: stored as one file from `min_txid`.
    Merged { min_txid: u64 },
    Data(Vec<u8>),
    Files(Vec<Vec<u8>>),
}

/// Inputs from the world to a node.
#[derive(Debug, Clone)]
pub enum MachineInput<M> {
    Receive { from: NodeIdx, msg: M },
    LeaseReply { id: u64, result: LeaseResult },
    IoDone { id: u64, result: Result<IoValue, IoError> },
    /// `db` is one of the workload's fixed names.
    LocalCommit { db: &'static str, page_size: u32, commit: u32, pages: Vec<(u32, Vec<u8>)>, wall_ms: u64 },
    Handoff { to: NodeIdx },
    /// The stream to `peer` is up (both ends running and reachable both ways).
    PeerConnected { peer: NodeIdx },
    /// The stream to `peer` broke (crash, partition); messages in flight on it are lost.
    PeerDisconnected { peer: NodeIdx },
    /// The lease service's watch: who holds the lease now (`None`: nobody) at `epoch`.
    LeaseObserved { holder: Option<NodeIdx>, epoch: u64 },
}

/// What a node reports; the checkers' only window into the node besides [`Machine::view`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MachineEvent {
    /// Role change; `writable` is true once a primary may accept local commits.
    Role { primary: bool, writable: bool, epoch: u64 },
    /// The primary decided to make this commit durable (it issued the LTX write).
    CommitDecided { db: DbId, txid: u64, pre: u64, post: u64, epoch: u64 },
    /// The local commit is durable and acknowledged to the writer.
    Committed { db: DbId, txid: u64, checksum: u64, epoch: u64 },
    /// The writer must not assume either outcome.
    CommitUnknown { db: DbId },
    /// The local commit was refused and nothing was made durable.
    WriteRejected { db: DbId, reason: String },
    /// A node applied an LTX covering `min_txid..=txid` (pre-apply checksum `pre`, the empty
    /// checksum when `min_txid` is 1) received in a frame of `epoch`.
    Applied { db: DbId, min_txid: u64, txid: u64, pre: u64, post: u64, epoch: u64 },
    /// A replica replaced its database with a snapshot at (`txid`, `checksum`).
    SnapshotReset { db: DbId, txid: u64, checksum: u64, epoch: u64 },
    StaleEpochRejected { epoch: u64, highest: u64 },
    ChecksumMismatch { db: DbId },
    /// A peer of another cluster tried to stream with this node, or refused it for that reason.
    ClusterMismatch { peer: NodeIdx },
    Note(String),
}

/// Outputs from a node to the world.
#[derive(Debug, Clone)]
pub enum MachineOutput<M> {
    Send { to: NodeIdx, msg: M },
    Lease { id: u64, op: LeaseOp },
    Io { id: u64, kind: IoKind },
    Event(MachineEvent),
}

/// The node's current beliefs, read by the checkers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineView {
    pub primary: bool,
    /// The node would accept a local commit now (role, phase and lease deadline).
    pub writable: bool,
    pub epoch: u64,
    /// While primary: the local clock time (µs) until which it believes its lease lets it write.
    pub deadline_local_us: Option<u64>,
    /// (txid, checksum) per database with a known position (txid > 0), halted ones excluded.
    pub positions: Vec<(DbId, u64, u64)>,
    /// Databases that stopped (checksum mismatch, I/O failure) until the node restarts.
    pub halted: Vec<DbId>,
}

/// A sans-IO node the world can drive. Times are the node's local clock in microseconds.
pub trait Machine: Sized {
    type Msg: Clone + Debug + Hash;
    /// True if the node expects ordered streams per peer pair with `PeerConnected` /
    /// `PeerDisconnected` (a lost message breaks the stream); false for datagram-like delivery.
    const STREAMS: bool = false;

    /// Starts (or restarts) a node; `disk` holds only what survived (durable data). Start-up may
    /// repair the disk as a real driver's start-up does (delete leftovers of an interrupted
    /// merge); those deletes are durable at once.
    fn start(config: &MachineConfig, id: NodeIdx, now_us: u64, disk: &mut SimDisk) -> Self;
    fn handle_input(&mut self, now_us: u64, input: MachineInput<Self::Msg>);
    fn handle_timeout(&mut self, now_us: u64);
    fn poll_output(&mut self) -> Option<MachineOutput<Self::Msg>>;
    fn poll_timeout(&self) -> Option<u64>;
    fn view(&self) -> MachineView;
    /// [`Machine::view`] into `out`, reusing its buffers (the world asks after every step).
    fn view_into(&self, out: &mut MachineView) {
        *out = self.view();
    }
    /// A short digest of a message for the trace hash.
    fn msg_digest(msg: &Self::Msg) -> u64;
    /// A message as text, for traces.
    fn msg_text(msg: &Self::Msg) -> String {
        format!("{msg:?}")
    }
    /// How the machine's driver stores the LTX file `next` merged with `prev`, the file before it
    /// (both as stored on the simulated disk), or `None` if it cannot ([`LtxMerge`]). A machine
    /// that never merges keeps the default.
    fn merge_stored_ltx(_prev: &[u8], _next: &[u8]) -> Option<Vec<u8>> {
        None
    }
    /// Names of planted bugs this machine can enable.
    fn planted_names() -> Vec<&'static str>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(value: &impl Hash) -> u64 {
        use std::hash::Hasher;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        value.hash(&mut h);
        h.finish()
    }

    /// A `DbId` orders, compares, hashes and prints exactly as its text (traces and maps depend
    /// on it), whether or not two ids share their allocation.
    #[test]
    fn db_ids_behave_as_their_text() {
        let names = ["", "a", "ab", "b", "db", "db2", "\u{e9}t\u{e9}"];
        for x in names {
            let a = DbId::from(x);
            assert_eq!(format!("{a:?} {a}"), format!("{x:?} {x}"));
            assert_eq!(hash_of(&a), hash_of(&x));
            assert_eq!(a.cmp(&a.clone()), std::cmp::Ordering::Equal);
            for y in names {
                let b = DbId::from(y);
                assert_eq!(a.cmp(&b), x.cmp(y), "{x:?} vs {y:?}");
                assert_eq!(a == b, x == y, "{x:?} vs {y:?}");
            }
        }
    }
}
