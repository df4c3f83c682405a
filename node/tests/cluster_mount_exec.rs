//! `ltxfs mount -- CMD` on a replica, with real processes: the command runs only once the node is
//! ready (connected to the primary and its initial catch-up applied), so a query it makes sees
//! every row the primary had when the replica connected — never an empty or missing database —
//! and `ltxfs` exits with the command's exit code. Also the transfer commands around a running
//! node: `ltxfs import` / `ltxfs export` stream a multi-MB database through the real HTTP API
//! byte for byte, and draw no progress bar on a stderr that is not a terminal.
//!
//! NEEDS FUSE (`/dev/fuse`, fusermount3) and the sqlite3 CLI: fails, never skips, without them.

mod cluster_support;

use std::process::{Child, Command, Output, Stdio};

use cluster_support::*;

const DB: &str = "app.db";

/// `ltxfs mount --config <node's> -- sh -c SCRIPT`, stdout piped.
fn spawn_with_command(node: &ProcNode, script: &str) -> Child {
    require_tools();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(node.root.join("ltxfs.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_ltxfs"))
        .arg("mount")
        .arg("--config")
        .arg(&node.config)
        .args(["--", "sh", "-c", script])
        .env("LTXFS_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn ltxfs")
}

fn finish(child: Child, node: &ProcNode) -> Output {
    let out = child.wait_with_output().expect("wait for ltxfs");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(node.mnt.to_str().unwrap()), "{} unmounted after its command exited", node.name);
    out
}

/// Rows in many transactions plus a few large ones, so the catch-up is many LTX files and
/// several MB (a snapshot for a new replica).
fn write_rows(db: &std::path::Path, from: u32, count: u32) {
    let mut sql = String::new();
    for i in from..from + count {
        sql.push_str(&format!("INSERT INTO t VALUES ({i}, randomblob({}));", if i % 50 == 0 { 200_000 } else { 100 }));
    }
    sqlite3_ok(db, &sql);
}

#[test]
fn replica_command_sees_the_primarys_rows_and_its_exit_code_is_ltxfs_exit_code() {
    let mut cluster = Cluster::new();
    cluster.nodes[0].start();
    cluster.nodes[1].start();
    let db = cluster.primary().db(DB);
    sqlite3_ok(&db, "CREATE TABLE t(i INTEGER PRIMARY KEY, b BLOB);");
    write_rows(&db, 1, 300);
    let want = cluster.primary().pos(DB).unwrap();
    wait_until("replica1 caught up", || cluster.nodes[1].pos(DB).as_deref() == Some(want.as_str()));

    // A new replica (nothing on disk: caught up by snapshot) queries as soon as it may.
    let r2 = &cluster.nodes[2];
    let script = format!("sqlite3 {} 'SELECT count(*) FROM t;' && exit 3", r2.db(DB).display());
    let out = finish(spawn_with_command(r2, &script), r2);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(count(&db), "300");
    assert_eq!(stdout, "300\n", "the command saw the caught-up database; log:\n{}", r2.log());
    assert_eq!(out.status.code(), Some(3), "ltxfs exits with the command's code; log:\n{}", r2.log());

    // A replica with an older copy (incremental catch-up) after the primary moved on.
    cluster.nodes[1].stop();
    write_rows(&db, 301, 300);
    let r1 = &cluster.nodes[1];
    let script = format!("sqlite3 {} 'SELECT count(*) FROM t; PRAGMA integrity_check;'", r1.db(DB).display());
    let out = finish(spawn_with_command(r1, &script), r1);
    assert_eq!(count(&db), "600");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "600\nok\n", "log:\n{}", r1.log());
    assert_eq!(out.status.code(), Some(0), "log:\n{}", r1.log());
    for n in &mut cluster.nodes {
        n.stop();
    }
}

#[test]
fn replica_command_waits_for_an_absent_primary_and_says_so() {
    let mut cluster = Cluster::new();
    cluster.nodes[0].start();
    let db = cluster.primary().db(DB);
    sqlite3_ok(&db, "CREATE TABLE t(i INTEGER PRIMARY KEY, b BLOB);");
    write_rows(&db, 1, 100);
    cluster.nodes[0].stop();

    // The primary is down: the replica mounts and waits, saying what for.
    let r1 = &cluster.nodes[1];
    let script = format!("sqlite3 {} 'SELECT count(*) FROM t;'", r1.db(DB).display());
    let child = spawn_with_command(r1, &script);
    wait_until("the replica logs what it waits for", || r1.log().contains("not ready yet: connecting to the primary primary"));
    assert!(!r1.log().contains("command started"), "no command before the node is ready; log:\n{}", r1.log());

    let (primary, replicas) = cluster.nodes.split_at_mut(1);
    primary[0].start();
    let r1 = &replicas[0];
    let out = finish(child, r1);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "100\n", "log:\n{}", r1.log());
    assert_eq!(out.status.code(), Some(0), "log:\n{}", r1.log());
    cluster.nodes[0].stop();
}

#[test]
fn import_and_export_round_trip_byte_for_byte_without_progress_off_a_terminal() {
    let mut cluster = Cluster::new();
    cluster.nodes[0].start();
    cluster.nodes[1].start();
    let r1 = &cluster.nodes[1];
    wait_until("replica1 connected", || r1.info()["connectedToPrimary"] == serde_json::Value::Bool(true));

    // A local database of several MB (many chunks of the streamed body).
    let work = tempfile::tempdir().unwrap();
    let original = work.path().join("original.db");
    let conn = rusqlite::Connection::open(&original).unwrap();
    conn.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(i INTEGER PRIMARY KEY, b BLOB);").unwrap();
    for i in 0..40 {
        conn.execute("INSERT INTO t VALUES (?1, randomblob(100000))", [i]).unwrap();
    }
    drop(conn);
    let image = std::fs::read(&original).unwrap();
    assert!(image.len() > 3_000_000, "{} bytes", image.len());

    let ltxfs = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ltxfs")).args(args).stderr(Stdio::piped()).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let primary_url = cluster.nodes[0].url.clone();
    let (ok, out, err) = ltxfs(&["import", "--url", &primary_url, "--name", DB, original.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("imported {} bytes", image.len())), "{out}");
    assert_eq!(err, "", "no progress output on a stderr that is not a terminal");
    let want = cluster.primary().pos(DB).unwrap();
    wait_until("replica1 has the import", || cluster.nodes[1].pos(DB).as_deref() == Some(want.as_str()));

    for node in &cluster.nodes[..2] {
        let copy = work.path().join(format!("{}.db", node.name));
        let (ok, out, err) = ltxfs(&["export", "--url", &node.url, "--name", DB, copy.to_str().unwrap()]);
        assert!(ok, "{}: {err}", node.name);
        assert_eq!(err, "", "no progress output on a stderr that is not a terminal");
        assert!(out.contains(&format!("({} bytes)", image.len())), "{out}");
        assert!(std::fs::read(&copy).unwrap() == image, "the export from {} is the imported file byte for byte", node.name);
        assert!(!work.path().join(format!(".{}.db.ltxfs-tmp", node.name)).exists(), "no temp file left");
        assert_eq!(sqlite3_ok(&node.db(DB), "SELECT count(*) FROM t; PRAGMA integrity_check;"), "40\nok\n");
    }
    for n in &mut cluster.nodes {
        n.stop();
    }
}

fn count(db: &std::path::Path) -> String {
    sqlite3_ok(db, "SELECT count(*) FROM t;").trim().to_string()
}
