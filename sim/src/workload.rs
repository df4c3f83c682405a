//! Workload clients and the history of every request.
//!
//! Clients have session ids. A client writes to the node it believes is primary (moving on to the
//! next node when a write is rejected or the node is down) and reads from any running node. A
//! session has at most one request outstanding, like a Jepsen process. Every request and its
//! outcome (ok / failed / unknown) is recorded; the checkers read the history.
//!
//! Page contents are unique per request (they embed the request id), so every commit yields a
//! distinct database checksum and a lost write is visible as a missing (txid, checksum).
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
    Write { db: String },
    Read { db: String },
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
    let mut pgnos: Vec<u32> = (0..count).map(|_| rng.range(1, u64::from(limit)) as u32).collect();
    pgnos.sort_unstable();
    pgnos.dedup();
    let fill = (rng.next_u64() & 0xff) as u8;
    let pages = pgnos
        .iter()
        .map(|pgno| {
            let mut page = vec![fill; PAGE_SIZE as usize];
            page[..8].copy_from_slice(&request_id.to_be_bytes());
            page[8..12].copy_from_slice(&pgno.to_be_bytes());
            (*pgno, page)
        })
        .collect();
    let commit = current_commit.max(*pgnos.last().expect("at least one page"));
    (commit, pages)
}
