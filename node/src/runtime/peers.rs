//! Which live connection carries messages to each peer.
//!
//! A peer may have several connections at once (it connected to us while we connected to it,
//! or a reconnect raced the old connection's teardown). Messages to a peer always go on its
//! oldest live connection, so one ordered stream carries them while it lives; when any
//! connection of a peer ends, the runtime reports a disconnect (and a reconnect if another
//! remains) so the core re-sends what matters. It decides nothing else and never blocks: a full
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

#[derive(Default)]
pub struct Peers {
    conns: BTreeMap<NodeId, Vec<Conn>>,
}

impl Peers {
    /// Registers a connection; returns true if it is the peer's only one.
    pub fn add(&mut self, peer: NodeId, id: ConnId, tx: mpsc::Sender<Message>, closer: oneshot::Sender<()>) -> bool {
        let list = self.conns.entry(peer).or_default();
        list.push(Conn { id, tx, closer: Some(closer) });
        list.sort_by_key(|c| c.id);
        list.len() == 1
    }

    /// Forgets a connection; returns whether it was registered.
    pub fn remove(&mut self, peer: NodeId, id: ConnId) -> bool {
        let Some(list) = self.conns.get_mut(&peer) else { return false };
        let before = list.len();
        list.retain(|c| c.id != id);
        let removed = list.len() != before;
        if list.is_empty() {
            self.conns.remove(&peer);
        }
        removed
    }

    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.conns.contains_key(&peer)
    }

    pub fn is_live(&self, peer: NodeId, id: ConnId) -> bool {
        self.conns.get(&peer).is_some_and(|l| l.iter().any(|c| c.id == id))
    }

    /// Queues `msg` on the peer's oldest connection. An error frame closes that connection after
    /// it (the protocol says the sender closes after refusing). Returns whether it was queued.
    pub fn send(&mut self, peer: NodeId, msg: Message) -> bool {
        let Some(list) = self.conns.get_mut(&peer) else { return false };
        let Some(conn) = list.first_mut() else { return false };
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
