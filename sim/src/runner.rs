//! Running scenarios and swarms, shrinking failures, writing reproducers.
//!
//! A run never shares state with another run, so swarms may use one OS thread per job; each run
//! itself is single-threaded and deterministic. A panic inside a node is caught and reported as a
//! failure of the run (it is a bug in the core: the core must never panic on its inputs).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::checker::{Invariant, Violation};
use crate::machine::{Machine, Peer};
use crate::random;
use crate::scenario::{self, Action, Scenario};
use crate::world::{RunReport, World};

/// `random_faults = true` expands into scripted steps (after the file's own steps at equal times).
pub fn expand(s: &Scenario) -> Scenario {
    let mut out = s.clone();
    if s.random_faults {
        out.steps.extend(random::faults(s.seed, s.nodes, s.lease_ttl_ms, s.duration_ms));
        out.steps.sort_by_key(|st| st.at_ms);
        out.random_faults = false;
    }
    out
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "non-string panic".into())
}

fn run_once<M: Machine>(s: &Scenario, trace_full: bool, trace_tail: bool) -> RunReport {
    let s = expand(s);
    let started = catch_unwind(AssertUnwindSafe(|| World::<M>::new(s.clone(), trace_full, trace_tail).run()));
    started.unwrap_or_else(|payload| RunReport {
        name: s.name.clone(),
        seed: s.seed,
        commits: 0,
        failovers: 0,
        lost_acked_writes: 0,
        simulated_us: 0,
        events: 0,
        trace_hash: 0,
        violation: Some(Violation { invariant: Invariant::Crash, at_us: 0, detail: format!("panic: {}", panic_text(&*payload)) }),
        trace_tail: Vec::new(),
        trace_full: None,
        writes_ok: 0,
        writes_failed: 0,
        writes_unknown: 0,
        reads: 0,
        merged_ltx: 0,
        snapshots: 0,
    })
}

/// Runs a scenario. On a violation the run is repeated (deterministically) with the event text
/// kept, to report the last events.
pub fn run<M: Machine>(s: &Scenario, trace_full: bool) -> RunReport {
    let report = run_once::<M>(s, trace_full, false);
    if report.violation.is_some() && report.trace_tail.is_empty() && !trace_full {
        let again = run_once::<M>(s, false, true);
        return RunReport { trace_tail: again.trace_tail, ..report };
    }
    report
}

/// Whether `candidate` still fails with `invariant`.
fn still_fails<M: Machine>(candidate: &Scenario, invariant: Invariant, runs: &mut usize) -> bool {
    *runs += 1;
    run_once::<M>(candidate, false, false).violation.is_some_and(|v| v.invariant == invariant)
}

fn restrict_nodes(s: &Scenario, nodes: u8) -> Scenario {
    let mut out = s.clone();
    out.nodes = nodes;
    out.sync_replicas = s.sync_replicas.min(nodes.saturating_sub(1));
    out.steps = s
        .steps
        .iter()
        .filter_map(|step| {
            let mut step = step.clone();
            if let Action::Partition { groups } = &mut step.action {
                for group in groups.iter_mut() {
                    group.retain(|p| matches!(p, Peer::Lease) || matches!(p, Peer::Node(n) if *n < nodes));
                }
                groups.retain(|g| !g.is_empty());
                return Some(step);
            }
            step.action.nodes().iter().all(|p| !matches!(p, Peer::Node(n) if *n >= nodes)).then_some(step)
        })
        .collect();
    out
}

/// Shrinks a failing scenario while the same invariant still fails: fewer nodes, fewer steps
/// (chunks, then single steps), a shorter safety phase, a lighter workload. At most `budget` runs.
pub fn shrink<M: Machine>(s: &Scenario, invariant: Invariant, budget: usize) -> Scenario {
    let mut best = expand(s);
    let mut runs = 0usize;
    for nodes in 1..best.nodes {
        if runs >= budget {
            break;
        }
        let candidate = restrict_nodes(&best, nodes);
        if still_fails::<M>(&candidate, invariant, &mut runs) {
            best = candidate;
            break;
        }
    }
    let mut chunk = best.steps.len().div_ceil(2).max(1);
    while chunk >= 1 && runs < budget {
        let mut start = 0;
        while start < best.steps.len() && runs < budget {
            let mut candidate = best.clone();
            let end = (start + chunk).min(candidate.steps.len());
            candidate.steps.drain(start..end);
            if still_fails::<M>(&candidate, invariant, &mut runs) {
                best = candidate;
            } else {
                start += chunk;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk /= 2;
    }
    let last_step = best.steps.iter().map(|st| st.at_ms).max().unwrap_or(0);
    let mut duration = best.duration_ms;
    while runs < budget {
        let shorter = (duration / 2).max(last_step + 1);
        if shorter >= duration {
            break;
        }
        let mut candidate = best.clone();
        candidate.duration_ms = shorter;
        if !still_fails::<M>(&candidate, invariant, &mut runs) {
            break;
        }
        best = candidate;
        duration = shorter;
    }
    for _ in 0..3 {
        if runs >= budget {
            break;
        }
        let mut candidate = best.clone();
        candidate.workload.writes_per_s /= 2;
        candidate.workload.reads_per_s /= 2;
        if candidate.workload.writes_per_s == 0 || !still_fails::<M>(&candidate, invariant, &mut runs) {
            break;
        }
        best = candidate;
    }
    best.name = format!("shrunk: {} ({})", s.name, invariant.name());
    best
}

/// Writes a reproducer into `dir` and returns its path.
pub fn write_reproducer(dir: &Path, s: &Scenario, violation: &Violation) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("seed-{}-{}.toml", s.seed, violation.invariant.name()));
    let header = format!(
        "# Reproduces: {} at {:.3} ms: {}\n# Run: cargo run -p sim -- scenario {}\n",
        violation.invariant.name(),
        violation.at_us as f64 / 1000.0,
        violation.detail.replace('\n', " "),
        path.display()
    );
    std::fs::write(&path, header + &scenario::write(s))?;
    Ok(path)
}

/// One line per run, as `scenario` and `swarm` print it.
pub fn summary(report: &RunReport, wall_ms: u128) -> String {
    format!(
        "{}: seed {} commits {} failovers {} lost_acked_writes {} writes ok/failed/unknown {}/{}/{} reads {} snapshots {} merged_ltx {} simulated {:.1}s wall {}ms => {}",
        report.name,
        report.seed,
        report.commits,
        report.failovers,
        report.lost_acked_writes,
        report.writes_ok,
        report.writes_failed,
        report.writes_unknown,
        report.reads,
        report.snapshots,
        report.merged_ltx,
        report.simulated_us as f64 / 1e6,
        wall_ms,
        match &report.violation {
            None => "ok".to_string(),
            Some(v) => format!("VIOLATION {} at {:.3}ms: {}", v.invariant.name(), v.at_us as f64 / 1000.0, v.detail),
        }
    )
}

/// The outcome of a swarm.
#[derive(Debug, Clone)]
pub struct SwarmReport {
    pub seeds: u64,
    pub failures: Vec<(u64, Violation)>,
    pub simulated_us: u64,
    /// LTX writes stored merged, all runs together.
    pub merged_ltx: u64,
    pub wall_ms: u128,
    /// CPU time (user + system) the process spent during the swarm, where the platform tells
    /// ([`process_cpu_ms`]).
    pub cpu_ms: Option<u128>,
}

impl SwarmReport {
    /// Simulated seconds per wall-clock second, all jobs together.
    pub fn simulated_per_wall(&self) -> f64 {
        (self.simulated_us as f64 / 1e6) / (self.wall_ms.max(1) as f64 / 1e3)
    }
    /// Simulated seconds per CPU second: the speed of one run on one core.
    pub fn simulated_per_cpu(&self) -> Option<f64> {
        self.cpu_ms.map(|cpu| (self.simulated_us as f64 / 1e6) / (cpu.max(1) as f64 / 1e3))
    }
    pub fn seeds_per_minute(&self) -> f64 {
        self.seeds as f64 * 60_000.0 / self.wall_ms.max(1) as f64
    }
    /// Seeds per CPU-minute (independent of how many cores the swarm had, or shared).
    pub fn seeds_per_cpu_minute(&self) -> Option<f64> {
        self.cpu_ms.map(|cpu| self.seeds as f64 * 60_000.0 / cpu.max(1) as f64)
    }
}

/// CPU time (user + system) this process has used so far, in milliseconds: Linux's
/// `/proc/self/stat` (fields 14 and 15, in clock ticks of the fixed user-space `USER_HZ` = 100).
/// `None` elsewhere.
pub fn process_cpu_ms() -> Option<u128> {
    const USER_HZ: u128 = 100;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after its closing parenthesis start at 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u128 = fields.get(11)?.parse().ok()?;
    let stime: u128 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1000 / USER_HZ)
}

/// Runs seeds `first..first + count` on `jobs` threads. `stop_at_first`: stop handing out seeds
/// once one fails (planted-bug hunts). `bias`: synchronous replication, merged LTX storage
/// ([`random::scenario_biased`]).
#[allow(clippy::too_many_arguments)]
pub fn swarm<M: Machine>(
    first: u64,
    count: u64,
    jobs: usize,
    nodes: Option<u8>,
    planted: Option<&str>,
    stop_at_first: bool,
    bias: random::Bias,
) -> SwarmReport {
    let cpu_before = process_cpu_ms();
    let next = AtomicU64::new(first);
    let failures = Mutex::new(Vec::new());
    let simulated = AtomicU64::new(0);
    let merged = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                if stop_at_first && !failures.lock().expect("no poisoned lock").is_empty() {
                    return;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= first + count {
                    return;
                }
                let mut s = random::scenario_biased(seed, nodes, bias);
                s.planted = planted.map(str::to_string);
                let report = run_once::<M>(&s, false, false);
                simulated.fetch_add(report.simulated_us, Ordering::Relaxed);
                merged.fetch_add(report.merged_ltx, Ordering::Relaxed);
                done.fetch_add(1, Ordering::Relaxed);
                if let Some(v) = report.violation {
                    failures.lock().expect("no poisoned lock").push((seed, v));
                }
            });
        }
    });
    let mut failures = failures.into_inner().expect("no poisoned lock");
    failures.sort_by_key(|(seed, _)| *seed);
    SwarmReport {
        seeds: done.load(Ordering::Relaxed),
        failures,
        simulated_us: simulated.load(Ordering::Relaxed),
        merged_ltx: merged.load(Ordering::Relaxed),
        wall_ms: started.elapsed().as_millis(),
        cpu_ms: process_cpu_ms().zip(cpu_before).map(|(after, before)| after.saturating_sub(before)),
    }
}
