//! End-to-end benches (issue 5, "Bench"): real SQLite through real `ltxfs` processes.
//!
//! - `throughput`: 1 row per transaction through a mount vs raw SQLite on the same disk,
//!   interleaved in one run, for DELETE/FULL, WAL/FULL and WAL/NORMAL; FUSE requests and fsyncs
//!   per commit counted with strace in a separate window.
//! - `lag`: commit → visible on a replica at a fixed rate (skipped, with the reason, when the
//!   build cannot replicate through the mount).
//! - `startup`: spawn → `<db>-pos` readable for a data dir holding a 1 GiB database.
//!
//! Decides: the two profiles (`full` for `cargo run --bin e2e`, `short` for `cargo bench`) and
//! the Markdown report. Never does: change the node under test.

pub mod lag;
pub mod node;
pub mod startup;
pub mod throughput;
pub mod trace;
pub mod workload;

use std::fmt::Write as _;
use std::time::Duration;
use trace::Counts;
use workload::Mode;

/// Which benches to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Throughput,
    Lag,
    Startup,
    All,
}

/// Run lengths.
#[derive(Debug, Clone)]
pub struct Profile {
    pub throughput: throughput::Params,
    pub lag: lag::Params,
    pub startup: startup::Params,
}

impl Profile {
    /// The anchors' workload: 3000 transactions after 100 warm-up; 10 s of lag; 1 GiB start-up.
    pub fn full() -> Profile {
        Profile {
            throughput: throughput::Params {
                modes: Mode::ALL.to_vec(),
                transactions: 3000,
                warmup: 100,
                chunk: 100,
                traced: 300,
            },
            lag: lag::Params {
                tx_per_s: 500,
                seconds: 10,
                mode: Mode::WalFull,
                first_tx_timeout: Duration::from_secs(10),
                poll_interval: Duration::from_micros(100),
            },
            startup: startup::Params {
                size_mib: 1024,
                starts: 3,
                cold_cache: false,
            },
        }
    }

    /// `cargo bench`: the same shapes, shorter.
    pub fn short() -> Profile {
        let mut p = Profile::full();
        p.throughput.transactions = 1000;
        p.throughput.warmup = 50;
        p.throughput.chunk = 100;
        p.throughput.traced = 100;
        p.lag.seconds = 3;
        p.startup.starts = 1;
        p
    }
}

/// Kernel, CPU, memory and load, for the report header.
pub fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "?".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib >> 20);
    let kernel = read("/proc/sys/kernel/osrelease");
    format!(
        "{cpus} vCPU ({model}), {mem_gib} GiB RAM, Linux {}, load average {}",
        kernel.trim(),
        load()
    )
}

/// 1-minute load average.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

pub fn report_throughput(run: &throughput::Run) -> String {
    let results = &run.modes;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "fdatasync of 4 KiB on this disk, p50 of 200: {} before, {} after the run \
         (an idle disk of this kind: ~0.140 ms).\n",
        ms(run.fsync_p50_before),
        ms(run.fsync_p50_after)
    );
    let _ = writeln!(
        out,
        "| workload | raw tx/s | mount tx/s | ratio | median pair ratio (min–max) | goal | bindfs ratio | raw p50 / p99 | mount p50 / p99 |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let verdict = if r.median_pair_ratio() >= r.mode.goal_ratio() { "✔" } else { "✘" };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.3} | **{:.3}** ({:.3}–{:.3}) | ≥ {} {verdict} | {} | {} / {} | {} / {} |",
            r.mode.label(),
            r.raw.tx_per_s,
            r.mount.tx_per_s,
            r.ratio(),
            r.median_pair_ratio(),
            r.pair_ratios.first().copied().unwrap_or(f64::NAN),
            r.pair_ratios.last().copied().unwrap_or(f64::NAN),
            r.mode.goal_ratio(),
            r.mode.bindfs_ratio(),
            ms(r.raw.p50),
            ms(r.raw.p99),
            ms(r.mount.p50),
            ms(r.mount.p99),
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "| workload | CPU µs / commit: raw SQLite | mount: application | mount: ltxfs (by thread) |");
    let _ = writeln!(out, "|---|---|---|---|");
    for r in results {
        let threads: Vec<String> = r.cpu.node_us.iter().filter(|(_, us)| *us >= 0.5).map(|(name, us)| format!("{name} {us:.1}")).collect();
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {:.1} ({}) |",
            r.mode.label(),
            r.cpu.app_raw_us,
            r.cpu.app_mount_us,
            r.cpu.node_total_us(),
            threads.join(", ")
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| workload | FUSE requests / commit | by opcode / commit | ltxfs fsyncs / commit | by file / commit |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for r in results {
        match &r.counts {
            Ok((counts, n)) => {
                let _ = writeln!(
                    out,
                    "| {} | {:.2} | {} | {:.2} | {} |",
                    r.mode.label(),
                    counts.fuse_total() as f64 / *n as f64,
                    Counts::per_commit(&counts.fuse_ops, *n),
                    counts.fsync_total() as f64 / *n as f64,
                    Counts::per_commit(&counts.fsyncs, *n),
                );
            }
            Err(why) => {
                let _ = writeln!(out, "| {} | not counted: {why} | | | |", r.mode.label());
            }
        }
    }
    out
}

pub fn report_lag(params: &lag::Params, outcome: &lag::Outcome) -> String {
    match outcome {
        lag::Outcome::Skipped(why) => format!("skipped: {why}\n"),
        lag::Outcome::Measured(r) => format!(
            "{} transactions ({}) at {} tx/s target ({:.0} achieved): p50 {}, p90 {}, p99 {}, \
             max {} (goal p50 ≤ 2 ms, p99 ≤ 10 ms: {}); {} visible before the primary's commit \
             returned, {} never visible; primary commit stalls > {}: {} (longest gap {})\n",
            r.transactions,
            params.mode.label(),
            params.tx_per_s,
            r.achieved_tx_per_s,
            ms(r.p50),
            ms(r.p90),
            ms(r.p99),
            ms(r.max),
            if r.p50 <= Duration::from_millis(2) && r.p99 <= Duration::from_millis(10) {
                "✔"
            } else {
                "✘"
            },
            r.visible_before_return,
            r.never_visible,
            ms(lag::STALL_GAP),
            r.commit_stalls,
            ms(r.longest_commit_gap),
        ),
    }
}

pub fn report_startup(params: &startup::Params, r: &startup::StartupResult) -> String {
    let list = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ");
    let best = r.ready.iter().min().copied().unwrap_or_default();
    format!(
        "database {} MiB ({} bytes), {} LTX files ({} MiB), prepared through the mount in {:.1?}; \
         {} cache; spawn → `-pos` readable: {} (goal ≤ 1 s: {}); spawn → \"mounted\" line: {}; \
         after a SIGKILL of the previous process: {}\n",
        r.db_bytes >> 20,
        r.db_bytes,
        r.ltx_files,
        r.ltx_bytes >> 20,
        r.prepare,
        if params.cold_cache { "cold (caches dropped)" } else { "warm page" },
        list(&r.ready),
        if best <= Duration::from_secs(1) { "✔" } else { "✘" },
        list(&r.mounted),
        r.after_crash.map_or("-".to_string(), ms),
    )
}

/// Runs the chosen benches with `profile` and prints the report to stdout. Err if a bench failed.
pub fn run(which: Which, profile: &Profile) -> Result<(), String> {
    let bin = node::ltxfs_binary()?;
    println!("## e2e run\n\nMachine: {}", machine());
    println!("ltxfs binary: {}\n", bin.display());
    let mut failed = Vec::new();
    if matches!(which, Which::Throughput | Which::All) {
        println!("### throughput (load before: {})\n", load());
        match throughput::run(&bin, &profile.throughput) {
            Ok(results) => print!("{}", report_throughput(&results)),
            Err(e) => {
                println!("FAILED: {e}");
                failed.push("throughput");
            }
        }
        println!("\n(load after: {})\n", load());
    }
    if matches!(which, Which::Lag | Which::All) {
        println!("### lag (load before: {})\n", load());
        match lag::run(&bin, &profile.lag) {
            Ok(outcome) => print!("{}", report_lag(&profile.lag, &outcome)),
            Err(e) => {
                println!("FAILED: {e}");
                failed.push("lag");
            }
        }
        println!("\n(load after: {})\n", load());
    }
    if matches!(which, Which::Startup | Which::All) {
        println!("### startup (load before: {})\n", load());
        match startup::run(&bin, &profile.startup) {
            Ok(r) => print!("{}", report_startup(&profile.startup, &r)),
            Err(e) => {
                println!("FAILED: {e}");
                failed.push("startup");
            }
        }
        println!("\n(load after: {})\n", load());
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed: {}", failed.join(", ")))
    }
}
