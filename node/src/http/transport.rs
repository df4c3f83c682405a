//! The byte transport under the node's HTTP: how the `/stream` client opens a connection to a
//! peer ([`Dialer`]) and how long an HTTP/2 connection may stay silent before it counts as
//! dead ([`keepalive`]). The server side takes any [`axum::serve::Listener`].
//!
//! Production dials real TCP ([`TcpDialer`]); tests plug in a simulated network (turmoil) so the
//! same client and server code runs under partitions and host crashes. It decides nothing about
//! HTTP or replication: it only produces connected byte streams.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

/// Opens byte streams to peers.
pub trait Dialer: Clone + Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Connects to `authority` (`host:port`, as in the peer's advertise URL).
    fn dial(&self, authority: &str) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

/// Real TCP (`TCP_NODELAY`: frames are small and latency matters).
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpDialer;

impl Dialer for TcpDialer {
    type Io = tokio::net::TcpStream;

    async fn dial(&self, authority: &str) -> std::io::Result<tokio::net::TcpStream> {
        let stream = tokio::net::TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// HTTP/2 PING interval and timeout for peer connections: a connection whose peer answers no
/// PING within the timeout is closed (both the replica's client and the server use it), so a
/// silently dead link (partition, crashed host, dropped NAT state) ends and the replica
/// reconnects instead of waiting forever. Also bounds dialing and the response headers.
/// Derived from the core's heartbeat interval: a ping every 5 heartbeats, dead after 5 more.
pub fn keepalive(heartbeat_interval: Duration) -> (Duration, Duration) {
    let every = (heartbeat_interval * 5).max(Duration::from_millis(100));
    (every, every)
}
