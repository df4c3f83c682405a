//! `lease.type: static`: the candidate is the permanent primary (the core's
//! `LeaseMode::Static`, epoch 1, no expiry); every other node follows the configured
//! `lease.hostname` / `lease.advertise-url`. No failover, no handoff (LiteFS's `StaticLeaser`).
//!
//! It never grants anything: the core in static mode sends no lease requests, so every request
//! is answered `Error`. It only publishes who the primary is.

use ltxfs_core::ids::{Epoch, NodeId};
use ltxfs_core::node::LeaseResult;
use tokio::sync::watch;

use super::{LeaseBackend, LeaseHolder, LeaseView};

pub struct StaticLease {
    view: watch::Sender<LeaseView>,
}

impl StaticLease {
    /// `primary` is the permanent primary (this node when it is the candidate).
    pub fn new(primary: LeaseHolder) -> StaticLease {
        let (view, _) = watch::channel(LeaseView { dynamic: false, holder: Some(primary), epoch: Epoch(1) });
        StaticLease { view }
    }
}

impl LeaseBackend for StaticLease {
    async fn acquire(&self) -> LeaseResult {
        LeaseResult::Error
    }
    async fn renew(&self, _epoch: Epoch) -> LeaseResult {
        LeaseResult::Error
    }
    async fn release(&self, _epoch: Epoch) -> LeaseResult {
        LeaseResult::Released
    }
    async fn handoff(&self, _epoch: Epoch, _to: NodeId) -> LeaseResult {
        LeaseResult::Error
    }
    fn watch(&self) -> watch::Receiver<LeaseView> {
        self.view.subscribe()
    }
}
