//! The FUSE thread runs on the CPU of the thread it serves.
//!
//! What it decides: which CPU the calling FUSE thread may run on. Every
//! [`RESAMPLE_EVERY_REQUESTS`] requests (and at the first) it looks up the CPU the requesting
//! thread last ran on (`/proc/<tid>/stat`, field 39) and restricts the FUSE thread to that CPU.
//! It never touches another thread, never blocks, and never fails a request: any error leaves
//! the affinity as it was.
//!
//! Why: a FUSE request is a synchronous hand-off. The application thread sleeps in `write(2)`
//! until the reply; the FUSE thread sleeps in `read(2)` on `/dev/fuse` until the next request.
//! Left to the scheduler, the woken thread goes to whichever CPU is idle — the other one — so a
//! WAL commit (two WRITE round trips) costs four cross-CPU wake-ups. On a VM without guest halt
//! polling (Firecracker, the machine these figures come from) each wake-up of an idle vCPU is a
//! trip through the hypervisor. Measured (bench/RESULTS.md, session 5): 20,000 WAL/NORMAL commits
//! with the application and the FUSE thread both pinned to one CPU ran at 17,600–18,300 tx/s
//! with 29 µs of FUSE-thread CPU per commit; free to roam, 4,660–9,800 tx/s and 45–90 µs. The kernel's FUSE
//! over io_uring does the same by design (one queue per CPU, served on that CPU); fuser does not
//! speak it.
//!
//! The requesting thread is asleep while the request is served, so the two never compete for
//! the CPU; the node's other threads (runtime, background LTX writer) stay free to run on the
//! others. With several callers on different CPUs the thread follows the one it sampled last.
//! It only helps while the other CPUs are busy: woken by the reply, the application itself is
//! placed on an idle CPU if there is one (measured: no gain with nothing else running; under a
//! sustained WAL load the background LTX writer keeps one busy, and then 6,200–6,900 →
//! 10,800–12,000 tx/s with the same binary, the option off and on).
//! `fuse.follow-caller-cpu: false` turns it off.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Requests between two looks at the caller's CPU (a look costs a `/proc` read, ~5 µs, so
/// ~0.3 µs a request; a writer that moved is followed within ~8 WAL commits, each of which
/// costs ~50 µs more while the two are apart).
pub const RESAMPLE_EVERY_REQUESTS: u32 = 16;

/// A request this long after the previous one looks at once: the application did something
/// else meanwhile and may have moved (a burst after a pause would otherwise run its first ~32
/// commits across CPUs).
pub const RESAMPLE_AFTER_GAP: Duration = Duration::from_millis(1);

#[derive(Clone, Copy)]
struct Follow {
    /// Requests left before the next look.
    countdown: u32,
    /// The CPU this thread is restricted to, if any.
    pinned_cpu: Option<usize>,
    /// When the previous request came.
    last_request: Option<Instant>,
}

thread_local! {
    static FOLLOW: Cell<Follow> = const { Cell::new(Follow { countdown: 0, pinned_cpu: None, last_request: None }) };
}

/// The CPUs the process may use: the first following thread's affinity before it was pinned.
static ALLOWED: OnceLock<CpuSet> = OnceLock::new();

/// Gives the calling thread back every CPU the process may use. A thread inherits the affinity
/// of the thread that spawns it: threads the FUSE thread may start (the background LTX writer,
/// the runtime's blocking pool) call this first. Does nothing if no thread ever followed.
pub fn release() {
    crate::idle_handoff::leave();
    if let Some(allowed) = ALLOWED.get() {
        let _ = sched_setaffinity(Pid::from_raw(0), allowed);
    }
}

/// Called by a FUSE thread for each hot request from thread `tid`.
pub fn observe(tid: u32) {
    observe_at(tid, Instant::now());
}

fn observe_at(tid: u32, now: Instant) {
    FOLLOW.with(|cell| {
        let mut f = cell.get();
        if f.last_request.is_none_or(|t| now.duration_since(t) > RESAMPLE_AFTER_GAP) {
            f.countdown = 0;
        }
        f.last_request = Some(now);
        if f.countdown > 0 {
            f.countdown -= 1;
            cell.set(f);
            return;
        }
        f.countdown = RESAMPLE_EVERY_REQUESTS;
        if f.pinned_cpu.is_none() && ALLOWED.get().is_none() {
            if let Some(mask) = current_affinity() {
                let _ = ALLOWED.set(mask);
            }
        }
        if let (Some(cpu), Some(allowed)) = (caller_cpu(tid), ALLOWED.get()) {
            let permitted = allowed.is_set(cpu).unwrap_or(false);
            if permitted && f.pinned_cpu != Some(cpu) && pin_to(cpu) {
                f.pinned_cpu = Some(cpu);
            }
        }
        cell.set(f);
    });
}

/// The CPU thread `tid` last ran on.
fn caller_cpu(tid: u32) -> Option<usize> {
    if tid == 0 {
        return None; // a request the kernel made on its own behalf
    }
    let stat = std::fs::read_to_string(format!("/proc/{tid}/stat")).ok()?;
    parse_processor(&stat)
}

/// Field 39 ("processor") of a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself: fields are counted after the last `)`.
fn parse_processor(stat: &str) -> Option<usize> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' come fields 3, 4, …: field 39 is the 37th of them.
    rest.split_ascii_whitespace().nth(36)?.parse().ok()
}

/// This thread's affinity (pid 0 = the calling thread).
fn current_affinity() -> Option<CpuSet> {
    sched_getaffinity(Pid::from_raw(0)).ok()
}

fn pin_to(cpu: usize) -> bool {
    let mut set = CpuSet::new();
    set.set(cpu).is_ok() && sched_setaffinity(Pid::from_raw(0), &set).is_ok()
}

#[cfg(test)]
fn cpus_in(set: &CpuSet) -> usize {
    (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_processor_field_is_counted_after_the_command_name() {
        // A command name with spaces and a ')' of its own, processor = 7.
        let fields: Vec<String> = (3..=52).map(|i| if i == 39 { "7".to_string() } else { i.to_string() }).collect();
        let line = format!("1234 (a b) c) {}\n", fields.join(" "));
        assert_eq!(parse_processor(&line), Some(7));
        assert_eq!(parse_processor("1234 (x) S 1"), None);
        assert_eq!(parse_processor("no parenthesis"), None);
    }

    #[test]
    fn a_thread_follows_its_caller_to_the_callers_cpu() {
        // The caller is this very thread: after a look, the thread is restricted to the CPU it
        // was on, and sched_getcpu agrees.
        let tid = nix::unistd::gettid().as_raw() as u32;
        let before = current_affinity().expect("affinity");
        std::thread::spawn(move || {
            // Requests 1 µs apart (no gap between them).
            let t0 = Instant::now();
            let at = |i: u32| t0 + Duration::from_micros(u64::from(i));
            observe_at(tid, at(0));
            let pinned = FOLLOW.with(|c| c.get().pinned_cpu).expect("pinned after the first request");
            assert_eq!(nix::sched::sched_getcpu().expect("getcpu"), pinned);
            let now = current_affinity().expect("affinity");
            assert_eq!(cpus_in(&now), 1);
            // The next RESAMPLE_EVERY_REQUESTS requests do not look again.
            for i in 1..=RESAMPLE_EVERY_REQUESTS {
                observe_at(tid, at(i));
            }
            assert_eq!(FOLLOW.with(|c| c.get().countdown), 0);
            // The next looks again; so does one after a pause, however soon after a look.
            observe_at(tid, at(RESAMPLE_EVERY_REQUESTS + 1));
            assert_eq!(FOLLOW.with(|c| c.get().countdown), RESAMPLE_EVERY_REQUESTS);
            observe_at(tid, at(RESAMPLE_EVERY_REQUESTS + 2));
            assert_eq!(FOLLOW.with(|c| c.get().countdown), RESAMPLE_EVERY_REQUESTS - 1);
            observe_at(tid, at(RESAMPLE_EVERY_REQUESTS + 2) + RESAMPLE_AFTER_GAP + Duration::from_micros(1));
            assert_eq!(FOLLOW.with(|c| c.get().countdown), RESAMPLE_EVERY_REQUESTS, "a request after a gap looks at once");
        })
        .join()
        .expect("follower thread");
        // Another thread's affinity is untouched.
        let after = current_affinity().expect("affinity");
        assert_eq!(cpus_in(&before), cpus_in(&after));
        // A thread started by a pinned thread inherits the pin until it releases it.
        std::thread::spawn(move || {
            observe(tid);
            std::thread::spawn(move || {
                assert_eq!(cpus_in(&current_affinity().expect("affinity")), 1);
                release();
                assert_eq!(cpus_in(&current_affinity().expect("affinity")), cpus_in(&before));
            })
            .join()
            .expect("child thread");
        })
        .join()
        .expect("follower thread");
    }
}
