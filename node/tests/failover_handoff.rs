//! Handoff on real processes (etcd lease, ttl 2 s): `ltxfs promote --url U` on a replica moves
//! the lease there with zero lost commits — every row the old primary acknowledged, including
//! those of a writer running through the handoff, is on the new primary — and writes then
//! succeed there. The handoff time (request → new primary writable) is printed.
//!
//! NEEDS FUSE, the sqlite3 CLI and etcd (see `failover_support`).

mod cluster_support;
mod failover_support;
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_support::*;
use failover_support::*;

#[test]
fn promote_moves_the_lease_to_a_replica_with_no_lost_commit() {
    handoff(false);
}

#[test]
fn promote_during_concurrent_writes_loses_no_acknowledged_row() {
    handoff(true);
}

fn handoff(concurrent: bool) {
    let c = FailoverCluster::start(Options::default());
    let p = c.wait_primary(None);
    sqlite3_ok(&c.nodes[p].db(DB), "CREATE TABLE t(v INTEGER PRIMARY KEY);");
    for v in 1..=20 {
        assert!(insert(&c.nodes[p], v));
    }
    let old_epoch = c.epoch(p);
    let r = (p + 1) % 3;

    // A writer keeps inserting on the old primary through the handoff.
    let db = c.nodes[p].db(DB);
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<(i64, bool, String)>>> = Arc::default();
    let writer = {
        let (stop, results) = (stop.clone(), results.clone());
        std::thread::spawn(move || {
            for v in 1000.. {
                if stop.load(Ordering::SeqCst) || (!concurrent && v > 1000) {
                    break;
                }
                let (ok, _, err) = sqlite3(&db, &format!("INSERT INTO t VALUES ({v});"));
                results.lock().unwrap().push((v, ok, err));
                std::thread::sleep(Duration::from_millis(5)); // pacing, not synchronisation
            }
        })
    };
    wait_until("the writer committed on the primary", || results.lock().unwrap().iter().any(|r| r.1));

    let started = Instant::now();
    c.promote(r);
    let mut handoff = Duration::ZERO;
    wait_until("the promoted replica is a writable primary", || {
        let ok = info(&c.nodes[r]).is_some_and(|v| v["role"] == "primary" && v["writable"] == true);
        handoff = started.elapsed();
        ok
    });
    eprintln!("handoff: {} ms (ltxfs promote → new primary writable, /info polled every 20 ms)", handoff.as_millis());
    assert!(c.epoch(r) > old_epoch, "the new primary holds a newer epoch");

    // The old primary now refuses the writer and follows the new one.
    if concurrent {
        let attempts = results.lock().unwrap().len();
        wait_until("the old primary refused the writer", || results.lock().unwrap().iter().skip(attempts + 1).any(|r| !r.1));
    } else {
        let (ok, _, err) = sqlite3(&c.nodes[p].db(DB), "INSERT INTO t VALUES (999);");
        assert!(!ok && (err.contains("readonly") || err.contains("read-only")), "the old primary refuses writes: {err}");
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    c.wait_followers(r);
    assert_eq!(info(&c.nodes[p]).unwrap()["role"], "replica");

    let acked: Vec<i64> = (1..=20).chain(results.lock().unwrap().iter().filter(|r| r.1).map(|r| r.0)).collect();
    let on_new = rows(&c.nodes[r]);
    let lost: Vec<_> = acked.iter().filter(|v| !on_new.contains(v)).collect();
    assert!(lost.is_empty(), "acknowledged rows missing on the new primary: {lost:?}");

    for v in 5000..5005 {
        assert!(insert(&c.nodes[r], v), "insert {v} on the new primary");
    }
    c.wait_converged(r);
    let rows = c.check_replicas_equal();
    assert!((5000..5005).all(|v| rows.contains(&v)));
    for (v, ok, _) in results.lock().unwrap().iter() {
        if !ok {
            assert!(!rows.contains(v), "refused row {v} exists");
        }
    }
    c.check_single_writer();
}

/// A transaction open on the primary when the lease moves away leaves a hot journal behind
/// (its writes are refused from then on, so SQLite can neither finish nor undo it). Readers
/// on the old primary — now a replica that may never receive another transaction — must not
/// stumble on it: the node rolls it back as soon as no connection holds a lock on the
/// database, without waiting for an apply.
#[test]
fn a_transaction_interrupted_by_a_handoff_does_not_break_reads_on_the_old_primary() {
    let c = FailoverCluster::start(Options::default());
    let p = c.wait_primary(None);
    sqlite3_ok(&c.nodes[p].db(DB), "CREATE TABLE t(v INTEGER PRIMARY KEY); CREATE TABLE big(x TEXT);");
    for v in 1..=20 {
        assert!(insert(&c.nodes[p], v));
    }
    c.wait_converged(p);
    let old_epoch = c.epoch(p);

    // An open write transaction on the primary: the journal exists with SQLite's header.
    let conn = rusqlite::Connection::open(c.nodes[p].db(DB)).unwrap();
    conn.execute_batch("PRAGMA cache_size = 1; BEGIN IMMEDIATE;").unwrap();
    for v in 100..400 {
        conn.execute("INSERT INTO big VALUES (printf('%.500c', 'x') || ?1)", [v]).unwrap();
    }
    let journal = c.nodes[p].mnt.join(format!("{DB}-journal"));
    assert!(journal.exists(), "the open transaction has a journal");

    let r = (p + 1) % 3;
    c.promote(r);
    c.wait_writable(r);
    assert!(c.epoch(r) > old_epoch);
    c.wait_followers(r);

    // The interrupted transaction cannot commit any more; its connection goes away.
    let commit = conn.execute_batch("COMMIT;");
    assert!(commit.is_err(), "a commit after the lease moved away must fail");
    drop(conn);

    // No transaction is sent after the handoff: the old primary gets no apply, yet its readers
    // see the last committed state.
    wait_until("reads on the old primary succeed", || sqlite3(&c.nodes[p].db(DB), "SELECT count(*) FROM t;").0);
    assert_eq!(sqlite3_ok(&c.nodes[p].db(DB), "SELECT count(*) FROM t;").trim(), "20");
    assert_eq!(sqlite3_ok(&c.nodes[p].db(DB), "PRAGMA integrity_check;"), "ok\n");
    assert_eq!(c.nodes[p].pos(DB), c.nodes[r].pos(DB), "no transaction was applied or lost");
    c.check_single_writer();
}

/// WAL mode: the old primary's WAL still holds committed frames SQLite has not checkpointed
/// when the lease moves; as a replica it must apply the new primary's transactions on top of
/// them, never lose them (every row readable, integrity ok, same rows everywhere).
#[test]
fn wal_mode_handoff_keeps_the_old_primarys_uncheckpointed_frames() {
    let c = FailoverCluster::start(Options::default());
    let p = c.wait_primary(None);
    let db = c.nodes[p].db(DB);
    // An application connection stays open through the handoff: SQLite neither checkpoints
    // nor deletes the WAL while it is, so the frames are still there when the node steps down.
    let app = rusqlite::Connection::open(&db).unwrap();
    app.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(v INTEGER PRIMARY KEY); CREATE TABLE big(x TEXT);").unwrap();
    for v in 1..=20 {
        app.execute("INSERT INTO t VALUES (?1)", [v]).unwrap();
    }
    // Several pages, all still in the WAL (auto-checkpoint is at 1000 pages).
    app.execute_batch("INSERT INTO big SELECT printf('%.3000c', 'y') FROM t;").unwrap();
    c.wait_converged(p);
    assert!(std::fs::metadata(c.nodes[p].data.join("dbs").join(DB).join("wal")).unwrap().len() > 32 * 1024, "the WAL holds the frames");
    let old_epoch = c.epoch(p);

    let r = (p + 1) % 3;
    c.promote(r);
    c.wait_writable(r);
    assert!(c.epoch(r) > old_epoch);
    c.wait_followers(r);
    for v in 21..=40 {
        assert!(insert(&c.nodes[r], v), "insert {v} on the new primary");
    }
    sqlite3_ok(&c.nodes[r].db(DB), "UPDATE big SET x = x || 'z';");
    c.wait_converged(r);
    // The application's connection on the old primary reads the same as everyone.
    let n: i64 = app.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 40, "the old primary's open connection sees every row");
    drop(app);
    let rows = c.check_replicas_equal();
    assert_eq!(rows, (1..=40).collect(), "every row on every node");
    for n in &c.nodes {
        assert_eq!(sqlite3_ok(&n.db(DB), "SELECT count(*), sum(length(x)) FROM big;").trim(), "20|60020", "{}", n.name);
    }
    c.check_single_writer();
}
