//! The replica side of `/stream`: keep one connection to the primary the lease backend names,
//! reconnecting with exponential backoff (from `lease.reconnect-delay`, doubling up to 8×) and
//! switching as soon as the primary changes. It speaks HTTP/2 with prior knowledge (hyper) over
//! whatever byte stream its [`Dialer`] opens, and closes a connection whose peer stops answering
//! HTTP/2 PINGs ([`transport::keepalive`]): a partition or a crashed primary that sent no reset
//! must not leave the replica waiting on a dead stream forever.
//!
//! It decides only when to dial and whom (the runtime's primary target); what to send is the
//! core's (its stream request goes out as soon as the connection is reported up). It refuses a
//! server that answers with another node id than the lease named (a stale or wrong URL).

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, Uri};
use bytes::Bytes;
use futures_util::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ltxfs_core::ids::NodeId;
use ltxfs_core::msg::Message;
use tokio::sync::{mpsc, oneshot};

use super::transport::{self, Dialer};
use super::{frame, read_frames, NODE_ID_HEADER, PEER_QUEUE_MAX};
use crate::lease::parse_node_id;
use crate::runtime::RuntimeHandle;

/// Error text of a response that is not a stream, at most this long.
const ERROR_BODY_BYTES_MAX: usize = 4096;

/// Runs until the runtime stops, dialing through `dialer`.
pub async fn connect_to_primary<D: Dialer>(handle: RuntimeHandle, dialer: D) {
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
            outcome = connect_once(&handle, &dialer, peer, &url) => outcome,
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

/// `host:port` to dial for an `http://` URL (port 80 when it names none).
fn dial_address(uri: &Uri) -> Result<String, String> {
    if uri.scheme_str() != Some("http") {
        return Err(format!("{uri}: only http:// advertise URLs are supported"));
    }
    let authority = uri.authority().ok_or_else(|| format!("{uri}: no host"))?;
    Ok(match authority.port_u16() {
        Some(_) => authority.as_str().to_string(),
        None => format!("{}:80", authority.host()),
    })
}

/// One connection's life: dial, HTTP/2 handshake (prior knowledge), `POST /stream`, then frames
/// both ways until either side ends it. `Ok` if it was established (and later ended).
async fn connect_once<D: Dialer>(handle: &RuntimeHandle, dialer: &D, peer: NodeId, url: &str) -> Result<(), String> {
    let uri: Uri = format!("{}/stream", url.trim_end_matches('/')).parse().map_err(|e| format!("advertise URL {url}: {e}"))?;
    let addr = dial_address(&uri)?;
    let (tx, rx) = mpsc::channel::<Message>(PEER_QUEUE_MAX);
    let body = tokio_stream::wrappers::ReceiverStream::new(rx).map(|m| Ok::<Bytes, std::io::Error>(frame::encode(&m)));
    let mut req = Request::post(uri).header(NODE_ID_HEADER, handle.config().node_id.to_string());
    if let Some(token) = &handle.config().auth_token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req.body(Body::from_stream(body)).map_err(|e| e.to_string())?;
    let (ping_every, ping_timeout) = transport::keepalive(handle.config().core.heartbeat_interval);
    let opened = tokio::time::timeout(ping_timeout, async {
        let io = dialer.dial(&addr).await.map_err(|e| format!("dial {addr}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(ping_every)
            .keep_alive_timeout(ping_timeout)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {addr}: {e}"))?;
        // The connection task ends with the connection; aborting it on drop closes the socket
        // when this function returns or is cancelled.
        let driver = AbortOnDrop(tokio::spawn(conn));
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((driver, resp))
    })
    .await;
    let (_driver, resp) = opened.map_err(|_| format!("no answer from {addr} within {ping_timeout:?}"))??;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = axum::body::to_bytes(Body::new(resp.into_body()), ERROR_BODY_BYTES_MAX).await.unwrap_or_default();
        return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&text).trim()));
    }
    let answered = resp.headers().get(NODE_ID_HEADER).and_then(|v| v.to_str().ok()).and_then(parse_node_id);
    if answered != Some(peer) {
        return Err(format!("{url} answered as node {answered:?}, the lease names {peer}"));
    }
    let (closer_tx, closer_rx) = oneshot::channel();
    let conn = handle.peer_up(peer, tx, closer_tx);
    let mut guard = PeerDownGuard { handle: Some(handle.clone()), peer, conn };
    let frames = Body::new(resp.into_body()).into_data_stream();
    let reason = read_frames(handle, peer, conn, frames, closer_rx).await;
    tracing::info!(%peer, reason, "stream from the primary ended");
    if let Some(handle) = guard.handle.take() {
        handle.peer_down(peer, conn).await;
    }
    Ok(())
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reports the connection down even when `connect_once` is cancelled (the primary changed):
/// without it the runtime kept a dead connection as the peer's link until the peer connected
/// again, and sent it nothing meanwhile — a deposed primary that became a replica of its former
/// replica waited for it.
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
