//! Start-up loading of databases, checksum index persistence and retention.
//!
//! It decides whether a persisted checksum index can be trusted (it must decode, add up, and
//! belong to exactly the last LTX's post-apply position — otherwise the database is read in full
//! and the index recomputed), when changed indexes are persisted, and which retained LTX files
//! retention deletes (never one a follower still needs within the size budget). It never reads
//! or deletes anything itself: those are I/O commands.
//!
//! # A database behind its newest LTX
//! The position comes from the durable LTX chain, not from the database file: a crash between an
//! LTX write and the page write (or a torn page write) leaves the file one file behind (or part
//! way). When the recomputed checksum is not the newest file's post-apply checksum, that file is
//! read and re-applied (idempotent: it holds every page it changes and the commit size), but only
//! if the checksum index shows it lands exactly on the position; the load ends when those pages
//! are durable. Only if that cannot work (no such file, unreadable, still another checksum) is
//! the position forgotten and a snapshot awaited. Forgetting a position the LTX chain still
//! proves would make this node answer a new primary's recovery query with TXID 0 — an answer
//! that no longer covers the writes it acked (sync mode), so the answer set would miss them.

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
            // The file is not at its newest LTX's position: re-apply that file if it is retained.
            let newest = d.files.values().next_back().filter(|f| f.max_txid == d.pos.txid && f.post_apply_checksum == expected);
            if let Some(f) = newest {
                let files = vec![(f.min_txid, f.max_txid)];
                self.io(IoKind::ReadLtx { db: db.clone(), files }, IoPurpose::RepairRead { db });
                return;
            }
            return self.forget_position(db, actual);
        }
        self.loaded(db);
    }

    /// The newest LTX file, read to repair a database found behind it: re-applied if its pages
    /// bring the index exactly to the position, else the position is forgotten.
    pub(super) fn on_repair_read(&mut self, db: DbName, result: Result<IoOutcome, IoErrorKind>) {
        let d = self.dbs.get_mut(&db).expect("loading an open database");
        assert!(matches!(d.state, DbState::Loading));
        let actual = d.index.checksum();
        let decoded = match result {
            Ok(IoOutcome::LtxFiles(files)) if files.len() == 1 => crate::ltx::decode_slice(&files[0]).ok(),
            _ => None,
        };
        let Some((header, pages, trailer)) = decoded else { return self.forget_position(db, actual) };
        let fits = header.max_txid == d.pos.txid && trailer.post_apply_checksum == d.pos.checksum && header.page_size == d.page_size;
        let mut repaired = if header.is_snapshot() { ChecksumIndex::new(d.page_size).ok() } else { Some(d.index.clone()) };
        let lands = fits && repaired.as_mut().and_then(|i| i.apply(header.commit, &pages).ok()) == Some(d.pos.checksum);
        let Some(repaired) = repaired.filter(|_| lands) else { return self.forget_position(db, actual) };
        // The index moves first (as in a replica's apply); a failed page write halts the database.
        d.index = repaired;
        let kind = IoKind::ApplyPages { db: db.clone(), page_size: d.page_size, commit: header.commit, pages };
        self.io(kind, IoPurpose::RepairApply { db });
    }

    /// The newest LTX file's pages are durable again: the database is at its position.
    pub(super) fn on_repair_applied(&mut self, db: DbName, result: Result<IoOutcome, IoErrorKind>) {
        let d = self.dbs.get_mut(&db).expect("loading an open database");
        assert!(matches!(d.state, DbState::Loading));
        if let Err(error) = result {
            d.state = DbState::Halted;
            return self.event(Event::IoFailed { db, error });
        }
        assert_eq!(d.index.checksum(), d.pos.checksum, "a repair ends at the position");
        self.loaded(db);
    }

    /// The file matches no retained LTX: forget the position so the primary sends a snapshot
    /// (retained files stay listed so the snapshot deletes them). The index describes the file.
    fn forget_position(&mut self, db: DbName, actual: u64) {
        let d = self.dbs.get_mut(&db).expect("loading an open database");
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
