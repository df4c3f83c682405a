//! Partition of the primary from etcd only (its proxy to etcd is cut; node ↔ node traffic is
//! untouched), etcd lease ttl 2 s, on real processes: from its lease deadline on the primary
//! commits nothing (its writer's statements fail with SQLite's read-only error), another node
//! takes over at a newer epoch, no replica accepts a frame of the old epoch, and once the
//! partition heals the old primary rejoins as a replica of the new one.
//!
//! NEEDS FUSE, the sqlite3 CLI and etcd (see `failover_support`).

mod cluster_support;
mod failover_support;
mod support;


use cluster_support::*;
use failover_support::*;
use ltxfs_core::ids::{DbName, Epoch};
use ltxfs_core::msg::Message;

#[test]
fn a_primary_cut_from_etcd_stops_writing_and_rejoins_as_a_replica() {
    let c = FailoverCluster::start(Options::default());
    let p = c.wait_primary(None);
    sqlite3_ok(&c.nodes[p].db(DB), "CREATE TABLE t(v INTEGER PRIMARY KEY);");
    for v in 1..=5 {
        assert!(insert(&c.nodes[p], v));
    }
    c.wait_converged(p);
    let old_epoch = c.epoch(p);

    // A writer keeps inserting on the primary through the partition.
    let db = c.nodes[p].db(DB);
    let writer = Writer::start(db);
    wait_until("the writer committed on the primary", || writer.attempts().iter().any(|r| r.1));

    c.proxies[p].cut();
    let q = c.wait_primary(Some(p));
    // Attempts that started after another node became writable; the one in flight may have
    // started before.
    let from = writer.attempts().len() + 1;
    wait_until("the writer failed on the partitioned primary", || {
        writer.attempts().iter().skip(from).filter(|r| !r.1).count() >= 3
    });
    assert!(c.epoch(q) > old_epoch, "the new primary holds a newer epoch");
    {
        let info = info(&c.nodes[p]).expect("the partitioned node still answers");
        assert_eq!(info["writable"], false, "the partitioned primary is not writable: {info}");
    }

    // A frame of the old epoch, as the partitioned primary could still send it, is refused.
    let r = (0..3).find(|i| *i != p && *i != q).unwrap();
    wait_until("the third node follows the new primary", || {
        info(&c.nodes[r]).is_some_and(|v| v["connectedToPrimary"] == true && v["primary"]["hostname"] == NAMES[q])
    });
    let before = c.nodes[r].metric("ltxfs_stale_frames_rejected_total");
    let db_name = DbName::new(DB).unwrap();
    let stale = [
        Message::Heartbeat { epoch: Epoch(old_epoch), wall_ms: 0 },
        Message::Ltx { epoch: Epoch(old_epoch), db: db_name, offset: 0, total_bytes: 4, bytes: vec![0; 4] },
    ];
    for msg in stale {
        assert_eq!(c.send_frame_as(p, r, msg), 200);
    }
    wait_until("stale frames counted", || c.nodes[r].metric("ltxfs_stale_frames_rejected_total") >= before + 1.0);

    // Heal the partition: the old primary follows the new one.
    c.proxies[p].restore();
    c.wait_followers(q);
    let results = writer.stop();
    let late: Vec<_> = results[from..].to_vec();
    assert!(late.iter().all(|r| !r.1), "no write succeeds on the partitioned primary once another node writes: {late:?}");
    assert!(
        late.iter().all(|r| r.2.contains("readonly") || r.2.contains("read-only")),
        "the partitioned primary's SQLite error says it is read-only: {late:?}"
    );
    assert_eq!(info(&c.nodes[p]).unwrap()["role"], "replica", "the old primary rejoined as a replica");

    assert!(insert(&c.nodes[q], 5000), "the new primary accepts writes");
    c.wait_converged(q);
    let rows = c.check_replicas_equal();
    assert!((1..=5).chain([5000]).all(|v| rows.contains(&v)), "rows replicated before the partition and after it: {rows:?}");
    for (v, ok, _) in &results {
        if !ok {
            assert!(!rows.contains(v), "refused row {v} exists");
        }
    }
    c.check_single_writer();
}
