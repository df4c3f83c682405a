//! `sim`: the deterministic simulator's command line.
//!
//! - `sim scenario FILE...` — run scenario files; exit 0 iff every invariant and `[expect]` holds.
//! - `sim scenario FILE... [--trace]` — also prints `trace-hash: <16 hex>` per file.
//! - `sim run --seed N [--nodes K] [--trace] [--merge seeded|on|off]` — one random run; last
//!   line `trace-hash: <16 hex>`.
//! - `sim swarm --seeds N [--jobs J] [--sync] [--merge seeded|on|off] [--planted NAME]` — many
//!   random runs in parallel; prints simulated seconds per wall second and per CPU second, and
//!   seeds per CPU-minute. `--merge`: merged LTX storage in a share of the seeds (default), in
//!   every run, or in none ([`sim::random::MergeChoice`]).
//! - `sim planted --list` — the names of the core's planted bugs (listed in every build; running
//!   one needs `--features core-planted-bugs`).
//!
//! The node under test is always the real `ltxfs-core` node ([`sim::core_binding`]).
//!
//! On a failure the run is shrunk and a reproducing scenario file is written (its path printed).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};

use sim::core_binding::{CoreNode, PLANTED_ENABLED};
use sim::machine::Machine;
use sim::{random, runner, scenario};

#[derive(Parser)]
#[command(name = "sim", about = "Deterministic simulator for ltxfs-core")]
struct Cli {
    /// Where reproducers of failures are written.
    #[arg(long, default_value = "target/sim-failures", global = true)]
    out: PathBuf,
    /// Runs the shrinker may spend on one failure.
    #[arg(long, default_value_t = 150, global = true)]
    shrink_budget: usize,
    #[command(subcommand)]
    command: Command,
}

/// `--merge`: which random runs store LTX writes merged.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
enum MergeArg {
    /// A share of the seeds, drawn from the seed.
    #[default]
    Seeded,
    On,
    Off,
}

impl MergeArg {
    fn choice(self) -> random::MergeChoice {
        match self {
            MergeArg::Seeded => random::MergeChoice::Seeded,
            MergeArg::On => random::MergeChoice::On,
            MergeArg::Off => random::MergeChoice::Off,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Runs scenario files.
    Scenario {
        files: Vec<PathBuf>,
        /// Print every event.
        #[arg(long)]
        trace: bool,
    },
    /// One random run.
    Run {
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        nodes: Option<u8>,
        /// Print every event.
        #[arg(long)]
        trace: bool,
        #[arg(long)]
        planted: Option<String>,
        /// Synchronous replication wherever the cluster has a replica (as `swarm --sync`).
        #[arg(long)]
        sync: bool,
        /// Merged LTX storage: in a share of the seeds, always, or never.
        #[arg(long, value_enum, default_value_t)]
        merge: MergeArg,
    },
    /// Many random runs in parallel.
    Swarm {
        #[arg(long)]
        seeds: u64,
        #[arg(long, default_value_t = 0)]
        first: u64,
        #[arg(long)]
        jobs: Option<usize>,
        #[arg(long)]
        nodes: Option<u8>,
        #[arg(long)]
        planted: Option<String>,
        /// Bias every run to synchronous replication (sync_replicas >= 1 wherever possible).
        #[arg(long)]
        sync: bool,
        /// Merged LTX storage: in a share of the seeds, always, or never.
        #[arg(long, value_enum, default_value_t)]
        merge: MergeArg,
    },
    /// Lists planted bugs.
    Planted {
        #[arg(long)]
        list: bool,
    },
}

fn report_failure<M: Machine>(cli: &Cli, s: &scenario::Scenario, report: &sim::world::RunReport) {
    let Some(v) = &report.violation else { return };
    println!("  violation: {} at {:.3} ms (seed {}): {}", v.invariant.name(), v.at_us as f64 / 1000.0, s.seed, v.detail);
    println!("  last events:");
    for line in &report.trace_tail {
        println!("    {line}");
    }
    let shrunk = runner::shrink::<M>(s, v.invariant, cli.shrink_budget);
    let check = runner::run::<M>(&shrunk, false);
    let (scenario, violation) = match &check.violation {
        Some(sv) if sv.invariant == v.invariant => (&shrunk, sv),
        _ => (s, v),
    };
    match runner::write_reproducer(&cli.out, scenario, violation) {
        Ok(path) => println!(
            "  reproducer ({} nodes, {} steps, {} ms): {}",
            scenario.nodes,
            scenario.steps.len(),
            scenario.duration_ms,
            path.display()
        ),
        Err(e) => println!("  could not write reproducer: {e}"),
    }
}

fn main_with<M: Machine>(cli: &Cli) -> ExitCode {
    match &cli.command {
        Command::Scenario { files, trace } => {
            let mut ok = true;
            for file in files {
                let text = match std::fs::read_to_string(file) {
                    Ok(text) => text,
                    Err(e) => {
                        println!("{}: {e}", file.display());
                        ok = false;
                        continue;
                    }
                };
                let s = match scenario::parse(&text) {
                    Ok(s) => s,
                    Err(e) => {
                        println!("{}: {e}", file.display());
                        ok = false;
                        continue;
                    }
                };
                let started = Instant::now();
                let report = runner::run::<M>(&s, *trace);
                for line in report.trace_full.iter().flatten() {
                    println!("{line}");
                }
                println!("{}: {}", file.display(), runner::summary(&report, started.elapsed().as_millis()));
                println!("trace-hash: {:016x}", report.trace_hash);
                if report.violation.is_some() {
                    ok = false;
                    report_failure::<M>(cli, &s, &report);
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Run { seed, nodes, trace, planted, sync, merge } => {
            let mut s = random::scenario_biased(*seed, *nodes, random::Bias { sync: *sync, merge: merge.choice() });
            s.planted = planted.clone();
            let started = Instant::now();
            let report = runner::run::<M>(&s, *trace);
            if let Some(lines) = &report.trace_full {
                for line in lines {
                    println!("{line}");
                }
            }
            println!("{}", runner::summary(&report, started.elapsed().as_millis()));
            if report.violation.is_some() {
                report_failure::<M>(cli, &s, &report);
            }
            println!("trace-hash: {:016x}", report.trace_hash);
            if report.violation.is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Swarm { seeds, first, jobs, nodes, planted, sync, merge } => {
            let jobs = jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            let bias = random::Bias { sync: *sync, merge: merge.choice() };
            let report = runner::swarm::<M>(*first, *seeds, jobs, *nodes, planted.as_deref(), planted.is_some(), bias);
            for (seed, v) in &report.failures {
                println!("FAIL seed {seed}: {} at {:.3} ms: {}", v.invariant.name(), v.at_us as f64 / 1000.0, v.detail);
            }
            let cpu = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.0}"));
            println!(
                "swarm: {} seeds, {} failed, {} merged LTX writes, {:.1} simulated s in {:.1} wall s on {jobs} jobs ({} CPU s): \
                 {:.0} simulated s per wall s, {} per CPU s; {:.0} seeds/min, {} seeds per CPU-minute",
                report.seeds,
                report.failures.len(),
                report.merged_ltx,
                report.simulated_us as f64 / 1e6,
                report.wall_ms as f64 / 1e3,
                report.cpu_ms.map_or("n/a".to_string(), |ms| format!("{:.1}", ms as f64 / 1e3)),
                report.simulated_per_wall(),
                cpu(report.simulated_per_cpu()),
                report.seeds_per_minute(),
                cpu(report.seeds_per_cpu_minute()),
            );
            if let Some((seed, _)) = report.failures.first() {
                let mut s = random::scenario_biased(*seed, *nodes, bias);
                s.planted = planted.clone();
                let again = runner::run::<M>(&s, false);
                report_failure::<M>(cli, &s, &again);
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Command::Planted { list } => {
            if *list {
                for name in M::planted_names() {
                    println!("{name}");
                }
                if !PLANTED_ENABLED {
                    eprintln!("{NEEDS_PLANTED_FEATURE}");
                }
            }
            ExitCode::SUCCESS
        }
    }
}

const NEEDS_PLANTED_FEATURE: &str = "(this build cannot switch them on: run with `cargo run -p sim --features core-planted-bugs -- ...`)";

/// The simulator allocates and frees LTX and LZ4 frame buffers on every simulated commit; glibc's
/// allocator serves that pattern by growing and trimming its heap each time. mimalloc keeps
/// freed memory in per-size free lists instead. Speed only: it changes no simulated outcome.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let planted = match &cli.command {
        Command::Run { planted, .. } | Command::Swarm { planted, .. } => planted.as_deref(),
        _ => None,
    };
    if let Some(name) = planted {
        if !CoreNode::planted_names().contains(&name) {
            eprintln!("unknown planted bug `{name}` (see `sim planted --list`)");
            return ExitCode::from(2);
        }
        if !PLANTED_ENABLED {
            eprintln!("planted bug `{name}`: {NEEDS_PLANTED_FEATURE}");
            return ExitCode::from(2);
        }
    }
    main_with::<CoreNode>(&cli)
}
