//! Restart of etcd itself (killed, then started again on the same ports and data), etcd lease
//! ttl 2 s, on real processes: while etcd is down every node keeps serving reads and no node
//! accepts writes once its lease deadline has passed; after etcd returns, writes resume on one
//! primary and every node converges.
//!
//! NEEDS FUSE, the sqlite3 CLI and etcd (see `failover_support`).

mod cluster_support;
mod failover_support;
mod support;

use cluster_support::*;
use failover_support::*;

#[test]
fn nodes_serve_reads_while_etcd_is_down_and_writes_resume_after_it_returns() {
    let mut c = FailoverCluster::start(Options::default());
    let p = c.wait_primary(None);
    sqlite3_ok(&c.nodes[p].db(DB), "CREATE TABLE t(v INTEGER PRIMARY KEY);");
    for v in 1..=10 {
        assert!(insert(&c.nodes[p], v));
    }
    c.wait_converged(p);

    c.etcd.stop();
    // No renewal can reach etcd: the primary stops writing at its lease deadline.
    wait_until("no node is writable while etcd is down", || {
        c.nodes.iter().all(|n| info(n).is_some_and(|v| v["writable"] == false))
    });
    let (ok, _, err) = sqlite3(&c.nodes[p].db(DB), "INSERT INTO t VALUES (999);");
    assert!(!ok, "a write succeeded while no lease could be renewed");
    assert!(err.contains("readonly") || err.contains("read-only"), "clear SQLite error: {err}");
    for n in &c.nodes {
        let rows = rows(n);
        assert_eq!(rows, (1..=10).collect(), "{} serves reads while etcd is down", n.name);
        assert_eq!(sqlite3_ok(&n.db(DB), "PRAGMA integrity_check;"), "ok\n", "{}", n.name);
    }

    let etcd = &mut c.etcd;
    c.rt.block_on(etcd.restart());
    // Poll: the first writes after the restart may race the new primary's recovery.
    let mut v = 100;
    wait_until("a write succeeds after etcd returns", || {
        let q = c.wait_primary(None);
        v += 1;
        insert(&c.nodes[q], v)
    });
    let q = c.wait_primary(None);
    c.wait_followers(q);
    c.wait_converged(q);
    let rows = c.check_replicas_equal();
    assert!(rows.contains(&v) && (1..=10).all(|r| rows.contains(&r)), "{rows:?}");
    assert!(!rows.contains(&999), "the refused row does not exist");
    c.check_single_writer();
}
