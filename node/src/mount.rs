//! `ltxfs mount`: mount the FUSE file system, optionally run a command, unmount on exit.
//!
//! Decides: start-up order (config already validated → data dir → stale mount removed → file
//! system loaded → mounted → command started), signal handling (SIGINT/SIGTERM are forwarded to
//! the command, or end the node when there is none) and the exit code (the command's).
//! Never does: commit detection or LTX (see `fs`, `engine`).

use crate::config::{Config, Exec, LogFormat};
use crate::fs::{FsOptions, LtxFs};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::mpsc;

/// Everything `ltxfs mount` needs beyond the config file.
pub struct MountRequest {
    pub config: Config,
    /// Command from `-- CMD ARGS` (overrides `exec`).
    pub command: Vec<String>,
    pub record_ops: Option<PathBuf>,
    /// Print the "what next" hint (embedded default).
    pub hint: bool,
}

pub fn init_logging(config: &Config) {
    let default = if config.log.debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LTXFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let result = match (config.log.format, config.log.timestamp) {
        (LogFormat::Json, _) => builder.json().try_init(),
        (LogFormat::Text, true) => builder.try_init(),
        (LogFormat::Text, false) => builder.without_time().try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

enum Wake {
    Signal(i32),
    ChildExited(i32),
}

pub fn run(request: MountRequest) -> ExitCode {
    match run_inner(request) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("ltxfs: {err}");
            ExitCode::from(1)
        }
    }
}

fn run_inner(request: MountRequest) -> Result<ExitCode, String> {
    let config = &request.config;
    let fuse_dir = &config.fuse.dir;
    let data_dir = &config.data.dir;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("data.dir {}: {e}", data_dir.display()))?;
    unmount_stale(fuse_dir);
    std::fs::create_dir_all(fuse_dir)
        .map_err(|e| format!("fuse.dir {}: {e}", fuse_dir.display()))?;
    require_fuse()?;

    let replica = !config.lease.candidate;
    let fs = LtxFs::new(FsOptions {
        data_dir: data_dir.clone(),
        compress: config.data.compress,
        replica,
        primary_hostname: primary_hostname(config),
        record_ops: request.record_ops.clone(),
    })
    .map_err(|e| format!("cannot open data dir {}: {e}", data_dir.display()))?;

    let mut options = fuser::Config::default();
    options.mount_options = vec![
        fuser::MountOption::FSName("ltxfs".into()),
        fuser::MountOption::Subtype("ltxfs".into()),
    ];
    if config.fuse.allow_other {
        options.acl = fuser::SessionACL::All;
    }
    let session = fuser::spawn_mount(fs, fuse_dir, &options)
        .map_err(|e| format!("cannot mount {}: {e}", fuse_dir.display()))?;
    let role = if replica { "replica" } else { "primary" };
    tracing::info!(dir = %fuse_dir.display(), data = %data_dir.display(), role, "mounted");

    let (wake_tx, wake_rx) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let signal_tx = wake_tx.clone();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal_tx.send(Wake::Signal(signal)).is_err() {
                break;
            }
        }
    });

    let command = command_line(&request.command, config.exec.as_ref(), !replica)?;
    let child_pid = match command {
        Some((program, args)) => {
            let mut child = Command::new(&program)
                .args(&args)
                .spawn()
                .map_err(|e| format!("cannot run {program}: {e}"))?;
            let pid = child.id();
            tracing::info!(pid, %program, "command started");
            std::thread::spawn(move || {
                let code = match child.wait() {
                    Ok(status) => status.code().unwrap_or(128 + 1),
                    Err(_) => 1,
                };
                let _ = wake_tx.send(Wake::ChildExited(code));
            });
            Some(pid)
        }
        None => {
            // Tests wait for this line: it is printed once the mount serves requests.
            println!("ltxfs: {role} node mounted at {}", fuse_dir.display());
            if request.hint {
                println!("  data:  {}", data_dir.display());
                println!("  try:   sqlite3 {}", fuse_dir.join("app.db").display());
                println!("  stop:  Ctrl-C (unmounts cleanly)");
            }
            drop(wake_tx);
            None
        }
    };

    let code = loop {
        match wake_rx.recv() {
            Ok(Wake::Signal(signal)) => match child_pid {
                Some(pid) => {
                    tracing::info!(signal, pid, "forwarding signal to command");
                    let pid = nix::unistd::Pid::from_raw(pid as i32);
                    if let Ok(sig) = nix::sys::signal::Signal::try_from(signal) {
                        let _ = nix::sys::signal::kill(pid, sig);
                    }
                }
                None => {
                    tracing::info!(signal, "stopping");
                    break 0;
                }
            },
            Ok(Wake::ChildExited(code)) => {
                tracing::info!(code, "command exited");
                break code;
            }
            Err(_) => break 1,
        }
    };

    if let Err(err) = session.umount_and_join() {
        tracing::warn!(%err, "unmount failed; detaching lazily");
        lazy_unmount(fuse_dir);
    }
    tracing::info!(dir = %fuse_dir.display(), "unmounted");
    Ok(ExitCode::from(
        u8::try_from(code.clamp(0, 255)).unwrap_or(1),
    ))
}

fn primary_hostname(config: &Config) -> String {
    config
        .lease
        .hostname
        .clone()
        .or_else(|| config.lease.advertise_url.clone())
        .unwrap_or_default()
}

/// `-- CMD ARGS` wins; else the last `exec` entry (earlier entries run synchronously first).
fn command_line(
    cli: &[String],
    exec: Option<&Exec>,
    candidate: bool,
) -> Result<Option<(String, Vec<String>)>, String> {
    if let Some((program, args)) = cli.split_first() {
        return Ok(Some((program.clone(), args.to_vec())));
    }
    let shell = |cmd: &str| ("sh".to_string(), vec!["-c".to_string(), cmd.to_string()]);
    match exec {
        None => Ok(None),
        Some(Exec::Single(cmd)) => Ok(Some(shell(cmd))),
        Some(Exec::List(entries)) => {
            let entries: Vec<_> = entries
                .iter()
                .filter(|e| candidate || !e.if_candidate)
                .collect();
            let Some((last, first)) = entries.split_last() else {
                return Ok(None);
            };
            for entry in first {
                let status = Command::new("sh")
                    .args(["-c", &entry.cmd])
                    .status()
                    .map_err(|e| format!("exec {:?}: {e}", entry.cmd))?;
                if !status.success() {
                    return Err(format!("exec {:?} failed: {status}", entry.cmd));
                }
            }
            Ok(Some(shell(&last.cmd)))
        }
    }
}

fn require_fuse() -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing: load the fuse module or run the container with --device /dev/fuse".into());
    }
    let found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("fusermount3").exists())
    });
    if !found {
        return Err("fusermount3 not found: install the fuse3 package".into());
    }
    Ok(())
}

/// A previous run that died leaves a dead mount (`ENOTCONN`): detach it first.
fn unmount_stale(dir: &Path) {
    let stale = match std::fs::metadata(dir) {
        Err(err) => err.raw_os_error() == Some(libc::ENOTCONN),
        Ok(_) => is_mount_point(dir),
    };
    if stale {
        tracing::warn!(dir = %dir.display(), "unmounting a stale mount from a previous run");
        lazy_unmount(dir);
    }
}

fn is_mount_point(dir: &Path) -> bool {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return false;
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_src, target, fstype) = (fields.next(), fields.next(), fields.next());
        target == Some(dir.to_string_lossy().as_ref())
            && fstype.is_some_and(|t| t.starts_with("fuse"))
    })
}

fn lazy_unmount(dir: &Path) {
    let result = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(dir)
        .status();
    if !matches!(result, Ok(status) if status.success()) {
        tracing::warn!(dir = %dir.display(), "fusermount3 -u -z failed");
    }
}
