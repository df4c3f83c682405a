//! Which live connection carries messages to each peer.
//!
//! A peer may have several connections at once (it connected to us while we connected to it,
//! or a reconnect raced the old connection's teardown). Messages to a peer always go on its
//! newest live connection: a peer that reconnects has given up on its older ones, which may be
//! dead without either side knowing yet (until HTTP/2 PINGs close them), so its stream request
//! is answered on the connection it arrived on (the runtime registers a connection before any
//! message read from it reaches the core). Whenever a connection of a peer is added or ends,
//! the runtime reports a disconnect (and a reconnect if one remains) so the core re-sends what
//! matters on the connection now chosen. It decides nothing else and never blocks: a full
//! outgoing queue closes that connection (the peer is too slow; it will reconnect and catch up).

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

/// What [`Peers::remove`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// Not registered (already removed).
    Unknown,
    /// The peer's newest connection, which carried its messages: the link was reset.
    Current,
    /// An older connection: messages already went on a newer one (the core was told of the reset
    /// when that one was added), so nothing changes for the peer.
    Older,
}

#[derive(Default)]
pub struct Peers {
    conns: BTreeMap<NodeId, Vec<Conn>>,
}

impl Peers {
    /// Registers a connection; returns true if it is the peer's only one. A connection
    /// registered after a newer one (a higher id) does not carry messages while that one lives.
    pub fn add(&mut self, peer: NodeId, id: ConnId, tx: mpsc::Sender<Message>, closer: oneshot::Sender<()>) -> bool {
        let list = self.conns.entry(peer).or_default();
        list.push(Conn { id, tx, closer: Some(closer) });
        list.sort_by_key(|c| c.id);
        list.len() == 1
    }

    /// Forgets a connection; says whether it was the one carrying the peer's messages.
    pub fn remove(&mut self, peer: NodeId, id: ConnId) -> Removed {
        let Some(list) = self.conns.get_mut(&peer) else { return Removed::Unknown };
        let Some(at) = list.iter().position(|c| c.id == id) else { return Removed::Unknown };
        let current = at + 1 == list.len();
        list.remove(at);
        if list.is_empty() {
            self.conns.remove(&peer);
        }
        if current { Removed::Current } else { Removed::Older }
    }

    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.conns.contains_key(&peer)
    }

    pub fn is_live(&self, peer: NodeId, id: ConnId) -> bool {
        self.conns.get(&peer).is_some_and(|l| l.iter().any(|c| c.id == id))
    }

    /// Queues `msg` on the peer's newest connection. An error frame closes that connection after
    /// it (the protocol says the sender closes after refusing). Returns whether it was queued.
    pub fn send(&mut self, peer: NodeId, msg: Message) -> bool {
        let Some(list) = self.conns.get_mut(&peer) else { return false };
        // Sorted by id, and ids grow with time: the last is the newest.
        let Some(conn) = list.last_mut() else { return false };
        let closing = matches!(msg, Message::Error { .. });
        let queued = conn.tx.try_send(msg).is_ok();
        if !queued || closing {
            // Full queue or refusal: close it; the transport reports PeerDown when it is gone.
            if let Some(closer) = conn.closer.take() {
                let _ = closer.send(());
            }
        }
        queued
    }

    pub fn close_all(&mut self) {
        for list in self.conns.values_mut() {
            for c in list.iter_mut() {
                if let Some(closer) = c.closer.take() {
                    let _ = closer.send(());
                }
            }
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

    fn connect(peers: &mut Peers, peer: NodeId, id: u64) -> (bool, Rx) {
        let (tx, msgs) = mpsc::channel(8);
        let (closer, closed) = oneshot::channel();
        let only = peers.add(peer, ConnId(id), tx, closer);
        (only, Rx { msgs, closed })
    }

    #[test]
    fn messages_go_on_the_newest_connection_and_fall_back_to_an_older_one() {
        let peer = NodeId(7);
        let mut peers = Peers::default();
        let (only, mut old) = connect(&mut peers, peer, 1);
        assert!(only);
        assert!(peers.send(peer, heartbeat(1)));
        assert_eq!(old.msgs.try_recv().ok(), Some(heartbeat(1)));

        // A reconnect while the old connection still looks alive: the new one carries replies.
        let (only, mut new) = connect(&mut peers, peer, 2);
        assert!(!only);
        assert!(peers.send(peer, heartbeat(2)));
        assert_eq!(new.msgs.try_recv().ok(), Some(heartbeat(2)));
        assert!(old.msgs.try_recv().is_err(), "nothing on the older connection");

        // Registration order does not matter, only the id: an older id added late is not chosen.
        let (_, mut older) = connect(&mut peers, peer, 0);
        assert!(peers.send(peer, heartbeat(3)));
        assert_eq!(new.msgs.try_recv().ok(), Some(heartbeat(3)));
        assert!(older.msgs.try_recv().is_err());

        // The newest ends: the next newest live one takes over.
        assert_eq!(peers.remove(peer, ConnId(2)), Removed::Current);
        assert_eq!(peers.remove(peer, ConnId(2)), Removed::Unknown);
        assert!(peers.is_connected(peer));
        assert!(peers.send(peer, heartbeat(4)));
        assert_eq!(old.msgs.try_recv().ok(), Some(heartbeat(4)));
        assert_eq!(peers.remove(peer, ConnId(1)), Removed::Current);
        assert!(peers.send(peer, heartbeat(5)));
        assert_eq!(older.msgs.try_recv().ok(), Some(heartbeat(5)));
        assert_eq!(peers.remove(peer, ConnId(0)), Removed::Current);
        assert!(!peers.is_connected(peer));
        assert!(!peers.send(peer, heartbeat(6)), "no connection left");
        assert!(new.closed.try_recv().is_err() && old.closed.try_recv().is_err(), "nothing was closed by the runtime");
    }

    #[test]
    fn an_older_connection_ending_leaves_the_newest_in_charge() {
        let peer = NodeId(8);
        let mut peers = Peers::default();
        let (_, mut dead) = connect(&mut peers, peer, 1);
        let (_, mut live) = connect(&mut peers, peer, 2);
        assert_eq!(peers.remove(peer, ConnId(1)), Removed::Older, "not the connection carrying messages");
        assert!(peers.is_connected(peer) && peers.is_live(peer, ConnId(2)) && !peers.is_live(peer, ConnId(1)));
        assert!(peers.send(peer, heartbeat(1)));
        assert_eq!(live.msgs.try_recv().ok(), Some(heartbeat(1)));
        assert!(dead.msgs.try_recv().is_err());
        assert_eq!(peers.remove(peer, ConnId(7)), Removed::Unknown);
        assert_eq!(peers.remove(NodeId(99), ConnId(2)), Removed::Unknown);
    }

    #[test]
    fn an_error_frame_closes_only_the_newest_connection() {
        let peer = NodeId(9);
        let mut peers = Peers::default();
        let (_, mut old) = connect(&mut peers, peer, 1);
        let (_, mut new) = connect(&mut peers, peer, 2);
        let refusal = Message::Error { epoch: ltxfs_core::ids::Epoch(1), code: ltxfs_core::msg::ErrorCode::ClusterMismatch, detail: String::new() };
        assert!(peers.send(peer, refusal.clone()));
        assert_eq!(new.msgs.try_recv().ok(), Some(refusal));
        assert!(new.closed.try_recv().is_ok(), "the connection that carried the refusal is closed");
        assert!(old.closed.try_recv().is_err(), "the older connection is left alone");
        assert!(old.msgs.try_recv().is_err());
    }
}
