//! Process-wide I/O counters behind `/metrics`: FUSE requests by opcode, fsyncs by kind, and
//! latency histograms of the local commit path and of replica applies.
//!
//! Process-wide (statics) because the FUSE layer, the data directory and the HTTP server of one
//! `ltxfs` process count into the same place without threading a handle through each; several
//! runtimes in one test process share them. Decides nothing; never blocks (relaxed atomics).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// FUSE opcodes counted separately; everything else is `other`.
pub const FUSE_OPS: [&str; 16] = [
    "lookup", "getattr", "setattr", "unlink", "open", "create", "read", "write", "flush", "release", "fsync", "readdir",
    "access", "getlk", "setlk", "other",
];

/// Kinds of fsync the node issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncKind {
    /// SQLite's FSYNC of a database, journal or WAL, forwarded to the backing file.
    Forwarded = 0,
    /// The node's own sync of the WAL before a commit's LTX (synchronous=NORMAL).
    Wal = 1,
    /// An LTX file's data.
    Ltx = 2,
    /// A directory (spare LTX batches, epoch journal, checksum index).
    Dir = 3,
    /// A database file written by an apply (replica) or an import.
    Database = 4,
    /// The epoch journal or the checksum index.
    Metadata = 5,
}

pub const FSYNC_KINDS: [&str; 6] = ["forwarded", "wal", "ltx", "dir", "database", "metadata"];

/// Upper bounds of the latency histogram buckets, microseconds (then +Inf).
pub const LATENCY_BUCKETS_US: [u64; 12] = [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 1_000_000];

/// A cumulative-on-read latency histogram.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram { buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS_US.len() + 1], sum_us: AtomicU64::new(0) }
    }

    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKETS_US.iter().position(|b| us <= *b).unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// (upper bound in seconds or `+Inf`, cumulative count), then the sum in seconds and the count.
    pub fn snapshot(&self) -> (Vec<(String, u64)>, f64, u64) {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            total += b.load(Ordering::Relaxed);
            let le = LATENCY_BUCKETS_US.get(i).map_or("+Inf".to_string(), |us| format!("{}", *us as f64 / 1e6));
            out.push((le, total));
        }
        (out, self.sum_us.load(Ordering::Relaxed) as f64 / 1e6, total)
    }
}

static FUSE: [AtomicU64; FUSE_OPS.len()] = [const { AtomicU64::new(0) }; FUSE_OPS.len()];
static FSYNCS: [AtomicU64; FSYNC_KINDS.len()] = [const { AtomicU64::new(0) }; FSYNC_KINDS.len()];
/// Local commit path: commit detected by the FUSE layer → the runtime's verdict.
pub static COMMIT_LATENCY: Histogram = Histogram::new();
/// Replica apply: pages written and synced into the database under SQLite's locks.
pub static APPLY_LATENCY: Histogram = Histogram::new();

/// Counts one FUSE request (`op` one of [`FUSE_OPS`], else `other`).
pub fn fuse_request(op: &str) {
    let i = FUSE_OPS.iter().position(|o| *o == op).unwrap_or(FUSE_OPS.len() - 1);
    FUSE[i].fetch_add(1, Ordering::Relaxed);
}

pub fn fsync(kind: FsyncKind) {
    FSYNCS[kind as usize].fetch_add(1, Ordering::Relaxed);
}

pub fn fuse_requests() -> Vec<(&'static str, u64)> {
    FUSE_OPS.iter().zip(FUSE.iter()).map(|(n, c)| (*n, c.load(Ordering::Relaxed))).collect()
}

pub fn fsyncs() -> Vec<(&'static str, u64)> {
    FSYNC_KINDS.iter().zip(FSYNCS.iter()).map(|(n, c)| (*n, c.load(Ordering::Relaxed))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(40));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(5));
        let (buckets, sum, count) = h.snapshot();
        assert_eq!(count, 3);
        assert_eq!(buckets[0], ("0.00005".to_string(), 1));
        assert_eq!(buckets[4], ("0.001".to_string(), 2));
        assert_eq!(buckets.last().unwrap(), &("+Inf".to_string(), 3));
        assert!((sum - 5.00074).abs() < 1e-9);
    }
}
