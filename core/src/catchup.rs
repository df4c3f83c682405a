//! Catch-up decisions: what a serving node (the primary, or any node answering a recovery fetch)
//! sends a peer that reports position `p` for a database.
//!
//! It decides between "nothing", "one compacted LTX built from these retained files" and "a
//! snapshot, because …" (LiteFS `streamDB` rules, reference §2, plus compaction of the intact
//! chain instead of LiteFS's file-by-file or snapshot). It never reads files, never builds LTX
//! bytes and never looks at the peer's role: the node turns the decision into I/O commands.

use std::collections::BTreeMap;

use crate::ltx::Pos;
use crate::time::Time;

/// What the node knows about one retained LTX file of a database (no bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LtxFileMeta {
    pub min_txid: u64,
    pub max_txid: u64,
    /// Checksum before applying (0 for a snapshot file, whose `min_txid` is 1).
    pub pre_apply_checksum: u64,
    pub post_apply_checksum: u64,
    pub size_bytes: u64,
    /// When this node made the file durable (or learned of it at start-up), for retention by age.
    pub written_at: Time,
}

impl LtxFileMeta {
    /// The position after applying the file.
    pub fn post_apply_pos(&self) -> Pos {
        Pos { txid: self.max_txid, checksum: self.post_apply_checksum }
    }
}

/// Retained files of one database keyed by `min_txid`.
pub type RetainedFiles = BTreeMap<u64, LtxFileMeta>;

/// Why a peer gets a full snapshot instead of incremental LTX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SnapshotReason {
    /// The peer has no data for the database.
    PeerEmpty,
    /// The peer's TXID is past ours: its extra transactions are not in our history.
    PeerAhead,
    /// Same TXID but another checksum, or a retained file does not start at the peer's checksum.
    Diverged,
    /// A file the peer needs is no longer retained.
    NotRetained,
}

/// The decision for one database and one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatchUp {
    UpToDate,
    /// Compact these retained files, `(min_txid, max_txid)` in order, into one LTX.
    Incremental { files: Vec<(u64, u64)> },
    Snapshot { reason: SnapshotReason },
}

/// Decides how to bring a peer at `peer` up to `ours`, given our retained files.
pub fn decide_catch_up(ours: Pos, peer: Pos, files: &RetainedFiles) -> CatchUp {
    if peer == ours {
        return CatchUp::UpToDate;
    }
    if peer.txid == 0 {
        return CatchUp::Snapshot { reason: SnapshotReason::PeerEmpty };
    }
    if peer.txid > ours.txid {
        return CatchUp::Snapshot { reason: SnapshotReason::PeerAhead };
    }
    if peer.txid == ours.txid {
        return CatchUp::Snapshot { reason: SnapshotReason::Diverged };
    }
    walk_chain(ours, peer, files)
}

/// Follows retained files from `peer.txid + 1` to `ours.txid`; bounded by the file count.
fn walk_chain(ours: Pos, peer: Pos, files: &RetainedFiles) -> CatchUp {
    let mut at = peer;
    let mut chain = Vec::new();
    for _ in 0..files.len() {
        let Some(f) = files.get(&(at.txid + 1)) else {
            return CatchUp::Snapshot { reason: SnapshotReason::NotRetained };
        };
        if f.min_txid == 1 || f.pre_apply_checksum != at.checksum {
            return CatchUp::Snapshot { reason: SnapshotReason::Diverged };
        }
        chain.push((f.min_txid, f.max_txid));
        at = f.post_apply_pos();
        if at.txid >= ours.txid {
            break;
        }
    }
    if at != ours {
        // Our own chain does not end at our position: never stream it.
        return CatchUp::Snapshot { reason: if at.txid < ours.txid { SnapshotReason::NotRetained } else { SnapshotReason::Diverged } };
    }
    debug_assert!(!chain.is_empty());
    CatchUp::Incremental { files: chain }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u64) -> u64 {
        (1 << 63) | n
    }

    fn files(ranges: &[(u64, u64)]) -> RetainedFiles {
        ranges
            .iter()
            .map(|&(min, max)| {
                let pre = if min == 1 { 0 } else { c(min - 1) };
                (min, LtxFileMeta { min_txid: min, max_txid: max, pre_apply_checksum: pre, post_apply_checksum: c(max), size_bytes: 100, written_at: Time::ZERO })
            })
            .collect()
    }

    fn pos(t: u64) -> Pos {
        Pos { txid: t, checksum: c(t) }
    }

    #[test]
    fn lagging_peer_with_intact_chain_gets_one_compacted_ltx() {
        let f = files(&[(1, 3), (4, 4), (5, 6), (7, 7)]);
        assert_eq!(decide_catch_up(pos(7), pos(4), &f), CatchUp::Incremental { files: vec![(5, 6), (7, 7)] });
        assert_eq!(decide_catch_up(pos(7), pos(7), &f), CatchUp::UpToDate);
    }

    #[test]
    fn snapshot_reasons() {
        let f = files(&[(4, 4), (5, 5)]);
        let snap = |reason| CatchUp::Snapshot { reason };
        assert_eq!(decide_catch_up(pos(5), Pos::ZERO, &f), snap(SnapshotReason::PeerEmpty));
        assert_eq!(decide_catch_up(pos(5), pos(6), &f), snap(SnapshotReason::PeerAhead));
        assert_eq!(decide_catch_up(pos(5), Pos { txid: 5, checksum: c(99) }, &f), snap(SnapshotReason::Diverged));
        assert_eq!(decide_catch_up(pos(5), Pos { txid: 3, checksum: c(99) }, &f), snap(SnapshotReason::Diverged));
        assert_eq!(decide_catch_up(pos(5), pos(2), &f), snap(SnapshotReason::NotRetained));
        // A hole in our own retained chain.
        let holed = files(&[(4, 4), (6, 6)]);
        assert_eq!(decide_catch_up(pos(6), pos(3), &holed), snap(SnapshotReason::NotRetained));
    }
}
