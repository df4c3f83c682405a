//! `ltxfs mount` with `lease.type: etcd` on real processes: the first candidate becomes primary,
//! the other replicates from it and shows it in `.primary`; after kill -9 of the primary the
//! other takes over and accepts writes; the old primary, restarted, follows the new one.
//!
//! NEEDS FUSE (`/dev/fuse`, fusermount3), the sqlite3 CLI and etcd (apt-get install etcd-server):
//! fails, never skips, without them.

mod cluster_support;
mod support;

use cluster_support::*;

const DB: &str = "app.db";

fn config(name: &str, etcd_url: &str) -> String {
    format!(
        "fuse:\n  dir: $MNT\ndata:\n  dir: $DATA\nhttp:\n  addr: 127.0.0.1:$PORT\n\
         lease:\n  type: etcd\n  candidate: true\n  hostname: {name}\n  advertise-url: http://127.0.0.1:$PORT\n  ttl: 2s\n  reconnect-delay: 100ms\n\
         \x20 etcd:\n    endpoints: ['{etcd_url}']\n    key: ltxfs/test/primary\n\
         replication:\n  members: [n1, n2]\n  cluster-id: etcd-test\n  heartbeat-interval: 200ms\n"
    )
}

fn role(n: &ProcNode) -> String {
    n.info()["role"].as_str().unwrap_or_default().to_string()
}

#[test]
fn etcd_lease_elects_replicates_and_fails_over() {
    require_tools();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let etcd = rt.block_on(support::etcd::Etcd::start());
    let dir = tempfile::tempdir().unwrap();
    let mut n1 = ProcNode::with_config(dir.path(), "n1", free_port(), &config("n1", &etcd.url));
    let mut n2 = ProcNode::with_config(dir.path(), "n2", free_port(), &config("n2", &etcd.url));
    n1.start();
    wait_until("n1 primary", || role(&n1) == "primary" && n1.info()["writable"] == serde_json::Value::Bool(true));
    n2.start();
    wait_until("n2 connected to n1", || n2.info()["connectedToPrimary"] == serde_json::Value::Bool(true));
    assert_eq!(std::fs::read_to_string(n2.mnt.join(".primary")).unwrap(), "n1\n");

    sqlite3_ok(&n1.db(DB), "CREATE TABLE t(v); INSERT INTO t VALUES (1);");
    let want = n1.pos(DB).unwrap();
    wait_until("n2 caught up", || n2.pos(DB).as_deref() == Some(want.as_str()));

    n1.kill9();
    wait_until("n2 takes over", || role(&n2) == "primary" && n2.info()["writable"] == serde_json::Value::Bool(true));
    assert!(!n2.mnt.join(".primary").exists(), "the primary has no .primary");
    sqlite3_ok(&n2.db(DB), "INSERT INTO t VALUES (2);");

    n1.start();
    wait_until("n1 follows n2", || n1.info()["connectedToPrimary"] == serde_json::Value::Bool(true));
    let want = n2.pos(DB).unwrap();
    wait_until("n1 caught up", || n1.pos(DB).as_deref() == Some(want.as_str()));
    assert_eq!(sqlite3_ok(&n1.db(DB), "SELECT count(*) FROM t; PRAGMA integrity_check;"), "2\nok\n");
    assert_eq!(std::fs::read_to_string(n1.mnt.join(".primary")).unwrap(), "n2\n");
    n1.stop();
    n2.stop();
}
