//! The data directory: LiteFS's layout `<data>/dbs/<db>/{database, ltx/<min>-<max>.ltx}` plus
//! ltxfs's persisted checksum index (`chkindex`) and lineage epochs (`epoch`).
//!
//! The `epoch` file is a short journal of `<txid>/<checksum> <epoch>` lines, newest last: "the
//! history through this position (and what descends from it) belongs to this lineage epoch". A
//! line is made durable *before* any LTX that starts a new lineage epoch or a new history
//! (snapshot), and with every checksum index. At start-up the newest line whose position lies on
//! the chain of retained LTX files ending at the last one gives the database's epoch — so a node
//! killed right after it acknowledged commits of a new epoch still reports that epoch (with epoch
//! 0 a new primary's recovery would prefer an older chain and discard acknowledged commits).
//!
//! It executes the core's [`IoKind`] commands on real files (blocking calls; the runtime runs
//! them on tokio's blocking pool, one database at a time in emission order) and scans the data
//! directory at start-up into [`OpenDb`] inputs. It decides nothing about replication: what to
//! write, apply or delete always comes from the core. It never panics on what it finds on disk:
//! unreadable or foreign files are skipped with a warning, I/O failures become [`IoErrorKind`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ltxfs_core::catchup::LtxFileMeta;
use ltxfs_core::ids::{DbName, Epoch};
use ltxfs_core::ltx::{self, Header, Pos, Trailer, HEADER_SIZE, TRAILER_SIZE};
use ltxfs_core::node::{IoErrorKind, IoKind, IoOutcome, OpenDb};
use ltxfs_core::time::Time;

use super::stats::{self, FsyncKind};
use super::ApplyHook;

/// File names inside `<data>/dbs/<db>/`.
pub const DATABASE_FILE: &str = "database";
pub const LTX_DIR: &str = "ltx";
pub const CHECKSUM_INDEX_FILE: &str = "chkindex";
pub const EPOCH_FILE: &str = "epoch";
/// A database file written by applies (replicas) is fsynced once this many applies, or this
/// many bytes of their LTX files, have gone unsynced; their LTX files are durable, and start-up
/// after a crash re-applies the newest LTX files within the same bounds (`recover.rs`).
pub const APPLY_UNSYNCED_MAX: usize = 64;
pub const APPLY_UNSYNCED_BYTES_MAX: u64 = 32 * 1024 * 1024;
/// The WAL of a database in WAL mode (SQLite's `<db>-wal`, written through the mount).
pub const WAL_FILE: &str = "wal";
/// Most lines kept in the `epoch` journal.
pub const EPOCH_LINES_MAX: usize = 8;

/// Names of the spare LTX files in `ltx/` start with this (see [`promote_spares`]).
pub const SPARE_PREFIX: &str = ".spare-";
/// Spare files created at once, with one directory fsync for all of them. (256 was tried: the
/// stall of the commit path at each batch became 8× rarer but longer, and the lag tail worse.)
pub const SPARE_BATCH: usize = 32;
// Spare names carry a 3-digit index: the names of a batch sort in the order it is used.
const _: () = assert!(SPARE_BATCH <= 1000);
/// Once this many WAL-backed LTX files of a database wait for their sync, a background thread
/// syncs them ([`DataDir::sync_wal_backed`]'s rule), so that the sync SQLite's WAL restart must
/// wait for covers tens of files instead of a whole WAL generation's (~1,000 commits at
/// SQLite's default checkpoint size: a 250–500 ms stall of the commit path here).
pub const WAL_BACKED_SYNC_AHEAD: usize = 32;
/// From this many LTX files on, one `syncfs` makes them durable instead of one `fdatasync` each
/// ([`DataDir::sync_ltx_files`]).
pub const SYNCFS_MIN_FILES: usize = 4;
/// WAL-backed LTX files of one database held in memory for the background writer
/// ([`DataDir::write_ltx_wal_backed`]): beyond this many, or [`PENDING_LTX_BYTES_MAX`], the
/// commit writes them itself (back-pressure on a disk that cannot keep up).
pub const PENDING_LTX_MAX: usize = 256;
pub const PENDING_LTX_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The data directory of one node.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    /// Empty spare files whose names are durable, per LTX directory (see [`promote_spares`]).
    spares: Arc<Mutex<BTreeMap<PathBuf, SparePool>>>,
    /// WAL-backed LTX files written without their fsync, per database
    /// ([`DataDir::sync_wal_backed`]).
    unsynced: Arc<Mutex<BTreeMap<DbName, Unsynced>>>,
    /// Per database: size of the last LTX written, and (applies, their LTX bytes) written into
    /// the database file since its last fsync ([`APPLY_UNSYNCED_MAX`]).
    applied: Arc<Mutex<BTreeMap<DbName, AppliedSinceSync>>>,
    /// Per database: held for the whole of a [`DataDir::sync_wal_backed`], so that a caller
    /// returns only once the files another caller took from `unsynced` are durable too.
    wal_sync: Arc<Mutex<BTreeMap<DbName, Arc<Mutex<()>>>>>,
    /// Per database: the background thread syncing its WAL-backed files ahead of time, while it
    /// runs ([`WAL_BACKED_SYNC_AHEAD`]).
    sync_ahead: Arc<Mutex<BTreeMap<DbName, SyncAhead>>>,
    /// WAL-backed LTX files accepted but not written to a file yet, per database, oldest first
    /// ([`DataDir::write_ltx_wal_backed`]).
    pending: Arc<Mutex<BTreeMap<DbName, Pending>>>,
    /// Per database: held while its pending LTX files are written, so they reach their spare
    /// files (whose names give the order at start-up) one at a time, in commit order.
    ltx_write: Arc<Mutex<BTreeMap<DbName, Arc<Mutex<()>>>>>,
    /// Wakes the background writer of pending LTX files (started on first use). The writer's
    /// own copy of the `DataDir` has none, so it ends when every other copy is dropped.
    writer: Arc<Mutex<Option<std::sync::mpsc::Sender<DbName>>>>,
    /// The writer is writing and looks for more before it sleeps: a commit need not wake it.
    writer_busy: Arc<std::sync::atomic::AtomicBool>,
    /// The `epoch` journal of each database as last read or written ([`DataDir::epoch_lines`]):
    /// every commit consults its last line, and only this `DataDir` writes it.
    epochs: Arc<Mutex<BTreeMap<DbName, EpochLines>>>,
}

/// The lines of one `epoch` journal, oldest first.
type EpochLines = Vec<(Pos, Epoch)>;

/// WAL-backed LTX files of one database waiting for the background writer, in groups: each
/// group becomes one file, the LTX of its transactions merged ([`DataDir::write_ltx_wal_backed`]).
#[derive(Debug, Default)]
struct Pending {
    /// Oldest first.
    groups: VecDeque<PendingGroup>,
    /// LTX files (as the core wrote them) and their bytes, over every group.
    files: usize,
    bytes: usize,
}

/// One future LTX file: consecutive WAL-backed transactions of one database.
#[derive(Debug)]
struct PendingGroup {
    /// Each LTX as the core wrote it, oldest first: (min TXID, max TXID, bytes). Never empty.
    members: Vec<(u64, u64, Arc<[u8]>)>,
    /// Later transactions may still join (only the newest group; writing it closes it).
    open: bool,
}

impl PendingGroup {
    fn min_txid(&self) -> u64 {
        self.members[0].0
    }
    fn max_txid(&self) -> u64 {
        self.members[self.members.len() - 1].1
    }
    fn bytes(&self) -> usize {
        self.members.iter().map(|(_, _, b)| b.len()).sum()
    }

    /// The [`POINTS_XATTR`] value of the group's file: the post-apply checksum of every member
    /// but the last (each holds one transaction), 8 bytes big-endian each.
    fn points(&self) -> Vec<u8> {
        let inner = &self.members[..self.members.len() - 1];
        debug_assert!(inner.iter().all(|(lo, hi, _)| lo == hi), "a group's members hold one transaction each");
        inner.iter().filter_map(|(_, _, b)| post_apply_checksum(b)).flat_map(u64::to_be_bytes).collect()
    }

    /// The LTX of members `from..=to` (indices): the member itself, or their compaction.
    fn merged(&self, from: usize, to: usize) -> io::Result<Vec<u8>> {
        let members = &self.members[from..=to];
        if let [(_, _, one)] = members {
            return Ok(one.to_vec());
        }
        let invalid = |e: ltx::LtxError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
        let decoders = members.iter().map(|(_, _, b)| ltx::Decoder::new(&b[..])).collect::<Result<Vec<_>, _>>().map_err(invalid)?;
        let flags = decoders[0].header().flags;
        let (bytes, _, _) = ltx::compact_wal_run(decoders, Vec::with_capacity(self.bytes()), flags).map_err(invalid)?;
        Ok(bytes)
    }
}

/// Most transactions, and bytes of their LTX files, merged into one WAL-backed LTX file
/// ([`DataDir::write_ltx_wal_backed`]).
pub const MERGE_TXIDS_MAX: usize = 64;
pub const MERGE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The WAL-backed LTX files of one database not synced yet.
#[derive(Debug, Default)]
struct Unsynced {
    /// Oldest first.
    files: VecDeque<UnsyncedLtx>,
}

/// A WAL-backed LTX file before its sync: its name and an open descriptor.
type UnsyncedLtx = (PathBuf, File);

/// How long the background writer lets WAL-backed LTX files gather before it writes them.
const LTX_WRITE_COALESCE: std::time::Duration = std::time::Duration::from_millis(1);

/// Permission bits of an LTX file.
pub const LTX_MODE: u32 = 0o644;
/// Permission bits of a WAL-backed LTX file until its sync: the owner's execute bit (no umask
/// clears it) says "may be torn by a crash" ([`DataDir::write_ltx_wal_backed`]).
pub const UNSYNCED_LTX_MODE: u32 = 0o744;
const UNSYNCED_MARK: u32 = 0o100;

impl Unsynced {
    /// Puts files taken from the front back there (a sync that failed).
    fn restore(&mut self, taken: impl DoubleEndedIterator<Item = UnsyncedLtx>) {
        for link in taken.rev() {
            self.files.push_front(link);
        }
    }
}

#[derive(Debug, Default)]
struct SyncAhead {
    running: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct AppliedSinceSync {
    last_ltx_bytes: u64,
    applies: usize,
    bytes: u64,
}

/// The spare files of one LTX directory.
#[derive(Debug, Default)]
struct SparePool {
    /// Next to use last (names ascending from the end: spares are used in name order).
    ready: Vec<PathBuf>,
    /// A background thread is making the next batch.
    refilling: bool,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir {
            root: root.into(),
            spares: Arc::default(),
            unsynced: Arc::default(),
            applied: Arc::default(),
            wal_sync: Arc::default(),
            sync_ahead: Arc::default(),
            pending: Arc::default(),
            ltx_write: Arc::default(),
            writer: Arc::default(),
            writer_busy: Arc::default(),
            epochs: Arc::default(),
        }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn dbs_dir(&self) -> PathBuf {
        self.root.join("dbs")
    }
    pub fn db_dir(&self, db: &DbName) -> PathBuf {
        self.dbs_dir().join(db.as_str())
    }
    /// `<data>/dbs/<db>/database`: the SQLite file the FUSE layer exposes as `<mount>/<db>`.
    pub fn database_path(&self, db: &DbName) -> PathBuf {
        self.db_dir(db).join(DATABASE_FILE)
    }
    pub fn ltx_dir(&self, db: &DbName) -> PathBuf {
        self.db_dir(db).join(LTX_DIR)
    }
    pub fn ltx_path(&self, db: &DbName, min_txid: u64, max_txid: u64) -> PathBuf {
        self.ltx_dir(db).join(ltx::file_name(min_txid, max_txid))
    }

    /// Every database with at least one valid LTX file, as the core's start-up input.
    /// `now` stamps the files' `written_at` (retention counts their age from start-up).
    pub fn scan(&self, now: Time) -> io::Result<Vec<OpenDb>> {
        let dbs_dir = self.dbs_dir();
        fs::create_dir_all(&dbs_dir)?;
        let mut out = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for entry in fs::read_dir(&dbs_dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        for name in names {
            let Ok(db) = DbName::new(name.clone()) else {
                tracing::warn!(dir = %name, "skipping a directory that is not a database name");
                continue;
            };
            match self.scan_db(&db, now) {
                Ok(Some(open)) => out.push(open),
                Ok(None) => {}
                Err(err) => tracing::warn!(%db, %err, "skipping a database whose LTX files cannot be read"),
            }
        }
        Ok(out)
    }

    fn scan_db(&self, db: &DbName, now: Time) -> io::Result<Option<OpenDb>> {
        let dir = self.ltx_dir(db);
        if !dir.exists() {
            return Ok(None);
        }
        promote_spares(&dir)?;
        let mut files = Vec::new();
        let mut last: Option<(Header, Trailer)> = None;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let Some(range) = entry.file_name().to_str().and_then(ltx::parse_file_name) else { continue };
            ranges.push(range);
        }
        ranges.sort();
        for (min, max) in ranges {
            let path = dir.join(ltx::file_name(min, max));
            let (header, trailer, size) = match read_header_trailer(&path) {
                Ok(ht) => ht,
                Err(err) => {
                    tracing::warn!(path = %path.display(), %err, "ignoring an unreadable LTX file");
                    continue;
                }
            };
            files.push(LtxFileMeta {
                min_txid: header.min_txid,
                max_txid: header.max_txid,
                pre_apply_checksum: header.pre_apply_checksum,
                post_apply_checksum: trailer.post_apply_checksum,
                size_bytes: size,
                written_at: now,
            });
            if last.as_ref().is_none_or(|(h, _)| header.max_txid > h.max_txid) {
                last = Some((header, trailer));
            }
        }
        let Some((header, trailer)) = last else { return Ok(None) };
        let pos = Pos { txid: header.max_txid, checksum: trailer.post_apply_checksum };
        let checksum_index = fs::read(self.db_dir(db).join(CHECKSUM_INDEX_FILE)).ok();
        let lines = self.epoch_lines(db);
        let epoch = lineage_epoch(&lines, &files, pos).unwrap_or_else(|| {
            if !lines.is_empty() {
                tracing::warn!(%db, %pos, "no lineage epoch recorded for the last LTX's history: reporting epoch 0");
            }
            Epoch::ZERO
        });
        let mut points = Vec::new();
        for f in files.iter().filter(|f| f.max_txid > f.min_txid) {
            points.extend(read_points(&dir.join(ltx::file_name(f.min_txid, f.max_txid)), f.min_txid, f.max_txid));
        }
        Ok(Some(OpenDb { db: db.clone(), page_size: header.page_size, pos, epoch, files, points, checksum_index }))
    }

    /// Executes one I/O command. `epoch` is the lineage epoch of the database's position when
    /// the command was emitted (persisted next to the checksum index).
    pub fn execute(&self, kind: &IoKind, epoch: Epoch, pos: Pos, hook: &dyn ApplyHook) -> Result<IoOutcome, IoErrorKind> {
        self.execute_with(kind, epoch, pos, hook, false)
    }

    /// [`DataDir::execute`]; `wal_backed`: the command is the LTX of a local WAL-mode commit
    /// whose frames the caller already made durable in the WAL — it is written without an
    /// fsync (see [`DataDir::sync_wal_backed`] for the rule that makes this safe).
    pub fn execute_with(&self, kind: &IoKind, epoch: Epoch, pos: Pos, hook: &dyn ApplyHook, wal_backed: bool) -> Result<IoOutcome, IoErrorKind> {
        let lazy = wal_backed && matches!(kind, IoKind::WriteLtx { fsync: true, .. });
        if !lazy && !matches!(kind, IoKind::ReadLtx { .. } | IoKind::ReadDatabase { .. }) {
            // Anything durable that follows must not outlive the LTX files before it.
            if let Err(e) = self.sync_wal_backed(kind.db()) {
                tracing::warn!(db = %kind.db(), error = %e, "cannot sync WAL-backed LTX files");
                return Err(io_error_kind(&e));
            }
        }
        if let IoKind::WriteLtx { db, bytes, .. } = kind {
            self.applied_state(db, |a| a.last_ltx_bytes = bytes.len() as u64);
        }
        if matches!(kind, IoKind::DeleteLtx { .. }) {
            // The files about to go may be the ones a crash would re-apply.
            if let Err(e) = self.sync_applied(kind.db()) {
                return Err(io_error_kind(&e));
            }
        }
        let result = match kind {
            IoKind::WriteLtx { db, min_txid, max_txid, bytes, fsync: _, epoch: ltx_epoch } if lazy => self
                .record_ltx_epoch(db, *min_txid, *max_txid, bytes, *ltx_epoch, epoch, true)
                .and_then(|new_line| self.write_ltx_wal_backed(db, *min_txid, *max_txid, bytes, !new_line))
                .map(|merged| merged.map_or(IoOutcome::Done, |min_txid| IoOutcome::LtxMerged { min_txid })),
            IoKind::WriteLtx { db, min_txid, max_txid, bytes, fsync, epoch: ltx_epoch } => self
                .record_ltx_epoch(db, *min_txid, *max_txid, bytes, *ltx_epoch, epoch, *fsync)
                .and_then(|_| self.write_ltx(db, *min_txid, *max_txid, bytes, *fsync))
                .map(|()| IoOutcome::Done),
            IoKind::ApplyPages { db, page_size, commit, pages } => {
                let started = std::time::Instant::now();
                let _timer = scopeguard_latency(started);
                hook.before_apply(db);
                let result = self.apply_pages(db, *page_size, *commit, pages);
                hook.after_apply(db, pages.iter().map(|(p, _)| *p).collect::<Vec<_>>().as_slice(), *commit);
                result.map(|()| IoOutcome::Done)
            }
            IoKind::ReadLtx { db, files } => files
                .iter()
                .map(|(min, max)| match self.pending_bytes(db, *min, *max) {
                    Some(bytes) => bytes,
                    None => fs::read(self.ltx_path(db, *min, *max)),
                })
                .collect::<io::Result<Vec<_>>>()
                .map(IoOutcome::LtxFiles),
            IoKind::ReadDatabase { db } => {
                hook.before_read(db);
                let result = match hook.read_database(db).unwrap_or_else(|| fs::read(self.database_path(db))) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
                    other => other,
                };
                hook.after_read(db);
                result.map(IoOutcome::Database)
            }
            IoKind::DeleteLtx { db, files } => {
                let mut result = Ok(());
                let mut removed = false;
                for (min, max) in files {
                    match fs::remove_file(self.ltx_path(db, *min, *max)) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => result = Err(e),
                        Err(_) => {}
                        Ok(()) => removed = true,
                    }
                }
                if removed && result.is_ok() {
                    // Durable before anything that follows: a snapshot's LTX is written only
                    // after the files of the history it replaces are gone, and a crash that
                    // brought them back would make start-up take a stale file for the position.
                    result = File::open(self.ltx_dir(db)).and_then(|d| d.sync_all()).map(|()| stats::fsync(FsyncKind::Dir));
                }
                result.map(|()| IoOutcome::Done)
            }
            IoKind::WriteChecksumIndex { db, bytes } => {
                let dir = self.db_dir(db);
                atomic_write(&dir, CHECKSUM_INDEX_FILE, bytes, true)
                    .and_then(|()| self.append_epoch_line(db, pos, epoch, true))
                    .map(|()| IoOutcome::Done)
            }
        };
        result.map_err(|e| {
            tracing::warn!(db = %kind.db(), error = %e, "I/O command failed");
            io_error_kind(&e)
        })
    }

    /// Replaces the database file with `image` (an `/import`), under the apply hook.
    pub fn write_database(&self, db: &DbName, image: &[u8], hook: &dyn ApplyHook) -> io::Result<()> {
        fs::create_dir_all(self.db_dir(db))?;
        hook.before_apply(db);
        let result = (|| {
            let file = OpenOptions::new().write(true).create(true).truncate(false).open(self.database_path(db))?;
            file.write_all_at(image, 0)?;
            file.set_len(image.len() as u64)?;
            file.sync_all()
        })();
        hook.after_apply(db, &[], (image.len() / 512) as u32);
        result
    }

    /// The `epoch` journal, oldest line first (unreadable lines are skipped). Read from the file
    /// once, then kept in memory ([`DataDir::append_epoch_line`] updates both).
    fn epoch_lines(&self, db: &DbName) -> Vec<(Pos, Epoch)> {
        let mut epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
        epochs
            .entry(db.clone())
            .or_insert_with(|| {
                let text = fs::read_to_string(self.db_dir(db).join(EPOCH_FILE)).unwrap_or_default();
                text.lines().filter_map(parse_epoch_line).collect()
            })
            .clone()
    }

    fn last_epoch(&self, db: &DbName) -> Option<Epoch> {
        if let Some(lines) = self.epochs.lock().unwrap_or_else(|p| p.into_inner()).get(db) {
            return lines.last().map(|(_, e)| *e);
        }
        self.epoch_lines(db).last().map(|(_, e)| *e)
    }

    fn append_epoch_line(&self, db: &DbName, pos: Pos, epoch: Epoch, fsync: bool) -> io::Result<()> {
        let mut lines = self.epoch_lines(db);
        if lines.last() == Some(&(pos, epoch)) {
            return Ok(());
        }
        lines.push((pos, epoch));
        let skip = lines.len().saturating_sub(EPOCH_LINES_MAX);
        let lines = lines.split_off(skip);
        let text: String = lines.iter().map(|(p, e)| format_epoch_line(*e, *p)).collect();
        let written = atomic_write(&self.db_dir(db), EPOCH_FILE, text.as_bytes(), fsync);
        let mut epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
        match written {
            Ok(()) => {
                epochs.insert(db.clone(), lines);
            }
            Err(_) => {
                // The file may hold either version: read it again next time.
                epochs.remove(db);
            }
        }
        written
    }

    /// Before an LTX of `ltx_epoch` is written: journal its end position if it starts a new
    /// lineage epoch (`current` is the epoch of the position it follows) or a new history.
    /// True if it journaled one.
    #[allow(clippy::too_many_arguments)]
    fn record_ltx_epoch(&self, db: &DbName, min: u64, max: u64, bytes: &[u8], ltx_epoch: Epoch, current: Epoch, fsync: bool) -> io::Result<bool> {
        let Some(checksum) = post_apply_checksum(bytes) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "LTX shorter than its trailer"));
        };
        let pos = Pos { txid: max, checksum };
        let last_epoch = self.last_epoch(db);
        if min == 1 || ltx_epoch != current || last_epoch != Some(ltx_epoch) {
            self.append_epoch_line(db, pos, ltx_epoch, fsync)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Writes an LTX file durably with one fdatasync and no directory fsync: the bytes go into
    /// a spare file whose (hidden) name is already durable, which is then renamed. If a crash
    /// loses the rename, the spare keeps the complete LTX under its durable name and start-up
    /// renames it again ([`promote_spares`]). Spares are made in batches of [`SPARE_BATCH`]
    /// (one directory fsync per batch).
    fn write_ltx(&self, db: &DbName, min: u64, max: u64, bytes: &[u8], fsync: bool) -> io::Result<()> {
        let dir = self.ltx_dir(db);
        if !fsync {
            fs::create_dir_all(&dir)?;
            return atomic_write(&dir, &ltx::file_name(min, max), bytes, false);
        }
        let spare = self.take_spare(&dir)?;
        let result = (|| {
            let mut f = OpenOptions::new().write(true).open(&spare)?;
            f.write_all(bytes)?;
            f.sync_data()?;
            stats::fsync(FsyncKind::Ltx);
            fs::rename(&spare, dir.join(ltx::file_name(min, max)))
        })();
        if result.is_err() {
            // Not durable as an LTX: the spare must not be promoted at the next start-up.
            let _ = fs::remove_file(&spare);
        }
        result
    }

    /// The LTX of a local WAL-mode commit, without an fsync, and without file-system work on
    /// the commit's path: the bytes are queued in memory and a background writer creates the
    /// file under its final name ([`DataDir::write_pending`]; measured: writing it on the
    /// commit's path cost a WAL/NORMAL commit ~150 µs while a sync commits the ext4 journal).
    /// Until then [`IoKind::ReadLtx`] answers from memory, and every durable write and WAL
    /// restart writes them first ([`DataDir::sync_wal_backed`]). The file is created with
    /// [`UNSYNCED_LTX_MODE`] and gets [`LTX_MODE`] after its sync: after a crash
    /// [`promote_spares`] checks every file still so marked in full and drops a torn one with
    /// everything after it, and start-up recovery rebuilds what is missing — also the files a
    /// crash caught still in memory — from the WAL frames, which were durable before this was
    /// called (`recover.rs`). (No spare file: a spare's creation, directory fsync, link and
    /// unlink cost ~60 µs of CPU per commit in a directory of 10,000 LTX files.)
    ///
    /// Consecutive transactions queued before the writer takes them share one file: the LTX of
    /// the group merged, named `<first>-<last>.ltx` (a valid LTX from the first one's pre-apply
    /// checksum to the last one's post-apply checksum, as LiteFS's compaction makes them).
    /// Creating an inode per transaction was the largest cost of a WAL/NORMAL commit left
    /// (28–50 µs of CPU on a fresh ext4, up to 670 µs on an aged one). Returns the group's first
    /// TXID when the LTX joined a group ([`IoOutcome::LtxMerged`]: the core names the group's
    /// file from then on). `may_join`: false if the LTX's end position starts a line of the
    /// `epoch` journal — the line must name a file's end, so the group ends with it.
    fn write_ltx_wal_backed(&self, db: &DbName, min: u64, max: u64, bytes: &[u8], may_join: bool) -> io::Result<Option<u64>> {
        let (over, merged_from) = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let p = pending.entry(db.clone()).or_default();
            let pre = (bytes.len() >= HEADER_SIZE).then(|| Header::from_bytes(bytes[..HEADER_SIZE].try_into().expect("header size")).ok()).flatten();
            let joins = p.groups.back().is_some_and(|g| {
                let (_, last_max, last) = &g.members[g.members.len() - 1];
                g.open
                    && *last_max + 1 == min
                    && min == max
                    && g.members.len() < MERGE_TXIDS_MAX
                    && g.bytes() + bytes.len() <= MERGE_BYTES_MAX
                    && pre.is_some_and(|h| !h.is_snapshot() && post_apply_checksum(last) == Some(h.pre_apply_checksum) && continues_wal_run(last, &h))
            });
            let member = (min, max, Arc::from(bytes));
            let merged_from = if joins {
                let g = p.groups.back_mut().expect("joins an existing group");
                g.members.push(member);
                g.open = may_join;
                Some(g.min_txid())
            } else {
                if let Some(g) = p.groups.back_mut() {
                    g.open = false;
                }
                p.groups.push_back(PendingGroup { members: vec![member], open: may_join && min == max });
                None
            };
            p.files += 1;
            p.bytes += bytes.len();
            (p.files > PENDING_LTX_MAX || p.bytes > PENDING_LTX_BYTES_MAX, merged_from)
        };
        if !self.wake_writer(db) {
            // No writer thread: this commit writes them itself.
            self.write_pending(db, usize::MAX)?;
        } else if over {
            // The writer is behind: this commit writes the oldest two itself, so the queue
            // shrinks while every commit pays a little (writing all of it stalled one commit
            // for ~10 ms every 256 at 20,000 tx/s).
            self.write_pending(db, 2)?;
        }
        Ok(merged_from)
    }

    /// The bytes of a WAL-backed LTX file still waiting for the background writer: a group, or
    /// consecutive transactions of one (a read the core emitted before it learned of a merge).
    fn pending_bytes(&self, db: &DbName, min: u64, max: u64) -> Option<io::Result<Vec<u8>>> {
        // Copied out under the lock, merged outside it (commits queue under that lock).
        let part = {
            let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let g = pending.get(db)?.groups.iter().find(|g| g.min_txid() <= min && max <= g.max_txid())?;
            let from = g.members.iter().position(|(lo, _, _)| *lo == min)?;
            let to = g.members.iter().position(|(_, hi, _)| *hi == max)?;
            (from <= to).then(|| PendingGroup { members: g.members[from..=to].to_vec(), open: false })?
        };
        Some(part.merged(0, part.members.len() - 1))
    }

    /// Asks the background writer to write `db`'s pending LTX files; false if it cannot run.
    fn wake_writer(&self, db: &DbName) -> bool {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if writer.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<DbName>();
            // Its own copy without the sender: the thread ends when the runtime's copies go.
            let data = DataDir { writer: Arc::default(), ..self.clone() };
            let spawned = std::thread::Builder::new().name("ltxfs-ltx-write".into()).spawn(move || {
                crate::caller_cpu::release();
                crate::idle_handoff::background();
                use std::sync::atomic::Ordering::SeqCst;
                while rx.recv().is_ok() {
                    data.writer_busy.store(true, SeqCst);
                    // Until nothing is left: files queued meanwhile need no wake-up (each commit
                    // woke this thread before: a futex wake on the FUSE thread per commit).
                    loop {
                        // Let a few more commits queue up before writing: one wake-up of this
                        // thread per ~millisecond instead of one per commit (each costs the
                        // committing FUSE thread a futex wake and this thread a context
                        // switch; on a VM an idle vCPU's wake-up goes through the hypervisor).
                        // Nothing waits for these files: readers are served from memory and
                        // every durable write writes the queue first.
                        std::thread::sleep(LTX_WRITE_COALESCE);
                        // Tests hold the writer here to queue transactions deterministically.
                        crate::failpoint::failpoint("ltx-write");
                        let waiting: Vec<DbName> = data.pending.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
                        let mut failed = false;
                        for db in &waiting {
                            if let Err(e) = data.write_pending(db, usize::MAX) {
                                // They stay queued: the next durable write or WAL restart
                                // retries, and fails with this error if it persists.
                                tracing::warn!(%db, error = %e, "cannot write WAL-backed LTX files");
                                failed = true;
                            }
                        }
                        data.writer_busy.store(false, SeqCst);
                        // Looked at after the flag is down: a commit queued after this look
                        // sees the flag down and wakes the thread.
                        let more = !data.pending.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
                        if !more || failed {
                            break;
                        }
                        data.writer_busy.store(true, SeqCst);
                    }
                }
            });
            if spawned.is_err() {
                return false;
            }
            *writer = Some(tx);
        }
        if self.writer_busy.load(std::sync::atomic::Ordering::SeqCst) {
            return true; // it looks for more before it sleeps
        }
        writer.as_ref().is_some_and(|tx| tx.send(db.clone()).is_ok())
    }

    /// Writes `db`'s pending WAL-backed LTX groups, oldest first (at most `limit`), each into a
    /// new file under its final name marked unsynced; a group leaves memory once it is there.
    /// Returns how many files it wrote. Starts a background sync once [`WAL_BACKED_SYNC_AHEAD`]
    /// files wait for one.
    fn write_pending(&self, db: &DbName, limit: usize) -> io::Result<usize> {
        let lock = {
            let mut locks = self.ltx_write.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(locks.entry(db.clone()).or_default())
        };
        let _in_order = lock.lock().unwrap_or_else(|p| p.into_inner());
        let queued = self.pending.lock().unwrap_or_else(|p| p.into_inner()).get(db).map_or(0, |p| p.groups.len()).min(limit);
        let mut written = 0;
        // Bounded: the groups queued when it started; later ones get their own wake-up.
        for _ in 0..queued {
            // Taken: closed, so that no transaction joins a group while it is written. Its
            // members are copied out (reference counts) and merged outside the lock: a commit
            // queues its LTX under that lock and must not wait for the merge.
            let taken = {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                pending.get_mut(db).and_then(|p| p.groups.front_mut()).map(|g| {
                    g.open = false;
                    PendingGroup { members: g.members.clone(), open: false }
                })
            };
            let Some(group) = taken else { break };
            let (min, max, members) = (group.min_txid(), group.max_txid(), group.members.len());
            let bytes = group.merged(0, members - 1)?;
            let points = group.points();
            let link = self.write_unsynced(db, min, max, &bytes, &points)?;
            let waiting = {
                let mut unsynced = self.unsynced();
                let u = unsynced.entry(db.clone()).or_default();
                u.files.push_back(link);
                u.files.len()
            };
            {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(p) = pending.get_mut(db) {
                    let g = p.groups.pop_front().expect("the group written above");
                    debug_assert_eq!((g.min_txid(), g.max_txid(), g.members.len()), (min, max, members), "a taken group does not change");
                    p.files -= g.members.len();
                    p.bytes -= g.bytes();
                    if p.groups.is_empty() {
                        pending.remove(db);
                    }
                }
            }
            written += 1;
            if waiting >= WAL_BACKED_SYNC_AHEAD {
                self.start_sync_ahead(db);
            }
        }
        Ok(written)
    }

    /// One WAL-backed LTX in a new file under its final name, marked unsynced. The file is made
    /// nameless (`O_TMPFILE`) and linked under its name once written, so a reader of the
    /// directory never sees it incomplete (a file system without `O_TMPFILE`: written under a
    /// temporary name, then renamed).
    fn write_unsynced(&self, db: &DbName, min: u64, max: u64, bytes: &[u8], points: &[u8]) -> io::Result<UnsyncedLtx> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.ltx_dir(db);
        let fin = dir.join(ltx::file_name(min, max));
        let unnamed = || OpenOptions::new().write(true).custom_flags(libc::O_TMPFILE).mode(UNSYNCED_LTX_MODE).open(&dir);
        let opened = match unnamed() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&dir)?;
                unnamed()
            }
            other => other,
        };
        let mut file = match opened {
            Ok(file) => file,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => {
                let tmp = dir.join(format!(".{}.tmp", ltx::file_name(min, max)));
                let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(UNSYNCED_LTX_MODE).open(&tmp)?;
                file.write_all(bytes)?;
                write_points(&file, &fin, points);
                fs::rename(&tmp, &fin)?;
                return Ok((fin, file));
            }
            Err(e) => return Err(e),
        };
        file.write_all(bytes)?;
        write_points(&file, &fin, points);
        let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let link = || {
            nix::unistd::linkat(nix::fcntl::AT_FDCWD, proc_path.as_str(), nix::fcntl::AT_FDCWD, &fin, nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW)
                .map_err(io::Error::from)
        };
        match link() {
            // A file of an abandoned attempt at this TXID range: replaced.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                fs::remove_file(&fin)?;
                link()?;
            }
            other => other?,
        }
        Ok((fin, file))
    }

    /// Makes every WAL-backed LTX file of `db` durable — the WAL first, then the files — and
    /// clears their unsynced mark.
    /// Must run before anything could destroy the WAL frames they were written from — SQLite
    /// restarting or truncating the WAL (`fs.rs` calls it through
    /// [`super::RuntimeHandle::sync_wal_backed`]) — before any durable write that follows them
    /// (done in [`DataDir::execute_with`]) and at a clean shutdown. Returns how many it synced.
    ///
    /// Callers may overlap (the FUSE thread, the disk worker, the background thread of
    /// [`WAL_BACKED_SYNC_AHEAD`]): one at a time per database takes the files and syncs them,
    /// so a call returns only once every file written before it is durable.
    pub fn sync_wal_backed(&self, db: &DbName) -> io::Result<usize> {
        let lock = self.wal_sync_lock(db);
        let _one_at_a_time = lock.lock().unwrap_or_else(|p| p.into_inner());
        // Those still in memory first: every one queued before this call.
        self.write_pending(db, usize::MAX)?;
        let pending: Vec<UnsyncedLtx> = self.unsynced().get_mut(db).map(|u| u.files.drain(..).collect()).unwrap_or_default();
        if pending.is_empty() {
            return Ok(0);
        }
        // Their frames first (synchronous=NORMAL never syncs them): an LTX must never be
        // durable while the WAL frames of the commits before it are not.
        if let Err(e) = self.sync_wal(db) {
            self.unsynced().entry(db.clone()).or_default().restore(pending.into_iter());
            return Err(e);
        }
        match self.sync_ltx_files(db, &pending) {
            Ok(synced) => Ok(synced),
            Err(e) => {
                // Keep them all for the next attempt.
                self.unsynced().entry(db.clone()).or_default().restore(pending.into_iter());
                Err(e)
            }
        }
    }

    /// Makes `files` (LTX files of `db`) durable and clears their unsynced mark. From
    /// [`SYNCFS_MIN_FILES`] files on, one `syncfs` of the data directory's file system does it:
    /// one journal commit for all of them instead of one per file (an `fdatasync` of a new file
    /// commits the ext4 journal each time; 30 of them took 10–30 ms of disk time and stalled
    /// both nodes' commits and applies behind them). Fewer: an `fdatasync` each and one of the
    /// directory (their names are new).
    fn sync_ltx_files(&self, db: &DbName, files: &[UnsyncedLtx]) -> io::Result<usize> {
        use std::os::unix::fs::PermissionsExt;
        if files.len() >= SYNCFS_MIN_FILES {
            let dir = File::open(self.ltx_dir(db))?;
            nix::unistd::syncfs(&dir).map_err(io::Error::from)?;
            stats::fsync(FsyncKind::Ltx);
        } else {
            for (_, file) in files {
                file.sync_data()?;
                stats::fsync(FsyncKind::Ltx);
            }
            File::open(self.ltx_dir(db))?.sync_all()?;
            stats::fsync(FsyncKind::Dir);
        }
        for (fin, file) in files {
            // A mark that stays (or a lost update) only costs a check at the next start-up.
            if let Err(e) = file.set_permissions(fs::Permissions::from_mode(LTX_MODE)) {
                tracing::warn!(ltx = %fin.display(), error = %e, "cannot clear the unsynced mark of a synced LTX file");
            }
        }
        Ok(files.len())
    }

    /// One background round: [`DataDir::sync_wal_backed`] (the WAL, then every waiting file at
    /// once) while at least `min_files` files wait.
    fn sync_ahead_round(&self, db: &DbName, min_files: usize) -> io::Result<usize> {
        let mut synced = 0;
        // Bounded: each pass takes every waiting file; files arrive one commit at a time.
        while self.unsynced().get(db).map_or(0, |u| u.files.len()) >= min_files.max(1) {
            synced += self.sync_wal_backed(db)?;
        }
        Ok(synced)
    }

    fn unsynced(&self) -> MutexGuard<'_, BTreeMap<DbName, Unsynced>> {
        self.unsynced.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wal_sync_lock(&self, db: &DbName) -> Arc<Mutex<()>> {
        Arc::clone(self.wal_sync.lock().unwrap_or_else(|p| p.into_inner()).entry(db.clone()).or_default())
    }

    /// fdatasync of `db`'s WAL (none if there is no WAL).
    fn sync_wal(&self, db: &DbName) -> io::Result<()> {
        match File::open(self.db_dir(db).join(WAL_FILE)) {
            Ok(f) => f.sync_data().map(|()| stats::fsync(FsyncKind::Wal)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Syncs `db`'s WAL-backed LTX files on a background thread unless one is doing so already
    /// ([`WAL_BACKED_SYNC_AHEAD`]). A failure is logged: the files stay queued for the next
    /// sync, which the WAL restart, a durable write or the shutdown does in the foreground.
    fn start_sync_ahead(&self, db: &DbName) {
        self.start_sync_round(db, WAL_BACKED_SYNC_AHEAD / 2);
    }

    /// A WAL checkpoint started (SQLite writes the database file in WAL mode): syncs every
    /// WAL-backed LTX file on a background thread now, so that the WAL restart after the
    /// checkpoint (which must find them durable before SQLite overwrites their frames,
    /// [`DataDir::sync_wal_backed`]) finds little or nothing left to sync: the syncs overlap
    /// the checkpoint's own writes and fsync instead of stalling the next commit.
    pub fn sync_before_wal_restart(&self, db: &DbName) {
        let (pending, unsynced) = (
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).contains_key(db),
            self.unsynced().get(db).is_some_and(|u| !u.files.is_empty()),
        );
        if pending {
            // Queued in memory: the writer writes them first; the restart syncs the rest.
            self.wake_writer(db);
        }
        if unsynced {
            self.start_sync_round(db, 1);
        }
    }

    fn start_sync_round(&self, db: &DbName, min_files: usize) {
        let mut ahead = self.sync_ahead.lock().unwrap_or_else(|p| p.into_inner());
        let state = ahead.entry(db.clone()).or_default();
        if state.running {
            return;
        }
        state.running = true;
        let (data, name) = (self.clone(), db.clone());
        let spawned = std::thread::Builder::new().name("ltxfs-ltx-sync".into()).spawn(move || {
            crate::caller_cpu::release();
            if let Err(e) = data.sync_ahead_round(&name, min_files) {
                tracing::warn!(db = %name, error = %e, "cannot sync WAL-backed LTX files ahead of time");
            }
            data.sync_ahead.lock().unwrap_or_else(|p| p.into_inner()).entry(name).or_default().running = false;
        });
        match spawned {
            Ok(thread) => state.thread = Some(thread),
            Err(e) => {
                tracing::warn!(%db, error = %e, "cannot start a thread to sync WAL-backed LTX files");
                state.running = false;
            }
        }
    }

    /// Waits for the background sync of `db` started last, if any (tests).
    #[cfg(test)]
    fn join_sync_ahead(&self, db: &DbName) {
        let thread = self.sync_ahead.lock().unwrap_or_else(|p| p.into_inner()).get_mut(db).and_then(|s| s.thread.take());
        if let Some(thread) = thread {
            thread.join().expect("the sync thread does not panic");
        }
    }

    /// [`DataDir::sync_wal_backed`] and [`DataDir::sync_applied`] for every database (clean
    /// shutdown).
    pub fn sync_all_deferred(&self) -> io::Result<usize> {
        let mut dbs: Vec<DbName> = self.unsynced().keys().cloned().collect();
        dbs.extend(self.pending.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned());
        dbs.sort();
        dbs.dedup();
        let mut synced = 0;
        for db in dbs {
            synced += self.sync_wal_backed(&db)?;
        }
        let applied: Vec<DbName> = self.applied.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        for db in applied {
            self.sync_applied(&db)?;
        }
        Ok(synced)
    }

    fn applied_state<T>(&self, db: &DbName, f: impl FnOnce(&mut AppliedSinceSync) -> T) -> T {
        f(self.applied.lock().unwrap_or_else(|p| p.into_inner()).entry(db.clone()).or_default())
    }

    /// Fsyncs `db`'s database file if applies were written into it since its last fsync.
    pub fn sync_applied(&self, db: &DbName) -> io::Result<()> {
        if self.applied_state(db, |a| a.applies) == 0 {
            return Ok(());
        }
        match File::open(self.database_path(db)) {
            Ok(f) => {
                f.sync_all()?;
                stats::fsync(FsyncKind::Database);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.applied_state(db, |a| (a.applies, a.bytes) = (0, 0));
        Ok(())
    }

    /// An empty spare file in `dir` whose name is durable. The next batch is made by a
    /// background thread once half of the current one is used, so that its creation and
    /// directory fsync (tens of ms on a busy disk) stay off the commit and apply paths; spares
    /// are still used in name order (a batch is made only after the previous one is queued).
    fn take_spare(&self, dir: &Path) -> io::Result<PathBuf> {
        // Bounded: a refill either finishes or fails within its own I/O.
        loop {
            let mut spares = self.spares.lock().unwrap_or_else(|p| p.into_inner());
            let pool = spares.entry(dir.to_path_buf()).or_default();
            if pool.ready.is_empty() && pool.refilling {
                drop(spares);
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            if pool.ready.is_empty() {
                pool.ready = make_spare_batch(dir)?;
            }
            let spare = pool.ready.pop().ok_or_else(|| io::Error::other("no spare LTX file"))?;
            if pool.ready.len() <= SPARE_BATCH / 2 && !pool.refilling {
                pool.refilling = true;
                let (all, dir) = (Arc::clone(&self.spares), dir.to_path_buf());
                let spawned = std::thread::Builder::new().name("ltxfs-spares".into()).spawn(move || {
                    crate::caller_cpu::release();
                    let batch = make_spare_batch(&dir);
                    let mut spares = all.lock().unwrap_or_else(|p| p.into_inner());
                    let pool = spares.entry(dir).or_default();
                    match batch {
                        Ok(batch) => {
                            pool.ready.splice(0..0, batch);
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot make spare LTX files ahead of time"),
                    }
                    pool.refilling = false;
                });
                if spawned.is_err() {
                    pool.refilling = false;
                }
            }
            return Ok(spare);
        }
    }

    fn apply_pages(&self, db: &DbName, page_size: u32, commit: u32, pages: &[(u32, Vec<u8>)]) -> io::Result<()> {
        let path = self.database_path(db);
        if commit == 0 {
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        fs::create_dir_all(self.db_dir(db))?;
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let page_bytes = u64::from(page_size);
        for (pgno, data) in pages {
            if *pgno == 0 || data.len() as u64 != page_bytes {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "page number 0 or wrong page length"));
            }
            file.write_all_at(data, u64::from(*pgno - 1) * page_bytes)?;
        }
        file.set_len(u64::from(commit) * page_bytes)?;
        // No fsync per apply: the LTX file these pages come from is durable, and start-up after
        // a crash re-applies the newest LTX files, as many as may be unsynced here.
        let due = self.applied_state(db, |a| {
            a.applies += 1;
            a.bytes += a.last_ltx_bytes;
            a.applies >= APPLY_UNSYNCED_MAX || a.bytes >= APPLY_UNSYNCED_BYTES_MAX
        });
        if due {
            file.sync_all()?;
            stats::fsync(FsyncKind::Database);
            self.applied_state(db, |a| (a.applies, a.bytes) = (0, 0));
        }
        Ok(())
    }
}

/// Whether the LTX with header `next` was made from the WAL frames right after those of the
/// LTX `prev` (same WAL generation): start-up recovery finds the commits after a merged file in
/// the WAL by its WAL range ([`ltx::compact_wal_run`]).
fn continues_wal_run(prev: &[u8], next: &Header) -> bool {
    let Some(prev) = prev.get(..HEADER_SIZE).and_then(|h| Header::from_bytes(h.try_into().ok()?).ok()) else { return false };
    prev.wal_offset > 0
        && next.wal_offset > 0
        && (prev.wal_salt1, prev.wal_salt2) == (next.wal_salt1, next.wal_salt2)
        && prev.wal_offset.checked_add(prev.wal_size) == Some(next.wal_offset)
}

/// Extended attribute of a merged WAL-backed LTX file `<min>-<max>.ltx`: the database checksum
/// after each of its transactions but the last (TXIDs `min..max`), 8 bytes big-endian each —
/// the positions a replica may stand at inside the file, which the LTX format cannot hold. Read
/// back at start-up ([`OpenDb::points`]) so that such a replica still catches up incrementally
/// after the primary restarts. Without it (a file system without user extended attributes) the
/// replica gets a snapshot.
pub const POINTS_XATTR: &str = "user.ltxfs.points";

/// Sets [`POINTS_XATTR`] on a new LTX file; a failure only costs a snapshot later.
pub fn write_points(file: &File, path: &Path, points: &[u8]) {
    use xattr::FileExt;
    if points.is_empty() {
        return;
    }
    if let Err(e) = file.set_xattr(POINTS_XATTR, points) {
        tracing::debug!(ltx = %path.display(), error = %e, "cannot record the positions inside a merged LTX file");
    }
}

/// The positions recorded inside the LTX file `path` holding TXIDs `min..=max`
/// ([`POINTS_XATTR`]); none if absent or malformed.
fn read_points(path: &Path, min: u64, max: u64) -> Vec<Pos> {
    let Ok(Some(value)) = xattr::get(path, POINTS_XATTR) else { return Vec::new() };
    let expected = usize::try_from(max - min).ok().and_then(|n| n.checked_mul(8));
    if Some(value.len()) != expected {
        tracing::warn!(ltx = %path.display(), bytes = value.len(), "ignoring malformed positions of a merged LTX file");
        return Vec::new();
    }
    value
        .chunks_exact(8)
        .zip(min..max)
        .map(|(c, txid)| Pos { txid, checksum: u64::from_be_bytes(c.try_into().expect("chunks of 8")) })
        .collect()
}

/// The post-apply checksum in an LTX file's trailer (not validated).
fn post_apply_checksum(bytes: &[u8]) -> Option<u64> {
    let tail: [u8; TRAILER_SIZE] = bytes.get(bytes.len().checked_sub(TRAILER_SIZE)?..)?.try_into().ok()?;
    Some(Trailer::from_bytes(&tail).post_apply_checksum)
}

/// `<txid hex16>/<checksum hex16> <epoch>`: one line of the `epoch` journal.
fn format_epoch_line(epoch: Epoch, pos: Pos) -> String {
    format!("{:016x}/{:016x} {}\n", pos.txid, pos.checksum, epoch.0)
}

fn parse_epoch_line(line: &str) -> Option<(Pos, Epoch)> {
    let (at, epoch) = line.trim().split_once(' ')?;
    let (txid, checksum) = at.split_once('/')?;
    let pos = Pos { txid: u64::from_str_radix(txid, 16).ok()?, checksum: u64::from_str_radix(checksum, 16).ok()? };
    Some((pos, Epoch(epoch.parse().ok()?)))
}

/// The epoch of the newest journal line whose position is on the chain of `files` ending at
/// `pos` (each file's pre-apply checksum is the previous file's post-apply one, back to a gap
/// or a snapshot).
fn lineage_epoch(lines: &[(Pos, Epoch)], files: &[LtxFileMeta], pos: Pos) -> Option<Epoch> {
    let mut chain = vec![pos];
    let mut cur = files.iter().find(|f| f.max_txid == pos.txid && f.post_apply_checksum == pos.checksum);
    for _ in 0..files.len() {
        let Some(f) = cur.filter(|f| f.min_txid > 1) else { break };
        cur = files.iter().find(|p| p.max_txid + 1 == f.min_txid && p.post_apply_checksum == f.pre_apply_checksum);
        if let Some(p) = cur {
            chain.push(Pos { txid: p.max_txid, checksum: p.post_apply_checksum });
        }
    }
    lines.iter().rev().find(|(p, _)| chain.contains(p)).map(|(_, e)| *e)
}

/// Reads an LTX file's header and trailer (not its pages) and checks both.
fn read_header_trailer(path: &Path) -> io::Result<(Header, Trailer, u64)> {
    let mut f = File::open(path)?;
    let size = f.metadata()?.len();
    if size < (HEADER_SIZE + TRAILER_SIZE) as u64 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "LTX file shorter than header + trailer"));
    }
    let mut h = [0u8; HEADER_SIZE];
    f.read_exact(&mut h)?;
    let header = Header::from_bytes(&h).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let mut t = [0u8; TRAILER_SIZE];
    f.read_exact_at(&mut t, size - TRAILER_SIZE as u64)?;
    let trailer = Trailer::from_bytes(&t);
    trailer.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    Ok((header, trailer, size))
}

/// [`SPARE_BATCH`] new empty files in `dir` (created if missing) whose names are durable
/// (one directory fsync), in the order to use them: the last element first.
fn make_spare_batch(dir: &Path) -> io::Result<Vec<PathBuf>> {
    if !dir.exists() {
        fs::create_dir_all(dir)?;
        if let Some(parent) = dir.parent() {
            File::open(parent)?.sync_all()?;
            stats::fsync(FsyncKind::Dir);
        }
    }
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut batch = Vec::with_capacity(SPARE_BATCH);
    for i in 0..SPARE_BATCH {
        let path = dir.join(format!("{SPARE_PREFIX}{stamp:032x}-{i:03}"));
        OpenOptions::new().write(true).create_new(true).open(&path)?;
        batch.push(path);
    }
    File::open(dir)?.sync_all()?;
    stats::fsync(FsyncKind::Dir);
    batch.reverse();
    Ok(batch)
}

/// WAL-backed LTX files a crash caught before their sync ([`DataDir::write_ltx_wal_backed`]):
/// a file still marked [`UNSYNCED_LTX_MODE`] (or, as earlier versions left them, a spare name
/// still linked to a final name). Each is checked in full; a complete one keeps its final name
/// and loses the mark (the spare name goes), a torn one goes together with every LTX file after
/// it (the chain is broken there; start-up recovery rebuilds the missing transactions from the
/// WAL). Returns the first TXID dropped.
fn drop_torn_wal_backed(dir: &Path) -> io::Result<Option<u64>> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut spares: Vec<(PathBuf, u64)> = Vec::new();
    let mut named: Vec<(u64, u64, PathBuf)> = Vec::new(); // (min_txid, inode, path)
    let mut marked: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let meta = entry.metadata()?;
        if name.starts_with(SPARE_PREFIX) {
            if meta.nlink() >= 2 {
                spares.push((entry.path(), meta.ino()));
            }
        } else if let Some((min, _)) = ltx::parse_file_name(name) {
            named.push((min, meta.ino(), entry.path()));
            if meta.mode() & UNSYNCED_MARK != 0 {
                marked.push((min, entry.path()));
            }
        }
    }
    let mut cut: Option<u64> = None;
    for (spare, ino) in spares {
        let complete = fs::read(&spare).ok().is_some_and(|b| ltx::decode_slice(&b).is_ok());
        if !complete {
            for (min, _, path) in named.iter().filter(|(_, i, _)| *i == ino) {
                tracing::warn!(ltx = %path.display(), "dropping a WAL-backed LTX file a crash left incomplete");
                fs::remove_file(path)?;
                cut = Some(cut.map_or(*min, |c| c.min(*min)));
            }
        }
        fs::remove_file(&spare)?;
    }
    for (min, path) in marked {
        if !path.exists() {
            continue;
        }
        if fs::read(&path).ok().is_some_and(|b| ltx::decode_slice(&b).is_ok()) {
            fs::set_permissions(&path, fs::Permissions::from_mode(LTX_MODE))?;
        } else {
            tracing::warn!(ltx = %path.display(), "dropping a WAL-backed LTX file a crash left incomplete");
            fs::remove_file(&path)?;
            cut = Some(cut.map_or(min, |c| c.min(min)));
        }
    }
    if let Some(cut) = cut {
        for (_, _, path) in named.iter().filter(|(m, _, _)| *m > cut) {
            if path.exists() {
                tracing::warn!(ltx = %path.display(), from_txid = cut, "dropping an LTX file after a torn one");
                fs::remove_file(path)?;
            }
        }
    }
    Ok(cut)
}

/// The recovery rule that lets [`DataDir`] write an LTX without a directory fsync. Run at
/// start-up before the LTX files are read (`ltxfs` runs it in its crash recovery and again in
/// [`DataDir::scan`]); idempotent.
///
/// A spare file is created empty and its name made durable (directory fsync) before it is
/// used; an LTX is written into it, fdatasynced (data and size), and only then renamed to its
/// final name. After a crash each acknowledged LTX is therefore complete under one of its two
/// names (rename is atomic): the final one, or the spare's if the rename did not reach the
/// disk. This renames every spare that holds a complete LTX (header and trailer checksums)
/// continuing the chain of the named files (`min_txid` = last `max_txid` + 1 and matching
/// pre-apply checksum) or starting a new one (a snapshot), in the order they were written, and
/// deletes every other spare (incomplete writes were never acknowledged; empty ones are unused).
/// Returns how many LTX files were restored.
pub fn promote_spares(dir: &Path) -> io::Result<usize> {
    drop_torn_wal_backed(dir)?;
    let mut named: Option<(u64, PathBuf)> = None;
    let mut full: Vec<PathBuf> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(SPARE_PREFIX) {
            if entry.metadata()?.len() > 0 {
                full.push(entry.path());
            } else {
                // Unused: a new batch is made when needed.
                fs::remove_file(entry.path())?;
            }
        } else if let Some((_, max)) = ltx::parse_file_name(name) {
            if named.as_ref().is_none_or(|(m, _)| max > *m) {
                named = Some((max, entry.path()));
            }
        }
    }
    if full.is_empty() {
        return Ok(0);
    }
    let mut tip: Option<Pos> = match &named {
        Some((_, path)) => {
            let (h, t, _) = read_header_trailer(path)?;
            Some(Pos { txid: h.max_txid, checksum: t.post_apply_checksum })
        }
        None => None,
    };
    // Spares are used in the order of their names: this is the order the LTX were written.
    full.sort();
    let mut promoted = 0;
    for path in full {
        let Some((header, _, trailer)) = fs::read(&path).ok().and_then(|b| ltx::decode_slice(&b).ok()) else {
            tracing::warn!(spare = %path.display(), "removing an incomplete spare LTX (never acknowledged)");
            fs::remove_file(&path)?;
            continue;
        };
        let post = trailer.post_apply_checksum;
        let continues = header.is_snapshot()
            || tip.is_some_and(|t| header.min_txid == t.txid + 1 && header.pre_apply_checksum == t.checksum);
        if continues {
            fs::rename(&path, dir.join(ltx::file_name(header.min_txid, header.max_txid)))?;
            tip = Some(Pos { txid: header.max_txid, checksum: post });
            promoted += 1;
            tracing::warn!(min = header.min_txid, max = header.max_txid, "restored an LTX file whose rename a crash lost");
        } else {
            tracing::warn!(spare = %path.display(), "removing a spare LTX that does not continue the chain");
            fs::remove_file(&path)?;
        }
    }
    File::open(dir)?.sync_all()?;
    Ok(promoted)
}

/// Writes `name` in `dir` atomically: temp file, fsync, rename, fsync of the directory.
fn atomic_write(dir: &Path, name: &str, bytes: &[u8], fsync: bool) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if fsync {
            f.sync_all()?;
            stats::fsync(FsyncKind::Metadata);
        }
    }
    fs::rename(&tmp, dir.join(name))?;
    if fsync {
        File::open(dir)?.sync_all()?;
        stats::fsync(FsyncKind::Dir);
    }
    Ok(())
}

/// Records an apply's latency when dropped (every exit of the apply arm).
fn scopeguard_latency(started: std::time::Instant) -> impl Drop {
    struct Timer(std::time::Instant);
    impl Drop for Timer {
        fn drop(&mut self) {
            stats::APPLY_LATENCY.observe(self.0.elapsed());
        }
    }
    Timer(started)
}

fn io_error_kind(e: &io::Error) -> IoErrorKind {
    match e.kind() {
        io::ErrorKind::NotFound => IoErrorKind::NotFound,
        io::ErrorKind::StorageFull => IoErrorKind::NoSpace,
        _ => IoErrorKind::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(min: u64, max: u64, pre: u64, post: u64) -> LtxFileMeta {
        LtxFileMeta { min_txid: min, max_txid: max, pre_apply_checksum: pre, post_apply_checksum: post, size_bytes: 1, written_at: Time::ZERO }
    }
    fn pos(txid: u64, checksum: u64) -> Pos {
        Pos { txid, checksum }
    }

    #[test]
    fn epoch_lines_round_trip() {
        let p = pos(3, 0x8000_0000_0000_00ff);
        assert_eq!(parse_epoch_line(&format_epoch_line(Epoch(7), p)), Some((p, Epoch(7))));
        assert_eq!(parse_epoch_line("garbage"), None);
    }

    #[test]
    fn the_lineage_epoch_is_the_newest_line_on_the_chain_of_the_last_ltx() {
        // Snapshot 1-2 (epoch 2), then 3 and 4 written under epoch 4 (journaled before 3).
        let files = [meta(1, 2, 0, 0xa2), meta(3, 3, 0xa2, 0xa3), meta(4, 4, 0xa3, 0xa4)];
        let lines = [(pos(2, 0xa2), Epoch(2)), (pos(3, 0xa3), Epoch(4))];
        assert_eq!(lineage_epoch(&lines, &files, pos(4, 0xa4)), Some(Epoch(4)), "descendant of the epoch-4 line");
        assert_eq!(lineage_epoch(&lines, &files[..1], pos(2, 0xa2)), Some(Epoch(2)), "crash before LTX 3 was written");
        // A line journaled for an LTX that never got written (other checksum) is not on the chain.
        let lines = [(pos(2, 0xa2), Epoch(2)), (pos(3, 0xbad), Epoch(6))];
        assert_eq!(lineage_epoch(&lines, &files, pos(4, 0xa4)), Some(Epoch(2)));
        // A history replaced by a snapshot at a lower TXID: old lines no longer count.
        let files = [meta(1, 2, 0, 0xb2)];
        let lines = [(pos(2, 0xa2), Epoch(2)), (pos(3, 0xa3), Epoch(4))];
        assert_eq!(lineage_epoch(&lines, &files, pos(2, 0xb2)), None);
    }

    #[test]
    fn a_new_epoch_is_journaled_before_its_ltx_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        let db = DbName::new("a.db").unwrap();
        let ltx = |post: u64| {
            let mut b = vec![0u8; 8];
            let mut t = [0u8; TRAILER_SIZE];
            t[..8].copy_from_slice(&post.to_be_bytes());
            b.extend_from_slice(&t);
            b
        };
        data.record_ltx_epoch(&db, 1, 1, &ltx(0xa1), Epoch(2), Epoch::ZERO, false).unwrap();
        data.record_ltx_epoch(&db, 2, 2, &ltx(0xa2), Epoch(2), Epoch(2), false).unwrap();
        data.record_ltx_epoch(&db, 3, 3, &ltx(0xa3), Epoch(5), Epoch(2), false).unwrap();
        assert_eq!(data.epoch_lines(&db), vec![(pos(1, 0xa1), Epoch(2)), (pos(3, 0xa3), Epoch(5))]);
        for i in 0..20 {
            data.append_epoch_line(&db, pos(10 + i, i), Epoch(5), false).unwrap();
        }
        assert_eq!(data.epoch_lines(&db).len(), EPOCH_LINES_MAX);
    }

    fn ltx_bytes(min: u64, max: u64, pre: u64, post: u64) -> Vec<u8> {
        // As made from one WAL commit frame per transaction (512-byte pages: 536-byte frames).
        let (wal_offset, wal_size) = (32 + 536 * (min as i64 - 1), 536 * (max - min + 1) as i64);
        let header = Header { page_size: 512, commit: 1, min_txid: min, max_txid: max, pre_apply_checksum: pre, timestamp_ms: 1, wal_offset, wal_size, wal_salt1: 7, wal_salt2: 8, ..Header::default() };
        let page = vec![min as u8; 512];
        let post = if min == 1 { ltx::checksum::db_checksum(&page, 512) } else { post };
        ltx::encode_to_vec(header, [(1u32, page.as_slice())], post).unwrap()
    }

    /// A data directory in a temporary directory, and the database `a.db`.
    fn data_dir() -> (tempfile::TempDir, DataDir, DbName) {
        let tmp = tempfile::tempdir().unwrap();
        let data = DataDir::new(tmp.path());
        (tmp, data, DbName::new("a.db").unwrap())
    }

    /// `bytes` as the LTX of `txid` (epoch 1); `wal_backed`: a local WAL commit's.
    fn write_txid(data: &DataDir, db: &DbName, txid: u64, bytes: &[u8], wal_backed: bool) {
        let kind = IoKind::WriteLtx { db: db.clone(), min_txid: txid, max_txid: txid, bytes: bytes.to_vec(), fsync: true, epoch: Epoch(1) };
        data.execute_with(&kind, Epoch(1), Pos::ZERO, &super::super::NoHook, wal_backed).unwrap();
    }

    /// Whether `txid`'s LTX file carries the unsynced mark.
    fn marked(data: &DataDir, db: &DbName, txid: u64) -> bool {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(data.ltx_path(db, txid, txid)).unwrap().mode() & UNSYNCED_MARK != 0
    }

    fn spares_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n.starts_with(SPARE_PREFIX)).collect();
        names.sort();
        names
    }

    #[test]
    fn spares_are_used_in_the_order_of_their_names() {
        let tmp = tempfile::tempdir().unwrap();
        let mut in_use_order = make_spare_batch(tmp.path()).unwrap();
        in_use_order.reverse(); // used from the end
        let names: Vec<String> = in_use_order.iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_string()).collect();
        assert_eq!(names.len(), SPARE_BATCH);
        assert_eq!(names, spares_in(tmp.path()), "promote_spares restores in name order: it must be the write order");
    }

    #[test]
    fn an_ltx_whose_rename_was_lost_is_restored_from_its_spare() {
        let tmp = tempfile::tempdir().unwrap();
        let data = DataDir::new(tmp.path());
        let db = DbName::new("a.db").unwrap();
        let dir = data.ltx_dir(&db);
        const C: u64 = 0x8000_0000_0000_0000;
        let s1 = ltx::checksum::db_checksum(&[1u8; 512], 512);
        let files = [ltx_bytes(1, 1, 0, s1), ltx_bytes(2, 2, s1, C | 0xa2), ltx_bytes(3, 3, C | 0xa2, C | 0xa3)];
        let mut batch = Vec::new();
        for (i, bytes) in files.iter().enumerate() {
            let txid = i as u64 + 1;
            data.write_ltx(&db, txid, txid, bytes, true).unwrap();
            assert_eq!(fs::read(data.ltx_path(&db, txid, txid)).unwrap(), *bytes);
            if i == 0 {
                batch = spares_in(&dir); // spares are used in name order
            }
        }
        assert_eq!(spares_in(&dir).len(), SPARE_BATCH - 3, "one batch of spares, three used");
        // A crash loses the renames of LTX 2 and 3: both are back under their spare names.
        let (spare2, spare3) = (batch[0].clone(), batch[1].clone());
        fs::rename(data.ltx_path(&db, 2, 2), dir.join(&spare2)).unwrap();
        fs::rename(data.ltx_path(&db, 3, 3), dir.join(&spare3)).unwrap();
        // A later spare holding an incomplete write (never acknowledged), and one off the chain.
        let unused = spares_in(&dir);
        fs::write(dir.join(&unused[5]), &files[2][..40]).unwrap();
        fs::write(dir.join(&unused[6]), ltx_bytes(4, 4, C | 0xbad, C | 0xa4)).unwrap();
        assert_eq!(promote_spares(&dir).unwrap(), 2);
        assert_eq!(fs::read(data.ltx_path(&db, 2, 2)).unwrap(), files[1]);
        assert_eq!(fs::read(data.ltx_path(&db, 3, 3)).unwrap(), files[2]);
        assert!(!data.ltx_path(&db, 4, 4).exists(), "an LTX that does not continue the chain is not restored");
        assert!(spares_in(&dir).is_empty(), "every spare is gone after start-up");
        let open = data.scan(Time::ZERO).unwrap();
        assert_eq!(open[0].pos, pos(3, C | 0xa3), "the chain ends at the restored LTX");
        assert_eq!(open[0].files.len(), 3);
    }

    #[test]
    fn wal_backed_ltx_files_are_synced_on_demand_and_a_torn_one_is_dropped_with_its_successors() {
        let (tmp, data, db) = data_dir();
        let dir = data.ltx_dir(&db);
        const C: u64 = 0x8000_0000_0000_0000;
        let s1 = ltx::checksum::db_checksum(&[1u8; 512], 512);
        let files = [ltx_bytes(1, 1, 0, s1), ltx_bytes(2, 2, s1, C | 0xa2), ltx_bytes(3, 3, C | 0xa2, C | 0xa3), ltx_bytes(4, 4, C | 0xa3, C | 0xa4)];
        let write_with = |data: &DataDir, txid: u64, wal_backed: bool| {
            write_txid(data, &db, txid, &files[txid as usize - 1], wal_backed);
            data.write_pending(&db, usize::MAX).unwrap(); // what the background writer does
        };
        let write = |txid: u64, wal_backed: bool| write_with(&data, txid, wal_backed);
        let marked = |txid: u64| marked(&data, &db, txid);
        write(1, false);
        write(2, true);
        assert!(!marked(1), "an fsynced LTX is not marked");
        assert!(marked(2), "a WAL-backed LTX is marked until synced");
        assert_eq!(data.sync_wal_backed(&db).unwrap(), 1);
        assert!(!marked(2), "synced: the mark is gone");
        assert_eq!(data.sync_wal_backed(&db).unwrap(), 0, "nothing left to sync");

        // Two more WAL-backed files; a power cut tears the first of them.
        write(3, true);
        write(4, true);
        assert!(marked(3) && marked(4));
        fs::OpenOptions::new().write(true).open(data.ltx_path(&db, 3, 3)).unwrap().set_len(10).unwrap();
        promote_spares(&dir).unwrap();
        assert!(!data.ltx_path(&db, 3, 3).exists(), "the torn LTX is dropped");
        assert!(!data.ltx_path(&db, 4, 4).exists(), "and the one after it (the chain breaks at 3)");
        assert_eq!(fs::read(data.ltx_path(&db, 2, 2)).unwrap(), files[1]);
        assert!(spares_in(&dir).is_empty());
        let open = data.scan(Time::ZERO).unwrap();
        assert_eq!(open[0].pos, pos(2, C | 0xa2));

        // A durable write after WAL-backed ones syncs them first (a new process: new spares).
        let data = DataDir::new(tmp.path());
        write_with(&data, 3, true);
        assert!(marked(3));
        write_with(&data, 4, false);
        assert!(!marked(3) && !marked(4), "the WAL-backed LTX before a durable one is synced first");
    }

    #[test]
    fn wal_backed_ltx_files_are_synced_in_the_background_once_enough_wait() {
        let (_tmp, data, db) = data_dir();
        const C: u64 = 0x8000_0000_0000_0000;
        let write = |txid: u64| {
            write_txid(&data, &db, txid, &ltx_bytes(txid, txid, C | (txid - 1), C | txid), true);
            data.write_pending(&db, usize::MAX).unwrap(); // what the background writer does
        };
        let marked = |txid: u64| marked(&data, &db, txid);
        let n = WAL_BACKED_SYNC_AHEAD as u64;
        for txid in 2..=n {
            write(txid);
        }
        data.join_sync_ahead(&db);
        assert!((2..=n).all(marked), "below the threshold nothing is synced ahead");
        write(n + 1);
        data.join_sync_ahead(&db);
        assert!(!(2..=n + 1).any(marked), "the threshold's write starts a background sync of all of them");
        assert_eq!(data.sync_wal_backed(&db).unwrap(), 0, "nothing left for the WAL restart to sync");
        write(n + 2);
        assert!(marked(n + 2), "the count starts again");
        assert_eq!(data.sync_wal_backed(&db).unwrap(), 1);
    }

    #[test]
    fn a_wal_backed_ltx_is_served_from_memory_until_the_background_writer_has_written_it() {
        let (_tmp, data, db) = data_dir();
        const C: u64 = 0x8000_0000_0000_0000;
        let s1 = ltx::checksum::db_checksum(&[1u8; 512], 512);
        let files = [ltx_bytes(1, 1, 0, s1), ltx_bytes(2, 2, s1, C | 0xa2)];
        write_txid(&data, &db, 1, &files[0], false);

        // Hold the writer back: the commit returns with the file still in memory.
        let lock = Arc::clone(data.ltx_write.lock().unwrap().entry(db.clone()).or_default());
        let held = lock.lock().unwrap();
        write_txid(&data, &db, 2, &files[1], true);
        assert!(!data.ltx_path(&db, 2, 2).exists(), "not written on the commit's path");
        let read = IoKind::ReadLtx { db: db.clone(), files: vec![(1, 1), (2, 2)] };
        match data.execute(&read, Epoch(1), Pos::ZERO, &super::super::NoHook) {
            Ok(IoOutcome::LtxFiles(got)) => assert_eq!(got, files.to_vec(), "the pending file is read from memory"),
            other => panic!("unexpected {other:?}"),
        }
        drop(held);

        // A WAL restart (or any durable write) writes and syncs it, whatever the writer did.
        assert_eq!(data.sync_wal_backed(&db).unwrap(), 1);
        assert_eq!(fs::read(data.ltx_path(&db, 2, 2)).unwrap(), files[1]);
        assert!(!marked(&data, &db, 2), "synced: the mark is gone");
        assert!(data.pending.lock().unwrap().is_empty());
        assert_eq!(data.scan(Time::ZERO).unwrap()[0].pos, pos(2, C | 0xa2));
    }

    /// WAL-backed LTX written while the writer is busy share one file, the group's LTX merged:
    /// each joining write answers `LtxMerged` with the group's first TXID; reads of the group, or
    /// of its transactions (a core that has not seen the answer yet), come from memory; the file
    /// on disk is one valid LTX; a write after the group was taken starts a new one.
    #[test]
    fn wal_backed_ltx_queued_together_share_one_merged_file() {
        let (_tmp, data, db) = data_dir();
        const C: u64 = 0x8000_0000_0000_0000;
        let s1 = ltx::checksum::db_checksum(&[1u8; 512], 512);
        let chk = |t: u64| if t == 1 { s1 } else { C | t };
        let files: Vec<Vec<u8>> = (1..=7).map(|t| ltx_bytes(t, t, if t == 1 { 0 } else { chk(t - 1) }, chk(t))).collect();
        write_txid(&data, &db, 1, &files[0], false);
        let write = |t: u64| {
            let kind = IoKind::WriteLtx { db: db.clone(), min_txid: t, max_txid: t, bytes: files[t as usize - 1].clone(), fsync: true, epoch: Epoch(1) };
            data.execute_with(&kind, Epoch(1), pos(t - 1, chk(t - 1)), &super::super::NoHook, true).unwrap()
        };
        let read = |ranges: Vec<(u64, u64)>| match data.execute(&IoKind::ReadLtx { db: db.clone(), files: ranges }, Epoch(1), Pos::ZERO, &super::super::NoHook) {
            Ok(IoOutcome::LtxFiles(got)) => got,
            other => panic!("unexpected {other:?}"),
        };
        let lock = Arc::clone(data.ltx_write.lock().unwrap().entry(db.clone()).or_default());
        let held = lock.lock().unwrap();
        assert_eq!(write(2), IoOutcome::Done, "the first of a group is stored on its own");
        for t in 3..=5 {
            assert_eq!(write(t), IoOutcome::LtxMerged { min_txid: 2 });
        }
        assert!(!data.ltx_dir(&db).join(ltx::file_name(2, 2)).exists());
        let (h, _, t) = ltx::decode_slice(&read(vec![(2, 5)])[0]).unwrap();
        assert_eq!((h.min_txid, h.max_txid, h.pre_apply_checksum, t.post_apply_checksum), (2, 5, chk(1), chk(5)));
        assert_eq!((h.wal_offset, h.wal_size, h.wal_salt1, h.wal_salt2), (32 + 536, 4 * 536, 7, 8), "the WAL range of the four");
        assert_eq!(read(vec![(3, 3)]), vec![files[2].clone()], "a transaction of a group, from memory");
        let (h, _, t) = ltx::decode_slice(&read(vec![(3, 4)])[0]).unwrap();
        assert_eq!((h.min_txid, h.max_txid, h.pre_apply_checksum, t.post_apply_checksum), (3, 4, chk(2), chk(4)));
        drop(held);
        assert_eq!(data.write_pending(&db, usize::MAX).unwrap(), 1, "one file for four transactions");
        let on_disk = fs::read(data.ltx_path(&db, 2, 5)).unwrap();
        assert_eq!(on_disk, read(vec![(2, 5)])[0], "the merged file");
        assert_eq!(write(6), IoOutcome::Done, "a group taken by the writer is closed");
        assert_eq!(write(7), IoOutcome::LtxMerged { min_txid: 6 });
        assert_eq!(data.sync_wal_backed(&db).unwrap(), 2);
        let open = data.scan(Time::ZERO).unwrap();
        assert_eq!(open[0].pos, pos(7, chk(7)));
        let ranges: Vec<(u64, u64)> = open[0].files.iter().map(|f| (f.min_txid, f.max_txid)).collect();
        assert_eq!(ranges, vec![(1, 1), (2, 5), (6, 7)]);
        // The positions inside the merged files come back with them.
        assert_eq!(open[0].points, vec![pos(2, chk(2)), pos(3, chk(3)), pos(4, chk(4)), pos(6, chk(6))]);
    }

    /// A WAL-backed LTX whose end position starts a line of the epoch journal ends its group:
    /// the line names the end of a file.
    #[test]
    fn a_new_lineage_epoch_ends_a_group_of_wal_backed_ltx() {
        let (_tmp, data, db) = data_dir();
        const C: u64 = 0x8000_0000_0000_0000;
        let s1 = ltx::checksum::db_checksum(&[1u8; 512], 512);
        let chk = |t: u64| if t == 1 { s1 } else { C | t };
        write_txid(&data, &db, 1, &ltx_bytes(1, 1, 0, s1), false);
        let lock = Arc::clone(data.ltx_write.lock().unwrap().entry(db.clone()).or_default());
        let _held = lock.lock().unwrap();
        let write = |t: u64, epoch: u64| {
            let kind = IoKind::WriteLtx { db: db.clone(), min_txid: t, max_txid: t, bytes: ltx_bytes(t, t, chk(t - 1), chk(t)), fsync: true, epoch: Epoch(epoch) };
            let current = Epoch(if t > 3 { 2 } else { 1 }); // the epoch of the position it follows
            data.execute_with(&kind, current, pos(t - 1, chk(t - 1)), &super::super::NoHook, true).unwrap()
        };
        assert_eq!(write(2, 1), IoOutcome::Done);
        assert_eq!(write(3, 2), IoOutcome::LtxMerged { min_txid: 2 }, "the new epoch's first LTX ends the group");
        assert_eq!(write(4, 2), IoOutcome::Done, "and the next starts a new one");
        assert_eq!(data.epoch_lines(&db).last(), Some(&(pos(3, chk(3)), Epoch(2))));
    }

    #[test]
    fn a_complete_unsynced_ltx_found_at_start_up_is_kept_and_unmarked() {
        use std::os::unix::fs::MetadataExt;
        let (tmp, data, db) = data_dir();
        const C: u64 = 0x8000_0000_0000_0000;
        let s1 = ltx::checksum::db_checksum(&[1u8; 512], 512);
        write_txid(&data, &db, 1, &ltx_bytes(1, 1, 0, s1), false);
        write_txid(&data, &db, 2, &ltx_bytes(2, 2, s1, C | 0xa2), true);
        data.write_pending(&db, usize::MAX).unwrap();
        let mode = || fs::metadata(data.ltx_path(&db, 2, 2)).unwrap().mode() & 0o777;
        assert_eq!(mode(), UNSYNCED_LTX_MODE);
        // A crash here, then start-up: the file is whole, so it stays, unmarked.
        assert_eq!(promote_spares(&data.ltx_dir(&db)).unwrap(), 0);
        assert_eq!(mode(), LTX_MODE);
        assert_eq!(DataDir::new(tmp.path()).scan(Time::ZERO).unwrap()[0].pos, pos(2, C | 0xa2));
    }

}
