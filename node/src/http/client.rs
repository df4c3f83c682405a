//! The replica side of `/stream`: keep one connection to the primary the lease backend names,
//! reconnecting with exponential backoff (from `lease.reconnect-delay`, doubling up to 8×) and
//! switching as soon as the primary changes.
//!
//! It decides only when to dial and whom (the runtime's primary target); what to send is the
//! core's (its stream request goes out as soon as the connection is reported up). It refuses a
//! server that answers with another node id than the lease named (a stale or wrong URL).

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use ltxfs_core::ids::NodeId;
use ltxfs_core::msg::Message;
use tokio::sync::{mpsc, oneshot};

use super::{frame, peer_client, read_frames, NODE_ID_HEADER, PEER_QUEUE_MAX};
use crate::lease::parse_node_id;
use crate::runtime::RuntimeHandle;

/// Runs until the runtime stops.
pub async fn connect_to_primary(handle: RuntimeHandle) {
    let client = peer_client();
    let mut target_rx = handle.primary_target();
    let base = handle.config().reconnect_delay.max(Duration::from_millis(10));
    let mut backoff = base;
    loop {
        let target = target_rx.borrow_and_update().clone();
        let Some((peer, url)) = target else {
            tokio::select! {
                () = handle.stopped() => return,
                changed = target_rx.changed() => if changed.is_err() { return },
            }
            continue;
        };
        let outcome = tokio::select! {
            () = handle.stopped() => return,
            changed = target_rx.changed() => {
                if changed.is_err() { return }
                backoff = base;
                continue;
            }
            outcome = connect_once(&handle, &client, peer, &url) => outcome,
        };
        match outcome {
            Ok(()) => backoff = base,
            Err(e) => tracing::info!(%peer, %url, error = %e, retry_in = ?backoff, "cannot stream from the primary"),
        }
        tokio::select! {
            () = handle.stopped() => return,
            changed = target_rx.changed() => if changed.is_err() { return } else { backoff = base; continue },
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(base * 8);
    }
}

/// One connection's life. `Ok` if it was established (and later ended).
async fn connect_once(handle: &RuntimeHandle, client: &reqwest::Client, peer: NodeId, url: &str) -> Result<(), String> {
    let (tx, rx) = mpsc::channel::<Message>(PEER_QUEUE_MAX);
    let body = tokio_stream::wrappers::ReceiverStream::new(rx).map(|m| Ok::<Bytes, std::io::Error>(frame::encode(&m)));
    let mut req = client
        .post(format!("{}/stream", url.trim_end_matches('/')))
        .header(NODE_ID_HEADER, handle.config().node_id.to_string())
        .body(reqwest::Body::wrap_stream(body));
    if let Some(token) = &handle.config().auth_token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        return Err(format!("HTTP {status}: {}", text.trim()));
    }
    let answered = resp.headers().get(NODE_ID_HEADER).and_then(|v| v.to_str().ok()).and_then(parse_node_id);
    if answered != Some(peer) {
        return Err(format!("{url} answered as node {answered:?}, the lease names {peer}"));
    }
    let (closer_tx, closer_rx) = oneshot::channel();
    let conn = handle.peer_up(peer, tx, closer_tx);
    let mut guard = PeerDownGuard { handle: Some(handle.clone()), peer, conn };
    let reason = read_frames(handle, peer, conn, resp.bytes_stream(), closer_rx).await;
    tracing::info!(%peer, reason, "stream from the primary ended");
    if let Some(handle) = guard.handle.take() {
        handle.peer_down(peer, conn).await;
    }
    Ok(())
}

/// Reports the connection down even when `connect_once` is cancelled (the primary changed):
/// without it the runtime kept a dead connection as the peer's oldest and could never send to
/// that peer again — a deposed primary that became a replica of its former replica got nothing.
struct PeerDownGuard {
    handle: Option<RuntimeHandle>,
    peer: NodeId,
    conn: crate::runtime::peers::ConnId,
}

impl Drop for PeerDownGuard {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            let (peer, conn) = (self.peer, self.conn);
            tokio::spawn(async move { handle.peer_down(peer, conn).await });
        }
    }
}
