//! Serving peers: the primary's follow streams and any node's one-shot recovery fetches.
//!
//! It decides, per peer and database, what to send next (the newest LTX from memory, one
//! compacted LTX of retained files, or a snapshot — see [`crate::catchup`]) and when a peer's
//! initial catch-up is complete (`Ready`). It refuses peers of another cluster, peers with a
//! stale epoch, and follow requests to a node that is not primary. It never sends anything a
//! peer did not ask for and never reads files itself (reads are I/O commands).

use std::collections::BTreeMap;

use crate::catchup::{decide_catch_up, CatchUp};
use crate::ids::{ClusterId, DbName, Epoch, NodeId};
use crate::ltx::{self, checksum::lock_pgno, Decoder, Header, Pos, HEADER_FLAG_COMPRESS_LZ4};
use crate::msg::{DbPos, ErrorCode, Message, StreamMode, LTX_CHUNK_BYTES_MAX};

use super::*;

/// Most consecutive snapshot reads whose image did not match our position before giving up
/// until the next commit.
const SNAPSHOT_ATTEMPTS_MAX: u32 = 3;

/// Catch-up reads of one peer's database retried in a row because a merge renamed a file they
/// named ([`PeerDb::read_retries`]); then a snapshot.
pub(super) const CATCH_UP_READ_RETRIES_MAX: u32 = 8;

/// What a serving node knows about one database of one peer.
#[derive(Debug, Clone, Default)]
pub(super) struct PeerDb {
    /// Where the peer will be after applying everything sent.
    pub sent: Pos,
    /// The last position the peer acknowledged.
    pub acked: Pos,
    /// A read for this peer is in flight.
    pub busy: bool,
    /// Something changed while busy: decide again when the read completes.
    pub again: bool,
    pub force_snapshot: bool,
    pub snapshot_attempts: u32,
    /// Catch-up reads in a row that failed because a file they named was renamed by a merge
    /// since ([`CATCH_UP_READ_RETRIES_MAX`]).
    pub read_retries: u32,
    pub reported_caught_up: bool,
}

#[derive(Debug, Clone)]
pub(super) struct Follower {
    pub mode: StreamMode,
    pub dbs: BTreeMap<DbName, PeerDb>,
    pub ready_sent: bool,
    /// Follow request received during our recovery phase: served once it ends.
    pub waiting: bool,
}

impl Node {
    pub(super) fn on_stream_request(
        &mut self,
        from: NodeId,
        epoch: Epoch,
        cluster_id: ClusterId,
        mode: StreamMode,
        positions: BTreeMap<DbName, DbPos>,
    ) {
        if cluster_id != self.config.cluster_id {
            self.refuse_cluster(from, cluster_id);
            return;
        }
        if !self.accept_epoch(from, epoch) {
            self.send(from, Message::Error { epoch: self.epoch(), code: ErrorCode::StaleEpoch, detail: String::new() });
            return;
        }
        let waiting = match (mode, self.role.primary()) {
            (StreamMode::Follow, None) => {
                self.send(from, Message::Error { epoch: self.epoch(), code: ErrorCode::NotPrimary, detail: String::new() });
                return;
            }
            (StreamMode::Follow, Some(p)) => matches!(p.phase, super::lease::Phase::Recovering(_)),
            (StreamMode::Recovery, _) => false,
        };
        // A reported position counts as acknowledged only if it is on this node's history: a
        // follower on another history at TXID 30 has not acked this node's TXID 30 (it gets a
        // snapshot, and counts for a sync commit once it acks a position of this history).
        let mut dbs: BTreeMap<DbName, PeerDb> = positions
            .into_iter()
            .map(|(name, p)| {
                let acked = if self.on_our_history(&name, p.pos) { p.pos } else { Pos::ZERO };
                (name, PeerDb { sent: p.pos, acked, ..PeerDb::default() })
            })
            .collect();
        if mode == StreamMode::Follow {
            for name in self.dbs.keys() {
                dbs.entry(name.clone()).or_default();
            }
        }
        self.followers.insert(from, Follower { mode, dbs, ready_sent: false, waiting });
        if !waiting {
            self.pump_follower(from);
        }
    }

    pub(super) fn refuse_cluster(&mut self, from: NodeId, theirs: ClusterId) {
        self.event(Event::ClusterMismatch { peer: from, theirs });
        let detail = format!("cluster {} is not {}", theirs, self.config.cluster_id);
        self.send(from, Message::Error { epoch: self.epoch(), code: ErrorCode::ClusterMismatch, detail });
    }

    /// Brings `peer` up to date on every database it streams, then sends `Ready` once.
    pub(super) fn pump_follower(&mut self, peer: NodeId) {
        let Some(f) = self.followers.get_mut(&peer) else { return };
        if f.mode == StreamMode::Follow {
            // Databases this node learned since the request (a recovery fetch): the follower
            // may not have them at all; without an entry it would get one only at their next
            // commit.
            for name in self.dbs.keys() {
                f.dbs.entry(name.clone()).or_default();
            }
        }
        let names: Vec<DbName> = f.dbs.keys().cloned().collect();
        for db in names {
            self.pump(peer, &db);
        }
        self.maybe_ready(peer);
    }

    /// After a commit: bring every follow stream of `db` forward.
    pub(super) fn pump_db_to_followers(&mut self, db: &DbName) {
        let peers: Vec<NodeId> = self
            .followers
            .iter()
            .filter(|(_, f)| f.mode == StreamMode::Follow && !f.waiting)
            .map(|(id, _)| *id)
            .collect();
        for peer in peers {
            let dbs = &mut self.followers.get_mut(&peer).expect("listed").dbs;
            if !dbs.contains_key(db) {
                dbs.insert(db.clone(), PeerDb::default());
            }
            self.pump(peer, db);
        }
    }

    /// Sends `peer` what it lacks of `db`, or starts the read that will.
    pub(super) fn pump(&mut self, peer: NodeId, db: &DbName) {
        let Some(d) = self.dbs.get(db) else { return };
        if d.pos.txid == 0 || matches!(d.state, super::db::DbState::Loading | super::db::DbState::Halted) {
            return;
        }
        let ours = d.pos;
        // A follow stream that reached this node while it recovers waits for the recovery's
        // outcome (`Follower::waiting`): serving it now — e.g. a snapshot after a Resync — would
        // label the follower with this epoch at a position the recovery may still move past,
        // and that label would outrank the acknowledged writes it is missing in the next
        // election's recovery.
        let Some(f) = self.followers.get_mut(&peer).filter(|f| !f.waiting) else { return };
        let Some(pd) = f.dbs.get_mut(db) else { return };
        if pd.busy {
            pd.again = true;
            return;
        }
        if pd.sent == ours && !pd.force_snapshot {
            return;
        }
        // A peer without the database and our newest file is a snapshot of it: send that.
        let newest_is_snapshot = matches!(&d.last_ltx, Some((1, max, _)) if *max == ours.txid);
        if pd.sent == Pos::ZERO && newest_is_snapshot && !pd.force_snapshot {
            pd.sent = ours;
            self.send_last_ltx(peer, db);
            return;
        }
        // The usual case after a commit: the peer lacks exactly our newest file, kept in memory.
        // It is what `decide_catch_up` decides then (a one-file chain from the peer's position
        // to ours) and sends from memory, without building the file list.
        if let Some(file) = newest_continues(d, pd.sent, ours).filter(|_| !pd.force_snapshot) {
            debug_assert!(matches!(decide_catch_up(ours, pd.sent, &d.files), CatchUp::Incremental { files, .. } if files.last() == Some(&file)));
            pd.sent = ours;
            self.send_last_ltx(peer, db);
            return;
        }
        let decision = if pd.force_snapshot { CatchUp::Snapshot { reason: crate::catchup::SnapshotReason::NotRetained } } else { decide_catch_up(ours, pd.sent, &d.files) };
        match decision {
            CatchUp::UpToDate => {}
            CatchUp::Incremental { files, from } => {
                let from_memory = from.is_none() && matches!((&d.last_ltx, files.as_slice()), (Some((min, max, _)), [(fmin, fmax)]) if min == fmin && max == fmax);
                if from_memory {
                    pd.sent = ours;
                    self.send_last_ltx(peer, db);
                } else {
                    pd.busy = true;
                    let purpose = IoPurpose::CatchUpRead { peer, db: db.clone(), from, files: files.clone() };
                    self.io(IoKind::ReadLtx { db: db.clone(), files }, purpose);
                }
            }
            CatchUp::Snapshot { reason } => {
                pd.busy = true;
                self.event(Event::SnapshotNeeded { peer, db: db.clone(), reason });
                self.io(IoKind::ReadDatabase { db: db.clone() }, IoPurpose::SnapshotRead { peer, db: db.clone() });
            }
        }
    }

    /// Marks the read done; returns the peer's entry if the peer still streams.
    fn finish_read(&mut self, peer: NodeId, db: &DbName) -> Option<&mut PeerDb> {
        let pd = self.followers.get_mut(&peer)?.dbs.get_mut(db)?;
        pd.busy = false;
        pd.again = false;
        Some(pd)
    }

    pub(super) fn on_catch_up_read(&mut self, peer: NodeId, db: DbName, from: Option<Pos>, named: &[(u64, u64)], result: Result<IoOutcome, IoErrorKind>) {
        if self.finish_read(peer, &db).is_none() {
            return;
        }
        // A file the read named was merged into another since (the driver answered a later
        // write `LtxMerged`, which its contract lets make this read fail): decide again, with
        // the merged file's name, instead of falling back to a snapshot — a bounded number of
        // times in a row.
        let renamed = matches!(result, Err(IoErrorKind::NotFound))
            && self.dbs.get(&db).is_some_and(|d| named.iter().any(|(min, max)| d.files.get(min).is_none_or(|f| f.max_txid != *max)));
        let pd = self.followers.get_mut(&peer).and_then(|f| f.dbs.get_mut(&db)).expect("checked");
        if renamed && pd.read_retries < CATCH_UP_READ_RETRIES_MAX {
            pd.read_retries += 1;
            self.pump(peer, &db);
            self.maybe_ready(peer);
            return;
        }
        pd.read_retries = 0;
        let compacted = match result {
            Ok(IoOutcome::LtxFiles(files)) => self.compact_files(files, from),
            Ok(_) => Err(IoErrorKind::Failed),
            Err(e) => Err(e),
        };
        let pd = self.followers.get_mut(&peer).and_then(|f| f.dbs.get_mut(&db)).expect("checked");
        match compacted {
            Ok((bytes, pos)) => {
                pd.sent = pos;
                self.send_ltx(peer, &db, &bytes);
            }
            Err(error) => {
                // A retained file vanished or is corrupt: fall back to a snapshot.
                pd.force_snapshot = true;
                self.event(Event::IoFailed { db: db.clone(), error });
            }
        }
        self.pump(peer, &db);
        self.maybe_ready(peer);
    }

    /// One LTX covering `files` (contiguous, oldest first) — from `from` inside the first one if
    /// given ([`ltx::compact_from`]) — and the position after it.
    fn compact_files(&self, files: Vec<Vec<u8>>, from: Option<Pos>) -> Result<(Vec<u8>, Pos), IoErrorKind> {
        let flags = if self.config.compress_ltx { HEADER_FLAG_COMPRESS_LZ4 } else { 0 };
        if let Some(start) = from {
            let decoders: Result<Vec<_>, _> = files.iter().map(|f| Decoder::new(f.as_slice())).collect();
            let decoders = decoders.map_err(|_| IoErrorKind::Failed)?;
            let (bytes, header, trailer) = ltx::compact_from(decoders, Vec::new(), flags, start).map_err(|_| IoErrorKind::Failed)?;
            return Ok((bytes, Pos { txid: header.max_txid, checksum: trailer.post_apply_checksum }));
        }
        if let [one] = files.as_slice() {
            let (header, _, trailer) = ltx::decode_slice(one).map_err(|_| IoErrorKind::Failed)?;
            return Ok((files.into_iter().next().expect("one"), Pos { txid: header.max_txid, checksum: trailer.post_apply_checksum }));
        }
        let decoders: Result<Vec<_>, _> = files.iter().map(|f| Decoder::new(f.as_slice())).collect();
        let decoders = decoders.map_err(|_| IoErrorKind::Failed)?;
        let (bytes, header, trailer) = ltx::compact(decoders, Vec::new(), flags).map_err(|_| IoErrorKind::Failed)?;
        Ok((bytes, Pos { txid: header.max_txid, checksum: trailer.post_apply_checksum }))
    }

    pub(super) fn on_snapshot_read(&mut self, peer: NodeId, db: DbName, result: Result<IoOutcome, IoErrorKind>) {
        if self.finish_read(peer, &db).is_none() {
            return;
        }
        let built = match result {
            Ok(IoOutcome::Database(image)) => self.build_snapshot(&db, &image),
            Ok(_) => Err(None),
            Err(e) => Err(Some(e)),
        };
        let pd = self.followers.get_mut(&peer).and_then(|f| f.dbs.get_mut(&db)).expect("checked");
        match built {
            Ok((bytes, pos)) => {
                pd.sent = pos;
                pd.force_snapshot = false;
                pd.snapshot_attempts = 0;
                self.send_ltx(peer, &db, &bytes);
                self.pump(peer, &db);
            }
            Err(error) => {
                // The image was not at our position (a commit in flight) or unreadable: retry a
                // bounded number of times now, then at the next commit.
                pd.snapshot_attempts += 1;
                let retry = pd.snapshot_attempts < SNAPSHOT_ATTEMPTS_MAX;
                if retry {
                    pd.force_snapshot = true;
                }
                if let Some(error) = error {
                    self.event(Event::IoFailed { db: db.clone(), error });
                }
                if retry && self.dbs.get(&db).is_some_and(|d| d.is_idle()) {
                    self.pump(peer, &db);
                }
            }
        }
        self.maybe_ready(peer);
    }

    /// A snapshot LTX of `image` if it is exactly our current position of `db`.
    fn build_snapshot(&self, db: &DbName, image: &[u8]) -> Result<(Vec<u8>, Pos), Option<IoErrorKind>> {
        let d = self.dbs.get(db).ok_or(None)?;
        let page_size = d.page_size as usize;
        if image.len() % page_size != 0 || image.len() / page_size != d.index.page_count() as usize {
            return Err(None);
        }
        let checksum = crate::ltx::checksum::db_checksum(image, d.page_size);
        if checksum != d.pos.checksum {
            return Err(None);
        }
        let header = Header {
            flags: if self.config.compress_ltx { HEADER_FLAG_COMPRESS_LZ4 } else { 0 },
            page_size: d.page_size,
            commit: (image.len() / page_size) as u32,
            min_txid: 1,
            max_txid: d.pos.txid,
            timestamp_ms: self.wall.estimate(self.now).0,
            node_id: self.id.0,
            ..Header::default()
        };
        let lock = lock_pgno(d.page_size);
        let pages = image
            .chunks_exact(page_size)
            .enumerate()
            .map(|(i, p)| (i as u32 + 1, p))
            .filter(|(pgno, _)| *pgno != lock);
        let bytes = ltx::encode_to_vec(header, pages, checksum).map_err(|_| None)?;
        Ok((bytes, d.pos))
    }

    /// Sends `Ready` once every streamed database is caught up (a recovery stream then ends).
    pub(super) fn maybe_ready(&mut self, peer: NodeId) {
        let Some(f) = self.followers.get(&peer) else { return };
        if f.ready_sent || f.waiting {
            return;
        }
        let done = f.dbs.iter().all(|(name, pd)| {
            let ours = self.db_pos_or_zero(name);
            !pd.busy && (ours.txid == 0 || pd.sent == ours || self.dbs.get(name).is_some_and(|d| d.is_halted()))
        });
        if !done {
            return;
        }
        let mode = f.mode;
        self.send(peer, Message::Ready { epoch: self.epoch() });
        if mode == StreamMode::Recovery {
            self.followers.remove(&peer);
        } else if let Some(f) = self.followers.get_mut(&peer) {
            f.ready_sent = true;
        }
    }

    pub(super) fn on_resync(&mut self, from: NodeId, epoch: Epoch, db: DbName, pos: Pos) {
        if !self.accept_epoch(from, epoch) {
            return;
        }
        let on_history = self.on_our_history(&db, pos);
        let Some(pd) = self.followers.get_mut(&from).and_then(|f| f.dbs.get_mut(&db)) else { return };
        pd.sent = pos;
        pd.acked = if on_history { pos } else { Pos::ZERO };
        self.pump(from, &db);
    }

    /// [`Node::send_ltx`] of `db`'s newest file kept in memory (lent out of the database state
    /// for the call instead of copied).
    fn send_last_ltx(&mut self, peer: NodeId, db: &DbName) {
        let Some(ltx) = self.dbs.get_mut(db).and_then(|d| d.last_ltx.take()) else { return };
        self.send_ltx(peer, db, &ltx.2);
        self.dbs.get_mut(db).expect("present above").last_ltx = Some(ltx);
    }

    /// Splits an LTX file into chunks for `peer`.
    fn send_ltx(&mut self, peer: NodeId, db: &DbName, bytes: &[u8]) {
        let epoch = self.epoch();
        let total_bytes = bytes.len() as u64;
        for (i, chunk) in bytes.chunks(LTX_CHUNK_BYTES_MAX).enumerate() {
            let offset = (i * LTX_CHUNK_BYTES_MAX) as u64;
            self.send(peer, Message::Ltx { epoch, db: db.clone(), offset, total_bytes, bytes: chunk.to_vec() });
        }
    }
}

/// Whether the database's newest file, kept in memory, is the whole chain from a peer at `peer` to our
/// position `ours`: [`decide_catch_up`] then decides `Incremental` with exactly that file (the
/// retained file at `peer.txid + 1` starts at the peer's checksum, is no snapshot, and ends at
/// `ours`), which [`Node::pump`] sends from memory.
/// Returns that file's TXID range.
fn newest_continues(d: &super::db::Db, peer: Pos, ours: Pos) -> Option<(u64, u64)> {
    let (min, max, _) = d.last_ltx.as_ref()?;
    if *max != ours.txid || *min == 1 || peer.txid.checked_add(1) != Some(*min) {
        return None;
    }
    // The file holding it may be a merged one ending there: the peer is then at one of its points.
    let f = d.files.containing(*min)?;
    let continues = f.max_txid == *max && d.files.checksum_at(peer.txid) == Some(peer.checksum) && f.post_apply_pos() == ours;
    continues.then_some((f.min_txid, f.max_txid))
}
