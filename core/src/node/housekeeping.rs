//! Start-up loading of databases, checksum index persistence and retention.
//!
//! It decides whether a persisted checksum index can be trusted (it must decode, add up, and
//! belong to exactly the last LTX's post-apply position — otherwise the database is read in full
//! and the index recomputed), when changed indexes are persisted, and which retained LTX files
//! retention deletes (never one a follower still needs within the size budget). It never reads
//! or deletes anything itself: those are I/O commands.
//!
//! # A database file at no retained position
//! The position comes from the durable LTX chain, not from the database file: a crash between an
//! LTX write and the page write leaves the file one file behind, and a torn page write leaves
//! some pages changed — in the simulator also pages of a local commit whose LTX never became
//! durable (random seed 19693), which the newest LTX need not hold. When the recomputed checksum
//! is not the position's, the retained chain that ends at the position (contiguous by TXID and
//! checksum, back to a snapshot or the oldest retained file) is read newest file first, one file
//! at a time, and each page it holds that no newer file of the chain holds goes into a copy of
//! the index — that page's value at the position (an LTX holds every page it changes and the
//! commit size). As soon as the copy is exactly at the position the pages read so far are
//! written, each page once (the newer files are read again: memory stays one file), and the
//! load ends when they are durable. Nothing is written before the chain is known to land, and
//! nothing is accepted on less than a checksum match: a torn page no retained file holds is
//! never taken as data. Only if the chain runs out first (or a file cannot be read) is the
//! position forgotten and a snapshot awaited; the file is then left as it was. Forgetting a
//! position the LTX chain still proves would make this node answer a new primary's recovery
//! query with TXID 0 — an answer that no longer covers the writes it acked (sync mode) — and
//! leaves a node without peers refusing every write. Retention waits while a database loads.

use std::collections::BTreeSet;

use crate::chkindex::ChecksumIndex;
use crate::ids::DbName;
use crate::ltx::Pos;
use crate::retention::decide_retention;

use super::db::{Db, DbState};
use super::*;

impl Node {
    pub(super) fn on_open_db(&mut self, o: OpenDb) -> Result<(), InputError> {
        if self.dbs.contains_key(&o.db) {
            return Err(InputError::DbAlreadyOpen(o.db));
        }
        let mut d = Db::new(ChecksumIndex::new(o.page_size).map_err(|_| InputError::BadPageSize(o.page_size))?);
        d.pos = o.pos;
        d.pos_epoch = o.epoch;
        for f in o.files {
            d.retain(f);
        }
        for p in o.points {
            d.files.add_point(p);
        }
        self.highest_epoch = self.highest_epoch.max(o.epoch);
        let loaded = o.checksum_index.as_deref().map(ChecksumIndex::decode);
        match loaded {
            _ if o.pos.txid == 0 => {}
            Some(Ok((pos, index))) if pos == o.pos && index.page_size() == o.page_size && index.checksum() == o.pos.checksum => {
                d.index = index;
            }
            _ => {
                d.state = DbState::Loading;
                self.event(Event::ChecksumIndexRebuilt { db: o.db.clone() });
                self.io(IoKind::ReadDatabase { db: o.db.clone() }, IoPurpose::LoadIndex { db: o.db.clone() });
            }
        }
        self.dbs.insert(o.db, d);
        Ok(())
    }

    pub(super) fn on_index_image(&mut self, db: DbName, result: Result<IoOutcome, IoErrorKind>) {
        let d = self.dbs.get_mut(&db).expect("loading an open database");
        assert!(matches!(d.state, DbState::Loading));
        let index = match result {
            Ok(IoOutcome::Database(image)) => ChecksumIndex::from_image(d.page_size, &image).map_err(|_| IoErrorKind::Failed),
            Ok(_) => Err(IoErrorKind::Failed),
            Err(e) => Err(e),
        };
        let index = match index {
            Ok(index) => index,
            Err(error) => {
                d.state = DbState::Halted;
                return self.event(Event::IoFailed { db, error });
            }
        };
        let expected = d.pos.checksum;
        let actual = index.checksum();
        d.index = index;
        d.index_dirty = true;
        if actual != expected {
            return self.start_repair(db);
        }
        self.loaded(db);
    }

    /// The file is not at its position: walk the retained chain that ends there, newest file
    /// first, until the pages read so far bring (a copy of) the index exactly to the position.
    /// The position is forgotten if the chain runs out first.
    fn start_repair(&mut self, db: DbName) {
        let d = self.dbs.get_mut(&db).expect("loading an open database");
        let chain = repair_chain(&d.files, d.pos);
        if chain.is_empty() {
            let actual = d.index.checksum();
            return self.forget_position(db, actual);
        }
        let first = chain[0];
        let trial = d.index.clone();
        d.repair = Some(Repair {
            chain,
            file_checksums: Vec::new(),
            commit: 0,
            covered: BTreeSet::new(),
            next: 0,
            stage: RepairStage::Checking { trial },
        });
        self.io(IoKind::ReadLtx { db: db.clone(), files: vec![first] }, IoPurpose::RepairRead { db });
    }

    /// One file of the repair chain was read: in the checking pass its pages not set by a newer
    /// file go into the trial index; in the writing pass they are written.
    pub(super) fn on_repair_read(&mut self, db: DbName, result: Result<IoOutcome, IoErrorKind>) {
        let d = self.dbs.get_mut(&db).expect("loading an open database");
        assert!(matches!(d.state, DbState::Loading));
        let mut repair = d.repair.take().expect("a repair reads its chain");
        let decoded = match result {
            Ok(IoOutcome::LtxFiles(files)) if files.len() == 1 => crate::ltx::decode_slice(&files[0]).ok(),
            _ => None,
        };
        let expected_range = repair.chain[repair.next];
        let newest = repair.next == 0;
        // Read again in the writing pass, a file must be the one the checking pass read.
        let read_before = repair.file_checksums.get(repair.next).copied();
        let fits = |header: &crate::ltx::Header, trailer: &crate::ltx::Trailer| {
            (header.min_txid, header.max_txid) == expected_range
                && header.page_size == d.page_size
                && (!newest || trailer.post_apply_checksum == d.pos.checksum)
                && read_before.is_none_or(|sum| sum == trailer.file_checksum)
        };
        let Some((header, pages, trailer)) = decoded.filter(|(h, _, t)| fits(h, t)) else {
            let actual = d.index.checksum();
            return self.forget_position(db, actual);
        };
        if newest {
            repair.commit = header.commit;
        }
        // Only the newest file's value of a page is its value at the position.
        let commit = repair.commit;
        let pages: Vec<(u32, Vec<u8>)> =
            pages.into_iter().filter(|(pgno, _)| *pgno <= commit && repair.covered.insert(*pgno)).collect();
        match &mut repair.stage {
            RepairStage::Checking { trial } => {
                repair.file_checksums.push(trailer.file_checksum);
                if trial.apply(commit, &pages).is_err() {
                    let actual = d.index.checksum();
                    return self.forget_position(db, actual);
                }
                if trial.checksum() == d.pos.checksum {
                    // The files read so far land on the position: write them, newest first
                    // (re-read), this one (in hand) last.
                    repair.stage = RepairStage::Writing { landing: repair.next, held: pages };
                    repair.next = 0;
                    repair.covered.clear();
                    d.repair = Some(repair);
                    return self.repair_write_next(db);
                }
                let older = repair.next + 1;
                if older >= repair.chain.len() {
                    let actual = d.index.checksum();
                    return self.forget_position(db, actual);
                }
                repair.next = older;
                let file = repair.chain[older];
                d.repair = Some(repair);
                self.io(IoKind::ReadLtx { db: db.clone(), files: vec![file] }, IoPurpose::RepairRead { db });
            }
            RepairStage::Writing { .. } => {
                d.repair = Some(repair);
                self.repair_write(db, pages);
            }
        }
    }

    /// The writing pass: reads the next file newer than the landing one, or writes the landing
    /// file's pages (held since the checking pass), or ends the repair.
    fn repair_write_next(&mut self, db: DbName) {
        let d = self.dbs.get_mut(&db).expect("loading an open database");
        let repair = d.repair.as_mut().expect("a repair in its writing pass");
        let RepairStage::Writing { landing, held } = &mut repair.stage else { unreachable!("writing pass") };
        let (next, landing) = (repair.next, *landing);
        if next < landing {
            let file = repair.chain[next];
            self.io(IoKind::ReadLtx { db: db.clone(), files: vec![file] }, IoPurpose::RepairRead { db });
            return;
        }
        if next == landing {
            let pages = std::mem::take(held);
            return self.repair_write(db, pages);
        }
        if d.index.checksum() != d.pos.checksum {
            // Only if the files read again differ from the checked ones (checked by checksum).
            let actual = d.index.checksum();
            return self.forget_position(db, actual);
        }
        d.repair = None;
        self.loaded(db);
    }

    /// Writes one chain file's pages of the writing pass (the index moves first, as in a
    /// replica's apply; a failed page write halts the database). A file none of whose pages are
    /// left to write is skipped, except the newest: its write also sets the size.
    fn repair_write(&mut self, db: DbName, pages: Vec<(u32, Vec<u8>)>) {
        let d = self.dbs.get_mut(&db).expect("loading an open database");
        let repair = d.repair.as_mut().expect("a repair in its writing pass");
        let commit = repair.commit;
        if pages.is_empty() && repair.next > 0 {
            repair.next += 1;
            return self.repair_write_next(db);
        }
        // The checking pass applied these pages to a copy of this index: a failure here is
        // a disk that changed under the repair.
        if d.index.apply(commit, &pages).is_err() {
            let actual = d.index.checksum();
            return self.forget_position(db, actual);
        }
        let kind = IoKind::ApplyPages { db: db.clone(), page_size: d.page_size, commit, pages };
        self.io(kind, IoPurpose::RepairApply { db });
    }

    /// One file's pages of the writing pass are durable: on to the next.
    pub(super) fn on_repair_applied(&mut self, db: DbName, result: Result<IoOutcome, IoErrorKind>) {
        let d = self.dbs.get_mut(&db).expect("loading an open database");
        assert!(matches!(d.state, DbState::Loading));
        if let Err(error) = result {
            d.repair = None;
            d.state = DbState::Halted;
            return self.event(Event::IoFailed { db, error });
        }
        d.repair.as_mut().expect("a repair in its writing pass").next += 1;
        self.repair_write_next(db);
    }

    /// The file matches no retained LTX: forget the position so the primary sends a snapshot
    /// (retained files stay listed so the snapshot deletes them). The index describes the file.
    fn forget_position(&mut self, db: DbName, actual: u64) {
        let d = self.dbs.get_mut(&db).expect("loading an open database");
        d.repair = None;
        let expected = d.pos.checksum;
        d.pos = Pos::ZERO;
        d.pos_epoch = crate::ids::Epoch::ZERO;
        self.event(Event::ChecksumMismatch { db: db.clone(), expected, actual });
        self.loaded(db);
    }

    /// Loading is over: the database is idle at its position (or at none). LTX files that
    /// arrived meanwhile were queued: they are applied now (each checked against the position as
    /// usual), or nothing would ever start them and every later file would queue behind them.
    fn loaded(&mut self, db: DbName) {
        let d = self.dbs.get_mut(&db).expect("loading an open database");
        d.state = DbState::Idle;
        self.apply_next(db.clone());
        if let Some(up) = self.upstream.filter(|_| self.role.is_follower()) {
            if self.connected.contains(&up) {
                self.send_stream_request(up);
            }
        }
    }

    /// Persists the index of every idle database whose position changed (all of them if `all`).
    pub(super) fn persist_indexes(&mut self, all: bool) {
        let mut writes = Vec::new();
        for (name, d) in self.dbs.iter_mut() {
            if (d.index_dirty || all) && d.is_idle() && d.pos.txid > 0 {
                d.index_dirty = false;
                writes.push((name.clone(), d.index.encode(d.pos)));
            }
        }
        for (db, bytes) in writes {
            self.io(IoKind::WriteChecksumIndex { db: db.clone(), bytes }, IoPurpose::Housekeeping { db });
        }
    }

    pub(super) fn housekeeping_timers(&mut self) {
        let now = self.now;
        if now >= self.persist_at {
            self.persist_at = now + self.config.checksum_index_persist_interval;
            self.persist_indexes(false);
        }
        if now >= self.retention_at {
            self.retention_at = now + self.config.retention_interval;
            self.enforce_retention();
        }
    }

    /// The lowest TXID a follower still needs of `db`.
    fn needed_from_txid(&self, db: &DbName, ours: Pos) -> Option<u64> {
        self.followers
            .values()
            .filter_map(|f| f.dbs.get(db))
            .filter(|pd| pd.acked.txid < ours.txid)
            .map(|pd| pd.acked.txid + 1)
            .min()
    }

    fn enforce_retention(&mut self) {
        let names: Vec<DbName> = self.dbs.keys().cloned().collect();
        for db in names {
            let d = &self.dbs[&db];
            if matches!(d.state, DbState::Loading) {
                continue; // a start-up repair may still read any file of the chain
            }
            let needed = self.needed_from_txid(&db, d.pos);
            let delete = decide_retention(&d.files, self.now, self.config.retention, needed);
            if delete.is_empty() {
                continue;
            }
            let d = self.dbs.get_mut(&db).expect("listed");
            for (min, _) in &delete {
                d.files.remove(min);
            }
            self.io(IoKind::DeleteLtx { db: db.clone(), files: delete }, IoPurpose::Housekeeping { db });
        }
    }
}

/// A start-up repair of a database file found at no retained position (see the module doc).
#[derive(Debug, Clone)]
pub(crate) struct Repair {
    /// `(min_txid, max_txid)` of the contiguous retained files ending at the position, newest
    /// first (the oldest is a snapshot or the oldest retained file).
    chain: Vec<(u64, u64)>,
    /// The LTX file checksum of each file of `chain` the checking pass read, same order.
    file_checksums: Vec<u64>,
    /// The database size at the position (the newest file's commit size; set by its read).
    commit: u32,
    /// Pages set by the files of this pass read so far: an older file's value of one of them is
    /// not its value at the position.
    covered: BTreeSet<u32>,
    /// The file of `chain` being read or written.
    next: usize,
    stage: RepairStage,
}

#[derive(Debug, Clone)]
enum RepairStage {
    /// First pass, nothing written: `trial` is the file's index with the pages read so far.
    Checking { trial: ChecksumIndex },
    /// Second pass: `chain[..=landing]` bring the file to the position. The files newer than
    /// `landing` are read again and written, then `held` (`landing`'s pages, kept from the
    /// first pass).
    Writing { landing: usize, held: Vec<(u32, Vec<u8>)> },
}

/// The contiguous retained files ending at `pos`, newest first: each older file ends where the
/// newer one starts (TXID and checksum); the walk stops after a snapshot. Empty if the newest
/// retained file does not end at `pos`.
fn repair_chain(files: &crate::catchup::RetainedFiles, pos: Pos) -> Vec<(u64, u64)> {
    let mut chain: Vec<(u64, u64)> = Vec::new();
    let mut newer: Option<&crate::catchup::LtxFileMeta> = None;
    for f in files.values().rev() {
        let continues = match newer {
            None => f.post_apply_pos() == pos,
            Some(n) => f.max_txid + 1 == n.min_txid && f.post_apply_checksum == n.pre_apply_checksum,
        };
        if !continues {
            break;
        }
        chain.push((f.min_txid, f.max_txid));
        if f.min_txid == 1 {
            break;
        }
        newer = Some(f);
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catchup::{LtxFileMeta, RetainedFiles};
    use crate::time::Time;

    fn file(min_txid: u64, max_txid: u64, pre: u64, post: u64) -> LtxFileMeta {
        LtxFileMeta { min_txid, max_txid, pre_apply_checksum: pre, post_apply_checksum: post, size_bytes: 1, written_at: Time::ZERO }
    }

    fn retained(files: &[LtxFileMeta]) -> RetainedFiles {
        files.iter().map(|f| (f.min_txid, *f)).collect()
    }

    /// The chain runs from the file ending at the position back through files that end where
    /// the newer one starts, by TXID and by checksum, and stops after a snapshot.
    #[test]
    fn repair_chain_is_the_contiguous_files_ending_at_the_position() {
        let end = Pos { txid: 9, checksum: 90 };
        let files = retained(&[file(1, 2, 0, 20), file(3, 5, 20, 50), file(6, 7, 50, 70), file(8, 9, 70, 90)]);
        assert_eq!(repair_chain(&files, end), vec![(8, 9), (6, 7), (3, 5), (1, 2)]);
        assert_eq!(repair_chain(&files, Pos { txid: 9, checksum: 91 }), vec![], "the newest file must end at the position");
        // A TXID gap, or a file that ends at another checksum than the next one starts from.
        let gap = retained(&[file(1, 2, 0, 20), file(4, 5, 20, 50), file(6, 9, 50, 90)]);
        assert_eq!(repair_chain(&gap, end), vec![(6, 9), (4, 5)]);
        let other = retained(&[file(2, 5, 10, 49), file(6, 9, 50, 90)]);
        assert_eq!(repair_chain(&other, end), vec![(6, 9)]);
    }
}
