//! Failover figures on real processes (etcd lease, ttl 2 s, three `ltxfs` nodes), median of 5
//! runs each, printed (not asserted: timing is the measurement, not a test condition):
//! - failover after kill -9 of the primary: from the kill to another node accepting a write
//!   (the sqlite3 CLI polled on the other nodes); goal ≤ 3 s. LiteFS: ≈ 12 s.
//! - handoff: from `POST /promote` on a replica to that replica reporting itself writable in
//!   `/info` (polled every 1 ms); goal ≤ 100 ms.
//!
//! Run: `cargo test -p node --release --test failover_bench -- --ignored --nocapture`.
//! NEEDS FUSE, the sqlite3 CLI and etcd (see `failover_support`).

mod cluster_support;
mod failover_support;
mod support;

use std::time::{Duration, Instant};

use cluster_support::*;
use failover_support::*;

const RUNS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(v: &[Duration]) -> String {
    v.iter().map(|d| format!("{}", d.as_millis())).collect::<Vec<_>>().join(", ")
}

#[test]
#[ignore = "bench: cargo test -p node --release --test failover_bench -- --ignored --nocapture"]
fn failover_and_handoff_times() {
    let mut c = FailoverCluster::start(Options::default());
    let p = c.wait_primary(None);
    sqlite3_ok(&c.nodes[p].db(DB), "CREATE TABLE t(v INTEGER PRIMARY KEY);");
    let mut v = 0;

    let mut failovers = Vec::new();
    for _ in 0..RUNS {
        let p = c.wait_primary(None);
        c.wait_followers(p);
        v += 1;
        assert!(insert(&c.nodes[p], v));
        c.wait_converged(p);
        let killed = Instant::now();
        c.nodes[p].kill9();
        let mut q = None;
        wait_until("another node accepts a write", || {
            v += 1;
            q = (0..3).filter(|i| *i != p).find(|i| insert(&c.nodes[*i], v));
            q.is_some()
        });
        failovers.push(killed.elapsed());
        let q = q.unwrap();
        c.nodes[p].start();
        c.wait_followers(q);
        c.wait_converged(q);
    }

    let mut handoffs = Vec::new();
    for _ in 0..RUNS {
        let p = c.wait_primary(None);
        c.wait_followers(p);
        v += 1;
        assert!(insert(&c.nodes[p], v));
        c.wait_converged(p);
        let r = (p + 1) % 3;
        let url = format!("{}/promote", c.nodes[r].url);
        let started = Instant::now();
        let status = c.block_on(async move { reqwest::Client::new().post(url).send().await.expect("POST /promote").status() });
        assert!(status.is_success(), "promote: {status}");
        let deadline = started + Duration::from_secs(30);
        loop {
            if info(&c.nodes[r]).is_some_and(|i| i["role"] == "primary" && i["writable"] == true) {
                break;
            }
            assert!(Instant::now() < deadline, "the promoted node never became writable");
            std::thread::sleep(Duration::from_millis(1));
        }
        handoffs.push(started.elapsed());
        v += 1;
        assert!(insert(&c.nodes[r], v), "the new primary accepts a write");
    }
    let p = c.wait_primary(None);
    c.wait_converged(p);
    c.check_replicas_equal();
    c.check_single_writer();

    println!("failover after kill -9 (ttl 2 s), kill → write accepted elsewhere: median {} ms (runs: {} ms)", median(failovers.clone()).as_millis(), ms(&failovers));
    println!("handoff, POST /promote → new primary writable: median {} ms (runs: {} ms)", median(handoffs.clone()).as_millis(), ms(&handoffs));
}
