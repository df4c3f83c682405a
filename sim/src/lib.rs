//! Deterministic simulator for `ltxfs-core` (issue 4): a seeded discrete-event world of nodes,
//! network, clocks, disks and a lease service, with invariant checkers and a scenario runner.
//!
//! A run is a pure function of (seed, scenario): one [`rng::Rng`] seed split per subsystem, one
//! event queue ordered by (true time, sequence number), no threads and no wall clock inside a
//! run. The world drives the real core node through [`core_binding`]; checkers watch every event.
//!
//! What this crate never does: change the core's behaviour (it only feeds inputs and carries out
//! outputs), or read anything from the host besides scenario files.

pub mod checker;
pub mod clock;
pub mod core_binding;
pub mod disk;
pub mod lease;
pub mod machine;
pub mod net;
pub mod pending;
pub mod random;
pub mod rng;
pub mod runner;
pub mod scenario;
pub mod trace;
pub mod workload;
pub mod world;
