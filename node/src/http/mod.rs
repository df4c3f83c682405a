//! The node's HTTP API (axum; HTTP/1.1 and cleartext HTTP/2 on one port) and its peer client.
//!
//! Endpoints:
//! - `POST /stream` — replication. Request headers `ltxfs-node-id: <16 hex>` (the caller) and,
//!   when `http.auth-token` is set, `authorization: Bearer <token>`. The request body carries
//!   caller → server frames and the response body server → caller frames, each
//!   `u32 BE length ‖ Message::encode`, for as long as the connection lives (full duplex over one
//!   HTTP/2 stream: replicas dial the primary with prior-knowledge h2c, so stream requests, acks
//!   and resync requests go up the same stream the LTX frames come down — no second request, and
//!   one ordered stream per direction as the core requires). Either side may open it; the
//!   runtime treats the peer as connected while any such stream lives. A frame that does not
//!   decode or is over the size limit closes the connection (counted in
//!   `ltxfs_frames_rejected_total`); nothing reaches the core from it.
//! - `GET /info` (JSON status), `GET /events` (NDJSON: an `init` line with the status, then
//!   `tx` / `role` / `primaryChange` / `core` events), `GET /metrics` (Prometheus text).
//! - `POST /handoff?nodeID=<16 hex>` (on the primary: move the lease to that connected
//!   replica), `POST /promote` (on a replica: ask the primary to hand the lease to this node).
//! - `GET /export?name=DB` (the SQLite file), `POST /import?name=DB` (body: a whole SQLite
//!   file; becomes one LTX on the primary).
//!
//! With `http.auth-token` set, `/stream`, `/handoff`, `/promote`, `/import` and `/export` need
//! `authorization: Bearer <token>` (401 otherwise). Malformed requests get 400, oversized ones
//! 413, and change nothing.
//!
//! Configuration keys read by the node (mapped into [`crate::runtime::RuntimeConfig`] and
//! [`crate::lease`]): `data.dir`, `data.compress`, `data.retention`,
//! `data.retention-monitor-interval`, `http.addr`, `http.auth-token`, `lease.type`,
//! `lease.candidate`, `lease.hostname`, `lease.advertise-url`, `lease.reconnect-delay`,
//! `lease.ttl`, `lease.etcd.endpoints`, `lease.etcd.key`, `replication.sync`,
//! `replication.cluster-size`, `replication.node-id`, `replication.members`,
//! `replication.cluster-id`, `replication.heartbeat-interval` (see the binary's `config.rs`).
//!
//! This module decides only HTTP matters (status codes, auth, framing, limits). Replication
//! decisions stay in the core; the runtime executes them.

pub mod client;
pub mod frame;
pub mod transport;

use std::fmt::Write as _;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use ltxfs_core::ids::{DbName, NodeId};
use ltxfs_core::msg::Message;
use ltxfs_core::node::RejectReason;

use crate::lease::parse_node_id;
use crate::runtime::{CommitOutcome, Metrics, RuntimeError, RuntimeHandle};

/// Header naming the calling / answering node.
pub const NODE_ID_HEADER: &str = "ltxfs-node-id";
/// Largest `/import` body.
pub const IMPORT_BYTES_MAX: usize = 1 << 30;
/// Messages queued per connection before the peer counts as too slow (the connection closes).
pub const PEER_QUEUE_MAX: usize = 256;

#[derive(Clone)]
struct AppState {
    handle: RuntimeHandle,
    client: reqwest::Client,
}

/// The router of the node API (served by [`serve`]).
pub fn router(handle: RuntimeHandle) -> Router {
    let state = AppState { handle, client: reqwest::Client::new() };
    Router::new()
        .route("/stream", post(stream))
        .route("/info", get(info))
        .route("/events", get(events))
        .route("/metrics", get(metrics))
        .route("/handoff", post(handoff))
        .route("/promote", post(promote))
        .route("/export", get(export))
        .route("/import", post(import).layer(DefaultBodyLimit::max(IMPORT_BYTES_MAX)))
        .with_state(state)
}

/// Serves the API on `listener` and keeps a replication connection to the primary, until the
/// runtime stops (real TCP both ways).
pub async fn serve(listener: tokio::net::TcpListener, handle: RuntimeHandle) -> std::io::Result<()> {
    serve_with(listener, transport::TcpDialer, handle).await
}

/// [`serve`] over any transport: connections accepted from `listener`, the replica's stream to
/// the primary dialed through `dialer`. HTTP/1.1 and HTTP/2 (prior knowledge) on one port, as
/// `axum::serve` does, plus HTTP/2 PINGs ([`transport::keepalive`]) so a connection whose peer
/// went silent (partition, crashed host) closes and the runtime hears the peer is gone. When the
/// runtime stops, no new connection is accepted and open ones are shut down gracefully.
pub async fn serve_with<L, D>(mut listener: L, dialer: D, handle: RuntimeHandle) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    D: transport::Dialer,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    tokio::spawn(client::connect_to_primary(handle.clone(), dialer));
    let app = router(handle.clone());
    let (ping_every, ping_timeout) = transport::keepalive(handle.config().core.heartbeat_interval);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(ping_every).keep_alive_timeout(ping_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (io, _addr) = tokio::select! {
            () = handle.stopped() => break,
            accepted = listener.accept() => accepted,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

fn authorized(handle: &RuntimeHandle, headers: &HeaderMap) -> bool {
    let Some(token) = handle.config().auth_token.as_deref() else { return true };
    let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "missing or wrong auth token\n").into_response()
}

fn error(status: StatusCode, text: impl Into<String>) -> Response {
    let mut text = text.into();
    text.push('\n');
    (status, text).into_response()
}

async fn stream(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    if !authorized(&s.handle, &headers) {
        return unauthorized();
    }
    let Some(peer) = headers.get(NODE_ID_HEADER).and_then(|v| v.to_str().ok()).and_then(parse_node_id) else {
        return error(StatusCode::BAD_REQUEST, format!("{NODE_ID_HEADER} header missing or not 16 hex digits"));
    };
    if peer == s.handle.config().node_id {
        return error(StatusCode::BAD_REQUEST, "a node does not stream with itself");
    }
    let (tx, rx) = mpsc::channel::<Message>(PEER_QUEUE_MAX);
    let (closer_tx, closer_rx) = oneshot::channel();
    let conn = s.handle.peer_up(peer, tx, closer_tx);
    let handle = s.handle.clone();
    tokio::spawn(async move {
        let reason = read_frames(&handle, peer, conn, body.into_data_stream(), closer_rx).await;
        tracing::debug!(%peer, reason, "inbound stream ended");
        handle.peer_down(peer, conn).await;
    });
    let out = tokio_stream::wrappers::ReceiverStream::new(rx).map(|m| Ok::<Bytes, std::io::Error>(frame::encode(&m)));
    let mut resp = Response::new(Body::from_stream(out));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(v) = HeaderValue::from_str(&s.handle.config().node_id.to_string()) {
        resp.headers_mut().insert(NODE_ID_HEADER, v);
    }
    resp
}

/// Feeds frames from `body` to the runtime until the stream ends, a frame is bad, or the runtime
/// closes the connection. Returns why it stopped.
pub(crate) async fn read_frames<S, E>(
    handle: &RuntimeHandle,
    peer: NodeId,
    conn: crate::runtime::peers::ConnId,
    body: S,
    mut closer: oneshot::Receiver<()>,
) -> &'static str
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    let mut decoder = frame::FrameDecoder::default();
    let mut body = std::pin::pin!(body);
    loop {
        let chunk = tokio::select! {
            _ = &mut closer => return "closed by the runtime",
            chunk = body.next() => chunk,
        };
        let chunk = match chunk {
            None => return "end of stream",
            Some(Err(e)) => {
                tracing::debug!(%peer, error = %e, "stream read failed");
                return "read error";
            }
            Some(Ok(c)) => c,
        };
        Metrics::add(&handle.metrics().bytes_received, chunk.len() as u64);
        decoder.push(&chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(msg)) => {
                    Metrics::add(&handle.metrics().messages_received, 1);
                    if handle.peer_message(peer, conn, msg).await.is_err() {
                        return "runtime stopped";
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "bad frame: closing the connection");
                    Metrics::add(&handle.metrics().frames_rejected, 1);
                    return "bad frame";
                }
            }
        }
    }
}

async fn info(State(s): State<AppState>) -> Response {
    Json(s.handle.status()).into_response()
}

async fn events(State(s): State<AppState>) -> Response {
    let rx = s.handle.subscribe();
    let init = serde_json::json!({ "type": "init", "status": s.handle.status() });
    let first = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(ndjson(&init)) });
    // A subscriber that falls behind by more than the buffer is disconnected (as LiteFS does).
    let rest = tokio_stream::wrappers::BroadcastStream::new(rx)
        .take_while(|e| std::future::ready(e.is_ok()))
        .filter_map(|e| std::future::ready(e.ok()))
        .map(|e| Ok::<Bytes, std::io::Error>(ndjson(&e)));
    let mut resp = Response::new(Body::from_stream(first.chain(rest)));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    resp
}

fn ndjson<T: serde::Serialize>(v: &T) -> Bytes {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

async fn metrics(State(s): State<AppState>) -> Response {
    let status = s.handle.status();
    let m = s.handle.metrics();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, lines: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in lines {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let pos = status.positions.iter().map(|(db, p)| (format!("{{db=\"{}\"}}", escape_label(db)), p.txid.to_string())).collect();
    gauge("ltxfs_db_txid", "TXID of each database's position.", "gauge", pos);
    let roles = ["replica", "candidate", "recovering", "primary", "stopped"];
    let role_lines = roles.iter().map(|r| (format!("{{role=\"{r}\"}}"), u8::from(status.role == *r).to_string())).collect();
    gauge("ltxfs_role", "1 for the node's current role.", "gauge", role_lines);
    gauge("ltxfs_epoch", "Lease epoch (primary) or highest epoch accepted.", "gauge", vec![(String::new(), status.epoch.to_string())]);
    gauge("ltxfs_writable", "1 if local writes are accepted.", "gauge", vec![(String::new(), u8::from(status.writable).to_string())]);
    let lag = status.lag_ms.map_or("NaN".to_string(), |ms| format!("{:.3}", ms as f64 / 1000.0));
    gauge("ltxfs_lag_seconds", "Replica: seconds since the primary's last heartbeat timestamp.", "gauge", vec![(String::new(), lag)]);
    let counters = [
        ("ltxfs_bytes_sent_total", "Bytes queued to peers.", &m.bytes_sent),
        ("ltxfs_bytes_received_total", "Bytes received from peers.", &m.bytes_received),
        ("ltxfs_messages_sent_total", "Messages queued to peers.", &m.messages_sent),
        ("ltxfs_messages_received_total", "Messages received from peers.", &m.messages_received),
        ("ltxfs_snapshots_sent_total", "Snapshots decided for peers.", &m.snapshots_sent),
        ("ltxfs_snapshots_received_total", "Snapshot LTX files received.", &m.snapshots_received),
        ("ltxfs_stale_frames_rejected_total", "Messages refused for a stale epoch.", &m.stale_frames_rejected),
        ("ltxfs_frames_rejected_total", "Frames that did not decode (connection closed).", &m.frames_rejected),
        ("ltxfs_ltx_rejected_total", "LTX files refused (invalid, dropped, checksum mismatch).", &m.ltx_rejected),
        ("ltxfs_commits_total", "Local commits reported committed.", &m.commits),
        ("ltxfs_commits_rejected_total", "Local commits refused.", &m.commits_rejected),
        ("ltxfs_applied_total", "LTX files applied from peers.", &m.applied),
        ("ltxfs_cluster_mismatches_total", "Peers of another cluster refused.", &m.cluster_mismatches),
        ("ltxfs_history_resets_total", "Times a peer's snapshot replaced this node's history (a deposed primary's unreplicated commits are discarded).", &m.history_resets),
        ("ltxfs_discarded_txids_total", "TXIDs of replaced histories beyond the new history's TXID (lower bound of what was discarded).", &m.discarded_txids),
        ("ltxfs_diverged_peers_reset_total", "Peers reset by snapshot because they had commits not in this node's history.", &m.diverged_peers_reset),
    ];
    for (name, help, c) in counters {
        gauge(name, help, "counter", vec![(String::new(), Metrics::get(c).to_string())]);
    }
    use crate::runtime::stats;
    let fuse = stats::fuse_requests().into_iter().map(|(op, n)| (format!("{{op=\"{op}\"}}"), n.to_string())).collect();
    gauge("ltxfs_fuse_requests_total", "FUSE requests served, by opcode (process-wide).", "counter", fuse);
    let fsyncs = stats::fsyncs().into_iter().map(|(kind, n)| (format!("{{kind=\"{kind}\"}}"), n.to_string())).collect();
    gauge("ltxfs_fsyncs_total", "fsync/fdatasync calls by kind: forwarded (SQLite's), wal (the node's before an LTX), ltx, dir, database (applies), metadata (process-wide).", "counter", fsyncs);
    for (name, help, h) in [
        ("ltxfs_commit_seconds", "Local commit path: commit detected by the FUSE layer until the runtime's verdict.", &stats::COMMIT_LATENCY),
        ("ltxfs_apply_seconds", "Replica apply of one LTX into the database, SQLite's locks included.", &stats::APPLY_LATENCY),
    ] {
        let (buckets, sum, count) = h.snapshot();
        let mut lines: Vec<(String, String)> = buckets.into_iter().map(|(le, n)| (format!("_bucket{{le=\"{le}\"}}"), n.to_string())).collect();
        lines.push(("_sum".to_string(), format!("{sum}")));
        lines.push(("_count".to_string(), count.to_string()));
        gauge(name, help, "histogram", lines);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[derive(Deserialize)]
struct HandoffQuery {
    #[serde(rename = "nodeID")]
    node_id: String,
}

async fn handoff(State(s): State<AppState>, headers: HeaderMap, q: Result<Query<HandoffQuery>, QueryRejection>) -> Response {
    if !authorized(&s.handle, &headers) {
        return unauthorized();
    }
    let Some(to) = q.ok().and_then(|q| parse_node_id(&q.node_id)) else {
        return error(StatusCode::BAD_REQUEST, "nodeID must be 16 hex digits");
    };
    match s.handle.handoff(to).await {
        Ok(()) => (StatusCode::OK, "handoff started\n").into_response(),
        Err(RuntimeError::Invalid(e)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn promote(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&s.handle, &headers) {
        return unauthorized();
    }
    let status = s.handle.status();
    if status.is_primary {
        return (StatusCode::OK, "already primary\n").into_response();
    }
    if !status.candidate {
        return error(StatusCode::CONFLICT, "this node is not a candidate");
    }
    let Some(primary) = status.primary else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no primary known to hand off from");
    };
    let url = format!("{}/handoff?nodeID={}", primary.advertise_url.trim_end_matches('/'), s.handle.config().node_id);
    let mut req = s.client.post(url);
    if let Some(token) = &s.handle.config().auth_token {
        req = req.bearer_auth(token);
    }
    match req.send().await {
        Ok(r) => {
            let code = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let text = r.text().await.unwrap_or_default();
            (code, text).into_response()
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("primary unreachable: {e}")),
    }
}

#[derive(Deserialize)]
struct NameQuery {
    name: String,
}

fn db_name(q: Result<Query<NameQuery>, QueryRejection>) -> Result<DbName, String> {
    let q = q.map_err(|_| "name= is required".to_string())?;
    DbName::new(q.0.name).map_err(|e| e.to_string())
}

async fn export(State(s): State<AppState>, headers: HeaderMap, q: Result<Query<NameQuery>, QueryRejection>) -> Response {
    if !authorized(&s.handle, &headers) {
        return unauthorized();
    }
    let db = match db_name(q) {
        Ok(db) => db,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match s.handle.export(db).await {
        Ok(image) => ([(header::CONTENT_TYPE, "application/vnd.sqlite3")], image).into_response(),
        Err(RuntimeError::NoSuchDb(db)) => error(StatusCode::NOT_FOUND, format!("no database {db}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The page size of a SQLite file image, if it is one (header magic, valid page size, whole
/// pages).
pub fn sqlite_page_size(image: &[u8]) -> Result<u32, &'static str> {
    if image.len() < 100 || &image[..16] != b"SQLite format 3\0" {
        return Err("not a SQLite database file");
    }
    let raw = u32::from(u16::from_be_bytes([image[16], image[17]]));
    let page_size = if raw == 1 { 65_536 } else { raw };
    if !ltxfs_core::ltx::is_valid_page_size(page_size) {
        return Err("invalid page size in the SQLite header");
    }
    if image.len() % page_size as usize != 0 {
        return Err("file length is not a whole number of pages");
    }
    Ok(page_size)
}

async fn import(State(s): State<AppState>, headers: HeaderMap, q: Result<Query<NameQuery>, QueryRejection>, body: Bytes) -> Response {
    if !authorized(&s.handle, &headers) {
        return unauthorized();
    }
    let db = match db_name(q) {
        Ok(db) => db,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let page_size = match sqlite_page_size(&body) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match s.handle.import(db, page_size, body.to_vec()).await {
        Ok(outcome @ CommitOutcome::Committed { .. }) => Json(outcome).into_response(),
        Ok(CommitOutcome::Rejected { reason: RejectReason::NotPrimary }) => error(StatusCode::CONFLICT, "not the primary"),
        Ok(other) => error(StatusCode::SERVICE_UNAVAILABLE, format!("import not committed: {other:?}")),
        Err(RuntimeError::Invalid(e)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Shared by tests and the CLI: the peer client used for `/stream`.
pub fn peer_client() -> reqwest::Client {
    reqwest::Client::builder().http2_prior_knowledge().build().unwrap_or_else(|_| reqwest::Client::new())
}
