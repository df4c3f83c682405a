//! Deterministic simulator for `ltxfs-core` (issue 4): a seeded discrete-event world of nodes,
//! network, clocks, disks and a lease service, with invariant checkers and a scenario runner.
