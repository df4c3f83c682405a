//! Failover harness: a real etcd, three `ltxfs mount` processes (n1, n2, n3) with their own
//! mounts and data dirs, each reaching etcd through its own userspace TCP proxy that a test can
//! cut (a partition between that node and etcd only: node ↔ node traffic is untouched).
//!
//! Checks shared by the failover tests read the nodes' own event logs
//! (`<data>/events.ndjson`, written by the runtime): every accepted local commit with its lease
//! epoch, the wall time the core accepted it and the wall time of its lease deadline; every
//! apply with the sender and the highest epoch the replica knew.
//!
//! NEEDS FUSE (`/dev/fuse`, fusermount3), the sqlite3 CLI and etcd (apt-get install
//! etcd-server): fails, never skips, without them. Waits poll with generous deadlines.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::cluster_support::*;
use crate::support::etcd::Etcd;

pub const DB: &str = "app.db";
pub const NAMES: [&str; 3] = ["n1", "n2", "n3"];

/// A TCP proxy to `upstream` that can be cut (every connection closed, new ones refused at
/// once) and restored.
pub struct Proxy {
    pub url: String,
    cut: watch::Sender<bool>,
}

impl Proxy {
    pub fn start(rt: &tokio::runtime::Runtime, upstream: String) -> Proxy {
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (cut, cut_rx) = watch::channel(false);
        rt.spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if *cut_rx.borrow() {
                    drop(inbound); // partitioned: the connection dies at once
                    continue;
                }
                let upstream = upstream.clone();
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream.trim_start_matches("http://")).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Proxy { url, cut }
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

pub struct Options {
    pub ttl_s: u64,
    /// `replication.sync` (replica acks per commit).
    pub sync: u32,
    /// `replication.heartbeat-interval` in ms (the etcd watch polls at a quarter of it).
    pub heartbeat_ms: u64,
    /// Start every node with `LTXFS_FAILPOINT_DIR=<node root>/failpoints` (see `fs.rs`).
    pub failpoints: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { ttl_s: 2, sync: 0, heartbeat_ms: 200, failpoints: false }
    }
}

pub struct FailoverCluster {
    pub nodes: Vec<ProcNode>,
    pub proxies: Vec<Proxy>,
    pub etcd: Etcd,
    pub rt: Arc<tokio::runtime::Runtime>,
    pub dir: tempfile::TempDir,
}

fn config(name: &str, etcd_url: &str, o: &Options) -> String {
    format!(
        "fuse:\n  dir: $MNT\ndata:\n  dir: $DATA\nhttp:\n  addr: 127.0.0.1:$PORT\n\
         lease:\n  type: etcd\n  candidate: true\n  hostname: {name}\n  advertise-url: http://127.0.0.1:$PORT\n  ttl: {ttl}s\n  reconnect-delay: 100ms\n\
         \x20 etcd:\n    endpoints: ['{etcd_url}']\n    key: ltxfs/failover/primary\n\
         replication:\n  members: [n1, n2, n3]\n  cluster-size: 3\n  sync: {sync}\n  cluster-id: failover-test\n  heartbeat-interval: {heartbeat}ms\n",
        ttl = o.ttl_s,
        sync = o.sync,
        heartbeat = o.heartbeat_ms,
    )
}

impl FailoverCluster {
    /// Starts etcd and three nodes; waits until one is a writable primary and the other two
    /// follow it.
    pub fn start(o: Options) -> FailoverCluster {
        require_tools();
        let rt = Arc::new(tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap());
        let etcd = rt.block_on(Etcd::start());
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        let mut proxies = Vec::new();
        for name in NAMES {
            let proxy = Proxy::start(&rt, etcd.url.clone());
            let mut node = ProcNode::with_config(dir.path(), name, free_port(), &config(name, &proxy.url, &o));
            if o.failpoints {
                let fp = node.root.join("failpoints");
                std::fs::create_dir_all(&fp).unwrap();
                node.env.push(("LTXFS_FAILPOINT_DIR".into(), fp.to_str().unwrap().into()));
            }
            nodes.push(node);
            proxies.push(proxy);
        }
        let mut c = FailoverCluster { nodes, proxies, etcd, rt, dir };
        for n in &mut c.nodes {
            n.start();
        }
        let p = c.wait_primary(None);
        c.wait_followers(p);
        c
    }

    /// Waits until some node other than `not` is a writable primary; returns its index.
    pub fn wait_primary(&self, not: Option<usize>) -> usize {
        let mut found = 0;
        wait_until("a writable primary", || {
            for (i, n) in self.nodes.iter().enumerate() {
                if Some(i) != not && n.is_running() && info(n).is_some_and(|v| v["role"] == "primary" && v["writable"] == true) {
                    found = i;
                    return true;
                }
            }
            false
        });
        found
    }

    /// Waits until every running node other than `p` is connected to `p`.
    pub fn wait_followers(&self, p: usize) {
        let host = NAMES[p];
        for (i, n) in self.nodes.iter().enumerate() {
            if i != p && n.is_running() {
                wait_until(&format!("{} follows {host}", n.name), || {
                    info(n).is_some_and(|v| v["connectedToPrimary"] == true && v["primary"]["hostname"] == host)
                });
            }
        }
    }

    /// Waits until every running node shows the `-pos` of `db` that node `p` shows.
    pub fn wait_converged(&self, p: usize) -> String {
        let want = self.nodes[p].pos(DB).expect("primary has the database");
        for n in &self.nodes {
            if n.is_running() {
                wait_until(&format!("{} at {want}", n.name), || n.pos(DB).as_deref() == Some(want.as_str()));
            }
        }
        want
    }

    /// Every running node: `PRAGMA integrity_check` is ok and `SELECT v FROM t` has the same rows.
    pub fn check_replicas_equal(&self) -> BTreeSet<i64> {
        let mut all: Option<BTreeSet<i64>> = None;
        for n in self.nodes.iter().filter(|n| n.is_running()) {
            assert_eq!(sqlite3_ok(&n.db(DB), "PRAGMA integrity_check;"), "ok\n", "{}", n.name);
            let rows = rows(n);
            if let Some(a) = &all {
                assert_eq!(a, &rows, "{} has other rows", n.name);
            }
            all = Some(rows);
        }
        all.unwrap_or_default()
    }

    /// Reads every node's event log.
    pub fn logs(&self) -> Vec<Vec<Value>> {
        self.nodes.iter().map(|n| event_log(&n.data)).collect()
    }

    /// At most one node accepted writes at any moment: ordered by acceptance time, the epochs of
    /// all local commits never decrease, each epoch belongs to one node, every commit was accepted
    /// before the deadline of the lease it was written under, and a new epoch's first commit
    /// comes after the previous writer's deadline or its logged step-down, whichever came first.
    pub fn check_single_writer(&self) {
        // (accepted, epoch, node index, deadline)
        let logs = self.logs();
        let mut commits: Vec<(i64, u64, usize, i64)> = Vec::new();
        for (i, log) in logs.iter().enumerate() {
            for e in log.iter().filter(|e| e["type"] == "commit") {
                let at = e["acceptedWallMs"].as_i64().expect("acceptedWallMs");
                let deadline = e["deadlineWallMs"].as_i64().expect("a dynamic lease has a deadline");
                assert!(at < deadline, "{}: commit accepted at {at} after its lease deadline {deadline}: {e}", NAMES[i]);
                commits.push((at, e["epoch"].as_u64().unwrap(), i, deadline));
            }
        }
        assert!(!commits.is_empty(), "no commit logged");
        commits.sort();
        let mut owner: BTreeMap<u64, usize> = BTreeMap::new();
        for (_, epoch, node, _) in &commits {
            let o = owner.entry(*epoch).or_insert(*node);
            assert_eq!(*o, *node, "epoch {epoch} used by two nodes");
        }
        for w in commits.windows(2) {
            let (prev, next) = (w[0], w[1]);
            assert!(prev.1 <= next.1, "epoch went back: {prev:?} then {next:?}");
            if prev.1 == next.1 {
                continue;
            }
            // When did the previous writer stop? Its deadline, or the first role record after
            // its last commit that is not "primary at that epoch".
            let stepped_down = logs[prev.2]
                .iter()
                .filter(|e| e["type"] == "role" && e["wallMs"].as_i64().unwrap() >= prev.0)
                .find(|e| !(e["role"] == "primary" && e["epoch"].as_u64() == Some(prev.1)))
                .and_then(|e| e["wallMs"].as_i64())
                .unwrap_or(i64::MAX);
            let end = prev.3.min(stepped_down);
            assert!(end <= next.0, "{} (epoch {}) could still write until {end} when {} accepted a commit at {} (epoch {})",
                NAMES[prev.2], prev.1, NAMES[next.2], next.0, next.1);
        }
    }

    /// Sends node `to` one frame as if from node `from` at `epoch` (what a deposed primary's
    /// delayed frame looks like); returns the HTTP status of the stream request.
    pub fn send_frame_as(&self, from: usize, to: usize, msg: ltxfs_core::msg::Message) -> u16 {
        let from_id = node::runtime::node_id_from_name(NAMES[from]).to_string();
        let url = format!("{}/stream", self.nodes[to].url);
        let body = node::http::frame::encode(&msg);
        self.block_on(async move {
            let resp = reqwest::Client::new()
                .post(url)
                .header("ltxfs-node-id", from_id)
                .body(body.to_vec())
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .expect("POST /stream");
            resp.status().as_u16()
        })
    }

    /// Runs `ltxfs promote --url <node r>` and asserts it succeeded (the CLI returns once the
    /// handoff was requested, not when it completed).
    pub fn promote(&self, r: usize) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ltxfs"))
            .args(["promote", "--url", &self.nodes[r].url])
            .output()
            .expect("run ltxfs promote");
        assert!(out.status.success(), "ltxfs promote failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Waits until node `r` is a writable primary.
    pub fn wait_writable(&self, r: usize) {
        wait_until("the promoted replica is a writable primary", || {
            info(&self.nodes[r]).is_some_and(|v| v["role"] == "primary" && v["writable"] == true)
        });
    }

    /// The lease epoch of node `i` (from /info).
    pub fn epoch(&self, i: usize) -> u64 {
        self.nodes[i].info()["epoch"].as_u64().unwrap()
    }

    /// Every node's process log (for failure messages).
    pub fn dump_logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let events = std::fs::read_to_string(n.data.join("events.ndjson")).unwrap_or_default();
                format!("===== {} =====\n{}\n--- events ---\n{events}", n.name, n.log())
            })
            .collect()
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

impl Drop for FailoverCluster {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("LTXFS_TEST_LOGS").is_some() {
            eprintln!("{}", self.dump_logs());
        }
    }
}

/// `/info` or `None` while the node does not answer.
pub fn info(n: &ProcNode) -> Option<Value> {
    let url = format!("{}/info", n.url);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let r = reqwest::Client::new().get(url).timeout(Duration::from_secs(2)).send().await.ok()?;
        r.json().await.ok()
    })
}

pub fn rows(n: &ProcNode) -> BTreeSet<i64> {
    sqlite3_ok(&n.db(DB), "SELECT v FROM t;").lines().map(|l| l.trim().parse().expect("integer row")).collect()
}

pub fn event_log(data: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(data.join("events.ndjson")).unwrap_or_default();
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("event log line is JSON")).collect()
}

/// Inserts `v` on node `n` with the sqlite3 CLI; true iff SQLite reported success (the commit
/// was acknowledged).
pub fn insert(n: &ProcNode, v: i64) -> bool {
    sqlite3(&n.db(DB), &format!("INSERT INTO t VALUES ({v});")).0
}

/// One insert attempt by a [`Writer`]: the row value, whether SQLite committed it, its stderr.
pub type Attempt = (i64, bool, String);

/// A thread that keeps inserting rows 1000, 1001, … into `t` through the `sqlite3` CLI, one
/// statement every 20 ms (pacing, not synchronisation), recording every attempt, until stopped.
/// The failover tests use it to see exactly which writes a deposed primary still accepted.
pub struct Writer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    attempts: Arc<std::sync::Mutex<Vec<Attempt>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(db: std::path::PathBuf) -> Writer {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let attempts: Arc<std::sync::Mutex<Vec<Attempt>>> = Arc::default();
        let thread = {
            let (stop, attempts) = (stop.clone(), attempts.clone());
            std::thread::spawn(move || {
                for v in 1000.. {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let (ok, _, err) = sqlite3(&db, &format!("INSERT INTO t VALUES ({v});"));
                    attempts.lock().unwrap().push((v, ok, err));
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Writer { stop, attempts, thread: Some(thread) }
    }

    /// The attempts so far.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().clone()
    }

    /// Stops the thread and returns every attempt it made.
    pub fn stop(mut self) -> Vec<Attempt> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.attempts()
    }
}
