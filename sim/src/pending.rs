//! Commands in flight, keyed by their id: a small map for the I/O a node has issued and the
//! world has not completed yet.
//!
//! It decides nothing; it only stores. Ids are issued in increasing order and a node's disk
//! completes commands in the order issued, so the entry asked for is nearly always the oldest:
//! a queue searched from the front does in a comparison or two what a B-tree map does with node
//! allocations and moves of the (large) commands. Lookups stay correct in any order; only their
//! cost assumes the usual one.

use std::collections::VecDeque;

/// A map from command id to `V`, oldest first.
#[derive(Debug, Clone)]
pub struct Pending<V> {
    entries: VecDeque<(u64, V)>,
}

impl<V> Default for Pending<V> {
    fn default() -> Self {
        Pending { entries: VecDeque::new() }
    }
}

impl<V> Pending<V> {
    /// Adds command `id`, which must not be pending already.
    pub fn insert(&mut self, id: u64, value: V) {
        // Ids usually arrive in increasing order; then the newest one settles it.
        let fresh = self.entries.back().is_none_or(|(newest, _)| *newest < id) || self.position(id).is_none();
        assert!(fresh, "command {id} issued twice");
        self.entries.push_back((id, value));
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut V> {
        let at = self.position(id)?;
        self.entries.get_mut(at).map(|(_, v)| v)
    }

    pub fn remove(&mut self, id: u64) -> Option<V> {
        if self.entries.front().is_some_and(|(oldest, _)| *oldest == id) {
            return self.entries.pop_front().map(|(_, v)| v);
        }
        let at = self.position(id)?;
        self.entries.remove(at).map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    fn position(&self, id: u64) -> Option<usize> {
        self.entries.iter().position(|(i, _)| *i == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map_in_any_completion_order() {
        let mut p = Pending::default();
        for id in [3, 4, 9, 12] {
            p.insert(id, id * 10);
        }
        assert_eq!(p.get_mut(9).copied(), Some(90));
        assert_eq!(p.remove(9), Some(90));
        assert_eq!(p.remove(9), None);
        assert_eq!(p.get_mut(5), None);
        assert_eq!(p.remove(3), Some(30));
        *p.get_mut(12).expect("pending") += 1;
        assert_eq!(p.remove(12), Some(121));
        assert!(!p.is_empty());
        p.clear();
        assert!(p.is_empty());
    }

    #[test]
    #[should_panic(expected = "issued twice")]
    fn an_id_is_issued_once() {
        let mut p = Pending::default();
        p.insert(1, ());
        p.insert(1, ());
    }
}
