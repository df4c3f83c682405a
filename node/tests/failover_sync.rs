//! Synchronous replication (`replication.sync: 1`, `cluster-size: 3`, etcd lease ttl 2 s) on real
//! processes: a commit SQLite acknowledged survives kill -9 of the primary, and kill -9 of the
//! primary together with one replica — the new primary recovers from at least M − N = 2 nodes
//! (itself included) before it accepts a write, and until then it refuses writes.
//!
//! NEEDS FUSE, the sqlite3 CLI and etcd (see `failover_support`).

mod cluster_support;
mod failover_support;
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cluster_support::*;
use failover_support::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn sync_cluster() -> FailoverCluster {
    let c = FailoverCluster::start(Options { sync: 1, ..Options::default() });
    let p = c.wait_primary(None);
    sqlite3_ok(&c.nodes[p].db(DB), "CREATE TABLE t(v INTEGER PRIMARY KEY);");
    c
}

/// Every value in `acked` is a row on node `i`.
fn assert_all_on(c: &FailoverCluster, i: usize, acked: &[i64]) {
    let on = rows(&c.nodes[i]);
    let lost: Vec<_> = acked.iter().filter(|v| !on.contains(v)).collect();
    assert!(lost.is_empty(), "acknowledged rows missing on {}: {lost:?} ({} acknowledged)", NAMES[i], acked.len());
}

#[test]
fn kill9_of_the_primary_right_after_acknowledged_commits_loses_nothing() {
    let mut c = sync_cluster();
    let p = c.wait_primary(None);

    // A writer inserts as fast as SQLite acknowledges; the primary dies mid-stream.
    let db = c.nodes[p].db(DB);
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<(i64, bool)>>> = Arc::default();
    let writer = {
        let (stop, results) = (stop.clone(), results.clone());
        std::thread::spawn(move || {
            for v in 1.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let (ok, _, _) = sqlite3(&db, &format!("INSERT INTO t VALUES ({v});"));
                results.lock().unwrap().push((v, ok));
            }
        })
    };
    wait_until("30 acknowledged commits", || results.lock().unwrap().iter().filter(|r| r.1).count() >= 30);
    c.nodes[p].kill9();
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let acked: Vec<i64> = results.lock().unwrap().iter().filter(|r| r.1).map(|r| r.0).collect();

    let q = c.wait_primary(Some(p));
    assert_all_on(&c, q, &acked);
    assert!(insert(&c.nodes[q], 100_000), "the new primary accepts writes");

    c.nodes[p].start();
    c.wait_followers(q);
    c.wait_converged(q);
    let rows = c.check_replicas_equal();
    assert!(acked.iter().chain([&100_000]).all(|v| rows.contains(v)), "every acknowledged row on every node");
    c.check_single_writer();
}

#[test]
fn kill9_of_the_primary_and_its_acking_replica_loses_nothing_and_the_survivor_waits_for_recovery() {
    let mut c = sync_cluster();
    let p = c.wait_primary(None);
    let (r1, s) = ((p + 1) % 3, (p + 2) % 3);
    for v in 1..=5 {
        assert!(insert(&c.nodes[p], v));
    }
    c.wait_converged(p);

    // Stop s (cleanly): the next commits are acknowledged by r1 alone (sync: 1). Then the
    // primary and r1 crash together and s comes back: it missed acknowledged commits.
    c.nodes[s].stop();
    for v in 6..=25 {
        assert!(insert(&c.nodes[p], v), "commit {v} acknowledged with one replica ack");
    }
    let acked: Vec<i64> = (1..=25).collect();
    let acked_txid = c.nodes[p].info()["positions"][DB]["txid"].as_u64().unwrap();
    c.nodes[p].kill9();
    c.nodes[r1].kill9();
    c.nodes[s].start();

    // The survivor takes the lease but has heard only itself: it must not accept writes.
    wait_until("the survivor recovers and waits for 2 nodes", || {
        info(&c.nodes[s]).is_some_and(|v| v["role"] == "recovering" && v["recovery"]["have"] == 1 && v["recovery"]["need"] == 2)
    });
    let (ok, _, err) = sqlite3(&c.nodes[s].db(DB), "INSERT INTO t VALUES (999);");
    assert!(!ok, "a recovering primary that heard 1 of the 2 nodes it needs accepted a write");
    assert!(err.contains("readonly") || err.contains("read-only"), "clear SQLite error: {err}");
    let waiting = info(&c.nodes[s]).unwrap();
    assert_eq!(waiting["writable"], false);
    let survivor_txid = waiting["positions"][DB]["txid"].as_u64().unwrap();
    assert!(survivor_txid < acked_txid, "the survivor must lack acknowledged commits ({survivor_txid} vs {acked_txid}) or this test proves nothing");

    // Bring back the replica that acknowledged: the survivor recovers from it, then writes.
    let restarted_wall_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    c.nodes[r1].start();
    let q = c.wait_primary(None);
    assert_eq!(q, s, "the survivor keeps the lease");
    assert_all_on(&c, s, &acked);
    assert!(insert(&c.nodes[s], 100_000), "the recovered primary accepts writes");
    let epoch = c.epoch(s);
    let early: Vec<_> = event_log(&c.nodes[s].data)
        .into_iter()
        .filter(|e| e["type"] == "commit" && e["epoch"].as_u64() == Some(epoch))
        .filter(|e| e["acceptedWallMs"].as_i64().unwrap() < restarted_wall_ms)
        .collect();
    assert!(early.is_empty(), "the survivor committed before a second node could answer: {early:?}");

    c.nodes[p].start();
    c.wait_followers(s);
    c.wait_converged(s);
    let rows = c.check_replicas_equal();
    assert!(acked.iter().chain([&100_000]).all(|v| rows.contains(v)), "every acknowledged row on every node: {rows:?}");
    assert!(!rows.contains(&999), "the refused row does not exist");
    c.check_single_writer();
}

/// The replicas stop acknowledging (SIGSTOP): a commit's acks time out and its outcome is
/// unknown. SQLite must get an error (never a success), yet the transaction is in the
/// primary's LTX history and will reach the replicas when they resume — so the primary's own
/// database must keep it too, or its local reads would differ from every replica's. Rollback
/// modes: the journal operation that commits is carried out, then failed to SQLite. WAL mode:
/// the commit frame's write fails, and once the writer let go of its locks the node folds the
/// WAL (that commit included) into the database as an apply would — the node stays up.
#[test]
fn a_commit_with_an_unknown_outcome_fails_in_sqlite_and_the_primary_stays_equal_to_its_replicas() {
    for wal in [false, true] {
        let c = sync_cluster();
        let p = c.wait_primary(None);
        if wal {
            assert_eq!(sqlite3_ok(&c.nodes[p].db(DB), "PRAGMA journal_mode=WAL;").trim(), "wal");
        }
        assert!(insert(&c.nodes[p], 1));
        c.wait_converged(p);
        // An application connection stays open on the primary (so SQLite never recovers the
        // WAL from the file on its own): it must end up reading what the cluster has.
        let app = rusqlite::Connection::open(c.nodes[p].db(DB)).unwrap();
        let replicas: Vec<usize> = (0..3).filter(|&i| i != p).collect();
        let pids: Vec<Pid> = replicas.iter().map(|&i| Pid::from_raw(c.nodes[i].pid().unwrap())).collect();
        for pid in &pids {
            kill(*pid, Signal::SIGSTOP).unwrap();
        }
        let (ok, _, err) = sqlite3(&c.nodes[p].db(DB), "INSERT INTO t VALUES (2);");
        for pid in &pids {
            kill(*pid, Signal::SIGCONT).unwrap();
        }
        assert!(!ok, "a commit no replica acknowledged must not succeed in SQLite");
        eprintln!("wal={wal}: SQLite's error for the unacknowledged commit: {}", err.trim());

        // Whatever became of it, every node ends up with the same rows, the primary included.
        assert!(c.nodes[p].is_running() && !c.nodes[p].log().contains("exiting"), "the primary stays up:\n{}", c.nodes[p].log());
        if wal {
            assert!(c.nodes[p].log().contains("WAL commit outcome unknown"), "the WAL path was taken:\n{}", c.nodes[p].log());
        }
        let q = c.wait_primary(None);
        assert!(insert(&c.nodes[q], 3), "writes go on");
        c.wait_converged(q);
        let rows = c.check_replicas_equal();
        assert!(rows.contains(&1) && rows.contains(&3), "{rows:?}");
        if wal {
            assert!(c.nodes[p].log().contains("now in SQLite's view too"), "settled:\n{}", c.nodes[p].log());
        }
        let mut stmt = app.prepare("SELECT v FROM t ORDER BY v").unwrap();
        let seen: std::collections::BTreeSet<i64> = stmt.query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(seen, rows, "the primary's open connection reads what every node has");
        drop(stmt);
        drop(app);
        c.check_single_writer();
    }
}
