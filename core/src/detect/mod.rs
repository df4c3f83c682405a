//! Commit detection for one SQLite database, fed with the file operations SQLite performs.
//!
//! Decides: when a transaction commits or rolls back, which pages it dirtied and the database
//! size after it, in every journal mode:
//! - DELETE: the journal is unlinked; TRUNCATE: the journal is truncated to 0 bytes; PERSIST: the
//!   journal header is overwritten with zeros. A rollback-journal transaction is a commit only if
//!   the journal header carries SQLite's magic `d9d505f920a163d7` (SQLite writes it when it
//!   syncs the journal, i.e. at commit or cache spill); otherwise it is a rollback.
//! - WAL: the exclusive lock on `-shm` byte 120 (WAL_WRITE_LOCK) is released. The detector then
//!   asks for the unread part of the WAL ([`Event::ReadWal`]) and, given those bytes
//!   ([`Detector::wal_data`]), verifies salts and the cumulative checksum frame by frame; each
//!   commit frame ends a transaction. A shell may ask earlier, as soon as a commit frame is
//!   written ([`Detector::unread_wal`]) — `node/src/fs.rs` does, so that a commit the node
//!   refuses fails SQLite's write before SQLite publishes it — and undo that reading when it
//!   refused the commit ([`Detector::wal_mark`], [`Detector::rewind_wal`]).
//!
//! It can also keep the POSIX lock tables of the database and `-shm` files (SQLite's locking
//! protocol) for a shell that feeds lock operations (recorded op logs do): then the release of
//! the WAL write lock is a commit trigger too. `node/src/fs.rs` leaves locks to the kernel and
//! feeds writes only.
//!
//! Never does: read or write files, wait, or decide anything about LTX, positions or replication.
//! The shell performs the I/O and carries out the events; see `node/src/fs.rs`.

pub mod locks;
pub mod oplog;
pub mod wal;

use locks::{LockError, LockKind, LockTable};
use std::collections::{BTreeMap, BTreeSet};

/// Rollback journal magic (`aJournalMagic` in SQLite's pager.c).
pub const JOURNAL_MAGIC: [u8; 8] = [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7];
/// How many leading bytes of a database or journal write the detector looks at.
pub const HEAD_LEN: usize = 100;

/// `-shm` lock bytes (SQLite's wal.c): WRITE, CKPT, RECOVER, READ0..4, DMS.
pub const SHM_WRITE_LOCK: u64 = 120;
pub const SHM_CKPT_LOCK: u64 = 121;
pub const SHM_DMS_LOCK: u64 = 128;
/// Database file lock bytes (SQLite's os.h).
pub const DB_PENDING_BYTE: u64 = 0x4000_0000;
pub const DB_RESERVED_BYTE: u64 = 0x4000_0001;
pub const DB_SHARED_FIRST: u64 = 0x4000_0002;

/// Which file of a database an operation is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LockFile {
    Database,
    Shm,
}

/// One file operation as SQLite performed it through the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// Write of `len` bytes to the database file; `head` is its first `min(len, HEAD_LEN)` bytes
    /// (page 1's header gives page size, database size and WAL mode).
    DbWrite {
        offset: u64,
        len: u64,
        head: &'a [u8],
    },
    DbTruncate {
        size: u64,
    },
    /// Write of `len` bytes to the rollback journal; `head` is its first `min(len, HEAD_LEN)`
    /// bytes (only writes at offset 0 matter: header start, magic, zeroed header).
    JournalWrite {
        offset: u64,
        len: u64,
        head: &'a [u8],
    },
    JournalTruncate {
        size: u64,
    },
    JournalUnlink,
    /// Write to the WAL: only where, not what (the bytes are asked for at commit time).
    WalWrite {
        offset: u64,
        len: u64,
    },
    WalTruncate {
        size: u64,
    },
    WalUnlink,
    /// `F_SETLK` read/write lock on `start..=end`.
    Lock {
        file: LockFile,
        owner: u64,
        start: u64,
        end: u64,
        kind: LockKind,
    },
    /// `F_SETLK` `F_UNLCK` on `start..=end`.
    Unlock {
        file: LockFile,
        owner: u64,
        start: u64,
        end: u64,
    },
    /// The owner closed a descriptor of the file: POSIX drops all its locks on it.
    ReleaseOwner {
        file: LockFile,
        owner: u64,
    },
}

/// A page a committed transaction changed, and where its new content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtyPage {
    pub pgno: u32,
    /// `None`: in the database file at `(pgno - 1) * page_size`. `Some(off)`: in the WAL at byte
    /// `off` (the page data of its last frame in this transaction).
    pub wal_offset: Option<u64>,
}

/// The WAL frames a transaction occupies (for the LTX header's WAL fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalRange {
    pub offset: u64,
    pub size: u64,
    pub salt1: u32,
    pub salt2: u32,
}

/// A committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub page_size: u32,
    /// Database size in pages after the transaction.
    pub commit: u32,
    /// Pages changed, ascending, all `<= commit`.
    pub pages: Vec<DirtyPage>,
    pub wal: Option<WalRange>,
}

/// What the shell must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A rollback-journal transaction committed: write its LTX before letting the triggering
    /// operation (unlink / truncate / zeroing write) complete.
    Committed(Commit),
    /// A rollback-journal transaction rolled back: SQLite restored these pages itself.
    RolledBack { pages: Vec<u32> },
    /// The WAL write lock was released: read WAL bytes `offset..offset+len` and pass them to
    /// [`Detector::wal_data`] before the unlock completes.
    ReadWal { offset: u64, len: u64 },
}

/// Operations the detector refuses (the shell turns them into an errno).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetectError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(
        "database write at offset {offset} of {len} bytes is not one aligned page of {page_size}"
    )]
    UnalignedDbWrite {
        offset: u64,
        len: u64,
        page_size: u32,
    },
    #[error("WAL write at {offset} rewinds committed frames (up to {scanned})")]
    WalRewind { offset: u64, scanned: u64 },
    #[error("database write before the page size is known")]
    PageSizeUnknown,
    #[error("database write outside a rollback-journal transaction and not in WAL mode (journal_mode OFF/MEMORY is unsupported)")]
    NoJournal,
    #[error("checkpoint lock refused while owner {writer} holds the WAL write lock")]
    CheckpointDuringWrite { writer: u64 },
    #[error("WAL bytes given at offset {given}, expected {expected}")]
    WalOffsetMismatch { given: u64, expected: u64 },
}

/// Upper bound on dirty pages tracked for one rollback-journal transaction (4 GiB of 512 B pages;
/// SQLite's maximum database is 2^32 - 2 pages).
pub const MAX_DIRTY_PAGES: usize = u32::MAX as usize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct WalState {
    header: Option<wal::WalHeader>,
    /// Running checksum at `scanned`.
    checksum: (u32, u32),
    /// Bytes of the WAL already consumed (header + committed frames). 0: header not read yet.
    scanned: u64,
    /// End of the furthest write since the WAL (re)started.
    written_end: u64,
}

/// A position in the WAL as the detector had consumed it ([`Detector::wal_mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalMark {
    wal: WalState,
    page_size: Option<u32>,
    commit: u32,
    wal_mode: bool,
}

/// Commit detector for one database (all its files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detector {
    page_size: Option<u32>,
    /// Database size in pages as of the latest page 1 seen.
    commit: u32,
    /// Page 1 says the database is in WAL mode (header bytes 18 and 19 == 2).
    wal_mode: bool,
    journal_active: bool,
    journal_magic: bool,
    dirty: BTreeSet<u32>,
    wal: WalState,
    db_locks: LockTable,
    shm_locks: LockTable,
}

/// Fields of the 100-byte database header the detector uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbHeader {
    pub page_size: u32,
    pub commit: u32,
    pub wal_mode: bool,
}

impl DbHeader {
    /// Parses a database header; `None` if `bytes` is too short or not a SQLite header.
    pub fn parse(bytes: &[u8]) -> Option<DbHeader> {
        if bytes.len() < 100 || &bytes[..16] != b"SQLite format 3\0" {
            return None;
        }
        let raw = u32::from(u16::from_be_bytes([bytes[16], bytes[17]]));
        let page_size = if raw == 1 { 65536 } else { raw };
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return None;
        }
        Some(DbHeader {
            page_size,
            commit: wal::be_u32(bytes, 28),
            wal_mode: bytes[18] == 2 && bytes[19] == 2,
        })
    }
}

impl Detector {
    /// A detector for a database whose file currently starts with `header` (None: empty file).
    pub fn new(header: Option<DbHeader>) -> Detector {
        Detector {
            page_size: header.map(|h| h.page_size),
            commit: header.map_or(0, |h| h.commit),
            wal_mode: header.is_some_and(|h| h.wal_mode),
            journal_active: false,
            journal_magic: false,
            dirty: BTreeSet::new(),
            wal: WalState::default(),
            db_locks: LockTable::new(),
            shm_locks: LockTable::new(),
        }
    }

    pub fn page_size(&self) -> Option<u32> {
        self.page_size
    }

    /// Database size in pages as last committed/seen.
    pub fn commit(&self) -> u32 {
        self.commit
    }

    /// A rollback-journal transaction is in progress (journal header written, not yet ended).
    pub fn in_journal_transaction(&self) -> bool {
        self.journal_active
    }

    pub fn locks(&self, file: LockFile) -> &LockTable {
        match file {
            LockFile::Database => &self.db_locks,
            LockFile::Shm => &self.shm_locks,
        }
    }

    /// The lock table of `file`, for the shell's own locks (a replica taking SQLite's locks
    /// around an apply, a read lock around a snapshot). Changes made here are not operations of
    /// SQLite: they never trigger commit detection, so the shell must only use an owner id no
    /// SQLite process has.
    pub fn shell_locks(&mut self, file: LockFile) -> &mut LockTable {
        self.locks_mut(file)
    }

    /// `F_GETLK`: the lock that would block `owner` taking `kind` on `start..=end`.
    pub fn query_lock(
        &self,
        file: LockFile,
        owner: u64,
        start: u64,
        end: u64,
        kind: LockKind,
    ) -> Option<locks::HeldLock> {
        self.locks(file).conflict(owner, start, end, kind)
    }

    /// Feeds one operation. On `Err` the shell must fail the operation (it did not happen).
    pub fn apply(&mut self, op: Op<'_>) -> Result<Option<Event>, DetectError> {
        match op {
            Op::DbWrite { offset, len, head } => self.db_write(offset, len, head),
            Op::DbTruncate { .. } => Ok(None),
            Op::JournalWrite { offset, len, head } => Ok(self.journal_write(offset, len, head)),
            Op::JournalTruncate { size } => {
                if size == 0 {
                    Ok(self.end_journal_transaction())
                } else {
                    Ok(None)
                }
            }
            Op::JournalUnlink => Ok(self.end_journal_transaction()),
            Op::WalWrite { offset, len } => self.wal_write(offset, len),
            Op::WalTruncate { size } => {
                self.wal.written_end = self.wal.written_end.min(size);
                if size < self.wal.scanned || size == 0 {
                    self.wal = WalState::default();
                }
                Ok(None)
            }
            Op::WalUnlink => {
                self.wal = WalState::default();
                Ok(None)
            }
            Op::Lock {
                file,
                owner,
                start,
                end,
                kind,
            } => {
                if file == LockFile::Shm
                    && kind == LockKind::Write
                    && start <= SHM_CKPT_LOCK
                    && SHM_CKPT_LOCK <= end
                {
                    if let Some(writer) = self.shm_locks.write_holder(SHM_WRITE_LOCK) {
                        if writer != owner {
                            return Err(DetectError::CheckpointDuringWrite { writer });
                        }
                    }
                }
                let writer_before = self.wal_writer();
                self.locks_mut(file).lock(owner, start, end, kind)?;
                Ok(self.after_lock_change(writer_before))
            }
            Op::Unlock {
                file,
                owner,
                start,
                end,
            } => {
                let writer_before = self.wal_writer();
                self.locks_mut(file).unlock(owner, start, end);
                Ok(self.after_lock_change(writer_before))
            }
            Op::ReleaseOwner { file, owner } => {
                let writer_before = self.wal_writer();
                self.locks_mut(file).release_owner(owner);
                Ok(self.after_lock_change(writer_before))
            }
        }
    }

    /// WAL frames written since the last commit the detector consumed, as the read to ask for
    /// ([`Event::ReadWal`]) — for a shell that records a commit as soon as its commit frame is
    /// written (before SQLite publishes it in the WAL index) instead of at the unlock. `None`
    /// when nothing new was written.
    pub fn unread_wal(&self) -> Option<Event> {
        (self.wal.written_end > self.wal.scanned).then(|| Event::ReadWal {
            offset: self.wal.scanned,
            len: self.wal.written_end - self.wal.scanned,
        })
    }

    /// Where consumed WAL frames end now; [`Detector::rewind_wal`] returns to it.
    pub fn wal_mark(&self) -> WalMark {
        WalMark {
            wal: self.wal,
            page_size: self.page_size,
            commit: self.commit,
            wal_mode: self.wal_mode,
        }
    }

    /// Forgets the commits [`Detector::wal_data`] found since `mark`: the shell could not record
    /// them and made SQLite's write fail, so SQLite never published them and will write its
    /// next transaction's frames over theirs. What was written stays known as written.
    pub fn rewind_wal(&mut self, mark: WalMark) {
        let written_end = self.wal.written_end;
        self.wal = mark.wal;
        self.wal.written_end = written_end.max(mark.wal.written_end);
        self.page_size = mark.page_size;
        self.commit = mark.commit;
        self.wal_mode = mark.wal_mode;
    }

    /// The WAL bytes asked for by [`Event::ReadWal`] (fewer if the file is shorter). Returns one
    /// [`Commit`] per commit frame found; frames after the last commit frame are left for later.
    pub fn wal_data(&mut self, offset: u64, data: &[u8]) -> Result<Vec<Commit>, DetectError> {
        if offset != self.wal.scanned {
            return Err(DetectError::WalOffsetMismatch {
                given: offset,
                expected: self.wal.scanned,
            });
        }
        let mut at = 0usize;
        if self.wal.scanned == 0 {
            let Ok(header) = wal::parse_header(data) else {
                return Ok(Vec::new());
            };
            self.wal.header = Some(header);
            self.wal.checksum = header.checksum;
            self.wal.scanned = wal::WAL_HEADER_SIZE as u64;
            at = wal::WAL_HEADER_SIZE;
        }
        let Some(header) = self.wal.header else {
            return Ok(Vec::new());
        };
        let frame_len = wal::WAL_FRAME_HEADER_SIZE + header.page_size as usize;
        let mut commits = Vec::new();
        let mut pending: BTreeMap<u32, u64> = BTreeMap::new();
        let mut tx_start = self.wal.scanned;
        let mut checksum = self.wal.checksum;
        // Bounded by data.len() / frame_len iterations.
        while at + frame_len <= data.len() {
            let frame = &data[at..at + frame_len];
            let Some((frame_header, next)) = wal::verify_frame(&header, frame, checksum) else {
                break;
            };
            checksum = next;
            let frame_offset = offset + at as u64;
            pending.insert(
                frame_header.pgno,
                frame_offset + wal::WAL_FRAME_HEADER_SIZE as u64,
            );
            at += frame_len;
            if frame_header.commit != 0 {
                let end = offset + at as u64;
                let pages = pending
                    .iter()
                    .filter(|(pgno, _)| **pgno <= frame_header.commit)
                    .map(|(pgno, off)| DirtyPage {
                        pgno: *pgno,
                        wal_offset: Some(*off),
                    })
                    .collect();
                commits.push(Commit {
                    page_size: header.page_size,
                    commit: frame_header.commit,
                    pages,
                    wal: Some(WalRange {
                        offset: tx_start,
                        size: end - tx_start,
                        salt1: header.salt1,
                        salt2: header.salt2,
                    }),
                });
                pending.clear();
                tx_start = end;
                self.wal.scanned = end;
                self.wal.checksum = checksum;
                self.page_size = Some(header.page_size);
                self.commit = frame_header.commit;
                self.wal_mode = true;
            }
        }
        Ok(commits)
    }

    fn locks_mut(&mut self, file: LockFile) -> &mut LockTable {
        match file {
            LockFile::Database => &mut self.db_locks,
            LockFile::Shm => &mut self.shm_locks,
        }
    }

    fn wal_writer(&self) -> Option<u64> {
        self.shm_locks.write_holder(SHM_WRITE_LOCK)
    }

    fn after_lock_change(&self, writer_before: Option<u64>) -> Option<Event> {
        let writer_after = self.wal_writer();
        if writer_before.is_none() || writer_after == writer_before {
            return None;
        }
        self.unread_wal()
    }

    fn db_write(
        &mut self,
        offset: u64,
        len: u64,
        head: &[u8],
    ) -> Result<Option<Event>, DetectError> {
        if offset == 0 {
            if let Some(header) = DbHeader::parse(head) {
                self.page_size = Some(header.page_size);
                if self.journal_active {
                    self.commit = header.commit;
                }
                self.wal_mode = header.wal_mode;
            }
        }
        let page_size = self.page_size.ok_or(DetectError::PageSizeUnknown)?;
        if offset % u64::from(page_size) != 0 || len != u64::from(page_size) {
            return Err(DetectError::UnalignedDbWrite {
                offset,
                len,
                page_size,
            });
        }
        if self.journal_active {
            let pgno = offset / u64::from(page_size) + 1;
            let pgno = u32::try_from(pgno).map_err(|_| DetectError::UnalignedDbWrite {
                offset,
                len,
                page_size,
            })?;
            if self.dirty.len() >= MAX_DIRTY_PAGES {
                return Err(DetectError::NoJournal);
            }
            self.dirty.insert(pgno);
            return Ok(None);
        }
        if self.wal_mode {
            // A checkpoint copying committed WAL frames back: no logical change.
            return Ok(None);
        }
        Err(DetectError::NoJournal)
    }

    fn journal_write(&mut self, offset: u64, len: u64, head: &[u8]) -> Option<Event> {
        if offset != 0 || head.is_empty() {
            return None;
        }
        // A header write that begins a transaction is a whole sector (>= 512 bytes) with the page
        // size at offset 24; PERSIST mode ends a transaction by writing 28 zero bytes.
        if len < 512 && head.iter().all(|b| *b == 0) {
            return self.end_journal_transaction();
        }
        self.journal_active = true;
        self.journal_magic = head.len() >= 8 && head[..8] == JOURNAL_MAGIC;
        if head.len() >= 28 {
            let page_size = wal::be_u32(head, 24);
            if (512..=65536).contains(&page_size) && page_size.is_power_of_two() {
                self.page_size = Some(page_size);
            }
        }
        None
    }

    fn end_journal_transaction(&mut self) -> Option<Event> {
        if !self.journal_active {
            return None;
        }
        let committed = self.journal_magic;
        self.journal_active = false;
        self.journal_magic = false;
        let dirty = std::mem::take(&mut self.dirty);
        if !committed {
            return if dirty.is_empty() {
                None
            } else {
                Some(Event::RolledBack {
                    pages: dirty.into_iter().collect(),
                })
            };
        }
        if dirty.is_empty() {
            return None;
        }
        let page_size = self.page_size?;
        let pages = dirty
            .into_iter()
            .filter(|pgno| *pgno <= self.commit)
            .map(|pgno| DirtyPage {
                pgno,
                wal_offset: None,
            })
            .collect();
        Some(Event::Committed(Commit {
            page_size,
            commit: self.commit,
            pages,
            wal: None,
        }))
    }

    fn wal_write(&mut self, offset: u64, len: u64) -> Result<Option<Event>, DetectError> {
        if offset == 0 {
            // A new WAL generation (first write or restart after a full checkpoint).
            self.wal = WalState {
                written_end: len,
                ..WalState::default()
            };
            return Ok(None);
        }
        if offset < self.wal.scanned {
            // Rewriting committed frames would break the LTX/WAL correspondence (LiteFS #233).
            return Err(DetectError::WalRewind {
                offset,
                scanned: self.wal.scanned,
            });
        }
        self.wal.written_end = self.wal.written_end.max(offset + len);
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
