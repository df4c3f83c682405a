//! Replication between in-process nodes over real HTTP on loopback, real data directories and a
//! static lease (no FUSE: the test application's committed pages are written into the primary's
//! database file and committed through `RuntimeHandle::commit`, as the FUSE layer will).

mod support;

use ltxfs_core::ids::{ClusterId, NodeId};
use ltxfs_core::ltx::checksum::db_checksum;
use node::runtime::CommitOutcome;
use support::{count_rows, integrity_ok, members, App, NodeSpec, TestNode};

const DB: &str = "app.db";

fn spec(dir: &tempfile::TempDir, id: u64, n: u64) -> NodeSpec {
    NodeSpec {
        id: NodeId(id),
        cluster: ClusterId(0xC1),
        members: members(n),
        data_dir: dir.path().join(format!("node{id}")),
        auth_token: Some("s3cret".into()),
    }
}

fn assert_same_database(a: &TestNode, b: &TestNode) {
    let x = std::fs::read(a.database_path(DB)).expect("database on a");
    let y = std::fs::read(b.database_path(DB)).expect("database on b");
    assert_eq!(db_checksum(&x, 4096), db_checksum(&y, 4096), "database checksums differ");
    assert!(x == y, "database files differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_on_the_primary_reach_two_replicas_with_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = TestNode::start_static(&spec(&dir, 1, 3), NodeId(1), None).await;
    let r2 = TestNode::start_static(&spec(&dir, 2, 3), NodeId(1), Some(&p.url)).await;
    let r3 = TestNode::start_static(&spec(&dir, 3, 3), NodeId(1), Some(&p.url)).await;
    let mut app = App::new(dir.path(), DB);
    assert!(matches!(app.exec(&p, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").await, CommitOutcome::Committed { txid: 1, .. }));
    for i in 0..20 {
        let outcome = app.exec(&p, &format!("INSERT INTO t(v) VALUES ('row {i} {}')", "x".repeat(i * 50))).await;
        assert!(matches!(outcome, CommitOutcome::Committed { .. }), "{outcome:?}");
    }
    let primary_pos = p.status().positions[DB];
    assert_eq!(primary_pos.txid, 21);
    for r in [&r2, &r3] {
        r.wait_txid(DB, 21).await;
        assert_eq!(r.status().positions[DB].checksum, primary_pos.checksum);
        assert_same_database(&p, r);
        assert_eq!(count_rows(&r.database_path(DB), "t"), 20);
        assert!(integrity_ok(&r.database_path(DB)));
        assert!(!r.status().writable);
        assert_eq!(r.status().primary.as_ref().map(|pi| pi.advertise_url.as_str()), Some(p.url.as_str()));
    }
    // The application's own file and the primary's are byte-identical too.
    assert!(std::fs::read(p.database_path(DB)).unwrap() == app.image());

    // A replica refuses local commits: the core says it is not the primary.
    let refused = r2.handle.commit(ltxfs_core::ids::DbName::new(DB).unwrap(), 4096, 2, vec![(2, vec![0; 4096])]).await.unwrap();
    assert!(matches!(refused, CommitOutcome::Rejected { .. }), "{refused:?}");

    // /info and /metrics describe it.
    let info: serde_json::Value = reqwest::get(format!("{}/info", r2.url)).await.unwrap().json().await.unwrap();
    assert_eq!(info["role"], "replica");
    assert_eq!(info["positions"][DB]["txid"], 21);
    assert_eq!(info["primary"]["advertiseURL"], p.url.as_str());
    let applied = r2.metric("ltxfs_applied_total").await;
    assert!((1.0..=21.0).contains(&applied), "catch-up may compact several transactions into one LTX: {applied}");
    assert!(p.metric("ltxfs_bytes_sent_total").await > 0.0);
    assert!(r2.metric("ltxfs_bytes_received_total").await > 0.0);
    assert_eq!(p.metric("ltxfs_epoch").await, 1.0);
    for n in [r2, r3, p] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_catches_up_incrementally() {
    let dir = tempfile::tempdir().unwrap();
    let p = TestNode::start_static(&spec(&dir, 1, 2), NodeId(1), None).await;
    let r = TestNode::start_static(&spec(&dir, 2, 2), NodeId(1), Some(&p.url)).await;
    let mut app = App::new(dir.path(), DB);
    app.exec(&p, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").await;
    for i in 0..5 {
        app.exec(&p, &format!("INSERT INTO t(v) VALUES ('a{i}')")).await;
    }
    r.wait_txid(DB, 6).await;
    let snapshots_before = p.metric("ltxfs_snapshots_sent_total").await;
    r.stop().await;
    for i in 0..7 {
        app.exec(&p, &format!("INSERT INTO t(v) VALUES ('b{i}')")).await;
    }
    let r = TestNode::start_static(&spec(&dir, 2, 2), NodeId(1), Some(&p.url)).await;
    assert_eq!(r.status().positions[DB].txid, 6, "the restarted replica starts from its own files");
    r.wait_txid(DB, 13).await;
    assert_same_database(&p, &r);
    assert_eq!(count_rows(&r.database_path(DB), "t"), 12);
    assert_eq!(r.metric("ltxfs_snapshots_received_total").await, 0.0, "caught up without a snapshot");
    assert!(r.metric("ltxfs_applied_total").await >= 1.0);
    assert_eq!(p.metric("ltxfs_snapshots_sent_total").await, snapshots_before);
    r.stop().await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_replica_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let p = TestNode::start_static(&spec(&dir, 1, 2), NodeId(1), None).await;
    let mut app = App::new(dir.path(), DB);
    app.exec(&p, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").await;
    for i in 0..30 {
        app.exec(&p, &format!("INSERT INTO t(v) VALUES ('{}')", "y".repeat(100 + i))).await;
    }
    let r = TestNode::start_static(&spec(&dir, 2, 2), NodeId(1), Some(&p.url)).await;
    r.wait_txid(DB, 31).await;
    assert_same_database(&p, &r);
    assert_eq!(count_rows(&r.database_path(DB), "t"), 30);
    assert!(r.metric("ltxfs_snapshots_received_total").await >= 1.0);
    assert!(p.metric("ltxfs_snapshots_sent_total").await >= 1.0);
    // A snapshot leaves one LTX file on the replica, not thirty.
    let files = std::fs::read_dir(r.data_dir.join("dbs").join(DB).join("ltx"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".ltx"))
        .count();
    assert_eq!(files, 1);
    r.stop().await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_another_cluster_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = TestNode::start_static(&spec(&dir, 1, 2), NodeId(1), None).await;
    let mut app = App::new(dir.path(), DB);
    app.exec(&p, "CREATE TABLE t(id INTEGER PRIMARY KEY)").await;
    let mut other = spec(&dir, 2, 2);
    other.cluster = ClusterId(0xBAD);
    let r = TestNode::start_static(&other, NodeId(1), Some(&p.url)).await;
    let mut events = r.handle.subscribe();
    let deadline = tokio::time::Instant::now() + support::WAIT_MAX;
    while p.metric("ltxfs_cluster_mismatches_total").await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "primary never refused the foreign replica");
        let _ = tokio::time::timeout(std::time::Duration::from_millis(50), events.recv()).await;
    }
    assert!(r.status().positions.is_empty());
    assert!(!r.data_dir.join("dbs").join(DB).exists(), "nothing written on the refused replica");
    assert_eq!(r.metric("ltxfs_applied_total").await, 0.0);
    r.stop().await;
    p.stop().await;
}
