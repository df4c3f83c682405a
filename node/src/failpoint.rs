//! Test-only fault injection points (`LTXFS_FAILPOINT_DIR`): they decide nothing and do nothing
//! unless a test arms one.

use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// Test-only fault injection: with `LTXFS_FAILPOINT_DIR` set, a point `name` is armed by a file
/// `<dir>/<name>.arm`; the next time it is reached it removes that file, creates
/// `<dir>/<name>.reached` and waits until `<dir>/<name>.release` exists, so that a test can hold
/// the node at an exact step (say, between a WAL commit frame and its LTX) while it injects a
/// fault. Unset (always, outside tests) or unarmed it does nothing.
pub fn failpoint(name: &str) {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    let Some(dir) = DIR.get_or_init(|| std::env::var_os("LTXFS_FAILPOINT_DIR").map(PathBuf::from)) else { return };
    if fs::remove_file(dir.join(format!("{name}.arm"))).is_err() {
        return;
    }
    let release = dir.join(format!("{name}.release"));
    let _ = File::create(dir.join(format!("{name}.reached")));
    tracing::warn!(name, "failpoint reached; waiting for its release file");
    while !release.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = fs::remove_file(release);
}
