//! `ltxfs`: the production node binary. It only moves bytes between the world and `ltxfs-core`.

mod config;
mod ltx_cmd;

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
    Mount,
    /// Inspect, verify, build and apply LTX files.
    Ltx(ltx_cmd::LtxArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None | Some(Command::Mount) => {
            eprintln!("ltxfs: the FUSE node is not built yet (see README status table)");
            ExitCode::from(2)
        }
        Some(Command::Ltx(args)) => ltx_cmd::run(args),
    }
}
