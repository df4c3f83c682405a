//! kill -9 of the primary (etcd lease, ttl 2 s, async replication) on real processes: a candidate
//! becomes primary; the old primary, restarted, becomes a replica, and the transactions only it
//! had are discarded by snapshot — logged and counted, never silent.
//!
//! NEEDS FUSE, the sqlite3 CLI and etcd (see `failover_support`).

mod cluster_support;
mod failover_support;
mod support;

use cluster_support::*;
use failover_support::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn signal(n: &ProcNode, sig: Signal) {
    kill(Pid::from_raw(n.pid().expect("running")), sig).expect("signal");
}

#[test]
fn kill9_of_the_primary_fails_over_and_the_old_primary_rejoins_as_a_replica() {
    let mut c = FailoverCluster::start(Options::default());
    let p = c.wait_primary(None);
    sqlite3_ok(&c.nodes[p].db(DB), "CREATE TABLE t(v INTEGER PRIMARY KEY);");
    for v in 1..=10 {
        assert!(insert(&c.nodes[p], v), "insert {v} on the primary");
    }
    c.wait_converged(p);
    let old_epoch = c.epoch(p);

    // Freeze both replicas so the next commits exist only on the primary, then crash it.
    let replicas: Vec<usize> = (0..3).filter(|i| *i != p).collect();
    for &r in &replicas {
        signal(&c.nodes[r], Signal::SIGSTOP);
    }
    for v in 11..=13 {
        assert!(insert(&c.nodes[p], v), "async commit {v} is acknowledged locally");
    }
    let unreplicated = c.nodes[p].pos(DB).unwrap();
    c.nodes[p].kill9();
    for &r in &replicas {
        signal(&c.nodes[r], Signal::SIGCONT);
    }

    let q = c.wait_primary(Some(p));
    assert!(c.epoch(q) > old_epoch, "the new primary holds a newer epoch");
    for v in 100..=104 {
        assert!(insert(&c.nodes[q], v), "insert {v} on the new primary");
    }

    c.nodes[p].start();
    c.wait_followers(q);
    c.wait_converged(q);
    let info = info(&c.nodes[p]).unwrap();
    assert_eq!(info["role"], "replica", "the old primary rejoined as a replica");
    let rows = c.check_replicas_equal();
    assert!((1..=10).chain(100..=104).all(|v| rows.contains(&v)), "every row replicated before the crash and after it: {rows:?}");
    // Frames already in the frozen replicas' socket buffers may still be applied after SIGCONT
    // (before the lease expires), so the crashed primary's last rows survive everywhere or
    // nowhere — and when they are gone, the old primary logged and counted the replaced history.
    let survived = (11..=13).filter(|v| rows.contains(v)).count();
    assert!(survived == 0 || survived == 3, "all or none of one primary's commits: {rows:?}");
    let replaced: Vec<_> = event_log(&c.nodes[p].data).into_iter().filter(|e| e["type"] == "historyReplaced").collect();
    if survived == 0 {
        assert!(c.nodes[p].metric("ltxfs_history_resets_total") >= 1.0, "history reset counted");
        assert_eq!(replaced.len(), 1, "one history replacement logged");
        let old_txid = u64::from_str_radix(unreplicated.split('/').next().unwrap(), 16).unwrap();
        assert_eq!(replaced[0]["oldTxID"].as_u64(), Some(old_txid), "the log names the discarded position");
        assert!(c.nodes[p].log().contains("discarded"), "the warning is in the process log");
        assert!(c.nodes[q].metric("ltxfs_diverged_peers_reset_total") >= 1.0, "the new primary counted the diverged peer");
    } else {
        assert!(replaced.is_empty(), "nothing was discarded, nothing may be reported: {replaced:?}");
    }
    c.check_single_writer();
}
