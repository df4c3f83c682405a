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

use crate::machine::{FilePath, IoError, IoKind, IoValue};

#[derive(Debug, Clone, Default)]
struct FileState {
    data: Vec<u8>,
    /// Durable content before the first unsynced write, if any write is unsynced.
    undo: Option<Option<Vec<u8>>>,
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

/// A database file as pages (1-based page numbers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbFile {
    pub page_size: u32,
    pub commit: u32,
    pub pages: BTreeMap<u32, Page>,
    /// Durable value of every page changed since the last fsync (None = absent), and the
    /// durable commit size.
    undo_pages: BTreeMap<u32, Option<Page>>,
    undo_commit: Option<u32>,
}

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
        for (pgno, page) in self.pages.range(1..=self.commit) {
            let at = (*pgno as usize - 1) * page_size;
            image[at..at + page_size].copy_from_slice(&page.data);
        }
        image
    }
}

/// What [`SimDisk::write_pages_undoable`] changed: the file's sizes before, and per touched page
/// its old content and old durable-undo entry.
#[derive(Debug, Clone)]
pub struct DbUndo {
    db: String,
    /// (page size, commit, durable commit) before; `None`: the file did not exist.
    file: Option<(u32, u32, Option<u32>)>,
    #[allow(clippy::type_complexity)]
    touched: Vec<(u32, Option<Page>, Option<Option<Page>>)>,
    last_unsynced: Option<Unsynced>,
}

/// The target of the most recent unsynced write (the one a torn-write fault tears).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Unsynced {
    File(FilePath),
    Db(String),
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
    files: BTreeMap<FilePath, FileState>,
    dbs: BTreeMap<String, DbFile>,
    /// Commands still to fail with an injected error.
    failing: Option<(DiskFault, u32)>,
    torn_next_crash: bool,
    /// The most recent unsynced write, for tearing.
    last_unsynced: Option<Unsynced>,
    /// [`DbFile::checksum`] of each database as it is now, computed on first use after a change
    /// (every method that changes a database's pages or size forgets its entry): reads and the
    /// recomputation check ask far more often than databases change.
    checksums: std::cell::RefCell<BTreeMap<String, u64>>,
}

impl SimDisk {
    pub fn file(&self, path: &FilePath) -> Option<&[u8]> {
        self.files.get(path).map(|f| f.data.as_slice())
    }

    pub fn files(&self) -> impl Iterator<Item = (&FilePath, &Vec<u8>)> {
        self.files.iter().map(|(path, f)| (path, &f.data))
    }

    pub fn db(&self, name: &str) -> Option<&DbFile> {
        self.dbs.get(name)
    }

    pub fn dbs(&self) -> impl Iterator<Item = (&String, &DbFile)> {
        self.dbs.iter()
    }

    /// The checksum of what a reader of database `name` sees now ([`DbFile::checksum`]; the
    /// empty database's if the file does not exist).
    pub fn db_checksum(&self, name: &str) -> u64 {
        let Some(file) = self.dbs.get(name) else { return checksum::CHECKSUM_EMPTY };
        if let Some(sum) = self.checksums.borrow().get(name) {
            debug_assert_eq!(*sum, file.checksum(), "cached checksum of {name} is stale");
            return *sum;
        }
        let sum = file.checksum();
        self.checksums.borrow_mut().insert(name.to_string(), sum);
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
                        self.files.insert(path.clone(), FileState { data, undo: Some(None) });
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

    /// Writes pages into a database file without syncing (what SQLite does through the mount
    /// before its commit point, and the first half of a replica's apply).
    pub fn write_pages(&mut self, db: &str, page_size: u32, commit: u32, pages: &[(u32, Vec<u8>)]) {
        self.put_pages(db, page_size, commit, pages.iter().map(|(pgno, data)| (*pgno, Page::new(*pgno, data.clone()))));
    }

    /// [`SimDisk::write_pages`] of pages already made.
    fn put_pages(&mut self, db: &str, page_size: u32, commit: u32, pages: impl IntoIterator<Item = (u32, Page)>) {
        self.checksums.get_mut().remove(db);
        if !self.dbs.contains_key(db) {
            self.dbs.insert(db.to_string(), DbFile::default());
        }
        let file = self.dbs.get_mut(db).expect("inserted above");
        file.page_size = page_size;
        if file.undo_commit.is_none() {
            file.undo_commit = Some(file.commit);
        }
        for (pgno, page) in pages {
            let old = file.pages.insert(pgno, page);
            file.undo_pages.entry(pgno).or_insert(old);
        }
        file.commit = commit;
        // Bounded by the pages the file holds past the new end.
        while let Some((&pgno, _)) = file.pages.range(commit + 1..).next() {
            let old = file.pages.remove(&pgno);
            file.undo_pages.entry(pgno).or_insert(old);
        }
        if !self.is_last_unsynced_db(db) {
            self.last_unsynced = Some(Unsynced::Db(db.to_string()));
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

    /// Whether the most recent unsynced write is to database `db`.
    fn is_last_unsynced_db(&self, db: &str) -> bool {
        matches!(&self.last_unsynced, Some(Unsynced::Db(last)) if last == db)
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
        self.checksums.get_mut().remove(db);
        if let Some(file) = self.dbs.get_mut(db) {
            for (pgno, old) in std::mem::take(&mut file.undo_pages) {
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
        let mut undo = DbUndo { db: db.to_string(), file: None, touched: Vec::new(), last_unsynced: self.last_unsynced.clone() };
        if let Some(f) = self.dbs.get(db) {
            undo.file = Some((f.page_size, f.commit, f.undo_commit));
            let changed = pages.iter().map(|(pgno, _)| *pgno).chain(f.pages.range(commit + 1..).map(|(pgno, _)| *pgno));
            for pgno in changed {
                undo.touched.push((pgno, f.pages.get(&pgno).cloned(), f.undo_pages.get(&pgno).cloned()));
            }
        }
        self.write_pages(db, page_size, commit, pages);
        undo
    }

    /// Puts a database back exactly as it was before the write `undo` came from (SQLite rolling
    /// back a commit the node refused on the spot).
    pub fn undo_pages(&mut self, undo: DbUndo) {
        self.checksums.get_mut().remove(&undo.db);
        match undo.file {
            None => {
                self.dbs.remove(&undo.db);
            }
            Some((page_size, commit, undo_commit)) => {
                let f = self.dbs.get_mut(&undo.db).expect("a written database exists");
                f.page_size = page_size;
                f.commit = commit;
                f.undo_commit = undo_commit;
                // Latest first, so a page captured twice ends at its first (oldest) value.
                for (pgno, page, durable) in undo.touched.into_iter().rev() {
                    match page {
                        Some(data) => f.pages.insert(pgno, data),
                        None => f.pages.remove(&pgno),
                    };
                    match durable {
                        Some(value) => f.undo_pages.insert(pgno, value),
                        None => f.undo_pages.remove(&pgno),
                    };
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
        self.checksums.get_mut().clear();
        let torn = if self.torn_next_crash { self.last_unsynced.take() } else { None };
        self.torn_next_crash = false;
        self.last_unsynced = None;
        let mut removed = Vec::new();
        for (path, file) in self.files.iter_mut() {
            if let Some(undo) = file.undo.take() {
                if matches!(&torn, Some(Unsynced::File(last)) if last == path) {
                    let keep = file.data.len() / 2;
                    file.data.truncate(keep);
                } else {
                    match undo {
                        Some(data) => file.data = data,
                        None => removed.push(path.clone()),
                    }
                }
            }
        }
        for path in removed {
            self.files.remove(&path);
        }
        for (name, file) in self.dbs.iter_mut() {
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
        IoKind::WriteFile { path: path.into(), data: data.to_vec(), fsync: true, atomic: false, commit_of: None }
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
