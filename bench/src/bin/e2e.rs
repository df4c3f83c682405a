//! `cargo run --release -p bench --bin e2e -- <throughput|lag|startup|all> [options]`: the
//! end-to-end benches of issue 5 against a real `ltxfs` binary (built on demand into
//! `target/e2e-node`, or `LTXFS_BIN`). Prints a Markdown report; figures go to bench/RESULTS.md.

use bench::e2e::{self, workload::Mode, Profile, Which};
use clap::{Parser, ValueEnum};
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BenchArg {
    Throughput,
    Lag,
    Startup,
    All,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    DeleteFull,
    WalFull,
    WalNormal,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::DeleteFull => Mode::DeleteFull,
            ModeArg::WalFull => Mode::WalFull,
            ModeArg::WalNormal => Mode::WalNormal,
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "ltxfs end-to-end benches (throughput vs raw SQLite, replication lag, start-up)")]
struct Args {
    #[arg(value_enum, default_value = "all")]
    bench: BenchArg,
    /// Use the short profile of `cargo bench`.
    #[arg(long)]
    short: bool,
    /// Throughput: timed transactions per arm and mode.
    #[arg(long)]
    transactions: Option<usize>,
    /// Throughput: only these modes (repeatable).
    #[arg(long, value_enum)]
    mode: Vec<ModeArg>,
    /// Throughput: transactions in the strace counting window (0: no counting).
    #[arg(long)]
    traced: Option<usize>,
    /// Lag: seconds at the fixed rate.
    #[arg(long)]
    lag_seconds: Option<u32>,
    /// Lag: journal mode of the replicated database.
    #[arg(long, value_enum)]
    lag_mode: Option<ModeArg>,
    /// Start-up: database size in MiB.
    #[arg(long)]
    size_mib: Option<u64>,
    /// Start-up: drop the page cache before each start (root; machine-wide).
    #[arg(long)]
    cold_cache: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut profile = if args.short { Profile::short() } else { Profile::full() };
    if let Some(n) = args.transactions {
        profile.throughput.transactions = n.max(profile.throughput.chunk);
        profile.throughput.chunk = profile.throughput.chunk.min(n.max(1));
    }
    if !args.mode.is_empty() {
        profile.throughput.modes = args.mode.iter().map(|m| Mode::from(*m)).collect();
    }
    if let Some(n) = args.traced {
        profile.throughput.traced = n;
    }
    if let Some(s) = args.lag_seconds {
        profile.lag.seconds = s.max(1);
    }
    if let Some(m) = args.lag_mode {
        profile.lag.mode = m.into();
    }
    if let Some(s) = args.size_mib {
        profile.startup.size_mib = s.max(1);
    }
    profile.startup.cold_cache = args.cold_cache;
    let which = match args.bench {
        BenchArg::Throughput => Which::Throughput,
        BenchArg::Lag => Which::Lag,
        BenchArg::Startup => Which::Startup,
        BenchArg::All => Which::All,
    };
    match e2e::run(which, &profile) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("e2e: {e}");
            ExitCode::FAILURE
        }
    }
}
