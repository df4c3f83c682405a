//! Catch-up decisions: what a serving node (the primary, or any node answering a recovery fetch)
//! sends a peer that reports position `p` for a database.
//!
//! It decides between "nothing", "one compacted LTX built from these retained files" and "a
//! snapshot, because …" (LiteFS `streamDB` rules, reference §2, plus compaction of the intact
//! chain instead of LiteFS's file-by-file or snapshot). It never reads files, never builds LTX
//! bytes and never looks at the peer's role: the node turns the decision into I/O commands.

use std::collections::VecDeque;

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

/// Retained files of one database keyed by `min_txid`: an ordered map (same answers as a
/// `BTreeMap<u64, LtxFileMeta>`), held as a double-ended queue sorted by `min_txid`. A node adds
/// its newest file at the back on every commit or apply and retention removes the oldest at the
/// front; a B-tree map moved entries within nodes and allocated and freed them there, and its
/// scans (retention walks hundreds of files) chased pointers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetainedFiles {
    files: VecDeque<LtxFileMeta>,
}

impl RetainedFiles {
    pub fn new() -> RetainedFiles {
        RetainedFiles::default()
    }

    /// Where the file keyed `min_txid` is (`Ok`) or would go (`Err`).
    fn find(&self, min_txid: u64) -> Result<usize, usize> {
        // Files of one TXID each are dense: the file sits at its distance from the first one.
        if let Some(first) = self.files.front() {
            let guess = min_txid.checked_sub(first.min_txid).and_then(|d| usize::try_from(d).ok());
            if let Some(at) = guess.filter(|at| self.files.get(*at).is_some_and(|f| f.min_txid == min_txid)) {
                return Ok(at);
            }
        }
        match self.files.back() {
            None => Err(0),
            Some(last) if last.min_txid < min_txid => Err(self.files.len()),
            Some(_) => self.files.binary_search_by_key(&min_txid, |f| f.min_txid),
        }
    }

    /// The file whose `min_txid` is `min_txid`.
    pub fn get(&self, min_txid: &u64) -> Option<&LtxFileMeta> {
        self.find(*min_txid).ok().map(|at| &self.files[at])
    }

    /// Puts `meta` under the key `min_txid`, returning the file it replaces.
    pub fn insert(&mut self, min_txid: u64, meta: LtxFileMeta) -> Option<LtxFileMeta> {
        assert_eq!(min_txid, meta.min_txid, "retained files are keyed by their min TXID");
        match self.find(min_txid) {
            Ok(at) => Some(std::mem::replace(&mut self.files[at], meta)),
            Err(at) => {
                self.files.insert(at, meta);
                None
            }
        }
    }

    /// Removes the file keyed `min_txid`.
    pub fn remove(&mut self, min_txid: &u64) -> Option<LtxFileMeta> {
        if self.files.front().is_some_and(|f| f.min_txid == *min_txid) {
            return self.files.pop_front();
        }
        let at = self.find(*min_txid).ok()?;
        self.files.remove(at)
    }

    /// The newest file (highest `min_txid`).
    pub fn last(&self) -> Option<&LtxFileMeta> {
        self.files.back()
    }

    /// Removes the newest file.
    pub fn pop_last(&mut self) -> Option<LtxFileMeta> {
        self.files.pop_back()
    }

    pub fn clear(&mut self) {
        self.files.clear();
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Every file, oldest first.
    pub fn values(&self) -> std::collections::vec_deque::Iter<'_, LtxFileMeta> {
        self.files.iter()
    }
}

/// A map from `(min_txid, file)` pairs (a later pair replaces an earlier one of the same key).
impl FromIterator<(u64, LtxFileMeta)> for RetainedFiles {
    fn from_iter<I: IntoIterator<Item = (u64, LtxFileMeta)>>(iter: I) -> RetainedFiles {
        let mut files = RetainedFiles::new();
        for (min_txid, meta) in iter {
            files.insert(min_txid, meta);
        }
        files
    }
}

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

    /// The retained-file queue answers as a B-tree map keyed by min TXID does, under appends,
    /// inserts anywhere, replacements, removals at both ends and in the middle, and clears.
    #[test]
    fn retained_files_behave_as_an_ordered_map() {
        let meta = |min: u64, tag: u64| LtxFileMeta { min_txid: min, max_txid: min, pre_apply_checksum: tag, post_apply_checksum: 0, size_bytes: 1, written_at: Time::ZERO };
        let mut files = RetainedFiles::new();
        let mut reference: std::collections::BTreeMap<u64, LtxFileMeta> = std::collections::BTreeMap::new();
        let mut state = 3u64;
        for i in 0..4_000u64 {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let r = state >> 20;
            let key = match r % 4 {
                0 => (r >> 8) % (i + 3),
                _ => i,
            };
            match (r >> 4) % 16 {
                0..=8 => assert_eq!(files.insert(key, meta(key, i)), reference.insert(key, meta(key, i))),
                9..=11 => assert_eq!(files.remove(&key), reference.remove(&key)),
                12 => {
                    let first = reference.keys().next().copied().unwrap_or(0);
                    assert_eq!(files.remove(&first), reference.remove(&first));
                }
                13 => assert_eq!(files.pop_last(), reference.pop_last().map(|(_, m)| m)),
                14 if r % 50 == 0 => {
                    files.clear();
                    reference.clear();
                }
                _ => {}
            }
            assert_eq!(files.get(&key), reference.get(&key));
            assert_eq!(files.last(), reference.values().next_back());
            assert_eq!(files.len(), reference.len());
            assert!(files.values().eq(reference.values()), "after step {i}");
        }
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
