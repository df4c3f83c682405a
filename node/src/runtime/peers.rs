//! Which live connection carries messages to each peer.
//!
//! Each peer has at most one link: the connection registered for it last. A new connection
//! replaces the peer's previous one, which is closed at once. A node dials a peer only from its
//! single stream client, so a peer that connects again has given up its older connection,
//! which may be dead without this side knowing yet (a crash or a partition that swallowed the
//! close; HTTP/2 PINGs would end it only after their timeout). Answering on the new connection
//! is what lets the peer's stream request be answered at once; closing the old one makes its end
//! visible to the peer too, so both sides' cores see the same reset.
//!
//! The core is told of every change of link: the runtime reports a disconnect when a link is
//! replaced or ends, then a connect for the new link, in the order of the runtime's commands, so
//! per-peer state in the core (a follower's stream, a partial LTX, recovery queries) belongs to
//! one ordered stream. Messages read from a replaced connection are dropped, and its later end
//! changes nothing (the core heard of it when it was replaced).
//!
//! It decides nothing else and never blocks: a full outgoing queue closes the link (the peer is
//! too slow; it will reconnect and catch up).

use std::collections::BTreeMap;

use ltxfs_core::ids::NodeId;
use ltxfs_core::msg::Message;
use tokio::sync::{mpsc, oneshot};

/// Identifies one transport connection for the lifetime of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

struct Conn {
    id: ConnId,
    tx: mpsc::Sender<Message>,
    closer: Option<oneshot::Sender<()>>,
}

impl Conn {
    /// Asks the transport to close the connection (it reports the end later).
    fn close(&mut self) {
        if let Some(closer) = self.closer.take() {
            let _ = closer.send(());
        }
    }
}

impl Drop for Conn {
    /// A connection that stops being a link is closed: nothing may be left open that the peer
    /// still counts on while this side ignores it.
    fn drop(&mut self) {
        self.close();
    }
}

/// Each peer's link (see the module docs).
#[derive(Default)]
pub struct Peers {
    links: BTreeMap<NodeId, Conn>,
}

impl Peers {
    /// Makes `id` the peer's link. Returns the connection it replaced (now closed), if any: the
    /// core must be told that link is gone before it hears of the new one.
    pub fn add(&mut self, peer: NodeId, id: ConnId, tx: mpsc::Sender<Message>, closer: oneshot::Sender<()>) -> Option<ConnId> {
        let replaced = self.links.insert(peer, Conn { id, tx, closer: Some(closer) });
        replaced.map(|old| {
            debug_assert_ne!(old.id, id, "a connection is registered once");
            old.id
        })
    }

    /// Forgets a connection that ended; returns whether it was the peer's link (only then has
    /// the core anything to hear: a replaced connection's end was reported when it was replaced).
    pub fn remove(&mut self, peer: NodeId, id: ConnId) -> bool {
        if !self.is_live(peer, id) {
            return false;
        }
        self.links.remove(&peer);
        true
    }

    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.links.contains_key(&peer)
    }

    /// Whether `id` is the peer's link (messages read from any other connection are stale).
    pub fn is_live(&self, peer: NodeId, id: ConnId) -> bool {
        self.links.get(&peer).is_some_and(|c| c.id == id)
    }

    /// Queues `msg` on the peer's link. An error frame closes the link after it (the protocol
    /// says the sender closes after refusing). Returns whether it was queued.
    pub fn send(&mut self, peer: NodeId, msg: Message) -> bool {
        let Some(conn) = self.links.get_mut(&peer) else { return false };
        let closing = matches!(msg, Message::Error { .. });
        let queued = conn.tx.try_send(msg).is_ok();
        if !queued || closing {
            // Full queue or refusal: close it; the transport reports PeerDown when it is gone.
            conn.close();
        }
        queued
    }

    pub fn close_all(&mut self) {
        for conn in self.links.values_mut() {
            conn.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(n: i64) -> Message {
        Message::Heartbeat { wall_ms: n, epoch: ltxfs_core::ids::Epoch(1) }
    }

    struct Rx {
        msgs: mpsc::Receiver<Message>,
        closed: oneshot::Receiver<()>,
    }

    impl Rx {
        fn was_closed(&mut self) -> bool {
            self.closed.try_recv().is_ok()
        }
    }

    fn connect(peers: &mut Peers, peer: NodeId, id: u64) -> (Option<ConnId>, Rx) {
        let (tx, msgs) = mpsc::channel(8);
        let (closer, closed) = oneshot::channel();
        let replaced = peers.add(peer, ConnId(id), tx, closer);
        (replaced, Rx { msgs, closed })
    }

    #[test]
    fn a_new_connection_replaces_and_closes_the_previous_one() {
        let peer = NodeId(7);
        let mut peers = Peers::default();
        let (replaced, mut old) = connect(&mut peers, peer, 1);
        assert_eq!(replaced, None);
        assert!(peers.send(peer, heartbeat(1)));
        assert_eq!(old.msgs.try_recv().ok(), Some(heartbeat(1)));

        // The peer connects again while its old connection still looks alive here.
        let (replaced, mut new) = connect(&mut peers, peer, 2);
        assert_eq!(replaced, Some(ConnId(1)), "the caller must report the old link gone");
        assert!(old.was_closed(), "the replaced connection is closed, so the peer sees it end too");
        assert!(!new.was_closed());
        assert!(peers.is_live(peer, ConnId(2)) && !peers.is_live(peer, ConnId(1)), "messages from the old one are stale");
        assert!(peers.send(peer, heartbeat(2)));
        assert_eq!(new.msgs.try_recv().ok(), Some(heartbeat(2)), "answers go on the new connection");
        assert!(old.msgs.try_recv().is_err(), "nothing on the replaced one");

        // The replaced connection's end, reported later, changes nothing.
        assert!(!peers.remove(peer, ConnId(1)));
        assert!(peers.is_connected(peer) && peers.is_live(peer, ConnId(2)));
        assert!(peers.send(peer, heartbeat(3)));
        assert_eq!(new.msgs.try_recv().ok(), Some(heartbeat(3)));

        // The link's own end disconnects the peer.
        assert!(peers.remove(peer, ConnId(2)));
        assert!(!peers.remove(peer, ConnId(2)));
        assert!(!peers.is_connected(peer));
        assert!(!peers.send(peer, heartbeat(4)), "no link left");
        assert!(!peers.remove(NodeId(99), ConnId(2)));
    }

    #[test]
    fn an_error_frame_closes_the_link() {
        let peer = NodeId(9);
        let mut peers = Peers::default();
        let (_, mut link) = connect(&mut peers, peer, 1);
        let refusal = Message::Error { epoch: ltxfs_core::ids::Epoch(1), code: ltxfs_core::msg::ErrorCode::ClusterMismatch, detail: String::new() };
        assert!(peers.send(peer, refusal.clone()));
        assert_eq!(link.msgs.try_recv().ok(), Some(refusal));
        assert!(link.was_closed(), "the connection that carried the refusal is closed");
        assert!(peers.is_live(peer, ConnId(1)), "still the link until the transport reports its end");
    }

    #[test]
    fn a_full_queue_closes_the_link_and_links_of_other_peers_are_independent() {
        let (a, b) = (NodeId(1), NodeId(2));
        let mut peers = Peers::default();
        let (tx, _msgs) = mpsc::channel(1);
        let (closer, mut closed) = oneshot::channel();
        assert_eq!(peers.add(a, ConnId(1), tx, closer), None);
        let (replaced, mut other) = connect(&mut peers, b, 2);
        assert_eq!(replaced, None, "another peer's connection replaces nothing of a");
        assert!(peers.send(a, heartbeat(1)));
        assert!(!peers.send(a, heartbeat(2)), "queue full");
        assert!(closed.try_recv().is_ok(), "a too slow peer's link is closed");
        assert!(!other.was_closed());
        peers.close_all();
        assert!(other.was_closed());
    }
}
