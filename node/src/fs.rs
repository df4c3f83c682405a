//! The FUSE file system: a flat directory of SQLite databases backed by `<data>/dbs/<db>/`.
//!
//! Decides: the namespace (§5.1: `<db>`, `<db>-journal`, `<db>-wal`, `<db>-shm`, virtual
//! `<db>-pos`, `.lag`, `.primary` on replicas), how each FUSE request maps onto backing files, and
//! the order "commit detected → the node runtime reports it committed → operation completes".
//! A node that may not write now (a replica, a primary still recovering, or one whose lease
//! deadline has passed: [`node::runtime::Status::writable_now`]) refuses writes (EACCES), so
//! SQLite reports "attempt to write a readonly database" (or, mid-transaction, a disk I/O error)
//! instead of committing something the core would refuse.
//!
//! POSIX byte-range locks are the kernel's: the mount does not ask for `FUSE_POSIX_LOCKS`, so
//! SQLite's lock calls cost no round trip to this process, and commit detection keys on file
//! writes only (the journal's end, the WAL's commit frame), never on a lock.
//!
//! As the runtime's [`ApplyHook`] it makes a replica's apply atomic for SQLite readers: it takes
//! SQLite's locks in the kernel's table through descriptors of its own mount
//! ([`crate::mount_locks`]; rollback modes: PENDING, then RESERVED and the SHARED range
//! exclusively; WAL: WRITE, CKPT, RECOVER and READ0–4 on `-shm`), only for the local write (the
//! runtime calls it after the LTX was received and made durable), then invalidates the kernel
//! page cache for the written pages and, in WAL mode, rewrites the WAL-index header in the
//! kernel's copy of `-shm` (§5.5) so open connections see the new data.
//! While it holds those locks (and before a snapshot read) it has SQLite roll back a hot journal
//! that a transaction refused mid-way (handoff, lost lease) left behind, so neither readers nor
//! the apply meet it; a step-down watcher does the same as soon as the node stops being
//! writable, so a node that is only read never keeps one.
//!
//! WAL mode: a transaction is handed to the runtime at the write of its commit frame, before
//! SQLite syncs the WAL and publishes the commit in the WAL index, so a refused commit fails
//! that write (its frame header is zeroed: SQLite's WAL recovery cannot revive it). Its LTX is
//! WAL-backed (written without an fsync, `node::runtime::disk`): before SQLite restarts,
//! truncates or deletes the WAL this layer has the runtime sync those files.
//!
//! Never decides when a transaction commits (that is `ltxfs_core::detect`) or what the next
//! position is, who is primary, or what to replicate (the core, through [`RuntimeHandle`]).

use node::runtime::stats::{self, FsyncKind};
use node::runtime::{ApplyHook, CommitOutcome, RuntimeEvent, RuntimeHandle, Status};
use tokio::sync::broadcast::error::RecvError;
use crate::mount_locks::{self, Holder, MountLocks};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use ltxfs_core::detect::locks::LockKind;
use ltxfs_core::detect::{
    self, oplog, Commit, DbHeader, DetectError, Detector, Event, LockFile, Op, DB_PENDING_BYTE,
    DB_RESERVED_BYTE, DB_SHARED_FIRST, SHM_WRITE_LOCK,
};
use ltxfs_core::ids::DbName;
use ltxfs_core::node::WalFrames;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

const ROOT_INO: u64 = 1;
const PRIMARY_INO: u64 = 2;
const LAG_INO: u64 = 3;
const DB_INO_BASE: u64 = 16;
/// How long the kernel may cache attributes and names on the primary, where every change goes
/// through this mount. Elsewhere attributes are not cached (the runtime changes files).
const TTL: Duration = Duration::from_secs(1);
/// `.lag` before the first heartbeat from a primary (LiteFS: 2147483647).
const LAG_UNKNOWN_MS: i64 = 2_147_483_647;
/// SQLite's SHARED range on the database file is 510 bytes.
const DB_SHARED_SIZE: u64 = 510;
/// `-shm` bytes WRITE..=READ4 (WRITE, CKPT, RECOVER, READ0–4).
const SHM_APPLY_LOCKS: (u64, u64) = (SHM_WRITE_LOCK, SHM_WRITE_LOCK + 7);
/// Longest a snapshot read waits for SQLite's read lock before reading anyway (the core checks
/// the image against its position and reads again if it was caught mid-transaction).
const READ_LOCK_WAIT_MAX: Duration = Duration::from_secs(2);
/// Every backed file: keep the page cache across opens (the node invalidates what it changes),
/// and no FLUSH on close — there is nothing to flush, it saves a round trip per close, and a
/// node killed while it holds descriptors of its own mount (its locks, `crate::mount_locks`)
/// would otherwise wait forever, while exiting, for itself to answer their FLUSH.
const OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE.union(FopenFlags::FOPEN_NOFLUSH);
/// The WAL: direct I/O. Through the page cache the kernel splits a write at every page boundary
/// it crosses, and a WAL frame's page starts 24 bytes into a page: every frame cost SQLite three
/// WRITE round trips (header, the page up to the boundary, the rest) instead of two. SQLite
/// never maps the WAL, and reads it only for pages newer than its own cache. The same for the
/// rollback journal (each page record is 4 + page size + 4 bytes, so its pages straddle page
/// boundaries too; SQLite reads a journal only to roll it back).
const WAL_OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_DIRECT_IO.union(FopenFlags::FOPEN_NOFLUSH);

fn open_flags(kind: Kind) -> FopenFlags {
    if kind == Kind::Wal || kind == Kind::Journal {
        WAL_OPEN_FLAGS
    } else {
        OPEN_FLAGS
    }
}
/// Poll interval while waiting for SQLite's locks (SQLite itself never blocks on them).
const LOCK_POLL: Duration = Duration::from_millis(1);
/// Longest an apply (or a fold, or a step-down rollback) waits for SQLite's locks before it
/// goes ahead without them (logged).
const APPLY_LOCK_WAIT_MAX: Duration = Duration::from_secs(10);

/// How the file system is set up.
#[derive(Debug, Clone)]
pub struct FsOptions {
    pub data_dir: PathBuf,
    /// Append every detector input of database `<db>` to `<dir>/<db>.ops` (test recordings).
    pub record_ops: Option<PathBuf>,
    /// Run the FUSE thread on the CPU of the thread it serves (`crate::caller_cpu`).
    pub follow_caller_cpu: bool,
}

/// Files of one database, in inode order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Database = 0,
    Journal = 1,
    Wal = 2,
    Shm = 3,
    Pos = 4,
}

const BACKED: [Kind; 4] = [Kind::Database, Kind::Journal, Kind::Wal, Kind::Shm];

impl Kind {
    fn from_index(index: u64) -> Option<Kind> {
        Some(match index {
            0 => Kind::Database,
            1 => Kind::Journal,
            2 => Kind::Wal,
            3 => Kind::Shm,
            4 => Kind::Pos,
            _ => return None,
        })
    }

    fn suffix(self) -> &'static str {
        match self {
            Kind::Database => "",
            Kind::Journal => "-journal",
            Kind::Wal => "-wal",
            Kind::Shm => "-shm",
            Kind::Pos => "-pos",
        }
    }

    fn backing_name(self) -> &'static str {
        match self {
            Kind::Database => "database",
            Kind::Journal => "journal",
            Kind::Wal => "wal",
            Kind::Shm => "shm",
            Kind::Pos => unreachable!("-pos is virtual"),
        }
    }
}

/// `app.db-wal` → (`app.db`, Wal); any other name is a database.
fn parse_name(name: &str) -> Option<(&str, Kind)> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') {
        return None;
    }
    for kind in [Kind::Journal, Kind::Wal, Kind::Shm, Kind::Pos] {
        if let Some(db) = name.strip_suffix(kind.suffix()) {
            if !db.is_empty() {
                return Some((db, kind));
            }
        }
    }
    Some((name, Kind::Database))
}

fn db_ino(id: usize, kind: Kind) -> INodeNo {
    INodeNo(DB_INO_BASE + id as u64 * 8 + kind as u64)
}

/// Where the committed content of a WAL-mode database lives, for snapshot reads that must not
/// wait for the FUSE thread: pages committed to the WAL (not yet known to be checkpointed) and
/// the database size after the last WAL commit. Emptied when SQLite restarts the WAL (it does so
/// only after a complete checkpoint).
#[derive(Debug, Default)]
struct WalIndex {
    pages: BTreeMap<u32, u64>,
    commit: Option<u32>,
    page_size: u32,
}

/// What SQLite wrote to the WAL since the last recorded commit, contiguous, up to
/// [`WAL_TAIL_BYTES_MAX`], and the page size of the WAL's header: a WAL commit takes its frames
/// (and the commit frame's header) from here instead of reading the file back — 3 `pread`s
/// fewer per commit on the FUSE thread. Whatever else changes the WAL (truncation, removal,
/// the node's own writes, a new file) calls [`WalTail::forget`]; the file is read as before
/// when the bytes are not here. Debug builds compare every use with the file.
#[derive(Debug, Default)]
struct WalTail {
    start: u64,
    bytes: Vec<u8>,
    page_size: Option<u64>,
    /// The highest end of a write since the last [`WalTail::forget`].
    high: u64,
}

/// A transaction larger than this is read back from the WAL file.
const WAL_TAIL_BYTES_MAX: usize = 4 * 1024 * 1024;

impl WalTail {
    fn forget(&mut self) {
        self.start = 0;
        self.bytes.clear();
        self.page_size = None;
        self.high = 0;
    }

    /// SQLite wrote `data` at `offset` (after it reached the file).
    fn wrote(&mut self, offset: u64, data: &[u8]) {
        let end = offset.saturating_add(data.len() as u64);
        self.high = self.high.max(end);
        if offset < WAL_HEADER_LEN {
            // The header: its page size if this write holds a valid one, else unknown.
            self.page_size = if offset == 0 { header_page_size(data) } else { None };
        }
        let contiguous = !self.bytes.is_empty() && self.start + self.bytes.len() as u64 == offset;
        if contiguous && self.bytes.len() + data.len() <= WAL_TAIL_BYTES_MAX {
            self.bytes.extend_from_slice(data);
        } else {
            self.bytes.clear();
            if data.len() <= WAL_TAIL_BYTES_MAX {
                self.start = offset;
                self.bytes.extend_from_slice(data);
            }
        }
        debug_assert!(self.bytes.is_empty() || self.start + self.bytes.len() as u64 == end);
    }

    /// The bytes at `[from, from + len)`, if all of them are here.
    fn get(&self, from: u64, len: u64) -> Option<&[u8]> {
        let at = usize::try_from(from.checked_sub(self.start)?).ok()?;
        let end = at.checked_add(usize::try_from(len).ok()?)?;
        self.bytes.get(at..end)
    }

    /// A commit was recorded from everything here: the next one starts after it.
    fn recorded(&mut self) {
        self.start += self.bytes.len() as u64;
        self.bytes.clear();
    }
}

/// The page size of a valid WAL header at the start of `bytes` (the detector's own parser).
fn header_page_size(bytes: &[u8]) -> Option<u64> {
    ltxfs_core::detect::wal::parse_header(bytes).ok().map(|h| u64::from(h.page_size))
}

/// The commit field (database size after the commit, 0 for other frames) of a WAL frame
/// header's first 8 bytes.
fn frame_commit(head: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(head.get(4..8)?.try_into().ok()?))
}

/// `[from, from + len)` of `file`, from `tail` when it has them (checked against the file in
/// debug builds), else read (short at the end of the file).
fn wal_bytes(file: &File, tail: &WalTail, from: u64, len: u64) -> io::Result<Vec<u8>> {
    if let Some(bytes) = tail.get(from, len) {
        #[cfg(debug_assertions)]
        {
            let mut on_disk = vec![0u8; bytes.len()];
            file.read_exact_at(&mut on_disk, from)?;
            debug_assert!(on_disk == bytes, "the WAL tail differs from the WAL file at {from}+{len}");
        }
        return Ok(bytes.to_vec());
    }
    let mut bytes = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
    let mut read = 0;
    while read < bytes.len() {
        let n = file.read_at(&mut bytes[read..], from + read as u64)?;
        if n == 0 {
            break;
        }
        read += n;
    }
    bytes.truncate(read);
    Ok(bytes)
}

struct Db {
    name: String,
    dir: PathBuf,
    /// Open backing files (database always; the others while they exist).
    files: [Option<File>; 4],
    detector: Detector,
    recorder: Option<File>,
    wal_index: Arc<Mutex<WalIndex>>,
    /// Last WAL-index change counter this node wrote (replicas).
    shm_change: u32,
    /// The WAL was written since it was last synced (by SQLite's FSYNC or by this node): a
    /// commit then syncs it before its LTX; after SQLite's own FSYNC (synchronous=FULL) not.
    wal_unsynced: bool,
    /// A checkpoint's database write started the background sync of the WAL-backed LTX files
    /// (once per WAL generation: reset when the WAL restarts).
    checkpoint_sync_started: bool,
    /// The journal operation that just committed a transaction got an unknown outcome: perform
    /// it, then fail it to SQLite ([`Db::fail_if_outcome_unknown`]).
    commit_unknown: bool,
    /// WAL mode: a commit with an unknown outcome is in the history and this layer's WAL index
    /// but not in SQLite's; [`Shared::settle_unknown_commit`] must fold it in.
    settle_pending: bool,
    /// What SQLite wrote to the WAL since the last recorded commit.
    wal_tail: WalTail,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Db {
    fn path(&self, kind: Kind) -> PathBuf {
        self.dir.join(kind.backing_name())
    }

    fn exists(&self, kind: Kind) -> bool {
        match kind {
            Kind::Database | Kind::Pos => true,
            _ => self.files[kind as usize].is_some(),
        }
    }

    fn file(&self, kind: Kind) -> Result<&File, Errno> {
        self.files[kind as usize].as_ref().ok_or(Errno::ENOENT)
    }

    fn record(&mut self, line: &str) {
        if let Some(recorder) = &mut self.recorder {
            if let Err(err) = writeln!(recorder, "{line}") {
                tracing::warn!(%err, "cannot record detector input");
            }
        }
    }

    /// Feeds the detector and carries out what it asks; `Err` fails the FUSE operation.
    fn detect(&mut self, op: Op<'_>, rt: &RuntimeHandle) -> Result<(), Errno> {
        if self.recorder.is_some() {
            self.record(&oplog::format_op(&op));
        }
        match self.detector.apply(op) {
            Ok(None) => Ok(()),
            Ok(Some(event)) => self.handle_event(event, rt),
            Err(DetectError::Lock(_)) | Err(DetectError::CheckpointDuringWrite { .. }) => {
                Err(Errno::EAGAIN)
            }
            Err(err) => {
                tracing::warn!(db = %self.name, %err, "refused file operation");
                Err(Errno::EIO)
            }
        }
    }

    fn handle_event(&mut self, event: Event, rt: &RuntimeHandle) -> Result<(), Errno> {
        match event {
            Event::Committed(commit) => self.commit_rollback_journal(&commit, rt).map_err(|err| {
                tracing::error!(db = %self.name, %err, "commit failed; the transaction is rolled back");
                Errno::EIO
            }),
            Event::RolledBack { pages } => {
                tracing::debug!(db = %self.name, pages = pages.len(), "transaction rolled back");
                Ok(())
            }
            Event::ReadWal { offset, len } => {
                if let Err(err) = self.commit_wal(offset, len, rt) {
                    // SQLite already believes the transaction committed: the WAL and the LTX log
                    // disagree now. Like LiteFS (exit 99), stop rather than serve diverged data;
                    // start-up recovery cuts the WAL back to the last LTX.
                    tracing::error!(db = %self.name, %err, "WAL commit could not be recorded; exiting");
                    std::process::exit(99);
                }
                Ok(())
            }
        }
    }

    fn db_name(&self) -> io::Result<DbName> {
        DbName::new(self.name.clone()).map_err(|e| io::Error::other(e.to_string()))
    }

    /// Hands one transaction to the node runtime and waits for the verdict. The first commit
    /// of a database carries every page (the core makes it a snapshot LTX).
    fn submit(
        &self,
        rt: &RuntimeHandle,
        page_size: u32,
        commit: u32,
        mut pages: Vec<(u32, Vec<u8>)>,
        wal: Option<WalFrames>,
    ) -> io::Result<CommitOutcome> {
        let db = self.db_name()?;
        if !rt.with_status(|s| s.positions.contains_key(&self.name)) {
            pages = self.full_image_pages(page_size, commit, pages)?;
        }
        let started = Instant::now();
        // WAL-backed (LTX without its own fsync): not the first commit of this WAL generation
        // (that one anchors start-up recovery's rebuild); see `commit_wal`.
        let wal_backed = wal.as_ref().is_some_and(|w| w.offset > WAL_HEADER_LEN);
        let outcome = rt.commit_blocking(db, page_size, commit, pages, wal, wal_backed);
        stats::COMMIT_LATENCY.observe(started.elapsed());
        let outcome = outcome.map_err(|e| io::Error::other(e.to_string()))?;
        match outcome {
            // Unknown: the LTX is durable and in the core's history, but the lease ended or the
            // acks did not come: the caller must keep the transaction and still fail SQLite.
            CommitOutcome::Committed { .. } | CommitOutcome::Unknown { .. } => Ok(outcome),
            // Nothing was written: the caller may fail SQLite's operation and leave no trace.
            CommitOutcome::Rejected { .. } => Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("commit refused by the node: {outcome:?}"))),
            other => Err(io::Error::other(format!("commit not accepted by the node: {other:?}"))),
        }
    }

    /// Every page `1..=commit`: `dirty` where given, else the committed content (WAL or file).
    fn full_image_pages(&self, page_size: u32, commit: u32, dirty: Vec<(u32, Vec<u8>)>) -> io::Result<Vec<(u32, Vec<u8>)>> {
        let mut dirty: BTreeMap<u32, Vec<u8>> = dirty.into_iter().collect();
        let image = self.committed_image(page_size)?;
        let ps = page_size as usize;
        let mut out = Vec::with_capacity(commit as usize);
        for pgno in 1..=commit {
            let data = match dirty.remove(&pgno) {
                Some(data) => data,
                None => {
                    let at = (pgno as usize - 1) * ps;
                    let mut page = vec![0u8; ps];
                    if at < image.len() {
                        let end = (at + ps).min(image.len());
                        page[..end - at].copy_from_slice(&image[at..end]);
                    }
                    page
                }
            };
            out.push((pgno, data));
        }
        Ok(out)
    }

    /// The database as last committed: the file with committed WAL pages laid over it.
    fn committed_image(&self, page_size: u32) -> io::Result<Vec<u8>> {
        read_committed_image(&self.dir, &self.wal_index, page_size)
    }

    fn commit_rollback_journal(&mut self, commit: &Commit, rt: &RuntimeHandle) -> io::Result<()> {
        if self.journal_played_back(commit)? {
            tracing::debug!(db = %self.name, pages = commit.pages.len(), "rolled back after spilling: no LTX");
            return Ok(());
        }
        let database = self.files[Kind::Database as usize]
            .as_ref()
            .ok_or_else(|| io::Error::other("no database file"))?;
        let page_size = u64::from(commit.page_size);
        let mut pages = Vec::with_capacity(commit.pages.len());
        for page in &commit.pages {
            let mut buf = vec![0u8; commit.page_size as usize];
            database.read_exact_at(&mut buf, u64::from(page.pgno - 1) * page_size)?;
            pages.push((page.pgno, buf));
        }
        let n = pages.len();
        let outcome = self.submit(rt, commit.page_size, commit.commit, pages, None)?;
        if let CommitOutcome::Unknown { .. } = outcome {
            // The core's history has it: keep it in the file too (the journal operation goes
            // through) and fail SQLite's operation afterwards (`fail_if_outcome_unknown`).
            tracing::warn!(db = %self.name, ?outcome, "commit outcome unknown; kept, SQLite gets an error");
            self.commit_unknown = true;
        }
        tracing::debug!(db = %self.name, ?outcome, pages = n, "rollback-journal commit");
        Ok(())
    }

    /// True if the journal's end that looks like a commit ends a rollback: a transaction whose
    /// pages spilled into the database file before it rolled back (SQLite played the journal
    /// back, then finalized it exactly as at a commit). Only when that is certain — the database
    /// has its original size and every page the transaction wrote is in the journal with
    /// exactly its current content — so the file is as before the transaction and recording
    /// nothing loses nothing; anything else (a page written but not journaled, an unreadable
    /// journal) is recorded as a commit, as before.
    fn journal_played_back(&self, commit: &Commit) -> io::Result<bool> {
        let (Some(journal), Some(database)) = (self.files[Kind::Journal as usize].as_ref(), self.files[Kind::Database as usize].as_ref()) else {
            return Ok(false);
        };
        let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let len = journal.metadata()?.len();
        let mut header = [0u8; 28];
        if len < 28 || journal.read_exact_at(&mut header, 0).is_err() || header[..8] != detect::JOURNAL_MAGIC {
            return Ok(false);
        }
        let (original_pages, sector, page_size) = (be32(&header[16..20]), u64::from(be32(&header[20..24])), be32(&header[24..28]));
        if original_pages == 0 || commit.commit != original_pages || page_size != commit.page_size || !(512..=65536).contains(&sector) || !sector.is_power_of_two() {
            return Ok(false);
        }
        if commit.pages.is_empty() {
            return Ok(false);
        }
        // Records (pgno, original page, checksum) follow each segment's header; segments start
        // at sector boundaries. Every journaled page must be back to its original (a commit
        // differs at once, at the first record, so this costs a commit a few small reads);
        // bounded by the file's size.
        let record_len = 8 + u64::from(page_size);
        let (mut original, mut current) = (vec![0u8; page_size as usize], vec![0u8; page_size as usize]);
        let mut journaled = std::collections::BTreeSet::new();
        let mut segment = 0u64;
        while segment + 28 <= len {
            let mut h = [0u8; 28];
            journal.read_exact_at(&mut h, segment)?;
            if h[..8] != detect::JOURNAL_MAGIC {
                break;
            }
            let mut at = segment + sector;
            let records = match be32(&h[8..12]) {
                u32::MAX => len.saturating_sub(at) / record_len, // never synced: up to the end
                n => u64::from(n),
            };
            for _ in 0..records {
                if at + record_len > len {
                    break;
                }
                let mut pgno = [0u8; 4];
                journal.read_exact_at(&mut pgno, at)?;
                let pgno = be32(&pgno);
                if pgno >= 1 && pgno <= original_pages && journaled.insert(pgno) {
                    journal.read_exact_at(&mut original, at + 4)?;
                    database.read_exact_at(&mut current, u64::from(pgno - 1) * u64::from(page_size))?;
                    if original != current {
                        return Ok(false);
                    }
                }
                at += record_len;
            }
            segment = at.div_ceil(sector) * sector;
        }
        // And nothing was written that the journal could not restore.
        Ok(commit.pages.iter().all(|p| journaled.contains(&p.pgno)))
    }

    /// Rolls back a hot rollback journal: one a transaction left behind when this node stopped
    /// accepting its writes mid-way (a handoff or a lost lease refuses them with EACCES, so
    /// SQLite can neither finish nor undo it). Readers would fail on it ("attempt to write a
    /// readonly database") and an apply on top would later be undone by its rollback. Its
    /// pages never became an LTX, so after SQLite rolls it back (through a connection of its
    /// own on the backing files, exactly as start-up recovery does) the file is at the core's
    /// position again. The caller holds SQLite's write locks in the shell's lock tables (no
    /// SQLite connection is in a transaction) and must invalidate the kernel's caches of the
    /// database and `-journal` when this returns true.
    fn roll_back_hot_journal(&mut self) -> io::Result<bool> {
        if !self.journal_is_hot() {
            return Ok(false);
        }
        let journal = self.path(Kind::Journal);
        let database = self.path(Kind::Database);
        let sqlite_journal = self.dir.join("database-journal");
        fs::rename(&journal, &sqlite_journal)?;
        self.files[Kind::Journal as usize] = None;
        let result = crate::recover::sqlite_recover(&database, false);
        for leftover in ["database-journal", "database-wal", "database-shm"] {
            let _ = fs::remove_file(self.dir.join(leftover));
        }
        result.map_err(|e| io::Error::other(format!("SQLite rollback of {}: {e}", database.display())))?;
        // The detector's transaction state (dirty pages, size) belonged to the rolled-back
        // transaction: start again from the file, keeping every lock held.
        self.reset_detector();
        tracing::warn!(db = %self.name, "rolled back a hot journal left by an interrupted transaction");
        Ok(true)
    }

    /// Before a replica apply (or an import) on a database whose WAL still holds committed
    /// frames — a former primary whose application kept a connection open, so SQLite never
    /// checkpointed — copies the newest committed frame of each page (as the WAL index of
    /// this layer records them) into the database file, syncs it and empties the WAL: the
    /// apply writes into the database file and then tells SQLite the WAL is empty, which would
    /// otherwise hide every page that lived only in the WAL. The caller holds SQLite's WAL
    /// locks (no reader or writer is active) and invalidates the kernel's caches when this
    /// returns true.
    fn fold_wal(&mut self, rt: Option<&RuntimeHandle>) -> io::Result<bool> {
        let (pages, commit, page_size) = {
            let index = lock(&self.wal_index);
            (index.pages.clone(), index.commit, index.page_size)
        };
        let (Some(commit), false) = (commit, pages.is_empty()) else { return Ok(false) };
        let (Some(wal), Some(database)) = (self.files[Kind::Wal as usize].as_ref(), self.files[Kind::Database as usize].as_ref()) else {
            return Ok(false);
        };
        if let Some(rt) = rt {
            // The WAL-backed LTX files of these frames must be durable before the frames go.
            rt.sync_wal_backed(&self.db_name()?)?;
        }
        let ps = u64::from(page_size);
        let mut page = vec![0u8; page_size as usize];
        for (pgno, offset) in &pages {
            wal.read_exact_at(&mut page, *offset)?;
            database.write_all_at(&page, u64::from(*pgno - 1) * ps)?;
        }
        database.set_len(u64::from(commit) * ps)?;
        database.sync_all()?;
        stats::fsync(FsyncKind::Database);
        wal.set_len(0)?;
        *lock(&self.wal_index) = WalIndex::default();
        self.reset_detector();
        tracing::info!(db = %self.name, pages = pages.len(), "folded the WAL's committed frames into the database before an apply");
        Ok(true)
    }

    /// A fresh detector for the database file as it is now (locks are the kernel's).
    fn reset_detector(&mut self) {
        let mut head = [0u8; 100];
        let header = self.files[Kind::Database as usize]
            .as_ref()
            .and_then(|f| f.read_exact_at(&mut head, 0).ok())
            .and_then(|()| DbHeader::parse(&head));
        self.detector = Detector::new(header);
        self.wal_tail.forget();
    }

    /// WAL mode: when this write completed a commit frame, records the transaction now —
    /// before SQLite syncs the WAL (synchronous=FULL) and publishes the commit in the WAL index
    /// — so that a commit the node refuses (lease deadline passed, no longer primary) fails
    /// SQLite's write: SQLite reports the error and never makes the transaction visible. The
    /// refused commit frame's header is zeroed so that SQLite's WAL recovery cannot resurrect
    /// it either. A commit the node took but could not finish (LTX write failed, sync acks
    /// missing) ends the process with status 99, like LiteFS: SQLite sees an I/O error, and
    /// start-up recovery keeps the WAL only up to the last LTX.
    fn commit_at_commit_frame(&mut self, offset: u64, data: &[u8], rt: &RuntimeHandle) -> Result<(), Errno> {
        let Some(wal) = self.files[Kind::Wal as usize].as_ref() else { return Ok(()) };
        let Some(frame_start) = completed_commit_frame(wal, &mut self.wal_tail, offset, data) else { return Ok(()) };
        let Some(Event::ReadWal { offset: from, len }) = self.detector.unread_wal() else { return Ok(()) };
        let mark = self.detector.wal_mark();
        node::failpoint::failpoint("wal-commit-frame");
        match self.commit_wal(from, len, rt) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::PermissionDenied => {
                tracing::warn!(db = %self.name, %err, "WAL commit refused; SQLite's write fails");
                self.detector.rewind_wal(mark);
                self.wal_tail.forget();
                let invalidated = self.files[Kind::Wal as usize]
                    .as_ref()
                    .map(|wal| wal.write_all_at(&[0u8; WAL_FRAME_HEADER_LEN as usize], frame_start));
                if let Some(Err(e)) = invalidated {
                    tracing::error!(db = %self.name, %e, "cannot invalidate a refused WAL commit frame; exiting");
                    std::process::exit(99);
                }
                Err(Errno::EACCES)
            }
            Err(err) if err.get_ref().is_some_and(|e| e.is::<UnknownOutcome>()) => {
                tracing::warn!(db = %self.name, "WAL commit outcome unknown; SQLite's write fails, the commit is folded into the database");
                self.settle_pending = true;
                Err(Errno::EIO)
            }
            Err(err) => {
                tracing::error!(db = %self.name, %err, "WAL commit could not be recorded; exiting");
                std::process::exit(99);
            }
        }
    }

    /// Before SQLite overwrites, truncates or deletes the WAL: the LTX files written from its
    /// frames without an fsync must be durable first (`RuntimeHandle::commit_blocking`).
    fn sync_wal_backed(&self, rt: &RuntimeHandle) -> Result<(), Errno> {
        let db = self.db_name().map_err(|_| Errno::EIO)?;
        rt.sync_wal_backed(&db).map(|_| ()).map_err(|err| {
            tracing::error!(db = %self.name, %err, "cannot sync the LTX files of the WAL; SQLite's operation fails");
            Errno::EIO
        })
    }

    /// After the file operation that committed a transaction was carried out: `EIO` if the
    /// node could not confirm that commit (the app must not count it as a success, though the
    /// cluster may keep it and so does this file).
    fn fail_if_outcome_unknown(&mut self) -> Result<(), Errno> {
        if std::mem::take(&mut self.commit_unknown) {
            return Err(Errno::EIO);
        }
        Ok(())
    }

    /// SQLite's rule (pager.c `hasHotJournal`), lock part aside: a journal whose first byte is
    /// 0 is not hot.
    fn journal_is_hot(&self) -> bool {
        let mut first = [0u8; 1];
        File::open(self.path(Kind::Journal)).is_ok_and(|f| f.read_exact_at(&mut first, 0).is_ok() && first[0] != 0)
    }

    fn commit_wal(&mut self, offset: u64, len: u64, rt: &RuntimeHandle) -> io::Result<()> {
        let wal = self.files[Kind::Wal as usize]
            .as_ref()
            .ok_or_else(|| io::Error::other("no WAL file"))?;
        let bytes = wal_bytes(wal, &self.wal_tail, offset, len)?;
        if self.recorder.is_some() {
            self.record(&oplog::format_wal_data(offset, &bytes));
        }
        let commits = self.detector.wal_data(offset, &bytes).map_err(io::Error::other)?;
        // A commit's LTX is WAL-backed (no fsync of its own; `submit`) unless it is the first of
        // its WAL generation, the anchor start-up recovery rebuilds from. A WAL-backed LTX needs
        // no WAL sync now: its frames become durable with SQLite's own FSYNC (synchronous=FULL)
        // or, at the latest, when the node syncs the WAL and then the LTX files before SQLite
        // restarts, truncates or deletes the WAL (`DataDir::sync_wal_backed`). An fsynced LTX
        // needs its frames durable first (recovery keeps WAL frames up to the last LTX).
        let anchor = commits.iter().any(|c| c.wal.is_none_or(|w| w.offset <= WAL_HEADER_LEN));
        if anchor && self.wal_unsynced {
            if let Some(wal) = self.files[Kind::Wal as usize].as_ref() {
                wal.sync_data()?;
                stats::fsync(FsyncKind::Wal);
                self.wal_unsynced = false;
            }
        }
        for commit in commits {
            let page_size = commit.page_size as usize;
            let mut pages = Vec::with_capacity(commit.pages.len());
            let mut located = Vec::with_capacity(commit.pages.len());
            for page in &commit.pages {
                let wal_offset = page.wal_offset.ok_or_else(|| io::Error::other("WAL commit page without a WAL offset"))?;
                let at = usize::try_from(wal_offset - offset).map_err(io::Error::other)?;
                let data = bytes.get(at..at + page_size).ok_or_else(|| io::Error::other("WAL frame beyond the bytes read"))?;
                pages.push((page.pgno, data.to_vec()));
                located.push((page.pgno, wal_offset));
            }
            let wal = commit.wal.map(|w| WalFrames { offset: w.offset, size: w.size, salt1: w.salt1, salt2: w.salt2 });
            let outcome = self.submit(rt, commit.page_size, commit.commit, pages, wal)?;
            // The history has it (even when its outcome is unknown): so does this layer's index.
            let mut index = lock(&self.wal_index);
            index.page_size = commit.page_size;
            index.commit = Some(commit.commit);
            index.pages.retain(|pgno, _| *pgno <= commit.commit);
            index.pages.extend(located);
            tracing::debug!(db = %self.name, ?outcome, "WAL commit");
            if let CommitOutcome::Unknown { .. } = outcome {
                // SQLite would publish it as a success: its write fails instead, and the
                // transaction reaches SQLite's view through `Shared::settle_unknown_commit`.
                return Err(io::Error::other(UnknownOutcome));
            }
        }
        self.wal_tail.recorded();
        Ok(())
    }
}


/// A WAL commit the core took whose outcome is unknown (sync acks timed out, lease ended).
#[derive(Debug)]
struct UnknownOutcome;

impl std::fmt::Display for UnknownOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("commit outcome unknown")
    }
}

impl std::error::Error for UnknownOutcome {}

/// WAL header and frame header sizes (SQLite's wal.c).
const WAL_HEADER_LEN: u64 = 32;
const WAL_FRAME_HEADER_LEN: u64 = 24;

/// If a WAL write of `data` at `offset` (already in the file) completed a commit frame, the
/// offset of that frame. Two ways: the write ended exactly at the end of a commit frame (SQLite
/// writes a frame's header and its page as two writes, or whole frames at once); or it rewrote
/// the header of a commit frame written before — when a transaction wrote a page twice (its
/// cache spilled), SQLite overwrites the first frame's page in place, appends the commit frame,
/// and only then rewrites the checksums of the frames from the first one it overwrote to the
/// commit frame (`walRewriteChecksums`): before that last header the chain does not verify.
fn completed_commit_frame(wal: &File, tail: &mut WalTail, offset: u64, data: &[u8]) -> Option<u64> {
    if offset < WAL_HEADER_LEN || data.is_empty() {
        return None;
    }
    let read_header = || {
        let mut header = [0u8; WAL_HEADER_LEN as usize];
        wal.read_exact_at(&mut header, 0).ok().and_then(|()| header_page_size(&header))
    };
    let page_size = match tail.page_size {
        Some(ps) => {
            debug_assert!(read_header().is_none_or(|on_disk| on_disk == ps), "the WAL tail's page size differs from the WAL header");
            ps
        }
        None => {
            let ps = read_header()?;
            tail.page_size = Some(ps);
            ps
        }
    };
    let frame_len = WAL_FRAME_HEADER_LEN + page_size;
    let end = offset + data.len() as u64;
    let rewritten_header = data.len() as u64 == WAL_FRAME_HEADER_LEN
        && (offset - WAL_HEADER_LEN) % frame_len == 0
        && tail.high >= offset + frame_len;
    if rewritten_header {
        return (frame_commit(data)? != 0).then_some(offset);
    }
    if (end - WAL_HEADER_LEN) % frame_len != 0 || end < WAL_HEADER_LEN + frame_len {
        return None;
    }
    let frame_start = end - frame_len;
    let mut head = [0u8; 8];
    if frame_start >= offset {
        let at = usize::try_from(frame_start - offset).ok()?;
        head.copy_from_slice(data.get(at..at + 8)?);
    } else {
        head.copy_from_slice(wal_bytes(wal, tail, frame_start, 8).ok()?.get(..8)?);
    }
    (frame_commit(&head)? != 0).then_some(frame_start)
}

/// The database image at its last commit: `database` with committed WAL pages laid over it.
fn read_committed_image(dir: &std::path::Path, wal_index: &Mutex<WalIndex>, page_size: u32) -> io::Result<Vec<u8>> {
    let index = lock(wal_index);
    let mut image = match fs::read(dir.join(Kind::Database.backing_name())) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        other => other?,
    };
    let Some(commit) = index.commit else { return Ok(image) };
    let ps = if index.page_size != 0 { index.page_size } else { page_size } as usize;
    image.resize(commit as usize * ps, 0);
    if index.pages.is_empty() {
        return Ok(image);
    }
    let wal = File::open(dir.join(Kind::Wal.backing_name()))?;
    for (pgno, offset) in &index.pages {
        let at = (*pgno as usize - 1) * ps;
        wal.read_exact_at(&mut image[at..at + ps], *offset)?;
    }
    Ok(image)
}

struct State {
    opts: FsOptions,
    dbs: Vec<Db>,
    by_name: BTreeMap<String, usize>,
    uid: u32,
    gid: u32,
}

/// What the FUSE callbacks and the runtime's apply hook share.
pub struct Shared {
    state: Mutex<State>,
    runtime: OnceLock<RuntimeHandle>,
    notifier: OnceLock<fuser::Notifier>,
    /// WAL indexes by database name, reachable without the state lock (snapshot reads).
    wal_indexes: Mutex<BTreeMap<String, Arc<Mutex<WalIndex>>>>,
    /// Databases whose SHARED lock a snapshot read holds (released in `after_read`).
    reading: Mutex<BTreeMap<String, bool>>,
    /// The node's own SQLite locks, through descriptors of the mount.
    locks: MountLocks,
    /// `fuse.follow-caller-cpu`.
    follow_caller_cpu: bool,
}

/// The mounted file system. All requests are served under one lock (correctness first).
pub struct LtxFs {
    shared: Arc<Shared>,
}

fn io_errno(err: io::Error) -> Errno {
    Errno::from(err)
}

impl Shared {
    /// Loads every database under `<data>/dbs/` and removes stale `-shm` files. Recovery
    /// (hot journals, WAL cut back to the last LTX) has run before (`crate::recover`).
    pub fn new(opts: FsOptions) -> io::Result<Arc<Shared>> {
        let dbs_dir = opts.data_dir.join("dbs");
        fs::create_dir_all(&dbs_dir)?;
        if let Some(dir) = &opts.record_ops {
            fs::create_dir_all(dir)?;
        }
        let mut state = State {
            opts,
            dbs: Vec::new(),
            by_name: BTreeMap::new(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(&dbs_dir)? {
            let entry = entry?;
            if entry.path().join("database").exists() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        let shared = Shared {
            state: Mutex::new(state_placeholder()),
            runtime: OnceLock::new(),
            notifier: OnceLock::new(),
            wal_indexes: Mutex::new(BTreeMap::new()),
            reading: Mutex::new(BTreeMap::new()),
            locks: MountLocks::new(),
            follow_caller_cpu: state.opts.follow_caller_cpu,
        };
        for name in names {
            let _ = fs::remove_file(dbs_dir.join(&name).join("shm"));
            state.load_db(&name, false, &shared).map_err(|e| io::Error::other(format!("{name}: {e}")))?;
        }
        *lock(&shared.state) = state;
        Ok(Arc::new(shared))
    }

    /// Connects the file system to the node runtime (once, before mounting).
    pub fn set_runtime(&self, runtime: RuntimeHandle) {
        let _ = self.runtime.set(runtime);
    }

    /// The kernel notifier of the mounted session at `mount_dir` (once, right after mounting).
    /// Also starts opening the descriptors of the mount the node takes its own locks through
    /// ([`crate::mount_locks`]) and the step-down watcher
    /// ([`Shared::roll_back_interrupted_transactions`]).
    pub fn set_notifier(self: &Arc<Self>, notifier: fuser::Notifier, mount_dir: PathBuf) {
        if self.notifier.set(notifier).is_err() {
            return;
        }
        match self.locks.start(mount_dir) {
            Ok(()) => {
                let state = self.state();
                for d in &state.dbs {
                    self.open_locks_ahead(d);
                }
            }
            Err(err) => tracing::error!(%err, "cannot start the lock opener; applies go ahead without SQLite's locks"),
        }
        let Some(rt) = self.runtime.get() else { return };
        let mut events = rt.subscribe_roles();
        let shared = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("ltxfs-step-down".into()).spawn(move || loop {
            match events.blocking_recv() {
                Ok(RuntimeEvent::Role { writable: false, .. }) | Err(RecvError::Lagged(_)) => {}
                Ok(_) => continue,
                Err(RecvError::Closed) => return,
            }
            let Some(shared) = shared.upgrade() else { return };
            shared.roll_back_interrupted_transactions();
        });
        if let Err(err) = spawned {
            tracing::error!(%err, "cannot start the step-down watcher; hot journals wait for the next apply");
        }
    }

    /// WAL mode, a commit whose outcome is unknown: SQLite was told it failed and never
    /// published it, but the history (and this layer's WAL index) has it. Once the failed
    /// writer has let go of SQLite's locks, do what a replica apply does: fold the WAL's
    /// committed frames (that commit included) into the database file, empty the WAL and
    /// rewrite SQLite's WAL index, so every connection then reads the history's state.
    fn settle_unknown_commit(&self, name: &str) {
        let Ok(db) = DbName::new(name) else { return };
        self.prepare_apply(&db, Holder::Settle);
        // The database's size as the fold (or an apply that came first) left it.
        let commit = {
            let state = self.state();
            state.by_name.get(name).and_then(|&id| {
                let d = &state.dbs[id];
                let mut head = [0u8; 100];
                let page_size = d.files[0].as_ref().and_then(|f| f.read_exact_at(&mut head, 0).ok()).and_then(|()| DbHeader::parse(&head)).map(|h| h.page_size)?;
                let len = d.files[0].as_ref()?.metadata().ok()?.len();
                u32::try_from(len / u64::from(page_size)).ok()
            })
        };
        self.finish_apply(&db, &[], commit.unwrap_or(0), Holder::Settle);
        tracing::warn!(db = %db, "a commit with an unknown outcome is now in SQLite's view too");
    }

    /// After this node stopped accepting writes: a transaction that was open at that moment
    /// can neither finish nor undo itself (its writes are refused), so it leaves a hot journal
    /// that would fail every reader ("attempt to write a readonly database") until the next
    /// apply rolled it back — and a node that is only read may never get one. Once no SQLite
    /// connection holds a lock on such a database, roll the journal back here, under SQLite's
    /// locks in the shell's tables, exactly as an apply would. Polls (backing off to 1 s) while
    /// a connection is still in the way; returns when nothing is left or the node is writable
    /// again (a writer then rolls hot journals back itself, as SQLite always does).
    fn roll_back_interrupted_transactions(&self) {
        let mut wait = LOCK_POLL;
        loop {
            if !self.read_only() {
                return;
            }
            let candidates: Vec<String> = {
                let reading = lock(&self.reading).clone();
                let state = self.state();
                state
                    .dbs
                    .iter()
                    .filter(|d| {
                        let wal = d.files[Kind::Database as usize].as_ref().is_some_and(file_is_wal);
                        !wal && d.journal_is_hot() && !reading.contains_key(&d.name)
                    })
                    .map(|d| d.name.clone())
                    .collect()
            };
            let mut pending = false;
            for name in candidates {
                let Some(fd) = self.locks.file(&name, LockFile::Database, Holder::StepDown, APPLY_LOCK_WAIT_MAX) else {
                    pending = true;
                    continue;
                };
                if !take_apply_locks(&fd, false).unwrap_or(false) {
                    let _ = mount_locks::unlock_all(&fd);
                    pending = true;
                    continue;
                }
                let rolled_back = {
                    let mut state = self.state();
                    match state.by_name.get(&name).copied() {
                        Some(id) if state.dbs[id].roll_back_hot_journal_logged() => Some(id),
                        _ => None,
                    }
                };
                let _ = mount_locks::unlock_all(&fd);
                if let (Some(id), Ok(db)) = (rolled_back, DbName::new(name)) {
                    self.invalidate_after_rollback(&db, id);
                }
            }
            if !pending {
                return;
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Before unmounting: the node's own descriptors of the mount would make it busy.
    pub fn close_mount_files(&self) {
        self.locks.close_all();
    }

    /// Opens the lock descriptors of `d` in the background (`-shm` only in WAL mode).
    fn open_locks_ahead(&self, d: &Db) {
        self.locks.open_ahead(&d.name, LockFile::Database);
        if d.files[Kind::Database as usize].as_ref().is_some_and(file_is_wal) {
            self.locks.open_ahead(&d.name, LockFile::Shm);
        }
    }

    /// Takes SQLite's write locks for `holder` (see [`take_apply_locks`]), polling until no
    /// SQLite connection is in the way or `deadline`. Does not hold the state lock while it
    /// waits. `false`: not taken (logged); the caller goes ahead without them.
    fn wait_apply_locks(&self, db: &str, wal: bool, holder: Holder, deadline: Instant) -> bool {
        let file = if wal { LockFile::Shm } else { LockFile::Database };
        let wait = deadline.saturating_duration_since(Instant::now());
        let Some(fd) = self.locks.file(db, file, holder, wait) else { return false };
        let mut waiting = false;
        loop {
            match take_apply_locks(&fd, wal) {
                Ok(true) => return true,
                Ok(false) if !waiting => {
                    waiting = true;
                    tracing::info!(db, ?holder, "waiting for SQLite's locks: a local connection is in a transaction");
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(db, %err, "cannot take SQLite's locks");
                    return false;
                }
            }
            if Instant::now() >= deadline {
                let _ = mount_locks::unlock_all(&fd);
                tracing::warn!(db, ?holder, "going ahead without SQLite's locks: a local connection held them too long");
                return false;
            }
            std::thread::sleep(LOCK_POLL);
        }
    }

    /// Releases whatever `holder` holds on `db` (both files).
    fn release_locks(&self, db: &str, holder: Holder) {
        for file in [LockFile::Database, LockFile::Shm] {
            if let Some(fd) = self.locks.cached(db, file, holder) {
                if let Err(err) = mount_locks::unlock_all(&fd) {
                    tracing::warn!(db, %err, "cannot release the node's SQLite locks");
                }
            }
        }
    }

    fn rt(&self) -> Result<&RuntimeHandle, Errno> {
        self.runtime.get().ok_or(Errno::EIO)
    }

    /// Whether local writes are refused: anything but the primary.
    fn read_only(&self) -> bool {
        self.runtime.get().is_none_or(|rt| !rt.with_status(Status::writable_now))
    }
}

fn state_placeholder() -> State {
    State {
        opts: FsOptions { data_dir: PathBuf::new(), record_ops: None, follow_caller_cpu: false },
        dbs: Vec::new(),
        by_name: BTreeMap::new(),
        uid: 0,
        gid: 0,
    }
}

impl LtxFs {
    pub fn new(shared: Arc<Shared>) -> LtxFs {
        LtxFs { shared }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state()
    }

    /// Keeps this FUSE thread on the CPU of the threads it serves (hot requests only).
    fn follow(&self, req: &Request) {
        if self.shared.follow_caller_cpu {
            node::caller_cpu::observe(req.pid());
        }
    }
}

impl State {
    /// Registers database `name`, creating its files when `create`.
    fn load_db(&mut self, name: &str, create: bool, shared: &Shared) -> io::Result<usize> {
        if let Some(id) = self.by_name.get(name) {
            return Ok(*id);
        }
        let dir = self.opts.data_dir.join("dbs").join(name);
        if create {
            fs::create_dir_all(&dir)?;
        }
        let database = OpenOptions::new().read(true).write(true).create(create).truncate(false).open(dir.join("database"))?;
        let mut head = [0u8; 100];
        let header = match database.read_exact_at(&mut head, 0) {
            Ok(()) => DbHeader::parse(&head),
            Err(_) => None,
        };
        let mut files: [Option<File>; 4] = [Some(database), None, None, None];
        for kind in [Kind::Journal, Kind::Wal, Kind::Shm] {
            files[kind as usize] = OpenOptions::new().read(true).write(true).open(dir.join(kind.backing_name())).ok();
        }
        let recorder = match &self.opts.record_ops {
            Some(rec) => Some(OpenOptions::new().create(true).append(true).open(rec.join(format!("{name}.ops")))?),
            None => None,
        };
        let wal_index = Arc::new(Mutex::new(WalIndex::default()));
        lock(&shared.wal_indexes).insert(name.to_string(), wal_index.clone());
        let id = self.dbs.len();
        self.dbs.push(Db {
            name: name.to_string(),
            dir,
            files,
            detector: Detector::new(header),
            recorder,
            wal_index,
            shm_change: 0,
            wal_unsynced: true,
            checkpoint_sync_started: false,
            commit_unknown: false,
            settle_pending: false,
            wal_tail: WalTail::default(),
        });
        self.by_name.insert(name.to_string(), id);
        tracing::info!(db = name, "database opened");
        Ok(id)
    }

    fn resolve(&self, ino: INodeNo) -> Option<(usize, Kind)> {
        let raw = ino.0.checked_sub(DB_INO_BASE)?;
        let id = usize::try_from(raw / 8).ok()?;
        let kind = Kind::from_index(raw % 8)?;
        (id < self.dbs.len()).then_some((id, kind))
    }
}

/// What the virtual files show, from the runtime's status.
struct View {
    primary: bool,
    /// Local writes are accepted now (primary, recovery done, lease deadline not passed).
    writable: bool,
    /// `.primary` content (replica connected to a primary).
    primary_hostname: Option<String>,
    lag_ms: i64,
    positions: BTreeMap<String, String>,
}

impl View {
    fn of(rt: Option<&RuntimeHandle>) -> View {
        let Some(rt) = rt else {
            return View { primary: false, writable: false, primary_hostname: None, lag_ms: LAG_UNKNOWN_MS, positions: BTreeMap::new() };
        };
        let s = rt.status();
        let primary_hostname = match (&s.primary, s.connected_to_primary, s.is_primary) {
            (Some(p), true, false) => Some(p.hostname.clone()),
            _ => None,
        };
        let lag_ms = if s.is_primary { 0 } else { s.lag_ms.unwrap_or(LAG_UNKNOWN_MS).min(LAG_UNKNOWN_MS) };
        let positions = s.positions.iter().map(|(db, p)| (db.clone(), format!("{:016x}/{:016x}\n", p.txid, p.checksum))).collect();
        View { primary: s.is_primary, writable: s.writable_now(), primary_hostname, lag_ms, positions }
    }

    fn ttl(&self) -> Duration {
        if self.primary {
            TTL
        } else {
            Duration::ZERO
        }
    }

    fn lag(&self) -> Vec<u8> {
        format!("{:+010}\n", self.lag_ms).into_bytes()
    }

    fn pos(&self, db: &str) -> Vec<u8> {
        self.positions.get(db).cloned().unwrap_or_else(|| format!("{:016x}/{:016x}\n", 0, 0)).into_bytes()
    }
}

impl State {
    fn attr(&self, ino: INodeNo, view: &View) -> Result<FileAttr, Errno> {
        let now = SystemTime::now();
        let mut attr = FileAttr {
            ino,
            size: 0,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind: FileType::RegularFile,
            perm: 0o644,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        match ino.0 {
            ROOT_INO => {
                attr.kind = FileType::Directory;
                attr.perm = 0o755;
                attr.nlink = 2;
                return Ok(attr);
            }
            PRIMARY_INO => {
                let host = view.primary_hostname.as_ref().ok_or(Errno::ENOENT)?;
                attr.perm = 0o444;
                attr.size = host.len() as u64 + 1;
                return Ok(attr);
            }
            LAG_INO => {
                attr.perm = 0o444;
                attr.size = view.lag().len() as u64;
                return Ok(attr);
            }
            _ => {}
        }
        let (id, kind) = self.resolve(ino).ok_or(Errno::ENOENT)?;
        let db = &self.dbs[id];
        if kind == Kind::Pos {
            attr.perm = 0o444;
            attr.size = view.pos(&db.name).len() as u64;
            return Ok(attr);
        }
        let meta = db.file(kind)?.metadata().map_err(io_errno)?;
        attr.size = meta.len();
        attr.blocks = meta.blocks();
        attr.mtime = meta.modified().unwrap_or(now);
        attr.ctime = attr.mtime;
        if !view.writable && kind != Kind::Shm {
            attr.perm = 0o444;
        }
        Ok(attr)
    }

    fn virtual_content(&self, ino: INodeNo, view: &View) -> Option<Vec<u8>> {
        match ino.0 {
            PRIMARY_INO => Some(format!("{}\n", view.primary_hostname.as_deref().unwrap_or("")).into_bytes()),
            LAG_INO => Some(view.lag()),
            _ => match self.resolve(ino)? {
                (id, Kind::Pos) => Some(view.pos(&self.dbs[id].name)),
                _ => None,
            },
        }
    }

    fn lookup_name(&self, name: &OsStr, view: &View) -> Result<INodeNo, Errno> {
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        match name {
            ".primary" if view.primary_hostname.is_some() => return Ok(INodeNo(PRIMARY_INO)),
            ".lag" => return Ok(INodeNo(LAG_INO)),
            _ => {}
        }
        let (db, kind) = parse_name(name).ok_or(Errno::ENOENT)?;
        let id = *self.by_name.get(db).ok_or(Errno::ENOENT)?;
        if !self.dbs[id].exists(kind) {
            return Err(Errno::ENOENT);
        }
        Ok(db_ino(id, kind))
    }
}

fn file_is_wal(file: &File) -> bool {
    let mut b = [0u8; 2];
    file.read_exact_at(&mut b, 18).is_ok() && b == [2, 2]
}

/// Two copies of SQLite's `WalIndexHdr` and a `WalCkptInfo` saying "the WAL is empty, read
/// everything from the database file" (§5.5): version 3007000, `iChange`, `isInit`, native
/// byte order, `szPage`, `mxFrame = 0`, `nPage`, frame checksum and salts from the WAL header,
/// the header checksum; `nBackfill = 0`, read marks `[0, unused × 4]`.
fn wal_index_header(change: u32, page_size: u32, n_page: u32, wal_header: Option<[u8; 32]>) -> Vec<u8> {
    let mut hdr = [0u8; 48];
    hdr[0..4].copy_from_slice(&3_007_000u32.to_ne_bytes());
    hdr[8..12].copy_from_slice(&change.to_ne_bytes());
    hdr[12] = 1; // isInit
    hdr[13] = u8::from(cfg!(target_endian = "big")); // bigEndCksum: native order
    let sz = if page_size == 65_536 { 1u16 } else { page_size as u16 };
    hdr[14..16].copy_from_slice(&sz.to_ne_bytes());
    // mxFrame (16..20) stays 0.
    hdr[20..24].copy_from_slice(&n_page.to_ne_bytes());
    if let Some(w) = wal_header {
        // aFrameCksum = the WAL header's checksum, aSalt = its salts (as SQLite keeps them: the
        // salts are copied as raw bytes, the checksums as native integers).
        let c1 = u32::from_be_bytes([w[24], w[25], w[26], w[27]]);
        let c2 = u32::from_be_bytes([w[28], w[29], w[30], w[31]]);
        hdr[24..28].copy_from_slice(&c1.to_ne_bytes());
        hdr[28..32].copy_from_slice(&c2.to_ne_bytes());
        hdr[32..40].copy_from_slice(&w[16..24]);
    }
    let (s1, s2) = wal_checksum_native(&hdr[..40]);
    hdr[40..44].copy_from_slice(&s1.to_ne_bytes());
    hdr[44..48].copy_from_slice(&s2.to_ne_bytes());
    let mut out = Vec::with_capacity(136);
    out.extend_from_slice(&hdr);
    out.extend_from_slice(&hdr);
    let mut ckpt = [0u8; 40];
    // nBackfill 0; aReadMark[0] = 0, aReadMark[1..5] = READMARK_NOT_USED.
    for i in 1..5 {
        ckpt[4 + i * 4..8 + i * 4].copy_from_slice(&0xffff_ffffu32.to_ne_bytes());
    }
    out.extend_from_slice(&ckpt);
    out
}

/// SQLite's `walChecksumBytes` in native byte order, from a zero seed.
fn wal_checksum_native(data: &[u8]) -> (u32, u32) {
    let (mut s1, mut s2) = (0u32, 0u32);
    for chunk in data.chunks_exact(8) {
        let a = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let b = u32::from_ne_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
        s1 = s1.wrapping_add(a).wrapping_add(s2);
        s2 = s2.wrapping_add(b).wrapping_add(s1);
    }
    (s1, s2)
}

impl Shared {
    /// Before a local write that SQLite connections must not see half-done (an apply, an
    /// import, a settle): takes SQLite's write locks for `holder` (bounded wait), then rolls
    /// back a hot journal or folds a WAL that still holds committed frames.
    fn prepare_apply(&self, db: &DbName, holder: Holder) {
        let deadline = Instant::now() + APPLY_LOCK_WAIT_MAX;
        let wal = {
            let state = self.state();
            let Some(&id) = state.by_name.get(db.as_str()) else { return };
            state.dbs[id].files[Kind::Database as usize].as_ref().is_some_and(file_is_wal)
        };
        // On a replica the FUSE thread never waits for the runtime, so waiting for the state
        // lock is safe; on a primary (`/import`) the lock wait is bounded.
        self.wait_apply_locks(db.as_str(), wal, holder, deadline);
        let (id, changed) = {
            let mut state = self.state();
            let Some(&id) = state.by_name.get(db.as_str()) else { return };
            let d = &mut state.dbs[id];
            let rolled_back = !wal && d.roll_back_hot_journal_logged();
            let folded = wal
                && d.fold_wal(self.runtime.get()).unwrap_or_else(|err| {
                    tracing::error!(%db, %err, "cannot fold the WAL into the database before an apply");
                    false
                });
            (id, rolled_back || folded)
        };
        if changed {
            self.invalidate_after_rollback(db, id);
        }
    }

    /// After that write: registers a database that appeared, tells the kernel's caches and
    /// SQLite's WAL index, releases `holder`'s locks.
    fn finish_apply(&self, db: &DbName, pages: &[u32], commit: u32, holder: Holder) {
        // 1. Register a new database, note what to invalidate (under the state lock).
        // Names that appear now: the kernel may hold negative entries for them.
        let mut new_names: Vec<String> = Vec::new();
        let (id, page_size, shm, wal_header, change) = {
            let mut state = self.state();
            let id = match state.by_name.get(db.as_str()) {
                Some(&id) => id,
                None => match state.load_db(db.as_str(), false, self) {
                    Ok(id) => {
                        self.open_locks_ahead(&state.dbs[id]);
                        new_names.extend(BACKED.iter().map(|k| format!("{db}{}", k.suffix())));
                        new_names.push(format!("{db}{}", Kind::Pos.suffix()));
                        id
                    }
                    Err(err) => {
                        tracing::warn!(%db, %err, "applied database cannot be opened");
                        return;
                    }
                },
            };
            let d = &mut state.dbs[id];
            if pages.is_empty() {
                // The whole file was replaced (`/import`): frames left in the WAL belong to the
                // old content (the node synced their LTX files before the import's LTX) and
                // must neither be read over the new file nor recovered by SQLite later.
                if let Some(w) = d.files[Kind::Wal as usize].as_ref() {
                    if let Err(err) = w.set_len(0) {
                        tracing::error!(%db, %err, "cannot empty the WAL after an import");
                    }
                }
                *lock(&d.wal_index) = WalIndex::default();
                d.reset_detector();
            }
            let mut head = [0u8; 100];
            let header = d.files[0].as_ref().and_then(|f| f.read_exact_at(&mut head, 0).ok()).and_then(|()| DbHeader::parse(&head));
            let page_size = header.map_or(4096, |h| h.page_size);
            let wal_mode = header.is_some_and(|h| h.wal_mode);
            if wal_mode && d.files[Kind::Wal as usize].is_none() {
                // Readers of a WAL database need a -wal file; a replica's stays empty.
                match OpenOptions::new().read(true).write(true).create(true).truncate(false).open(d.path(Kind::Wal)) {
                    Ok(f) => {
                        d.wal_tail.forget();
                        d.files[Kind::Wal as usize] = Some(f);
                        new_names.push(format!("{db}{}", Kind::Wal.suffix()));
                        self.locks.open_ahead(db.as_str(), LockFile::Shm);
                    }
                    Err(err) => tracing::warn!(%db, %err, "cannot create the replica's empty WAL"),
                }
            }
            // A whole-file replacement (`/import`) also tells open WAL connections (their cached
            // pages and WAL index are stale) even if the new file is not in WAL mode.
            let shm = (wal_mode || pages.is_empty()) && d.files[Kind::Shm as usize].is_some();
            let mut wal_header = None;
            if let Some(w) = d.files[Kind::Wal as usize].as_ref() {
                let mut buf = [0u8; 32];
                if w.read_exact_at(&mut buf, 0).is_ok() {
                    wal_header = Some(buf);
                }
            }
            d.shm_change = d.shm_change.wrapping_add(1).max(next_change_seed());
            (id, page_size, shm, wal_header, d.shm_change)
        };
        // 2. Kernel caches, without the state lock (the kernel may wait for a FUSE request).
        if let Some(notifier) = self.notifier.get() {
            for name in &new_names {
                let _ = notifier.inval_entry(INodeNo(ROOT_INO), OsStr::new(name));
            }
            let ino = db_ino(id, Kind::Database);
            let ps = i64::from(page_size);
            if pages.is_empty() {
                let _ = notifier.inval_inode(ino, 0, 0);
            } else {
                for range in page_ranges(pages) {
                    let _ = notifier.inval_inode(ino, i64::from(range.0 - 1) * ps, i64::from(range.1 - range.0 + 1) * ps);
                }
                // The size may have changed: invalidate attributes and anything past the end.
                let _ = notifier.inval_inode(ino, i64::from(commit) * ps, 0);
            }
            if shm {
                let header = wal_index_header(change, page_size, commit, wal_header);
                let shm_ino = db_ino(id, Kind::Shm);
                if let Err(err) = notifier.store(shm_ino, 0, &header) {
                    tracing::debug!(%db, %err, "WAL-index store into the kernel cache failed");
                }
                let state = self.state();
                if let Some(f) = state.dbs[id].files[Kind::Shm as usize].as_ref() {
                    let _ = f.write_all_at(&header, 0);
                }
            }
        }
        // 3. Release SQLite's locks.
        self.release_locks(db.as_str(), holder);
    }
}

impl ApplyHook for Shared {
    fn before_apply(&self, db: &DbName) {
        self.prepare_apply(db, Holder::Apply);
    }

    fn after_apply(&self, db: &DbName, pages: &[u32], commit: u32) {
        self.finish_apply(db, pages, commit, Holder::Apply);
    }

    fn abort_apply(&self, db: &DbName) {
        self.release_locks(db.as_str(), Holder::Apply);
    }

    fn before_read(&self, db: &DbName) {
        // Rollback modes: a reader's SHARED lock keeps a writer's uncommitted pages out of the
        // image. Bounded: the FUSE thread may be waiting for a commit queued behind this read.
        // WAL mode needs no lock (committed WAL pages are laid over the file).
        let deadline = Instant::now() + READ_LOCK_WAIT_MAX;
        let wal = match self.state.try_lock() {
            Ok(state) => {
                let Some(&id) = state.by_name.get(db.as_str()) else { return };
                state.dbs[id].files[0].as_ref().is_none_or(file_is_wal)
            }
            // The FUSE thread holds it (maybe waiting for this disk worker): read the header.
            Err(_) => false,
        };
        if wal {
            return;
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        let Some(fd) = self.locks.file(db.as_str(), LockFile::Database, Holder::Read, wait) else { return };
        let shared = (DB_SHARED_FIRST, DB_SHARED_FIRST + DB_SHARED_SIZE - 1);
        loop {
            let pending_free = !mount_locks::held_by_other(&fd, LockKind::Read, DB_PENDING_BYTE, DB_PENDING_BYTE).unwrap_or(true);
            if pending_free && mount_locks::try_lock(&fd, LockKind::Read, shared.0, shared.1).unwrap_or(false) {
                lock(&self.reading).insert(db.to_string(), true);
                self.roll_back_before_read(db, &fd);
                return;
            }
            if Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(LOCK_POLL);
        }
    }

    fn read_database(&self, db: &DbName) -> Option<io::Result<Vec<u8>>> {
        let index = lock(&self.wal_indexes).get(db.as_str()).cloned()?;
        let state_dir = self.runtime.get()?.config().data_dir.join("dbs").join(db.as_str());
        Some(read_committed_image(&state_dir, &index, 0))
    }

    fn after_read(&self, db: &DbName) {
        if lock(&self.reading).remove(db.as_str()).is_none() {
            return;
        }
        self.release_locks(db.as_str(), Holder::Read);
    }
}

impl Shared {
    /// A snapshot read holding SHARED found a hot journal no connection is writing (none holds
    /// RESERVED): SQLite's readers would roll it back first, and so does the read — with the
    /// locks upgraded to exclusive for it, then back to SHARED.
    fn roll_back_before_read(&self, db: &DbName, fd: &File) {
        let hot = match self.state.try_lock() {
            Ok(state) => state.by_name.get(db.as_str()).is_some_and(|&id| state.dbs[id].journal_is_hot()),
            Err(_) => false,
        };
        let reserved_free = !mount_locks::held_by_other(fd, LockKind::Write, DB_RESERVED_BYTE, DB_RESERVED_BYTE).unwrap_or(true);
        if !hot || !reserved_free {
            return;
        }
        let shared = (DB_SHARED_FIRST, DB_SHARED_FIRST + DB_SHARED_SIZE - 1);
        let mut rolled_back = None;
        if take_apply_locks(fd, false).unwrap_or(false) {
            if let Ok(mut state) = self.state.try_lock() {
                if let Some(&id) = state.by_name.get(db.as_str()) {
                    if state.dbs[id].roll_back_hot_journal_logged() {
                        rolled_back = Some(id);
                    }
                }
            }
        }
        // Back to SHARED only (a read lock over the range replaces the write lock).
        let _ = mount_locks::unlock(fd, DB_PENDING_BYTE, DB_RESERVED_BYTE);
        let _ = mount_locks::try_lock(fd, LockKind::Read, shared.0, shared.1);
        if let Some(id) = rolled_back {
            self.invalidate_after_rollback(db, id);
        }
    }
}

impl Db {
    /// [`Db::roll_back_hot_journal`], failures logged (the apply or read goes on as before).
    fn roll_back_hot_journal_logged(&mut self) -> bool {
        self.roll_back_hot_journal().unwrap_or_else(|err| {
            tracing::error!(db = %self.name, %err, "hot journal could not be rolled back");
            false
        })
    }
}

impl Shared {
    /// After a hot-journal rollback: the kernel's name and attributes of `-journal` and its
    /// cached pages of the database are stale. Called without the state lock (the kernel may
    /// wait for a FUSE request).
    fn invalidate_after_rollback(&self, db: &DbName, id: usize) {
        if let Some(notifier) = self.notifier.get() {
            let _ = notifier.inval_entry(INodeNo(ROOT_INO), OsStr::new(&format!("{db}{}", Kind::Journal.suffix())));
            let _ = notifier.inval_inode(db_ino(id, Kind::Journal), 0, 0);
            let _ = notifier.inval_inode(db_ino(id, Kind::Database), 0, 0);
        }
    }
}

/// A change counter unlikely to equal one a reader cached from an earlier run.
fn next_change_seed() -> u32 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| d.subsec_nanos() | 1) & 0xff
}

/// Takes SQLite's write locks for an apply through `fd` (the `-shm` descriptor in WAL mode,
/// else the database's); `Ok(false)` if a connection is in the way (then only PENDING is kept
/// in rollback modes, so new readers wait while the current ones finish).
fn take_apply_locks(fd: &File, wal: bool) -> io::Result<bool> {
    if wal {
        return mount_locks::try_lock(fd, LockKind::Write, SHM_APPLY_LOCKS.0, SHM_APPLY_LOCKS.1);
    }
    if !mount_locks::try_lock(fd, LockKind::Write, DB_PENDING_BYTE, DB_PENDING_BYTE)? {
        return Ok(false);
    }
    let rest = mount_locks::try_lock(fd, LockKind::Write, DB_RESERVED_BYTE, DB_RESERVED_BYTE)?
        && mount_locks::try_lock(fd, LockKind::Write, DB_SHARED_FIRST, DB_SHARED_FIRST + DB_SHARED_SIZE - 1)?;
    if !rest {
        mount_locks::unlock(fd, DB_RESERVED_BYTE, DB_SHARED_FIRST + DB_SHARED_SIZE - 1)?;
    }
    Ok(rest)
}

/// Ascending page numbers → inclusive runs.
fn page_ranges(pages: &[u32]) -> Vec<(u32, u32)> {
    let mut sorted = pages.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::new();
    for p in sorted {
        match out.last_mut() {
            Some((_, end)) if *end + 1 >= p => *end = (*end).max(p),
            _ => out.push((p, p)),
        }
    }
    out
}

/// Every FUSE request starts here: counted, and the FUSE thread's scheduling policy kept
/// (`node::idle_handoff`).
fn begin_request(op: &str) {
    stats::fuse_request(op);
    node::idle_handoff::on_request();
}

impl Filesystem for LtxFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        begin_request("init");
        // No FUSE_POSIX_LOCKS: the kernel keeps POSIX locks itself (module docs).
        // Optional: without it the kernel still sends OPENDIR (answered ENOSYS once).
        let _ = config.add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        begin_request("lookup");
        let view = View::of(self.shared.runtime.get());
        let state = self.state();
        if parent.0 != ROOT_INO {
            return reply.error(Errno::ENOENT);
        }
        match state.lookup_name(name, &view).and_then(|ino| state.attr(ino, &view)) {
            Ok(attr) => reply.entry(&view.ttl(), &attr, Generation(0)),
            Err(Errno::ENOENT) if !view.ttl().is_zero() => {
                // A negative entry the kernel may cache (inode 0): SQLite looks for a hot
                // journal before every read transaction. On the primary every name is created
                // through this mount (which replaces the negative entry); the runtime's own
                // creations invalidate it (`after_apply`).
                let mut attr = state.attr(INodeNo(ROOT_INO), &view).unwrap_or_else(|_| unreachable!("the root always has attributes"));
                attr.ino = INodeNo(0);
                reply.entry_with_ttls(&Duration::ZERO, &view.ttl(), &attr, Generation(0));
            }
            Err(err) => reply.error(err),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        begin_request("getattr");
        let view = View::of(self.shared.runtime.get());
        match self.state().attr(ino, &view) {
            Ok(attr) => reply.attr(&view.ttl(), &attr),
            Err(err) => reply.error(err),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        begin_request("setattr");
        let view = View::of(self.shared.runtime.get());
        let Ok(rt) = self.shared.rt() else { return reply.error(Errno::EIO) };
        let mut state = self.state();
        if let Some(size) = size {
            let Some((id, kind)) = state.resolve(ino) else {
                return reply.error(Errno::EACCES);
            };
            if !view.writable && kind != Kind::Shm {
                return reply.error(Errno::EACCES);
            }
            let db = &mut state.dbs[id];
            let op = match kind {
                Kind::Database => Some(Op::DbTruncate { size }),
                Kind::Journal => Some(Op::JournalTruncate { size }),
                Kind::Wal => Some(Op::WalTruncate { size }),
                Kind::Shm => None,
                Kind::Pos => return reply.error(Errno::EACCES),
            };
            if let Some(op) = op {
                if let Err(err) = db.detect(op, rt) {
                    return reply.error(err);
                }
            }
            if kind == Kind::Wal && size == 0 {
                *lock(&db.wal_index) = WalIndex::default();
            }
            if kind == Kind::Wal {
                db.wal_tail.forget();
                // SQLite's FSYNC after a truncation must reach the disk (see `fsync`).
                db.wal_unsynced = true;
                if let Err(err) = db.sync_wal_backed(rt) {
                    return reply.error(err);
                }
            }
            let result = db
                .file(kind)
                .and_then(|file| file.set_len(size).map_err(io_errno))
                .and_then(|()| db.fail_if_outcome_unknown());
            if let Err(err) = result {
                return reply.error(err);
            }
        }
        match state.attr(ino, &view) {
            Ok(attr) => reply.attr(&view.ttl(), &attr),
            Err(err) => reply.error(err),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        begin_request("unlink");
        let view = View::of(self.shared.runtime.get());
        let Ok(rt) = self.shared.rt() else { return reply.error(Errno::EIO) };
        let mut state = self.state();
        if parent.0 != ROOT_INO {
            return reply.error(Errno::ENOENT);
        }
        let ino = match state.lookup_name(name, &view) {
            Ok(ino) => ino,
            Err(err) => return reply.error(err),
        };
        let Some((id, kind)) = state.resolve(ino) else {
            return reply.error(Errno::EPERM);
        };
        if !view.writable && kind != Kind::Shm {
            return reply.error(Errno::EACCES);
        }
        let db = &mut state.dbs[id];
        let op = match kind {
            Kind::Journal => Some(Op::JournalUnlink),
            Kind::Wal => Some(Op::WalUnlink),
            Kind::Shm => None,
            // Dropping a database (a deletion LTX) is not implemented yet.
            Kind::Database | Kind::Pos => return reply.error(Errno::EPERM),
        };
        if let Some(op) = op {
            if let Err(err) = db.detect(op, rt) {
                return reply.error(err);
            }
        }
        if kind == Kind::Wal {
            if let Err(err) = db.sync_wal_backed(rt) {
                return reply.error(err);
            }
            *lock(&db.wal_index) = WalIndex::default();
            db.wal_tail.forget();
        }
        db.files[kind as usize] = None;
        let result = fs::remove_file(db.path(kind)).map_err(io_errno).and_then(|()| db.fail_if_outcome_unknown());
        match result {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(err),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        begin_request("open");
        // The node's own descriptors (for its locks: a write lock needs a writable descriptor)
        // never write through the mount.
        let read_only = self.shared.read_only() && !self.shared.locks.is_opener(req.pid());
        let state = self.state();
        let writable = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        if ino.0 == PRIMARY_INO
            || ino.0 == LAG_INO
            || matches!(state.resolve(ino), Some((_, Kind::Pos)))
        {
            if writable {
                return reply.error(Errno::EACCES);
            }
            return reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH);
        }
        let Some((id, kind)) = state.resolve(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if read_only && writable && kind != Kind::Shm {
            return reply.error(Errno::EACCES);
        }
        if !state.dbs[id].exists(kind) {
            return reply.error(Errno::ENOENT);
        }
        reply.opened(FileHandle(0), open_flags(kind));
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        begin_request("create");
        let view = View::of(self.shared.runtime.get());
        let mut state = self.state();
        if parent.0 != ROOT_INO {
            return reply.error(Errno::ENOENT);
        }
        let Some((db_name, kind)) = name.to_str().and_then(parse_name) else {
            return reply.error(Errno::EACCES);
        };
        // Not the primary: only SQLite's -shm (shared memory for readers) may be created.
        if !view.writable && kind != Kind::Shm {
            return reply.error(Errno::EACCES);
        }
        let id = match (kind, state.by_name.get(db_name)) {
            (Kind::Pos, _) => return reply.error(Errno::EACCES),
            (_, Some(id)) => *id,
            (Kind::Database, None) => match state.load_db(db_name, true, &self.shared) {
                Ok(id) => id,
                Err(err) => {
                    tracing::error!(db = db_name, %err, "cannot create database");
                    return reply.error(Errno::EIO);
                }
            },
            (_, None) => return reply.error(Errno::ENOENT),
        };
        let db = &mut state.dbs[id];
        if db.exists(kind) && flags & libc::O_EXCL != 0 {
            return reply.error(Errno::EEXIST);
        }
        if !db.exists(kind) {
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(db.path(kind))
            {
                Ok(file) => {
                    if kind == Kind::Wal {
                        db.wal_tail.forget(); // a new file: nothing of the old one is in it
                    }
                    db.files[kind as usize] = Some(file);
                }
                Err(err) => return reply.error(io_errno(err)),
            }
        }
        let ino = db_ino(id, kind);
        match state.attr(ino, &view) {
            Ok(attr) => reply.created(
                &view.ttl(),
                &attr,
                Generation(0),
                FileHandle(0),
                open_flags(kind),
            ),
            Err(err) => reply.error(err),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        begin_request("read");
        self.follow(req);
        let view = View::of(self.shared.runtime.get());
        let state = self.state();
        if let Some(content) = state.virtual_content(ino, &view) {
            let start = (offset as usize).min(content.len());
            let end = (start + size as usize).min(content.len());
            return reply.data(&content[start..end]);
        }
        let Some((id, kind)) = state.resolve(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let file = match state.dbs[id].file(kind) {
            Ok(file) => file,
            Err(err) => return reply.error(err),
        };
        let mut buf = vec![0u8; size as usize];
        let mut read = 0;
        while read < buf.len() {
            match file.read_at(&mut buf[read..], offset + read as u64) {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return reply.error(io_errno(err)),
            }
        }
        reply.data(&buf[..read]);
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        begin_request("write");
        self.follow(req);
        let read_only = self.shared.read_only();
        let Ok(rt) = self.shared.rt() else { return reply.error(Errno::EIO) };
        let mut state = self.state();
        let Some((id, kind)) = state.resolve(ino) else {
            return reply.error(Errno::EACCES);
        };
        if read_only && kind != Kind::Shm {
            return reply.error(Errno::EACCES);
        }
        let db = &mut state.dbs[id];
        let head = &data[..data.len().min(detect::HEAD_LEN)];
        let len = data.len() as u64;
        let op = match kind {
            Kind::Database => Some(Op::DbWrite { offset, len, head }),
            Kind::Journal => Some(Op::JournalWrite { offset, len, head }),
            Kind::Wal => Some(Op::WalWrite { offset, len }),
            Kind::Shm => None,
            Kind::Pos => return reply.error(Errno::EACCES),
        };
        if let Some(op) = op {
            if let Err(err) = db.detect(op, rt) {
                return reply.error(err);
            }
        }
        if kind == Kind::Wal && offset == 0 {
            // A new WAL header: SQLite restarts the WAL only after a complete checkpoint, so
            // every committed page is in the database file now — and the frames the
            // WAL-backed LTX files could be rebuilt from are about to be overwritten.
            if let Err(err) = db.sync_wal_backed(rt) {
                return reply.error(err);
            }
            *lock(&db.wal_index) = WalIndex::default();
            db.checkpoint_sync_started = false;
        }
        if kind == Kind::Wal {
            db.wal_unsynced = true;
        }
        if kind == Kind::Database && !db.checkpoint_sync_started && db.files[Kind::Wal as usize].is_some() {
            // In WAL mode SQLite writes the database file only to checkpoint: the WAL restart
            // that follows must find the WAL-backed LTX files durable; sync them meanwhile.
            db.checkpoint_sync_started = true;
            if let Ok(name) = db.db_name() {
                rt.sync_before_wal_restart(&name);
            }
        }
        let result = db
            .file(kind)
            .and_then(|file| file.write_all_at(data, offset).map_err(io_errno));
        if let Err(err) = result.and_then(|()| db.fail_if_outcome_unknown()) {
            return reply.error(err);
        }
        if kind == Kind::Wal {
            db.wal_tail.wrote(offset, data);
            if let Err(err) = db.commit_at_commit_frame(offset, data, rt) {
                if std::mem::take(&mut db.settle_pending) {
                    let (shared, name) = (self.shared.clone(), db.name.clone());
                    let spawned = std::thread::Builder::new()
                        .name("ltxfs-settle".into())
                        .spawn(move || {
                            node::caller_cpu::release();
                            shared.settle_unknown_commit(&name)
                        });
                    if let Err(e) = spawned {
                        tracing::error!(%e, "cannot settle a commit with an unknown outcome; exiting");
                        std::process::exit(99);
                    }
                }
                return reply.error(err);
            }
        }
        reply.written(data.len() as u32)
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(): the kernel drops the owner's POSIX locks itself.
        begin_request("flush");
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        begin_request("fsync");
        let mut state = self.state();
        let Some((id, kind)) = state.resolve(ino) else {
            return reply.ok();
        };
        if kind == Kind::Pos {
            return reply.ok();
        }
        let db = &mut state.dbs[id];
        if kind == Kind::Wal && !db.wal_unsynced {
            // Every WAL write goes through this file system, and all of them are durable
            // already: the node synced the WAL when it recorded the commit these frames end.
            return reply.ok();
        }
        let result = db.file(kind).and_then(|file| {
            if datasync {
                file.sync_data()
            } else {
                file.sync_all()
            }
            .map_err(io_errno)
        });
        if result.is_ok() {
            stats::fsync(FsyncKind::Forwarded);
        }
        if result.is_ok() && kind == Kind::Wal {
            // Every WAL write so far went through this lock: all of it is durable now.
            db.wal_unsynced = false;
        }
        match result {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(err),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        begin_request("readdir");
        let view = View::of(self.shared.runtime.get());
        let state = self.state();
        if ino.0 != ROOT_INO {
            return reply.error(Errno::ENOTDIR);
        }
        let mut entries: Vec<(INodeNo, FileType, String)> = vec![
            (INodeNo(ROOT_INO), FileType::Directory, ".".into()),
            (INodeNo(ROOT_INO), FileType::Directory, "..".into()),
            (INodeNo(LAG_INO), FileType::RegularFile, ".lag".into()),
        ];
        if view.primary_hostname.is_some() {
            entries.push((
                INodeNo(PRIMARY_INO),
                FileType::RegularFile,
                ".primary".into(),
            ));
        }
        for (id, db) in state.dbs.iter().enumerate() {
            for kind in BACKED.iter().copied().chain([Kind::Pos]) {
                if db.exists(kind) {
                    entries.push((
                        db_ino(id, kind),
                        FileType::RegularFile,
                        format!("{}{}", db.name, kind.suffix()),
                    ));
                }
            }
        }
        for (index, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, index as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        begin_request("access");
        let view = View::of(self.shared.runtime.get());
        let state = self.state();
        if let Err(err) = state.attr(ino, &view) {
            return reply.error(err);
        }
        let wants_write = mask.bits() & libc::W_OK != 0;
        let read_only = !view.writable
            || ino.0 == LAG_INO
            || ino.0 == PRIMARY_INO
            || matches!(state.resolve(ino), Some((_, Kind::Pos)));
        if wants_write && read_only && ino.0 != ROOT_INO {
            return reply.error(Errno::EACCES);
        }
        reply.ok();
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        begin_request("getxattr");
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        begin_request("listxattr");
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        begin_request("opendir");
        // ENOSYS: the kernel stops sending OPENDIR and RELEASEDIR (it opens directories
        // itself, FUSE_NO_OPENDIR_SUPPORT); SQLite opens the directory on every DELETE-mode
        // commit to fsync it.
        reply.error(Errno::ENOSYS);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        begin_request("fsyncdir");
        // ENOSYS: the kernel answers later FSYNCDIRs with success itself (no round trip).
        // Names are backed by files in data.dir whose creation/removal the engine makes durable
        // where it matters (LTX); SQLite's directory fsync after a journal unlink needs no more.
        reply.error(Errno::ENOSYS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wal_tail_keeps_contiguous_writes_until_a_commit_is_recorded() {
        use ltxfs_core::detect::wal::{wal_checksum, WAL_MAGIC_LE, WAL_VERSION};
        let mut tail = WalTail::default();
        let mut header = [0u8; 32];
        header[0..4].copy_from_slice(&WAL_MAGIC_LE.to_be_bytes());
        header[4..8].copy_from_slice(&WAL_VERSION.to_be_bytes());
        header[8..12].copy_from_slice(&4096u32.to_be_bytes());
        let (c1, c2) = wal_checksum(false, &header[..24], (0, 0));
        header[24..28].copy_from_slice(&c1.to_be_bytes());
        header[28..32].copy_from_slice(&c2.to_be_bytes());
        tail.wrote(0, &header);
        assert_eq!(tail.page_size, Some(4096));
        let frame_header = [7u8; 24];
        let page = [9u8; 4096];
        tail.wrote(32, &frame_header);
        tail.wrote(56, &page);
        assert_eq!(tail.get(32, 24), Some(&frame_header[..]));
        assert_eq!(tail.get(56, 4096), Some(&page[..]));
        assert_eq!(tail.get(56, 4097), None, "past the end");
        tail.recorded();
        assert_eq!(tail.get(56, 1), None, "a recorded commit's frames are gone");
        // The next frame starts where the last ended.
        tail.wrote(4152, &frame_header);
        assert_eq!(tail.get(4152, 24), Some(&frame_header[..]));
        // A write elsewhere (SQLite rewriting a frame of the open transaction) starts over.
        tail.wrote(32, &frame_header);
        assert_eq!(tail.get(4152, 24), None);
        assert_eq!(tail.get(32, 24), Some(&frame_header[..]));
        // A header write without a valid page size makes it unknown; forget drops everything.
        tail.wrote(0, &[0u8; 32]);
        assert_eq!(tail.page_size, None);
        tail.wrote(0, &header);
        tail.forget();
        assert_eq!((tail.page_size, tail.get(0, 1)), (None, None));
        // Larger than the bound: nothing kept, the file is read instead.
        tail.wrote(32, &vec![1u8; WAL_TAIL_BYTES_MAX + 1]);
        assert_eq!(tail.get(32, 1), None);
    }

    #[test]
    fn names_map_to_databases_and_their_files() {
        assert_eq!(parse_name("app.db"), Some(("app.db", Kind::Database)));
        assert_eq!(
            parse_name("app.db-journal"),
            Some(("app.db", Kind::Journal))
        );
        assert_eq!(parse_name("app.db-wal"), Some(("app.db", Kind::Wal)));
        assert_eq!(parse_name("app.db-shm"), Some(("app.db", Kind::Shm)));
        assert_eq!(parse_name("app.db-pos"), Some(("app.db", Kind::Pos)));
        assert_eq!(parse_name("-wal"), Some(("-wal", Kind::Database)));
        assert_eq!(parse_name(".hidden"), None);
        assert_eq!(parse_name(""), None);
    }

    #[test]
    fn inode_numbers_round_trip() {
        assert_eq!(db_ino(3, Kind::Pos).0, DB_INO_BASE + 3 * 8 + 4);
        let state = state_placeholder();
        assert_eq!(state.resolve(db_ino(0, Kind::Wal)), None, "no database registered");
    }

    #[test]
    fn page_ranges_merge_runs() {
        assert_eq!(page_ranges(&[5, 1, 2, 3, 7, 8]), vec![(1, 3), (5, 5), (7, 8)]);
        assert_eq!(page_ranges(&[]), vec![]);
    }

    #[test]
    fn wal_index_header_checksums_like_sqlite() {
        let h = wal_index_header(7, 4096, 3, None);
        assert_eq!(h.len(), 136);
        assert_eq!(h[..48], h[48..96], "two identical copies");
        let (s1, s2) = wal_checksum_native(&h[..40]);
        assert_eq!(u32::from_ne_bytes(h[40..44].try_into().unwrap()), s1);
        assert_eq!(u32::from_ne_bytes(h[44..48].try_into().unwrap()), s2);
        assert_eq!(u32::from_ne_bytes(h[16..20].try_into().unwrap()), 0, "mxFrame 0");
        assert_eq!(u32::from_ne_bytes(h[20..24].try_into().unwrap()), 3, "nPage");
        assert_eq!(u32::from_ne_bytes(h[100..104].try_into().unwrap()), 0, "aReadMark[0] = 0");
        assert_eq!(u32::from_ne_bytes(h[104..108].try_into().unwrap()), 0xffff_ffff);
    }
}
