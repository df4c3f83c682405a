//! `lease.type: etcd`: the primary lease as one etcd key attached to an etcd lease.
//!
//! Client choice: etcd's JSON gRPC-gateway on the ordinary client port (`/v3/lease/grant`,
//! `/v3/kv/txn`, `/v3/lease/keepalive`, `/v3/lease/revoke`, `/v3/kv/range`), spoken with the
//! HTTP client the node already has. A gRPC client (etcd-client, tonic) would need `protoc` at
//! build time, and `cargo build` must work on a fresh machine without it; the gateway is part of
//! etcd 3.4 (Debian's etcd-server) and later.
//!
//! - Acquire: one transaction "if the key does not exist (and no handoff reserves it for another
//!   node), put {node-id, hostname, advertise-url} attached to a fresh lease of `ttl`". The epoch
//!   (fencing token) is the key's `create_revision`: etcd's revision counter only grows, so every
//!   acquisition gets a strictly larger epoch.
//! - Renew: a keepalive of that lease (TTL 0 in the answer = gone = `Lost`).
//! - Release: revoke the lease (the key goes with it; others may acquire at once).
//! - Handoff: if the key is still ours, put a reservation `<key>/handoff` = target node (on its
//!   own lease of `ttl`, so it expires if the target never comes), then revoke our lease.
//! - Watch: the key is polled every `poll_interval` (default 200 ms, below one heartbeat). A view
//!   is published only if etcd's revision in its answer is not older than that of the view
//!   published last: a poll still in flight when this node acquired the lease must not announce,
//!   after the acquisition, that nobody holds it (the core took that as its lease lost and
//!   stepped down 5 ms after a promotion; the old primary then took the lease back).
//!
//! It decides nothing about roles; errors reaching etcd are `LeaseResult::Error`.

use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ltxfs_core::ids::{Epoch, NodeId};
use ltxfs_core::node::LeaseResult;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{LeaseBackend, LeaseHolder, LeaseView};

/// `lease.etcd.*` plus the lease TTL and who this node is.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `lease.etcd.endpoints`: client URLs, tried in order.
    pub endpoints: Vec<String>,
    /// `lease.etcd.key`.
    pub key: String,
    /// `lease.ttl` (default 10 s; etcd rounds up to whole seconds).
    pub ttl: Duration,
    pub poll_interval: Duration,
    /// The value this node writes when it holds the lease.
    pub me: LeaseHolder,
}

/// Talks to etcd; see the module docs.
pub struct EtcdLease {
    config: EtcdConfig,
    http: reqwest::Client,
    /// The etcd lease id backing the epoch this node holds.
    held: Mutex<Option<(Epoch, i64)>>,
    view: watch::Sender<LeaseView>,
    /// etcd's revision when the published view was read (see the module docs).
    view_revision: Mutex<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd endpoint answered: {0}")]
    Unreachable(String),
    #[error("etcd answered something unexpected: {0}")]
    Protocol(String),
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

impl EtcdLease {
    /// Creates the backend and starts polling the key (on the current tokio runtime).
    pub fn start(config: EtcdConfig) -> std::sync::Arc<EtcdLease> {
        let (view, _) = watch::channel(LeaseView { dynamic: true, holder: None, epoch: Epoch::ZERO });
        let lease = std::sync::Arc::new(EtcdLease { config, http: reqwest::Client::new(), held: Mutex::new(None), view, view_revision: Mutex::new(0) });
        let weak = std::sync::Arc::downgrade(&lease);
        tokio::spawn(async move {
            loop {
                let Some(lease) = weak.upgrade() else { return };
                if let Ok((current, revision)) = lease.read_holder().await {
                    lease.publish(current, revision);
                }
                let interval = lease.config.poll_interval;
                drop(lease);
                tokio::time::sleep(interval).await;
            }
        });
        lease
    }

    fn key_b64(&self) -> String {
        B64.encode(self.config.key.as_bytes())
    }
    fn reservation_b64(&self) -> String {
        B64.encode(format!("{}/handoff", self.config.key).as_bytes())
    }

    /// Publishes what etcd said at `revision`, unless a view read at a later revision was
    /// published already.
    fn publish(&self, current: Option<(LeaseHolder, Epoch)>, revision: i64) {
        let mut published = self.view_revision.lock().unwrap_or_else(|p| p.into_inner());
        if revision < *published {
            return;
        }
        *published = revision;
        self.view.send_if_modified(|v| {
            let next = match current {
                Some((holder, epoch)) => LeaseView { dynamic: true, holder: Some(holder), epoch },
                None => LeaseView { dynamic: true, holder: None, epoch: v.epoch },
            };
            let changed = *v != next;
            *v = next;
            changed
        });
    }

    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let mut last = String::from("no endpoints configured");
        for endpoint in &self.config.endpoints {
            let url = format!("{}{path}", endpoint.trim_end_matches('/'));
            match self.http.post(&url).timeout(self.config.ttl.max(Duration::from_secs(1))).json(&body).send().await {
                Ok(resp) if resp.status().is_success() => return resp.json().await.map_err(|e| EtcdError::Protocol(e.to_string())),
                Ok(resp) => last = format!("{url}: HTTP {}", resp.status()),
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(EtcdError::Unreachable(last))
    }

    /// The key's holder and epoch, if it exists, and etcd's revision at the read.
    async fn read_holder(&self) -> Result<(Option<(LeaseHolder, Epoch)>, i64), EtcdError> {
        let resp = self.call("/v3/kv/range", json!({ "key": self.key_b64() })).await?;
        let revision = int(&resp["header"]["revision"]).ok_or_else(|| EtcdError::Protocol(format!("range: {resp}")))?;
        Ok((resp["kvs"].get(0).and_then(parse_kv), revision))
    }

    async fn grant(&self) -> Result<(i64, Duration), EtcdError> {
        let ttl_s = self.config.ttl.as_secs().max(1);
        let resp = self.call("/v3/lease/grant", json!({ "TTL": ttl_s.to_string() })).await?;
        let id = int(&resp["ID"]).ok_or_else(|| EtcdError::Protocol(format!("grant: {resp}")))?;
        let ttl = int(&resp["TTL"]).unwrap_or(ttl_s as i64).max(1) as u64;
        Ok((id, Duration::from_secs(ttl)))
    }

    async fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        let resp = self.call("/v3/lease/revoke", json!({ "ID": id.to_string() })).await;
        match resp {
            Ok(_) => Ok(()),
            // Revoking a lease that already expired is not an error for us.
            Err(EtcdError::Unreachable(e)) if e.contains("404") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn try_acquire(&self) -> Result<LeaseResult, EtcdError> {
        let (id, ttl) = self.grant().await?;
        let value = B64.encode(serde_json::to_vec(&self.config.me).map_err(|e| EtcdError::Protocol(e.to_string()))?);
        let key = self.key_b64();
        let put = json!({ "request_put": { "key": key, "value": value, "lease": id.to_string() } });
        let read = json!({ "request_range": { "key": key } });
        let absent = json!({ "key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0" });
        // 1. Free and not reserved for anyone.
        let unreserved = json!({ "key": self.reservation_b64(), "target": "VERSION", "result": "EQUAL", "version": "0" });
        let txn = json!({ "compare": [absent, unreserved], "success": [put], "failure": [read] });
        let mut resp = self.call("/v3/kv/txn", txn).await?;
        if resp["succeeded"] != json!(true) {
            // 2. Free and reserved for this node by a handoff: take it and drop the reservation.
            let mine = B64.encode(self.config.me.node_id.to_string().as_bytes());
            let reserved_for_me = json!({ "key": self.reservation_b64(), "target": "VALUE", "result": "EQUAL", "value": mine });
            let drop_reservation = json!({ "request_delete_range": { "key": self.reservation_b64() } });
            let txn = json!({ "compare": [absent, reserved_for_me], "success": [put, drop_reservation], "failure": [read] });
            resp = self.call("/v3/kv/txn", txn).await?;
        }
        if resp["succeeded"] == json!(true) {
            let revision = int(&resp["header"]["revision"]).ok_or_else(|| EtcdError::Protocol(format!("txn: {resp}")))?;
            let epoch = Epoch(revision as u64);
            *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some((epoch, id));
            self.publish(Some((self.config.me.clone(), epoch)), revision);
            return Ok(LeaseResult::Granted { epoch, ttl });
        }
        let _ = self.revoke(id).await;
        let current = resp["responses"].get(0).and_then(|r| r["response_range"]["kvs"].get(0)).and_then(parse_kv);
        let (holder, epoch) = match current {
            Some((h, e)) => (Some(h.node_id), e),
            None => (None, self.view.borrow().epoch),
        };
        Ok(LeaseResult::Denied { holder, epoch })
    }

    fn lease_id(&self, epoch: Epoch) -> Option<i64> {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).filter(|(e, _)| *e == epoch).map(|(_, id)| id)
    }

    async fn try_renew(&self, epoch: Epoch) -> Result<LeaseResult, EtcdError> {
        let Some(id) = self.lease_id(epoch) else { return Ok(LeaseResult::Lost) };
        let resp = self.call("/v3/lease/keepalive", json!({ "ID": id.to_string() })).await?;
        let ttl = int(&resp["result"]["TTL"]).unwrap_or(0);
        if ttl <= 0 {
            *self.held.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return Ok(LeaseResult::Lost);
        }
        Ok(LeaseResult::Granted { epoch, ttl: Duration::from_secs(ttl as u64) })
    }

    async fn try_release(&self, epoch: Epoch) -> Result<LeaseResult, EtcdError> {
        let Some(id) = self.lease_id(epoch) else { return Ok(LeaseResult::Lost) };
        self.revoke(id).await?;
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = None;
        // Publish what etcd says now, never a guess: a release after the lease expired (a
        // deposed primary stepping down late) must not announce "nobody holds it" while another
        // node does — that made the deposed node drop its new upstream and campaign.
        if let Ok((current, revision)) = self.read_holder().await {
            self.publish(current, revision);
        }
        Ok(LeaseResult::Released)
    }

    async fn try_handoff(&self, epoch: Epoch, to: NodeId) -> Result<LeaseResult, EtcdError> {
        if self.lease_id(epoch).is_none() {
            return Ok(LeaseResult::Lost);
        }
        let (reservation_lease, _) = self.grant().await?;
        let ours = json!({ "key": self.key_b64(), "target": "CREATE", "result": "EQUAL", "create_revision": epoch.0.to_string() });
        let reserve = json!({ "request_put": {
            "key": self.reservation_b64(),
            "value": B64.encode(to.to_string().as_bytes()),
            "lease": reservation_lease.to_string(),
        } });
        let resp = self.call("/v3/kv/txn", json!({ "compare": [ours], "success": [reserve], "failure": [] })).await?;
        if resp["succeeded"] != json!(true) {
            let _ = self.revoke(reservation_lease).await;
            return Ok(LeaseResult::Lost);
        }
        self.try_release(epoch).await
    }
}

fn parse_kv(kv: &Value) -> Option<(LeaseHolder, Epoch)> {
    let value = B64.decode(kv["value"].as_str()?).ok()?;
    let holder: LeaseHolder = serde_json::from_slice(&value).ok()?;
    let epoch = Epoch(u64::try_from(int(&kv["create_revision"])?).ok()?);
    Some((holder, epoch))
}

fn or_error(r: Result<LeaseResult, EtcdError>, what: &str) -> LeaseResult {
    r.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "etcd {what} failed");
        LeaseResult::Error
    })
}

impl LeaseBackend for EtcdLease {
    async fn acquire(&self) -> LeaseResult {
        or_error(self.try_acquire().await, "acquire")
    }
    async fn renew(&self, epoch: Epoch) -> LeaseResult {
        or_error(self.try_renew(epoch).await, "renew")
    }
    async fn release(&self, epoch: Epoch) -> LeaseResult {
        or_error(self.try_release(epoch).await, "release")
    }
    async fn handoff(&self, epoch: Epoch, to: NodeId) -> LeaseResult {
        or_error(self.try_handoff(epoch, to).await, "handoff")
    }
    fn watch(&self) -> watch::Receiver<LeaseView> {
        self.view.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_read_before_the_published_one_is_not_published() {
        let me = LeaseHolder { node_id: NodeId(7), hostname: "n7".into(), advertise_url: "http://127.0.0.1:1".into() };
        let config = EtcdConfig { endpoints: vec![], key: "k".into(), ttl: Duration::from_secs(10), poll_interval: Duration::from_secs(1), me: me.clone() };
        let (view, rx) = watch::channel(LeaseView { dynamic: true, holder: None, epoch: Epoch::ZERO });
        let lease = EtcdLease { config, http: reqwest::Client::new(), held: Mutex::new(None), view, view_revision: Mutex::new(0) };
        // Acquired at revision 12 ...
        lease.publish(Some((me.clone(), Epoch(12))), 12);
        // ... then a poll that etcd answered at revision 11 (before the acquisition) arrives.
        lease.publish(None, 11);
        assert_eq!(*rx.borrow(), LeaseView { dynamic: true, holder: Some(me.clone()), epoch: Epoch(12) });
        // A later answer is published, whatever it says.
        lease.publish(None, 13);
        assert_eq!(*rx.borrow(), LeaseView { dynamic: true, holder: None, epoch: Epoch(12) });
    }
}
