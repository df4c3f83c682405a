//! `cargo bench -p bench --bench e2e`: the end-to-end benches (throughput vs raw SQLite,
//! replication lag, 1 GiB start-up) in their short profile, without criterion. The full profile
//! is `cargo run --release -p bench --bin e2e -- all`. Needs /dev/fuse and fusermount3.

fn main() -> std::process::ExitCode {
    // cargo passes `--bench` (and filters); a filter that names no e2e bench skips the run.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| "e2e".contains(f.as_str())) {
        return std::process::ExitCode::SUCCESS;
    }
    match bench::e2e::run(bench::e2e::Which::All, &bench::e2e::Profile::short()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("e2e: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
