//! The LTX v1 file format, byte-compatible with LiteFS 0.5 (superfly/ltx v0.3.x).
//!
//! This module encodes, decodes, validates and compacts LTX files; it decides nothing about
//! replication and does no I/O of its own beyond the `Read`/`Write` it is handed.

pub mod checksum;
