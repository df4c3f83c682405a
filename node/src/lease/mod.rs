//! Lease backends: the outside services that grant the primary lease and its epoch (fencing
//! token). The core decides when to acquire, renew, release or hand off and what a reply means;
//! a backend only carries those requests to the service and reports its view of the holder.
//!
//! # Implementing a backend (e.g. Consul)
//! A backend implements [`LeaseBackend`]:
//! - `acquire` takes the lease if nobody holds it (or it is reserved for this node by a handoff)
//!   and answers `Granted { epoch, ttl }` with a *fresh, strictly larger* epoch; `Denied` with
//!   the current holder otherwise. With Consul: create a session with that TTL, `KV acquire` the
//!   key with the session and a value naming this node; the epoch must come from the service and
//!   increase on every acquisition (Consul: the key's `ModifyIndex` after the acquire — never the
//!   session's `LockIndex` alone, which restarts when the key is deleted).
//! - `renew(epoch)` extends the lease still held at `epoch` (`Lost` if it is gone); the core
//!   measures the deadline from when it *sent* the request, so a slow reply is safe.
//! - `release(epoch)` gives it up so another candidate can take it at once (clean shutdown).
//! - `handoff(epoch, to)` gives it up and reserves it for `to` (it must be able to `acquire`
//!   before anyone else; the reservation should expire after about one TTL).
//! - `watch()` publishes the current [`LeaseView`]: who holds the lease, at which epoch, and the
//!   holder's advertise URL (replicas connect there). Publish within one heartbeat of a change.
//! - Errors reaching the service are `LeaseResult::Error`: never guess.
//!
//! Never does: decide roles, write anything to the data directory, or talk to peers.

pub mod etcd;
pub mod static_lease;

use std::future::Future;

use ltxfs_core::ids::{Epoch, NodeId};
use ltxfs_core::node::LeaseResult;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The holder of the lease as stored in the lease service (the value of the lease key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LeaseHolder {
    /// Node id as 16 hex digits.
    #[serde(with = "node_id_hex")]
    pub node_id: NodeId,
    pub hostname: String,
    pub advertise_url: String,
}

/// What the lease service currently says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseView {
    /// True for services that grant epochs (the core is told via `LeaseObserved`); false for
    /// the static lease, where the core already knows the primary from its config.
    pub dynamic: bool,
    pub holder: Option<LeaseHolder>,
    /// The holder's epoch, or the last epoch granted when nobody holds it.
    pub epoch: Epoch,
}

/// A lease service. See the module docs for the contract.
pub trait LeaseBackend: Send + Sync + 'static {
    fn acquire(&self) -> impl Future<Output = LeaseResult> + Send;
    fn renew(&self, epoch: Epoch) -> impl Future<Output = LeaseResult> + Send;
    fn release(&self, epoch: Epoch) -> impl Future<Output = LeaseResult> + Send;
    fn handoff(&self, epoch: Epoch, to: NodeId) -> impl Future<Output = LeaseResult> + Send;
    fn watch(&self) -> watch::Receiver<LeaseView>;
}

mod node_id_hex {
    use ltxfs_core::ids::NodeId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &NodeId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NodeId, D::Error> {
        let text = String::deserialize(d)?;
        u64::from_str_radix(&text, 16).map(NodeId).map_err(serde::de::Error::custom)
    }
}

/// Parses a node id printed as 16 hex digits (as `NodeId`'s `Display` prints it).
pub fn parse_node_id(text: &str) -> Option<NodeId> {
    (text.len() == 16).then(|| u64::from_str_radix(text, 16).ok().map(NodeId)).flatten()
}
