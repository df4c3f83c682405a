//! The FUSE thread at idle priority, so that the application its reply wakes stays on its CPU.
//!
//! What it decides: the scheduling policy of the FUSE thread — `SCHED_IDLE` while the hand-off
//! is on, `SCHED_OTHER` while a guard has demoted it — and when the guard demotes and
//! re-promotes it. It never touches any other thread (threads the FUSE thread starts go back to
//! `SCHED_OTHER` themselves: [`leave`]), never blocks or fails a request, and turns itself off
//! for good if the process may not switch policies both ways.
//!
//! Why: a FUSE reply wakes the application thread, and the kernel places a woken thread on an
//! idle CPU if there is one — the FUSE thread is running on the application's own CPU at that
//! moment, so the application moves to the other CPU, and every commit's hand-offs cross CPUs
//! (on a VM without guest halt polling each is an IPI to a halted vCPU through the hypervisor,
//! ~25 µs here). The scheduler counts a CPU whose runnable threads are all `SCHED_IDLE` as idle
//! (`sched_idle_cpu`): with the FUSE thread at idle priority the application is woken on its
//! own CPU and preempts the FUSE thread at once. Together with `fuse.follow-caller-cpu` (the
//! request side) a WAL/NORMAL commit's two round trips stay on one CPU (bench/RESULTS.md).
//!
//! The danger is starvation: a `SCHED_IDLE` thread gets almost no CPU next to a busy normal
//! one, and every request waits for it. A guard thread (normal priority) reads the FUSE
//! thread's run-queue wait (`/proc/self/task/<tid>/schedstat`) after each [`GUARD_PERIOD_BUSY`]
//! (each [`GUARD_PERIOD_QUIET`] once requests stopped) in which the thread started no request
//! (while requests flow it reads nothing); when the thread started none during a period
//! although one was pending (the connection's `waiting` count in the
//! fusectl file system, when mounted) and spent [`STARVED_WAIT`] or more of it waiting for a
//! CPU (waiting behind the application it just woke is normal: it preempts the FUSE thread on
//! purpose; a long request blocked in I/O is not starvation), the guard switches the thread to
//! `SCHED_OTHER` for [`DEMOTED_FIRST`], doubling up to [`DEMOTED_MAX`] while starvation
//! recurs soon after each re-promotion. A request is thus held up by starvation for at most
//! about three busy periods (plus the guard's own wake-up) each time.
//! `fuse.idle-priority: false` turns it off.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use thread_priority::{
    set_thread_priority_and_policy, thread_native_id, thread_schedule_policy, NormalThreadSchedulePolicy, ThreadId,
    ThreadPriority, ThreadPriorityOsValue, ThreadSchedulePolicy,
};

/// Guard period while requests flow (served within [`QUIET_AFTER`]).
pub const GUARD_PERIOD_BUSY: Duration = Duration::from_millis(5);
/// Guard period otherwise.
pub const GUARD_PERIOD_QUIET: Duration = Duration::from_millis(50);
/// No request for this long: the guard looks every [`GUARD_PERIOD_QUIET`].
pub const QUIET_AFTER: Duration = Duration::from_millis(100);
/// Run-queue wait within one guard period that counts as starvation.
pub const STARVED_WAIT: Duration = Duration::from_millis(3);
/// First demotion's length; doubled while starvation recurs within [`RECUR_WITHIN`].
pub const DEMOTED_FIRST: Duration = Duration::from_secs(1);
pub const DEMOTED_MAX: Duration = Duration::from_secs(64);
/// Starvation this soon after a re-promotion doubles the next demotion.
pub const RECUR_WITHIN: Duration = Duration::from_secs(10);

/// On after a successful [`enable`].
static ENABLED: AtomicBool = AtomicBool::new(false);
/// The fusectl `waiting` file of the mount's connection, if fusectl is mounted.
static WAITING_FILE: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
/// The FUSE thread, registered at its first request.
static FUSE_THREAD: OnceLock<FuseThread> = OnceLock::new();
/// Requests the FUSE thread started (the guard's sign of traffic).
static SERVED: AtomicU64 = AtomicU64::new(0);
/// Times the guard demoted the FUSE thread (`/metrics`).
static DEMOTIONS: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy)]
struct FuseThread {
    native: ThreadId,
    tid: i32,
}

thread_local! {
    static IS_FUSE_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Turns the hand-off on for the mount at `mount_dir`, if this process may switch a thread to
/// `SCHED_IDLE` and back (root, `CAP_SYS_NICE`, or an `RLIMIT_NICE` of 20) and runs at nice 0
/// (the switch back sets nice 0). Err says why not; nothing changed then.
pub fn enable(mount_dir: &std::path::Path) -> Result<(), String> {
    let probe = std::thread::Builder::new()
        .name("ltxfs-sched-probe".into())
        .spawn(|| -> Result<(), String> {
            if own_nice() != Some(0) {
                return Err("the process does not run at nice 0".into());
            }
            set_policy(thread_native_id(), NormalThreadSchedulePolicy::Idle).map_err(|e| format!("cannot switch to SCHED_IDLE: {e}"))?;
            // This thread ends here either way: a failed switch back strands nothing.
            set_policy(thread_native_id(), NormalThreadSchedulePolicy::Other)
                .map_err(|e| format!("cannot switch back from SCHED_IDLE (needs CAP_SYS_NICE or RLIMIT_NICE 20): {e}"))?;
            match thread_schedule_policy() {
                Ok(ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other)) => Ok(()),
                other => Err(format!("policy after the switch back: {other:?}")),
            }
        })
        .map_err(|e| format!("cannot start the probe thread: {e}"))?;
    probe.join().map_err(|_| "the probe thread panicked".to_string())??;
    let _ = WAITING_FILE.set(waiting_file(mount_dir));
    ENABLED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Called by the FUSE thread at the start of every request: the first call switches it to
/// `SCHED_IDLE` and starts the guard.
pub fn on_request() {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    SERVED.fetch_add(1, Ordering::Relaxed);
    if IS_FUSE_THREAD.with(|c| c.get()) {
        return;
    }
    IS_FUSE_THREAD.with(|c| c.set(true));
    let me = FuseThread { native: thread_native_id(), tid: nix::unistd::gettid().as_raw() };
    if FUSE_THREAD.set(me).is_err() {
        return; // another FUSE thread has it (one is all fuser runs here)
    }
    if let Err(e) = set_policy(me.native, NormalThreadSchedulePolicy::Idle) {
        tracing::warn!(%e, "FUSE thread: cannot switch to SCHED_IDLE; hand-off off");
        return;
    }
    let spawned = std::thread::Builder::new().name("ltxfs-fuse-guard".into()).spawn(move || {
        leave();
        guard(me);
    });
    if let Err(e) = spawned {
        tracing::warn!(%e, "cannot start the FUSE thread's guard; the FUSE thread goes back to SCHED_OTHER");
        let _ = set_policy(me.native, NormalThreadSchedulePolicy::Other);
    }
}

/// For a thread the FUSE thread may start (it inherits `SCHED_IDLE`): back to `SCHED_OTHER`.
pub fn leave() {
    if ENABLED.load(Ordering::Relaxed) && !IS_FUSE_THREAD.with(|c| c.get()) {
        let _ = set_policy(thread_native_id(), NormalThreadSchedulePolicy::Other);
    }
}

/// For a background thread whose work nothing waits for (the LTX writer): `SCHED_IDLE` too
/// while the hand-off is on. Woken on the application's CPU, a normal-priority thread there
/// makes that CPU busy again, and the application's next wake-up goes to the other one.
/// Starved, its queue only grows until commits write it themselves (bounded).
pub fn background() {
    if ENABLED.load(Ordering::Relaxed) {
        let _ = set_policy(thread_native_id(), NormalThreadSchedulePolicy::Idle);
    }
}

/// Times the guard demoted the FUSE thread since start-up.
pub fn demotions() -> u64 {
    DEMOTIONS.load(Ordering::Relaxed)
}

fn guard(fuse: FuseThread) {
    let mut last_served = SERVED.load(Ordering::Relaxed);
    let mut last_activity = Instant::now();
    let mut demoted_for = DEMOTED_FIRST;
    let mut demoted_until: Option<Instant> = None;
    let mut promoted_at = Instant::now();
    // The thread's run-queue wait at the end of the previous period, if no request started in
    // it: while requests flow the guard reads nothing.
    let mut baseline: Option<u64> = None;
    loop {
        let busy = last_activity.elapsed() < QUIET_AFTER;
        std::thread::sleep(if busy { GUARD_PERIOD_BUSY } else { GUARD_PERIOD_QUIET });
        let now = Instant::now();
        let served = SERVED.load(Ordering::Relaxed);
        let progressed = served != last_served;
        last_served = served;
        if progressed {
            last_activity = now;
        }
        if let Some(until) = demoted_until {
            if now >= until && set_policy(fuse.native, NormalThreadSchedulePolicy::Idle).is_ok() {
                demoted_until = None;
                promoted_at = now;
                baseline = None;
            }
            continue;
        }
        if progressed {
            baseline = None;
            continue;
        }
        // The FUSE thread is gone (unmounted): so is the guard.
        let Some(wait) = run_wait_ns(fuse.tid) else { return };
        let waited = baseline.map(|b| Duration::from_nanos(wait.saturating_sub(b)));
        baseline = Some(wait);
        // Starved: no request started for a whole period although one is pending, and the
        // thread spent the time wanting a CPU (not blocked in a long request's I/O).
        if waited.is_some_and(|w| w >= STARVED_WAIT) && request_pending() {
            if now.duration_since(promoted_at) < RECUR_WITHIN && DEMOTIONS.load(Ordering::Relaxed) > 0 {
                demoted_for = (demoted_for * 2).min(DEMOTED_MAX);
            } else {
                demoted_for = DEMOTED_FIRST;
            }
            if set_policy(fuse.native, NormalThreadSchedulePolicy::Other).is_err() {
                tracing::error!("cannot raise the starved FUSE thread to SCHED_OTHER; the guard stops");
                return;
            }
            DEMOTIONS.fetch_add(1, Ordering::Relaxed);
            let waited_us = waited.map_or(0, |w| w.as_micros() as u64);
            tracing::info!(waited_us, demoted_for_s = demoted_for.as_secs(), "FUSE thread starved at idle priority; SCHED_OTHER for a while");
            demoted_until = Some(now + demoted_for);
        }
    }
}

/// Whether a request of the mount's connection is pending (true when unknown).
fn request_pending() -> bool {
    let Some(Some(path)) = WAITING_FILE.get() else { return true };
    std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<u64>().ok()).is_none_or(|n| n > 0)
}

/// The fusectl file counting the requests of the connection serving `mount_dir`.
fn waiting_file(mount_dir: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(mount_dir).ok()?.dev();
    // fusectl names a connection by the kernel's device number: major 0 for FUSE, so the minor.
    let path = std::path::PathBuf::from(format!("/sys/fs/fuse/connections/{}/waiting", nix::sys::stat::minor(dev)));
    path.exists().then_some(path)
}

/// Nanoseconds thread `tid` of this process spent runnable but waiting for a CPU.
fn run_wait_ns(tid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    parse_schedstat_wait(&text)
}

/// Field 2 of a `schedstat` line: time waiting on a run queue (ns).
fn parse_schedstat_wait(text: &str) -> Option<u64> {
    text.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// This thread's nice value (field 19 of `/proc/thread-self/stat`).
fn own_nice() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' come fields 3, 4, …: field 19 is the 17th of them.
    rest.split_ascii_whitespace().nth(16)?.parse().ok()
}

/// Normal policies take static priority 0; the crate also sets the calling thread's nice to
/// that value (0), which [`enable`] checked is already the case.
fn set_policy(thread: ThreadId, policy: NormalThreadSchedulePolicy) -> Result<(), thread_priority::Error> {
    set_thread_priority_and_policy(thread, ThreadPriority::Os(ThreadPriorityOsValue::default()), ThreadSchedulePolicy::Normal(policy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_and_stat_fields_are_read_by_position() {
        assert_eq!(parse_schedstat_wait("624473 98765 2\n"), Some(98765));
        assert_eq!(parse_schedstat_wait("624473"), None);
        assert!(run_wait_ns(nix::unistd::gettid().as_raw()).is_some(), "this thread's schedstat");
        assert_eq!(own_nice(), Some(0), "tests run at nice 0");
    }

    /// A thread at idle priority next to a busy normal one on the same CPU: the guard raises it.
    #[test]
    fn a_starved_fuse_thread_is_raised_to_sched_other() {
        use nix::sched::{sched_setaffinity, CpuSet};
        use std::sync::Arc;
        let dir = tempfile::tempdir().expect("temp dir");
        if let Err(why) = enable(dir.path()) {
            // Without CAP_SYS_NICE the hand-off stays off, and says why (CI runs as root).
            assert!(why.contains("SCHED_IDLE") || why.contains("nice"), "{why}");
            return;
        }
        let pin_to_cpu0 = || {
            let mut set = CpuSet::new();
            set.set(0).expect("cpu 0");
            sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pin to cpu 0");
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let fuse = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                pin_to_cpu0();
                on_request();
                let policy = thread_schedule_policy().expect("policy");
                tx.send((thread_native_id(), policy)).expect("send");
                // Wants the CPU all the time, like a FUSE thread with requests queued.
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        let (native, policy) = rx.recv().expect("the FUSE thread registered");
        assert_eq!(policy, ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle), "idle after its first request");
        let hog = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                pin_to_cpu0();
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        // Polls the outcome; the bound only keeps a broken guard from hanging the test.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut raised = false;
        while Instant::now() < deadline {
            let (policy, _) = thread_priority::thread_schedule_policy_param(native).expect("policy of the FUSE thread");
            if policy == ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other) {
                raised = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::Relaxed);
        fuse.join().expect("FUSE thread");
        hog.join().expect("hog");
        assert!(raised, "the guard raised the starved thread to SCHED_OTHER");
        assert!(demotions() >= 1);
    }
}
