//! Loopback ports for the test harnesses' child processes (shared by `support` and
//! `cluster_support` through `#[path]`).

/// A loopback port for a child process to listen on. Not from the kernel's ephemeral range
/// (an outgoing connection of any process — the nodes' own peer links, etcd's clients — could
/// take such a port between this pick and the child's bind: seen as "Address already in use");
/// random below it, bindable now, never the same twice in this process.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let seed = std::collections::hash_map::RandomState::new();
    for attempt in 0u64..10_000 {
        let mut h = seed.build_hasher();
        h.write_u64(attempt);
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port in 20000..32000");
}
