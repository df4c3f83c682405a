//! Two writer processes on the primary while readers query both replicas: every row arrives,
//! counts match, and no reader ever sees "database disk image is malformed" or "locking
//! protocol" (replica applies take SQLite's locks only for the local write).
//!
//! NEEDS FUSE (`/dev/fuse`, fusermount3) and the sqlite3 CLI: fails, never skips, without them.

mod cluster_support;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cluster_support::*;
use rusqlite::Connection;

const DB: &str = "app.db";
const ROWS_PER_WRITER: usize = 150;

fn writers_and_readers(mode: &str) {
    let mut cluster = Cluster::new();
    cluster.start_all();
    sqlite3_ok(&cluster.primary().db(DB), &format!("PRAGMA journal_mode={mode}; CREATE TABLE t(id INTEGER PRIMARY KEY, w TEXT, v TEXT);"));
    cluster.wait_converged(DB);

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut readers = Vec::new();
    for replica in &cluster.nodes[1..] {
        let path = replica.db(DB);
        let (stop, errors, reads) = (stop.clone(), errors.clone(), reads.clone());
        readers.push(std::thread::spawn(move || {
            let conn = Connection::open(&path).unwrap();
            conn.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            let mut last = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let r = conn.query_row("SELECT count(*), count(DISTINCT v) FROM t", [], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)));
                match r {
                    Ok((n, distinct)) => {
                        if n < last || n != distinct {
                            errors.lock().unwrap().push(format!("inconsistent read: {n} rows, {distinct} distinct, previously {last}"));
                        }
                        last = n;
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.lock().unwrap().push(e.to_string()),
                }
                // Throttle (not synchronisation): two cores are shared by three nodes, two
                // writers and these readers.
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }));
    }

    let writers: Vec<_> = ["a", "b"]
        .iter()
        .map(|w| {
            let script: String = (0..ROWS_PER_WRITER).map(|i| format!("INSERT INTO t(w, v) VALUES ('{w}', '{w}{i}');\n")).collect();
            let mut child = Command::new("sqlite3")
                .arg("-cmd")
                .arg(".timeout 20000")
                .arg(cluster.primary().db(DB))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("sqlite3 writer");
            let mut stdin = child.stdin.take().unwrap();
            std::thread::spawn(move || std::io::Write::write_all(&mut stdin, script.as_bytes()).unwrap());
            child
        })
        .collect();
    for w in writers {
        let out = w.wait_with_output().unwrap();
        assert!(out.status.success(), "writer failed: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stderr.is_empty(), "writer errors: {}", String::from_utf8_lossy(&out.stderr));
    }
    cluster.wait_converged(DB);
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let errors = errors.lock().unwrap().clone();
    let bad: Vec<&String> = errors.iter().filter(|e| e.contains("malformed") || e.contains("locking protocol") || e.contains("inconsistent")).collect();
    assert!(bad.is_empty(), "readers saw: {bad:?}");
    assert!(errors.is_empty(), "readers failed: {errors:?}");
    assert!(reads.load(Ordering::Relaxed) > 0, "readers made progress");

    let total = 2 * ROWS_PER_WRITER;
    let query = "SELECT count(*), count(DISTINCT v) FROM t; PRAGMA integrity_check;";
    let expected = format!("{total}|{total}\nok\n");
    for node in &cluster.nodes {
        assert_eq!(sqlite3_ok(&node.db(DB), query), expected, "{}", node.name);
    }
    for n in &mut cluster.nodes {
        n.stop();
    }
}

#[test]
fn two_writers_and_replica_readers_delete_mode() {
    writers_and_readers("DELETE");
}

#[test]
fn two_writers_and_replica_readers_wal_mode() {
    writers_and_readers("WAL");
}
