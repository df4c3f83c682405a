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

/// The primary (with failpoints, `ltx-write` among them: its background LTX writer) and
/// replica1 running; a WAL/NORMAL connection to the primary's database with table `t`.
fn primary_and_replica1_with_writer_failpoint() -> (Cluster, std::path::PathBuf, rusqlite::Connection) {
    let mut cluster = Cluster::new();
    let fp = cluster.nodes[0].root.join("failpoints");
    std::fs::create_dir_all(&fp).unwrap();
    cluster.nodes[0].env.push(("LTXFS_FAILPOINT_DIR".into(), fp.to_str().unwrap().into()));
    cluster.nodes[0].start();
    cluster.nodes[1].start();
    let conn = rusqlite::Connection::open(cluster.primary().db(DB)).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);").unwrap();
    (cluster, fp, conn)
}

/// Goal: a replica whose position lies inside a merged LTX file of the primary (WAL commits
/// queued together share one file) catches up incrementally — no snapshot — even after the
/// primary restarted (the positions inside the file are recorded with it). Method: the
/// primary's background LTX writer is held at a failpoint; 4 commits reach replica1, which then
/// stops; 4 more commit into the same group; the writer is released (one file for all 8 plus the
/// one that woke it); the primary restarts; replica1 comes back.
#[test]
fn a_replica_inside_a_merged_ltx_file_catches_up_after_the_primary_restarts() {
    let (mut cluster, fp, conn) = primary_and_replica1_with_writer_failpoint();
    let insert = |v: &str| conn.execute("INSERT INTO t(v) VALUES (?1)", [v]).unwrap();
    insert("before");
    let r1 = &cluster.nodes[1];
    let want = cluster.primary().pos(DB).unwrap();
    wait_until("replica1 caught up", || r1.pos(DB).as_deref() == Some(want.as_str()));
    let start_txid = u64::from_str_radix(&want[..16], 16).unwrap();

    std::fs::write(fp.join("ltx-write.arm"), b"").unwrap();
    insert("wakes the writer");
    wait_until("the writer holds at its failpoint", || fp.join("ltx-write.reached").exists());
    for i in 0..3 {
        insert(&format!("seen by replica1 {i}"));
    }
    let inside = cluster.primary().pos(DB).unwrap();
    wait_until("replica1 has the first commits of the group", || r1.pos(DB).as_deref() == Some(inside.as_str()));
    cluster.nodes[1].stop();
    for i in 0..4 {
        insert(&format!("after replica1 left {i}"));
    }
    std::fs::write(fp.join("ltx-write.release"), b"").unwrap();
    drop(conn); // the last connection checkpoints; the node syncs every LTX first
    let end = cluster.primary().pos(DB).unwrap();
    let end_txid = u64::from_str_radix(&end[..16], 16).unwrap();
    let ltx_dir = cluster.nodes[0].data.join("dbs").join(DB).join("ltx");
    let merged = ltxfs_core::ltx::file_name(start_txid + 1, end_txid);
    wait_until("the group's file is written", || ltx_dir.join(&merged).exists());

    cluster.nodes[0].stop();
    cluster.nodes[0].start();
    cluster.nodes[1].start();
    let r1 = &cluster.nodes[1];
    wait_until("replica1 caught up again", || r1.pos(DB).as_deref() == Some(end.as_str()));
    assert_eq!(cluster.primary().pos(DB).as_deref(), Some(end.as_str()), "the primary restarted at the same position");
    assert_eq!(r1.metric("ltxfs_snapshots_received_total"), 0.0, "caught up from inside the merged file, no snapshot");
    assert_eq!(sqlite3_ok(&r1.db(DB), "SELECT count(*) FROM t; PRAGMA integrity_check;"), "9\nok\n");
    for n in &mut cluster.nodes {
        n.stop();
    }
}

/// Goal: after a kill -9 of the primary, the LTX it rebuilds from the WAL for the commits whose
/// LTX were still in memory records the positions inside it, so a replica standing at one of them
/// catches up incrementally. Method: the primary's LTX writer is held; 3 commits reach replica1,
/// which stops; 3 more commit; kill -9 with the connection open; restart (one LTX rebuilt for
/// all 6); replica1 comes back.
#[test]
fn a_replica_inside_an_ltx_rebuilt_from_the_wal_catches_up_without_a_snapshot() {
    let (mut cluster, fp, conn) = primary_and_replica1_with_writer_failpoint();
    let insert = |v: &str| conn.execute("INSERT INTO t(v) VALUES (?1)", [v]).unwrap();
    insert("before");
    let before = cluster.primary().pos(DB).unwrap();
    let before_txid = u64::from_str_radix(&before[..16], 16).unwrap();
    let ltx_dir = cluster.nodes[0].data.join("dbs").join(DB).join("ltx");
    wait_until("the last LTX is written", || ltx_dir.join(ltxfs_core::ltx::file_name(before_txid, before_txid)).exists());

    std::fs::write(fp.join("ltx-write.arm"), b"").unwrap();
    insert("wakes the writer");
    wait_until("the writer holds at its failpoint", || fp.join("ltx-write.reached").exists());
    insert("seen by replica1 1");
    insert("seen by replica1 2");
    let inside = cluster.primary().pos(DB).unwrap();
    let r1 = &cluster.nodes[1];
    wait_until("replica1 has them", || r1.pos(DB).as_deref() == Some(inside.as_str()));
    cluster.nodes[1].stop();
    for i in 0..3 {
        insert(&format!("after replica1 left {i}"));
    }
    let end = cluster.primary().pos(DB).unwrap();
    cluster.nodes[0].kill9();
    drop(conn);
    std::fs::write(fp.join("ltx-write.release"), b"").unwrap(); // for nobody: the process is gone
    cluster.nodes[0].start();
    assert!(cluster.nodes[0].log().contains("rebuilt the LTX of WAL commits"), "log:\n{}", cluster.nodes[0].log());
    assert_eq!(cluster.primary().pos(DB).as_deref(), Some(end.as_str()), "rebuilt to the same position");
    let end_txid = u64::from_str_radix(&end[..16], 16).unwrap();
    assert!(ltx_dir.join(ltxfs_core::ltx::file_name(before_txid + 1, end_txid)).exists(), "one LTX rebuilt for the 6 commits");
    cluster.nodes[1].start();
    let r1 = &cluster.nodes[1];
    wait_until("replica1 caught up", || r1.pos(DB).as_deref() == Some(end.as_str()));
    assert_eq!(r1.metric("ltxfs_snapshots_received_total"), 0.0, "caught up from inside the rebuilt LTX, no snapshot");
    assert_eq!(sqlite3_ok(&r1.db(DB), "SELECT count(*) FROM t; PRAGMA integrity_check;"), "7\nok\n");
    for n in &mut cluster.nodes {
        n.stop();
    }
}

/// The LTX of a WAL-mode commit is written without its own fsync once SQLite's frames are
/// durable in the WAL (one fsync per commit instead of two). A power cut may then lose those
/// LTX files — emulated here after a kill -9 by tearing every LTX file not yet synced (they
/// still carry the owner's execute bit, the node's "unsynced" mark; the newest may not even
/// have been written: they wait in memory for a background writer). At restart the node must rebuild
/// them from the WAL to exactly the position it had (same TXID, same checksum), and the
/// replicas, which received the originals, must carry on without a history reset. A WAL
/// restart in between (a new WAL generation) is covered too: the node syncs the LTX files of
/// the old generation before SQLite overwrites its frames, and fsyncs the new generation's
/// first commit.
#[test]
fn wal_backed_ltx_files_lost_to_a_power_cut_are_rebuilt_from_the_wal() {
    power_cut_after_wal_commits(true);
}

/// The same within one WAL generation: the rebuilt LTX starts right after the last durable one.
#[test]
fn wal_backed_ltx_files_lost_within_one_wal_generation_are_rebuilt() {
    power_cut_after_wal_commits(false);
}

fn power_cut_after_wal_commits(restart_wal: bool) {
    use std::os::unix::fs::MetadataExt;
    let mut cluster = Cluster::new();
    cluster.start_all();
    let db = cluster.primary().db(DB);
    // One connection for the whole run: the last close of a WAL database deletes the WAL
    // (and with it the node syncs every LTX), which is not what a power cut interrupts.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);").unwrap();
    for i in 0..10 {
        conn.execute("INSERT INTO t(v) VALUES ('first generation ' || ?1)", [i]).unwrap();
    }
    if restart_wal {
        // A complete checkpoint; the next writer restarts the WAL: a new WAL generation.
        conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())).unwrap();
    }
    for i in 0..10 {
        conn.execute("INSERT INTO t(v) VALUES ('second generation ' || ?1)", [i]).unwrap();
    }
    let before = cluster.wait_converged(DB);

    cluster.nodes[0].kill9();
    drop(conn);
    let ltx_dir = cluster.nodes[0].data.join("dbs").join(DB).join("ltx");
    let (mut torn, mut durable) = (0, 0);
    for entry in std::fs::read_dir(&ltx_dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if !name.ends_with(".ltx") {
            continue;
        }
        if entry.metadata().unwrap().mode() & UNSYNCED_MARK != 0 {
            std::fs::OpenOptions::new().write(true).open(entry.path()).unwrap().set_len(0).unwrap();
            torn += 1;
        } else {
            // A file may hold several transactions (WAL commits queued together share one).
            let (min, max) = ltxfs_core::ltx::parse_file_name(&name).unwrap();
            durable += max - min + 1;
        }
    }
    let txid = u64::from_str_radix(&before[..16], 16).unwrap();
    eprintln!("torn: {torn}, durable: {durable}, last TXID {txid}");
    // After a WAL restart the generation's first commit is fsynced (it anchors the rebuild).
    let expect = if restart_wal { 9 } else { 20 };
    assert_eq!(txid - durable, expect, "the LTX of the last commits were not synced yet");
    assert!(torn <= expect);

    cluster.nodes[0].start();
    let primary = cluster.primary();
    assert_eq!(primary.pos(DB).as_deref(), Some(before.as_str()), "the rebuilt LTX ends where the lost ones did");
    assert!(primary.log().contains("rebuilt the LTX of WAL commits"), "log:\n{}", primary.log());
    let out = sqlite3_ok(&primary.db(DB), "PRAGMA integrity_check; SELECT count(*) FROM t;");
    assert_eq!(out, "ok\n20\n");
    for r in &cluster.nodes[1..] {
        wait_until(&format!("{} reconnected", r.name), || r.info()["connectedToPrimary"] == serde_json::Value::Bool(true));
    }
    sqlite3_ok(&primary.db(DB), "INSERT INTO t(v) VALUES ('after the power cut');");
    cluster.wait_converged(DB);
    for r in &cluster.nodes[1..] {
        assert_eq!(r.metric("ltxfs_history_resets_total"), 0.0, "{} kept its history", r.name);
        assert_eq!(sqlite3_ok(&r.db(DB), "PRAGMA integrity_check; SELECT count(*) FROM t;"), "ok\n21\n", "{}", r.name);
    }
}

/// The owner's execute bit on an LTX file: written, not synced yet (`node::runtime::disk`).
const UNSYNCED_MARK: u32 = 0o100;

/// synchronous=NORMAL: neither SQLite nor the node syncs the WAL per commit (as raw SQLite),
/// so a power cut may take the last commits' WAL frames along with their LTX files —
/// emulated after a kill -9 by tearing the unsynced LTX files and cutting the WAL right after
/// the generation's first (fsynced) commit. The primary must come back consistent at that
/// commit (SQLite's own NORMAL semantics: recent commits may roll back), and the replicas,
/// which had received the lost commits, are reset to its history by snapshot (counted), not
/// left diverged.
#[test]
fn a_power_cut_under_synchronous_normal_rolls_back_consistently() {
    use std::os::unix::fs::MetadataExt;
    let mut cluster = Cluster::new();
    cluster.start_all();
    let db = cluster.primary().db(DB);
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);").unwrap();
    let anchor = cluster.wait_converged(DB);
    for i in 0..20 {
        conn.execute("INSERT INTO t(v) VALUES ('lost ' || ?1)", [i]).unwrap();
    }
    cluster.wait_converged(DB);

    cluster.nodes[0].kill9();
    drop(conn);
    let dbdir = cluster.nodes[0].data.join("dbs").join(DB);
    let mut anchor_end = None;
    for entry in std::fs::read_dir(dbdir.join("ltx")).unwrap() {
        let entry = entry.unwrap();
        if !entry.file_name().to_str().unwrap().ends_with(".ltx") {
            continue;
        }
        if entry.metadata().unwrap().mode() & UNSYNCED_MARK != 0 {
            std::fs::OpenOptions::new().write(true).open(entry.path()).unwrap().set_len(0).unwrap();
        } else {
            let bytes = std::fs::read(entry.path()).unwrap();
            let header = ltxfs_core::ltx::Header::from_bytes(bytes[..ltxfs_core::ltx::HEADER_SIZE].try_into().unwrap()).unwrap();
            if header.wal_offset > 0 {
                anchor_end = Some((header.wal_offset + header.wal_size) as u64);
            }
        }
    }
    let anchor_end = anchor_end.expect("the WAL generation's first commit has a durable LTX");
    std::fs::OpenOptions::new().write(true).open(dbdir.join("wal")).unwrap().set_len(anchor_end).unwrap();

    cluster.nodes[0].start();
    let primary = cluster.primary();
    assert_eq!(primary.pos(DB).as_deref(), Some(anchor.as_str()), "back at the last commit whose frames survived");
    assert_eq!(sqlite3_ok(&primary.db(DB), "PRAGMA integrity_check; SELECT count(*) FROM t;"), "ok\n0\n");
    sqlite3_ok(&primary.db(DB), "INSERT INTO t(v) VALUES ('after the power cut');");
    cluster.wait_converged(DB);
    for r in &cluster.nodes[1..] {
        assert!(r.metric("ltxfs_history_resets_total") >= 1.0, "{}: its lost commits were replaced by snapshot, counted", r.name);
    }
    for r in &cluster.nodes[1..] {
        assert_eq!(sqlite3_ok(&r.db(DB), "PRAGMA integrity_check; SELECT v FROM t;"), "ok\nafter the power cut\n", "{}", r.name);
    }
}
