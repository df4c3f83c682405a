//! A primary and two replicas as separate `ltxfs` processes, in every journal mode: rows written
//! through the primary's mount (rusqlite and the `sqlite3` CLI) appear on both replicas with the
//! same `-pos` and the same query results; `integrity_check` is ok everywhere; a write on a
//! replica fails with SQLite's error and changes nothing.
//!
//! NEEDS FUSE (`/dev/fuse`, fusermount3) and the sqlite3 CLI: fails, never skips, without them.

mod cluster_support;

use cluster_support::*;
use rusqlite::Connection;

const DB: &str = "app.db";

fn replicate(mode: &str) {
    let mut cluster = Cluster::new();
    cluster.start_all();
    let primary = cluster.primary();
    let conn = Connection::open(primary.db(DB)).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    let got: String = conn.query_row(&format!("PRAGMA journal_mode={mode}"), [], |r| r.get(0)).unwrap();
    assert_eq!(got, mode.to_lowercase());
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").unwrap();
    for i in 0..20 {
        conn.execute("INSERT INTO t(v) VALUES (?1)", [format!("rusqlite {i}")]).unwrap();
    }
    // A transaction spanning many pages.
    conn.execute_batch("BEGIN; WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<200) INSERT INTO t(v) SELECT hex(randomblob(100)) FROM c; COMMIT;").unwrap();
    sqlite3_ok(&primary.db(DB), "INSERT INTO t(v) VALUES ('cli 1'); INSERT INTO t(v) VALUES ('cli 2');");

    let pos = cluster.wait_converged(DB);
    let query = "SELECT count(*), sum(length(v)), max(id) FROM t; PRAGMA integrity_check;";
    let expected = sqlite3_ok(&primary.db(DB), query);
    assert!(expected.starts_with("222|"), "{expected}");
    assert!(expected.ends_with("ok\n"), "{expected}");
    for replica in &cluster.nodes[1..] {
        assert_eq!(sqlite3_ok(&replica.db(DB), query), expected, "{} answers like the primary", replica.name);
        assert_eq!(std::fs::read_to_string(replica.mnt.join(".primary")).unwrap(), "primary\n");
    }

    // A connection that stays open on a replica sees later transactions too.
    let reader = Connection::open(cluster.nodes[1].db(DB)).unwrap();
    reader.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    let before: i64 = reader.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(before, 222);
    conn.execute("INSERT INTO t(v) VALUES ('late')", []).unwrap();
    cluster.wait_converged(DB);
    let after: i64 = reader.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(after, 223, "an open replica connection sees the new transaction");
    drop(reader);

    // Writes on a replica fail and change nothing.
    let pos = cluster.primary().pos(DB).unwrap_or(pos);
    for replica in &cluster.nodes[1..] {
        let (ok, _, err) = sqlite3(&replica.db(DB), "INSERT INTO t(v) VALUES ('from a replica');");
        assert!(!ok, "a replica write must fail");
        if mode == "WAL" {
            assert!(err.contains("readonly") || err.contains("disk I/O error"), "clear error in WAL mode: {err}");
        } else {
            assert!(err.contains("attempt to write a readonly database"), "{err}");
        }
        assert_eq!(replica.pos(DB).as_deref(), Some(pos.as_str()), "nothing changed on {}", replica.name);
        assert_eq!(sqlite3_ok(&replica.db(DB), "SELECT count(*) FROM t;"), "223\n");
    }
    assert_eq!(cluster.primary().pos(DB).as_deref(), Some(pos.as_str()));
    drop(conn);
    for n in &mut cluster.nodes {
        n.stop();
    }
}

#[test]
fn replicates_delete_mode() {
    replicate("DELETE");
}

#[test]
fn replicates_truncate_mode() {
    replicate("TRUNCATE");
}

#[test]
fn replicates_persist_mode() {
    replicate("PERSIST");
}

#[test]
fn replicates_wal_mode() {
    replicate("WAL");
}

/// A replica's apply takes SQLite's locks in the kernel's lock table (the mount leaves POSIX
/// locks to the kernel): while a local read transaction is open it waits, and the reader keeps
/// seeing one consistent state; once the reader ends, the apply goes through.
fn apply_waits_for_a_replica_reader(mode: &str) {
    let mut cluster = Cluster::new();
    cluster.start_all();
    let primary = cluster.primary();
    sqlite3_ok(&primary.db(DB), &format!("PRAGMA journal_mode={mode}; CREATE TABLE t(v); INSERT INTO t VALUES (1);"));
    let before = cluster.wait_converged(DB);
    let replica = &cluster.nodes[1];

    let reader = Connection::open(replica.db(DB)).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let n: i64 = reader.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);

    sqlite3_ok(&primary.db(DB), "INSERT INTO t VALUES (2);");
    let after = primary.pos(DB).unwrap();
    assert_ne!(after, before);
    wait_until("the replica's apply waits for the reader", || replica.log().contains("waiting for SQLite's locks"));
    assert_eq!(replica.pos(DB).unwrap(), before, "nothing applied under an open read transaction");
    let n: i64 = reader.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1, "the reader's view does not change mid-transaction");

    reader.execute_batch("COMMIT").unwrap();
    wait_until("the apply goes through once the reader ends", || replica.pos(DB).as_deref() == Some(after.as_str()));
    let n: i64 = reader.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 2, "the same connection sees the applied row");
}

#[test]
fn apply_waits_for_a_replica_reader_delete_mode() {
    apply_waits_for_a_replica_reader("DELETE");
}

#[test]
fn apply_waits_for_a_replica_reader_wal_mode() {
    apply_waits_for_a_replica_reader("WAL");
}
