//! Retention decisions: which retained LTX files of a database may be deleted now.
//!
//! It decides by age and by total size, never deletes the newest file, never deletes a file a
//! lagging peer still needs while that file fits in the size budget, and only ever deletes a
//! prefix of the chain (oldest first) so the retained files stay contiguous. It never deletes
//! anything itself: the node turns the decision into an [`crate::node::IoKind::DeleteLtx`] output.

use std::time::Duration;

use crate::catchup::RetainedFiles;
use crate::time::Time;

/// How long and how much LTX history a node keeps per database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Files older than this may go (LiteFS default: 10 minutes).
    pub age_max: Duration,
    /// Total bytes of retained files kept at most, newest first; beyond it files go even if a
    /// lagging peer needs them (it will get a snapshot).
    pub bytes_max: u64,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy { age_max: Duration::from_secs(600), bytes_max: 1 << 30 }
    }
}

/// The files to delete, `(min_txid, max_txid)`, oldest first. `needed_from_txid` is the lowest
/// TXID a lagging peer still has to receive (peer position + 1), if any.
pub fn decide_retention(
    files: &RetainedFiles,
    now: Time,
    policy: RetentionPolicy,
    needed_from_txid: Option<u64>,
) -> Vec<(u64, u64)> {
    let mut bytes_total: u64 = 0;
    let mut cut_below: Option<u64> = None; // delete every file with min_txid <= this
    for (i, f) in files.values().rev().enumerate() {
        bytes_total = bytes_total.saturating_add(f.size_bytes);
        if i == 0 {
            continue; // the newest file is always kept
        }
        let within_budget = bytes_total <= policy.bytes_max;
        let old = now.saturating_since(f.written_at) > policy.age_max;
        let needed = needed_from_txid.is_some_and(|t| f.max_txid >= t);
        if !within_budget || (old && !needed) {
            cut_below = Some(f.min_txid);
            break;
        }
    }
    let Some(cut) = cut_below else { return Vec::new() };
    let out: Vec<(u64, u64)> = files.values().filter(|f| f.min_txid <= cut).map(|f| (f.min_txid, f.max_txid)).collect();
    debug_assert!(out.len() < files.len(), "retention never deletes the newest file");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catchup::LtxFileMeta;

    /// Files 1..=n, one TXID each, 100 bytes, file t written at t seconds.
    fn files(n: u64) -> RetainedFiles {
        (1..=n)
            .map(|t| (t, LtxFileMeta { min_txid: t, max_txid: t, pre_apply_checksum: 0, post_apply_checksum: 0, size_bytes: 100, written_at: Time::from_secs(t) }))
            .collect()
    }

    fn policy(age_s: u64, bytes: u64) -> RetentionPolicy {
        RetentionPolicy { age_max: Duration::from_secs(age_s), bytes_max: bytes }
    }

    #[test]
    fn deletes_old_files_but_never_the_newest() {
        let f = files(5);
        // At t=100 every file is older than 10 s; only the newest survives.
        assert_eq!(decide_retention(&f, Time::from_secs(100), policy(10, 10_000), None), vec![(1, 1), (2, 2), (3, 3), (4, 4)]);
        // At t=13 files written at 1 and 2 are older than 10 s.
        assert_eq!(decide_retention(&f, Time::from_secs(13), policy(10, 10_000), None), vec![(1, 1), (2, 2)]);
        assert_eq!(decide_retention(&f, Time::from_secs(5), policy(10, 10_000), None), vec![]);
        assert_eq!(decide_retention(&files(1), Time::from_secs(1000), policy(0, 0), None), vec![]);
    }

    #[test]
    fn lagging_peer_keeps_old_files_within_the_size_budget() {
        let f = files(5);
        // A peer at TXID 1 needs 2..: old files 2.. stay, file 1 goes.
        assert_eq!(decide_retention(&f, Time::from_secs(100), policy(10, 10_000), Some(2)), vec![(1, 1)]);
        // With a 300-byte budget only the newest three fit; the peer will need a snapshot.
        assert_eq!(decide_retention(&f, Time::from_secs(100), policy(10, 300), Some(2)), vec![(1, 1), (2, 2)]);
    }

    #[test]
    fn size_budget_applies_to_young_files_too() {
        let f = files(5);
        assert_eq!(decide_retention(&f, Time::from_secs(5), policy(1000, 250), None), vec![(1, 1), (2, 2), (3, 3)]);
    }
}
