//! Replication lag, commit → visible on a replica, at a fixed transaction rate on loopback.
//!
//! Decides: the harness (a static primary and one replica as separate `ltxfs` processes, writes
//! through the primary's mount at a fixed rate, a poller timestamping each new TXID in the
//! replica's `<db>-pos`), and when the measurement is skipped: if the replica does not show the
//! primary's position for a first transaction within a timeout, replication through the mount is
//! not available in this build and no figure is produced. Never does: fake or estimate a lag.

use super::node::{self, read_pos_txid, Node, NodeSpec, Result};
use super::workload::{percentile, Db, Mode};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Params {
    pub tx_per_s: u32,
    pub seconds: u32,
    pub mode: Mode,
    /// How long the replica may take to show the first transaction before the bench is skipped.
    pub first_tx_timeout: Duration,
    /// Pause between two reads of the replica's `-pos` (the timestamp resolution).
    pub poll_interval: Duration,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    Skipped(String),
    Measured(LagResult),
}

#[derive(Debug, Clone)]
pub struct LagResult {
    pub transactions: usize,
    /// Rate actually achieved by the writer.
    pub achieved_tx_per_s: f64,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Transactions the replica had already shown when the primary's commit returned.
    pub visible_before_return: usize,
    /// Transactions never seen on the replica before the end of the wait.
    pub never_visible: usize,
    /// Gaps of more than [`STALL_GAP`] between two commits returning on the primary (the
    /// schedule asks for one every 1/rate): the primary's commit path stalled; the writer then
    /// commits its backlog back to back, faster than the fixed rate.
    pub commit_stalls: usize,
    /// The longest gap between two commits returning.
    pub longest_commit_gap: Duration,
}

/// A gap between two commits that counts as a stall of the primary's commit path.
pub const STALL_GAP: Duration = Duration::from_millis(10);

const DB: &str = "lag.db";

/// With this environment variable set (to anything), the run directory is kept and gets
/// `timeline.csv`: per transaction its commit and visibility wall times (µs since the Unix
/// epoch, the clock of the nodes' `events.ndjson`), to line up with what the nodes logged.
pub const KEEP_ENV: &str = "LTXFS_LAG_KEEP";

/// Wall time of an `Instant` taken in this process, in µs since the Unix epoch.
fn wall_us(at: Instant, anchor: (Instant, std::time::SystemTime)) -> u128 {
    let base = anchor.1.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let wall = if at >= anchor.0 { base + (at - anchor.0) } else { base.saturating_sub(anchor.0 - at) };
    wall.as_micros()
}

pub fn run(bin: &Path, params: &Params) -> Result<Outcome> {
    let dir = node::run_dir("lag")?;
    let primary_port = node::free_port()?;
    let members: Vec<String> = vec!["primary".into(), "replica".into()];
    let primary = Node::start(
        bin,
        NodeSpec {
            name: "primary".into(),
            root: dir.path().join("primary"),
            http_port: primary_port,
            primary_port: None,
            compress: true,
            members: members.clone(),
        },
    )?;
    let replica = Node::start(
        bin,
        NodeSpec {
            name: "replica".into(),
            root: dir.path().join("replica"),
            http_port: node::free_port()?,
            primary_port: Some(primary_port),
            compress: true,
            members: members.clone(),
        },
    )?;
    let pmnt = primary.spec.mount_dir();
    let rmnt = replica.spec.mount_dir();
    let mut db = Db::open(&pmnt.join(DB), params.mode)
        .map_err(|e| format!("{e}\n{}", primary.log_tail()))?;
    db.insert_one()?;
    let first = read_pos_txid(&pmnt, DB).ok_or("primary shows no position after a commit")?;
    let deadline = Instant::now() + params.first_tx_timeout;
    while read_pos_txid(&rmnt, DB).is_none_or(|t| t < first) {
        if Instant::now() > deadline {
            let seen = read_pos_txid(&rmnt, DB)
                .map_or("no lag.db-pos at all".to_string(), |t| format!("TXID {t}"));
            return Ok(Outcome::Skipped(format!(
                "the replica did not show the primary's TXID {first} within {:?} ({seen}); \
                 replication through the mount is not wired in this build",
                params.first_tx_timeout
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Warm-up, then the base TXID: the i-th measured commit is TXID base + i.
    for _ in 0..100 {
        db.insert_one()?;
    }
    let base = read_pos_txid(&pmnt, DB).ok_or("primary lost its position")?;

    let seen: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let seen = Arc::clone(&seen);
        let stop = Arc::clone(&stop);
        let rmnt = rmnt.clone();
        let interval = params.poll_interval;
        std::thread::spawn(move || {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Some(txid) = read_pos_txid(&rmnt, DB) {
                    if txid > last {
                        last = txid;
                        seen.lock().unwrap_or_else(|p| p.into_inner()).push((txid, Instant::now()));
                    }
                }
                std::thread::sleep(interval);
            }
        })
    };

    let n = (params.tx_per_s * params.seconds) as usize;
    let period = Duration::from_secs_f64(1.0 / f64::from(params.tx_per_s));
    let mut committed = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let due = start + period * u32::try_from(i).unwrap_or(u32::MAX);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        db.insert_one()?;
        committed.push(Instant::now());
    }
    let elapsed = start.elapsed();
    let last_txid = base + n as u64;
    let wait_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < wait_until {
        let done = seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .is_some_and(|(t, _)| *t >= last_txid);
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();

    let mut lags = Vec::with_capacity(n);
    let (mut early, mut never) = (0, 0);
    let keep = std::env::var_os(KEEP_ENV).is_some();
    let anchor = (Instant::now(), std::time::SystemTime::now());
    let mut timeline = String::from("txid,commit_wall_us,visible_wall_us,lag_us\n");
    for (i, commit) in committed.iter().enumerate() {
        let txid = base + 1 + i as u64;
        let visible = seen.iter().find(|(t, _)| *t >= txid).map(|(_, at)| *at);
        match visible {
            Some(at) if at < *commit => {
                early += 1;
                lags.push(Duration::ZERO);
            }
            Some(at) => lags.push(at - *commit),
            None => never += 1,
        }
        if keep {
            use std::fmt::Write as _;
            let vis = visible.map_or(String::new(), |at| wall_us(at, anchor).to_string());
            let lag = visible.map_or(String::new(), |at| at.saturating_duration_since(*commit).as_micros().to_string());
            let _ = writeln!(timeline, "{txid},{},{vis},{lag}", wall_us(*commit, anchor));
        }
    }
    lags.sort();
    let gaps: Vec<Duration> = committed.windows(2).map(|w| w[1] - w[0]).collect();
    // Where the time goes: the nodes' own latency histograms (printed, not part of the result).
    for (who, port, metric) in [("primary", primary.spec.http_port, "ltxfs_commit_seconds"), ("replica", replica.spec.http_port, "ltxfs_apply_seconds")] {
        if let Some(text) = http_get_local(port, "/metrics") {
            let buckets: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("{metric}_bucket"))).collect();
            eprintln!("e2e: {who} {metric}: {}", buckets.join(" | "));
        }
    }
    drop(db);
    drop(replica);
    drop(primary);
    if keep {
        let kept = dir.keep();
        std::fs::write(kept.join("timeline.csv"), timeline).map_err(|e| format!("timeline.csv: {e}"))?;
        eprintln!("e2e: lag run kept in {}", kept.display());
    }
    Ok(Outcome::Measured(LagResult {
        transactions: n,
        achieved_tx_per_s: n as f64 / elapsed.as_secs_f64(),
        p50: percentile(&lags, 50.0).unwrap_or_default(),
        p90: percentile(&lags, 90.0).unwrap_or_default(),
        p99: percentile(&lags, 99.0).unwrap_or_default(),
        max: lags.last().copied().unwrap_or_default(),
        visible_before_return: early,
        never_visible: never,
        commit_stalls: gaps.iter().filter(|g| **g > STALL_GAP).count(),
        longest_commit_gap: gaps.iter().max().copied().unwrap_or_default(),
    }))
}

/// A plain HTTP/1.0 GET on 127.0.0.1 (no client library in the bench); `None` on any failure.
fn http_get_local(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}
