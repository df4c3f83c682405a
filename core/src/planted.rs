//! Planted bugs (feature `planted-bugs`, simulator only): known-bad behaviours switched on by
//! name at run time, so the simulator can prove its checkers catch them.
//!
//! This module decides nothing by itself; the node consults [`PlantedBugs`] at the exact places
//! each bug lives. Normal builds do not contain this module.

use std::collections::BTreeSet;

/// One known-bad behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PlantedBug {
    /// Accept messages from any epoch (no fencing of stale primaries).
    SkipEpochCheck,
    /// Keep accepting and confirming writes after the lease deadline.
    WriteAfterLease,
    /// Apply an incremental LTX whatever the replica's position.
    SkipPreapplyCheck,
    /// Report sync-mode commits committed before any replica acked.
    AckBeforeReplicas,
    /// Write LTX files without fsync.
    NoFsyncLtx,
    /// Start writing right after acquiring the lease, without the recovery phase.
    SkipRecovery,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 6] = [
        PlantedBug::SkipEpochCheck,
        PlantedBug::WriteAfterLease,
        PlantedBug::SkipPreapplyCheck,
        PlantedBug::AckBeforeReplicas,
        PlantedBug::NoFsyncLtx,
        PlantedBug::SkipRecovery,
    ];

    /// The name the simulator uses (`skip-epoch-check`, …).
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::SkipEpochCheck => "skip-epoch-check",
            PlantedBug::WriteAfterLease => "write-after-lease",
            PlantedBug::SkipPreapplyCheck => "skip-preapply-check",
            PlantedBug::AckBeforeReplicas => "ack-before-replicas",
            PlantedBug::NoFsyncLtx => "no-fsync-ltx",
            PlantedBug::SkipRecovery => "skip-recovery",
        }
    }

    pub fn from_name(name: &str) -> Option<PlantedBug> {
        PlantedBug::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// The set of planted bugs switched on for one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlantedBugs(BTreeSet<PlantedBug>);

impl PlantedBugs {
    pub fn none() -> PlantedBugs {
        PlantedBugs::default()
    }
    pub fn with(mut self, bug: PlantedBug) -> PlantedBugs {
        self.0.insert(bug);
        self
    }
    pub fn is_on(&self, bug: PlantedBug) -> bool {
        self.0.contains(&bug)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for bug in PlantedBug::ALL {
            assert_eq!(PlantedBug::from_name(bug.name()), Some(bug));
        }
        assert_eq!(PlantedBug::from_name("nope"), None);
    }
}
