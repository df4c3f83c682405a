//! The binding of the real `ltxfs-core` node ([`ltxfs_core::node::Node`]) to the world: the same
//! core that runs in production, driven through [`Machine`].
//!
//! It decides only how the core's vocabulary maps onto the simulated world:
//! - node index `i` is `NodeId(i + 1)`; every node is a dynamic-lease candidate with a clock
//!   margin of a tenth of the TTL (far above the drift bound of random runs), except nodes of
//!   another cluster ([`MachineConfig::other_cluster`]), which only try to follow;
//! - peer messages travel as the bytes of the real codec (`Message::encode` / `decode`), so a
//!   codec bug shows as a failed run; the world's streams are ordered per pair;
//! - every [`IoKind`] of the core becomes a command on the simulated disk. On-disk layout of the
//!   simulated shell: `DB/ltx/MIN-MAX.ltx` holds the LTX file byte for byte followed by the
//!   8-byte big-endian lineage epoch (the core's `WriteLtx::epoch`, an extended attribute in a
//!   real shell; a suffix, so the file's bytes stay where the core put them), written atomically
//!   (temp + rename); `DB/checksum-index` holds the persisted index; the database pages live in
//!   the disk's page files;
//! - start-up reads only the simulated disk: per database the newest intact LTX file gives the
//!   position and its lineage epoch, the contiguous chain ending there the retained files, plus
//!   the persisted checksum index — fed as [`Input::OpenDb`]. Files outside that chain that start
//!   where a chain file starts and end before it are leftovers of an interrupted merge (below):
//!   start-up deletes them (the merged file holds all they held) so that no later start-up can
//!   take one for the newest file once the merged file is gone;
//! - merged storage (`[merge_ltx]`): a one-transaction incremental `WriteLtx` may be stored merged
//!   with the newest LTX file before it ([`LtxMerge`]: the world decides, seeded; the disk merges
//!   with [`Machine::merge_stored_ltx`], compaction as the core's reference driver does) and is then
//!   answered [`IoOutcome::LtxMerged`]. The merged file `pmin..max` is written atomically and made
//!   durable (the commit point of a local commit) before the file it replaces is unlinked; a crash
//!   before that leaves the old file alone (the write is lost, as any unsynced write), a crash
//!   between leaves both (start-up removes the old one, above). A core that refuses the answer
//!   (an `IoFailed` while handling it) fails the run: the disk merged with a file it does not
//!   retain;
//! - the checkers' facts come from the core's real outputs: a `WriteLtx` issued while handling a
//!   local commit is the commit decision (its header and trailer give txid, pre and post, its
//!   `epoch` field the epoch); a replica's `WriteLtx` gives the range, pre-apply checksum and frame
//!   epoch that the core's `Applied` event then confirms (merged or not: the facts are the
//!   transaction's own LTX, as the core wrote it, never the merged file); the view reads the
//!   node's getters.
//!
//! It never decides anything the core decides, and never looks inside the core's private state.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use ltxfs_core::catchup::LtxFileMeta;
use ltxfs_core::ids::{ClusterId, DbName, Epoch, NodeId};
use ltxfs_core::ltx::checksum::CHECKSUM_EMPTY;
use ltxfs_core::ltx::{self, Header, Trailer, HEADER_SIZE, TRAILER_SIZE};
use ltxfs_core::msg::Message;
use ltxfs_core::node::{
    Config, Event, Input, InputError, IoErrorKind, IoKind as CoreIo, IoOutcome, LeaseKind, LeaseMode, LeaseRequestId,
    LeaseResult as CoreLease, LocalCommit, Node, OpenDb, Output, Role,
};
use ltxfs_core::time::{Time, WallMs};

use crate::disk::SimDisk;
use crate::machine::{
    IoError, IoKind, IoValue, LeaseOp, LeaseResult, LtxMerge, Machine, MachineConfig, MachineEvent, MachineInput,
    MachineOutput, MachineView, NodeIdx, DbId, FilePath,
};
use crate::trace::digest;

/// The cluster id of the simulated cluster; [`MachineConfig::other_cluster`] nodes get this + 1.
pub const CLUSTER_ID: u64 = 0x5eed;
/// What start-up notes about each file it removes as a leftover of an interrupted merge.
pub const MERGE_LEFTOVER: &str = "replaced by a merged file, left by a crash before its unlink";
/// Bytes of the lineage epoch after each simulated LTX file.
const EPOCH_SUFFIX: usize = 8;

/// A simulated LTX file's LTX bytes and lineage epoch (`None` if it is too short to hold one).
fn split_epoch(data: &[u8]) -> Option<(&[u8], u64)> {
    let ltx_len = data.len().checked_sub(EPOCH_SUFFIX)?;
    let (ltx, epoch) = data.split_at(ltx_len);
    Some((ltx, u64::from_be_bytes(epoch.try_into().expect("8 bytes"))))
}

/// The names of the core's planted bugs, known in every build so that `sim planted --list`
/// can name them; the same list as `ltxfs_core::planted::PlantedBug::ALL`, which exists only
/// with the core's `planted-bugs` feature (a test under `core-planted-bugs` checks they agree).
pub const PLANTED_NAMES: [&str; 6] =
    ["skip-epoch-check", "write-after-lease", "skip-preapply-check", "ack-before-replicas", "no-fsync-ltx", "skip-recovery"];

/// Whether this build can switch planted bugs on (`--features core-planted-bugs`).
pub const PLANTED_ENABLED: bool = cfg!(feature = "core-planted-bugs");

/// Where the simulated shell keeps the LTX file `min..=max` of `db` (`DB/ltx/MIN-MAX.ltx`).
pub fn ltx_path(db: DbId, min_txid: u64, max_txid: u64) -> FilePath {
    FilePath::ltx(db, min_txid, max_txid)
}

/// Where the simulated shell keeps the persisted checksum index of `db`.
pub fn index_path(db: &str) -> FilePath {
    FilePath::Other(format!("{db}/checksum-index"))
}

fn node_id(index: NodeIdx) -> NodeId {
    NodeId(u64::from(index) + 1)
}

fn node_idx(id: NodeId) -> NodeIdx {
    assert!((1..=256).contains(&id.0), "node ids are 1..=256 in the simulator");
    (id.0 - 1) as NodeIdx
}

fn time(local_us: u64) -> Time {
    Time::from_nanos(local_us.saturating_mul(1000))
}

fn db_name(name: &str) -> DbName {
    DbName::new(name).expect("the workload uses valid database names")
}

/// Core database names a node keeps for reuse, at most: a node has a handful of databases, and
/// a name beyond this many is decoded (allocated) anew each time, as without the list.
const KNOWN_NAMES_MAX: usize = 64;

/// Header and trailer of an LTX file without decoding its pages.
/// `a == b` for database names, compared byte by byte in place: names are a few bytes, and
/// these comparisons run on every step, where a call into the C library's memcmp costs more
/// than the comparison.
fn same_name(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| x == y)
}

fn header_trailer(bytes: &[u8]) -> Option<(Header, Trailer)> {
    if bytes.len() < HEADER_SIZE + TRAILER_SIZE {
        return None;
    }
    let header = Header::from_bytes(bytes[..HEADER_SIZE].try_into().ok()?).ok()?;
    let trailer = Trailer::from_bytes(bytes[bytes.len() - TRAILER_SIZE..].try_into().ok()?);
    Some((header, trailer))
}

/// The pre-apply checksum in the checkers' terms: the empty database's checksum for a file that
/// starts at TXID 1 (LTX writes 0 there).
fn pre_checksum(header: &Header) -> u64 {
    if header.min_txid == 1 {
        CHECKSUM_EMPTY
    } else {
        header.pre_apply_checksum
    }
}

/// What kind of outcome an outstanding I/O command expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Done,
    LtxFiles,
    Database,
}

/// A replica-side LTX write, remembered until the core reports it applied.
#[derive(Debug, Clone, Copy)]
struct Applying {
    min_txid: u64,
    max_txid: u64,
    pre: u64,
    post: u64,
    snapshot: bool,
    epoch: u64,
}

/// The real core node plus the translation state of its driver.
pub struct CoreNode {
    node: Node,
    index: NodeIdx,
    now_us: u64,
    out: VecDeque<MachineOutput<Vec<u8>>>,
    io: crate::pending::Pending<Answer>,
    applying: BTreeMap<DbId, Applying>,
    /// One shared [`DbId`] per database name, handed out in events and views (a node has a
    /// handful of databases: a list beats a map).
    names: std::cell::RefCell<Vec<DbId>>,
    /// The core's names of the databases seen so far (local commits, messages), reused by the
    /// message decoder and for local commits instead of a new allocation per message.
    known: Vec<DbName>,
    /// While the core handles the answer to a write the disk stored merged.
    merge_answered: bool,
}

impl CoreNode {
    fn config(config: &MachineConfig, index: NodeIdx) -> Config {
        let foreign = config.other_cluster.contains(&index);
        let cluster_id = ClusterId(if foreign { CLUSTER_ID + 1 } else { CLUSTER_ID });
        let peers: BTreeSet<NodeId> = (0..config.cluster_size).filter(|p| *p != index).map(node_id).collect();
        let ttl = Duration::from_millis(config.lease_ttl_ms);
        let lease = LeaseMode::Dynamic { candidate: !foreign, clock_margin: ttl / 10 };
        let mut c = Config::new(cluster_id, peers, lease);
        // Timings scaled to the lease TTL so that runs of a few seconds exercise every path.
        c.heartbeat_interval = ttl / 4;
        c.acquire_retry = ttl / 4;
        c.sync_replicas = u32::from(config.sync_replicas);
        c.sync_ack_timeout = ttl * 2;
        c.handoff_timeout = ttl * 2;
        c.recovery_fetch_timeout = ttl * 2;
        c.retention_interval = Duration::from_secs(2);
        c.retention.age_max = Duration::from_secs(5);
        c.checksum_index_persist_interval = Duration::from_secs(1);
        c.compress_ltx = config.compress_ltx;
        #[cfg(feature = "core-planted-bugs")]
        if let Some(name) = &config.planted {
            let bug = ltxfs_core::planted::PlantedBug::from_name(name)
                .unwrap_or_else(|| panic!("unknown planted bug `{name}` (see `sim planted --list`)"));
            c.planted = ltxfs_core::planted::PlantedBugs::none().with(bug);
        }
        #[cfg(not(feature = "core-planted-bugs"))]
        if let Some(name) = &config.planted {
            panic!("planted bug `{name}` needs the simulator built with --features core-planted-bugs");
        }
        c
    }

    /// What the simulated disk says about one database at start-up, and the leftovers of an
    /// interrupted merge to delete: files outside the chain that start where a chain file
    /// starts and end before it (the files a merged file replaced, still there because the
    /// node crashed after the merged file was durable and before it unlinked them).
    fn open_db(disk: &SimDisk, db: &str, now: Time) -> (Option<OpenDb>, Vec<FilePath>) {
        let mut files: BTreeMap<(u64, u64), (LtxFileMeta, u64, u32)> = BTreeMap::new();
        for (path, data) in disk.files() {
            let FilePath::Ltx { min_txid, max_txid, db: dir } = &path else { continue };
            if **dir != *db {
                continue;
            }
            let range = (*min_txid, *max_txid);
            let Some((ltx, epoch)) = split_epoch(data) else { continue };
            let Some((header, trailer)) = header_trailer(ltx) else { continue };
            if (header.min_txid, header.max_txid) != range {
                continue;
            }
            let meta = LtxFileMeta {
                min_txid: header.min_txid,
                max_txid: header.max_txid,
                pre_apply_checksum: header.pre_apply_checksum,
                post_apply_checksum: trailer.post_apply_checksum,
                size_bytes: ltx.len() as u64,
                written_at: now,
            };
            files.insert(range, (meta, epoch, header.page_size));
        }
        // The newest file (highest max TXID, then the widest) is the position; the retained files
        // are the contiguous chain that ends there.
        let newest = files.iter().max_by_key(|((min, max), _)| (*max, std::cmp::Reverse(*min))).map(|(_, v)| *v);
        let (pos, epoch, page_size, mut chain) = match newest {
            Some((meta, epoch, page_size)) => {
                let mut chain = vec![meta];
                let mut want = meta;
                // Bounded: each step moves to a file with a smaller min TXID.
                while want.min_txid > 1 {
                    let prev = files
                        .values()
                        .find(|(m, ..)| m.max_txid + 1 == want.min_txid && m.post_apply_checksum == want.pre_apply_checksum);
                    let Some((m, ..)) = prev else { break };
                    chain.push(*m);
                    want = *m;
                }
                (meta.post_apply_pos(), Epoch(epoch), page_size, chain)
            }
            None => {
                let Some(file) = disk.db(db).filter(|f| f.commit > 0) else { return (None, Vec::new()) };
                (ltx::Pos::ZERO, Epoch::ZERO, file.page_size, Vec::new())
            }
        };
        chain.reverse();
        let leftovers = files
            .keys()
            .filter(|(min, max)| chain.iter().any(|c| c.min_txid == *min && c.max_txid > *max))
            .map(|(min, max)| ltx_path(DbId::from(db), *min, *max))
            .collect();
        let open = OpenDb {
            db: db_name(db),
            page_size,
            pos,
            epoch,
            files: chain,
            points: Vec::new(),
            // Every simulated restart follows a crash. `ltxfs` trusts its persisted index after
            // an unclean shutdown only because its start-up recovery first writes the newest LTX
            // files into the database again (node/src/recover.rs: applies are not fsynced one by
            // one, and a torn write may have hit one); the simulated disk has no such step, so
            // the core gets no index here and recomputes it from the pages (a mismatch is
            // repaired from the retained chain).
            checksum_index: None,
        };
        (Some(open), leftovers)
    }

    fn call(&mut self, input: Input) -> Result<(), InputError> {
        let local_commit = matches!(input, Input::LocalCommit(_));
        let result = self.node.handle_input(time(self.now_us), input);
        self.drain(local_commit);
        result
    }

    /// Translates every output of the last call.
    fn drain(&mut self, local_commit: bool) {
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Send { to, msg } => {
                    self.out.push_back(MachineOutput::Send { to: node_idx(to), msg: msg.encode() });
                }
                Output::Lease(request) => {
                    let op = match request.kind {
                        LeaseKind::Acquire => LeaseOp::Acquire,
                        LeaseKind::Renew { epoch } => LeaseOp::Renew { epoch: epoch.0 },
                        LeaseKind::Release { epoch } => LeaseOp::Release { epoch: epoch.0 },
                        LeaseKind::Handoff { epoch, to } => LeaseOp::Handoff { epoch: epoch.0, to: node_idx(to) },
                    };
                    self.out.push_back(MachineOutput::Lease { id: request.id.0, op });
                }
                Output::Io(command) => {
                    let (kind, answer) = self.io_kind(command.kind, local_commit);
                    self.io.insert(command.id.0, answer);
                    self.out.push_back(MachineOutput::Io { id: command.id.0, kind });
                }
                Output::Event(event) => {
                    if let Some(event) = self.event(event) {
                        self.out.push_back(MachineOutput::Event(event));
                    }
                }
            }
        }
    }

    fn io_kind(&mut self, kind: CoreIo, local_commit: bool) -> (IoKind, Answer) {
        match kind {
            CoreIo::WriteLtx { db, min_txid, max_txid, bytes, fsync, epoch } => {
                let (header, trailer) = header_trailer(&bytes).expect("the core writes valid LTX files");
                if local_commit {
                    self.out.push_back(MachineOutput::Event(MachineEvent::CommitDecided {
                        db: self.id(&db),
                        txid: max_txid,
                        pre: pre_checksum(&header),
                        post: trailer.post_apply_checksum,
                        epoch: epoch.0,
                    }));
                } else {
                    let applying = Applying {
                        min_txid,
                        max_txid,
                        pre: pre_checksum(&header),
                        post: trailer.post_apply_checksum,
                        snapshot: header.is_snapshot(),
                        epoch: epoch.0,
                    };
                    self.applying.insert(self.id(&db), applying);
                }
                // The epoch goes after the file's bytes in their own buffer (in place when the
                // allocation has room): no copy, no move of the bytes.
                let mut data = bytes;
                data.reserve_exact(EPOCH_SUFFIX);
                data.extend_from_slice(&epoch.0.to_be_bytes());
                let path = ltx_path(self.id(&db), min_txid, max_txid);
                let commit_of = local_commit.then(|| self.id(&db));
                // What `ltxfs` merges: one transaction's incremental LTX (the disk checks the rest).
                let merge = if min_txid == max_txid && !header.is_snapshot() { LtxMerge::Allowed } else { LtxMerge::No };
                (IoKind::WriteFile { path, data, fsync, atomic: true, commit_of, merge }, Answer::Done)
            }
            CoreIo::ApplyPages { db, page_size, commit, pages } => {
                (IoKind::WritePages { db: self.id(&db), page_size, commit, pages, fsync: true }, Answer::Done)
            }
            CoreIo::ReadLtx { db, files } => {
                let id = self.id(&db);
                let paths = files.iter().map(|(min, max)| ltx_path(id.clone(), *min, *max)).collect();
                (IoKind::ReadFiles { paths }, Answer::LtxFiles)
            }
            CoreIo::ReadDatabase { db } => (IoKind::ReadDb { db: db.as_str().to_string() }, Answer::Database),
            CoreIo::DeleteLtx { db, files } => {
                let id = self.id(&db);
                let paths = files.iter().map(|(min, max)| ltx_path(id.clone(), *min, *max)).collect();
                (IoKind::DeleteFiles { paths }, Answer::Done)
            }
            CoreIo::WriteChecksumIndex { db, bytes } => {
                let path = index_path(db.as_str());
                (IoKind::WriteFile { path, data: bytes, fsync: true, atomic: true, commit_of: None, merge: LtxMerge::No }, Answer::Done)
            }
        }
    }

    /// The shared name of `db`.
    fn id(&self, db: &DbName) -> DbId {
        if let Some(id) = self.names.borrow().iter().find(|id| same_name(id, db.as_str())) {
            return id.clone();
        }
        let id = DbId::from(db.as_str());
        self.names.borrow_mut().push(id.clone());
        id
    }

    /// The core's name `db`, from [`CoreNode::known`] when it is there (else remembered there).
    fn core_name(&mut self, db: &str) -> DbName {
        if let Some(name) = self.known.iter().find(|n| same_name(n.as_str(), db)) {
            return name.clone();
        }
        let name = db_name(db);
        self.remember(&name);
        name
    }

    /// Keeps `name` for reuse unless it is kept already or the list is full.
    fn remember(&mut self, name: &DbName) {
        if self.known.len() < KNOWN_NAMES_MAX && !self.known.iter().any(|n| same_name(n.as_str(), name.as_str())) {
            self.known.push(name.clone());
        }
    }

    /// The epoch a primary puts on its commits, else the highest it accepted.
    fn epoch(&self) -> u64 {
        self.node.lease_epoch().unwrap_or(self.node.highest_epoch()).0
    }

    fn event(&mut self, event: Event) -> Option<MachineEvent> {
        Some(match event {
            Event::RoleChanged { role, epoch } => MachineEvent::Role {
                primary: matches!(role, Role::Recovering | Role::Primary),
                writable: role == Role::Primary,
                epoch: epoch.0,
            },
            Event::Committed { db, pos } => {
                MachineEvent::Committed { db: self.id(&db), txid: pos.txid, checksum: pos.checksum, epoch: self.epoch() }
            }
            Event::CommitOutcomeUnknown { db, .. } => MachineEvent::CommitUnknown { db: self.id(&db) },
            Event::CommitFailed { db, error } => {
                MachineEvent::WriteRejected { db: self.id(&db), reason: format!("commit failed: {error:?}") }
            }
            Event::WriteRejected { db, reason } => {
                MachineEvent::WriteRejected { db: self.id(&db), reason: format!("{reason:?}") }
            }
            Event::Applied { db, pos, .. } => {
                let a = self.applying.remove(db.as_str()).expect("the core applies only what it wrote");
                assert_eq!((a.max_txid, a.post), (pos.txid, pos.checksum), "Applied reports the written file's position");
                if a.snapshot {
                    MachineEvent::SnapshotReset { db: self.id(&db), txid: pos.txid, checksum: pos.checksum, epoch: a.epoch }
                } else {
                    MachineEvent::Applied { db: self.id(&db), min_txid: a.min_txid, txid: a.max_txid, pre: a.pre, post: a.post, epoch: a.epoch }
                }
            }
            Event::StaleEpochRejected { epoch, highest, .. } => MachineEvent::StaleEpochRejected { epoch: epoch.0, highest: highest.0 },
            Event::ChecksumMismatch { db, .. } => MachineEvent::ChecksumMismatch { db: self.id(&db) },
            Event::ClusterMismatch { peer, .. } => MachineEvent::ClusterMismatch { peer: node_idx(peer) },
            // The core refuses a merge answer only if the merged files are not the chain it
            // retains: the disk merged with a file the core does not know (a driver bug).
            Event::IoFailed { db, error } if self.merge_answered => {
                panic!("n{}: the core refused the merged LTX the disk stored for {db}: {error:?}", self.index + 1)
            }
            other => MachineEvent::Note(format!("{other:?}")),
        })
    }
}

impl Machine for CoreNode {
    type Msg = Vec<u8>;
    const STREAMS: bool = true;

    fn start(config: &MachineConfig, id: NodeIdx, now_us: u64, disk: &mut SimDisk) -> Self {
        let node = Node::new(CoreNode::config(config, id), node_id(id), time(now_us));
        let mut me = CoreNode {
            node,
            index: id,
            now_us,
            out: VecDeque::new(),
            io: crate::pending::Pending::default(),
            applying: BTreeMap::new(),
            names: std::cell::RefCell::new(Vec::new()),
            known: Vec::new(),
            merge_answered: false,
        };
        me.drain(false);
        let mut names: BTreeSet<String> = disk.dbs().map(|(name, _)| name.to_string()).collect();
        for (path, _) in disk.files() {
            if let Some(db) = path.dir() {
                names.insert(db.to_string());
            }
        }
        for name in names {
            let (open, leftovers) = CoreNode::open_db(disk, &name, time(now_us));
            for path in leftovers {
                disk.remove_file(&path);
                let note = format!("start-up removed {path}: {MERGE_LEFTOVER}");
                me.out.push_back(MachineOutput::Event(MachineEvent::Note(note)));
            }
            if let Some(open) = open {
                me.call(Input::OpenDb(open)).expect("start-up opens each database once");
            }
        }
        me
    }

    fn handle_input(&mut self, now_us: u64, input: MachineInput<Vec<u8>>) {
        self.now_us = self.now_us.max(now_us);
        let input = match input {
            MachineInput::Receive { from, msg } => match Message::decode_owned_with_names(msg, &self.known) {
                Ok(msg) => {
                    if let Message::Ltx { db, .. } | Message::Ack { db, .. } | Message::Resync { db, .. } = &msg {
                        self.remember(db);
                    }
                    Input::Receive { from: node_id(from), msg }
                }
                Err(e) => panic!("codec: n{} could not decode a message n{} encoded: {e}", self.index + 1, from + 1),
            },
            MachineInput::LeaseReply { id, result } => {
                let result = match result {
                    LeaseResult::Granted { epoch, ttl_ms } | LeaseResult::Renewed { epoch, ttl_ms } => {
                        CoreLease::Granted { epoch: Epoch(epoch), ttl: Duration::from_millis(ttl_ms) }
                    }
                    LeaseResult::Held { holder, epoch } => CoreLease::Denied { holder: holder.map(node_id), epoch: Epoch(epoch) },
                    LeaseResult::Lost { .. } => CoreLease::Lost,
                    LeaseResult::Released => CoreLease::Released,
                    LeaseResult::Error => CoreLease::Error,
                };
                Input::LeaseReply { id: LeaseRequestId(id), result }
            }
            MachineInput::IoDone { id, result } => {
                let answer = self.io.remove(id).expect("the world completes only issued I/O");
                let result = match result {
                    Err(IoError::Eio) => Err(IoErrorKind::Failed),
                    Err(IoError::Enospc) => Err(IoErrorKind::NoSpace),
                    Err(IoError::NotFound) => Err(IoErrorKind::NotFound),
                    Ok(value) => match (answer, value) {
                        (Answer::LtxFiles, IoValue::Files(files)) => {
                            let stripped: Option<Vec<Vec<u8>>> = files
                                .into_iter()
                                .map(|mut f| {
                                    let ltx_len = f.len().checked_sub(EPOCH_SUFFIX)?;
                                    f.truncate(ltx_len);
                                    Some(f)
                                })
                                .collect();
                            stripped.map(IoOutcome::LtxFiles).ok_or(IoErrorKind::Failed)
                        }
                        (Answer::Database, IoValue::Data(image)) => Ok(IoOutcome::Database(image)),
                        (Answer::Done, IoValue::Done) => Ok(IoOutcome::Done),
                        (Answer::Done, IoValue::Merged { min_txid }) => {
                            self.merge_answered = true;
                            Ok(IoOutcome::LtxMerged { min_txid })
                        }
                        (answer, value) => panic!("I/O {id}: expected {answer:?}, the disk answered {value:?}"),
                    },
                };
                Input::IoDone { id: ltxfs_core::node::IoId(id), result }
            }
            MachineInput::LocalCommit { db, page_size, commit, pages, wall_ms } => Input::LocalCommit(LocalCommit {
                db: self.core_name(db),
                page_size,
                commit,
                pages,
                // The simulated workload commits in rollback-journal style: no WAL frames.
                wal: None,
                wall: WallMs(wall_ms as i64),
            }),
            MachineInput::Handoff { to } => Input::Handoff { to: node_id(to) },
            MachineInput::PeerConnected { peer } => Input::PeerConnected { peer: node_id(peer) },
            MachineInput::PeerDisconnected { peer } => Input::PeerDisconnected { peer: node_id(peer) },
            MachineInput::LeaseObserved { holder, epoch } => Input::LeaseObserved { holder: holder.map(node_id), epoch: Epoch(epoch) },
        };
        let result = self.call(input);
        self.merge_answered = false;
        match result {
            Ok(()) => {}
            // An admin handoff to a node that is not a connected follower is refused: the
            // operator's request fails, nothing else happens.
            Err(InputError::HandoffTargetUnknown(to)) => {
                self.out.push_back(MachineOutput::Event(MachineEvent::Note(format!("handoff to {to} refused: not a follower"))))
            }
            Err(e) => panic!("n{}: the driver misused the core: {e}", self.index + 1),
        }
    }

    fn handle_timeout(&mut self, now_us: u64) {
        self.now_us = self.now_us.max(now_us);
        self.node.handle_timeout(time(self.now_us));
        self.drain(false);
    }

    fn poll_output(&mut self) -> Option<MachineOutput<Vec<u8>>> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<u64> {
        self.node.poll_timeout().map(|t| t.as_nanos().div_ceil(1000))
    }

    fn view(&self) -> MachineView {
        let mut view = MachineView::default();
        self.view_into(&mut view);
        view
    }

    fn view_into(&self, out: &mut MachineView) {
        out.primary = matches!(self.node.role(), Role::Recovering | Role::Primary);
        out.writable = self.node.is_writable(time(self.now_us));
        out.epoch = self.epoch();
        out.deadline_local_us = self.node.lease_deadline().filter(|d| *d != Time::MAX).map(|d| d.as_nanos() / 1000);
        out.halted.clear();
        let mut kept = 0;
        for (db, p, is_halted) in self.node.db_states() {
            if is_halted {
                out.halted.push(self.id(db));
            } else if p.pos.txid > 0 {
                // Keep the entry (and its shared name) when it names the same database.
                match out.positions.get_mut(kept) {
                    Some(entry) if same_name(&entry.0, db.as_str()) => (entry.1, entry.2) = (p.pos.txid, p.pos.checksum),
                    Some(entry) => *entry = (self.id(db), p.pos.txid, p.pos.checksum),
                    None => out.positions.push((self.id(db), p.pos.txid, p.pos.checksum)),
                }
                kept += 1;
            }
        }
        out.positions.truncate(kept);
    }

    fn msg_digest(msg: &Vec<u8>) -> u64 {
        // Length, head and tail: enough to tell messages apart without hashing every page.
        let head = &msg[..msg.len().min(64)];
        let tail = &msg[msg.len().saturating_sub(16)..];
        digest(&(msg.len(), head, tail))
    }

    fn msg_text(msg: &Vec<u8>) -> String {
        match Message::decode(msg) {
            Ok(Message::Ltx { epoch, db, offset, total_bytes, bytes }) => {
                let range = header_trailer(&bytes).map(|(h, t)| format!("{}-{} post {:016x}", h.min_txid, h.max_txid, t.post_apply_checksum));
                format!("Ltx {{ epoch: {epoch}, db: {db}, offset: {offset}, total_bytes: {total_bytes}, {} }}", range.unwrap_or_default())
            }
            Ok(m) => format!("{m:?}"),
            Err(e) => format!("undecodable ({e})"),
        }
    }

    fn planted_names() -> Vec<&'static str> {
        PLANTED_NAMES.to_vec()
    }

    /// The LTX parts merged as the core's reference driver merges them
    /// ([`ltxfs_core::testing::merge_ltx`]: compaction, if `next` continues `prev`'s chain),
    /// followed by `next`'s lineage epoch (the merged file's newest transaction is `next`'s).
    fn merge_stored_ltx(prev: &[u8], next: &[u8]) -> Option<Vec<u8>> {
        let (prev_ltx, _) = split_epoch(prev)?;
        let (next_ltx, epoch) = split_epoch(next)?;
        let mut merged = ltxfs_core::testing::merge_ltx(prev_ltx, next_ltx)?;
        merged.extend_from_slice(&epoch.to_be_bytes());
        Some(merged)
    }
}
