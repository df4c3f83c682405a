//! Crashes and restarts with real processes: kill -9 of the primary in the middle of a write
//! workload (it recovers to a consistent position at restart and the replicas continue), a
//! replica started late (caught up by a snapshot) and a replica restarted after a short absence
//! (caught up incrementally, no snapshot — asserted on its /metrics).
//!
//! NEEDS FUSE (`/dev/fuse`, fusermount3) and the sqlite3 CLI: fails, never skips, without them.

mod cluster_support;

use std::process::{Command, Stdio};

use cluster_support::*;

const DB: &str = "app.db";

fn txid(pos: &str) -> u64 {
    u64::from_str_radix(&pos[..16], 16).expect("hex txid")
}

fn crash_primary_mid_workload(mode: &str) {
    let mut cluster = Cluster::new();
    cluster.start_all();
    let db = cluster.primary().db(DB);
    sqlite3_ok(&db, &format!("PRAGMA journal_mode={mode}; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);"));
    let start = txid(&cluster.wait_converged(DB));

    // A writer that would run for a long time; the primary dies under it.
    let script: String = (0..5000).map(|i| format!("INSERT INTO t(v) VALUES (hex(randomblob(200)) || '{i}');\n")).collect();
    let mut writer = Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 10000")
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = writer.stdin.take().unwrap();
    std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut stdin, script.as_bytes());
    });
    wait_until("the workload to be under way", || cluster.primary().pos(DB).is_some_and(|p| txid(&p) >= start + 30));
    cluster.nodes[0].kill9();
    let _ = writer.kill();
    let _ = writer.wait();

    cluster.nodes[0].start();
    let primary = cluster.primary();
    let out = sqlite3_ok(&primary.db(DB), "PRAGMA integrity_check; SELECT count(*) FROM t;");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("ok"), "{out}");
    let rows: u64 = lines.next().unwrap().parse().unwrap();
    let pos = primary.pos(DB).unwrap();
    assert_eq!(txid(&pos), start + rows, "one transaction per row, and the position matches the data");
    // The replicas reconnect and continue from there.
    for r in &cluster.nodes[1..] {
        wait_until(&format!("{} reconnected", r.name), || r.info()["connectedToPrimary"] == serde_json::Value::Bool(true));
    }
    sqlite3_ok(&primary.db(DB), "INSERT INTO t(v) VALUES ('after restart');");
    cluster.wait_converged(DB);
    let expected = format!("ok\n{}\n", rows + 1);
    for n in &cluster.nodes {
        assert_eq!(sqlite3_ok(&n.db(DB), "PRAGMA integrity_check; SELECT count(*) FROM t;"), expected, "{}", n.name);
    }
}

#[test]
fn kill9_primary_mid_workload_delete_mode() {
    crash_primary_mid_workload("DELETE");
}

#[test]
fn kill9_primary_mid_workload_wal_mode() {
    crash_primary_mid_workload("WAL");
}

#[test]
fn late_replica_gets_a_snapshot_and_restarted_replica_catches_up_incrementally() {
    let mut cluster = Cluster::new();
    cluster.nodes[0].start();
    cluster.nodes[1].start();
    let db = cluster.primary().db(DB);
    sqlite3_ok(&db, "CREATE TABLE t(v); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);");
    let r1 = &cluster.nodes[1];
    let want = cluster.primary().pos(DB).unwrap();
    wait_until("replica1 caught up", || r1.pos(DB).as_deref() == Some(want.as_str()));

    // replica2 joins late with nothing: a snapshot.
    cluster.nodes[2].start();
    cluster.wait_converged(DB);
    assert!(cluster.nodes[2].metric("ltxfs_snapshots_received_total") >= 1.0, "a late replica is caught up by snapshot");
    assert_eq!(sqlite3_ok(&cluster.nodes[2].db(DB), "SELECT count(*) FROM t;"), "2\n");

    // replica1 leaves for a moment; the primary moves on; it comes back.
    cluster.nodes[1].stop();
    sqlite3_ok(&db, "INSERT INTO t VALUES (3); INSERT INTO t VALUES (4);");
    cluster.nodes[1].start();
    cluster.wait_converged(DB);
    let r1 = &cluster.nodes[1];
    assert_eq!(r1.metric("ltxfs_snapshots_received_total"), 0.0, "a short absence needs no snapshot");
    // The primary may compact the missing LTX files into one incremental file.
    assert!(r1.metric("ltxfs_applied_total") >= 1.0, "the missing transactions were applied incrementally");
    assert_eq!(sqlite3_ok(&r1.db(DB), "SELECT count(*) FROM t; PRAGMA integrity_check;"), "4\nok\n");
    for n in &mut cluster.nodes {
        n.stop();
    }
}
