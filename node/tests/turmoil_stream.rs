//! The node's real HTTP server (`node::http::serve_with`) and `/stream` client
//! (`node::http::client`) over turmoil's simulated network: each node is a turmoil host running
//! a real node runtime on a real data directory (static lease: `n1` is the primary, `n2` and `n3`
//! replicate), only the byte transport is simulated. The test client commits transactions on the
//! primary through `RuntimeHandle::commit`, as the FUSE layer does, and turmoil partitions links
//! and crashes or restarts hosts. Every test ends with all positions, checksums and database files
//! equal. Time is turmoil's (tokio's paused clock): heartbeats, HTTP/2 PINGs and reconnect backoff
//! all run on it; disk I/O runs on each host's blocking pool. A test may give the primary a long
//! heartbeat (so its PINGs take long to notice a dead connection) and bound a catch-up in
//! simulated time well below that.

mod support;

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ltxfs_core::ids::{ClusterId, DbName, NodeId};
use ltxfs_core::ltx::checksum::db_checksum;
use ltxfs_core::node::{Config as CoreConfig, LeaseMode};
use node::http::transport::Dialer;
use node::lease::static_lease::StaticLease;
use node::lease::LeaseHolder;
use node::runtime::{self, CommitOutcome, DbStatus, NoHook, RuntimeConfig, RuntimeHandle, Status};
use support::{count_rows, integrity_ok, write_pages};

const PORT: u16 = 20202;
const DB: &str = "app.db";
const TOKEN: &str = "sim-token";
const NODES: [&str; 3] = ["n1", "n2", "n3"];
const PRIMARY: &str = "n1";
/// Longest a wait may take, in simulated time.
const WAIT_MAX: Duration = Duration::from_secs(60);
/// Heartbeat interval of every node unless a test says otherwise (HTTP/2 PINGs after 1 s of
/// silence, dead 1 s later: see `transport::keepalive`).
const HEARTBEAT: Duration = Duration::from_millis(200);
/// A primary that rarely sends on an idle stream: heartbeats every 10 s, HTTP/2 PINGs after
/// 50 s of silence, dead 50 s later. A connection that died silently stays registered on it for
/// that long unless something else ends it.
const QUIET_HEARTBEAT: Duration = Duration::from_secs(10);
/// How long (simulated) a replica that reconnected may take to reach the primary's position:
/// a few reconnect backoffs and round trips, far below the quiet primary's PING timeout.
const RECONNECT_CATCH_UP_MAX: Duration = Duration::from_secs(5);

fn node_id(name: &str) -> NodeId {
    let i = NODES.iter().position(|n| *n == name).expect("known node");
    NodeId(i as u64 + 1)
}

/// turmoil's listener as the server's listener (accept errors are retried, as axum's are).
struct SimListener(turmoil::net::TcpListener);

impl axum::serve::Listener for SimListener {
    type Io = turmoil::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// turmoil's TCP as the `/stream` client's transport (host names resolve through turmoil).
#[derive(Clone, Copy)]
struct SimDialer;

impl Dialer for SimDialer {
    type Io = turmoil::net::TcpStream;

    async fn dial(&self, authority: &str) -> std::io::Result<turmoil::net::TcpStream> {
        turmoil::net::TcpStream::connect(authority).await
    }
}

/// What the hosts share with the test client: each node's current runtime handle (replaced on
/// restart) and its status right after it started from its data directory.
#[derive(Clone, Default)]
struct Nodes {
    handles: Arc<Mutex<BTreeMap<&'static str, RuntimeHandle>>>,
    started: Arc<Mutex<BTreeMap<&'static str, Vec<Status>>>>,
}

impl Nodes {
    fn handle(&self, name: &str) -> Option<RuntimeHandle> {
        self.handles.lock().unwrap().get(name).cloned()
    }
    fn starts(&self, name: &str) -> Vec<Status> {
        self.started.lock().unwrap().get(name).cloned().unwrap_or_default()
    }
}

/// Host crashes and restarts the test client asks the simulation loop for.
#[derive(Clone, Default)]
struct Faults(Arc<Mutex<VecDeque<Fault>>>);

enum Fault {
    Crash(&'static str),
    Bounce(&'static str),
}

impl Faults {
    /// Queues `fault` and returns once the simulation loop carried it out.
    async fn apply(&self, fault: Fault) {
        self.0.lock().unwrap().push_back(fault);
        wait_for("the simulation to apply a fault", || self.0.lock().unwrap().is_empty()).await;
    }
}

/// Each node's heartbeat interval (which also sets its HTTP/2 PING timing).
type Heartbeats = fn(&str) -> Duration;

fn runtime_config(dir: &Path, name: &'static str, heartbeats: Heartbeats) -> RuntimeConfig {
    let id = node_id(name);
    let peers = NODES.iter().map(|n| node_id(n)).filter(|p| *p != id).collect();
    let mut core = CoreConfig::new(ClusterId(0x7u64 << 40 | 0x51), peers, LeaseMode::Static { primary: node_id(PRIMARY) });
    core.heartbeat_interval = heartbeats(name);
    RuntimeConfig {
        node_id: id,
        hostname: name.to_string(),
        advertise_url: format!("http://{name}:{PORT}"),
        data_dir: dir.join(name),
        core,
        auth_token: Some(TOKEN.to_string()),
        reconnect_delay: Duration::from_millis(50),
    }
}

/// Registers `name` as a turmoil host whose software is a node: runtime + HTTP server + stream
/// client, on `dir/<name>`. A bounce runs it again on the same directory.
fn add_node(sim: &mut turmoil::Sim<'_>, dir: &Path, name: &'static str, nodes: &Nodes, heartbeats: Heartbeats) {
    let (dir, nodes) = (dir.to_path_buf(), nodes.clone());
    sim.host(name, move || {
        let (dir, nodes) = (dir.clone(), nodes.clone());
        async move {
            let listener = SimListener(turmoil::net::TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT)).await?);
            let primary = LeaseHolder { node_id: node_id(PRIMARY), hostname: PRIMARY.into(), advertise_url: format!("http://{PRIMARY}:{PORT}") };
            let handle = runtime::start(runtime_config(&dir, name, heartbeats), Arc::new(StaticLease::new(primary)), Arc::new(NoHook))?;
            nodes.started.lock().unwrap().entry(name).or_default().push(handle.status());
            nodes.handles.lock().unwrap().insert(name, handle.clone());
            node::http::serve_with(listener, SimDialer, handle).await?;
            Ok(())
        }
    });
}

/// Builds the simulation, runs `test` as its client and applies the faults it asks for.
fn simulate<F, Fut>(seed: u64, test: F)
where
    F: FnOnce(Nodes, Faults, PathBuf) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    simulate_with(seed, |_| HEARTBEAT, test);
}

/// [`simulate`] with each node's heartbeat interval from `heartbeats`.
fn simulate_with<F, Fut>(seed: u64, heartbeats: Heartbeats, test: F)
where
    F: FnOnce(Nodes, Faults, PathBuf) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    let mut sim = turmoil::Builder::new().simulation_duration(Duration::from_secs(900)).rng_seed(seed).build();
    let (nodes, faults) = (Nodes::default(), Faults::default());
    for name in NODES {
        add_node(&mut sim, dir.path(), name, &nodes, heartbeats);
    }
    let client = test(nodes.clone(), faults.clone(), dir.path().to_path_buf());
    sim.client("test", async move {
        client.await;
        Ok(())
    });
    loop {
        let finished = sim.step().expect("simulation step");
        while let Some(fault) = faults.0.lock().unwrap().pop_front() {
            match fault {
                Fault::Crash(host) => sim.crash(host),
                Fault::Bounce(host) => sim.bounce(host),
            }
        }
        if finished {
            break;
        }
    }
}

/// Re-checks `cond` every 10 ms of simulated time until it holds (fails after [`WAIT_MAX`]).
async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out (simulated time) waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `name` is at `txid` and asserts it took at most `bound` of simulated time.
async fn wait_txid_within(nodes: &Nodes, name: &str, txid: u64, bound: Duration) {
    let start = tokio::time::Instant::now();
    let deadline = start + bound;
    while position(nodes, name).is_none_or(|p| p.txid != txid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} not at txid {txid} within {bound:?} (simulated); at {:?}, connected to the primary: {:?}",
            position(nodes, name).map(|p| p.txid),
            nodes.handle(name).map(|h| h.status().connected_to_primary),
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn position(nodes: &Nodes, name: &str) -> Option<DbStatus> {
    nodes.handle(name).and_then(|h| h.status().positions.get(DB).copied())
}

async fn wait_txid(nodes: &Nodes, name: &str, txid: u64) {
    wait_for(&format!("{name} at txid {txid}"), || position(nodes, name).is_some_and(|p| p.txid == txid)).await;
}

/// A SQLite application on the primary (as in `support::App`, against a handle that changes
/// when the primary restarts): each transaction runs on a scratch file, its changed pages are
/// written into the primary's database file and committed through the runtime.
struct Writer {
    scratch: PathBuf,
    conn: rusqlite::Connection,
    image: Vec<u8>,
    database: PathBuf,
}

impl Writer {
    fn new(dir: &Path) -> Writer {
        let scratch = dir.join("scratch.db");
        let conn = rusqlite::Connection::open(&scratch).unwrap();
        conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
        conn.pragma_update(None, "page_size", 4096).unwrap();
        Writer { scratch, conn, image: Vec::new(), database: dir.join(PRIMARY).join("dbs").join(DB).join("database") }
    }

    async fn exec(&mut self, primary: &RuntimeHandle, sql: &str) -> CommitOutcome {
        self.conn.execute_batch(&format!("BEGIN; {sql}; COMMIT;")).unwrap();
        let image = std::fs::read(&self.scratch).unwrap();
        let pages: Vec<(u32, Vec<u8>)> = image
            .chunks(4096)
            .enumerate()
            .filter(|(i, page)| self.image.get(i * 4096..(i + 1) * 4096) != Some(*page))
            .map(|(i, page)| ((i + 1) as u32, page.to_vec()))
            .collect();
        let commit = (image.len() / 4096) as u32;
        write_pages(&self.database, 4096, commit, &pages);
        let outcome = primary.commit(DbName::new(DB).unwrap(), 4096, commit, pages).await.expect("runtime takes the commit");
        self.image = image;
        outcome
    }

    /// Commits `n` inserts on the primary's current runtime; each must be `Committed`.
    async fn insert(&mut self, nodes: &Nodes, n: usize, tag: &str) {
        let primary = nodes.handle(PRIMARY).expect("primary running");
        for i in 0..n {
            let outcome = self.exec(&primary, &format!("INSERT INTO t(v) VALUES ('{tag} {i} {}')", "x".repeat(i * 40))).await;
            assert!(matches!(outcome, CommitOutcome::Committed { .. }), "{tag} {i}: {outcome:?}");
        }
    }
}

/// Creates the table (TXID 1) once the primary is writable and waits until every node has it.
async fn start_cluster(nodes: &Nodes, dir: &Path) -> Writer {
    wait_for("the primary to be writable", || nodes.handle(PRIMARY).is_some_and(|h| h.status().writable)).await;
    let mut w = Writer::new(dir);
    let outcome = w.exec(&nodes.handle(PRIMARY).unwrap(), "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").await;
    assert!(matches!(outcome, CommitOutcome::Committed { txid: 1, .. }), "{outcome:?}");
    for r in ["n2", "n3"] {
        wait_txid(nodes, r, 1).await;
    }
    w
}

/// Every node at the primary's position with the same checksum, and byte-identical, intact
/// database files holding `rows` rows.
fn assert_converged(nodes: &Nodes, dir: &Path, txid: u64, rows: i64) {
    let primary = position(nodes, PRIMARY).expect("primary position");
    assert_eq!(primary.txid, txid);
    let primary_file = std::fs::read(dir.join(PRIMARY).join("dbs").join(DB).join("database")).unwrap();
    assert_eq!(db_checksum(&primary_file, 4096), primary.checksum, "primary's file matches its position");
    for name in ["n2", "n3"] {
        let pos = position(nodes, name).expect("replica position");
        assert_eq!((pos.txid, pos.checksum), (primary.txid, primary.checksum), "{name} differs from the primary");
        let path = dir.join(name).join("dbs").join(DB).join("database");
        assert!(std::fs::read(&path).unwrap() == primary_file, "{name}'s database file differs from the primary's");
        assert_eq!(count_rows(&path, "t"), rows);
        assert!(integrity_ok(&path));
    }
}

fn metric(nodes: &Nodes, name: &str, pick: impl Fn(&node::runtime::Metrics) -> &std::sync::atomic::AtomicU64) -> u64 {
    let h = nodes.handle(name).expect("running node");
    node::runtime::Metrics::get(pick(h.metrics()))
}

#[test]
fn replicas_reach_the_primary_position_over_the_simulated_network() {
    simulate(1, |nodes, _faults, dir| async move {
        let mut w = start_cluster(&nodes, &dir).await;
        w.insert(&nodes, 20, "row").await;
        for r in ["n2", "n3"] {
            wait_txid(&nodes, r, 21).await;
            let s = nodes.handle(r).unwrap().status();
            assert!(s.connected_to_primary && !s.writable && s.role == "replica", "{s:?}");
            assert!(metric(&nodes, r, |m| &m.applied) >= 1);
            assert!(metric(&nodes, r, |m| &m.bytes_received) > 0);
        }
        assert!(metric(&nodes, PRIMARY, |m| &m.bytes_sent) > 0);
        assert_converged(&nodes, &dir, 21, 20);
    });
}

#[test]
fn a_partitioned_replica_reconnects_and_catches_up_incrementally() {
    simulate(2, |nodes, _faults, dir| async move {
        let mut w = start_cluster(&nodes, &dir).await;
        w.insert(&nodes, 5, "before").await;
        for r in ["n2", "n3"] {
            wait_txid(&nodes, r, 6).await;
        }

        // Held link: what the primary sends n2 waits on the wire, then arrives in order.
        turmoil::hold(PRIMARY, "n2");
        w.insert(&nodes, 3, "held").await;
        wait_txid(&nodes, "n3", 9).await;
        assert_eq!(position(&nodes, "n2").unwrap().txid, 6, "nothing crosses a held link");
        turmoil::release(PRIMARY, "n2");
        wait_txid(&nodes, "n2", 9).await;

        // Partition: segments are dropped, so the stream to n3 is silently dead. Commits go on.
        turmoil::partition(PRIMARY, "n3");
        w.insert(&nodes, 10, "during").await;
        wait_txid(&nodes, "n2", 19).await;
        // Only the HTTP/2 PINGs that go unanswered tell the client the stream is gone.
        wait_for("n3 to give up the dead stream", || !nodes.handle("n3").unwrap().status().connected_to_primary).await;
        assert_eq!(position(&nodes, "n3").unwrap().txid, 9, "nothing crosses the partition");
        let snapshots = metric(&nodes, "n3", |m| &m.snapshots_received);
        let applied = metric(&nodes, "n3", |m| &m.applied);

        turmoil::repair(PRIMARY, "n3");
        wait_txid(&nodes, "n3", 19).await;
        assert!(nodes.handle("n3").unwrap().status().connected_to_primary);
        assert_eq!(metric(&nodes, "n3", |m| &m.snapshots_received), snapshots, "caught up from LTX files, not by snapshot");
        assert!(metric(&nodes, "n3", |m| &m.applied) > applied);

        w.insert(&nodes, 3, "after").await;
        for r in ["n2", "n3"] {
            wait_txid(&nodes, r, 22).await;
        }
        assert_converged(&nodes, &dir, 22, 21);
    });
}

#[test]
fn a_crashed_replica_restarts_from_its_data_dir_and_catches_up() {
    simulate(3, |nodes, faults, dir| async move {
        let mut w = start_cluster(&nodes, &dir).await;
        w.insert(&nodes, 5, "before").await;
        for r in ["n2", "n3"] {
            wait_txid(&nodes, r, 6).await;
        }
        let crashed = nodes.handle("n2").unwrap();
        faults.apply(Fault::Crash("n2")).await;
        tokio::time::timeout(WAIT_MAX, crashed.stopped()).await.expect("the crashed host's runtime is gone");

        w.insert(&nodes, 7, "while down").await;
        wait_txid(&nodes, "n3", 13).await;

        faults.apply(Fault::Bounce("n2")).await;
        wait_for("n2 to restart", || nodes.starts("n2").len() == 2).await;
        let restarted = &nodes.starts("n2")[1];
        assert_eq!(restarted.positions.get(DB).map(|p| p.txid), Some(6), "n2 restarts from its own files");
        wait_txid(&nodes, "n2", 13).await;
        assert!(nodes.handle("n2").unwrap().status().connected_to_primary);
        assert_eq!(metric(&nodes, "n2", |m| &m.snapshots_received), 0, "caught up incrementally");
        assert!(metric(&nodes, "n2", |m| &m.applied) >= 1);
        assert_converged(&nodes, &dir, 13, 12);
    });
}

#[test]
fn replicas_reconnect_to_a_restarted_primary() {
    simulate(4, |nodes, faults, dir| async move {
        let mut w = start_cluster(&nodes, &dir).await;
        w.insert(&nodes, 5, "before").await;
        for r in ["n2", "n3"] {
            wait_txid(&nodes, r, 6).await;
        }
        let crashed = nodes.handle(PRIMARY).unwrap();
        faults.apply(Fault::Crash(PRIMARY)).await;
        tokio::time::timeout(WAIT_MAX, crashed.stopped()).await.expect("the crashed primary's runtime is gone");
        for r in ["n2", "n3"] {
            wait_for(&format!("{r} to lose the primary"), || !nodes.handle(r).unwrap().status().connected_to_primary).await;
        }
        // Static lease: nobody else may write; the replicas keep their position and wait.
        for r in ["n2", "n3"] {
            let s = nodes.handle(r).unwrap().status();
            assert!(!s.writable && s.positions[DB].txid == 6, "{r}: {s:?}");
        }

        faults.apply(Fault::Bounce(PRIMARY)).await;
        wait_for("n1 to restart", || nodes.starts(PRIMARY).len() == 2).await;
        assert_eq!(nodes.starts(PRIMARY)[1].positions.get(DB).map(|p| p.txid), Some(6), "the primary restarts from its own files");
        wait_for("the restarted primary to be writable", || nodes.handle(PRIMARY).unwrap().status().writable).await;
        w.insert(&nodes, 5, "after").await;
        for r in ["n2", "n3"] {
            wait_txid(&nodes, r, 11).await;
            assert!(nodes.handle(r).unwrap().status().connected_to_primary);
        }
        assert_converged(&nodes, &dir, 11, 10);
    });
}

#[test]
fn a_brief_partition_that_breaks_the_stream_heals() {
    // Shorter than the PING timeout: the link works again before either end gives up, but the
    // segments dropped meanwhile leave a hole the simulated TCP never fills (it does not
    // retransmit), so the stream is dead although the link is up: an end must still notice by
    // its PINGs, and the replica must reconnect and catch up — three times in a row.
    simulate(5, |nodes, _faults, dir| async move {
        let mut w = start_cluster(&nodes, &dir).await;
        w.insert(&nodes, 2, "before").await;
        wait_txid(&nodes, "n3", 3).await;
        for round in 0..3u64 {
            turmoil::partition(PRIMARY, "n3");
            w.insert(&nodes, 2, "during").await;
            turmoil::repair(PRIMARY, "n3");
            w.insert(&nodes, 1, "after").await;
            let txid = 3 + 3 * (round + 1);
            wait_txid(&nodes, "n2", txid).await;
            wait_txid(&nodes, "n3", txid).await;
        }
        assert_converged(&nodes, &dir, 12, 11);
    });
}

#[test]
fn a_one_way_partition_from_the_primary_heals() {
    // n1 → n3 drops everything while n3 → n1 still delivers: the replica's PINGs reach the
    // primary but their answers do not, so only the replica's own timer can end the stream; its
    // reconnects reach the primary's listener but never complete until the link is repaired.
    simulate(6, |nodes, _faults, dir| async move {
        let mut w = start_cluster(&nodes, &dir).await;
        // TXID 1 carries every page: its LTX counts as a snapshot. Nothing after it may.
        let snapshots = metric(&nodes, "n3", |m| &m.snapshots_received);
        let mut txid = 1;
        for round in 0..2 {
            turmoil::partition_oneway(PRIMARY, "n3");
            w.insert(&nodes, 3, &format!("during {round}")).await;
            wait_txid(&nodes, "n2", txid + 3).await;
            wait_for("n3 to give up the stream", || !nodes.handle("n3").unwrap().status().connected_to_primary).await;
            assert_eq!(position(&nodes, "n3").unwrap().txid, txid, "nothing reaches n3");
            turmoil::repair_oneway(PRIMARY, "n3");
            txid += 3;
            wait_txid(&nodes, "n3", txid).await;
        }
        assert_eq!(metric(&nodes, "n3", |m| &m.snapshots_received), snapshots, "caught up incrementally");
        assert_converged(&nodes, &dir, 7, 6);
    });
}

/// The primary is quiet ([`QUIET_HEARTBEAT`]); replicas notice a silent stream within ~2 s.
fn quiet_primary(name: &str) -> Duration {
    if name == PRIMARY { QUIET_HEARTBEAT } else { HEARTBEAT }
}

/// After a replica came back on a new connection while the primary still held its old, dead
/// one: the replica must reach the primary's position within [`RECONNECT_CATCH_UP_MAX`], and
/// keep following once the primary has certainly seen the old connection end (its PINGs
/// unanswered), with commits still arriving within the bound.
async fn assert_followed_on_the_new_connection(nodes: &Nodes, w: &mut Writer, replica: &str, txid: u64) {
    let (ping_every, ping_timeout) = node::http::transport::keepalive(QUIET_HEARTBEAT);
    assert!(ping_timeout >= RECONNECT_CATCH_UP_MAX * 4, "the bound must be well under the primary's PING timeout");
    wait_txid_within(nodes, replica, txid, RECONNECT_CATCH_UP_MAX).await;
    // A scenario step in simulated time, not a synchronisation: by then the primary's own PINGs
    // have ended the old connection whatever else did.
    tokio::time::sleep(ping_every + ping_timeout + Duration::from_secs(1)).await;
    assert!(nodes.handle(replica).unwrap().status().connected_to_primary);
    w.insert(nodes, 2, "after").await;
    for r in ["n2", "n3"] {
        wait_txid_within(nodes, r, txid + 2, RECONNECT_CATCH_UP_MAX).await;
    }
}

#[test]
fn a_replica_restarted_behind_a_partition_is_answered_on_its_new_connection() {
    // n2's host dies while cut off from the primary: the end of its stream never reaches the
    // primary, which keeps the old connection registered (its PINGs would take 100 s). The
    // restarted n2 connects again once the link is back and asks for a stream: the primary's
    // answer must go on that new connection, not on the dead one.
    simulate_with(7, quiet_primary, |nodes, faults, dir| async move {
        let mut w = start_cluster(&nodes, &dir).await;
        w.insert(&nodes, 3, "before").await;
        for r in ["n2", "n3"] {
            wait_txid(&nodes, r, 4).await;
        }
        turmoil::partition(PRIMARY, "n2");
        let crashed = nodes.handle("n2").unwrap();
        faults.apply(Fault::Crash("n2")).await;
        tokio::time::timeout(WAIT_MAX, crashed.stopped()).await.expect("the crashed host's runtime is gone");
        w.insert(&nodes, 4, "while down").await;
        wait_txid(&nodes, "n3", 8).await;
        faults.apply(Fault::Bounce("n2")).await;
        wait_for("n2 to restart", || nodes.starts("n2").len() == 2).await;
        assert_eq!(nodes.starts("n2")[1].positions.get(DB).map(|p| p.txid), Some(4), "n2 restarts from its own files");
        turmoil::repair(PRIMARY, "n2");
        assert_followed_on_the_new_connection(&nodes, &mut w, "n2", 8).await;
        assert_eq!(metric(&nodes, "n2", |m| &m.snapshots_received), 0, "caught up incrementally");
        assert_converged(&nodes, &dir, 10, 9);
    });
}

#[test]
fn a_replica_that_gave_up_a_silent_stream_is_answered_on_its_new_connection() {
    // A partition n1 <-> n2: n2's PINGs go unanswered, so it closes its stream (the close is
    // lost too) and keeps redialing; the quiet primary has not noticed anything when the link
    // comes back and n2's new connection asks for a stream.
    simulate_with(8, quiet_primary, |nodes, _faults, dir| async move {
        let mut w = start_cluster(&nodes, &dir).await;
        w.insert(&nodes, 3, "before").await;
        for r in ["n2", "n3"] {
            wait_txid(&nodes, r, 4).await;
        }
        // TXID 1 carries every page: its LTX counts as a snapshot. Nothing after it may.
        let snapshots = metric(&nodes, "n2", |m| &m.snapshots_received);
        turmoil::partition(PRIMARY, "n2");
        w.insert(&nodes, 4, "during").await;
        wait_txid(&nodes, "n3", 8).await;
        wait_for("n2 to give up the silent stream", || !nodes.handle("n2").unwrap().status().connected_to_primary).await;
        assert_eq!(position(&nodes, "n2").unwrap().txid, 4, "nothing crosses the partition");
        turmoil::repair(PRIMARY, "n2");
        assert_followed_on_the_new_connection(&nodes, &mut w, "n2", 8).await;
        assert_eq!(metric(&nodes, "n2", |m| &m.snapshots_received), snapshots, "caught up incrementally");
        assert_converged(&nodes, &dir, 10, 9);
    });
}
