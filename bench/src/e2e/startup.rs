//! Start-up time of a node whose data dir already holds a large database and its LTX files.
//!
//! Decides: how the database is made (through a real mount, DELETE journal, ~32 MiB of 3,900-byte
//! random blobs per transaction until the file reaches the target size, so the data dir holds
//! exactly what a user's node would), and what "ready" means: `<db>-pos` readable through the
//! mount with a valid position. Times from just before the process is spawned.
//! Never does: drop the page cache unless asked (`cold_cache`, root only; it is machine-wide).

use super::node::{self, read_pos_txid, Node, NodeSpec, Result};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Params {
    pub size_mib: u64,
    pub starts: usize,
    pub cold_cache: bool,
}

#[derive(Debug, Clone)]
pub struct StartupResult {
    pub db_bytes: u64,
    pub ltx_files: usize,
    pub ltx_bytes: u64,
    pub prepare: Duration,
    /// Spawn → `<db>-pos` readable, per start.
    pub ready: Vec<Duration>,
    /// Spawn → "mounted at" line, per start.
    pub mounted: Vec<Duration>,
    /// Spawn → `<db>-pos` readable after the previous process was killed with SIGKILL.
    pub after_crash: Option<Duration>,
}

const DB: &str = "big.db";

pub fn run(bin: &Path, params: &Params) -> Result<StartupResult> {
    let dir = node::run_dir("startup")?;
    let spec = NodeSpec::lone_primary(dir.path())?;
    let prepare_start = Instant::now();
    {
        let node = Node::start(bin, spec.clone())?;
        fill(&node.spec.mount_dir().join(DB), params.size_mib * 1024 * 1024)
            .map_err(|e| format!("{e}\n{}", node.log_tail()))?;
    }
    let prepare = prepare_start.elapsed();
    let db_dir = spec.data_dir().join("dbs").join(DB);
    let db_bytes = std::fs::metadata(db_dir.join("database"))
        .map_err(|e| format!("{}: {e}", db_dir.display()))?
        .len();
    let (mut ltx_files, mut ltx_bytes) = (0, 0);
    if let Ok(entries) = std::fs::read_dir(db_dir.join("ltx")) {
        for entry in entries.flatten() {
            ltx_files += 1;
            ltx_bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    eprintln!(
        "e2e: startup: {} MiB database, {ltx_files} LTX files, prepared in {prepare:.1?}",
        db_bytes >> 20
    );

    let mut ready = Vec::new();
    let mut mounted = Vec::new();
    for _ in 0..params.starts {
        let mut node = start_timed(bin, &spec, params.cold_cache)?;
        ready.push(node.1);
        if let Some(at) = node.0.mounted_at {
            mounted.push(at - node.0.started);
        }
        node.0.stop();
    }
    // One more start after a crash: the previous process is killed with SIGKILL.
    let after_crash = {
        let (mut node, _) = start_timed(bin, &spec, false)?;
        node.crash();
        let (node, took) = start_timed(bin, &spec, params.cold_cache)?;
        drop(node);
        Some(took)
    };
    Ok(StartupResult {
        db_bytes,
        ltx_files,
        ltx_bytes,
        prepare,
        ready,
        mounted,
        after_crash,
    })
}

/// Spawns a node on `spec` and returns it once `<db>-pos` is readable, with the time that took.
fn start_timed(bin: &Path, spec: &NodeSpec, cold_cache: bool) -> Result<(Node, Duration)> {
    if cold_cache {
        drop_caches()?;
    }
    let mut node = Node::spawn(bin, spec.clone())?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mnt = spec.mount_dir();
    let took = loop {
        if read_pos_txid(&mnt, DB).is_some() {
            break node.started.elapsed();
        }
        if Instant::now() > deadline {
            return Err(format!("{DB}-pos not readable after 300 s\n{}", node.log_tail()));
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    node.wait_mounted(Duration::from_secs(10))?;
    Ok((node, took))
}

/// Grows the database at `path` to at least `bytes`, ~32 MiB per transaction.
fn fill(path: &Path, bytes: u64) -> Result<()> {
    let conn = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
    conn.execute_batch(
        "PRAGMA page_size = 4096; PRAGMA journal_mode = DELETE; PRAGMA synchronous = NORMAL;
         CREATE TABLE IF NOT EXISTS big (id INTEGER PRIMARY KEY, b BLOB NOT NULL);",
    )
    .map_err(|e| format!("setup: {e}"))?;
    const ROWS_PER_TX: u32 = 8192;
    loop {
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(|e| e.to_string())?;
        if u64::try_from(pages).unwrap_or(0) * 4096 >= bytes {
            return Ok(());
        }
        conn.execute(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?1)
             INSERT INTO big (b) SELECT randomblob(3900) FROM c",
            [ROWS_PER_TX],
        )
        .map_err(|e| format!("fill: {e}"))?;
    }
}

fn drop_caches() -> Result<()> {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .map_err(|e| format!("cold cache needs root (/proc/sys/vm/drop_caches): {e}"))
}
