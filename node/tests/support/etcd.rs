//! etcd test harness (filled in with the etcd backend).
