//! The node's own SQLite locks, taken in the kernel's lock table of the mount.
//!
//! The mount leaves POSIX byte-range locks to the kernel (it does not ask for
//! `FUSE_POSIX_LOCKS`), so SQLite's `fcntl` lock calls never reach this process: that saves
//! every SETLK round trip (6 per WAL commit, 9 per rollback-journal commit). When the node
//! itself must keep SQLite connections out — a replica's apply, a snapshot read, rolling back a
//! transaction a step-down interrupted, folding a WAL — it takes the locks SQLite would take,
//! as open-file-description locks (`F_OFD_SETLK`) on descriptors it opens through its own
//! mount. They live in the same kernel table as the applications' locks on the same file, so
//! they conflict exactly as another SQLite process's would.
//!
//! Decides: which descriptor of the mount a lock holder uses (one per [`Holder`], so the
//! node's holders exclude each other like separate processes), when descriptors are opened
//! (ahead of need when a database appears, else on first use) and how long a caller waits for
//! one. Never decides which locks to take or when (that is `fs.rs`, following SQLite's
//! protocol), and never touches a backing file.
//!
//! Opening a file of the mount is a FUSE request that this process itself answers, so every
//! open happens on one opener thread and callers wait for it with a bound: should a FUSE
//! request be waiting on the caller (a commit queued behind a snapshot read on the disk
//! worker), the caller gives up after its bound instead of deadlocking, and the open completes
//! once the FUSE request is answered.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ltxfs_core::detect::locks::LockKind;
use ltxfs_core::detect::LockFile;
use nix::fcntl::{fcntl, FcntlArg};

/// Who holds a lock. Each has its own descriptors (its own open file descriptions), so two
/// holders conflict with each other like two processes would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Holder {
    /// The disk worker: replica applies and `/import` (runtime `ApplyHook`).
    Apply,
    /// The disk worker: snapshot reads of a rollback-journal database.
    Read,
    /// The step-down watcher rolling back interrupted transactions.
    StepDown,
    /// Folding a commit with an unknown outcome into SQLite's view.
    Settle,
}

/// Upper bound on open lock descriptors (2 files × 4 holders per database).
const MAX_OPEN_FILES: usize = 8 * 4096;

type Key = (String, LockFile, Holder);

struct OpenRequest {
    key: Key,
    reply: Option<Sender<io::Result<Arc<File>>>>,
}

/// Descriptors of the mount used for the node's own locks.
pub struct MountLocks {
    files: Arc<Mutex<BTreeMap<Key, Arc<File>>>>,
    opener: Mutex<Option<Sender<OpenRequest>>>,
    /// Thread id of the opener (FUSE requests carry the calling thread's id, not the
    /// process id): 0 until it runs.
    opener_tid: Arc<AtomicU32>,
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn suffix(file: LockFile) -> &'static str {
    match file {
        LockFile::Database => "",
        LockFile::Shm => "-shm",
    }
}

impl Default for MountLocks {
    fn default() -> Self {
        MountLocks::new()
    }
}

impl MountLocks {
    /// Not started: every lookup finds nothing until [`MountLocks::start`].
    pub fn new() -> MountLocks {
        MountLocks {
            files: Arc::new(Mutex::new(BTreeMap::new())),
            opener: Mutex::new(None),
            opener_tid: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Starts the opener thread for the mount at `mount_dir` (once it serves requests).
    pub fn start(&self, mount_dir: PathBuf) -> io::Result<()> {
        let (tx, rx) = mpsc::channel::<OpenRequest>();
        let files = self.files.clone();
        let tid = self.opener_tid.clone();
        std::thread::Builder::new().name("ltxfs-lock-open".into()).spawn(move || {
            node::caller_cpu::release();
            tid.store(nix::unistd::gettid().as_raw() as u32, Ordering::Release);
            opener(mount_dir, rx, files)
        })?;
        *guard(&self.opener) = Some(tx);
        Ok(())
    }

    /// Closes every descriptor and stops the opener (before unmounting: an open descriptor
    /// of the mount would make the unmount fail).
    pub fn close_all(&self) {
        guard(&self.opener).take();
        guard(&self.files).clear();
    }

    /// Whether a FUSE request comes from the opener (`Request::pid` is the calling thread's id).
    /// Its opens may be writable on a read-only node: a write lock needs a writable
    /// descriptor, and the node never writes through one.
    pub fn is_opener(&self, request_tid: u32) -> bool {
        let tid = self.opener_tid.load(Ordering::Acquire);
        tid != 0 && tid == request_tid
    }

    /// The descriptor of `db`'s `file` for `holder` if it is open already (never opens one).
    pub fn cached(&self, db: &str, file: LockFile, holder: Holder) -> Option<Arc<File>> {
        guard(&self.files).get(&(db.to_string(), file, holder)).cloned()
    }

    /// Opens the descriptors of `db`'s `file` for every holder in the background, so that the
    /// first apply or read finds them open. `-shm` is created if missing.
    pub fn open_ahead(&self, db: &str, file: LockFile) {
        let Some(tx) = guard(&self.opener).clone() else { return };
        for holder in [Holder::Apply, Holder::Read, Holder::StepDown, Holder::Settle] {
            let key = (db.to_string(), file, holder);
            if !guard(&self.files).contains_key(&key) {
                let _ = tx.send(OpenRequest { key, reply: None });
            }
        }
    }

    /// The descriptor of `db`'s `file` for `holder`, opened (and for `-shm` created) through the
    /// mount if need be, waiting at most `wait`. `None` if the mount is not up, the open failed
    /// or took longer (logged).
    pub fn file(&self, db: &str, file: LockFile, holder: Holder, wait: Duration) -> Option<Arc<File>> {
        let key = (db.to_string(), file, holder);
        if let Some(f) = guard(&self.files).get(&key) {
            return Some(f.clone());
        }
        let tx = guard(&self.opener).clone()?;
        let (reply, rx) = mpsc::channel();
        tx.send(OpenRequest { key, reply: Some(reply) }).ok()?;
        match rx.recv_timeout(wait) {
            Ok(Ok(f)) => Some(f),
            Ok(Err(err)) => {
                tracing::warn!(db, ?file, %err, "cannot open a file of the mount for the node's locks");
                None
            }
            Err(_) => {
                tracing::warn!(db, ?file, wait_ms = wait.as_millis() as u64, "opening a file of the mount for the node's locks takes too long");
                None
            }
        }
    }
}

fn opener(mount_dir: PathBuf, rx: Receiver<OpenRequest>, files: Arc<Mutex<BTreeMap<Key, Arc<File>>>>) {
    // Bounded by the channel: one open per request.
    while let Ok(OpenRequest { key, reply }) = rx.recv() {
        let existing = guard(&files).get(&key).cloned();
        let result = match existing {
            Some(f) => Ok(f),
            None => {
                let path = mount_dir.join(format!("{}{}", key.0, suffix(key.1)));
                let opened = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(key.1 == LockFile::Shm)
                    .truncate(false)
                    .open(&path);
                opened.and_then(|f| {
                    let f = Arc::new(f);
                    let mut files = guard(&files);
                    if files.len() >= MAX_OPEN_FILES {
                        return Err(io::Error::other("too many lock descriptors open"));
                    }
                    Ok(files.entry(key.clone()).or_insert(f).clone())
                })
            }
        };
        match reply {
            Some(reply) => {
                let _ = reply.send(result);
            }
            None => {
                if let Err(err) = result {
                    tracing::debug!(db = key.0, file = ?key.1, %err, "opening a lock descriptor ahead failed");
                }
            }
        }
    }
}

fn flock(kind: Option<LockKind>, start: u64, end: u64) -> io::Result<libc::flock> {
    let l_type = match kind {
        Some(LockKind::Read) => libc::F_RDLCK,
        Some(LockKind::Write) => libc::F_WRLCK,
        None => libc::F_UNLCK,
    };
    let l_start = i64::try_from(start).map_err(io::Error::other)?;
    let l_len = i64::try_from(end - start + 1).map_err(io::Error::other)?;
    Ok(libc::flock {
        l_type: l_type as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start,
        l_len,
        l_pid: 0,
    })
}

/// `F_OFD_SETLK`: takes `kind` on bytes `start..=end` without waiting. `Ok(false)` if another
/// holder (a SQLite connection or another [`Holder`]) is in the way.
pub fn try_lock(file: &File, kind: LockKind, start: u64, end: u64) -> io::Result<bool> {
    let lock = flock(Some(kind), start, end)?;
    match fcntl(file, FcntlArg::F_OFD_SETLK(&lock)) {
        Ok(_) => Ok(true),
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EACCES) => Ok(false),
        Err(err) => Err(io::Error::from(err)),
    }
}

/// Releases bytes `start..=end` (what this descriptor held there).
pub fn unlock(file: &File, start: u64, end: u64) -> io::Result<()> {
    let lock = flock(None, start, end)?;
    fcntl(file, FcntlArg::F_OFD_SETLK(&lock)).map(|_| ()).map_err(io::Error::from)
}

/// Releases everything this descriptor holds.
pub fn unlock_all(file: &File) -> io::Result<()> {
    let mut lock = flock(None, 0, 0)?;
    lock.l_len = 0; // to the end of the file and beyond
    fcntl(file, FcntlArg::F_OFD_SETLK(&lock)).map(|_| ()).map_err(io::Error::from)
}

/// `F_OFD_GETLK`: whether anyone but this descriptor holds a lock that conflicts with `kind`
/// on bytes `start..=end`.
pub fn held_by_other(file: &File, kind: LockKind, start: u64, end: u64) -> io::Result<bool> {
    let mut lock = flock(Some(kind), start, end)?;
    fcntl(file, FcntlArg::F_OFD_GETLK(&mut lock)).map_err(io::Error::from)?;
    Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_exclude_each_other_like_processes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let open = || OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).unwrap();
        let (a, b) = (open(), open());
        assert!(try_lock(&a, LockKind::Write, 120, 127).unwrap());
        assert!(!try_lock(&b, LockKind::Read, 124, 124).unwrap());
        assert!(held_by_other(&b, LockKind::Read, 120, 120).unwrap());
        assert!(!held_by_other(&a, LockKind::Write, 120, 127).unwrap());
        // A read lock elsewhere is shared.
        assert!(try_lock(&a, LockKind::Read, 200, 300).unwrap());
        assert!(try_lock(&b, LockKind::Read, 250, 250).unwrap());
        assert!(!try_lock(&b, LockKind::Write, 200, 200).unwrap());
        unlock(&a, 120, 127).unwrap();
        assert!(try_lock(&b, LockKind::Write, 120, 127).unwrap());
        unlock_all(&b).unwrap();
        unlock_all(&a).unwrap();
        assert!(try_lock(&b, LockKind::Write, 0, 1 << 40).unwrap());
    }
}
