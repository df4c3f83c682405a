//! Per-database state of a node: position, lineage epoch, checksum index, retained files, and
//! the one operation in flight (a commit, an apply, a load).
//!
//! It decides nothing about roles; it only keeps one database's facts consistent (position and
//! index move together). It never does I/O.

use std::collections::VecDeque;

use crate::catchup::{LtxFileMeta, RetainedFiles};
use crate::chkindex::ChecksumIndex;
use crate::ids::{Epoch, NodeId};
use crate::ltx::{Header, Pos, Trailer};
use crate::time::Time;


/// A decoded LTX waiting to be applied.
#[derive(Debug, Clone)]
pub(crate) struct Incoming {
    pub from: NodeId,
    pub epoch: Epoch,
    pub header: Header,
    pub pages: Vec<(u32, Vec<u8>)>,
    pub trailer: Trailer,
    pub bytes: Vec<u8>,
}

/// An LTX being reassembled from chunks.
#[derive(Debug, Clone)]
pub(crate) struct Partial {
    pub from: NodeId,
    pub total_bytes: u64,
    pub bytes: Vec<u8>,
}

/// The primary's commit whose LTX write is in flight.
#[derive(Debug, Clone)]
pub(crate) struct PendingCommit {
    pub epoch: Epoch,
    pub pos: Pos,
    pub bytes: Vec<u8>,
    pub meta: LtxFileMeta,
}

/// A durable commit waiting for replica acks (sync mode).
#[derive(Debug, Clone)]
pub(crate) struct SyncWait {
    pub pos: Pos,
    pub until: Time,
    pub acked: std::collections::BTreeSet<NodeId>,
}

/// Which step of an apply is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApplyStage {
    /// A snapshot: the files of the history it replaces are being deleted; its LTX is written
    /// only once they are gone (a stale newer file left beside it would be taken for the
    /// position at the next start-up).
    DeletingReplaced,
    WritingLtx,
    ApplyingPages,
}

/// A replica apply in flight.
#[derive(Debug, Clone)]
pub(crate) struct PendingApply {
    pub from: NodeId,
    pub epoch: Epoch,
    pub post: Pos,
    pub commit: u32,
    pub pages: Vec<(u32, Vec<u8>)>,
    /// `page_sums[i]` is the page checksum of `pages[i]`, computed once for the preview and
    /// reused by the apply; empty for snapshots (their index is built before writing).
    pub page_sums: Vec<u64>,
    pub meta: LtxFileMeta,
    pub snapshot: bool,
    pub stage: ApplyStage,
    /// The driver stored the LTX merged with the files from this TXID on
    /// ([`crate::node::IoOutcome::LtxMerged`]).
    pub merged_from: Option<u64>,
    /// The LTX while the replaced files are deleted ([`ApplyStage::DeletingReplaced`]).
    pub bytes: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub(crate) enum DbState {
    Idle,
    /// Reading the image to rebuild the checksum index.
    Loading,
    Committing(PendingCommit),
    SyncWait(SyncWait),
    Applying(PendingApply),
    /// Stopped applying (checksum mismatch) or writing (failed commit); see events.
    Halted,
}

#[derive(Debug, Clone)]
pub(crate) struct Db {
    pub page_size: u32,
    pub pos: Pos,
    /// The epoch of the primary whose lineage `pos` belongs to.
    pub pos_epoch: Epoch,
    pub index: ChecksumIndex,
    pub files: RetainedFiles,
    pub state: DbState,
    pub queue: VecDeque<Incoming>,
    /// The newest LTX this node wrote or applied, kept to stream it without a read.
    pub last_ltx: Option<(u64, u64, Vec<u8>)>,
    /// The position changed since the index was last persisted.
    pub index_dirty: bool,
    /// The start-up repair in progress while loading, if the file was not at its position.
    pub repair: Option<super::housekeeping::Repair>,
}

impl Db {
    pub fn new(index: ChecksumIndex) -> Db {
        Db {
            page_size: index.page_size(),
            pos: Pos::ZERO,
            pos_epoch: Epoch::ZERO,
            index,
            files: RetainedFiles::new(),
            state: DbState::Idle,
            queue: VecDeque::new(),
            last_ltx: None,
            index_dirty: false,
            repair: None,
        }
    }

    pub fn is_idle(&self) -> bool {
        matches!(self.state, DbState::Idle)
    }
    pub fn is_halted(&self) -> bool {
        matches!(self.state, DbState::Halted)
    }

    /// Records a new durable position; the index must already be at it.
    pub fn set_pos(&mut self, pos: Pos, epoch: Epoch) {
        assert_eq!(self.index.checksum(), pos.checksum, "index and position disagree");
        assert!(pos.txid > 0, "a durable position has a TXID");
        self.pos = pos;
        self.pos_epoch = epoch;
        self.index_dirty = true;
    }

    /// Adds a durable file to the retained set (a snapshot file replaces every other).
    pub fn retain(&mut self, meta: LtxFileMeta) {
        if meta.min_txid == 1 {
            self.files.clear();
        }
        // Retained files are contiguous and ordered (every insert goes through here), so those reaching
        // `meta.min_txid` form a suffix: dropping them costs O(dropped), not O(retained) per commit.
        while let Some(last) = self.files.last() {
            if last.max_txid < meta.min_txid {
                break;
            }
            self.files.pop_last();
        }
        self.files.insert(meta.min_txid, meta);
    }

    /// [`Db::retain`] for a file the driver stored merged with the retained files from
    /// `merged_from` on ([`crate::node::IoOutcome::LtxMerged`]). `None` (and nothing changes)
    /// if those files are not the chain `meta` continues: the driver broke its contract.
    pub fn retain_merged(&mut self, merged_from: u64, meta: LtxFileMeta) -> Option<LtxFileMeta> {
        if meta.min_txid == 1 || merged_from >= meta.min_txid {
            return None;
        }
        self.files.merge_tail(merged_from, meta).ok()
    }

    /// Retains `meta` as the write's answer says: merged ([`Db::retain_merged`]) or on its own.
    /// False if a merge answer did not fit the retained files (`meta` is retained on its own).
    pub fn retain_written(&mut self, merged_from: Option<u64>, meta: LtxFileMeta) -> bool {
        match merged_from {
            Some(from) if self.files.last().is_some_and(|l| l.max_txid < meta.min_txid) => {
                if self.retain_merged(from, meta).is_some() {
                    return true;
                }
                self.retain(meta);
                false
            }
            Some(_) => {
                self.retain(meta);
                false
            }
            None => {
                self.retain(meta);
                true
            }
        }
    }
}

/// The metadata of a file this node has just made durable.
pub(crate) fn file_meta(header: &Header, trailer: &Trailer, size_bytes: usize, now: Time) -> LtxFileMeta {
    LtxFileMeta {
        min_txid: header.min_txid,
        max_txid: header.max_txid,
        pre_apply_checksum: header.pre_apply_checksum,
        post_apply_checksum: trailer.post_apply_checksum,
        size_bytes: size_bytes as u64,
        written_at: now,
    }
}
