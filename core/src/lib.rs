//! `ltxfs-core`: everything ltxfs decides, with no I/O.
//!
//! This crate is sans-IO: it never reads a clock, opens a file or socket, spawns a thread or draws
//! an unseeded random number. Drivers (the production `node`, the deterministic `sim`, unit tests)
//! feed it inputs with the current time as a value and carry out the commands it outputs.
//!
//! - [`detect`]: SQLite commit detection (all journal modes) and POSIX lock tables.
//! - [`ltx`]: the LTX v1 file format (LiteFS / superfly/ltx v0.3.x), byte for byte.
//! - [`time`]: the monotonic [`time::Time`] and wall-clock [`time::WallMs`] values handlers take.
//! - [`ids`]: node, epoch, cluster and database identifiers.
//! - [`msg`]: the replication messages and their binary codec.
//! - [`chkindex`]: per-page checksums so a commit costs O(dirty pages); persist and reload.
//! - [`catchup`]: what to send a lagging peer (nothing, one compacted LTX, or a snapshot).
//! - [`retention`]: which retained LTX files may be deleted.
//! - [`node`]: the node state machine (lease roles, write path, replica apply, recovery).
//! - [`testing`]: an in-process cluster driver (perfect network, disk, lease service).
#![forbid(unsafe_code)]

pub mod detect;
pub mod catchup;
pub mod chkindex;
pub mod ids;
pub mod ltx;
pub mod msg;
pub mod retention;
pub mod time;
pub mod node;
pub mod testing;
#[cfg(feature = "planted-bugs")]
pub mod planted;
