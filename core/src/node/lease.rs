//! Lease roles: replica → candidate (acquiring) → primary {epoch, deadline}, and back.
//!
//! It decides when to acquire, renew, release and hand off the lease, the local write deadline
//! (`sent_at(request) + ttl − clock_margin`, extended only by successful replies), and when to
//! step down (renewal refused, deadline passed, a higher epoch seen, handoff, shutdown). It never
//! talks to the lease service itself (requests are outputs) and never trusts a grant's wall time:
//! deadlines are measured from when this node *sent* the request, on its own monotonic clock, so
//! a slow reply can only shorten the writable window.

use std::time::Duration;

use crate::ids::{Epoch, NodeId};
use crate::msg::{Message, StreamMode};
use crate::time::Time;

use super::recovery::Recovery;
use super::*;

/// Most lease requests remembered; older ones are forgotten (their late replies are ignored).
const LEASE_REQUESTS_MAX: usize = 16;

#[derive(Debug, Clone, Copy)]
pub(super) struct LeaseSent {
    pub sent_at: Time,
    pub kind: LeaseKind,
}

/// A handoff in progress on the primary.
#[derive(Debug, Clone)]
pub(super) struct Handoff {
    pub to: NodeId,
    pub until: Time,
    pub lease_request: Option<LeaseRequestId>,
}

#[derive(Debug, Clone)]
pub(super) enum Phase {
    Recovering(Recovery),
    Writable,
    HandingOff(Handoff),
}

#[derive(Debug, Clone)]
pub(super) struct PrimaryState {
    pub epoch: Epoch,
    /// Local writes are accepted only strictly before this time.
    pub deadline: Time,
    pub ttl: Duration,
    pub static_lease: bool,
    pub renew_at: Time,
    pub phase: Phase,
}

impl PrimaryState {
    pub fn is_writable(&self) -> bool {
        matches!(self.phase, Phase::Writable)
    }
}

#[derive(Debug, Clone)]
pub(super) enum RoleState {
    Replica,
    Candidate,
    Primary(Box<PrimaryState>),
    Stopped,
}

impl RoleState {
    pub fn kind(&self) -> Role {
        match self {
            RoleState::Replica => Role::Replica,
            RoleState::Candidate => Role::Candidate,
            RoleState::Primary(p) if matches!(p.phase, Phase::Recovering(_)) => Role::Recovering,
            RoleState::Primary(_) => Role::Primary,
            RoleState::Stopped => Role::Stopped,
        }
    }
    pub fn primary(&self) -> Option<&PrimaryState> {
        match self {
            RoleState::Primary(p) => Some(p),
            _ => None,
        }
    }
    pub fn primary_mut(&mut self) -> Option<&mut PrimaryState> {
        match self {
            RoleState::Primary(p) => Some(p),
            _ => None,
        }
    }
    /// Replica or candidate: follows an upstream primary.
    pub fn is_follower(&self) -> bool {
        matches!(self, RoleState::Replica | RoleState::Candidate)
    }
}

impl Node {
    fn is_candidate(&self) -> bool {
        matches!(self.config.lease, LeaseMode::Dynamic { candidate: true, .. })
    }

    fn clock_margin(&self) -> Duration {
        match self.config.lease {
            LeaseMode::Dynamic { clock_margin, .. } => clock_margin,
            LeaseMode::Static { .. } => Duration::ZERO,
        }
    }

    pub(super) fn start_lease_role(&mut self) {
        match self.config.lease.clone() {
            LeaseMode::Static { primary } if primary == self.id => {
                self.highest_epoch = Epoch(1);
                self.become_primary(Epoch(1), Time::MAX, Duration::MAX, true);
            }
            LeaseMode::Static { primary } => {
                self.highest_epoch = Epoch(1);
                self.upstream = Some(primary);
            }
            LeaseMode::Dynamic { candidate: true, .. } => self.acquire_at = Some(self.now),
            LeaseMode::Dynamic { candidate: false, .. } => {}
        }
    }

    fn lease_request(&mut self, kind: LeaseKind) -> LeaseRequestId {
        let id = LeaseRequestId(self.next_lease_request);
        self.next_lease_request += 1;
        if self.lease_requests.len() >= LEASE_REQUESTS_MAX {
            self.lease_requests.pop_first();
        }
        self.lease_requests.insert(id, LeaseSent { sent_at: self.now, kind });
        self.push(Output::Lease(LeaseRequest { id, kind }));
        id
    }

    fn set_role(&mut self, role: RoleState) {
        let before = self.role.kind();
        self.role = role;
        if self.role.kind() != before {
            self.event(Event::RoleChanged { role: self.role.kind(), epoch: self.epoch() });
        }
    }

    pub(super) fn start_acquire(&mut self) {
        debug_assert!(self.role.is_follower());
        self.acquire_at = None;
        self.set_role(RoleState::Candidate);
        self.lease_request(LeaseKind::Acquire);
    }

    pub(super) fn on_lease_reply(&mut self, id: LeaseRequestId, result: LeaseResult) -> Result<(), InputError> {
        let Some(sent) = self.lease_requests.remove(&id) else {
            if id.0 < self.next_lease_request {
                return Ok(()); // forgotten: a reply after LEASE_REQUESTS_MAX newer requests
            }
            return Err(InputError::UnknownLeaseRequest(id));
        };
        match sent.kind {
            LeaseKind::Acquire => self.on_acquire_reply(sent.sent_at, result),
            LeaseKind::Renew { epoch } => self.on_renew_reply(sent.sent_at, epoch, result),
            LeaseKind::Release { .. } => {}
            LeaseKind::Handoff { epoch, to } => self.on_lease_handoff_reply(id, epoch, to, result),
        }
        Ok(())
    }

    fn on_acquire_reply(&mut self, sent_at: Time, result: LeaseResult) {
        if !matches!(self.role, RoleState::Candidate) {
            if let LeaseResult::Granted { epoch, .. } = result {
                // We gave up on this acquire (stepped down, shut down): hand the lease back.
                self.lease_request(LeaseKind::Release { epoch });
            }
            return;
        }
        match result {
            LeaseResult::Granted { epoch, ttl } if epoch >= self.highest_epoch && epoch > Epoch::ZERO => {
                let deadline = sent_at.saturating_add(ttl).saturating_sub(self.clock_margin());
                self.highest_epoch = epoch;
                self.become_primary(epoch, deadline, ttl, false);
                if let Some(p) = self.role.primary_mut() {
                    p.renew_at = sent_at + ttl / 3;
                }
            }
            LeaseResult::Granted { epoch, .. } => {
                self.event(Event::StaleEpochRejected { from: self.id, epoch, highest: self.highest_epoch });
                self.lease_request(LeaseKind::Release { epoch });
                self.back_to_replica();
            }
            LeaseResult::Denied { holder, epoch } => {
                self.back_to_replica();
                self.on_lease_observed(holder, epoch);
            }
            LeaseResult::Lost | LeaseResult::Released | LeaseResult::Error => self.back_to_replica(),
        }
    }

    fn back_to_replica(&mut self) {
        self.set_role(RoleState::Replica);
        if self.is_candidate() {
            self.acquire_at = Some(self.now + self.config.acquire_retry);
        }
    }

    fn become_primary(&mut self, epoch: Epoch, deadline: Time, ttl: Duration, static_lease: bool) {
        self.upstream = None;
        self.acquire_at = None;
        let phase = if static_lease || self.config.peers.is_empty() {
            Phase::Writable
        } else {
            Phase::Recovering(Recovery::new(self.now))
        };
        let renew_at = self.now + ttl / 3;
        let state = PrimaryState { epoch, deadline, ttl, static_lease, renew_at, phase };
        self.set_role(RoleState::Primary(Box::new(state)));
        if matches!(self.role.kind(), Role::Recovering) {
            self.start_recovery();
        }
    }

    fn on_renew_reply(&mut self, sent_at: Time, epoch: Epoch, result: LeaseResult) {
        let margin = self.clock_margin();
        let Some(p) = self.role.primary_mut().filter(|p| p.epoch == epoch) else { return };
        match result {
            LeaseResult::Granted { epoch: granted, ttl } if granted == epoch => {
                let deadline = sent_at.saturating_add(ttl).saturating_sub(margin);
                p.deadline = p.deadline.max(deadline);
                p.ttl = ttl;
            }
            LeaseResult::Granted { .. } | LeaseResult::Lost | LeaseResult::Denied { .. } => {
                self.step_down(StepDownReason::LeaseLost)
            }
            LeaseResult::Error | LeaseResult::Released => {} // the deadline decides
        }
    }

    pub(super) fn lease_timers(&mut self) {
        let now = self.now;
        if let Some(p) = self.role.primary_mut().filter(|p| !p.static_lease) {
            if now >= p.deadline {
                let epoch = p.epoch;
                self.step_down(StepDownReason::DeadlinePassed);
                self.lease_request(LeaseKind::Release { epoch });
            } else if now >= p.renew_at {
                p.renew_at = now + p.ttl / 3;
                let epoch = p.epoch;
                self.lease_request(LeaseKind::Renew { epoch });
            }
            return;
        }
        if self.stream_retry_at.is_some_and(|t| t <= now) {
            self.stream_retry_at = None;
            if let Some(up) = self.upstream.filter(|p| self.connected.contains(p)) {
                self.send_stream_request(up);
            }
        }
        if self.acquire_at.is_some_and(|t| t <= now) {
            self.acquire_at = None;
            if matches!(self.role, RoleState::Replica) && self.upstream.is_none() && self.is_candidate() {
                self.start_acquire();
            }
        }
    }

    pub(super) fn lease_timeout(&self) -> Option<Time> {
        match self.role.primary() {
            Some(p) if !p.static_lease => Some(p.deadline.min(p.renew_at)),
            Some(_) => None,
            None => [self.acquire_at, self.stream_retry_at].into_iter().flatten().min(),
        }
    }

    /// Leaves the primary role. Commits not yet confirmed become "outcome unknown".
    pub(super) fn step_down(&mut self, reason: StepDownReason) {
        let Some(p) = self.role.primary() else { return };
        let epoch = p.epoch;
        self.fail_pending_commits();
        self.followers.clear();
        self.event(Event::SteppedDown { reason, epoch });
        self.back_to_replica();
        if matches!(reason, StepDownReason::HandedOff | StepDownReason::Shutdown) {
            self.acquire_at = None; // let the target (or others) take over
        }
    }

    pub(super) fn on_lease_observed(&mut self, holder: Option<NodeId>, epoch: Epoch) {
        if epoch < self.highest_epoch {
            return; // an old watch notification
        }
        self.highest_epoch = epoch;
        if let Some(p) = self.role.primary() {
            let ours = holder == Some(self.id) && epoch == p.epoch;
            if ours {
                return;
            }
            let reason = if epoch > p.epoch { StepDownReason::HigherEpoch } else { StepDownReason::LeaseLost };
            self.step_down(reason);
        }
        match holder {
            Some(h) if h == self.id => {}
            // Same upstream under a newer lease: it stepped down in between (dropping its
            // followers) and won again, so the old stream is dead on its side: ask again.
            Some(h) if self.upstream == Some(h) => {
                if self.stream_epoch < epoch && self.role.is_follower() && self.connected.contains(&h) {
                    self.send_stream_request(h);
                }
            }
            Some(h) => self.set_upstream(Some(h)),
            None => {
                self.set_upstream(None);
                if matches!(self.role, RoleState::Replica) && self.is_candidate() {
                    self.start_acquire();
                }
            }
        }
    }

    pub(super) fn set_upstream(&mut self, upstream: Option<NodeId>) {
        if self.upstream == upstream {
            return;
        }
        if let Some(old) = self.upstream {
            self.partials.retain(|_, p| p.from != old);
        }
        self.upstream = upstream;
        if let Some(p) = upstream.filter(|p| self.connected.contains(p)) {
            self.send_stream_request(p);
        }
    }

    pub(super) fn send_stream_request(&mut self, to: NodeId) {
        self.stream_epoch = self.highest_epoch;
        let msg = Message::StreamRequest {
            epoch: self.highest_epoch,
            cluster_id: self.config.cluster_id,
            node_id: self.id,
            mode: StreamMode::Follow,
            positions: self.db_positions(),
        };
        self.send(to, msg);
    }

    pub(super) fn on_handoff_message(&mut self, from: NodeId, epoch: Epoch, to: NodeId) {
        if !self.accept_epoch(from, epoch) {
            return;
        }
        if to == self.id && matches!(self.role, RoleState::Replica) && self.is_candidate() {
            self.upstream = None;
            self.start_acquire();
        }
    }

    fn on_lease_handoff_reply(&mut self, id: LeaseRequestId, epoch: Epoch, to: NodeId, result: LeaseResult) {
        let Some(p) = self.role.primary_mut().filter(|p| p.epoch == epoch) else { return };
        let Phase::HandingOff(h) = &p.phase else { return };
        if h.lease_request != Some(id) {
            return;
        }
        match result {
            LeaseResult::Released => {
                self.send(to, Message::Handoff { epoch, to });
                self.step_down(StepDownReason::HandedOff);
                self.set_upstream(Some(to));
            }
            // No answer: the service may have ended our epoch and reserved the next for `to`,
            // so writing on under the old deadline could overlap the target's epoch. Step down.
            LeaseResult::Lost | LeaseResult::Denied { .. } | LeaseResult::Error => {
                self.step_down(StepDownReason::LeaseLost);
                self.event(Event::HandoffFailed { to });
            }
            LeaseResult::Granted { .. } => {
                p.phase = Phase::Writable;
                self.event(Event::HandoffFailed { to });
            }
        }
    }

    /// Starts the lease part of a handoff once the target has every commit.
    pub(super) fn request_lease_handoff(&mut self, to: NodeId) {
        let Some(epoch) = self.role.primary().map(|p| p.epoch) else { return };
        let id = self.lease_request(LeaseKind::Handoff { epoch, to });
        if let Some(PrimaryState { phase: Phase::HandingOff(h), .. }) = self.role.primary_mut() {
            h.lease_request = Some(id);
        }
    }

    pub(super) fn on_shutdown(&mut self) {
        if let Some(p) = self.role.primary() {
            let (epoch, static_lease) = (p.epoch, p.static_lease);
            self.step_down(StepDownReason::Shutdown);
            if !static_lease {
                self.lease_request(LeaseKind::Release { epoch });
            }
        }
        self.persist_indexes(true);
        self.acquire_at = None;
        self.set_role(RoleState::Stopped);
    }
}
