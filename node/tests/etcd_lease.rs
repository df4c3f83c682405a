//! The etcd lease backend against a real etcd: acquire, deny, renew, release, loss on expiry,
//! handoff reservation, strictly increasing epochs, and the watch.

mod support;

use std::time::Duration;

use ltxfs_core::ids::{Epoch, NodeId};
use ltxfs_core::node::LeaseResult;
use node::lease::etcd::{EtcdConfig, EtcdLease};
use node::lease::{LeaseBackend, LeaseHolder};
use support::etcd::Etcd;

fn backend(etcd: &Etcd, id: u64) -> std::sync::Arc<EtcdLease> {
    EtcdLease::start(EtcdConfig {
        endpoints: vec!["http://127.0.0.1:9".into(), etcd.url.clone()], // the first one is down
        key: "ltxfs/test/primary".into(),
        ttl: Duration::from_secs(2),
        poll_interval: Duration::from_millis(50),
        me: LeaseHolder { node_id: NodeId(id), hostname: format!("node-{id}"), advertise_url: format!("http://127.0.0.1:{}", 20000 + id) },
    })
}

fn granted(r: LeaseResult) -> Epoch {
    match r {
        LeaseResult::Granted { epoch, ttl } => {
            assert!(ttl >= Duration::from_secs(2), "{ttl:?}");
            epoch
        }
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_lease_grants_fences_and_hands_off() {
    let etcd = Etcd::start().await;
    let (a, b, c) = (backend(&etcd, 1), backend(&etcd, 2), backend(&etcd, 3));

    // Acquire, and a second candidate is denied with the holder named.
    let e1 = granted(a.acquire().await);
    assert!(e1 > Epoch::ZERO);
    assert_eq!(b.acquire().await, LeaseResult::Denied { holder: Some(NodeId(1)), epoch: e1 });
    assert_eq!(granted(a.renew(e1).await), e1);
    // The watch names the holder and its advertise URL.
    let mut w = b.watch();
    let view = w.wait_for(|v| v.holder.is_some()).await.unwrap().clone();
    assert_eq!(view.holder.as_ref().map(|h| h.node_id), Some(NodeId(1)));
    assert_eq!(view.holder.unwrap().advertise_url, "http://127.0.0.1:20001");
    assert_eq!(view.epoch, e1);

    // Release: another candidate takes it at once, at a higher epoch.
    assert_eq!(a.release(e1).await, LeaseResult::Released);
    assert_eq!(a.renew(e1).await, LeaseResult::Lost);
    let e2 = granted(b.acquire().await);
    assert!(e2 > e1, "{e2} > {e1}");

    // Expiry: b stops renewing; once etcd drops the key, a acquires and b's renewal is lost.
    let deadline = tokio::time::Instant::now() + support::WAIT_MAX;
    let e3 = loop {
        match a.acquire().await {
            LeaseResult::Granted { epoch, .. } => break epoch,
            // `None`: the key expired between the two compare-and-set attempts of one acquire
            // (the first saw b's key, the second found it gone but not reserved for a).
            LeaseResult::Denied { holder, .. } => assert!(matches!(holder, Some(NodeId(2)) | None), "{holder:?}"),
            other => panic!("{other:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "b's lease never expired");
        // etcd expires leases on its own clock; ask again shortly.
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(e3 > e2);
    assert_eq!(b.renew(e2).await, LeaseResult::Lost);

    // Handoff a → b: c cannot take the reserved lease, b can.
    assert_eq!(a.handoff(e3, NodeId(2)).await, LeaseResult::Released);
    assert!(matches!(c.acquire().await, LeaseResult::Denied { holder: None, .. }));
    let e4 = granted(b.acquire().await);
    assert!(e4 > e3);
    // A stale holder cannot hand off or release what it no longer holds.
    assert_eq!(a.handoff(e3, NodeId(3)).await, LeaseResult::Lost);
    assert_eq!(a.release(e3).await, LeaseResult::Lost);
    // A third node's watch comes to name b at the new epoch. (Waiting for "b" alone could
    // match the view of b's first tenure, e2, if c's poller had not read etcd since then.)
    let mut w = c.watch();
    let view = tokio::time::timeout(support::WAIT_MAX, w.wait_for(|v| v.holder.as_ref().is_some_and(|h| h.node_id == NodeId(2)) && v.epoch >= e4))
        .await
        .expect("c's watch never named b at the handoff's epoch")
        .unwrap()
        .clone();
    assert_eq!(view.epoch, e4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_is_an_error_not_a_guess() {
    let lease = EtcdLease::start(EtcdConfig {
        endpoints: vec!["http://127.0.0.1:9".into()],
        key: "k".into(),
        ttl: Duration::from_secs(1),
        poll_interval: Duration::from_millis(50),
        me: LeaseHolder { node_id: NodeId(1), hostname: "n".into(), advertise_url: "http://x".into() },
    });
    assert_eq!(lease.acquire().await, LeaseResult::Error);
}
