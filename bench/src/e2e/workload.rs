//! The SQLite side of the end-to-end benches: one 100-byte row per autocommit transaction.
//!
//! Decides: how a bench database is opened (page size 4096, journal mode, synchronous level,
//! one table), what a transaction is (one `INSERT` of 100 bytes of text) and the percentile rule.
//! Never does: start nodes or decide where a database lives.

use rusqlite::Connection;
use std::path::Path;
use std::time::{Duration, Instant};

/// A journal mode / synchronous pair of the issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    DeleteFull,
    WalFull,
    WalNormal,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::DeleteFull, Mode::WalFull, Mode::WalNormal];

    pub fn label(self) -> &'static str {
        match self {
            Mode::DeleteFull => "DELETE/FULL",
            Mode::WalFull => "WAL/FULL",
            Mode::WalNormal => "WAL/NORMAL",
        }
    }

    /// File-name friendly tag.
    pub fn tag(self) -> &'static str {
        match self {
            Mode::DeleteFull => "delete-full",
            Mode::WalFull => "wal-full",
            Mode::WalNormal => "wal-normal",
        }
    }

    /// The goal: mount throughput ≥ this fraction of raw SQLite's.
    pub fn goal_ratio(self) -> f64 {
        match self {
            Mode::DeleteFull => 0.5,
            Mode::WalFull => 0.6,
            Mode::WalNormal => 0.3,
        }
    }

    /// bindfs (do-nothing FUSE passthrough) / direct, rusqlite, from the measured anchors.
    pub fn bindfs_ratio(self) -> f64 {
        match self {
            Mode::DeleteFull => 0.571,
            Mode::WalFull => 0.476,
            Mode::WalNormal => 0.043,
        }
    }

    fn pragmas(self) -> (&'static str, &'static str) {
        match self {
            Mode::DeleteFull => ("DELETE", "FULL"),
            Mode::WalFull => ("WAL", "FULL"),
            Mode::WalNormal => ("WAL", "NORMAL"),
        }
    }
}

/// One bench database connection with its prepared insert.
pub struct Db {
    conn: Connection,
    next_row: u64,
}

impl Db {
    /// Opens (creating) `path` with page size 4096 and `mode`, and creates the table.
    pub fn open(path: &Path, mode: Mode) -> Result<Db, String> {
        let conn = Connection::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        let (journal, sync) = mode.pragmas();
        conn.execute_batch("PRAGMA page_size = 4096;")
            .map_err(|e| format!("page_size: {e}"))?;
        let got: String = conn
            .query_row(&format!("PRAGMA journal_mode = {journal}"), [], |r| r.get(0))
            .map_err(|e| format!("journal_mode: {e}"))?;
        if !got.eq_ignore_ascii_case(journal) {
            return Err(format!("journal_mode {journal} refused (got {got})"));
        }
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {sync};
             CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT NOT NULL);"
        ))
        .map_err(|e| format!("setup: {e}"))?;
        let next_row = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
            .map_err(|e| e.to_string())?;
        Ok(Db {
            conn,
            next_row: u64::try_from(next_row).unwrap_or(0),
        })
    }

    /// One autocommit transaction inserting one row of 100 bytes of text.
    pub fn insert_one(&mut self) -> Result<(), String> {
        self.next_row += 1;
        let text = row_text(self.next_row);
        let mut stmt = self
            .conn
            .prepare_cached("INSERT INTO t (v) VALUES (?1)")
            .map_err(|e| e.to_string())?;
        stmt.execute([&text]).map_err(|e| format!("insert: {e}"))?;
        Ok(())
    }

    /// `n` transactions; returns each one's latency.
    pub fn insert_many(&mut self, n: usize, latencies: &mut Vec<Duration>) -> Result<(), String> {
        for _ in 0..n {
            let start = Instant::now();
            self.insert_one()?;
            latencies.push(start.elapsed());
        }
        Ok(())
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

/// 100 bytes of row text, different for every row.
pub fn row_text(row: u64) -> String {
    let text = format!("row {row:020} {:<75}", "payload-of-a-benchmark-row");
    debug_assert_eq!(text.len(), 100);
    text
}

/// The `p`-th percentile (0..=100) by nearest rank of already sorted values.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_100_bytes_and_distinct() {
        assert_eq!(row_text(1).len(), 100);
        assert_eq!(row_text(u64::MAX).len(), 100);
        assert_ne!(row_text(1), row_text(2));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), Some(50));
        assert_eq!(percentile(&values, 99.0), Some(99));
        assert_eq!(percentile(&values, 100.0), Some(100));
        assert_eq!(percentile(&[7u32], 1.0), Some(7));
        assert_eq!(percentile::<u32>(&[], 50.0), None);
    }

    #[test]
    fn raw_database_gets_the_requested_mode() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("x.db"), Mode::WalNormal).unwrap();
        db.insert_many(3, &mut Vec::new()).unwrap();
        let conn = db.connection();
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        let rows: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!((mode.as_str(), sync, size, rows), ("wal", 1, 4096, 3));
    }
}
