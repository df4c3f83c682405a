//! Write throughput through an `ltxfs` mount vs raw SQLite on the same disk, same run.
//!
//! Decides: the schedule (per mode: fresh databases on both arms, a warm-up, then chunks
//! alternating raw, mount, raw, mount ... so drift in the machine hits both arms alike, with an
//! untimed `sync()` before each chunk), and the
//! separate, untimed strace window that counts FUSE requests and fsyncs per commit.
//! Never does: change the node; the raw arm lives in `raw/` next to the node's `data/`.

use super::node::{self, Node, NodeSpec, Result};
use super::trace::{Counts, Tracer};
use super::workload::{percentile, Db, Mode};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Params {
    pub modes: Vec<Mode>,
    /// Timed transactions per arm and mode.
    pub transactions: usize,
    pub warmup: usize,
    /// Transactions per chunk before switching arms.
    pub chunk: usize,
    /// Transactions in the strace window (0: no counting).
    pub traced: usize,
}

#[derive(Debug, Clone)]
pub struct ArmResult {
    pub tx_per_s: f64,
    pub p50: Duration,
    pub p99: Duration,
}

#[derive(Debug, Clone)]
pub struct ModeResult {
    pub mode: Mode,
    pub raw: ArmResult,
    pub mount: ArmResult,
    /// mount/raw tx/s of each adjacent (raw chunk, mount chunk) pair, sorted. Their median
    /// resists bursts of load from other processes better than the totals do.
    pub pair_ratios: Vec<f64>,
    /// Counts over `traced` commits, or why there are none.
    pub counts: std::result::Result<(Counts, u64), String>,
    /// CPU time per timed commit, from the kernel's per-thread accounting.
    pub cpu: CpuPerCommit,
}

/// CPU time per commit (µs), summed over the timed chunks: the bench's own thread in each arm
/// (SQLite plus, in the mount arm, the system calls that wait on FUSE) and the node's threads by
/// name. Unlike tx/s these barely move with the machine's other load, so two builds compare.
#[derive(Debug, Clone, Default)]
pub struct CpuPerCommit {
    pub app_raw_us: f64,
    pub app_mount_us: f64,
    /// (thread name, µs per commit), largest first.
    pub node_us: Vec<(String, f64)>,
}

impl CpuPerCommit {
    pub fn node_total_us(&self) -> f64 {
        self.node_us.iter().map(|(_, us)| us).sum()
    }
}

/// Nanoseconds on CPU from a `schedstat` file (its first field).
fn schedstat_ns(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.split_whitespace().next()?.parse().ok()
}

/// Nanoseconds on CPU of every thread of `pid`, summed by thread name.
fn threads_cpu_ns(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut by_name = std::collections::BTreeMap::new();
    let pid = pid.to_string();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return by_name };
    for task in tasks.flatten() {
        let tid = task.file_name().to_string_lossy().into_owned();
        let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
        if let Some(ns) = schedstat_ns(&format!("/proc/{pid}/task/{tid}/schedstat")) {
            *by_name.entry(name.trim().to_string()).or_insert(0) += ns;
        }
    }
    by_name
}

/// Nanoseconds on CPU of the calling thread.
fn own_cpu_ns() -> u64 {
    schedstat_ns("/proc/thread-self/schedstat").unwrap_or(0)
}

/// Adds `after - before` per thread name to `sum` (threads that ended are left out).
fn add_delta(sum: &mut std::collections::BTreeMap<String, u64>, before: &std::collections::BTreeMap<String, u64>, after: &std::collections::BTreeMap<String, u64>) {
    for (name, ns) in after {
        *sum.entry(name.clone()).or_insert(0) += ns.saturating_sub(before.get(name).copied().unwrap_or(0));
    }
}

impl ModeResult {
    pub fn ratio(&self) -> f64 {
        self.mount.tx_per_s / self.raw.tx_per_s
    }

    pub fn median_pair_ratio(&self) -> f64 {
        percentile(&self.pair_ratios, 50.0).unwrap_or(f64::NAN)
    }
}

fn arm(latencies: &mut [Duration]) -> ArmResult {
    latencies.sort();
    let total: Duration = latencies.iter().sum();
    ArmResult {
        tx_per_s: latencies.len() as f64 / total.as_secs_f64(),
        p50: percentile(latencies, 50.0).unwrap_or_default(),
        p99: percentile(latencies, 99.0).unwrap_or_default(),
    }
}

/// Median latency of a 4 KiB overwrite + fdatasync in `dir` (200 rounds): how busy the disk
/// is right now, the unit every fsync per commit costs.
pub fn fsync_probe(dir: &Path) -> Result<Duration> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    let page = [0x5au8; 4096];
    let mut took = Vec::with_capacity(200);
    for _ in 0..200 {
        let start = std::time::Instant::now();
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)).map_err(|e| e.to_string())?;
        file.write_all(&page).map_err(|e| e.to_string())?;
        file.sync_data().map_err(|e| e.to_string())?;
        took.push(start.elapsed());
    }
    let _ = std::fs::remove_file(&path);
    took.sort();
    Ok(percentile(&took, 50.0).unwrap_or_default())
}

/// A whole throughput run.
#[derive(Debug, Clone)]
pub struct Run {
    /// [`fsync_probe`] before and after the modes.
    pub fsync_p50_before: Duration,
    pub fsync_p50_after: Duration,
    pub modes: Vec<ModeResult>,
}

pub fn run(bin: &Path, params: &Params) -> Result<Run> {
    assert!(params.chunk > 0 && params.transactions >= params.chunk);
    let dir = node::run_dir("throughput")?;
    let spec = NodeSpec::lone_primary(dir.path())?;
    let raw_dir = dir.path().join("primary").join("raw");
    std::fs::create_dir_all(&raw_dir).map_err(|e| e.to_string())?;
    let node = Node::start(bin, spec)?;
    let mnt = node.spec.mount_dir();
    let fsync_p50_before = fsync_probe(&raw_dir)?;
    let mut results = Vec::new();
    for &mode in &params.modes {
        let name = format!("{}.db", mode.tag());
        let mut raw = Db::open(&raw_dir.join(&name), mode)?;
        let mut mount = Db::open(&mnt.join(&name), mode)
            .map_err(|e| format!("{e}\n{}", node.log_tail()))?;
        let mut ignore = Vec::new();
        raw.insert_many(params.warmup, &mut ignore)?;
        mount.insert_many(params.warmup, &mut ignore)?;
        let mut raw_lat = Vec::with_capacity(params.transactions);
        let mut mount_lat = Vec::with_capacity(params.transactions);
        let chunks = params.transactions / params.chunk;
        let mut pair_ratios = Vec::with_capacity(chunks);
        let chunk_time = |lat: &[Duration]| -> Duration { lat[lat.len() - params.chunk..].iter().sum() };
        let pid = node.pid().ok_or("node not running")?;
        let (mut app_raw_ns, mut app_mount_ns, mut node_ns) = (0u64, 0u64, std::collections::BTreeMap::new());
        for _ in 0..chunks {
            // Untimed: flush what the previous chunk left dirty, so neither arm pays (through
            // ext4's shared journal) for the other's unsynced writes.
            nix::unistd::sync();
            let own = own_cpu_ns();
            raw.insert_many(params.chunk, &mut raw_lat)?;
            app_raw_ns += own_cpu_ns().saturating_sub(own);
            nix::unistd::sync();
            let (own, threads) = (own_cpu_ns(), threads_cpu_ns(pid));
            mount
                .insert_many(params.chunk, &mut mount_lat)
                .map_err(|e| format!("{e}\n{}", node.log_tail()))?;
            app_mount_ns += own_cpu_ns().saturating_sub(own);
            // Work the chunk left behind (the background LTX writer) lands in the next chunk's
            // window or after the last one; it is a small share of either.
            add_delta(&mut node_ns, &threads, &threads_cpu_ns(pid));
            // Same transaction count in both chunks: the tx/s ratio is the inverse time ratio.
            pair_ratios.push(chunk_time(&raw_lat).as_secs_f64() / chunk_time(&mount_lat).as_secs_f64());
        }
        pair_ratios.sort_by(f64::total_cmp);
        let counts = if params.traced == 0 {
            Err("not requested".to_string())
        } else {
            count_window(&node, &mut mount, params.traced, dir.path(), mode)
        };
        let timed = (chunks * params.chunk).max(1) as f64;
        let mut node_us: Vec<(String, f64)> = node_ns.into_iter().map(|(name, ns)| (name, ns as f64 / 1000.0 / timed)).collect();
        node_us.sort_by(|a, b| b.1.total_cmp(&a.1));
        let cpu = CpuPerCommit { app_raw_us: app_raw_ns as f64 / 1000.0 / timed, app_mount_us: app_mount_ns as f64 / 1000.0 / timed, node_us };
        let result = ModeResult {
            cpu,
            mode,
            raw: arm(&mut raw_lat),
            mount: arm(&mut mount_lat),
            pair_ratios,
            counts,
        };
        eprintln!(
            "e2e: throughput {:<11} raw {:>8.0} tx/s  mount {:>8.0} tx/s  ratio {:.3} (median of pairs {:.3})",
            mode.label(),
            result.raw.tx_per_s,
            result.mount.tx_per_s,
            result.ratio(),
            result.median_pair_ratio()
        );
        results.push(result);
    }
    drop(node);
    Ok(Run {
        fsync_p50_before,
        fsync_p50_after: fsync_probe(&raw_dir)?,
        modes: results,
    })
}

/// Runs `n` mount transactions under strace and returns the counts and `n`.
fn count_window(
    node: &Node,
    db: &mut Db,
    n: usize,
    dir: &Path,
    mode: Mode,
) -> std::result::Result<(Counts, u64), String> {
    if !Tracer::available() {
        return Err("strace not installed (apt-get install -y strace)".into());
    }
    let pid = node.pid().ok_or("node not running")?;
    let tracer = Tracer::attach(pid, &dir.join(format!("strace-{}.txt", mode.tag())))?;
    let result = db.insert_many(n, &mut Vec::new());
    let counts = tracer.finish()?;
    result?;
    Ok((counts, n as u64))
}
