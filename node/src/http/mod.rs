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
//!   newest stream with a peer is its link, and opening one closes the peer's previous one (a
//!   peer that reconnects has given up on it, though this side may not know yet: see
//!   `runtime::peers`); the peer counts as connected while its link lives. A frame that does not
//!   decode or is over the size limit closes the connection (counted in
//!   `ltxfs_frames_rejected_total`); nothing reaches the core from it.
//! - `GET /info` (JSON status), `GET /events` (NDJSON: an `init` line with the status, then
//!   `tx` / `role` / `primaryChange` / `core` events), `GET /metrics` (Prometheus text).
//! - `POST /handoff?nodeID=<16 hex>` (on the primary: move the lease to that connected
//!   replica), `POST /promote` (on a replica: ask the primary to hand the lease to this node).
//! - `GET /export?name=DB` (the SQLite file), `POST /import?name=DB` (body: a whole SQLite
//!   file; becomes one LTX on the primary). See "Import" below.
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
//! # Import
//! The body of `/import` is streamed to a temporary file `<data>/tmp/import-*` (never held whole
//! in memory by this layer), then checked as a SQLite file (header magic, page size, whole
//! pages, not shorter than the size its header records) and handed to
//! [`RuntimeHandle::import_file`], which reads it once, page by page. The temporary file is
//! removed whatever happens (success, refusal, a client that goes away mid-upload) and any left
//! by a crash are removed when the API starts serving. A body over the limit gets 413, one that
//! is not a whole SQLite file 400, an import on a replica 409; none of them changes anything.
//! The limit is [`IMPORT_BYTES_MAX_DEFAULT`] (4 GiB); the environment variable
//! `LTXFS_IMPORT_BYTES_MAX` ([`IMPORT_BYTES_MAX_ENV`], a number of bytes) sets another. The
//! runtime still holds the pages in memory once while the core turns them into one LTX, so the
//! limit also bounds the node's memory use for an import.
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
/// Largest `/import` body unless [`IMPORT_BYTES_MAX_ENV`] says otherwise.
pub const IMPORT_BYTES_MAX_DEFAULT: u64 = 4 << 30;
/// Environment variable overriding [`IMPORT_BYTES_MAX_DEFAULT`] (bytes, decimal).
pub const IMPORT_BYTES_MAX_ENV: &str = "LTXFS_IMPORT_BYTES_MAX";
/// Directory of the data dir holding `/import` bodies while they arrive.
pub const IMPORT_TMP_DIR: &str = "tmp";
/// Name prefix of those files (anything with it in [`IMPORT_TMP_DIR`] is removed at start-up).
const IMPORT_TMP_PREFIX: &str = "import-";
/// Once an import is refused, at most this many more body bytes are read and discarded before
/// answering, so an HTTP/1.1 client still sending sees the status instead of a reset connection.
const IMPORT_DRAIN_BYTES_MAX: u64 = 64 << 20;
/// Buffer between the request body and the temporary file.
const IMPORT_WRITE_BUFFER_BYTES: usize = 1 << 20;
/// Bytes of the SQLite file header that the checks read.
const SQLITE_HEADER_BYTES: usize = 100;
/// Messages queued per connection before the peer counts as too slow (the connection closes).
pub const PEER_QUEUE_MAX: usize = 256;

#[derive(Clone)]
struct AppState {
    handle: RuntimeHandle,
    client: reqwest::Client,
    import_bytes_max: u64,
}

/// The `/import` limit: [`IMPORT_BYTES_MAX_ENV`] if set to a number, else the default (a value
/// that is not a number is reported and ignored).
fn import_bytes_max() -> u64 {
    match std::env::var(IMPORT_BYTES_MAX_ENV) {
        Err(_) => IMPORT_BYTES_MAX_DEFAULT,
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(value = %v, "{IMPORT_BYTES_MAX_ENV} is not a number of bytes: using {IMPORT_BYTES_MAX_DEFAULT}");
            IMPORT_BYTES_MAX_DEFAULT
        }),
    }
}

/// The router of the node API (served by [`serve`]).
pub fn router(handle: RuntimeHandle) -> Router {
    let state = AppState { handle, client: reqwest::Client::new(), import_bytes_max: import_bytes_max() };
    Router::new()
        .route("/stream", post(stream))
        .route("/info", get(info))
        .route("/events", get(events))
        .route("/metrics", get(metrics))
        .route("/handoff", post(handoff))
        .route("/promote", post(promote))
        .route("/export", get(export))
        // `import` enforces its own limit while it streams the body to disk.
        .route("/import", post(import).layer(DefaultBodyLimit::disable()))
        .with_state(state)
}

/// Serves the API on `listener` and keeps a replication connection to the primary, until the
/// runtime stops (real TCP both ways).
pub async fn serve(listener: tokio::net::TcpListener, handle: RuntimeHandle) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // No Nagle: the primary answers a replica's stream with small frames (one per commit) on
    // the accepted socket; Nagle's algorithm against the replica's delayed ACKs held them up to
    // ~40 ms (the replication lag tail).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
        }
    });
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
    remove_import_leftovers(&handle.config().data_dir);
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
    let demotions = vec![(String::new(), crate::idle_handoff::demotions().to_string())];
    gauge("ltxfs_fuse_idle_demotions_total", "Times the FUSE thread was starved at idle priority and raised to SCHED_OTHER for a while (fuse.idle-priority).", "counter", demotions);
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

/// The page size of a SQLite file image, if it is one (see [`sqlite_file_check`]).
pub fn sqlite_page_size(image: &[u8]) -> Result<u32, &'static str> {
    sqlite_file_check(&image[..image.len().min(SQLITE_HEADER_BYTES)], image.len() as u64)
}

/// The page size of a SQLite file of `len` bytes that starts with `header` (its first 100
/// bytes, or all of it if shorter), if it is one: header magic, valid page size, whole pages,
/// and not shorter than the database size the header records when that field is valid (SQLite
/// trusts it when the change counter matches the version-valid-for number, offsets 24 and 92).
pub fn sqlite_file_check(header: &[u8], len: u64) -> Result<u32, &'static str> {
    if len < SQLITE_HEADER_BYTES as u64 {
        return Err("not a SQLite database file");
    }
    let page_size = sqlite_header_page_size(header)?;
    if len % u64::from(page_size) != 0 {
        return Err("file length is not a whole number of pages");
    }
    let be32 = |at: usize| u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    let (pages_in_header, change_counter, valid_for) = (be32(28), be32(24), be32(92));
    if pages_in_header != 0 && change_counter == valid_for && len / u64::from(page_size) < u64::from(pages_in_header) {
        return Err("file is shorter than the database size in its header (truncated)");
    }
    Ok(page_size)
}

/// The page size in a SQLite file header (its first 100 bytes), if it is one: header magic and
/// a valid page size.
pub fn sqlite_header_page_size(header: &[u8]) -> Result<u32, &'static str> {
    if header.len() < SQLITE_HEADER_BYTES || &header[..16] != b"SQLite format 3\0" {
        return Err("not a SQLite database file");
    }
    let raw = u32::from(u16::from_be_bytes([header[16], header[17]]));
    let page_size = if raw == 1 { 65_536 } else { raw };
    if !ltxfs_core::ltx::is_valid_page_size(page_size) {
        return Err("invalid page size in the SQLite header");
    }
    Ok(page_size)
}

/// Removes `/import` bodies a previous process left in `<data>/tmp` (a crash mid-upload).
fn remove_import_leftovers(data_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(data_dir.join(IMPORT_TMP_DIR)) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(IMPORT_TMP_PREFIX) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(path = %entry.path().display(), "removed an unfinished import"),
                Err(e) => tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove an unfinished import"),
            }
        }
    }
}

/// A temporary file removed when dropped (every way out of [`import`], a cancelled request
/// included).
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), error = %e, "cannot remove an import's temporary file");
            }
        }
    }
}

/// Distinguishes the temporary files of concurrent imports.
static IMPORT_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Why an import body was refused while it arrived.
enum BodyRefusal {
    TooLarge,
    NotSqlite(&'static str),
}

async fn import(State(s): State<AppState>, headers: HeaderMap, q: Result<Query<NameQuery>, QueryRejection>, body: Body) -> Response {
    if !authorized(&s.handle, &headers) {
        return unauthorized();
    }
    let db = match db_name(q) {
        Ok(db) => db,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let mut body = std::pin::pin!(body.into_data_stream());
    if !s.handle.status().writable {
        drain(&mut body, IMPORT_DRAIN_BYTES_MAX).await;
        return error(StatusCode::CONFLICT, "not the primary");
    }
    let max = s.import_bytes_max;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        drain(&mut body, IMPORT_DRAIN_BYTES_MAX).await;
        return too_large(max);
    }
    let dir = s.handle.config().data_dir.join(IMPORT_TMP_DIR);
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot create {IMPORT_TMP_DIR}/ in the data dir: {e}"));
    }
    let seq = IMPORT_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = TempFile(dir.join(format!("{IMPORT_TMP_PREFIX}{}-{seq}", std::process::id())));
    let file = match tokio::fs::OpenOptions::new().write(true).create_new(true).open(&temp.0).await {
        Ok(f) => f,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot create a temporary file for the import: {e}")),
    };
    let mut out = tokio::io::BufWriter::with_capacity(IMPORT_WRITE_BUFFER_BYTES, file);
    let mut head: Vec<u8> = Vec::with_capacity(SQLITE_HEADER_BYTES);
    let mut len: u64 = 0;
    let mut refusal = None;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            // The client went away or sent a broken body: nobody may be listening.
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("import body: {e}")),
        };
        len += chunk.len() as u64;
        if len > max {
            refusal = Some(BodyRefusal::TooLarge);
            break;
        }
        if head.len() < SQLITE_HEADER_BYTES {
            let take = (SQLITE_HEADER_BYTES - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
            if head.len() == SQLITE_HEADER_BYTES {
                // Refuse a body that is not SQLite at all before writing the rest of it.
                if let Err(e) = sqlite_header_page_size(&head) {
                    refusal = Some(BodyRefusal::NotSqlite(e));
                    break;
                }
            }
        }
        if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut out, &chunk).await {
            return error(StatusCode::INSUFFICIENT_STORAGE, format!("cannot write the import to the data dir: {e}"));
        }
    }
    match refusal {
        Some(BodyRefusal::TooLarge) => {
            drop(out);
            drop(temp);
            drain(&mut body, IMPORT_DRAIN_BYTES_MAX).await;
            return too_large(max);
        }
        Some(BodyRefusal::NotSqlite(e)) => {
            drop(out);
            drop(temp);
            drain(&mut body, IMPORT_DRAIN_BYTES_MAX).await;
            return error(StatusCode::BAD_REQUEST, e);
        }
        None => {}
    }
    if let Err(e) = tokio::io::AsyncWriteExt::flush(&mut out).await {
        return error(StatusCode::INSUFFICIENT_STORAGE, format!("cannot write the import to the data dir: {e}"));
    }
    drop(out);
    let page_size = match sqlite_file_check(&head, len) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let result = s.handle.import_file(db, page_size, temp.0.clone()).await;
    drop(temp);
    match result {
        Ok(outcome @ CommitOutcome::Committed { .. }) => Json(outcome).into_response(),
        Ok(CommitOutcome::Rejected { reason: RejectReason::NotPrimary }) => error(StatusCode::CONFLICT, "not the primary"),
        Ok(other) => error(StatusCode::SERVICE_UNAVAILABLE, format!("import not committed: {other:?}")),
        Err(RuntimeError::Invalid(e)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn too_large(max: u64) -> Response {
    error(StatusCode::PAYLOAD_TOO_LARGE, format!("import larger than the limit of {max} bytes ({IMPORT_BYTES_MAX_ENV})"))
}

/// Reads and discards up to `budget` more bytes of a refused body (see
/// [`IMPORT_DRAIN_BYTES_MAX`]); stops early at its end or on an error.
async fn drain<S, E>(body: &mut std::pin::Pin<&mut S>, budget: u64)
where
    S: futures_util::Stream<Item = Result<Bytes, E>>,
{
    let mut read: u64 = 0;
    while read <= budget {
        match body.next().await {
            Some(Ok(chunk)) => read += chunk.len() as u64,
            _ => return,
        }
    }
}

/// Shared by tests and the CLI: the peer client used for `/stream`.
pub fn peer_client() -> reqwest::Client {
    reqwest::Client::builder().http2_prior_knowledge().build().unwrap_or_else(|_| reqwest::Client::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header of a file of `pages` pages of 4096 bytes whose size field is valid.
    fn header(pages: u32) -> Vec<u8> {
        let mut h = vec![0u8; SQLITE_HEADER_BYTES];
        h[..16].copy_from_slice(b"SQLite format 3\0");
        h[16..18].copy_from_slice(&4096u16.to_be_bytes());
        h[24..28].copy_from_slice(&7u32.to_be_bytes());
        h[28..32].copy_from_slice(&pages.to_be_bytes());
        h[92..96].copy_from_slice(&7u32.to_be_bytes());
        h
    }

    #[test]
    fn sqlite_file_check_refuses_what_is_not_a_whole_sqlite_file() {
        assert_eq!(sqlite_file_check(&header(3), 3 * 4096), Ok(4096));
        assert_eq!(sqlite_file_check(&header(3), 4 * 4096), Ok(4096), "a file longer than its header's size is SQLite's business");
        assert!(sqlite_file_check(&header(3), 2 * 4096).unwrap_err().contains("truncated"));
        assert!(sqlite_file_check(&header(3), 3 * 4096 - 1).unwrap_err().contains("whole number of pages"));
        assert!(sqlite_file_check(&header(3), 50).is_err());
        let mut stale = header(3);
        stale[92..96].copy_from_slice(&6u32.to_be_bytes()); // size field not valid: not checked
        assert_eq!(sqlite_file_check(&stale, 2 * 4096), Ok(4096));
        let mut odd = header(3);
        odd[16..18].copy_from_slice(&3000u16.to_be_bytes());
        assert!(sqlite_header_page_size(&odd).unwrap_err().contains("page size"));
        let mut big = header(1);
        big[16..18].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(sqlite_header_page_size(&big), Ok(65_536));
        assert!(sqlite_header_page_size(b"SQLite format 3\0").is_err(), "short header");
        assert!(sqlite_header_page_size(&[b'x'; 100]).unwrap_err().contains("not a SQLite"));
        assert_eq!(sqlite_page_size(&[0u8; 10]), Err("not a SQLite database file"));
    }
}
