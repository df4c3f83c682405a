//! Applying LTX received from a peer (the primary, or a recovery source).
//!
//! It decides whether an LTX is accepted: its epoch is not older than the highest accepted; an
//! incremental file starts exactly at this node's position (else a resync is requested); the
//! checksum after its pages equals its post-apply checksum (else the database stops applying and
//! says so — it never silently continues). Accepted files are written (durable) and then applied,
//! one at a time per database, and acknowledged. It never applies anything on a writable
//! primary and never touches a file itself.

use crate::chkindex::ChecksumIndex;
use crate::ids::{DbName, Epoch, NodeId};
use crate::ltx;
use crate::msg::Message;

use super::db::{file_meta, ApplyStage, Db, DbState, Incoming, Partial, PendingApply};
use super::*;

/// A checked LTX: the fresh index of a snapshot, or for an incremental its pages' checksums.
type Checked = (Option<ChecksumIndex>, Vec<u64>);

/// At most this many queued incremental LTX are merged into one apply ([`Node::merge_queued`]).
pub const APPLY_MERGE_MAX: usize = 32;
/// ... and at most this many bytes of them.
pub const APPLY_MERGE_BYTES_MAX: usize = 8 * 1024 * 1024;

impl Node {
    /// Whether this node takes LTX from `from` now: followers take them from anyone with a
    /// current epoch; a recovering primary only from its fetch sources.
    fn accepts_ltx_from(&self, from: NodeId) -> bool {
        match self.role.primary() {
            None => true,
            Some(_) => self.is_recovery_source(from),
        }
    }

    pub(super) fn on_ltx_chunk(&mut self, from: NodeId, epoch: Epoch, db: DbName, offset: u64, total_bytes: u64, bytes: Vec<u8>) {
        if !self.accept_epoch(from, epoch) {
            self.partials.remove(&db);
            return;
        }
        if !self.accepts_ltx_from(from) {
            return;
        }
        if total_bytes > self.config.ltx_bytes_max {
            self.drop_ltx(from, db, total_bytes);
            return;
        }
        if offset == 0 && bytes.len() as u64 == total_bytes {
            // A whole file in one chunk (every file up to the chunk limit): the chunk's buffer
            // is the file, not copied into a new one.
            return self.on_ltx(from, epoch, db, bytes);
        }
        let partial = if offset == 0 {
            let capacity = total_bytes.min(crate::msg::LTX_CHUNK_BYTES_MAX as u64) as usize;
            Partial { from, total_bytes, bytes: Vec::with_capacity(capacity) }
        } else {
            match self.partials.remove(&db) {
                Some(p) if p.from == from && p.total_bytes == total_bytes && p.bytes.len() as u64 == offset => p,
                _ => return self.drop_ltx(from, db, total_bytes),
            }
        };
        let mut partial = partial;
        partial.bytes.extend_from_slice(&bytes);
        if (partial.bytes.len() as u64) < total_bytes {
            self.partials.insert(db, partial);
            return;
        }
        self.on_ltx(from, epoch, db, partial.bytes);
    }

    fn drop_ltx(&mut self, from: NodeId, db: DbName, total_bytes: u64) {
        self.partials.remove(&db);
        self.event(Event::LtxDropped { db: db.clone(), from, total_bytes });
        self.request_resync(from, db);
    }

    fn request_resync(&mut self, to: NodeId, db: DbName) {
        let pos = self.db_pos_or_zero(&db);
        self.send(to, Message::Resync { epoch: self.highest_epoch, db, pos });
    }

    /// A whole LTX file arrived: decode it and apply or queue it.
    fn on_ltx(&mut self, from: NodeId, epoch: Epoch, db: DbName, bytes: Vec<u8>) {
        let (header, pages, trailer) = match ltx::decode_slice_with(&mut self.decode_scratch, &bytes) {
            Ok(decoded) => decoded,
            Err(error) => {
                self.event(Event::InvalidLtx { db: db.clone(), from, error });
                self.request_resync(from, db);
                return;
            }
        };
        if !self.dbs.contains_key(&db) {
            let index = ChecksumIndex::new(header.page_size).expect("the decoder validated the page size");
            self.dbs.insert(db.clone(), Db::new(index));
        }
        let d = self.dbs.get_mut(&db).expect("inserted above");
        if d.is_halted() {
            return;
        }
        let incoming = Incoming { from, epoch, header, pages, trailer, bytes };
        if !d.is_idle() || !d.queue.is_empty() {
            if d.queue.len() >= self.config.apply_queue_max {
                d.queue.clear();
                self.request_resync(from, db);
            } else {
                d.queue.push_back(incoming);
            }
            return;
        }
        self.start_apply(db, incoming);
    }

    /// Checks an LTX against this node's position and checksum, then writes it.
    fn start_apply(&mut self, db: DbName, inc: Incoming) {
        if inc.epoch < self.highest_epoch && !planted!(self, SkipEpochCheck) {
            self.event(Event::StaleEpochRejected { from: inc.from, epoch: inc.epoch, highest: self.highest_epoch });
            return self.apply_next(db);
        }
        let inc = self.merge_queued(&db, inc);
        let snapshot = inc.header.is_snapshot();
        let checked = if snapshot { self.check_snapshot(&db, &inc) } else { self.check_incremental(&db, &inc) };
        let Some((new_index, page_sums)) = checked else { return };
        let d = self.dbs.get_mut(&db).expect("open");
        let post = crate::ltx::Pos { txid: inc.header.max_txid, checksum: inc.trailer.post_apply_checksum };
        let meta = file_meta(&inc.header, &inc.trailer, inc.bytes.len(), self.now);
        if snapshot && d.pos.txid > 0 && d.pos != post {
            // Never silent: whatever this node had beyond the new history is gone after this.
            let (old, old_epoch) = (d.pos, d.pos_epoch);
            self.event(Event::HistoryReplaced { db: db.clone(), from: inc.from, old, old_epoch, new: post });
        }
        let d = self.dbs.get_mut(&db).expect("open");
        let mut replaced: Vec<(u64, u64)> = Vec::new();
        if snapshot {
            replaced = d.files.values().map(|f| (f.min_txid, f.max_txid)).filter(|r| *r != (1, post.txid)).collect();
            d.files.clear();
            d.index = new_index.expect("snapshots rebuild the index");
            d.page_size = inc.header.page_size;
        }
        let d = self.dbs.get_mut(&db).expect("open");
        d.last_ltx = None;
        let (min_txid, max_txid) = (inc.header.min_txid, inc.header.max_txid);
        let stage = if replaced.is_empty() { ApplyStage::WritingLtx } else { ApplyStage::DeletingReplaced };
        let (write_now, bytes) = if replaced.is_empty() { (Some(inc.bytes), None) } else { (None, Some(inc.bytes)) };
        d.state = DbState::Applying(PendingApply {
            from: inc.from,
            epoch: inc.epoch,
            post,
            commit: inc.header.commit,
            pages: inc.pages,
            page_sums,
            meta,
            snapshot,
            stage,
            merged_from: None,
            bytes,
        });
        match write_now {
            Some(bytes) => {
                let kind = IoKind::WriteLtx { db: db.clone(), min_txid, max_txid, bytes, fsync: true, epoch: inc.epoch };
                self.io(kind, IoPurpose::ReplicaWriteLtx { db });
            }
            None => {
                self.io(IoKind::DeleteLtx { db: db.clone(), files: replaced }, IoPurpose::ReplicaDeleteReplaced { db });
            }
        }
    }

    /// A step of an apply failed: the database stops (queued LTX dropped) until the node restarts.
    fn halt_apply(&mut self, db: DbName, error: IoErrorKind) {
        let d = self.dbs.get_mut(&db).expect("apply belongs to an open database");
        d.state = DbState::Halted;
        d.queue.clear();
        self.event(Event::IoFailed { db, error });
    }

    /// The files of the history a snapshot replaces are gone: write the snapshot's LTX. If they
    /// could not be deleted the database stops (as after any failed apply step): writing the
    /// snapshot beside a newer stale file would make a restart report that file's position.
    pub(super) fn on_replaced_deleted(&mut self, db: DbName, result: Result<IoOutcome, IoErrorKind>) {
        let d = self.dbs.get_mut(&db).expect("apply belongs to an open database");
        let DbState::Applying(pa) = &mut d.state else { unreachable!("delete completion without an apply") };
        assert_eq!(pa.stage, ApplyStage::DeletingReplaced);
        if let Err(error) = result {
            return self.halt_apply(db, error);
        }
        pa.stage = ApplyStage::WritingLtx;
        let bytes = pa.bytes.take().expect("kept while deleting");
        let (min_txid, max_txid) = (pa.meta.min_txid, pa.meta.max_txid);
        let kind = IoKind::WriteLtx { db: db.clone(), min_txid, max_txid, bytes, fsync: true, epoch: pa.epoch };
        self.io(kind, IoPurpose::ReplicaWriteLtx { db });
    }

    /// A replica that fell behind (LTX queued while one was written and applied) merges the
    /// incremental LTX that continue `inc` — same sender and epoch, contiguous, the database
    /// never shrinking in between — into one LTX, as the primary's catch-up does: one file
    /// written and made durable, one apply, instead of one each (under disk load each one's
    /// fsync made the queue, and the lag, grow). It is checked like any other: its pre-apply
    /// position must be this node's and its pages must end at its post-apply checksum.
    /// Anything it cannot merge is left queued as it was.
    fn merge_queued(&mut self, db: &DbName, inc: Incoming) -> Incoming {
        if inc.header.is_snapshot() {
            return inc;
        }
        let Some(d) = self.dbs.get_mut(db) else { return inc };
        let mut run: Vec<Incoming> = Vec::new();
        let mut bytes = inc.bytes.len();
        // Bounded by APPLY_MERGE_MAX.
        while run.len() + 1 < APPLY_MERGE_MAX {
            let last = run.last().unwrap_or(&inc);
            let Some(next) = d.queue.front() else { break };
            let continues = !next.header.is_snapshot()
                && next.from == last.from
                && next.epoch == last.epoch
                && next.header.page_size == last.header.page_size
                && last.header.max_txid.checked_add(1) == Some(next.header.min_txid)
                && next.header.pre_apply_checksum == last.trailer.post_apply_checksum
                && next.header.commit >= last.header.commit
                && last.header.commit > 0
                && bytes + next.bytes.len() <= APPLY_MERGE_BYTES_MAX;
            if !continues {
                break;
            }
            bytes += next.bytes.len();
            run.push(d.queue.pop_front().expect("front checked"));
        }
        let Some(last) = run.last() else { return inc };
        let mut pages: BTreeMap<u32, &[u8]> = BTreeMap::new();
        for one in std::iter::once(&inc).chain(run.iter()) {
            for (pgno, data) in &one.pages {
                pages.insert(*pgno, data.as_slice());
            }
        }
        let header = ltx::Header {
            flags: inc.header.flags,
            page_size: inc.header.page_size,
            commit: last.header.commit,
            min_txid: inc.header.min_txid,
            max_txid: last.header.max_txid,
            timestamp_ms: last.header.timestamp_ms,
            pre_apply_checksum: inc.header.pre_apply_checksum,
            ..ltx::Header::default()
        };
        let post = last.trailer.post_apply_checksum;
        let merged = ltx::encode_to_vec(header, pages.iter().map(|(p, b)| (*p, *b)), post).ok().and_then(|b| {
            let (h, pages, t) = ltx::decode_slice(&b).ok()?;
            Some(Incoming { from: last.from, epoch: last.epoch, header: h, pages, trailer: t, bytes: b })
        });
        match merged {
            Some(m) => m,
            None => {
                // Not mergeable after all (never seen): apply them one by one.
                let d = self.dbs.get_mut(db).expect("open");
                for one in run.into_iter().rev() {
                    d.queue.push_front(one);
                }
                inc
            }
        }
    }

    /// A snapshot replaces everything; returns its fresh index if its checksum is right.
    fn check_snapshot(&mut self, db: &DbName, inc: &Incoming) -> Option<Checked> {
        let mut index = ChecksumIndex::new(inc.header.page_size).expect("the decoder validated the page size");
        match index.apply(inc.header.commit, &inc.pages) {
            Ok(actual) if actual == inc.trailer.post_apply_checksum => Some((Some(index), Vec::new())),
            Ok(actual) => {
                self.halt_on_mismatch(db, inc.trailer.post_apply_checksum, actual);
                None
            }
            Err(error) => {
                self.event(Event::InvalidLtxPages { db: db.clone(), from: inc.from, error });
                self.apply_next(db.clone());
                None
            }
        }
    }

    /// An incremental applies only at our exact position and must end at its post-apply checksum.
    fn check_incremental(&mut self, db: &DbName, inc: &Incoming) -> Option<Checked> {
        let d = self.dbs.get(db).expect("open");
        if inc.header.max_txid <= d.pos.txid {
            // A duplicate of something already applied — if it ends on this node's history. One
            // that ends at a position this node holds with another checksum (an apply from a
            // deposed primary that finished after this node asked the new one for its stream)
            // is a divergence: ask for a resync, which the primary answers with a snapshot.
            let ours = if inc.header.max_txid == d.pos.txid { Some(d.pos.checksum) } else { d.files.checksum_at(inc.header.max_txid) };
            if ours.is_some_and(|c| c != inc.trailer.post_apply_checksum) {
                let (have, from) = (d.pos, inc.from);
                let need = crate::ltx::Pos { txid: inc.header.max_txid, checksum: inc.trailer.post_apply_checksum };
                self.event(Event::PreApplyMismatch { db: db.clone(), have, need, from });
                self.dbs.get_mut(db).expect("open").queue.clear();
                self.request_resync(from, db.clone());
                return None;
            }
            self.apply_next(db.clone());
            return None;
        }
        let need = inc.header.pre_apply_pos();
        if need != d.pos && !planted!(self, SkipPreapplyCheck) {
            let have = d.pos;
            self.event(Event::PreApplyMismatch { db: db.clone(), have, need, from: inc.from });
            self.dbs.get_mut(db).expect("open").queue.clear();
            self.request_resync(inc.from, db.clone());
            return None;
        }
        if inc.header.page_size != d.page_size {
            self.event(Event::InvalidLtxPages { db: db.clone(), from: inc.from, error: crate::chkindex::IndexError::BadPageSize(inc.header.page_size) });
            self.request_resync(inc.from, db.clone());
            return None;
        }
        // Each page hashed once, for this preview and for the apply after the LTX is written.
        let sums = crate::chkindex::page_sums(&inc.pages);
        match d.index.preview_with_sums(inc.header.commit, &inc.pages, &sums) {
            Ok(actual) if actual == inc.trailer.post_apply_checksum => Some((None, sums)),
            Ok(actual) => {
                self.halt_on_mismatch(db, inc.trailer.post_apply_checksum, actual);
                None
            }
            Err(error) => {
                self.event(Event::InvalidLtxPages { db: db.clone(), from: inc.from, error });
                self.request_resync(inc.from, db.clone());
                None
            }
        }
    }

    fn halt_on_mismatch(&mut self, db: &DbName, expected: u64, actual: u64) {
        let d = self.dbs.get_mut(db).expect("open");
        d.state = DbState::Halted;
        d.queue.clear();
        self.event(Event::ChecksumMismatch { db: db.clone(), expected, actual });
    }

    pub(super) fn on_replica_ltx_written(&mut self, db: DbName, result: Result<IoOutcome, IoErrorKind>) {
        let d = self.dbs.get_mut(&db).expect("apply belongs to an open database");
        let DbState::Applying(pa) = &mut d.state else { unreachable!("LTX write completion without an apply") };
        assert_eq!(pa.stage, ApplyStage::WritingLtx);
        if let Err(error) = result {
            return self.halt_apply(db, error);
        }
        if let Ok(IoOutcome::LtxMerged { min_txid }) = result {
            pa.merged_from = Some(min_txid);
        }
        if !pa.snapshot {
            let actual = d.index.apply_with_sums(pa.commit, &pa.pages, &pa.page_sums).expect("previewed before writing");
            assert_eq!(actual, pa.post.checksum, "apply agrees with the preview");
        }
        pa.stage = ApplyStage::ApplyingPages;
        let kind = IoKind::ApplyPages { db: db.clone(), page_size: d.page_size, commit: pa.commit, pages: std::mem::take(&mut pa.pages) };
        self.io(kind, IoPurpose::ReplicaApply { db });
    }

    pub(super) fn on_replica_pages_applied(&mut self, db: DbName, result: Result<IoOutcome, IoErrorKind>) {
        let d = self.dbs.get_mut(&db).expect("apply belongs to an open database");
        let DbState::Applying(pa) = std::mem::replace(&mut d.state, DbState::Idle) else {
            unreachable!("page apply completion without an apply")
        };
        assert_eq!(pa.stage, ApplyStage::ApplyingPages);
        if let Err(error) = result {
            return self.halt_apply(db, error);
        }
        d.set_pos(pa.post, pa.epoch);
        if !d.retain_written(pa.merged_from, pa.meta) {
            self.event(Event::IoFailed { db: db.clone(), error: IoErrorKind::Failed });
        }
        self.event(Event::Applied { db: db.clone(), pos: pa.post, from: pa.from });
        self.send(pa.from, Message::Ack { epoch: self.highest_epoch, db: db.clone(), pos: pa.post });
        // An apply of an older epoch that finished after this node learned a newer one (it was
        // in flight when a new primary won): the new primary may already have taken this
        // node's position from before it (a stream request or a recovery answer), and would
        // keep it there. Tell it where this node is now; it sends what is missing, or a
        // snapshot if that position is not on its history.
        if pa.epoch < self.highest_epoch {
            if let Some(upstream) = self.upstream.filter(|u| *u != pa.from) {
                self.request_resync(upstream, db.clone());
            }
        }
        self.apply_next(db);
        self.recovery_progress();
    }

    /// Starts the next queued LTX of `db`, if any.
    pub(super) fn apply_next(&mut self, db: DbName) {
        let Some(d) = self.dbs.get_mut(&db) else { return };
        if !d.is_idle() {
            return;
        }
        if let Some(next) = d.queue.pop_front() {
            self.start_apply(db, next);
        }
    }

    pub(super) fn on_ready(&mut self, from: NodeId, epoch: Epoch) {
        if !self.accept_epoch(from, epoch) {
            return;
        }
        if self.upstream == Some(from) {
            self.event(Event::PrimaryReady { primary: from });
        }
        self.on_recovery_ready(from);
    }
}
