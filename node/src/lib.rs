//! The `node` library: the parts of the `ltxfs` binary that integration tests and the binary
//! share — the runtime driving `ltxfs_core::node::Node`, the HTTP node API and the lease
//! backends. The binary (`main.rs`) adds the CLI and the FUSE mount on top.

pub mod caller_cpu;
pub mod failpoint;
pub mod http;
pub mod idle_handoff;
pub mod lease;
pub mod runtime;
