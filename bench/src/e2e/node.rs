//! Real `ltxfs` processes for the end-to-end benches.
//!
//! Decides: where the `ltxfs` binary comes from (`LTXFS_BIN`, else a release build of package
//! `node` into its own target dir), the YAML config each bench node gets (only keys that
//! `ltxfs mount` accepts), free loopback ports, and that every mount is gone when a [`Node`] is
//! dropped (SIGTERM, then SIGKILL, then `fusermount3 -u`, then `-u -z`), even when a bench fails.
//! Never does: measure anything (see `throughput`, `lag`, `startup`).

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Result type of the harness: a readable message is all a bench needs.
pub type Result<T> = std::result::Result<T, String>;

/// Workspace `target/` (or `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|root| root.join("target"))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// The `ltxfs` binary to bench. `LTXFS_BIN` wins; otherwise `cargo build --release -p node` into
/// `target/e2e-node` (its own target dir: `cargo bench` holds the lock of `target/` while the
/// bench runs, so building there would wait forever).
pub fn ltxfs_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("LTXFS_BIN") {
        let bin = PathBuf::from(bin);
        return if bin.exists() {
            Ok(bin)
        } else {
            Err(format!("LTXFS_BIN={} does not exist", bin.display()))
        };
    }
    let cargo = std::env::var("CARGO")
        .ok()
        .or_else(|| option_env!("CARGO").map(str::to_string))
        .unwrap_or_else(|| "cargo".to_string());
    let node_target = target_dir().join("e2e-node");
    eprintln!(
        "e2e: building ltxfs (release) into {} ...",
        node_target.display()
    );
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|root| root.join("Cargo.toml"))
        .ok_or("no workspace root")?;
    let status = Command::new(&cargo)
        .args(["build", "--release", "--quiet", "-p", "node", "--bin", "ltxfs"])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&node_target)
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build -p node failed: {status}"));
    }
    Ok(node_target.join("release").join("ltxfs"))
}

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

/// A fresh run directory under `target/e2e-runs/` (same disk as the workspace), removed on drop.
pub fn run_dir(tag: &str) -> Result<tempfile::TempDir> {
    let base = target_dir().join("e2e-runs");
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    tempfile::Builder::new()
        .prefix(&format!("{tag}-"))
        .tempdir_in(&base)
        .map_err(|e| format!("tempdir in {}: {e}", base.display()))
}

/// How one bench node is configured.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Node name (`lease.hostname` on the primary).
    pub name: String,
    /// Directory holding `mnt/`, `data/`, `ltxfs.yml` and `ltxfs.log`.
    pub root: PathBuf,
    pub http_port: u16,
    /// `None`: this node is the static primary. `Some(port)`: a replica of the primary there.
    pub primary_port: Option<u16>,
    pub compress: bool,
    /// `replication.members`: every node's name (the primary is `primary`).
    pub members: Vec<String>,
}

impl NodeSpec {
    /// A lone static primary named `primary` under `run_root/primary`, on a free port.
    pub fn lone_primary(run_root: &Path) -> Result<NodeSpec> {
        Ok(NodeSpec {
            name: "primary".into(),
            root: run_root.join("primary"),
            http_port: free_port()?,
            primary_port: None,
            compress: true,
            members: vec!["primary".into()],
        })
    }

    pub fn mount_dir(&self) -> PathBuf {
        self.root.join("mnt")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The YAML config (LiteFS keys that `node/src/config.rs` accepts).
    pub fn yaml(&self) -> String {
        let (candidate, primary_port) = match self.primary_port {
            None => (true, self.http_port),
            Some(port) => (false, port),
        };
        // A static primary is named by `lease.hostname`; a replica by `replication.node-id`.
        let node_id = if candidate {
            String::new()
        } else {
            format!("  node-id: {}\n", self.name)
        };
        format!(
            "fuse:\n  dir: {mnt}\ndata:\n  dir: {data}\n  compress: {compress}\n\
             http:\n  addr: 127.0.0.1:{port}\n\
             lease:\n  type: static\n  candidate: {candidate}\n  hostname: primary\n  \
             advertise-url: http://127.0.0.1:{primary_port}\n  reconnect-delay: 100ms\n\
             replication:\n{node_id}  members: [{members}]\n  cluster-id: bench\n\
             log:\n  format: text\n",
            mnt = self.mount_dir().display(),
            data = self.data_dir().display(),
            compress = self.compress,
            port = self.http_port,
            members = self.members.join(", "),
        )
    }
}

/// A running `ltxfs mount` process. Dropping it stops the process and removes the mount.
pub struct Node {
    pub spec: NodeSpec,
    child: Option<Child>,
    /// When `spawn` started the process.
    pub started: Instant,
    ready_rx: mpsc::Receiver<Instant>,
    /// When the "mounted at" line was read, once [`Node::wait_mounted`] saw it.
    pub mounted_at: Option<Instant>,
}

impl Node {
    /// Writes the config and starts `ltxfs mount --config`. Does not wait for the mount.
    pub fn spawn(bin: &Path, spec: NodeSpec) -> Result<Node> {
        std::fs::create_dir_all(&spec.root).map_err(|e| format!("{e}"))?;
        let config = spec.root.join("ltxfs.yml");
        std::fs::write(&config, spec.yaml()).map_err(|e| format!("{}: {e}", config.display()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(spec.root.join("ltxfs.log"))
            .map_err(|e| format!("log: {e}"))?;
        let started = Instant::now();
        let mut child = Command::new(bin)
            .args(["mount", "--config"])
            .arg(&config)
            .env("LTXFS_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("mounted at") {
                    let _ = ready_tx.send(Instant::now());
                }
            }
        });
        Ok(Node {
            spec,
            child: Some(child),
            started,
            ready_rx,
            mounted_at: None,
        })
    }

    /// Starts a node and waits for its "mounted at" line.
    pub fn start(bin: &Path, spec: NodeSpec) -> Result<Node> {
        let mut node = Node::spawn(bin, spec)?;
        node.wait_mounted(Duration::from_secs(120))?;
        Ok(node)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits for the "mounted at" line; fails with the log's tail if the process exits first.
    pub fn wait_mounted(&mut self, timeout: Duration) -> Result<()> {
        if self.mounted_at.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.ready_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(at) => {
                    self.mounted_at = Some(at);
                    return Ok(());
                }
                Err(mpsc::RecvTimeoutError::Timeout) | Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "ltxfs ({}) exited before mounting: {status}\n{}",
                        self.spec.name,
                        self.log_tail()
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "ltxfs ({}) not mounted after {timeout:?}\n{}",
                    self.spec.name,
                    self.log_tail()
                ));
            }
        }
    }

    /// The last lines of the node's stderr log.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.spec.root.join("ltxfs.log")) {
            let _ = file.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGKILL (a crash: no clean shutdown), then remove the dead mount.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        unmount(&self.spec.mount_dir());
    }

    /// SIGTERM, wait, SIGKILL if needed, then make sure nothing stays mounted.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut exited = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    exited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !exited {
                eprintln!("e2e: ltxfs ({}) ignored SIGTERM; killing it", self.spec.name);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        unmount(&self.spec.mount_dir());
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Is `dir` a FUSE mount point right now?
pub fn is_mounted(dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let want = dir.to_string_lossy();
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_src, target, fstype) = (fields.next(), fields.next(), fields.next());
        target == Some(want.as_ref()) && fstype.is_some_and(|t| t.starts_with("fuse"))
    })
}

/// `fusermount3 -u`, then `-u -z`, if `dir` is still mounted (or is a dead mount).
pub fn unmount(dir: &Path) {
    let dead = matches!(std::fs::metadata(dir), Err(e) if e.raw_os_error() == Some(libc_enotconn()));
    if !dead && !is_mounted(dir) {
        return;
    }
    for args in [&["-u"][..], &["-u", "-z"][..]] {
        let ok = Command::new("fusermount3")
            .args(args)
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
    }
    eprintln!("e2e: could not unmount {}", dir.display());
}

fn libc_enotconn() -> i32 {
    nix::errno::Errno::ENOTCONN as i32
}

/// Reads `<mnt>/<db>-pos` and returns its TXID (`None` if absent or unreadable).
pub fn read_pos_txid(mount: &Path, db: &str) -> Option<u64> {
    let text = std::fs::read_to_string(mount.join(format!("{db}-pos"))).ok()?;
    parse_pos_txid(&text)
}

/// `<txid 16 hex>/<checksum 16 hex>\n` → TXID.
pub fn parse_pos_txid(text: &str) -> Option<u64> {
    let (txid, rest) = text.trim_end().split_once('/')?;
    if txid.len() != 16 || rest.len() != 16 {
        return None;
    }
    u64::from_str_radix(txid, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pos_file_text_parses_to_its_txid() {
        assert_eq!(
            parse_pos_txid("00000000000000ff/8000000012345678\n"),
            Some(255)
        );
        assert_eq!(parse_pos_txid("ff/8000000012345678\n"), None);
        assert_eq!(parse_pos_txid(""), None);
    }

    #[test]
    fn replica_config_points_at_the_primary() {
        let spec = NodeSpec {
            name: "replica".into(),
            root: PathBuf::from("/r"),
            http_port: 2,
            primary_port: Some(1),
            compress: true,
            members: vec!["primary".into(), "replica".into()],
        };
        let yaml = spec.yaml();
        assert!(yaml.contains("node-id: replica"), "{yaml}");
        assert!(yaml.contains("members: [primary, replica]"), "{yaml}");
        assert!(yaml.contains("candidate: false"), "{yaml}");
        assert!(yaml.contains("advertise-url: http://127.0.0.1:1"), "{yaml}");
        assert!(yaml.contains("addr: 127.0.0.1:2"), "{yaml}");
        assert!(yaml.contains("dir: /r/mnt"), "{yaml}");
    }
}
