//! `ltxfs mount`: mount the FUSE file system, optionally run a command, unmount on exit.
//!
//! Decides: start-up order (config validated → HTTP port bound → data dir → stale mount removed
//! → start-up recovery → file system loaded → node runtime started → HTTP served → mounted →
//! command started), how the YAML maps onto the runtime (node id, members, cluster id, lease
//! backend), signal handling (SIGINT/SIGTERM are forwarded to the command, or end the node when
//! there is none; then unmount, release the lease), when the command starts (once the node is
//! ready: a primary accepting writes, a replica with its primary's initial catch-up applied —
//! unless `skip-sync`; no time limit, like LiteFS, but a log line every few seconds says what it
//! waits for) and the exit code (the command's).
//! Never does: commit detection, LTX or replication (see `fs`, `node::runtime`).

use crate::config::{Config, Exec, LeaseType, LogFormat};
use crate::fs::{FsOptions, LtxFs, Shared};
use ltxfs_core::ids::{ClusterId, NodeId};
use ltxfs_core::node::{Config as CoreConfig, LeaseMode};
use node::lease::etcd::{EtcdConfig, EtcdLease};
use node::lease::static_lease::StaticLease;
use node::lease::LeaseHolder;
use node::runtime::{self, node_id_from_name, ApplyHook, Readiness, RuntimeConfig};
use std::collections::BTreeSet;
use std::sync::Arc;
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
    /// The node is ready (or `skip-sync`): the command may start.
    Ready,
    /// The node runtime ended before it was ready.
    NodeStopped,
}

/// How often `ltxfs mount` says what it is still waiting for before running its command.
const READY_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until the node is ready once (LiteFS waits the same way, without a time limit),
/// logging every [`READY_LOG_INTERVAL`] what it waits for. False: the runtime stopped first.
async fn wait_ready(handle: &runtime::RuntimeHandle) -> bool {
    let mut ready = handle.ready();
    tracing::info!("waiting to connect to the cluster");
    loop {
        let waited = tokio::time::timeout(READY_LOG_INTERVAL, ready.wait_for(|r| *r == Readiness::Ready)).await.map(|r| r.is_ok());
        match waited {
            Ok(true) => return true,
            Ok(false) => return false,
            Err(_) => {
                let waiting = waiting_for(&handle.status(), &ready.borrow());
                tracing::info!("not ready yet: {waiting}");
            }
        }
    }
}

/// What a node that is not ready waits for, in words.
fn waiting_for(status: &runtime::Status, readiness: &Readiness) -> String {
    if let Readiness::Applying { behind } = readiness {
        let dbs: Vec<String> = behind.iter().map(|(db, at, reach)| format!("{db} at TXID {at} of {reach}")).collect();
        return format!("applying the primary's initial catch-up ({})", dbs.join(", "));
    }
    if status.is_primary {
        return match status.recovery {
            Some(r) => format!("primary in recovery: positions of {} of {} nodes known", r.have, r.need),
            None => "primary, not yet accepting writes".into(),
        };
    }
    match &status.primary {
        None => "no primary known yet (lease holder)".into(),
        Some(p) if !status.connected_to_primary => {
            format!("connecting to the primary {} at {}", p.hostname, p.advertise_url)
        }
        Some(p) => format!("connected to the primary {}; waiting for its initial catch-up", p.hostname),
    }
}

/// Starts the command (`-- CMD ARGS`, else `exec`); its exit is reported on `wake`.
/// `None`: nothing to run.
fn start_command(cli: &[String], config: &Config, wake: mpsc::Sender<Wake>) -> Result<Option<u32>, String> {
    let Some((program, args)) = command_line(cli, config.exec.as_ref(), config.lease.candidate)? else {
        return Ok(None);
    };
    let mut child = Command::new(&program).args(&args).spawn().map_err(|e| format!("cannot run {program}: {e}"))?;
    let pid = child.id();
    tracing::info!(pid, %program, "command started");
    std::thread::spawn(move || {
        use std::os::unix::process::ExitStatusExt as _;
        let code = match child.wait() {
            Ok(status) => status.code().or(status.signal().map(|s| 128 + s)).unwrap_or(1),
            Err(_) => 1,
        };
        let _ = wake.send(Wake::ChildExited(code));
    });
    Ok(Some(pid))
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
    require_fuse()?;
    let plan = NodePlan::from_config(config)?;
    let listen = crate::config::parse_listen_addr(&config.http.addr).map_err(|e| format!("http.addr: {e}"))?;
    // Bind before touching the data directory: a port in use is a clean error, nothing written.
    let listener = std::net::TcpListener::bind(listen).map_err(|e| format!("http.addr {listen}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| format!("http.addr: {e}"))?;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("data.dir {}: {e}", data_dir.display()))?;
    unmount_stale(fuse_dir);
    std::fs::create_dir_all(fuse_dir)
        .map_err(|e| format!("fuse.dir {}: {e}", fuse_dir.display()))?;

    crate::recover::recover_data_dir(data_dir).map_err(|e| format!("start-up recovery in {}: {e}", data_dir.display()))?;
    let shared = Shared::new(FsOptions {
        data_dir: data_dir.clone(),
        record_ops: request.record_ops.clone(),
        follow_caller_cpu: config.fuse.follow_caller_cpu,
    })
    .map_err(|e| format!("cannot open data dir {}: {e}", data_dir.display()))?;

    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("ltxfs-node")
        // The blocking pool grows from whichever thread needs it, the FUSE thread included.
        .on_thread_start(node::caller_cpu::release)
        .build()
        .map_err(|e| format!("cannot start the node runtime: {e}"))?;
    let handle = {
        let _enter = tokio_rt.enter();
        let hook: Arc<dyn ApplyHook> = shared.clone();
        let handle = match &plan.lease {
            LeasePlan::Static(holder) => runtime::start(plan.runtime.clone(), Arc::new(StaticLease::new(holder.clone())), hook),
            LeasePlan::Etcd(etcd) => runtime::start(plan.runtime.clone(), EtcdLease::start(etcd.clone()), hook),
        }
        .map_err(|e| format!("cannot start the node: {e}"))?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| format!("http.addr: {e}"))?;
        let server_handle = handle.clone();
        tokio_rt.spawn(async move {
            if let Err(err) = node::http::serve(listener, server_handle).await {
                tracing::error!(%err, "HTTP server failed");
            }
        });
        handle
    };
    shared.set_runtime(handle.clone());
    tracing::info!(node = %plan.name, id = %plan.runtime.node_id, http = %listen, "node started");

    let mut options = fuser::Config::default();
    options.mount_options = vec![
        fuser::MountOption::FSName("ltxfs".into()),
        fuser::MountOption::Subtype("ltxfs".into()),
    ];
    if config.fuse.allow_other {
        options.acl = fuser::SessionACL::All;
    }
    let session = fuser::spawn_mount(LtxFs::new(shared.clone()), fuse_dir, &options)
        .map_err(|e| format!("cannot mount {}: {e}", fuse_dir.display()))?;
    shared.set_notifier(session.notifier(), fuse_dir.to_path_buf());
    if config.fuse.idle_priority {
        match node::idle_handoff::enable(fuse_dir) {
            Ok(()) => tracing::debug!("FUSE thread at idle priority between requests (fuse.idle-priority)"),
            Err(why) => tracing::info!(%why, "fuse.idle-priority: the FUSE thread keeps SCHED_OTHER"),
        }
    }
    let role = if plan.static_primary { "primary" } else { "replica" };
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

    let has_command = !request.command.is_empty() || config.exec.is_some();
    if !has_command {
        // Tests wait for this line: it is printed once the mount serves requests.
        println!("ltxfs: {role} node mounted at {}", fuse_dir.display());
        if request.hint {
            println!("  data:  {}", data_dir.display());
            println!("  http:  http://{listen}  (ltxfs status --url http://{listen})");
            println!("  try:   sqlite3 {}", fuse_dir.join("app.db").display());
            println!("  stop:  Ctrl-C (unmounts cleanly)");
        }
    }
    if config.skip_sync {
        tracing::info!("skip-sync: not waiting to connect to the cluster");
        let _ = wake_tx.send(Wake::Ready);
    } else {
        let (wake, handle) = (wake_tx.clone(), handle.clone());
        tokio_rt.spawn(async move {
            let woken = if wait_ready(&handle).await { Wake::Ready } else { Wake::NodeStopped };
            let _ = wake.send(woken);
        });
    }

    let mut child_pid: Option<u32> = None;
    let code = loop {
        match wake_rx.recv() {
            Ok(Wake::Ready) if has_command && child_pid.is_none() => {
                match start_command(&request.command, config, wake_tx.clone()) {
                    Ok(pid) => child_pid = pid,
                    Err(err) => {
                        tracing::error!("{err}");
                        eprintln!("ltxfs: {err}");
                        break 1;
                    }
                }
                if child_pid.is_none() {
                    break 0; // every `exec` entry was skipped (`if-candidate` on a non-candidate)
                }
            }
            Ok(Wake::Ready) => {}
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
                    // A command that never ran did not succeed.
                    break if has_command { 128 + signal } else { 0 };
                }
            },
            Ok(Wake::ChildExited(code)) => {
                tracing::info!(code, "command exited");
                break code;
            }
            Ok(Wake::NodeStopped) => {
                tracing::error!("the node stopped before it was ready");
                break 1;
            }
            Err(_) => break 1,
        }
    };

    shared.close_mount_files();
    if let Err(err) = session.umount_and_join() {
        tracing::warn!(%err, "unmount failed; detaching lazily");
        lazy_unmount(fuse_dir);
    }
    tracing::info!(dir = %fuse_dir.display(), "unmounted");
    // Release the lease and persist checksum indexes (bounded: never hang on exit).
    let stop = handle.clone();
    let _ = tokio_rt.block_on(async move { tokio::time::timeout(std::time::Duration::from_secs(5), stop.shutdown()).await });
    tokio_rt.shutdown_timeout(std::time::Duration::from_secs(2));
    if let Err(err) = crate::recover::mark_clean(data_dir) {
        tracing::warn!(%err, "cannot mark the data directory cleanly shut down");
    }
    Ok(ExitCode::from(
        u8::try_from(code.clamp(0, 255)).unwrap_or(1),
    ))
}

/// How the lease is held.
enum LeasePlan {
    Static(LeaseHolder),
    Etcd(EtcdConfig),
}

/// The runtime configuration and lease backend a YAML configuration maps onto.
struct NodePlan {
    name: String,
    runtime: RuntimeConfig,
    lease: LeasePlan,
    /// Static lease and this node is the candidate (the permanent primary).
    static_primary: bool,
}

impl NodePlan {
    fn from_config(config: &Config) -> Result<NodePlan, String> {
        let name = config.node_name();
        let node_id = node_id_from_name(&name);
        let own_url = || {
            let addr = config.http.addr.replace("0.0.0.0", "127.0.0.1");
            let addr = if addr.starts_with(':') { format!("127.0.0.1{addr}") } else { addr };
            format!("http://{addr}")
        };
        let members: BTreeSet<NodeId> = config.member_names().iter().map(|n| node_id_from_name(n)).collect();
        if members.len() != config.member_names().len() {
            return Err("replication.members: two names hash to the same node id; rename one".into());
        }
        let peers: BTreeSet<NodeId> = members.into_iter().filter(|m| *m != node_id).collect();
        let (mode, lease, advertise_url, static_primary) = match config.lease.kind {
            Some(LeaseType::Static) => {
                let primary_name = config.static_primary_name();
                let primary = node_id_from_name(&primary_name);
                let primary_url = config.lease.advertise_url.clone().unwrap_or_else(own_url);
                let holder = LeaseHolder { node_id: primary, hostname: primary_name, advertise_url: primary_url.clone() };
                let me_primary = config.lease.candidate;
                if me_primary && primary != node_id {
                    return Err("replication.node-id: on a static-lease primary it must equal lease.hostname".into());
                }
                if !me_primary && primary == node_id {
                    return Err("replication.node-id: a static-lease replica must not have the primary's name (lease.hostname)".into());
                }
                let url = if me_primary { primary_url } else { own_url() };
                (LeaseMode::Static { primary }, LeasePlan::Static(holder), url, me_primary)
            }
            Some(LeaseType::Etcd) => {
                let url = config.lease.advertise_url.clone().unwrap_or_else(own_url);
                let me = LeaseHolder { node_id, hostname: config.lease.hostname.clone().unwrap_or_else(|| name.clone()), advertise_url: url.clone() };
                let etcd = EtcdConfig {
                    endpoints: config.lease.etcd.endpoints.clone(),
                    key: config.lease.etcd.key.clone(),
                    ttl: config.lease.ttl,
                    poll_interval: (config.replication.heartbeat_interval / 4).max(std::time::Duration::from_millis(20)),
                    me,
                };
                // Stop writing a tenth of the TTL before the lease could expire at etcd.
                let margin = (config.lease.ttl / 10).max(std::time::Duration::from_millis(100));
                (LeaseMode::Dynamic { candidate: config.lease.candidate, clock_margin: margin }, LeasePlan::Etcd(etcd), url, false)
            }
            None => return Err("lease.type: required".into()),
        };
        let cluster_id = cluster_id(config.replication.cluster_id.as_deref().unwrap_or("ltxfs"));
        let mut core = CoreConfig::new(cluster_id, peers, mode);
        core.heartbeat_interval = config.replication.heartbeat_interval;
        core.compress_ltx = config.data.compress;
        core.retention.age_max = config.data.retention;
        core.retention_interval = config.data.retention_monitor_interval.max(std::time::Duration::from_secs(1));
        // `replication.sync: N` with `replication.cluster-size: M` (validated N < M, every member
        // named): the core's cluster size is the member count, so its recovery quorum is M − N.
        let sync = config.replication.sync_replicas();
        if sync as usize >= core.cluster_size() {
            return Err(format!("replication.sync: {sync} acks need more than {} members", core.cluster_size()));
        }
        core.sync_replicas = sync;
        let hostname = config.lease.hostname.clone().filter(|_| config.lease.candidate).unwrap_or_else(|| name.clone());
        let runtime = RuntimeConfig {
            node_id,
            hostname,
            advertise_url,
            data_dir: config.data.dir.clone(),
            core,
            auth_token: config.http.auth_token.clone(),
            reconnect_delay: config.lease.reconnect_delay,
        };
        Ok(NodePlan { name, runtime, lease, static_primary })
    }
}

/// `replication.cluster-id`: 16 hex digits as is, any other text hashed.
fn cluster_id(text: &str) -> ClusterId {
    match (text.len(), u64::from_str_radix(text, 16)) {
        (16, Ok(id)) => ClusterId(id),
        _ => ClusterId(node_id_from_name(text).0),
    }
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
