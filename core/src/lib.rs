//! `ltxfs-core`: everything ltxfs decides, with no I/O.
//!
//! This crate is sans-IO: it never reads a clock, opens a file or socket, spawns a thread or draws
//! an unseeded random number. Drivers (the production `node`, the deterministic `sim`, unit tests)
//! feed it inputs with the current time as a value and carry out the commands it outputs.
//!
//! - [`detect`]: SQLite commit detection (all journal modes) and POSIX lock tables.
//! - [`ltx`]: the LTX v1 file format (LiteFS / superfly/ltx v0.3.x), byte for byte.
#![forbid(unsafe_code)]

pub mod detect;
pub mod ltx;
