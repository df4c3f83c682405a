//! A change of primary is visible everywhere within one heartbeat (issue 6): on every other
//! node `.primary` names the new primary, `/info` reports it (and a live connection to it), and
//! `/events` streams a `primaryChange` naming it — after a handoff (`ltxfs promote`) and after a
//! kill -9 failover. The heartbeat is set to 2 s so that anything that waited for a heartbeat
//! (or a slower poll) would miss the bound, while the push/watch path takes a few hundred ms;
//! the measured delays are printed.
//!
//! The "change" instant is when the new primary's own `/events` stream reported its new role
//! (received by this test), so the bound covers lease watch, reconnect and status refresh on
//! the followers.
//!
//! NEEDS FUSE, the sqlite3 CLI and etcd (see `failover_support`).

mod cluster_support;
mod failover_support;
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use cluster_support::*;
use failover_support::*;

const HEARTBEAT_MS: u64 = 2000;

type Feed = Arc<Mutex<Vec<(Instant, Value)>>>;

/// Subscribes to node `i`'s `/events` and records every line with the instant it arrived;
/// returns once the initial status line is in.
fn subscribe(c: &FailoverCluster, i: usize) -> Feed {
    let url = format!("{}/events", c.nodes[i].url);
    let feed: Feed = Arc::default();
    let out = feed.clone();
    c.rt.spawn(async move {
        let Ok(mut resp) = reqwest::Client::new().get(url).send().await else { return };
        let mut buf: Vec<u8> = Vec::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let v: Value = serde_json::from_slice(&line).expect("/events line is JSON");
                out.lock().unwrap().push((Instant::now(), v));
            }
        }
    });
    wait_until("the /events subscription is live", || feed.lock().unwrap().iter().any(|(_, v)| v["type"] == "init"));
    feed
}

/// Polls `cond` every 5 ms until it holds; panics if `deadline` passes first. Returns when it held.
fn by(deadline: Instant, what: &str, mut cond: impl FnMut() -> bool) -> Instant {
    loop {
        if cond() {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{what}: not reflected within one heartbeat ({HEARTBEAT_MS} ms)");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// When `feed` reported its node primary (or recovering) under an epoch above `old_epoch`.
fn primary_since(feed: &Feed, old_epoch: u64) -> Option<Instant> {
    feed.lock().unwrap().iter().find_map(|(t, v)| {
        let primary = v["type"] == "role" && (v["role"] == "primary" || v["role"] == "recovering");
        (primary && v["epoch"].as_u64().is_some_and(|e| e > old_epoch)).then_some(*t)
    })
}

/// Waits for node `r`'s own `/events` to report it primary under an epoch above `old_epoch`;
/// returns when that line arrived.
fn became_primary(feed: &Feed, old_epoch: u64) -> Instant {
    let mut at = None;
    wait_until("the new primary reports its role on /events", || {
        at = primary_since(feed, old_epoch);
        at.is_some()
    });
    at.unwrap()
}

/// On follower `i`: `.primary`, `/info` and `/events` name `host` by `deadline`.
fn check_follower(c: &FailoverCluster, i: usize, feed: &Feed, host: &str, changed: Instant) {
    let n = &c.nodes[i];
    let deadline = changed + Duration::from_millis(HEARTBEAT_MS);
    let want = format!("{host}\n");
    let file = by(deadline, &format!("{}: .primary = {host}", n.name), || {
        std::fs::read_to_string(n.mnt.join(".primary")).is_ok_and(|s| s == want)
    });
    let info_at = by(deadline, &format!("{}: /info names {host}", n.name), || {
        info(n).is_some_and(|v| v["primary"]["hostname"] == host && v["connectedToPrimary"] == true && v["role"] == "replica")
    });
    let event = by(deadline, &format!("{}: /events primaryChange to {host}", n.name), || {
        feed.lock().unwrap().iter().any(|(t, v)| *t >= changed && v["type"] == "primaryChange" && v["primary"]["hostname"] == host)
    });
    let ms = |t: Instant| t.saturating_duration_since(changed).as_millis();
    eprintln!("{}: .primary after {} ms, /info after {} ms, /events after {} ms", n.name, ms(file), ms(info_at), ms(event));
}

/// A cluster with one committed row everywhere, every node's `/events` subscribed; returns
/// it with the primary's index, the feeds and the primary's epoch.
fn start() -> (FailoverCluster, usize, Vec<Feed>, u64) {
    let c = FailoverCluster::start(Options { heartbeat_ms: HEARTBEAT_MS, ..Options::default() });
    let p = c.wait_primary(None);
    sqlite3_ok(&c.nodes[p].db(DB), "CREATE TABLE t(v INTEGER PRIMARY KEY);");
    assert!(insert(&c.nodes[p], 1));
    c.wait_converged(p);
    let feeds: Vec<Feed> = (0..3).map(|i| subscribe(&c, i)).collect();
    let old_epoch = c.epoch(p);
    (c, p, feeds, old_epoch)
}

#[test]
fn a_handoff_is_visible_on_every_node_within_one_heartbeat() {
    let (c, p, feeds, old_epoch) = start();
    let r = (p + 1) % 3;

    c.promote(r);
    let changed = became_primary(&feeds[r], old_epoch);

    for i in (0..3).filter(|&i| i != r) {
        check_follower(&c, i, &feeds[i], NAMES[r], changed);
    }
    // The new primary itself: no `.primary`, `/info` says primary.
    assert!(!c.nodes[r].mnt.join(".primary").exists(), "the primary has no .primary file");
    assert_eq!(info(&c.nodes[r]).expect("/info")["role"], "primary");
    assert!(insert(&c.nodes[r], 2), "the new primary takes writes");
    c.wait_converged(r);
    c.check_single_writer();
}

#[test]
fn a_crash_failover_is_visible_on_the_survivor_within_one_heartbeat() {
    let (mut c, p, feeds, old_epoch) = start();

    c.nodes[p].kill9();
    let mut changed = None;
    let mut r = p;
    wait_until("a survivor reports itself primary on /events", || {
        for i in (0..3).filter(|&i| i != p) {
            if let Some(t) = primary_since(&feeds[i], old_epoch) {
                changed = Some(t);
                r = i;
                return true;
            }
        }
        false
    });
    let changed = changed.unwrap();
    let survivor = (0..3).find(|&i| i != p && i != r).unwrap();
    check_follower(&c, survivor, &feeds[survivor], NAMES[r], changed);
    let r = c.wait_primary(Some(p));
    assert!(insert(&c.nodes[r], 2), "the new primary takes writes");
    c.check_single_writer();
}
