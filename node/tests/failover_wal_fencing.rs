//! WAL mode, the exact window between a transaction's commit frame and its LTX (issue 6): the
//! primary is held there (a test failpoint) while it is cut off from etcd, another node takes
//! the lease, and only then does it go on. The commit must fail in SQLite (the app gets an
//! error, not a success that the cluster never saw), the node must keep running as a replica
//! of the new primary, and the row must exist nowhere — not even after the old primary is
//! killed and restarted, when SQLite's WAL recovery rereads every valid frame of the WAL.
//!
//! NEEDS FUSE, the sqlite3 CLI and etcd (see `failover_support`).

mod cluster_support;
mod failover_support;
mod support;

use cluster_support::*;
use failover_support::*;

#[test]
fn a_wal_commit_whose_lease_ends_before_its_ltx_fails_and_never_resurrects() {
    let mut c = FailoverCluster::start(Options { failpoints: true, ..Options::default() });
    for n in &mut c.nodes { n.env.push(("XX_OLD".into(), "1".into())); }
    let p = c.wait_primary(None);
    let db = c.nodes[p].db(DB);
    assert_eq!(sqlite3_ok(&db, "PRAGMA journal_mode=WAL;").trim(), "wal");
    sqlite3_ok(&db, "CREATE TABLE t(v INTEGER PRIMARY KEY);");
    for v in 1..=5 {
        assert!(insert(&c.nodes[p], v));
    }
    c.wait_converged(p);
    let old_epoch = c.epoch(p);

    let fp = c.nodes[p].root.join("failpoints");
    std::fs::write(fp.join("wal-commit-frame.arm"), b"").unwrap();
    let writer = {
        let db = db.clone();
        std::thread::spawn(move || sqlite3(&db, "INSERT INTO t VALUES (777);"))
    };
    wait_until("the commit frame is written and the node holds there", || fp.join("wal-commit-frame.reached").exists());

    // The lease moves away while the transaction waits between its commit frame and its LTX.
    c.proxies[p].cut();
    let q = c.wait_primary(Some(p));
    assert!(c.epoch(q) > old_epoch);
    std::fs::write(fp.join("wal-commit-frame.release"), b"").unwrap();

    let (ok, _, err) = writer.join().unwrap();
    assert!(!ok, "the commit whose lease ended must fail in SQLite");
    eprintln!("SQLite's error for the fenced WAL commit: {}", err.trim());
    assert!(c.nodes[p].is_running());
    c.proxies[p].restore();
    c.wait_followers(q);
    assert!(c.nodes[p].log().contains("WAL commit refused"), "log:\n{}", c.nodes[p].log());

    assert!(insert(&c.nodes[q], 6), "the new primary takes writes");
    c.wait_converged(q);
    let rows = c.check_replicas_equal();
    assert_eq!(rows, (1..=6).collect(), "row 777 exists nowhere");

    // SQLite's WAL recovery on the old primary's files must not bring the refused frame back.
    c.nodes[p].kill9();
    c.nodes[p].start();
    c.wait_followers(q);
    assert!(insert(&c.nodes[q], 7));
    c.wait_converged(q);
    assert_eq!(c.check_replicas_equal(), (1..=7).collect());
    c.check_single_writer();
}
