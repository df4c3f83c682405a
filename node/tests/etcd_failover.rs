//! Runtimes on a real etcd lease: one candidate becomes primary, the other replicates from the
//! holder's advertise URL; on clean shutdown (lease revoked) the replica takes over at a higher
//! epoch with every acknowledged commit.

mod support;

use std::sync::Arc;
use std::time::Duration;

use ltxfs_core::ids::{ClusterId, NodeId};
use ltxfs_core::node::LeaseMode;
use node::lease::etcd::{EtcdConfig, EtcdLease};
use node::lease::LeaseHolder;
use node::runtime::CommitOutcome;
use support::etcd::Etcd;
use support::{bind, count_rows, members, App, NodeSpec, TestNode};

const DB: &str = "app.db";

async fn start(dir: &tempfile::TempDir, etcd: &Etcd, id: u64) -> TestNode {
    let spec = NodeSpec { id: NodeId(id), cluster: ClusterId(5), members: members(2), data_dir: dir.path().join(format!("n{id}")), auth_token: None };
    let (listener, url) = bind().await;
    let lease = EtcdLease::start(EtcdConfig {
        endpoints: vec![etcd.url.clone()],
        key: "ltxfs/failover/primary".into(),
        ttl: Duration::from_secs(2),
        poll_interval: Duration::from_millis(50),
        me: LeaseHolder { node_id: NodeId(id), hostname: format!("node-{id}"), advertise_url: url.clone() },
    });
    let mode = LeaseMode::Dynamic { candidate: true, clock_margin: Duration::from_millis(500) };
    TestNode::start_with(&spec, mode, Arc::<EtcdLease>::clone(&lease), listener, url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_takes_over_when_the_primary_releases_the_lease() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let a = start(&dir, &etcd, 1).await;
    a.wait_until("node 1 writable", |s| s.writable).await;
    let b = start(&dir, &etcd, 2).await;
    b.wait_until("node 2 follows node 1", |s| s.connected_to_primary && s.role == "replica").await;
    let e1 = a.status().epoch;

    let mut app = App::new(dir.path(), DB);
    app.exec(&a, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)").await;
    for i in 0..10 {
        let outcome = app.exec(&a, &format!("INSERT INTO t(v) VALUES ({i})")).await;
        assert!(matches!(outcome, CommitOutcome::Committed { .. }), "{outcome:?}");
    }
    b.wait_txid(DB, 11).await;

    a.stop().await; // releases the lease in etcd
    b.wait_until("node 2 writable", |s| s.writable).await;
    let e2 = b.status().epoch;
    assert!(e2 > e1, "new epoch {e2} > old {e1}");
    assert_eq!(b.status().positions[DB].txid, 11, "no acknowledged commit lost");
    assert_eq!(count_rows(&b.database_path(DB), "t"), 10);
    b.stop().await;
}
