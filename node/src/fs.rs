//! The FUSE file system: a flat directory of SQLite databases backed by `<data>/dbs/<db>/`.
//!
//! Decides: the namespace (§5.1: `<db>`, `<db>-journal`, `<db>-wal`, `<db>-shm`, virtual
//! `<db>-pos`, `.lag`, `.primary` on replicas), how each FUSE request maps onto backing files, and
//! the order "commit detected → LTX durable (engine) → operation completes". Replicas refuse
//! writes (EACCES), so SQLite reports "attempt to write a readonly database".
//!
//! Never decides when a transaction commits (that is `ltxfs_core::detect`) or what the next
//! position is (that is `crate::engine`, later the core node). It only moves bytes and calls them.

use crate::engine::{DbLog, EngineError, LocalCommit};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use ltxfs_core::detect::locks::{LockError, LockKind};
use ltxfs_core::detect::{
    self, oplog, Commit, DbHeader, DetectError, Detector, Event, LockFile, Op,
};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ROOT_INO: u64 = 1;
const PRIMARY_INO: u64 = 2;
const LAG_INO: u64 = 3;
const DB_INO_BASE: u64 = 16;
/// How long the kernel may cache attributes and names. Every change goes through this mount on
/// the primary, so the kernel's view stays exact; replicas will invalidate explicitly.
const TTL: Duration = Duration::from_secs(1);
/// `.lag` content on a primary: `%+010d\n` of 0 ms.
const LAG_PRIMARY: &[u8] = b"+000000000\n";

/// How the file system is set up.
#[derive(Debug, Clone)]
pub struct FsOptions {
    pub data_dir: PathBuf,
    pub compress: bool,
    /// Replica: every write is refused (no replication yet, so content is static).
    pub replica: bool,
    /// Hostname of the primary, shown in `.primary` on replicas.
    pub primary_hostname: String,
    /// Append every detector input of database `<db>` to `<dir>/<db>.ops` (test recordings).
    pub record_ops: Option<PathBuf>,
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

    fn lock_file(self) -> Option<LockFile> {
        match self {
            Kind::Database => Some(LockFile::Database),
            Kind::Shm => Some(LockFile::Shm),
            _ => None,
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

struct Db {
    name: String,
    dir: PathBuf,
    /// Open backing files (database always; the others while they exist).
    files: [Option<File>; 4],
    detector: Detector,
    log: DbLog,
    recorder: Option<File>,
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
    fn detect(&mut self, op: Op<'_>) -> Result<(), Errno> {
        if self.recorder.is_some() {
            self.record(&oplog::format_op(&op));
        }
        match self.detector.apply(op) {
            Ok(None) => Ok(()),
            Ok(Some(event)) => self.handle_event(event),
            Err(DetectError::Lock(LockError::Conflict(_)))
            | Err(DetectError::CheckpointDuringWrite { .. }) => Err(Errno::EAGAIN),
            Err(err) => {
                tracing::warn!(db = %self.name, %err, "refused file operation");
                Err(Errno::EIO)
            }
        }
    }

    fn handle_event(&mut self, event: Event) -> Result<(), Errno> {
        match event {
            Event::Committed(commit) => self.commit_rollback_journal(&commit).map_err(|err| {
                tracing::error!(db = %self.name, %err, "commit failed; the transaction is rolled back");
                Errno::EIO
            }),
            Event::RolledBack { pages } => {
                tracing::debug!(db = %self.name, pages = pages.len(), "transaction rolled back");
                Ok(())
            }
            Event::ReadWal { offset, len } => {
                if let Err(err) = self.commit_wal(offset, len) {
                    // SQLite already believes the transaction committed: the WAL and the LTX log
                    // disagree now. Like LiteFS (exit 99), stop rather than serve diverged data.
                    tracing::error!(db = %self.name, %err, "WAL commit could not be recorded; exiting");
                    std::process::exit(99);
                }
                Ok(())
            }
        }
    }

    fn commit_rollback_journal(&mut self, commit: &Commit) -> Result<(), EngineError> {
        let database = self.files[Kind::Database as usize]
            .as_ref()
            .ok_or_else(|| io::Error::other("no database file"))?;
        let page_size = u64::from(commit.page_size);
        let mut data = Vec::with_capacity(commit.pages.len());
        for page in &commit.pages {
            let mut buf = vec![0u8; commit.page_size as usize];
            database.read_exact_at(&mut buf, u64::from(page.pgno - 1) * page_size)?;
            data.push((page.pgno, buf));
        }
        let pages: Vec<(u32, &[u8])> = data.iter().map(|(p, d)| (*p, d.as_slice())).collect();
        let mut read_page = |pgno: u32, buf: &mut [u8]| {
            database.read_exact_at(buf, u64::from(pgno - 1) * page_size)
        };
        let pos = self.log.commit(LocalCommit {
            page_size: commit.page_size,
            commit: commit.commit,
            pages: &pages,
            wal: None,
            wall_ms: wall_ms(),
            read_page: &mut read_page,
        })?;
        tracing::debug!(db = %self.name, ?pos, pages = pages.len(), "rollback-journal commit");
        Ok(())
    }

    fn commit_wal(&mut self, offset: u64, len: u64) -> Result<(), EngineError> {
        let wal = self.files[Kind::Wal as usize]
            .as_ref()
            .ok_or_else(|| io::Error::other("no WAL file"))?;
        let mut bytes = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
        let mut read = 0;
        while read < bytes.len() {
            let n = wal.read_at(&mut bytes[read..], offset + read as u64)?;
            if n == 0 {
                break;
            }
            read += n;
        }
        bytes.truncate(read);
        if self.recorder.is_some() {
            self.record(&oplog::format_wal_data(offset, &bytes));
        }
        let commits = self
            .detector
            .wal_data(offset, &bytes)
            .map_err(io::Error::other)?;
        let database = self.files[Kind::Database as usize]
            .as_ref()
            .ok_or_else(|| io::Error::other("no database file"))?;
        for commit in commits {
            let page_size = commit.page_size as usize;
            let pages: Vec<(u32, &[u8])> = commit
                .pages
                .iter()
                .map(|page| {
                    let at = (page
                        .wal_offset
                        .expect("WAL commits locate pages in the WAL")
                        - offset) as usize;
                    (page.pgno, &bytes[at..at + page_size])
                })
                .collect();
            let mut read_page = |pgno: u32, buf: &mut [u8]| {
                database.read_exact_at(buf, u64::from(pgno - 1) * commit.page_size as u64)
            };
            let pos = self.log.commit(LocalCommit {
                page_size: commit.page_size,
                commit: commit.commit,
                pages: &pages,
                wal: commit.wal,
                wall_ms: wall_ms(),
                read_page: &mut read_page,
            })?;
            tracing::debug!(db = %self.name, ?pos, pages = pages.len(), "WAL commit");
        }
        Ok(())
    }
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

struct State {
    opts: FsOptions,
    dbs: Vec<Db>,
    by_name: BTreeMap<String, usize>,
    uid: u32,
    gid: u32,
}

/// The mounted file system. All requests are served under one lock (correctness first).
pub struct LtxFs {
    state: Mutex<State>,
}

fn io_errno(err: io::Error) -> Errno {
    Errno::from(err)
}

impl LtxFs {
    /// Loads every database under `<data>/dbs/` (checksumming it) and removes stale `-shm` files.
    pub fn new(opts: FsOptions) -> io::Result<LtxFs> {
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
        for name in names {
            let _ = fs::remove_file(dbs_dir.join(&name).join("shm"));
            state
                .load_db(&name, false)
                .map_err(|e| io::Error::other(format!("{name}: {e}")))?;
        }
        Ok(LtxFs {
            state: Mutex::new(state),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// Registers database `name`, creating its files when `create`.
    fn load_db(&mut self, name: &str, create: bool) -> Result<usize, EngineError> {
        if let Some(id) = self.by_name.get(name) {
            return Ok(*id);
        }
        let dir = self.opts.data_dir.join("dbs").join(name);
        if create {
            fs::create_dir_all(&dir)?;
        }
        let database = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .open(dir.join("database"))?;
        let mut head = [0u8; 100];
        let header = match database.read_exact_at(&mut head, 0) {
            Ok(()) => DbHeader::parse(&head),
            Err(_) => None,
        };
        let log = DbLog::open(&dir.join("ltx"), &database, self.opts.compress)?;
        let mut files: [Option<File>; 4] = [Some(database), None, None, None];
        for kind in [Kind::Journal, Kind::Wal, Kind::Shm] {
            files[kind as usize] = OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.join(kind.backing_name()))
                .ok();
        }
        let recorder = match &self.opts.record_ops {
            Some(rec) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(rec.join(format!("{name}.ops")))?,
            ),
            None => None,
        };
        let id = self.dbs.len();
        self.dbs.push(Db {
            name: name.to_string(),
            dir,
            files,
            detector: Detector::new(header),
            log,
            recorder,
        });
        self.by_name.insert(name.to_string(), id);
        tracing::info!(db = name, pos = %self.dbs[id].log.pos(), "database opened");
        Ok(id)
    }

    fn resolve(&self, ino: INodeNo) -> Option<(usize, Kind)> {
        let raw = ino.0.checked_sub(DB_INO_BASE)?;
        let id = usize::try_from(raw / 8).ok()?;
        let kind = Kind::from_index(raw % 8)?;
        (id < self.dbs.len()).then_some((id, kind))
    }

    fn attr(&self, ino: INodeNo) -> Result<FileAttr, Errno> {
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
            PRIMARY_INO if self.opts.replica => {
                attr.perm = 0o444;
                attr.size = self.opts.primary_hostname.len() as u64 + 1;
                return Ok(attr);
            }
            LAG_INO => {
                attr.perm = 0o444;
                attr.size = LAG_PRIMARY.len() as u64;
                return Ok(attr);
            }
            _ => {}
        }
        let (id, kind) = self.resolve(ino).ok_or(Errno::ENOENT)?;
        let db = &self.dbs[id];
        if kind == Kind::Pos {
            attr.perm = 0o444;
            attr.size = 34;
            return Ok(attr);
        }
        let meta = db.file(kind)?.metadata().map_err(io_errno)?;
        attr.size = meta.len();
        attr.blocks = meta.blocks();
        attr.mtime = meta.modified().unwrap_or(now);
        attr.ctime = attr.mtime;
        if self.opts.replica && kind == Kind::Database {
            attr.perm = 0o444;
        }
        Ok(attr)
    }

    fn virtual_content(&self, ino: INodeNo) -> Option<Vec<u8>> {
        match ino.0 {
            PRIMARY_INO if self.opts.replica => {
                Some(format!("{}\n", self.opts.primary_hostname).into_bytes())
            }
            LAG_INO => Some(LAG_PRIMARY.to_vec()),
            _ => match self.resolve(ino)? {
                (id, Kind::Pos) => Some(format!("{}\n", self.dbs[id].log.pos()).into_bytes()),
                _ => None,
            },
        }
    }

    fn lookup_name(&self, name: &OsStr) -> Result<INodeNo, Errno> {
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        match name {
            ".primary" if self.opts.replica => return Ok(INodeNo(PRIMARY_INO)),
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

fn lock_kind(typ: i32) -> Option<LockKind> {
    match typ {
        libc::F_RDLCK => Some(LockKind::Read),
        libc::F_WRLCK => Some(LockKind::Write),
        _ => None,
    }
}

impl Filesystem for LtxFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        config
            .add_capabilities(InitFlags::FUSE_POSIX_LOCKS)
            .map_err(|_| io::Error::other("the kernel does not support FUSE POSIX locks"))?;
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let state = self.state();
        if parent.0 != ROOT_INO {
            return reply.error(Errno::ENOENT);
        }
        match state.lookup_name(name).and_then(|ino| state.attr(ino)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(err) => reply.error(err),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().attr(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
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
        let mut state = self.state();
        if let Some(size) = size {
            let Some((id, kind)) = state.resolve(ino) else {
                return reply.error(Errno::EACCES);
            };
            if state.opts.replica && kind != Kind::Shm {
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
                if let Err(err) = db.detect(op) {
                    return reply.error(err);
                }
            }
            let result = db
                .file(kind)
                .and_then(|file| file.set_len(size).map_err(io_errno));
            if let Err(err) = result {
                return reply.error(err);
            }
        }
        match state.attr(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(err) => reply.error(err),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.state();
        if parent.0 != ROOT_INO {
            return reply.error(Errno::ENOENT);
        }
        let ino = match state.lookup_name(name) {
            Ok(ino) => ino,
            Err(err) => return reply.error(err),
        };
        let Some((id, kind)) = state.resolve(ino) else {
            return reply.error(Errno::EPERM);
        };
        if state.opts.replica {
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
            if let Err(err) = db.detect(op) {
                return reply.error(err);
            }
        }
        db.files[kind as usize] = None;
        match fs::remove_file(db.path(kind)) {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(io_errno(err)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let state = self.state();
        let writable = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        if ino.0 == PRIMARY_INO
            || ino.0 == LAG_INO
            || matches!(state.resolve(ino), Some((_, Kind::Pos)))
        {
            if writable {
                return reply.error(Errno::EACCES);
            }
            return reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        }
        let Some((id, kind)) = state.resolve(ino) else {
            return reply.error(Errno::ENOENT);
        };
        if state.opts.replica && writable && kind != Kind::Shm {
            return reply.error(Errno::EACCES);
        }
        if !state.dbs[id].exists(kind) {
            return reply.error(Errno::ENOENT);
        }
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
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
        let mut state = self.state();
        if parent.0 != ROOT_INO {
            return reply.error(Errno::ENOENT);
        }
        if state.opts.replica {
            return reply.error(Errno::EACCES);
        }
        let Some((db_name, kind)) = name.to_str().and_then(parse_name) else {
            return reply.error(Errno::EACCES);
        };
        let id = match (kind, state.by_name.get(db_name)) {
            (Kind::Pos, _) => return reply.error(Errno::EACCES),
            (_, Some(id)) => *id,
            (Kind::Database, None) => match state.load_db(db_name, true) {
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
                Ok(file) => db.files[kind as usize] = Some(file),
                Err(err) => return reply.error(io_errno(err)),
            }
        }
        let ino = db_ino(id, kind);
        match state.attr(ino) {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(err) => reply.error(err),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let state = self.state();
        if let Some(content) = state.virtual_content(ino) {
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
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.state();
        let Some((id, kind)) = state.resolve(ino) else {
            return reply.error(Errno::EACCES);
        };
        if state.opts.replica && kind != Kind::Shm {
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
            if let Err(err) = db.detect(op) {
                return reply.error(err);
            }
        }
        let result = db
            .file(kind)
            .and_then(|file| file.write_all_at(data, offset).map_err(io_errno));
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(err) => reply.error(err),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        if let Some((id, kind)) = state.resolve(ino) {
            if let Some(file) = kind.lock_file() {
                // close() drops all of the owner's POSIX locks on the file.
                if let Err(err) = state.dbs[id].detect(Op::ReleaseOwner {
                    file,
                    owner: lock_owner.0,
                }) {
                    return reply.error(err);
                }
            }
        }
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
        let state = self.state();
        let Some((id, kind)) = state.resolve(ino) else {
            return reply.ok();
        };
        if kind == Kind::Pos {
            return reply.ok();
        }
        let result = state.dbs[id].file(kind).and_then(|file| {
            if datasync {
                file.sync_data()
            } else {
                file.sync_all()
            }
            .map_err(io_errno)
        });
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
        let state = self.state();
        if ino.0 != ROOT_INO {
            return reply.error(Errno::ENOTDIR);
        }
        let mut entries: Vec<(INodeNo, FileType, String)> = vec![
            (INodeNo(ROOT_INO), FileType::Directory, ".".into()),
            (INodeNo(ROOT_INO), FileType::Directory, "..".into()),
            (INodeNo(LAG_INO), FileType::RegularFile, ".lag".into()),
        ];
        if state.opts.replica {
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
        let state = self.state();
        if let Err(err) = state.attr(ino) {
            return reply.error(err);
        }
        let wants_write = mask.bits() & libc::W_OK != 0;
        let read_only = state.opts.replica
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
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
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
        // Names are backed by files in data.dir whose creation/removal the engine makes durable
        // where it matters (LTX); SQLite's directory fsync after a journal unlink needs no more.
        reply.ok();
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        let state = self.state();
        let Some((id, file)) = state
            .resolve(ino)
            .and_then(|(id, kind)| Some((id, kind.lock_file()?)))
        else {
            return reply.error(Errno::ENOLCK);
        };
        let Some(kind) = lock_kind(typ) else {
            return reply.error(Errno::EINVAL);
        };
        match state.dbs[id]
            .detector
            .query_lock(file, lock_owner.0, start, end, kind)
        {
            Some(held) => {
                let typ = if held.kind == LockKind::Write {
                    libc::F_WRLCK
                } else {
                    libc::F_RDLCK
                };
                reply.locked(held.start, held.end, typ, 0);
            }
            None => reply.locked(start, end, libc::F_UNLCK, 0),
        }
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        _sleep: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.state();
        let Some((id, file)) = state
            .resolve(ino)
            .and_then(|(id, kind)| Some((id, kind.lock_file()?)))
        else {
            return reply.error(Errno::ENOLCK);
        };
        let owner = lock_owner.0;
        // Blocking waits (F_SETLKW) are served like F_SETLK: SQLite never blocks on locks.
        let op = match lock_kind(typ) {
            Some(kind) => Op::Lock {
                file,
                owner,
                start,
                end,
                kind,
            },
            None if typ == libc::F_UNLCK => Op::Unlock {
                file,
                owner,
                start,
                end,
            },
            None => return reply.error(Errno::EINVAL),
        };
        match state.dbs[id].detect(op) {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let state = State {
            opts: FsOptions {
                data_dir: PathBuf::new(),
                compress: false,
                replica: false,
                primary_hostname: String::new(),
                record_ops: None,
            },
            dbs: Vec::new(),
            by_name: BTreeMap::new(),
            uid: 0,
            gid: 0,
        };
        assert_eq!(
            state.resolve(db_ino(0, Kind::Wal)),
            None,
            "no database registered"
        );
        assert_eq!(db_ino(3, Kind::Pos).0, DB_INO_BASE + 3 * 8 + 4);
    }
}
