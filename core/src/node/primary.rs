//! The primary's write path: local commit → next LTX (txid + 1, pre-apply = current checksum,
//! post-apply = index checksum after the pages) → write + fsync → durable → streamed to
//! followers → (sync mode) N acks → committed. Also acks, heartbeats and handoff.
//!
//! It decides whether a local commit is accepted (role, phase, lease deadline, one commit in
//! flight per database) and when a commit is reported committed, unknown or failed. It never
//! reports success for a commit whose lease epoch ended first, and never writes anything itself.

use crate::chkindex::ChecksumIndex;
use crate::ids::{DbName, Epoch, NodeId};
use crate::ltx::{self, Header, Pos, HEADER_FLAG_COMPRESS_LZ4};
use crate::msg::Message;

use super::db::{Db, DbState, PendingCommit, SyncWait};
use super::lease::{Handoff, Phase};
use super::*;

impl Node {
    /// Why a local commit would be refused now, if it would.
    fn write_refusal(&self) -> Option<RejectReason> {
        let Some(p) = self.role.primary() else { return Some(RejectReason::NotPrimary) };
        match p.phase {
            Phase::Recovering(_) => return Some(RejectReason::Recovering),
            Phase::HandingOff(_) => return Some(RejectReason::HandoffInProgress),
            Phase::Writable => {}
        }
        if self.now >= p.deadline && !planted!(self, WriteAfterLease) {
            return Some(RejectReason::LeaseDeadline);
        }
        None
    }

    pub(super) fn on_local_commit(&mut self, c: LocalCommit) -> Result<(), InputError> {
        self.wall.set(self.now, c.wall);
        if !ltx::is_valid_page_size(c.page_size) {
            return Err(InputError::BadPageSize(c.page_size));
        }
        if let Some(reason) = self.write_refusal() {
            self.event(Event::WriteRejected { db: c.db, reason });
            return Ok(());
        }
        if let Some(d) = self.dbs.get(&c.db) {
            if d.page_size != c.page_size {
                return Err(InputError::PageSizeChanged { db: c.db, was: d.page_size, now: c.page_size });
            }
            let busy = match d.state {
                // Pages but no position (the file did not match its last LTX at start-up): the
                // next LTX would be TXID 1, which must be a snapshot of every page, and the commit
                // only has the dirty ones. Refuse until a snapshot from a peer sets the position.
                DbState::Idle if d.pos.txid == 0 && d.index.page_count() > 0 => Some(RejectReason::DbUnavailable),
                DbState::Idle => None,
                DbState::Committing(_) | DbState::SyncWait(_) => Some(RejectReason::CommitInFlight),
                _ => Some(RejectReason::DbUnavailable),
            };
            if let Some(reason) = busy {
                self.event(Event::WriteRejected { db: c.db, reason });
                return Ok(());
            }
        }
        self.start_commit(c)
    }

    fn start_commit(&mut self, c: LocalCommit) -> Result<(), InputError> {
        let created = !self.dbs.contains_key(&c.db);
        let result = self.start_commit_inner(&c);
        if result.is_err() && created {
            self.dbs.remove(&c.db); // an invalid first commit leaves no trace
        }
        result
    }

    fn start_commit_inner(&mut self, c: &LocalCommit) -> Result<(), InputError> {
        let epoch = self.epoch();
        let (compress, node_id, now) = (self.config.compress_ltx, self.id.0, self.now);
        let fresh = ChecksumIndex::new(c.page_size).map_err(|error| InputError::InvalidCommit { db: c.db.clone(), error })?;
        // Looked up twice rather than `entry`, which takes a name of its own on every commit.
        if !self.dbs.contains_key(&c.db) {
            self.dbs.insert(c.db.clone(), Db::new(fresh));
        }
        let d = self.dbs.get_mut(&c.db).expect("inserted above");
        // Each page hashed once for both the preview and the apply below.
        let sums = &mut self.sums_scratch;
        sums.clear();
        sums.extend(c.pages.iter().map(|(pgno, data)| crate::ltx::checksum::page_checksum(*pgno, data)));
        let post = d.index.preview_with_sums(c.commit, &c.pages, sums).map_err(|error| InputError::InvalidCommit { db: c.db.clone(), error })?;
        let txid = d.pos.txid + 1;
        let mut header = Header {
            flags: if compress { HEADER_FLAG_COMPRESS_LZ4 } else { 0 },
            page_size: c.page_size,
            commit: c.commit,
            min_txid: txid,
            max_txid: txid,
            timestamp_ms: c.wall.0,
            pre_apply_checksum: if txid == 1 { 0 } else { d.pos.checksum },
            node_id,
            ..Header::default()
        };
        if let Some(wal) = c.wal {
            // Offsets beyond i64 cannot come from a real WAL; such a commit carries no WAL fields.
            if let (Ok(offset), Ok(size)) = (i64::try_from(wal.offset), i64::try_from(wal.size)) {
                if offset > 0 && size > 0 {
                    header.wal_offset = offset;
                    header.wal_size = size;
                    header.wal_salt1 = wal.salt1;
                    header.wal_salt2 = wal.salt2;
                }
            }
        }
        let bytes = ltx::encode_to_vec_with(&mut self.ltx_scratch, header, c.pages.iter().map(|(p, b)| (*p, b.as_slice())), post)?;
        let applied = d.index.apply_with_sums(c.commit, &c.pages, sums).map_err(|error| InputError::InvalidCommit { db: c.db.clone(), error })?;
        assert_eq!(applied, post, "preview and apply agree");
        let pos = Pos { txid, checksum: post };
        let meta = crate::catchup::LtxFileMeta {
            min_txid: txid,
            max_txid: txid,
            pre_apply_checksum: header.pre_apply_checksum,
            post_apply_checksum: post,
            size_bytes: bytes.len() as u64,
            written_at: now,
        };
        let fsync = !planted!(self, NoFsyncLtx);
        let kind = IoKind::WriteLtx { db: c.db.clone(), min_txid: txid, max_txid: txid, bytes: bytes.clone(), fsync, epoch };
        self.io(kind, IoPurpose::Commit { db: c.db.clone() });
        let d = self.dbs.get_mut(&c.db).expect("inserted above");
        d.state = DbState::Committing(PendingCommit { epoch, pos, bytes, meta });
        Ok(())
    }

    pub(super) fn on_commit_written(&mut self, db: DbName, result: Result<IoOutcome, IoErrorKind>) {
        let d = self.dbs.get_mut(&db).expect("a commit write belongs to an open database");
        let DbState::Committing(pc) = std::mem::replace(&mut d.state, DbState::Idle) else {
            unreachable!("commit write completion without a pending commit");
        };
        if let Err(error) = result {
            // The database file has the pages but no durable LTX: stop using it.
            d.state = DbState::Halted;
            self.event(Event::CommitFailed { db, error });
            self.step_down(StepDownReason::WriteFailed);
            return;
        }
        let merged_from = match result {
            Ok(IoOutcome::LtxMerged { min_txid }) => Some(min_txid),
            _ => None,
        };
        d.set_pos(pc.pos, pc.epoch);
        let kept = d.retain_written(merged_from, pc.meta);
        d.last_ltx = Some((pc.pos.txid, pc.pos.txid, pc.bytes));
        if !kept {
            self.event(Event::IoFailed { db: db.clone(), error: IoErrorKind::Failed });
        }
        let still_ours = self.role.primary().is_some_and(|p| p.epoch == pc.epoch && self.now < p.deadline)
            || planted!(self, WriteAfterLease);
        if !still_ours {
            self.event(Event::CommitOutcomeUnknown { db, pos: pc.pos });
            return;
        }
        self.pump_db_to_followers(&db);
        if self.config.sync_replicas == 0 || planted!(self, AckBeforeReplicas) {
            self.event(Event::Committed { db: db.clone(), pos: pc.pos });
        } else {
            let until = self.now + self.config.sync_ack_timeout;
            let acked = self.followers_at(&db, pc.pos);
            let d = self.dbs.get_mut(&db).expect("exists");
            d.state = DbState::SyncWait(SyncWait { pos: pc.pos, until, acked });
            self.check_sync(&db);
        }
        self.check_handoff();
    }

    /// Followers whose acked position of `db` is at or past `pos`.
    fn followers_at(&self, db: &DbName, pos: Pos) -> std::collections::BTreeSet<NodeId> {
        self.followers
            .iter()
            .filter(|(_, f)| f.dbs.get(db).is_some_and(|pd| pd.acked.txid >= pos.txid))
            .map(|(id, _)| *id)
            .collect()
    }

    fn check_sync(&mut self, db: &DbName) {
        let need = self.config.sync_replicas as usize;
        let Some(d) = self.dbs.get_mut(db) else { return };
        let DbState::SyncWait(w) = &d.state else { return };
        if w.acked.len() < need {
            return;
        }
        let pos = w.pos;
        d.state = DbState::Idle;
        self.event(Event::Committed { db: db.clone(), pos });
        self.check_handoff();
    }

    pub(super) fn on_ack(&mut self, from: NodeId, epoch: Epoch, db: DbName, pos: Pos) {
        if !self.accept_epoch(from, epoch) {
            return;
        }
        let ours = self.db_pos_or_zero(&db);
        // An ack of a position this node cannot prove is on its history (a follower finishing
        // an apply from a deposed primary, or on another history) counts for nothing.
        if !self.on_our_history(&db, pos) {
            return;
        }
        let Some(pd) = self.followers.get_mut(&from).and_then(|f| f.dbs.get_mut(&db)) else { return };
        if pos.txid >= pd.acked.txid {
            pd.acked = pos;
        }
        let caught_up = pos == ours && !pd.reported_caught_up;
        if caught_up {
            pd.reported_caught_up = true;
            self.event(Event::ReplicaCaughtUp { peer: from, db: db.clone(), pos });
        }
        if let Some(DbState::SyncWait(w)) = self.dbs.get_mut(&db).map(|d| &mut d.state) {
            if pos.txid >= w.pos.txid {
                w.acked.insert(from);
            }
        }
        self.check_sync(&db);
        self.check_handoff();
    }

    /// Reports every unconfirmed commit as unknown (the lease is ending).
    pub(super) fn fail_pending_commits(&mut self) {
        let mut unknown = Vec::new();
        for (name, d) in self.dbs.iter_mut() {
            if let DbState::SyncWait(w) = &d.state {
                unknown.push((name.clone(), w.pos));
                d.state = DbState::Idle;
            }
        }
        for (db, pos) in unknown {
            self.event(Event::CommitOutcomeUnknown { db, pos });
        }
    }

    pub(super) fn primary_timers(&mut self) {
        let now = self.now;
        let Some(p) = self.role.primary() else { return };
        let epoch = p.epoch;
        if now >= self.heartbeat_at {
            self.heartbeat_at = now + self.config.heartbeat_interval;
            let wall_ms = self.wall.estimate(now).0;
            let peers: Vec<NodeId> = self.followers.keys().copied().collect();
            for peer in peers {
                self.send(peer, Message::Heartbeat { epoch, wall_ms });
            }
            self.pump_lagging_followers();
        }
        let expired: Vec<(DbName, Pos)> = self
            .dbs
            .iter()
            .filter_map(|(n, d)| match &d.state {
                DbState::SyncWait(w) if w.until <= now => Some((n.clone(), w.pos)),
                _ => None,
            })
            .collect();
        for (db, pos) in expired {
            self.dbs.get_mut(&db).expect("listed").state = DbState::Idle;
            self.event(Event::CommitOutcomeUnknown { db, pos });
        }
        self.handoff_timer();
    }

    /// Once a heartbeat: a follower still short of an idle database (its catch-up or snapshot
    /// failed, e.g. a snapshot read that hit a full disk, and no commit has come since to try
    /// again — commits may not come while the disk stays full) is brought forward again.
    /// Bounded: one decision per follower and database per heartbeat; a read in flight waits.
    fn pump_lagging_followers(&mut self) {
        let dbs = &self.dbs;
        let lagging: Vec<(NodeId, DbName)> = self
            .followers
            .iter()
            .filter(|(_, f)| f.mode == crate::msg::StreamMode::Follow && !f.waiting)
            .flat_map(|(peer, f)| {
                f.dbs.iter().filter_map(move |(db, pd)| {
                    let d = dbs.get(db)?;
                    (d.is_idle() && d.pos.txid > 0 && !pd.busy && pd.sent != d.pos).then(|| (*peer, db.clone()))
                })
            })
            .collect();
        for (peer, db) in lagging {
            self.pump(peer, &db);
        }
    }

    pub(super) fn primary_timeout(&self) -> Option<Time> {
        let p = self.role.primary()?;
        let sync = self.dbs.values().filter_map(|d| match &d.state {
            DbState::SyncWait(w) => Some(w.until),
            _ => None,
        });
        let handoff = match &p.phase {
            // Once the lease service has the request only its reply ends the handoff
            // ([`Node::handoff_timer`]): a deadline reported then would fire forever.
            Phase::HandingOff(h) if h.lease_request.is_none() => Some(h.until),
            _ => None,
        };
        sync.chain(handoff).chain(Some(self.heartbeat_at)).min()
    }

    pub(super) fn on_handoff_request(&mut self, to: NodeId) -> Result<(), InputError> {
        if !self.role.primary().is_some_and(|p| p.is_writable()) {
            self.event(Event::HandoffFailed { to });
            return Ok(());
        }
        if !self.followers.contains_key(&to) {
            return Err(InputError::HandoffTargetUnknown(to));
        }
        let until = self.now + self.config.handoff_timeout;
        if let Some(p) = self.role.primary_mut() {
            p.phase = Phase::HandingOff(Handoff { to, until, lease_request: None });
        }
        self.check_handoff();
        Ok(())
    }

    /// Hands the lease over once no commit is pending and the target acked every position.
    fn check_handoff(&mut self) {
        let Some(Phase::HandingOff(h)) = self.role.primary().map(|p| &p.phase) else { return };
        if h.lease_request.is_some() {
            return;
        }
        let to = h.to;
        let Some(f) = self.followers.get(&to) else { return };
        let ready = self.dbs.iter().all(|(name, d)| {
            d.is_idle() && (d.pos.txid == 0 || f.dbs.get(name).is_some_and(|pd| pd.acked == d.pos))
        });
        if ready {
            self.request_lease_handoff(to);
        }
    }

    fn handoff_timer(&mut self) {
        let now = self.now;
        let Some(p) = self.role.primary_mut() else { return };
        let Phase::HandingOff(h) = &p.phase else { return };
        if h.until > now || h.lease_request.is_some() {
            return; // once the lease service has the request, only its reply ends the handoff
        }
        let to = h.to;
        p.phase = Phase::Writable;
        self.event(Event::HandoffFailed { to });
    }
}
