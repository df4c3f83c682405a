//! Multi-process harness: real `ltxfs mount` processes (one primary, replicas), each with its own
//! mount, data dir and HTTP port chosen free at run time on 127.0.0.1, driven by real SQLite
//! (rusqlite and the `sqlite3` CLI) through their mounts.
//!
//! These tests NEED FUSE (`/dev/fuse`, `fusermount3` from the fuse3 package) and the `sqlite3`
//! CLI; they fail loudly when those are missing. Every wait polls state (files, /info) until a
//! generous deadline; nothing sleeps a fixed time and then asserts.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest any wait may take before the test fails.
pub const WAIT_MAX: Duration = Duration::from_secs(60);
pub const MEMBERS: [&str; 3] = ["primary", "replica1", "replica2"];

pub fn require_tools() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "CLUSTER TESTS NEED /dev/fuse (load the fuse module / run the container with --device /dev/fuse)"
    );
    for tool in ["fusermount3", "sqlite3"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
        assert!(found, "CLUSTER TESTS NEED `{tool}` on PATH (apt-get install fuse3 sqlite3)");
    }
}

// Also loaded by `support` in test binaries that use both harnesses.
#[allow(clippy::duplicate_mod)]
#[path = "../support/ports.rs"]
mod ports;
pub use ports::free_port;

/// Polls `cond` every 20 ms until it holds; panics with `what` after [`WAIT_MAX`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `ltxfs mount` process.
pub struct ProcNode {
    pub name: String,
    pub root: PathBuf,
    pub mnt: PathBuf,
    pub data: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    pub url: String,
    /// Extra environment for the process (e.g. `LTXFS_FAILPOINT_DIR`).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

/// What a node's configuration says.
#[derive(Clone)]
pub struct NodeConf {
    pub name: String,
    pub primary_port: u16,
    pub port: u16,
    pub cluster_id: String,
}

impl ProcNode {
    pub fn new(base: &Path, conf: &NodeConf) -> ProcNode {
        let root = base.join(&conf.name);
        std::fs::create_dir_all(&root).unwrap();
        let node = ProcNode {
            name: conf.name.clone(),
            mnt: root.join("mnt"),
            data: root.join("data"),
            config: root.join("ltxfs.yml"),
            root,
            port: conf.port,
            url: format!("http://127.0.0.1:{}", conf.port),
            env: Vec::new(),
            child: None,
        };
        let primary = conf.name == "primary";
        let node_id = if primary { String::new() } else { format!("  node-id: {}\n", conf.name) };
        let text = format!(
            "fuse:\n  dir: {mnt}\ndata:\n  dir: {data}\n  compress: true\nhttp:\n  addr: 127.0.0.1:{port}\n\
             lease:\n  type: static\n  candidate: {primary}\n  hostname: primary\n  advertise-url: http://127.0.0.1:{pport}\n  reconnect-delay: 100ms\n\
             replication:\n{node_id}  members: [{members}]\n  cluster-id: {cluster}\n  heartbeat-interval: 200ms\n",
            mnt = node.mnt.display(),
            data = node.data.display(),
            port = conf.port,
            pport = conf.primary_port,
            members = MEMBERS.join(", "),
            cluster = conf.cluster_id,
        );
        std::fs::write(&node.config, text).unwrap();
        node
    }

    /// A node with a configuration of the caller's (`$MNT`, `$DATA`, `$PORT` are filled in).
    pub fn with_config(base: &Path, name: &str, port: u16, template: &str) -> ProcNode {
        let root = base.join(name);
        std::fs::create_dir_all(&root).unwrap();
        let node = ProcNode {
            name: name.to_string(),
            mnt: root.join("mnt"),
            data: root.join("data"),
            config: root.join("ltxfs.yml"),
            root,
            port,
            url: format!("http://127.0.0.1:{port}"),
            env: Vec::new(),
            child: None,
        };
        let text = template
            .replace("$MNT", node.mnt.to_str().unwrap())
            .replace("$DATA", node.data.to_str().unwrap())
            .replace("$PORT", &port.to_string());
        std::fs::write(&node.config, text).unwrap();
        node
    }

    /// Starts the process and waits for its "mounted" line.
    pub fn start(&mut self) {
        require_tools();
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.root.join("ltxfs.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ltxfs"))
            .arg("mount")
            .arg("--config")
            .arg(&self.config)
            .env("LTXFS_LOG", std::env::var("LTXFS_TEST_LOG_LEVEL").unwrap_or_else(|_| "info,ltxfs=debug".into()))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn ltxfs");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.next().and_then(|l| l.ok()).unwrap_or_default();
        if !ready.contains("node mounted at") {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} did not mount (first line {ready:?}); log:\n{}", self.name, self.log());
        }
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id (for SIGSTOP / SIGCONT).
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("ltxfs.log")).unwrap_or_default()
    }

    /// SIGTERM and wait: a clean shutdown (unmount, release).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let status = child.wait().unwrap();
            assert!(status.success(), "{} exited with {status}; log:\n{}", self.name, self.log());
        }
    }

    /// SIGKILL: a crash. The dead mount is detached so the next start can mount again.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            let _ = child.wait();
        }
        let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.mnt).stderr(Stdio::null()).status();
    }

    pub fn db(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    pub fn pos(&self, db: &str) -> Option<String> {
        std::fs::read_to_string(self.db(&format!("{db}-pos"))).ok()
    }

    pub fn info(&self) -> serde_json::Value {
        serde_json::from_str(&http_get(&format!("{}/info", self.url))).expect("/info is JSON")
    }

    /// One unlabelled sample from `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let text = http_get(&format!("{}/metrics", self.url));
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).map(|v| v.trim().parse::<f64>().expect("number")))
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }
}

impl Drop for ProcNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
        let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.mnt).stderr(Stdio::null()).status();
    }
}

pub fn http_get(url: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async { reqwest::get(url).await.expect("GET").text().await.expect("body") })
}

/// A primary and two replicas on free ports, in one temp dir (not started).
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<ProcNode>,
}

impl Cluster {
    pub fn new() -> Cluster {
        Self::with_cluster_ids(["test", "test", "test"])
    }

    pub fn with_cluster_ids(ids: [&str; 3]) -> Cluster {
        require_tools();
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes = MEMBERS
            .iter()
            .zip(ports.iter())
            .zip(ids)
            .map(|((name, port), cluster)| {
                ProcNode::new(dir.path(), &NodeConf { name: name.to_string(), primary_port: ports[0], port: *port, cluster_id: cluster.into() })
            })
            .collect();
        Cluster { dir, nodes }
    }

    /// Starts every node and waits until both replicas are connected to the primary.
    pub fn start_all(&mut self) {
        for n in &mut self.nodes {
            n.start();
        }
        for r in &self.nodes[1..] {
            wait_until(&format!("{} connected to the primary", r.name), || r.info()["connectedToPrimary"] == serde_json::Value::Bool(true));
        }
    }

    pub fn primary(&self) -> &ProcNode {
        &self.nodes[0]
    }

    /// Waits until every running replica shows the primary's `-pos` of `db`.
    pub fn wait_converged(&self, db: &str) -> String {
        let want = self.primary().pos(db).expect("primary has the database");
        for r in &self.nodes[1..] {
            wait_until(&format!("{} at {db} {want}", r.name), || r.pos(db).as_deref() == Some(want.as_str()));
        }
        want
    }
}

/// Runs the `sqlite3` CLI; returns (success, stdout, stderr).
pub fn sqlite3(db: &Path, sql: &str) -> (bool, String, String) {
    let out = Command::new("sqlite3").arg("-cmd").arg(".timeout 10000").arg(db).arg(sql).output().expect("run sqlite3");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `sqlite3` that must succeed.
pub fn sqlite3_ok(db: &Path, sql: &str) -> String {
    let (ok, out, err) = sqlite3(db, sql);
    assert!(ok, "sqlite3 {} {sql:?} failed: {err}", db.display());
    out
}
