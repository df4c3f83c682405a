//! Test harness: in-process ltxfs nodes (real runtime, real HTTP on loopback, real data dirs)
//! and a SQLite "application" whose committed pages are fed to a primary the way the FUSE layer
//! will feed them.
#![allow(dead_code)]

pub mod etcd;
pub mod ports;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ltxfs_core::ids::{ClusterId, DbName, NodeId};
use ltxfs_core::node::{Config as CoreConfig, LeaseMode};
use node::lease::static_lease::StaticLease;
use node::lease::{LeaseBackend, LeaseHolder};
use node::runtime::{self, CommitOutcome, NoHook, RuntimeConfig, RuntimeHandle, Status};

/// Longest any wait in these tests may take before the test fails.
pub const WAIT_MAX: Duration = Duration::from_secs(30);

pub struct TestNode {
    pub id: NodeId,
    pub handle: RuntimeHandle,
    pub url: String,
    pub data_dir: PathBuf,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// What a test node is configured with.
#[derive(Clone)]
pub struct NodeSpec {
    pub id: NodeId,
    pub cluster: ClusterId,
    pub members: BTreeSet<NodeId>,
    pub data_dir: PathBuf,
    pub auth_token: Option<String>,
}

impl NodeSpec {
    pub fn core_config(&self, lease: LeaseMode) -> CoreConfig {
        let peers = self.members.iter().copied().filter(|m| *m != self.id).collect();
        let mut c = CoreConfig::new(self.cluster, peers, lease);
        c.heartbeat_interval = Duration::from_millis(200);
        c
    }
}

pub async fn bind() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    (listener, url)
}

impl TestNode {
    /// Starts a node with a static lease: `primary` is the permanent primary at `primary_url`.
    pub async fn start_static(spec: &NodeSpec, primary: NodeId, primary_url: Option<&str>) -> TestNode {
        let (listener, url) = bind().await;
        let primary_url = primary_url.map_or(url.clone(), str::to_string);
        let lease = StaticLease::new(LeaseHolder { node_id: primary, hostname: format!("node-{}", primary.0), advertise_url: primary_url });
        Self::start_with(spec, LeaseMode::Static { primary }, Arc::new(lease), listener, url).await
    }

    pub async fn start_with<L: LeaseBackend>(spec: &NodeSpec, lease_mode: LeaseMode, lease: Arc<L>, listener: tokio::net::TcpListener, url: String) -> TestNode {
        let config = RuntimeConfig {
            node_id: spec.id,
            hostname: format!("node-{}", spec.id.0),
            advertise_url: url.clone(),
            data_dir: spec.data_dir.clone(),
            core: spec.core_config(lease_mode),
            auth_token: spec.auth_token.clone(),
            reconnect_delay: Duration::from_millis(50),
        };
        let handle = runtime::start(config, lease, Arc::new(NoHook)).expect("runtime starts");
        let server = tokio::spawn(node::http::serve(listener, handle.clone()));
        TestNode { id: spec.id, handle, url, data_dir: spec.data_dir.clone(), server }
    }

    /// Clean stop: the runtime releases everything and the HTTP server ends.
    pub async fn stop(self) {
        self.handle.shutdown().await;
        let _ = tokio::time::timeout(WAIT_MAX, self.server).await.expect("server stops after the runtime");
    }

    pub fn status(&self) -> Status {
        self.handle.status()
    }

    pub fn database_path(&self, db: &str) -> PathBuf {
        self.data_dir.join("dbs").join(db).join("database")
    }

    /// Waits until `cond` holds on this node's status (re-checked on every event).
    pub async fn wait_until(&self, what: &str, cond: impl Fn(&Status) -> bool) {
        let mut rx = self.handle.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            if cond(&self.status()) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out waiting for {what}; status: {:?}", self.status());
            }
            // Events wake us; the short tick only re-reads the status the event loop refreshed.
            let _ = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await;
        }
    }

    /// Waits until this node's position of `db` equals `txid`.
    pub async fn wait_txid(&self, db: &str, txid: u64) {
        self.wait_until(&format!("{db} at txid {txid} on {}", self.url), |s| s.positions.get(db).is_some_and(|p| p.txid == txid)).await;
    }

    pub async fn metric(&self, name: &str) -> f64 {
        metric(&self.url, name).await
    }
}

/// Reads one unlabelled sample from `/metrics`.
pub async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics")).await.expect("GET /metrics").text().await.expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.trim().parse::<f64>().expect("number")))
        .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
}

/// A SQLite application: transactions run on a scratch file in DELETE journal mode; after each,
/// the changed pages are written into the primary's database file and committed through the
/// runtime — what the FUSE layer does for a real application.
pub struct App {
    scratch: PathBuf,
    conn: rusqlite::Connection,
    image: Vec<u8>,
    pub db: String,
}

impl App {
    pub fn new(dir: &Path, db: &str) -> App {
        let scratch = dir.join(format!("{db}.scratch"));
        let conn = rusqlite::Connection::open(&scratch).expect("open scratch");
        conn.pragma_update(None, "journal_mode", "DELETE").expect("journal mode");
        conn.pragma_update(None, "page_size", 4096).expect("page size");
        App { scratch, conn, image: Vec::new(), db: db.to_string() }
    }

    /// Runs `sql` as one transaction and commits its pages on `primary`.
    pub async fn exec(&mut self, primary: &TestNode, sql: &str) -> CommitOutcome {
        self.conn.execute_batch(&format!("BEGIN; {sql}; COMMIT;")).expect("sql");
        let image = std::fs::read(&self.scratch).expect("read scratch");
        let page_size = u32::from(u16::from_be_bytes([image[16], image[17]]));
        let ps = page_size as usize;
        let pages: Vec<(u32, Vec<u8>)> = image
            .chunks(ps)
            .enumerate()
            .filter(|(i, page)| self.image.get(i * ps..(i + 1) * ps) != Some(*page))
            .map(|(i, page)| ((i + 1) as u32, page.to_vec()))
            .collect();
        let commit = (image.len() / ps) as u32;
        write_pages(&primary.database_path(&self.db), page_size, commit, &pages);
        let db = DbName::new(self.db.clone()).expect("db name");
        let outcome = primary.handle.commit(db, page_size, commit, pages).await.expect("runtime takes the commit");
        self.image = image;
        outcome
    }

    pub fn image(&self) -> &[u8] {
        &self.image
    }
}

/// What SQLite does through the mount before the commit is detected.
pub fn write_pages(path: &Path, page_size: u32, commit: u32, pages: &[(u32, Vec<u8>)]) {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).expect("open database");
    for (pgno, data) in pages {
        f.write_all_at(data, u64::from(pgno - 1) * u64::from(page_size)).expect("write page");
    }
    f.set_len(u64::from(commit) * u64::from(page_size)).expect("truncate");
}

/// Rows of `table` in a database file, read with SQLite itself.
pub fn count_rows(path: &Path, table: &str) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open replica database");
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).expect("count")
}

pub fn integrity_ok(path: &Path) -> bool {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open database");
    conn.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)).expect("integrity_check") == "ok"
}

pub fn members(n: u64) -> BTreeSet<NodeId> {
    (1..=n).map(NodeId).collect()
}
