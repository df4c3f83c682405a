//! Bad input on real processes: a replica of another cluster gets nothing (and the mismatch is
//! counted), bad configurations are clear errors that mount and write nothing, and the CLI
//! (status, export, import, promote) talks to a running node.
//!
//! NEEDS FUSE (`/dev/fuse`, fusermount3) and the sqlite3 CLI: fails, never skips, without them.

mod cluster_support;

use std::process::Command;

use cluster_support::*;

const DB: &str = "app.db";

#[test]
fn replica_of_another_cluster_gets_nothing() {
    let mut cluster = Cluster::with_cluster_ids(["blue", "blue", "green"]);
    for n in &mut cluster.nodes {
        n.start();
    }
    sqlite3_ok(&cluster.primary().db(DB), "CREATE TABLE t(v); INSERT INTO t VALUES (1);");
    let want = cluster.primary().pos(DB).unwrap();
    let r1 = &cluster.nodes[1];
    wait_until("replica1 (same cluster) caught up", || r1.pos(DB).as_deref() == Some(want.as_str()));
    let (primary, other) = (&cluster.nodes[0], &cluster.nodes[2]);
    wait_until("the cluster mismatch to be counted", || {
        primary.metric("ltxfs_cluster_mismatches_total") + other.metric("ltxfs_cluster_mismatches_total") >= 1.0
    });
    assert!(!other.db(DB).exists(), "nothing of the other cluster is visible");
    assert!(!other.data.join("dbs").join(DB).exists(), "nothing of the other cluster is written");
    assert!(other.info()["positions"].as_object().is_some_and(|p| p.is_empty()), "no position on the other cluster's node");
}

fn mount_with(config_text: &str) -> (std::process::Output, tempfile::TempDir) {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ltxfs.yml");
    let text = config_text.replace("$DIR", dir.path().to_str().unwrap());
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ltxfs")).arg("mount").arg("--config").arg(&config).output().unwrap();
    (out, dir)
}

#[test]
fn bad_configs_are_clear_errors_and_write_nothing() {
    let cases = [
        ("fuse: {dir: $DIR/mnt}\ndata: {dir: $DIR/data}\nlease: {type: static}\nbogus: 1\n", "bogus"),
        ("fuse: {dir: $DIR/mnt}\ndata: {dir: $DIR/data}\nlease: {type: consul}\n", "lease.type"),
        ("fuse: {dir: $DIR/mnt}\ndata: {dir: $DIR/data}\nlease: {type: static, candidate: false, hostname: p, advertise-url: 'http://127.0.0.1:1'}\n", "replication.members"),
        ("fuse: {dir: $DIR/mnt}\ndata: {dir: $DIR/data}\nlease: {type: etcd, hostname: n, advertise-url: 'http://127.0.0.1:1'}\n", "lease.etcd.endpoints"),
        ("fuse: {dir: $DIR/mnt}\ndata: {dir: $DIR/data}\nlease: {type: static}\nreplication: {members: [a, b]}\n", "replication.members"),
    ];
    for (text, key) in cases {
        let (out, dir) = mount_with(text);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(stderr.contains(key), "error names {key}: {stderr}");
        assert!(!dir.path().join("mnt").exists() && !dir.path().join("data").exists(), "nothing created for {text}");
    }
    // A port already in use: a clear error before the data directory is touched.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let (out, dir) = mount_with(&format!("fuse: {{dir: $DIR/mnt}}\ndata: {{dir: $DIR/data}}\nhttp: {{addr: '127.0.0.1:{port}'}}\nlease: {{type: static}}\n"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("http.addr"), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing written");
}

fn ltxfs(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ltxfs")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn cli_status_export_import_promote() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    sqlite3_ok(&cluster.primary().db(DB), "CREATE TABLE t(v); INSERT INTO t VALUES ('one');");
    cluster.wait_converged(DB);
    let (primary_url, replica_url) = (cluster.nodes[0].url.clone(), cluster.nodes[1].url.clone());

    let (ok, table, err) = ltxfs(&["status", "--url", &replica_url]);
    assert!(ok, "{err}");
    assert!(table.contains("role      replica"), "{table}");
    assert!(table.contains("primary   primary"), "{table}");
    assert!(table.contains(DB), "{table}");
    let (ok, json, _) = ltxfs(&["status", "--url", &primary_url, "--json"]);
    assert!(ok);
    let info: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(info["role"], "primary");

    // Export from a replica, change the copy, import it on the primary: one transaction that
    // reaches every node.
    let work = tempfile::tempdir().unwrap();
    let copy = work.path().join("copy.db");
    let (ok, _, err) = ltxfs(&["export", "--url", &replica_url, "--name", DB, copy.to_str().unwrap()]);
    assert!(ok, "{err}");
    let conn = rusqlite::Connection::open(&copy).unwrap();
    assert_eq!(conn.query_row("SELECT v FROM t", [], |r| r.get::<_, String>(0)).unwrap(), "one");
    conn.execute_batch("PRAGMA journal_mode=DELETE; INSERT INTO t VALUES ('imported');").unwrap();
    drop(conn);
    let (ok, _, err) = ltxfs(&["import", "--url", &replica_url, "--name", DB, copy.to_str().unwrap()]);
    assert!(!ok, "import on a replica is refused");
    assert!(err.contains("409") || err.contains("primary"), "{err}");
    let (ok, out, err) = ltxfs(&["import", "--url", &primary_url, "--name", DB, copy.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("imported"), "{out}");
    cluster.wait_converged(DB);
    for n in &cluster.nodes {
        assert_eq!(sqlite3_ok(&n.db(DB), "SELECT count(*) FROM t; PRAGMA integrity_check;"), "2\nok\n", "{}", n.name);
    }
    // Export of a missing database fails and leaves no file.
    let missing = work.path().join("missing.db");
    let (ok, _, _) = ltxfs(&["export", "--url", &primary_url, "--name", "nope.db", missing.to_str().unwrap()]);
    assert!(!ok);
    assert!(!missing.exists());
    // Static lease: a replica cannot be promoted (not a candidate), and says so.
    let (ok, _, err) = ltxfs(&["promote", "--url", &replica_url]);
    assert!(!ok);
    assert!(err.contains("candidate"), "{err}");
}
