//! `ltxfs`: the production node binary. It only moves bytes between the world and `ltxfs-core`:
//! the FUSE mount (`fs`), start-up recovery (`recover`), the mount process (`mount`), the
//! configuration file (`config`) and the HTTP clients of the node API (`cli`); the node runtime,
//! HTTP API and lease backends live in the `node` library.

mod cli;
mod config;
mod fs;
mod ltx_cmd;
mod mount;
mod mount_locks;
mod recover;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "ltxfs",
    version,
    about = "SQLite replicated at the file-system layer"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mount the FUSE file system and run the node (the default with no arguments).
    Mount(MountArgs),
    /// Replace a database on the primary with a local SQLite file (one transaction).
    Import(cli::TransferArgs),
    /// Download a database from any node into a local SQLite file.
    Export(cli::TransferArgs),
    /// Show a node's role, primary, lag and database positions.
    Status(cli::StatusArgs),
    /// Ask a node (a candidate replica) to become the primary.
    Promote(cli::NodeArgs),
    /// Inspect, verify, build and apply LTX files.
    Ltx(ltx_cmd::LtxArgs),
}

#[derive(clap::Args, Debug, Default)]
struct MountArgs {
    /// YAML configuration (LiteFS keys). Default: ./ltxfs.yml if present, else the embedded
    /// single-node configuration (mount ./ltxfs/mnt, data ./ltxfs/data).
    #[arg(long, short = 'c')]
    config: Option<std::path::PathBuf>,
    /// Record every commit-detector input per database into DIR/<db>.ops (test fixtures).
    #[arg(long, hide = true)]
    record_ops: Option<std::path::PathBuf>,
    /// Command to run once mounted; ltxfs exits with its exit code.
    #[arg(last = true)]
    command: Vec<String>,
}

fn mount_command(args: MountArgs) -> ExitCode {
    let default_file = std::path::Path::new("ltxfs.yml");
    let (config, hint) = match &args.config {
        Some(path) => (config::Config::load(path), false),
        None if default_file.exists() => (config::Config::load(default_file), false),
        None => (Ok(config::Config::embedded_default()), true),
    };
    let config = match config {
        Ok(config) => config,
        Err(err) => {
            eprintln!("ltxfs: {err}");
            return ExitCode::from(2);
        }
    };
    mount::init_logging(&config);
    mount::run(mount::MountRequest {
        config,
        command: args.command,
        record_ops: args.record_ops,
        hint,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => mount_command(MountArgs::default()),
        Some(Command::Mount(args)) => mount_command(args),
        Some(Command::Import(args)) => cli::import(args),
        Some(Command::Export(args)) => cli::export(args),
        Some(Command::Status(args)) => cli::status(args),
        Some(Command::Promote(args)) => cli::promote(args),
        Some(Command::Ltx(args)) => ltx_cmd::run(args),
    }
}
