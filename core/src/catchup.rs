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
///
/// A driver may store a new file merged with the files before it into one (answering the write
/// with [`crate::node::IoOutcome::LtxMerged`]); the positions the merged files ended at are kept
/// as *points* so that a peer at one of them can still continue incrementally with the merged
/// file (see [`CatchUp::Incremental`]'s `from`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetainedFiles {
    files: VecDeque<LtxFileMeta>,
    /// Positions inside merged files, ascending by TXID: a point at TXID `t` lies in the file
    /// with `min_txid <= t < max_txid`.
    points: VecDeque<Pos>,
}

/// Why [`RetainedFiles::merge_tail`] refused a merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("files from TXID {from_min_txid} up to TXID {next_min_txid} are not a retained chain that the new file continues")]
pub struct MergeMismatch {
    pub from_min_txid: u64,
    pub next_min_txid: u64,
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

    /// Removes the file keyed `min_txid` (and the points inside it).
    pub fn remove(&mut self, min_txid: &u64) -> Option<LtxFileMeta> {
        let removed = if self.files.front().is_some_and(|f| f.min_txid == *min_txid) {
            self.files.pop_front()
        } else {
            let at = self.find(*min_txid).ok()?;
            self.files.remove(at)
        };
        if let Some(f) = &removed {
            if f.max_txid > f.min_txid && !self.points.is_empty() {
                if self.points.front().is_some_and(|p| p.txid >= f.min_txid) {
                    // Retention removes the oldest file: its points are at the front.
                    while self.points.front().is_some_and(|p| p.txid < f.max_txid) {
                        self.points.pop_front();
                    }
                } else {
                    self.points.retain(|p| p.txid < f.min_txid || p.txid >= f.max_txid);
                }
            }
        }
        removed
    }

    /// Replaces the newest files from `from_min_txid` on with one file that also holds `next`,
    /// the file that continues them (a driver stored them merged). The positions they ended at
    /// become points. Refused (nothing changes) unless those files are a contiguous chain that
    /// starts at `from_min_txid` and that `next` continues.
    pub fn merge_tail(&mut self, from_min_txid: u64, next: LtxFileMeta) -> Result<LtxFileMeta, MergeMismatch> {
        let mismatch = MergeMismatch { from_min_txid, next_min_txid: next.min_txid };
        let start = match self.find(from_min_txid) {
            Ok(at) => at,
            Err(_) => return Err(mismatch),
        };
        let tail: Vec<LtxFileMeta> = self.files.range(start..).copied().collect();
        let contiguous = tail.windows(2).all(|w| w[0].max_txid + 1 == w[1].min_txid && w[0].post_apply_checksum == w[1].pre_apply_checksum);
        let last = tail.last().expect("found above");
        if !contiguous || last.max_txid + 1 != next.min_txid || last.post_apply_checksum != next.pre_apply_checksum {
            return Err(mismatch);
        }
        let first = tail[0];
        let mut points: Vec<Pos> = Vec::new();
        while self.points.back().is_some_and(|p| p.txid >= from_min_txid) {
            points.extend(self.points.pop_back());
        }
        points.extend(tail.iter().map(LtxFileMeta::post_apply_pos));
        points.sort_by_key(|p| p.txid);
        self.points.extend(points);
        self.files.truncate(start);
        let merged = LtxFileMeta {
            min_txid: first.min_txid,
            max_txid: next.max_txid,
            pre_apply_checksum: first.pre_apply_checksum,
            post_apply_checksum: next.post_apply_checksum,
            size_bytes: tail.iter().map(|f| f.size_bytes).sum::<u64>().saturating_add(next.size_bytes),
            written_at: next.written_at,
        };
        self.files.push_back(merged);
        Ok(merged)
    }

    /// Records `p` as a point (a position inside a merged file, recorded when it was merged)
    /// if it lies strictly inside a retained file and is not known yet; false otherwise.
    pub fn add_point(&mut self, p: Pos) -> bool {
        let inside = self.containing(p.txid).is_some_and(|f| f.max_txid > p.txid);
        let at = self.points.partition_point(|q| q.txid < p.txid);
        if !inside || self.points.get(at).is_some_and(|q| q.txid == p.txid) {
            return false;
        }
        self.points.insert(at, p);
        true
    }

    /// The checksum of the database at TXID `txid`, if a retained file starts or ends there or
    /// a merged file passed through it.
    pub fn checksum_at(&self, txid: u64) -> Option<u64> {
        if let Some(f) = self.get(&(txid + 1)) {
            return Some(f.pre_apply_checksum).filter(|_| f.min_txid > 1);
        }
        let at = self.points.partition_point(|p| p.txid < txid);
        if let Some(p) = self.points.get(at).filter(|p| p.txid == txid) {
            return Some(p.checksum);
        }
        self.containing(txid).filter(|f| f.max_txid == txid).map(|f| f.post_apply_checksum)
    }

    /// The retained file whose TXID range holds `txid`.
    pub fn containing(&self, txid: u64) -> Option<&LtxFileMeta> {
        let at = self.files.partition_point(|f| f.min_txid <= txid);
        at.checked_sub(1).and_then(|i| self.files.get(i)).filter(|f| f.max_txid >= txid)
    }

    /// The newest file (highest `min_txid`).
    pub fn last(&self) -> Option<&LtxFileMeta> {
        self.files.back()
    }

    /// Removes the newest file.
    pub fn pop_last(&mut self) -> Option<LtxFileMeta> {
        let f = self.files.pop_back()?;
        while self.points.back().is_some_and(|p| p.txid >= f.min_txid) {
            self.points.pop_back();
        }
        Some(f)
    }

    pub fn clear(&mut self) {
        self.files.clear();
        self.points.clear();
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
    /// Compact these retained files, `(min_txid, max_txid)` in order, into one LTX. `from`: the
    /// peer's position lies inside the first (merged) file, at one of its points: the LTX starts
    /// there instead (min TXID `from.txid + 1`, pre-apply checksum `from.checksum`). Its pages
    /// are then a superset of what changed since `from` — the pages the merged file's earlier
    /// transactions changed hold, at the end, the content the peer already has (no later
    /// transaction of the file touched them), so applying it brings the peer exactly to the end.
    Incremental { files: Vec<(u64, u64)>, from: Option<Pos> },
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
    let mut from = None;
    if files.get(&(peer.txid + 1)).is_none() {
        // The peer may stand inside a merged file, at one of its points.
        if let Some(f) = files.containing(peer.txid).filter(|f| f.max_txid > peer.txid) {
            match files.checksum_at(peer.txid) {
                Some(c) if c == peer.checksum => {
                    chain.push((f.min_txid, f.max_txid));
                    from = Some(peer);
                    at = f.post_apply_pos();
                }
                Some(_) => return CatchUp::Snapshot { reason: SnapshotReason::Diverged },
                None => return CatchUp::Snapshot { reason: SnapshotReason::NotRetained },
            }
        }
    }
    for _ in 0..files.len() {
        if at.txid >= ours.txid {
            break;
        }
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
    CatchUp::Incremental { files: chain, from }
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
        assert_eq!(decide_catch_up(pos(7), pos(4), &f), CatchUp::Incremental { files: vec![(5, 6), (7, 7)], from: None });
        assert_eq!(decide_catch_up(pos(7), pos(7), &f), CatchUp::UpToDate);
    }

    /// Files 2..=5 stored merged: a peer at 2, 3 or 4 continues from its point inside the merged
    /// file; a peer at a known TXID with another checksum diverged; merges that do not continue
    /// the chain are refused; retention and truncation take the points with their file.
    #[test]
    fn a_peer_inside_a_merged_file_continues_from_its_point() {
        let mut f = files(&[(1, 1), (2, 2), (3, 3), (4, 4)]);
        let meta = |min: u64, max: u64| LtxFileMeta { min_txid: min, max_txid: max, pre_apply_checksum: c(min - 1), post_apply_checksum: c(max), size_bytes: 100, written_at: Time::ZERO };
        // A file that does not continue (gap, or another checksum) is refused and changes nothing.
        let before = f.clone();
        assert!(f.merge_tail(2, meta(6, 6)).is_err());
        assert!(f.merge_tail(2, LtxFileMeta { pre_apply_checksum: c(99), ..meta(5, 5) }).is_err());
        assert!(f.merge_tail(7, meta(5, 5)).is_err(), "no file starts at 7");
        assert_eq!(f, before);
        let merged = f.merge_tail(2, meta(5, 5)).unwrap();
        assert_eq!((merged.min_txid, merged.max_txid, merged.pre_apply_checksum, merged.post_apply_checksum, merged.size_bytes), (2, 5, c(1), c(5), 400));
        assert_eq!(f.values().map(|m| (m.min_txid, m.max_txid)).collect::<Vec<_>>(), vec![(1, 1), (2, 5)]);
        f.insert(6, meta(6, 6));
        for t in 0..=6 {
            let expected = if t == 0 { None } else { Some(c(t)) };
            assert_eq!(f.checksum_at(t), expected, "checksum at {t}");
        }
        assert_eq!(decide_catch_up(pos(6), pos(1), &f), CatchUp::Incremental { files: vec![(2, 5), (6, 6)], from: None });
        for t in 2..=4 {
            assert_eq!(decide_catch_up(pos(6), pos(t), &f), CatchUp::Incremental { files: vec![(2, 5), (6, 6)], from: Some(pos(t)) });
        }
        assert_eq!(decide_catch_up(pos(6), pos(5), &f), CatchUp::Incremental { files: vec![(6, 6)], from: None });
        let other = Pos { txid: 3, checksum: c(99) };
        assert_eq!(decide_catch_up(pos(6), other, &f), CatchUp::Snapshot { reason: SnapshotReason::Diverged });
        // Merging again: the earlier points stay, the merged file's end becomes one.
        let merged = f.merge_tail(2, meta(7, 7)).unwrap();
        assert_eq!((merged.min_txid, merged.max_txid), (2, 7));
        for t in 2..=6 {
            assert_eq!(decide_catch_up(pos(7), pos(t), &f), CatchUp::Incremental { files: vec![(2, 7)], from: Some(pos(t)) });
        }
        // Without its points (a node restarted: files read from disk) a peer inside gets a snapshot;
        // points given back (recorded with the file) restore the incremental catch-up.
        let mut from_disk: RetainedFiles = f.values().map(|m| (m.min_txid, *m)).collect();
        assert_eq!(decide_catch_up(pos(7), pos(3), &from_disk), CatchUp::Snapshot { reason: SnapshotReason::NotRetained });
        assert!(from_disk.add_point(pos(3)));
        assert!(!from_disk.add_point(pos(3)), "known already");
        assert!(!from_disk.add_point(pos(7)), "the end of a file is no point");
        assert!(!from_disk.add_point(pos(9)), "outside every file");
        assert_eq!(decide_catch_up(pos(7), pos(3), &from_disk), CatchUp::Incremental { files: vec![(2, 7)], from: Some(pos(3)) });
        // Removing the merged file removes its points.
        let mut g = f.clone();
        assert!(g.remove(&2).is_some());
        assert_eq!(g.checksum_at(3), None);
        assert!(f.pop_last().is_some());
        assert_eq!(f.checksum_at(3), None);
        assert_eq!(f.checksum_at(1), Some(c(1)));
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
