//! A small reference node: lease roles with fencing, LTX-like commits, streaming replication with
//! epoch and pre-apply checks, snapshots on divergence. It exists so the world, the checkers, the
//! shrinker and the planted-bug machinery can be tested on their own; the real subject of the
//! simulator is `ltxfs-core`'s node (see [`crate::core_binding`] when present).
//!
//! It is deliberately simple: no recovery phase on election (so sync mode can lose acked writes
//! when a primary and its acking replica crash together), LTX "files" carry raw pages.
//! Planted bugs (`skip-epoch-check`, `write-after-lease`, `skip-preapply-check`) re-introduce one
//! bad behaviour each so tests can prove the checkers fail.
//!
//! It decides only for itself and never touches anything but its inputs and outputs.

use std::collections::{BTreeMap, VecDeque};

use ltxfs_core::ltx::checksum::{self, CHECKSUM_EMPTY};

use crate::disk::SimDisk;
use crate::machine::{
    IoKind, IoValue, LeaseOp, LeaseResult, Machine, MachineConfig, MachineEvent, MachineInput, MachineOutput,
    MachineView, NodeIdx,
};
use crate::trace::digest;

const TICK_US: u64 = 100_000;
const LOG_KEEP: u64 = 256;
const INBOX_MAX: usize = 256;

type Pages = Vec<(u32, Vec<u8>)>;

#[derive(Debug, Clone, Hash)]
pub enum ModelMsg {
    Heartbeat { epoch: u64, positions: Vec<(String, u64, u64)> },
    Pull { epoch: u64, db: String, txid: u64, checksum: u64 },
    Frame { epoch: u64, db: String, txid: u64, pre: u64, post: u64, commit: u32, pages: Pages, snapshot: bool },
    Ack { epoch: u64, db: String, txid: u64 },
    Handoff { epoch: u64 },
}

#[derive(Debug, Clone)]
struct Ltx {
    pre: u64,
    post: u64,
    commit: u32,
    pages: Pages,
}

#[derive(Debug, Clone, Default)]
struct Db {
    txid: u64,
    checksum: u64,
    page_size: u32,
    commit: u32,
    pages: BTreeMap<u32, Vec<u8>>,
    log: BTreeMap<u64, Ltx>,
}

impl Db {
    /// Checksum after applying `pages` and truncating to `commit`.
    fn checksum_after(&self, commit: u32, pages: &Pages) -> u64 {
        let mut sum = self.checksum;
        let zero = vec![0u8; self.page_size.max(512) as usize];
        let lock = checksum::lock_pgno(self.page_size.max(512));
        for (pgno, data) in pages {
            if *pgno == lock || *pgno > commit {
                continue;
            }
            let old = if *pgno <= self.commit {
                checksum::page_checksum(*pgno, self.pages.get(pgno).unwrap_or(&zero))
            } else {
                0
            };
            sum = checksum::update_db_checksum(sum, old, checksum::page_checksum(*pgno, data));
        }
        // Pages that appear by growth without being written read as zeros.
        for pgno in self.commit + 1..=commit {
            if pgno != lock && !pages.iter().any(|(p, _)| *p == pgno) {
                sum = checksum::update_db_checksum(sum, 0, checksum::page_checksum(pgno, &zero));
            }
        }
        for pgno in commit + 1..=self.commit {
            if pgno != lock {
                sum = checksum::update_db_checksum(sum, checksum::page_checksum(pgno, self.pages.get(&pgno).unwrap_or(&zero)), 0);
            }
        }
        sum
    }

    fn apply(&mut self, txid: u64, ltx: &Ltx) {
        for (pgno, data) in &ltx.pages {
            self.pages.insert(*pgno, data.clone());
        }
        self.pages.retain(|p, _| *p <= ltx.commit);
        self.commit = ltx.commit;
        self.txid = txid;
        self.checksum = ltx.post;
        self.log.insert(txid, ltx.clone());
        while self.log.len() as u64 > LOG_KEEP {
            self.log.pop_first();
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Role {
    Replica,
    Candidate { sent_at: u64 },
    Primary { epoch: u64, deadline: u64, renew_sent_at: Option<u64> },
}

#[derive(Debug, Clone)]
enum Work {
    CommitLtx { txid: u64, ltx: Ltx, epoch: u64 },
    CommitPages { txid: u64, ltx: Ltx, epoch: u64 },
    WaitAcks { txid: u64, epoch: u64 },
    Apply { txid: u64, ltx: Ltx, epoch: u64, snapshot: bool, from: NodeIdx },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Planted {
    SkipEpochCheck,
    WriteAfterLease,
    SkipPreapplyCheck,
}

pub struct ModelNode {
    id: NodeIdx,
    cluster_size: u8,
    ttl_us: u64,
    margin_us: u64,
    sync_replicas: u8,
    role: Role,
    highest_epoch: u64,
    primary_heard: Option<(NodeIdx, u64)>,
    dbs: BTreeMap<String, Db>,
    work: BTreeMap<String, Work>,
    inbox: BTreeMap<String, VecDeque<(NodeIdx, ModelMsg)>>,
    io_next: u64,
    io_wait: BTreeMap<u64, String>,
    /// Highest acked txid per (db, replica).
    acks: BTreeMap<(String, NodeIdx), u64>,
    out: VecDeque<MachineOutput<ModelMsg>>,
    next_tick: u64,
    lease_next: u64,
    planted: Option<Planted>,
}

impl ModelNode {
    fn event(&mut self, event: MachineEvent) {
        self.out.push_back(MachineOutput::Event(event));
    }

    fn io(&mut self, db: &str, kind: IoKind) {
        self.io_next += 1;
        self.io_wait.insert(self.io_next, db.to_string());
        self.out.push_back(MachineOutput::Io { id: self.io_next, kind });
    }

    fn lease(&mut self, op: LeaseOp) {
        self.lease_next += 1;
        self.out.push_back(MachineOutput::Lease { id: self.lease_next, op });
    }

    fn broadcast(&mut self, msg: ModelMsg) {
        for peer in 0..self.cluster_size {
            if peer != self.id {
                self.out.push_back(MachineOutput::Send { to: peer, msg: msg.clone() });
            }
        }
    }

    fn epoch(&self) -> u64 {
        match self.role {
            Role::Primary { epoch, .. } => epoch,
            _ => self.highest_epoch,
        }
    }

    fn writable(&self, now: u64) -> bool {
        match self.role {
            Role::Primary { deadline, .. } => now < deadline || self.planted == Some(Planted::WriteAfterLease),
            _ => false,
        }
    }

    fn step_down(&mut self) {
        if !matches!(self.role, Role::Primary { .. }) {
            self.role = Role::Replica;
            return;
        }
        self.role = Role::Replica;
        self.primary_heard = None;
        let waiting: Vec<String> =
            self.work.iter().filter(|(_, w)| matches!(w, Work::WaitAcks { .. })).map(|(db, _)| db.clone()).collect();
        for db in waiting {
            self.work.remove(&db);
            self.event(MachineEvent::CommitUnknown { db });
        }
        let epoch = self.highest_epoch;
        self.event(MachineEvent::Role { primary: false, writable: false, epoch });
    }

    fn positions(&self) -> Vec<(String, u64, u64)> {
        self.dbs.iter().map(|(name, db)| (name.clone(), db.txid, db.checksum)).collect()
    }

    fn tick(&mut self, now: u64) {
        match self.role.clone() {
            Role::Primary { epoch, deadline, renew_sent_at } => {
                if now >= deadline && self.planted != Some(Planted::WriteAfterLease) {
                    self.step_down();
                    return;
                }
                let positions = self.positions();
                self.broadcast(ModelMsg::Heartbeat { epoch, positions });
                if renew_sent_at.is_none() || now.saturating_sub(renew_sent_at.unwrap_or(0)) >= self.ttl_us / 3 {
                    self.role = Role::Primary { epoch, deadline, renew_sent_at: Some(now) };
                    self.lease(LeaseOp::Renew { epoch });
                }
            }
            Role::Candidate { sent_at } => {
                if now.saturating_sub(sent_at) > self.ttl_us / 2 {
                    self.role = Role::Replica;
                }
            }
            Role::Replica => {
                let silent = self.primary_heard.is_none_or(|(_, at)| now.saturating_sub(at) > self.ttl_us);
                // A node that does not know its position must not lead.
                let known = self.dbs.values().all(|d| d.txid > 0 || d.checksum == CHECKSUM_EMPTY);
                if silent && known {
                    self.role = Role::Candidate { sent_at: now };
                    self.lease(LeaseOp::Acquire);
                }
            }
        }
    }

    fn on_lease(&mut self, now: u64, result: LeaseResult) {
        match (self.role.clone(), result) {
            (Role::Candidate { sent_at }, LeaseResult::Granted { epoch, ttl_ms }) => {
                self.highest_epoch = self.highest_epoch.max(epoch);
                let deadline = sent_at + ttl_ms * 1000 - self.margin_us;
                self.role = Role::Primary { epoch, deadline, renew_sent_at: Some(sent_at) };
                self.event(MachineEvent::Role { primary: true, writable: true, epoch });
                let positions = self.positions();
                self.broadcast(ModelMsg::Heartbeat { epoch, positions });
            }
            (Role::Candidate { .. }, _) => self.role = Role::Replica,
            (Role::Primary { epoch, renew_sent_at, .. }, LeaseResult::Renewed { epoch: renewed, ttl_ms }) if renewed == epoch => {
                let sent = renew_sent_at.unwrap_or(now);
                let deadline = sent + ttl_ms * 1000 - self.margin_us;
                self.role = Role::Primary { epoch, deadline, renew_sent_at: Some(sent) };
            }
            (Role::Primary { .. }, LeaseResult::Lost { .. } | LeaseResult::Held { .. }) => self.step_down(),
            _ => {}
        }
    }

    fn local_commit(&mut self, now: u64, db: String, page_size: u32, commit: u32, pages: Pages) {
        let epoch = self.epoch();
        if !self.writable(now) {
            self.event(MachineEvent::WriteRejected { db, reason: "not a writable primary".into() });
            return;
        }
        if self.work.contains_key(&db) {
            self.event(MachineEvent::WriteRejected { db, reason: "busy".into() });
            return;
        }
        let state = self.dbs.entry(db.clone()).or_insert_with(|| Db { checksum: CHECKSUM_EMPTY, page_size, ..Db::default() });
        state.page_size = page_size;
        let txid = state.txid + 1;
        let ltx = Ltx { pre: state.checksum, post: state.checksum_after(commit, &pages), commit, pages };
        self.event(MachineEvent::CommitDecided { db: db.clone(), txid, pre: ltx.pre, post: ltx.post, epoch });
        let bytes: Vec<u8> = ltx.pages.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        self.io(&db, IoKind::WriteFile { path: format!("{db}/{txid:016x}.ltx"), data: bytes, fsync: true });
        self.work.insert(db, Work::CommitLtx { txid, ltx, epoch });
    }

    fn io_done(&mut self, now: u64, id: u64, ok: bool) {
        let Some(db) = self.io_wait.remove(&id) else { return };
        let Some(work) = self.work.remove(&db) else { return };
        match work {
            Work::CommitLtx { txid, ltx, epoch } => {
                if !ok || !self.writable(now) || self.epoch() != epoch {
                    self.event(MachineEvent::WriteRejected { db, reason: "ltx write failed or lease lost".into() });
                    return;
                }
                let page_size = self.dbs[&db].page_size;
                let kind = IoKind::WritePages { db: db.clone(), page_size, commit: ltx.commit, pages: ltx.pages.clone(), fsync: true };
                self.io(&db, kind);
                self.work.insert(db, Work::CommitPages { txid, ltx, epoch });
            }
            Work::CommitPages { txid, ltx, epoch } => {
                if !ok {
                    // The database file may hold part of the commit: write it again (injected
                    // faults are transient) before anything else touches this database.
                    let page_size = self.dbs[&db].page_size;
                    let kind =
                        IoKind::WritePages { db: db.clone(), page_size, commit: ltx.commit, pages: ltx.pages.clone(), fsync: true };
                    self.io(&db, kind);
                    self.work.insert(db, Work::CommitPages { txid, ltx, epoch });
                    return;
                }
                self.dbs.get_mut(&db).expect("db exists").apply(txid, &ltx);
                self.persist_pos(&db);
                let frame = ModelMsg::Frame {
                    epoch,
                    db: db.clone(),
                    txid,
                    pre: ltx.pre,
                    post: ltx.post,
                    commit: ltx.commit,
                    pages: ltx.pages.clone(),
                    snapshot: false,
                };
                self.broadcast(frame);
                let still_primary = matches!(self.role, Role::Primary { epoch: e, .. } if e == epoch);
                if self.sync_replicas > 0 && !still_primary {
                    self.event(MachineEvent::CommitUnknown { db });
                } else if self.sync_replicas == 0 {
                    self.event(MachineEvent::Committed { db, txid, checksum: ltx.post, epoch });
                } else {
                    self.work.insert(db, Work::WaitAcks { txid, epoch });
                }
            }
            Work::WaitAcks { .. } => {
                self.work.insert(db, work);
            }
            Work::Apply { txid, ltx, epoch, snapshot, from } => {
                if !ok {
                    // Partially written: write it again (injected faults are transient).
                    if let Some(state) = self.dbs.get_mut(&db) {
                        let page_size = state.page_size.max(512);
                        let pages: Pages = ltx.pages.clone();
                        self.io(&db, IoKind::WritePages { db: db.clone(), page_size, commit: ltx.commit, pages, fsync: true });
                        self.work.insert(db.clone(), Work::Apply { txid, ltx, epoch, snapshot, from });
                        return;
                    }
                } else {
                    let state = self.dbs.entry(db.clone()).or_default();
                    if snapshot {
                        state.log.clear();
                    }
                    state.apply(txid, &ltx);
                    self.persist_pos(&db);
                    if snapshot {
                        self.event(MachineEvent::SnapshotReset { db: db.clone(), txid, checksum: ltx.post, epoch });
                    } else {
                        self.event(MachineEvent::Applied { db: db.clone(), txid, pre: ltx.pre, post: ltx.post, epoch });
                    }
                    self.out.push_back(MachineOutput::Send { to: from, msg: ModelMsg::Ack { epoch, db: db.clone(), txid } });
                }
                self.drain_inbox(&db);
            }
        }
    }

    fn persist_pos(&mut self, db: &str) {
        let state = &self.dbs[db];
        let mut data = state.txid.to_be_bytes().to_vec();
        data.extend_from_slice(&state.checksum.to_be_bytes());
        self.io_next += 1;
        self.out.push_back(MachineOutput::Io {
            id: self.io_next,
            kind: IoKind::WriteFile { path: format!("{db}.pos"), data, fsync: true },
        });
    }

    fn drain_inbox(&mut self, db: &str) {
        while !self.work.contains_key(db) {
            let Some((from, msg)) = self.inbox.get_mut(db).and_then(|q| q.pop_front()) else { return };
            self.on_frame(from, msg);
        }
    }

    fn on_frame(&mut self, from: NodeIdx, msg: ModelMsg) {
        let ModelMsg::Frame { epoch, db, txid, pre, post, commit, pages, snapshot } = msg else { return };
        if epoch < self.highest_epoch && self.planted != Some(Planted::SkipEpochCheck) {
            let highest = self.highest_epoch;
            self.event(MachineEvent::StaleEpochRejected { epoch, highest });
            return;
        }
        if matches!(self.role, Role::Primary { .. }) {
            return;
        }
        self.highest_epoch = self.highest_epoch.max(epoch);
        if self.work.contains_key(&db) {
            let queue = self.inbox.entry(db.clone()).or_default();
            if queue.len() < INBOX_MAX {
                queue.push_back((from, ModelMsg::Frame { epoch, db, txid, pre, post, commit, pages, snapshot }));
            }
            return;
        }
        let (my_txid, my_checksum, page_size) =
            self.dbs.get(&db).map(|d| (d.txid, d.checksum, d.page_size)).unwrap_or((0, CHECKSUM_EMPTY, 512));
        let chain_ok = txid == my_txid + 1 && (pre == my_checksum || self.planted == Some(Planted::SkipPreapplyCheck));
        if !snapshot && !chain_ok {
            return;
        }
        if snapshot && (txid, post) == (my_txid, my_checksum) {
            return;
        }
        let page_size = if page_size == 0 { 512 } else { page_size };
        let ltx = Ltx { pre, post, commit, pages: pages.clone() };
        let kind = if snapshot {
            // A snapshot replaces every page; missing pages become zeros.
            IoKind::WritePages { db: db.clone(), page_size, commit, pages: pages.clone(), fsync: true }
        } else {
            IoKind::WritePages { db: db.clone(), page_size, commit, pages, fsync: true }
        };
        if snapshot {
            let state = self.dbs.entry(db.clone()).or_default();
            state.pages.clear();
            state.commit = 0;
            state.page_size = page_size;
        }
        self.io(&db, kind);
        self.work.insert(db, Work::Apply { txid, ltx, epoch, snapshot, from });
    }

    fn on_message(&mut self, now: u64, from: NodeIdx, msg: ModelMsg) {
        match msg {
            ModelMsg::Heartbeat { epoch, positions } => {
                if epoch < self.highest_epoch {
                    let highest = self.highest_epoch;
                    self.event(MachineEvent::StaleEpochRejected { epoch, highest });
                    return;
                }
                if let Role::Primary { epoch: mine, .. } = self.role {
                    if epoch <= mine {
                        return;
                    }
                    self.step_down();
                }
                self.highest_epoch = epoch;
                self.primary_heard = Some((from, now));
                if matches!(self.role, Role::Candidate { .. }) {
                    self.role = Role::Replica;
                }
                for (db, txid, checksum) in positions {
                    let mine = self.dbs.get(&db).map(|d| (d.txid, d.checksum)).unwrap_or((0, CHECKSUM_EMPTY));
                    if mine == (txid, checksum) {
                        // Acks may be lost: repeat the ack of the current position.
                        self.out.push_back(MachineOutput::Send { to: from, msg: ModelMsg::Ack { epoch, db, txid } });
                    } else if !self.work.contains_key(&db) {
                        let msg = ModelMsg::Pull { epoch, db, txid: mine.0, checksum: mine.1 };
                        self.out.push_back(MachineOutput::Send { to: from, msg });
                    }
                }
            }
            ModelMsg::Pull { db, txid, checksum, .. } => {
                let Role::Primary { epoch, .. } = self.role else { return };
                let Some(state) = self.dbs.get(&db) else { return };
                let in_chain = txid <= state.txid
                    && (txid == state.txid && checksum == state.checksum
                        || state.log.get(&(txid + 1)).is_some_and(|l| l.pre == checksum));
                let mut frames = Vec::new();
                if in_chain {
                    for (t, ltx) in state.log.range(txid + 1..).take(64) {
                        frames.push(ModelMsg::Frame {
                            epoch,
                            db: db.clone(),
                            txid: *t,
                            pre: ltx.pre,
                            post: ltx.post,
                            commit: ltx.commit,
                            pages: ltx.pages.clone(),
                            snapshot: false,
                        });
                    }
                } else {
                    // Every page up to the commit size, zeros included, so no stale page survives.
                    let zero = vec![0u8; state.page_size.max(512) as usize];
                    let pages: Pages =
                        (1..=state.commit).map(|p| (p, state.pages.get(&p).unwrap_or(&zero).clone())).collect();
                    frames.push(ModelMsg::Frame {
                        epoch,
                        db: db.clone(),
                        txid: state.txid,
                        pre: CHECKSUM_EMPTY,
                        post: state.checksum,
                        commit: state.commit,
                        pages,
                        snapshot: true,
                    });
                }
                for msg in frames {
                    self.out.push_back(MachineOutput::Send { to: from, msg });
                }
            }
            frame @ ModelMsg::Frame { .. } => self.on_frame(from, frame),
            ModelMsg::Ack { epoch, db, txid } => {
                if self.epoch() != epoch {
                    return;
                }
                let acked = self.acks.entry((db.clone(), from)).or_insert(0);
                *acked = (*acked).max(txid);
                let count = self.acks.iter().filter(|((d, _), t)| *d == db && **t >= txid).count() as u8;
                if let Some(Work::WaitAcks { txid: waiting, epoch: e }) = self.work.get(&db).cloned() {
                    if waiting <= txid && count >= self.sync_replicas {
                        self.work.remove(&db);
                        let checksum = self.dbs[&db].log.get(&waiting).map(|l| l.post).unwrap_or(0);
                        self.event(MachineEvent::Committed { db: db.clone(), txid: waiting, checksum, epoch: e });
                    }
                }
            }
            ModelMsg::Handoff { epoch } => {
                if epoch >= self.highest_epoch && !matches!(self.role, Role::Primary { .. }) {
                    self.primary_heard = None;
                    self.role = Role::Candidate { sent_at: now };
                    self.lease(LeaseOp::Acquire);
                }
            }
        }
    }
}

impl Machine for ModelNode {
    type Msg = ModelMsg;

    fn start(config: &MachineConfig, id: NodeIdx, now_us: u64, disk: &SimDisk) -> Self {
        let planted = match config.planted.as_deref() {
            Some("skip-epoch-check") => Some(Planted::SkipEpochCheck),
            Some("write-after-lease") => Some(Planted::WriteAfterLease),
            Some("skip-preapply-check") => Some(Planted::SkipPreapplyCheck),
            _ => None,
        };
        let mut dbs = BTreeMap::new();
        for (name, file) in disk.dbs() {
            let checksum = file.checksum();
            let pos = disk.file(&format!("{name}.pos")).filter(|d| d.len() == 16);
            let txid = match pos {
                Some(d) if u64::from_be_bytes(d[8..16].try_into().expect("8 bytes")) == checksum => {
                    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
                }
                // Position unknown: the pages do not match the last recorded position.
                _ => 0,
            };
            let db = Db {
                txid,
                checksum,
                page_size: file.page_size,
                commit: file.commit,
                pages: file.pages.clone(),
                log: BTreeMap::new(),
            };
            dbs.insert(name.clone(), db);
        }
        let ttl_us = config.lease_ttl_ms * 1000;
        ModelNode {
            id,
            cluster_size: config.cluster_size,
            ttl_us,
            margin_us: ttl_us / 10,
            sync_replicas: config.sync_replicas,
            role: Role::Replica,
            highest_epoch: 0,
            primary_heard: Some((id, now_us)),
            dbs,
            work: BTreeMap::new(),
            inbox: BTreeMap::new(),
            io_next: 0,
            io_wait: BTreeMap::new(),
            acks: BTreeMap::new(),
            out: VecDeque::new(),
            // Stagger first ticks so nodes do not all campaign at once.
            next_tick: now_us + TICK_US * (u64::from(id) + 1) + config.seed % TICK_US,
            lease_next: 0,
            planted,
        }
    }

    fn handle_input(&mut self, now_us: u64, input: MachineInput<ModelMsg>) {
        match input {
            MachineInput::Receive { from, msg } => self.on_message(now_us, from, msg),
            MachineInput::LeaseReply { result, .. } => self.on_lease(now_us, result),
            MachineInput::IoDone { id, result } => self.io_done(now_us, id, result.is_ok_and(|v| v == IoValue::Done)),
            MachineInput::LocalCommit { db, page_size, commit, pages, .. } => {
                self.local_commit(now_us, db, page_size, commit, pages)
            }
            MachineInput::PeerConnected { .. }
            | MachineInput::PeerDisconnected { .. }
            | MachineInput::LeaseObserved { .. } => {}
            MachineInput::Handoff { to } => {
                if let Role::Primary { epoch, .. } = self.role {
                    if to != self.id {
                        self.lease(LeaseOp::Handoff { epoch, to });
                        self.out.push_back(MachineOutput::Send { to, msg: ModelMsg::Handoff { epoch } });
                        self.step_down();
                    }
                }
            }
        }
    }

    fn handle_timeout(&mut self, now_us: u64) {
        if now_us >= self.next_tick {
            self.next_tick = now_us + TICK_US;
            self.tick(now_us);
        }
    }

    fn poll_output(&mut self) -> Option<MachineOutput<ModelMsg>> {
        self.out.pop_front()
    }

    fn poll_timeout(&self) -> Option<u64> {
        Some(self.next_tick)
    }

    fn view(&self) -> MachineView {
        MachineView {
            primary: matches!(self.role, Role::Primary { .. }),
            writable: matches!(self.role, Role::Primary { .. }),
            epoch: self.epoch(),
            positions: self.positions(),
        }
    }

    fn msg_digest(msg: &ModelMsg) -> u64 {
        digest(msg)
    }

    fn planted_names() -> Vec<&'static str> {
        vec!["skip-epoch-check", "write-after-lease", "skip-preapply-check"]
    }
}
