//! A simulated disk per node: files and database page files with a page-cache/durable split.
//!
//! Writes land in the "current" state at once (what a reader of the file sees) and become durable
//! only at fsync. A crash reverts everything written since the last fsync of that file, except
//! that a torn-write fault keeps a prefix of the last unsynced write. Injected faults make the
//! next commands fail with EIO or ENOSPC (changing nothing). Deletes are durable at once
//! (a journaled unlink).
//!
//! This module decides nothing about when faults happen; the world arms them.

use std::collections::BTreeMap;

use ltxfs_core::ltx::checksum;

use crate::machine::{DbId, FilePath, IoError, IoKind, IoValue, LtxMerge};

#[derive(Debug, Clone, Default)]
struct FileState {
    data: Vec<u8>,
    /// Durable content before the first unsynced write, if any write is unsynced.
    undo: Option<Option<Vec<u8>>>,
}

/// The files of a disk: LTX files per database directory keyed by their TXID range (a lookup
/// compares two integers per step, where a map keyed by whole paths compares paths; a node
/// holds a few hundred LTX files and looks one up on every write, fsync and delete), other
/// files by path.
#[derive(Debug, Clone, Default)]
struct Files {
    ltx: BTreeMap<DbId, LtxFiles>,
    other: BTreeMap<String, FileState>,
}

/// One database's LTX files by TXID range, ascending, in a double-ended queue searched by
/// bisection: files are written newest-last and deleted oldest-first (retention), which are
/// pushes and pops at the ends, where a B-tree map moves entries within nodes and allocates and
/// frees them. Behaves as an ordered map.
#[derive(Debug, Clone, Default)]
struct LtxFiles {
    files: std::collections::VecDeque<((u64, u64), FileState)>,
}

impl LtxFiles {
    fn find(&self, range: &(u64, u64)) -> Result<usize, usize> {
        // The file written or synced is usually the newest (or a new one past it).
        match self.files.back() {
            None => Err(0),
            Some((last, _)) if last == range => Ok(self.files.len() - 1),
            Some((last, _)) if last < range => Err(self.files.len()),
            Some(_) => self.files.binary_search_by(|(r, _)| r.cmp(range)),
        }
    }

    fn get(&self, range: &(u64, u64)) -> Option<&FileState> {
        self.find(range).ok().map(|at| &self.files[at].1)
    }

    fn get_mut(&mut self, range: &(u64, u64)) -> Option<&mut FileState> {
        self.find(range).ok().map(|at| &mut self.files[at].1)
    }

    /// Puts `file` at `range`, returning the one it replaces.
    fn insert(&mut self, range: (u64, u64), file: FileState) -> Option<FileState> {
        match self.find(&range) {
            Ok(at) => Some(std::mem::replace(&mut self.files[at].1, file)),
            Err(at) => {
                self.files.insert(at, (range, file));
                None
            }
        }
    }

    fn remove(&mut self, range: &(u64, u64)) -> Option<FileState> {
        if self.files.front().is_some_and(|(first, _)| first == range) {
            return self.files.pop_front().map(|(_, f)| f);
        }
        let at = self.find(range).ok()?;
        self.files.remove(at).map(|(_, f)| f)
    }

    fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = (&(u64, u64), &FileState)> {
        self.files.iter().map(|(r, f)| (r, f))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&(u64, u64), &mut FileState)> {
        self.files.iter_mut().map(|(r, f)| (&*r, f))
    }
}

impl Files {
    fn get(&self, path: &FilePath) -> Option<&FileState> {
        match path {
            FilePath::Ltx { min_txid, max_txid, db } => self.ltx.get(db)?.get(&(*min_txid, *max_txid)),
            FilePath::Other(path) => self.other.get(path),
        }
    }

    fn get_mut(&mut self, path: &FilePath) -> Option<&mut FileState> {
        match path {
            FilePath::Ltx { min_txid, max_txid, db } => self.ltx.get_mut(db)?.get_mut(&(*min_txid, *max_txid)),
            FilePath::Other(path) => self.other.get_mut(path),
        }
    }

    fn insert(&mut self, path: &FilePath, file: FileState) -> Option<FileState> {
        match path {
            FilePath::Ltx { min_txid, max_txid, db } => {
                if !self.ltx.contains_key(db) {
                    self.ltx.insert(db.clone(), LtxFiles::default());
                }
                self.ltx.get_mut(db).expect("inserted above").insert((*min_txid, *max_txid), file)
            }
            FilePath::Other(path) => self.other.insert(path.clone(), file),
        }
    }

    fn remove(&mut self, path: &FilePath) -> Option<FileState> {
        match path {
            FilePath::Ltx { min_txid, max_txid, db } => {
                let files = self.ltx.get_mut(db)?;
                let removed = files.remove(&(*min_txid, *max_txid));
                if files.is_empty() {
                    self.ltx.remove(db);
                }
                removed
            }
            FilePath::Other(path) => self.other.remove(path),
        }
    }

    /// Every file with its path, in path order (as a map keyed by [`FilePath`] lists them).
    fn sorted(&self) -> Vec<(FilePath, &FileState)> {
        let ltx = self.ltx.iter().flat_map(|(db, files)| files.iter().map(|(&(min, max), f)| (FilePath::ltx(db.clone(), min, max), f)));
        let mut all: Vec<(FilePath, &FileState)> = ltx.chain(self.other.iter().map(|(p, f)| (FilePath::Other(p.clone()), f))).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Visits every file mutably, in no particular order.
    fn for_each_mut(&mut self, mut visit: impl FnMut(FilePath, &mut FileState)) {
        for (db, files) in &mut self.ltx {
            for (&(min, max), file) in files.iter_mut() {
                visit(FilePath::ltx(db.clone(), min, max), file);
            }
        }
        for (path, file) in &mut self.other {
            visit(FilePath::Other(path.clone()), file);
        }
    }
}

/// One database page: its bytes and their LTX page checksum (CRC-64 of page number and bytes),
/// computed once when the page is written. A page never changes after that (a write makes a new
/// `Page`; undo and crash move old ones back), so the stored checksum always belongs to the
/// bytes, and recomputing a database's checksum XORs stored page checksums instead of hashing
/// every page again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    data: Vec<u8>,
    checksum: u64,
}

impl Page {
    pub fn new(pgno: u32, data: Vec<u8>) -> Page {
        let checksum = checksum::page_checksum(pgno, &data);
        Page { data, checksum }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data
    }
}

/// A database file's pages by page number, in a vector indexed by page number: a simulated
/// database holds a few hundred pages at most, numbered from 1 without large gaps, and its
/// pages are looked up on every write and every checksum. The vector never ends in an empty
/// slot, so two maps holding the same pages are equal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageMap {
    slots: Vec<Option<Page>>,
}

impl PageMap {
    pub fn get(&self, pgno: &u32) -> Option<&Page> {
        self.slots.get(*pgno as usize).and_then(Option::as_ref)
    }

    /// Puts `page` at `pgno`, returning the page it replaces.
    pub fn insert(&mut self, pgno: u32, page: Page) -> Option<Page> {
        let at = pgno as usize;
        if at >= self.slots.len() {
            self.slots.resize_with(at + 1, || None);
        }
        self.slots[at].replace(page)
    }

    pub fn remove(&mut self, pgno: &u32) -> Option<Page> {
        let old = self.slots.get_mut(*pgno as usize).and_then(Option::take);
        while matches!(self.slots.last(), Some(None)) {
            self.slots.pop();
        }
        old
    }

    /// The page numbers present from `from` on, ascending.
    pub fn pgnos_from(&self, from: u32) -> impl Iterator<Item = u32> + '_ {
        let start = (from as usize).min(self.slots.len());
        self.slots[start..].iter().enumerate().filter(|(_, p)| p.is_some()).map(move |(i, _)| (start + i) as u32)
    }

    /// The pages numbered `1..=last`, ascending.
    pub fn up_to(&self, last: u32) -> impl Iterator<Item = (u32, &Page)> + '_ {
        let end = (last as usize).saturating_add(1).min(self.slots.len());
        self.slots[..end].iter().enumerate().skip(1).filter_map(|(i, p)| p.as_ref().map(|p| (i as u32, p)))
    }
}

/// The durable value of each page changed since the last fsync (None = absent), by page number:
/// a sorted vector, since a database has a few dozen pages and a commit changes a few of them
/// (a map would allocate a node after every sync). Iterates in page order, as a map does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UndoPages {
    entries: Vec<(u32, Option<Page>)>,
}

impl UndoPages {
    fn find(&self, pgno: u32) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&pgno, |(p, _)| *p)
    }

    pub fn get(&self, pgno: u32) -> Option<&Option<Page>> {
        self.find(pgno).ok().map(|at| &self.entries[at].1)
    }

    /// Records `old` as the durable value of `pgno` unless one is recorded already.
    pub fn insert_if_absent(&mut self, pgno: u32, old: Option<Page>) {
        if let Err(at) = self.find(pgno) {
            self.entries.insert(at, (pgno, old));
        }
    }

    /// Records `value` as the durable value of `pgno`, replacing any.
    pub fn insert(&mut self, pgno: u32, value: Option<Page>) {
        match self.find(pgno) {
            Ok(at) => self.entries[at].1 = value,
            Err(at) => self.entries.insert(at, (pgno, value)),
        }
    }

    pub fn remove(&mut self, pgno: u32) -> Option<Option<Page>> {
        self.find(pgno).ok().map(|at| self.entries.remove(at).1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets every entry, keeping the vector's room.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Takes every entry out, in page order, keeping the vector's room.
    pub fn drain(&mut self) -> std::vec::Drain<'_, (u32, Option<Page>)> {
        self.entries.drain(..)
    }
}

/// Every entry, in page order.
impl IntoIterator for UndoPages {
    type Item = (u32, Option<Page>);
    type IntoIter = std::vec::IntoIter<(u32, Option<Page>)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

/// A database file as pages (1-based page numbers).
#[derive(Debug, Clone, Default)]
pub struct DbFile {
    pub page_size: u32,
    pub commit: u32,
    pub pages: PageMap,
    /// Durable value of every page changed since the last fsync (None = absent), and the
    /// durable commit size.
    undo_pages: UndoPages,
    undo_commit: Option<u32>,
    /// [`DbFile::checksum`] as the file is now, kept by [`SimDisk::db_checksum`] on first use
    /// after a change (every `SimDisk` method that changes a database's pages or size forgets
    /// it): reads and the recomputation check ask far more often than databases change.
    cached_checksum: std::cell::Cell<Option<u64>>,
}

/// Equal contents (the cached checksum is not content).
impl PartialEq for DbFile {
    fn eq(&self, other: &DbFile) -> bool {
        (self.page_size, self.commit, &self.pages, &self.undo_pages, self.undo_commit)
            == (other.page_size, other.commit, &other.pages, &other.undo_pages, other.undo_commit)
    }
}

impl Eq for DbFile {}

impl DbFile {
    /// The database checksum of what a reader sees now (lock page and pages past `commit`
    /// excluded; missing pages read as zeros): the XOR of the page checksums of pages
    /// `1..=commit` ([`Page`] holds each page's, computed from its bytes when written).
    pub fn checksum(&self) -> u64 {
        if self.commit == 0 {
            return checksum::CHECKSUM_EMPTY;
        }
        // A file whose page size was never set cannot hold pages; use the smallest size.
        let page_size = if self.page_size.is_power_of_two() { self.page_size } else { 512 };
        let lock = checksum::lock_pgno(page_size);
        let mut zero: Option<Vec<u8>> = None;
        let mut sum = checksum::DbChecksum::new();
        for pgno in 1..=self.commit {
            if pgno == lock {
                continue;
            }
            let page_sum = match self.pages.get(&pgno) {
                Some(page) => page.checksum,
                None => checksum::page_checksum(pgno, zero.get_or_insert_with(|| vec![0u8; page_size as usize])),
            };
            sum.toggle(page_sum);
        }
        sum.value()
    }

    /// The file as a reader sees it: `commit` pages, missing ones as zeros.
    pub fn image(&self) -> Vec<u8> {
        let page_size = self.page_size as usize;
        if self.commit == 0 {
            return Vec::new();
        }
        let mut image = vec![0u8; page_size * self.commit as usize];
        for (pgno, page) in self.pages.up_to(self.commit) {
            let at = (pgno as usize - 1) * page_size;
            image[at..at + page_size].copy_from_slice(&page.data);
        }
        image
    }
}

/// What [`SimDisk::write_pages_undoable`] changed: the file's sizes before, and per touched page
/// its old content and old durable-undo entry.
#[derive(Debug, Clone)]
pub struct DbUndo {
    db: DbId,
    /// (page size, commit, durable commit) before; `None`: the file did not exist.
    file: Option<(u32, u32, Option<u32>)>,
    touched: Vec<(u32, Touched)>,
    last_unsynced: Option<Unsynced>,
}

impl DbUndo {
    /// The database the write went to.
    pub fn db(&self) -> &str {
        &self.db
    }
}

/// A page's state before an undoable write.
#[derive(Debug, Clone)]
enum Touched {
    /// The page had no unsynced change: the write moved its old value (None = absent) into the
    /// durable-undo map, so undoing takes it back from there instead of keeping a copy.
    WasSynced,
    /// The page had an unsynced change: its value and its durable value then (None = absent).
    Unsynced { page: Option<Page>, durable: Option<Page> },
}

/// The target of the most recent unsynced write (the one a torn-write fault tears).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Unsynced {
    File(FilePath),
    /// A database, by the disk's own shared name for it (a reference count, not a copy).
    Db(DbId),
}

/// Which fault the next command meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskFault {
    Eio,
    Enospc,
    /// The last unsynced write before a crash is torn.
    TornWrite,
}

#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    files: Files,
    /// Database files by name; the keys are the shared names the disk hands out again (in
    /// [`DbUndo`] and as the last unsynced target), so a local commit allocates no name.
    dbs: BTreeMap<DbId, DbFile>,
    /// Commands still to fail with an injected error.
    failing: Option<(DiskFault, u32)>,
    torn_next_crash: bool,
    /// The most recent unsynced write, for tearing.
    last_unsynced: Option<Unsynced>,
}

impl SimDisk {
    pub fn file(&self, path: &FilePath) -> Option<&[u8]> {
        self.files.get(path).map(|f| f.data.as_slice())
    }

    /// Every file with its content, in path order.
    pub fn files(&self) -> Vec<(FilePath, &[u8])> {
        self.files.sorted().into_iter().map(|(path, f)| (path, f.data.as_slice())).collect()
    }

    pub fn db(&self, name: &str) -> Option<&DbFile> {
        self.dbs.get(name)
    }

    pub fn dbs(&self) -> impl Iterator<Item = (&DbId, &DbFile)> {
        self.dbs.iter()
    }

    /// The checksum of what a reader of database `name` sees now ([`DbFile::checksum`]; the
    /// empty database's if the file does not exist).
    pub fn db_checksum(&self, name: &str) -> u64 {
        let Some(file) = self.dbs.get(name) else { return checksum::CHECKSUM_EMPTY };
        if let Some(sum) = file.cached_checksum.get() {
            debug_assert_eq!(sum, file.checksum(), "cached checksum of {name} is stale");
            return sum;
        }
        let sum = file.checksum();
        file.cached_checksum.set(Some(sum));
        sum
    }

    /// Arms a fault: EIO/ENOSPC for the next `count` commands, or a torn write at the next crash.
    pub fn arm(&mut self, fault: DiskFault, count: u32) {
        match fault {
            DiskFault::TornWrite => self.torn_next_crash = true,
            _ => self.failing = Some((fault, count.max(1))),
        }
    }

    /// Stops every armed fault (healing).
    pub fn disarm(&mut self) {
        self.failing = None;
        self.torn_next_crash = false;
    }

    /// Whether the next command fails, consuming one armed failure.
    pub fn take_failure(&mut self) -> Option<IoError> {
        let (fault, count) = self.failing?;
        self.failing = if count > 1 { Some((fault, count - 1)) } else { None };
        Some(match fault {
            DiskFault::Enospc => IoError::Enospc,
            _ => IoError::Eio,
        })
    }

    /// Carries out the write phase of a command (visible, not yet durable). Reads happen at
    /// completion ([`SimDisk::read`]).
    pub fn write(&mut self, kind: &IoKind) -> Result<IoValue, IoError> {
        self.write_taking(&mut kind.clone())
    }

    /// [`SimDisk::write`] that moves a file write's bytes out of `kind` instead of copying them
    /// (its `data` is empty afterwards; the world needs only the rest of a command to complete
    /// it).
    pub fn write_taking(&mut self, kind: &mut IoKind) -> Result<IoValue, IoError> {
        match kind {
            IoKind::WriteFile { path, data, atomic, .. } => {
                let data = std::mem::take(data);
                match self.files.get_mut(path) {
                    Some(file) => {
                        let old = std::mem::replace(&mut file.data, data);
                        // The durable content is the one before the first unsynced write.
                        if file.undo.is_none() {
                            file.undo = Some(Some(old));
                        }
                    }
                    None => {
                        self.files.insert(path, FileState { data, undo: Some(None) });
                    }
                }
                // A temp file renamed into place is never torn.
                self.last_unsynced = if *atomic { None } else { Some(Unsynced::File(path.clone())) };
                Ok(IoValue::Done)
            }
            IoKind::WritePages { db, page_size, commit, pages, .. } => {
                let pages = std::mem::take(pages).into_iter().map(|(pgno, data)| (pgno, Page::new(pgno, data)));
                self.put_pages(db, *page_size, *commit, pages);
                Ok(IoValue::Done)
            }
            IoKind::DeleteFiles { paths } => {
                for path in paths {
                    self.files.remove(path);
                }
                Ok(IoValue::Done)
            }
            IoKind::ReadFiles { .. } | IoKind::ReadDb { .. } => Ok(IoValue::Done),
        }
    }

    /// The write phase of an LTX file write the world decided to merge ([`LtxMerge::Try`]): if
    /// the newest LTX file of its database (`prev`, `pmin..pmax`) is durable, starts after TXID 1
    /// (not a snapshot), ends right before the written one-transaction file (`pmax + 1 = min`, no
    /// file reaching `min` or later), spans fewer than `txids_max` TXIDs and `merge(prev, data)`
    /// succeeds (it continues `prev`'s chain), the merged file `pmin..max` is written (atomically,
    /// like every LTX file: unsynced until the command's fsync, never torn) and the command
    /// becomes [`LtxMerge::Stored`], naming the merged file. `prev` stays until the command
    /// completes (the world unlinks it then): a crash before the merged file is durable leaves
    /// `prev` alone, one after it and before the unlink leaves both. Returns false, changing
    /// nothing, when it does not merge (the caller then writes the command as it is).
    pub fn write_merged(&mut self, kind: &mut IoKind, merge: impl FnOnce(&[u8], &[u8]) -> Option<Vec<u8>>) -> bool {
        let IoKind::WriteFile { path, data, merge: how, .. } = kind else { return false };
        let (&LtxMerge::Try { txids_max }, FilePath::Ltx { min_txid, max_txid, db }) = (&*how, &*path) else { return false };
        let (min_txid, max_txid) = (*min_txid, *max_txid);
        if min_txid != max_txid {
            return false;
        }
        let Some(files) = self.files.ltx.get(db) else { return false };
        let Some(((pmin, pmax), prev)) = files.files.back() else { return false };
        let (pmin, pmax) = (*pmin, *pmax);
        let fits = pmin > 1
            && pmax.checked_add(1) == Some(min_txid)
            && pmax - pmin + 1 < txids_max
            && prev.undo.is_none()
            && files.iter().all(|((_, max), _)| *max < min_txid);
        if !fits {
            return false;
        }
        let Some(merged) = merge(&prev.data, data) else { return false };
        let db = db.clone();
        let merged_path = FilePath::ltx(db.clone(), pmin, max_txid);
        let replaced = FilePath::ltx(db, pmin, pmax);
        let old = self.files.insert(&merged_path, FileState { data: merged, undo: Some(None) });
        assert!(old.is_none(), "no file reaches the merged file's last TXID");
        // Written to a temporary name and renamed into place: never torn.
        self.last_unsynced = None;
        *data = Vec::new();
        *path = merged_path;
        *how = LtxMerge::Stored { min_txid: pmin, replaced };
        true
    }

    /// Whether an LTX file of `db` ending at `max_txid` exists with content a crash would lose.
    pub fn is_ltx_unsynced(&self, db: &DbId, max_txid: u64) -> bool {
        self.files.ltx.get(db).is_some_and(|files| files.iter().any(|((_, max), f)| *max == max_txid && f.undo.is_some()))
    }

    /// Removes a file (a journaled unlink: durable at once).
    pub fn remove_file(&mut self, path: &FilePath) {
        self.files.remove(path);
    }

    /// Writes pages into a database file without syncing (what SQLite does through the mount
    /// before its commit point, and the first half of a replica's apply).
    pub fn write_pages(&mut self, db: &str, page_size: u32, commit: u32, pages: &[(u32, Vec<u8>)]) {
        self.put_pages(db, page_size, commit, pages.iter().map(|(pgno, data)| (*pgno, Page::new(*pgno, data.clone()))));
    }

    /// [`SimDisk::write_pages`] of pages already made.
    fn put_pages(&mut self, db: &str, page_size: u32, commit: u32, pages: impl IntoIterator<Item = (u32, Page)>) {
        if !self.dbs.contains_key(db) {
            self.dbs.insert(DbId::from(db), DbFile::default());
        }
        let file = self.dbs.get_mut(db).expect("inserted above");
        file.cached_checksum.set(None);
        file.page_size = page_size;
        if file.undo_commit.is_none() {
            file.undo_commit = Some(file.commit);
        }
        for (pgno, page) in pages {
            let old = file.pages.insert(pgno, page);
            file.undo_pages.insert_if_absent(pgno, old);
        }
        file.commit = commit;
        // Bounded by the pages the file holds past the new end.
        let past_end: Vec<u32> = file.pages.pgnos_from(commit.saturating_add(1)).collect();
        for pgno in past_end {
            let old = file.pages.remove(&pgno);
            file.undo_pages.insert_if_absent(pgno, old);
        }
        if !self.is_last_unsynced_db(db) {
            self.last_unsynced = Some(Unsynced::Db(self.shared_name(db)));
        }
    }

    /// The read phase of a read command, at its completion.
    pub fn read(&self, kind: &IoKind) -> Result<IoValue, IoError> {
        match kind {
            IoKind::ReadFiles { paths } => {
                let files: Option<Vec<Vec<u8>>> = paths.iter().map(|p| self.file(p).map(<[u8]>::to_vec)).collect();
                files.map(IoValue::Files).ok_or(IoError::NotFound)
            }
            IoKind::ReadDb { db } => Ok(IoValue::Data(self.db(db).map(DbFile::image).unwrap_or_default())),
            _ => Ok(IoValue::Done),
        }
    }

    /// Makes the command's target durable (if it asks for fsync).
    pub fn fsync(&mut self, kind: &IoKind) {
        match kind {
            IoKind::WriteFile { path, fsync: true, .. } => {
                if let Some(file) = self.files.get_mut(path) {
                    file.undo = None;
                }
                if matches!(&self.last_unsynced, Some(Unsynced::File(last)) if last == path) {
                    self.last_unsynced = None;
                }
            }
            IoKind::WritePages { db, fsync: true, .. } => self.sync_db(db),
            _ => {}
        }
    }

    /// The disk's shared name of database `db` (a new one if the disk has no such database).
    fn shared_name(&self, db: &str) -> DbId {
        match self.dbs.get_key_value(db) {
            Some((name, _)) => name.clone(),
            None => DbId::from(db),
        }
    }

    /// Whether the most recent unsynced write is to database `db`.
    fn is_last_unsynced_db(&self, db: &str) -> bool {
        matches!(&self.last_unsynced, Some(Unsynced::Db(last)) if **last == *db)
    }

    /// Makes every change of database `db` durable.
    pub fn sync_db(&mut self, db: &str) {
        if let Some(file) = self.dbs.get_mut(db) {
            file.undo_pages.clear();
            file.undo_commit = None;
        }
        if self.is_last_unsynced_db(db) {
            self.last_unsynced = None;
        }
    }

    /// Reverts every unsynced change of database `db` (SQLite rolling back from its journal).
    pub fn rollback_db(&mut self, db: &str) {
        if let Some(file) = self.dbs.get_mut(db) {
            file.cached_checksum.set(None);
            for (pgno, old) in file.undo_pages.drain() {
                match old {
                    Some(data) => {
                        file.pages.insert(pgno, data);
                    }
                    None => {
                        file.pages.remove(&pgno);
                    }
                }
            }
            if let Some(commit) = file.undo_commit.take() {
                file.commit = commit;
            }
        }
        if self.is_last_unsynced_db(db) {
            self.last_unsynced = None;
        }
    }

    /// [`SimDisk::write_pages`], remembering just enough to undo it exactly with
    /// [`SimDisk::undo_pages`]: the old value of each page it changes, not the whole file
    /// (a local commit costs O(dirty pages), not O(database)).
    pub fn write_pages_undoable(&mut self, db: &str, page_size: u32, commit: u32, pages: &[(u32, Vec<u8>)]) -> DbUndo {
        // Room for the usual case: the written pages are all the pages it touches.
        let touched = Vec::with_capacity(pages.len());
        let mut undo = DbUndo { db: self.shared_name(db), file: None, touched, last_unsynced: self.last_unsynced.clone() };
        if let Some(f) = self.dbs.get(db) {
            undo.file = Some((f.page_size, f.commit, f.undo_commit));
            let changed = pages.iter().map(|(pgno, _)| *pgno).chain(f.pages.pgnos_from(commit.saturating_add(1)));
            for pgno in changed {
                let touched = match f.undo_pages.get(pgno) {
                    None => Touched::WasSynced,
                    Some(durable) => Touched::Unsynced { page: f.pages.get(&pgno).cloned(), durable: durable.clone() },
                };
                undo.touched.push((pgno, touched));
            }
        }
        self.write_pages(db, page_size, commit, pages);
        undo
    }

    /// Puts a database back exactly as it was before the write `undo` came from (SQLite rolling
    /// back a commit the node refused on the spot).
    pub fn undo_pages(&mut self, undo: DbUndo) {
        match undo.file {
            None => {
                self.dbs.remove(&*undo.db);
            }
            Some((page_size, commit, undo_commit)) => {
                let f = self.dbs.get_mut(&*undo.db).expect("a written database exists");
                f.cached_checksum.set(None);
                f.page_size = page_size;
                f.commit = commit;
                f.undo_commit = undo_commit;
                // Latest first, so a page captured twice ends at its first (oldest) value (both
                // captures of a page are of the same kind: all are taken before the write).
                for (pgno, touched) in undo.touched.into_iter().rev() {
                    let (page, durable) = match touched {
                        // The write left the old value as the durable one; a second capture of
                        // the same page finds it taken already.
                        Touched::WasSynced => match f.undo_pages.remove(pgno) {
                            Some(old) => (old, None),
                            None => continue,
                        },
                        Touched::Unsynced { page, durable } => (page, Some(durable)),
                    };
                    match page {
                        Some(data) => f.pages.insert(pgno, data),
                        None => f.pages.remove(&pgno),
                    };
                    if let Some(value) = durable {
                        f.undo_pages.insert(pgno, value);
                    }
                }
            }
        }
        self.last_unsynced = undo.last_unsynced;
    }

    /// Whether `path` exists with content that a crash would lose.
    pub fn is_unsynced(&self, path: &FilePath) -> bool {
        self.files.get(path).is_some_and(|f| f.undo.is_some())
    }

    /// Power loss: everything unsynced is lost; a torn-write fault keeps half of the last
    /// unsynced write (a prefix of a file, or the lower half of the changed pages).
    pub fn crash(&mut self) {
        let torn = if self.torn_next_crash { self.last_unsynced.take() } else { None };
        self.torn_next_crash = false;
        self.last_unsynced = None;
        let mut removed = Vec::new();
        self.files.for_each_mut(|path, file| {
            if let Some(undo) = file.undo.take() {
                if matches!(&torn, Some(Unsynced::File(last)) if *last == path) {
                    let keep = file.data.len() / 2;
                    file.data.truncate(keep);
                } else {
                    match undo {
                        Some(data) => file.data = data,
                        None => removed.push(path),
                    }
                }
            }
        });
        for path in removed {
            self.files.remove(&path);
        }
        for (name, file) in self.dbs.iter_mut() {
            file.cached_checksum.set(None);
            let undo = std::mem::take(&mut file.undo_pages);
            let tear = matches!(&torn, Some(Unsynced::Db(last)) if last == name);
            let keep_count = if tear { undo.len() / 2 } else { 0 };
            for (index, (pgno, old)) in undo.into_iter().enumerate() {
                if index < keep_count {
                    continue;
                }
                match old {
                    Some(data) => {
                        file.pages.insert(pgno, data);
                    }
                    None => {
                        file.pages.remove(&pgno);
                    }
                }
            }
            if let Some(commit) = file.undo_commit.take() {
                if !tear {
                    file.commit = commit;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The LTX file queue answers as a B-tree map does, whatever the order of writes and deletes.
    #[test]
    fn ltx_files_behave_as_an_ordered_map() {
        let mut ours = LtxFiles::default();
        let mut map: BTreeMap<(u64, u64), FileState> = BTreeMap::new();
        let mut state = 7u64;
        for step in 0..4_000u64 {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let r = state >> 33;
            // Mostly appends and oldest-first deletes, sometimes anywhere.
            let key = match r % 4 {
                0 | 1 => (step, step),
                2 => map.keys().next().copied().unwrap_or((1, 1)),
                _ => ((r >> 8) % 64, (r >> 16) % 64),
            };
            let file = FileState { data: vec![(step % 251) as u8], undo: None };
            if r % 3 == 0 {
                assert_eq!(ours.remove(&key).map(|f| f.data), map.remove(&key).map(|f| f.data));
            } else {
                assert_eq!(ours.insert(key, file.clone()).map(|f| f.data), map.insert(key, file).map(|f| f.data));
            }
            assert_eq!(ours.get(&key).map(|f| &f.data), map.get(&key).map(|f| &f.data));
            assert_eq!(ours.is_empty(), map.is_empty());
        }
        assert!(ours.iter().map(|(k, f)| (*k, f.data.clone())).eq(map.iter().map(|(k, f)| (*k, f.data.clone()))));
        assert!(map.len() > 10);
    }

    #[test]
    fn undoable_page_write_undoes_exactly() {
        let page = |fill: u8| vec![fill; 512];
        let mut disk = SimDisk::default();
        // Nothing there yet: undo removes the file.
        let undo = disk.write_pages_undoable("db", 512, 2, &[(1, page(1)), (2, page(2))]);
        disk.undo_pages(undo);
        assert!(disk.db("db").is_none());
        // Synced pages 1..=4, then an unsynced change of page 2: undo a write that changes
        // pages 2 and 3 again and truncates page 4 away.
        disk.write_pages("db", 512, 4, &[(1, page(1)), (2, page(2)), (3, page(3)), (4, page(4))]);
        disk.sync_db("db");
        disk.write_pages("db", 512, 4, &[(2, page(9))]);
        let before = disk.db("db").cloned();
        let undo = disk.write_pages_undoable("db", 512, 3, &[(2, page(7)), (3, page(8))]);
        assert_ne!(disk.db("db").cloned(), before);
        disk.undo_pages(undo);
        assert_eq!(disk.db("db").cloned(), before);
        // The durable state is intact too: a crash now goes back to the synced pages.
        disk.crash();
        assert_eq!(disk.db("db").map(|f| f.pages.get(&2).map(|p| p.bytes().to_vec())), Some(Some(page(2))));
        assert_eq!(disk.db("db").map(|f| f.commit), Some(4));
    }

    fn write_file(path: &str, data: &[u8]) -> IoKind {
        IoKind::WriteFile { path: path.into(), data: data.to_vec(), fsync: true, atomic: false, commit_of: None, merge: LtxMerge::No }
    }

    fn ltx_write(min: u64, max: u64, data: &[u8], merge: LtxMerge) -> IoKind {
        let path = FilePath::ltx(DbId::from("db"), min, max);
        IoKind::WriteFile { path, data: data.to_vec(), fsync: true, atomic: true, commit_of: None, merge }
    }

    /// Concatenation stands in for the binding's LTX compaction.
    fn concat(prev: &[u8], next: &[u8]) -> Option<Vec<u8>> {
        Some([prev, next].concat())
    }

    fn ltx_ranges(disk: &SimDisk) -> Vec<(u64, u64)> {
        disk.files().iter().filter_map(|(p, _)| match p {
            FilePath::Ltx { min_txid, max_txid, .. } => Some((*min_txid, *max_txid)),
            FilePath::Other(_) => None,
        }).collect()
    }

    /// A merged write replaces the newest file only once durable: a crash before its fsync
    /// leaves the old file alone, one after it (before the unlink) leaves both.
    #[test]
    fn merged_write_is_atomic_and_durable_before_the_old_file_goes() {
        let try_merge = LtxMerge::Try { txids_max: 4 };
        let mut disk = SimDisk::default();
        let first = ltx_write(2, 3, b"ab", LtxMerge::No);
        disk.write(&first).unwrap();
        disk.fsync(&first);
        // Crash before the merged file is durable: only the old file.
        let mut next = ltx_write(4, 4, b"c", try_merge.clone());
        assert!(disk.write_merged(&mut next, concat));
        let IoKind::WriteFile { path, merge, .. } = &next else { unreachable!() };
        assert_eq!(*path, FilePath::ltx(DbId::from("db"), 2, 4));
        assert_eq!(*merge, LtxMerge::Stored { min_txid: 2, replaced: FilePath::ltx(DbId::from("db"), 2, 3) });
        assert_eq!(disk.file(path), Some(&b"abc"[..]));
        disk.crash();
        assert_eq!(ltx_ranges(&disk), vec![(2, 3)]);
        // Crash after it is durable, before the unlink: both.
        let mut next = ltx_write(4, 4, b"c", try_merge.clone());
        assert!(disk.write_merged(&mut next, concat));
        disk.fsync(&next);
        disk.crash();
        assert_eq!(ltx_ranges(&disk), vec![(2, 3), (2, 4)]);
    }

    #[test]
    fn merged_write_only_continues_the_newest_durable_file_within_the_span() {
        let mut disk = SimDisk::default();
        let snapshot = ltx_write(1, 3, b"s", LtxMerge::No);
        disk.write(&snapshot).unwrap();
        disk.fsync(&snapshot);
        // Never into a file starting at TXID 1 (a snapshot).
        assert!(!disk.write_merged(&mut ltx_write(4, 4, b"x", LtxMerge::Try { txids_max: 64 }), concat));
        let four = ltx_write(4, 4, b"d", LtxMerge::No);
        disk.write(&four).unwrap();
        // Not into an unsynced file, nor past a gap, nor beyond the span, nor if asked not to.
        assert!(!disk.write_merged(&mut ltx_write(5, 5, b"e", LtxMerge::Try { txids_max: 64 }), concat));
        disk.fsync(&four);
        assert!(!disk.write_merged(&mut ltx_write(6, 6, b"f", LtxMerge::Try { txids_max: 64 }), concat));
        assert!(!disk.write_merged(&mut ltx_write(5, 5, b"e", LtxMerge::Try { txids_max: 1 }), concat));
        assert!(!disk.write_merged(&mut ltx_write(5, 5, b"e", LtxMerge::Allowed), concat));
        assert!(!disk.write_merged(&mut ltx_write(5, 5, b"e", LtxMerge::Try { txids_max: 64 }), |_, _| None));
        assert_eq!(ltx_ranges(&disk), vec![(1, 3), (4, 4)]);
        assert!(disk.write_merged(&mut ltx_write(5, 5, b"e", LtxMerge::Try { txids_max: 2 }), concat));
        assert_eq!(ltx_ranges(&disk), vec![(1, 3), (4, 4), (4, 5)]);
    }

    #[test]
    fn crash_drops_unsynced_file_and_keeps_synced_one() {
        let mut disk = SimDisk::default();
        let a = write_file("a.ltx", b"aaaa");
        disk.write(&a).unwrap();
        disk.fsync(&a);
        disk.write(&write_file("b.ltx", b"bbbb")).unwrap();
        assert_eq!(disk.file(&"b.ltx".into()), Some(&b"bbbb"[..]));
        disk.crash();
        assert_eq!(disk.file(&"a.ltx".into()), Some(&b"aaaa"[..]));
        assert_eq!(disk.file(&"b.ltx".into()), None);
    }

    #[test]
    fn crash_reverts_unsynced_pages_and_commit_size() {
        let mut disk = SimDisk::default();
        let first = IoKind::WritePages {
            db: "db".into(),
            page_size: 512,
            commit: 1,
            pages: vec![(1, vec![1; 512])],
            fsync: true,
        };
        disk.write(&first).unwrap();
        disk.fsync(&first);
        let synced = disk.db("db").unwrap().checksum();
        let second = IoKind::WritePages {
            db: "db".into(),
            page_size: 512,
            commit: 2,
            pages: vec![(1, vec![2; 512]), (2, vec![3; 512])],
            fsync: true,
        };
        disk.write(&second).unwrap();
        assert_ne!(disk.db("db").unwrap().checksum(), synced);
        disk.crash();
        assert_eq!(disk.db("db").unwrap().checksum(), synced);
        assert_eq!(disk.db("db").unwrap().commit, 1);
    }

    #[test]
    fn torn_write_keeps_a_prefix_of_the_last_unsynced_file() {
        let mut disk = SimDisk::default();
        disk.arm(DiskFault::TornWrite, 1);
        disk.write(&write_file("c.ltx", b"12345678")).unwrap();
        disk.crash();
        assert_eq!(disk.file(&"c.ltx".into()), Some(&b"1234"[..]));
    }

    #[test]
    fn injected_errors_are_consumed() {
        let mut disk = SimDisk::default();
        disk.arm(DiskFault::Enospc, 2);
        assert_eq!(disk.take_failure(), Some(IoError::Enospc));
        assert_eq!(disk.take_failure(), Some(IoError::Enospc));
        assert_eq!(disk.take_failure(), None);
    }

    /// The stored page checksums stay those of the bytes through every way a page changes:
    /// writes (also growing past missing pages and truncating), undo, rollback, sync and crash.
    #[test]
    fn stored_page_checksums_match_a_recomputation_from_the_image() {
        let mut rng = crate::rng::Rng::new(7, "disk-test");
        let mut disk = SimDisk::default();
        for step in 0..400u32 {
            let commit = disk.db("db").map_or(0, |f| f.commit);
            match rng.below(6) {
                0 | 1 => {
                    let new_commit = rng.range(1, 12) as u32;
                    let pgno = rng.range(1, u64::from(new_commit)) as u32;
                    disk.write_pages("db", 512, new_commit, &[(pgno, vec![(step % 251) as u8 + 1; 512])]);
                }
                2 => {
                    let pgno = rng.range(1, u64::from(commit + 1)) as u32;
                    let undo = disk.write_pages_undoable("db", 512, commit.max(pgno), &[(pgno, vec![7; 512])]);
                    if rng.chance(0.5) {
                        disk.undo_pages(undo);
                    }
                }
                3 => disk.rollback_db("db"),
                4 => disk.sync_db("db"),
                _ => disk.crash(),
            }
            if let Some(file) = disk.db("db") {
                let image = file.image();
                let expected = if image.is_empty() { checksum::CHECKSUM_EMPTY } else { checksum::db_checksum(&image, 512) };
                assert_eq!(file.checksum(), expected, "step {step}");
                assert_eq!(disk.db_checksum("db"), expected, "step {step}");
            }
        }
    }

    #[test]
    fn db_checksum_matches_core_whole_image_checksum() {
        let mut file = DbFile { page_size: 512, commit: 2, ..DbFile::default() };
        file.pages.insert(1, Page::new(1, vec![9; 512]));
        file.pages.insert(2, Page::new(2, vec![8; 512]));
        let mut image = vec![9u8; 512];
        image.extend_from_slice(&[8u8; 512]);
        assert_eq!(file.checksum(), checksum::db_checksum(&image, 512));
    }
}
