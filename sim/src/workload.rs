//! Workload clients and the history of every request.
//!
//! Clients have session ids. A client writes to the node it believes is primary (moving on to the
//! next node when a write is rejected or the node is down) and reads from any running node. A
//! session has at most one request outstanding, like a Jepsen process. Every request and its
//! outcome (ok / failed / unknown) is recorded; the checkers read the history.
//!
//! Page contents are unique per request and per page (they embed the request id and the page
//! number, and the rest of the page is a pseudo-random stream seeded by both), so every commit
//! yields a distinct database checksum and a lost write is visible as a missing (txid, checksum).
//! The per-page stream matters: the database checksum is the XOR of per-page CRC64s, and CRC is
//! affine over GF(2), so pages that differ only in their page number (one fill byte per commit)
//! would make `crc(p1) ^ crc(p2)` independent of the content — two different commits rewriting
//! the same two pages would then end at the same checksum (seed 2002 of `swarm --sync`).
//!
//! This module decides what to write; the world decides when and delivers it.

use crate::machine::NodeIdx;
use crate::rng::Rng;

/// Database page size used by the workload (SQLite's smallest, to keep runs fast).
pub const PAGE_SIZE: u32 = 512;
/// Databases the workload writes to (several per node, one stream carries them all).
pub const DBS: &[&str] = &["db", "db2"];
/// Pages a workload database grows to at most.
pub const PAGES_MAX: u32 = 24;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    /// A write to one of [`DBS`].
    Write { db: &'static str },
    /// A read of one of [`DBS`].
    Read { db: &'static str },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    /// A write's position, or the checksum a read saw (txid 0 when unknown).
    Ok { txid: u64, checksum: u64 },
    Failed(String),
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Op {
    pub id: u64,
    pub session: u32,
    pub node: NodeIdx,
    pub kind: OpKind,
    pub invoked_us: u64,
    pub completed_us: Option<u64>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Default)]
pub struct History {
    pub ops: Vec<Op>,
}

impl History {
    /// An empty history with room for about `ops` requests (capped: a hint, not a limit).
    pub fn with_capacity(ops: u64) -> History {
        History { ops: Vec::with_capacity(ops.min(1 << 20) as usize) }
    }

    pub fn invoke(&mut self, session: u32, node: NodeIdx, kind: OpKind, now: u64) -> usize {
        let id = self.ops.len() as u64;
        self.ops.push(Op { id, session, node, kind, invoked_us: now, completed_us: None, outcome: Outcome::Pending });
        self.ops.len() - 1
    }

    pub fn complete(&mut self, index: usize, outcome: Outcome, now: u64) {
        let op = &mut self.ops[index];
        assert_eq!(op.outcome, Outcome::Pending, "op {} completed twice", op.id);
        assert!(outcome != Outcome::Pending);
        op.outcome = outcome;
        op.completed_us = Some(now);
    }

    pub fn pending(&self) -> impl Iterator<Item = &Op> {
        self.ops.iter().filter(|op| op.outcome == Outcome::Pending)
    }

    pub fn count(&self, pred: impl Fn(&Op) -> bool) -> usize {
        self.ops.iter().filter(|op| pred(op)).count()
    }
}

#[derive(Debug, Clone)]
pub struct Session {
    pub believed_primary: NodeIdx,
    pub outstanding: Option<usize>,
}

/// The pages of one write: 1–3 pages within (or one past) the current size, contents unique to
/// the request. Returns (commit size, pages).
pub fn write_pages(rng: &mut Rng, request_id: u64, current_commit: u32) -> (u32, Vec<(u32, Vec<u8>)>) {
    let limit = (current_commit + 1).clamp(1, PAGES_MAX);
    let count = rng.range(1, 3) as usize;
    // At most three page numbers: an array, sorted and deduplicated in place.
    let mut drawn = [0u32; 3];
    for slot in &mut drawn[..count] {
        *slot = rng.range(1, u64::from(limit)) as u32;
    }
    let drawn = &mut drawn[..count];
    drawn.sort_unstable();
    let mut distinct = 0;
    for i in 0..count {
        if distinct == 0 || drawn[distinct - 1] != drawn[i] {
            drawn[distinct] = drawn[i];
            distinct += 1;
        }
    }
    let pgnos = &drawn[..distinct];
    let salt = rng.next_u64();
    let pages = pgnos.iter().map(|pgno| (*pgno, page_content(request_id, *pgno, salt))).collect();
    let commit = current_commit.max(*pgnos.last().expect("at least one page"));
    (commit, pages)
}

/// One page of a request: the request id, the page number, then a pseudo-random stream seeded by
/// (request, page, salt) — independent per page, so checksums of different commits never agree by
/// the linearity of CRC.
fn page_content(request_id: u64, pgno: u32, salt: u64) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE as usize];
    page[..8].copy_from_slice(&request_id.to_be_bytes());
    page[8..12].copy_from_slice(&pgno.to_be_bytes());
    let mut state = salt ^ request_id.rotate_left(32) ^ u64::from(pgno).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for word in page[16..].chunks_exact_mut(8) {
        word.copy_from_slice(&crate::rng::splitmix64(&mut state).to_le_bytes());
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use ltxfs_core::ltx::checksum::page_checksum;

    /// Seed 2002: two commits of different requests rewriting the same two pages must not leave
    /// the same XOR of page checksums (they did when a page was one fill byte per request).
    #[test]
    fn two_page_commits_of_different_requests_differ_in_checksum() {
        let xor = |request: u64, salt: u64| page_checksum(1, &page_content(request, 1, salt)) ^ page_checksum(2, &page_content(request, 2, salt));
        assert_ne!(xor(17, 205), xor(34, 190));
        assert_ne!(xor(17, 5), xor(17, 6));
    }
}
