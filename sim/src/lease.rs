//! The simulated lease service: a linearizable key-value store holding one TTL lease.
//!
//! It runs on its own clock, which is the reference clock (true time; TTLs are measured there), hands
//! out strictly increasing epochs, and can revoke the current lease. A revoked lease cannot be
//! renewed, but no successor is granted before the revoked lease's TTL has run out — Consul's
//! lock-delay, without which no lease-based system can fence a primary that has not yet heard of
//! the revocation. A handoff ends the current epoch and reserves the next one for the named node
//! for one TTL.
//!
//! It is reachable only through the simulated network (the world routes requests and replies),
//! so it can be partitioned from any node. It records, for the checkers, each epoch's holder and
//! its validity window in true time.
//!
//! This module never decides when to revoke; the world does.

use std::collections::BTreeMap;

use crate::clock::TrueUs;
use crate::machine::{LeaseOp, LeaseResult, NodeIdx};

/// One epoch's life in true time, as the lease service granted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochRecord {
    pub holder: NodeIdx,
    pub granted_us: TrueUs,
    /// No other epoch can be granted before this instant; renewals push it forward, a release
    /// or handoff pulls it back to the release instant.
    pub valid_until_us: TrueUs,
    pub revoked: bool,
}

#[derive(Debug, Clone)]
pub struct LeaseService {
    ttl_us: u64,
    current: Option<u64>,
    next_epoch: u64,
    reserved_for: Option<(NodeIdx, TrueUs)>,
    pub epochs: BTreeMap<u64, EpochRecord>,
}

impl LeaseService {
    pub fn new(ttl_ms: u64) -> LeaseService {
        assert!(ttl_ms > 0);
        LeaseService {
            ttl_us: ttl_ms * 1000,
            current: None,
            next_epoch: 1,
            reserved_for: None,
            epochs: BTreeMap::new(),
        }
    }

    /// The live epoch at `now`, if any.
    pub fn live(&self, now: TrueUs) -> Option<(u64, &EpochRecord)> {
        let epoch = self.current?;
        let record = &self.epochs[&epoch];
        (now < record.valid_until_us).then_some((epoch, record))
    }

    /// What the watch reports at `now`: the live holder (or none) and the latest epoch.
    pub fn observed(&self, now: TrueUs) -> (Option<NodeIdx>, u64) {
        match self.live(now) {
            Some((epoch, record)) => (Some(record.holder), epoch),
            None => (None, self.next_epoch - 1),
        }
    }

    pub fn holder(&self, epoch: u64) -> Option<NodeIdx> {
        self.epochs.get(&epoch).map(|r| r.holder)
    }

    pub fn revoke(&mut self, now: TrueUs) {
        if let Some((epoch, _)) = self.live(now) {
            self.epochs.get_mut(&epoch).expect("live epoch recorded").revoked = true;
        }
    }

    pub fn handle(&mut self, now: TrueUs, from: NodeIdx, op: &LeaseOp) -> LeaseResult {
        let ttl_ms = self.ttl_us / 1000;
        match *op {
            LeaseOp::Acquire => {
                if let Some((epoch, record)) = self.live(now) {
                    return LeaseResult::Held { holder: Some(record.holder), epoch };
                }
                if let Some((reserved, until)) = self.reserved_for {
                    if now < until && reserved != from {
                        return LeaseResult::Held { holder: Some(reserved), epoch: self.next_epoch - 1 };
                    }
                }
                self.reserved_for = None;
                let epoch = self.next_epoch;
                self.next_epoch += 1;
                let record = EpochRecord {
                    holder: from,
                    granted_us: now,
                    valid_until_us: now + self.ttl_us,
                    revoked: false,
                };
                if let Some(previous) = self.current {
                    assert!(self.epochs[&previous].valid_until_us <= now, "overlapping epochs");
                }
                self.epochs.insert(epoch, record);
                self.current = Some(epoch);
                LeaseResult::Granted { epoch, ttl_ms }
            }
            LeaseOp::Renew { epoch } => match self.live(now) {
                Some((live, record)) if live == epoch && record.holder == from && !record.revoked => {
                    self.epochs.get_mut(&epoch).expect("live").valid_until_us = now + self.ttl_us;
                    LeaseResult::Renewed { epoch, ttl_ms }
                }
                _ => LeaseResult::Lost { epoch },
            },
            LeaseOp::Release { epoch } => {
                if let Some((live, record)) = self.live(now) {
                    if live == epoch && record.holder == from && !record.revoked {
                        self.epochs.get_mut(&epoch).expect("live").valid_until_us = now;
                    }
                }
                LeaseResult::Released
            }
            LeaseOp::Handoff { epoch, to } => match self.live(now) {
                Some((live, record)) if live == epoch && record.holder == from && !record.revoked => {
                    self.epochs.get_mut(&epoch).expect("live").valid_until_us = now;
                    self.reserved_for = Some((to, now + self.ttl_us));
                    LeaseResult::Released
                }
                _ => LeaseResult::Lost { epoch },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_increase_and_never_overlap() {
        let mut lease = LeaseService::new(1000);
        assert_eq!(lease.handle(0, 0, &LeaseOp::Acquire), LeaseResult::Granted { epoch: 1, ttl_ms: 1000 });
        assert!(matches!(lease.handle(10, 1, &LeaseOp::Acquire), LeaseResult::Held { .. }));
        assert_eq!(lease.handle(1_000_000, 1, &LeaseOp::Acquire), LeaseResult::Granted { epoch: 2, ttl_ms: 1000 });
        assert_eq!(lease.handle(1_000_001, 0, &LeaseOp::Renew { epoch: 1 }), LeaseResult::Lost { epoch: 1 });
    }

    #[test]
    fn revoked_lease_cannot_renew_and_blocks_successor_until_ttl() {
        let mut lease = LeaseService::new(1000);
        lease.handle(0, 0, &LeaseOp::Acquire);
        lease.revoke(100);
        assert_eq!(lease.handle(200, 0, &LeaseOp::Renew { epoch: 1 }), LeaseResult::Lost { epoch: 1 });
        assert!(matches!(lease.handle(300, 1, &LeaseOp::Acquire), LeaseResult::Held { .. }));
        assert!(matches!(lease.handle(1_000_000, 1, &LeaseOp::Acquire), LeaseResult::Granted { epoch: 2, .. }));
    }

    #[test]
    fn handoff_reserves_next_epoch_for_target() {
        let mut lease = LeaseService::new(1000);
        lease.handle(0, 0, &LeaseOp::Acquire);
        assert_eq!(lease.handle(10, 0, &LeaseOp::Handoff { epoch: 1, to: 2 }), LeaseResult::Released);
        assert!(matches!(lease.handle(20, 1, &LeaseOp::Acquire), LeaseResult::Held { .. }));
        assert!(matches!(lease.handle(30, 2, &LeaseOp::Acquire), LeaseResult::Granted { epoch: 2, .. }));
    }
}
