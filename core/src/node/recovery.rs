//! The recovery phase of a newly elected primary: before accepting writes it learns the
//! positions of enough nodes and catches up to the most advanced chain among them.
//!
//! It decides how many answers are enough (`cluster_size − sync_replicas`, counting itself, so the
//! answer set intersects every ack set; in async mode, all peers but bounded by one heartbeat
//! interval), which peer holds the best chain of each database (highest lineage epoch, then
//! highest TXID), and when the phase is over. It never shrinks the required count when nodes die
//! (the cluster size is configured) and never lets a sync-mode primary write before it has them:
//! it reports [`Event::RecoveryWaiting`] instead.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{ClusterId, DbName, Epoch, NodeId};
use crate::msg::{DbPos, Message, StreamMode};
use crate::time::Time;

use super::lease::Phase;
use super::*;

#[derive(Debug, Clone)]
pub(super) struct Recovery {
    started: Time,
    /// When to report progress (sync) or stop waiting (async).
    tick_at: Time,
    answers: BTreeMap<NodeId, BTreeMap<DbName, DbPos>>,
    /// Sources we fetch from, each with the databases it serves; `None` while still asking.
    fetching: Option<BTreeMap<NodeId, BTreeSet<DbName>>>,
    /// Per fetched database, the position its source answered (which we must reach) and the
    /// source. A source's `Ready` only says it sent what it could: the phase ends when we hold
    /// exactly these positions.
    targets: BTreeMap<DbName, (Pos, NodeId)>,
    /// Sources whose fetch failed earlier in this lease (kept across restarts of the phase):
    /// among equally advanced chains, another holder is preferred.
    failed: BTreeSet<NodeId>,
    /// Fetches that failed in this lease (kept across restarts of the phase); async mode gives
    /// up after [`ASYNC_FETCH_ATTEMPTS_MAX`].
    fetch_failures: u32,
    fetch_until: Time,
}

/// Fetches an async-mode primary attempts in its recovery phase before it starts writing without
/// the chain it could not fetch (a stream that broke once should not cost every write the peer
/// holds; a peer that stays away should not keep the cluster from writing).
pub(super) const ASYNC_FETCH_ATTEMPTS_MAX: u32 = 3;

impl Recovery {
    pub(super) fn new(now: Time) -> Recovery {
        Recovery {
            started: now,
            tick_at: now,
            answers: BTreeMap::new(),
            fetching: None,
            targets: BTreeMap::new(),
            failed: BTreeSet::new(),
            fetch_failures: 0,
            fetch_until: Time::MAX,
        }
    }
}

impl Node {
    fn recovery(&self) -> Option<&Recovery> {
        match &self.role.primary()?.phase {
            Phase::Recovering(r) => Some(r),
            _ => None,
        }
    }

    fn recovery_mut(&mut self) -> Option<&mut Recovery> {
        match &mut self.role.primary_mut()?.phase {
            Phase::Recovering(r) => Some(r),
            _ => None,
        }
    }

    /// Answers needed, this node included.
    fn recovery_need(&self) -> usize {
        self.config.cluster_size() - self.config.sync_replicas as usize
    }

    fn is_sync(&self) -> bool {
        self.config.sync_replicas > 0
    }

    pub(super) fn start_recovery(&mut self) {
        if planted!(self, SkipRecovery) {
            return self.complete_recovery();
        }
        let tick = self.now + self.config.heartbeat_interval;
        if let Some(r) = self.recovery_mut() {
            r.tick_at = tick;
        }
        let peers: Vec<NodeId> = self.config.peers.iter().copied().collect();
        for peer in peers {
            self.send_position_query(peer);
        }
        self.check_answers();
    }

    fn send_position_query(&mut self, peer: NodeId) {
        let msg = Message::PositionQuery { epoch: self.epoch(), cluster_id: self.config.cluster_id };
        self.send(peer, msg);
    }

    pub(super) fn on_position_query(&mut self, from: NodeId, epoch: Epoch, cluster_id: ClusterId) {
        if cluster_id != self.config.cluster_id {
            return self.refuse_cluster(from, cluster_id);
        }
        if !self.accept_epoch(from, epoch) {
            return;
        }
        let msg = Message::PositionAnswer { epoch: self.epoch(), cluster_id, positions: self.db_positions() };
        self.send(from, msg);
    }

    pub(super) fn on_position_answer(&mut self, from: NodeId, epoch: Epoch, cluster_id: ClusterId, positions: BTreeMap<DbName, DbPos>) {
        if cluster_id != self.config.cluster_id {
            return self.event(Event::ClusterMismatch { peer: from, theirs: cluster_id });
        }
        if !self.accept_epoch(from, epoch) {
            return;
        }
        let Some(r) = self.recovery_mut() else { return };
        if r.fetching.is_some() {
            return;
        }
        r.answers.insert(from, positions);
        self.check_answers();
    }

    fn check_answers(&mut self) {
        let need = self.recovery_need();
        let all = self.config.cluster_size();
        let Some(r) = self.recovery() else { return };
        let have = r.answers.len() + 1;
        let enough = if self.is_sync() { have >= need } else { have >= all };
        if enough {
            self.decide_recovery(true);
        }
    }

    /// Picks, per database, the best chain among the answers and fetches what we lack. When
    /// `patient` and the only known holder of some best chain failed us before, it waits for the
    /// other answers (or the next tick) rather than asking that holder again at once.
    fn decide_recovery(&mut self, patient: bool) {
        let Some(r) = self.recovery() else { return };
        // (lineage epoch, txid, not failed before, peer): the most advanced chain first, then a
        // holder that has not failed us.
        let mut best: BTreeMap<DbName, (Epoch, u64, bool, NodeId, Pos)> = BTreeMap::new();
        for (peer, positions) in &r.answers {
            let fresh = !r.failed.contains(peer);
            for (db, p) in positions {
                let candidate = (p.epoch, p.pos.txid, fresh, *peer, p.pos);
                let entry = best.entry(db.clone()).or_insert(candidate);
                if (candidate.0, candidate.1, candidate.2) > (entry.0, entry.1, entry.2) {
                    *entry = candidate;
                }
            }
        }
        let mut sources: BTreeMap<NodeId, BTreeSet<DbName>> = BTreeMap::new();
        let mut targets: BTreeMap<DbName, (Pos, NodeId)> = BTreeMap::new();
        for (db, (epoch, txid, _, peer, pos)) in best {
            let ours = self.dbs.get(&db).map_or((Epoch::ZERO, Pos::ZERO), |d| (d.pos_epoch, d.pos));
            // The same position reached through a later epoch's frame is the same chain.
            if (epoch, txid) > (ours.0, ours.1.txid) && pos != ours.1 {
                sources.entry(peer).or_default().insert(db.clone());
                targets.insert(db, (pos, peer));
            }
        }
        if sources.is_empty() {
            return self.complete_recovery();
        }
        let unanswered = r.answers.len() < self.config.peers.len();
        if patient && unanswered && sources.keys().any(|peer| r.failed.contains(peer)) {
            return;
        }
        let until = self.now + self.config.recovery_fetch_timeout;
        let requests: Vec<(NodeId, BTreeSet<DbName>)> = sources.iter().map(|(p, d)| (*p, d.clone())).collect();
        let r = self.recovery_mut().expect("recovering");
        r.fetching = Some(sources);
        r.targets = targets;
        r.fetch_until = until;
        for (peer, dbs) in requests {
            self.send_fetch(peer, &dbs);
        }
    }

    fn send_fetch(&mut self, peer: NodeId, dbs: &BTreeSet<DbName>) {
        let positions = dbs.iter().map(|db| (db.clone(), self.db_pos(db).unwrap_or_default())).collect();
        let msg = Message::StreamRequest {
            epoch: self.epoch(),
            cluster_id: self.config.cluster_id,
            node_id: self.id,
            mode: StreamMode::Recovery,
            positions,
        };
        self.send(peer, msg);
    }

    pub(super) fn is_recovery_source(&self, peer: NodeId) -> bool {
        self.recovery().and_then(|r| r.fetching.as_ref()).is_some_and(|f| f.contains_key(&peer))
    }

    pub(super) fn on_recovery_ready(&mut self, from: NodeId) {
        let Some(fetching) = self.recovery_mut().and_then(|r| r.fetching.as_mut()) else { return };
        fetching.remove(&from);
        self.recovery_progress();
    }

    /// Ends the phase once every source sent `Ready`, every fetched LTX is applied, and every
    /// fetched database is at its source's answered position. A source's `Ready` is not proof: a source
    /// that could not serve a database (e.g. halted after a failed write) or moved backwards
    /// since it answered still says `Ready`, and writing on from a shorter chain would lose
    /// the writes it acknowledged. A target missed counts as a failed fetch.
    pub(super) fn recovery_progress(&mut self) {
        let Some(r) = self.recovery() else { return };
        let Some(fetching) = r.fetching.as_ref() else { return };
        let applying = self.dbs.values().any(|d| !d.is_idle() && !d.is_halted() || !d.queue.is_empty());
        if !fetching.is_empty() || applying {
            return;
        }
        let missed: BTreeSet<NodeId> = r
            .targets
            .iter()
            .filter(|(db, (pos, _))| self.dbs.get(*db).is_none_or(|d| d.pos != *pos))
            .map(|(_, (_, source))| *source)
            .collect();
        if missed.is_empty() {
            self.complete_recovery();
        } else {
            self.recovery_fetch_failed(missed);
        }
    }

    fn complete_recovery(&mut self) {
        let Some(p) = self.role.primary_mut() else { return };
        p.phase = Phase::Writable;
        let epoch = p.epoch;
        self.event(Event::RecoveryComplete { epoch });
        self.event(Event::RoleChanged { role: Role::Primary, epoch });
        let waiting: Vec<NodeId> = self.followers.iter().filter(|(_, f)| f.waiting).map(|(id, _)| *id).collect();
        for peer in waiting {
            self.followers.get_mut(&peer).expect("listed").waiting = false;
            self.pump_follower(peer);
        }
    }

    /// A fetch from `sources` failed: the phase starts again (asking every peer), preferring
    /// other holders of the same chain — always in sync mode (safety first), in async mode (best
    /// effort) up to [`ASYNC_FETCH_ATTEMPTS_MAX`] attempts, then it ends without that chain.
    fn recovery_fetch_failed(&mut self, sources: BTreeSet<NodeId>) {
        let sync = self.is_sync();
        let now = self.now;
        let r = self.recovery_mut().expect("recovering");
        let fetch_failures = r.fetch_failures.saturating_add(1);
        if !sync && fetch_failures >= ASYNC_FETCH_ATTEMPTS_MAX {
            return self.complete_recovery();
        }
        let mut failed = std::mem::take(&mut r.failed);
        failed.extend(sources);
        *r = Recovery { failed, fetch_failures, ..Recovery::new(now) };
        self.start_recovery();
    }

    pub(super) fn recovery_timers(&mut self) {
        let now = self.now;
        let need = self.recovery_need();
        let sync = self.is_sync();
        let heartbeat = self.config.heartbeat_interval;
        let peers = self.config.peers.clone();
        let Some(r) = self.recovery_mut() else { return };
        if let Some(fetching) = &r.fetching {
            if now >= r.fetch_until {
                let sources = fetching.keys().copied().collect();
                self.recovery_fetch_failed(sources);
            }
            return;
        }
        if now < r.tick_at {
            return;
        }
        r.tick_at = now + heartbeat;
        if !sync {
            return self.decide_recovery(false); // async: waited one heartbeat interval, go
        }
        let have = r.answers.len() + 1;
        if have >= need {
            return self.decide_recovery(false); // waited a tick for another holder: go
        }
        let missing: Vec<NodeId> = peers.iter().filter(|p| !r.answers.contains_key(p)).copied().collect();
        self.event(Event::RecoveryWaiting { have, need });
        for peer in missing {
            self.send_position_query(peer);
        }
    }

    pub(super) fn recovery_timeout(&self) -> Option<Time> {
        let r = self.recovery()?;
        Some(if r.fetching.is_some() { r.fetch_until } else { r.tick_at })
    }

    pub(super) fn recovery_peer_connected(&mut self, peer: NodeId) {
        let Some(r) = self.recovery() else { return };
        match &r.fetching {
            None if !r.answers.contains_key(&peer) => self.send_position_query(peer),
            Some(f) => {
                if let Some(dbs) = f.get(&peer).cloned() {
                    self.send_fetch(peer, &dbs);
                }
            }
            None => {}
        }
    }

    pub(super) fn recovery_peer_disconnected(&mut self, peer: NodeId) {
        // Answers already received stay valid; only a lost fetch source matters.
        if self.is_recovery_source(peer) {
            self.recovery_fetch_failed(BTreeSet::from([peer]));
        }
    }

    /// When the recovery phase of the current lease started, if it is under way.
    pub fn recovery_started(&self) -> Option<Time> {
        self.recovery().map(|r| r.started)
    }
}
