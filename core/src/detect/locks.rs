//! POSIX (`fcntl`) byte-range lock table for one file, as SQLite's unix VFS uses it.
//!
//! Decides: whether a lock request conflicts with another owner's locks (non-blocking only: a
//! conflict is reported, never waited for), what an owner holds after a set/unlock (ranges are
//! split like POSIX does), and what `F_GETLK` reports. Never does: wait, sleep, or know about
//! files; owners are opaque `u64` ids (FUSE `lock_owner`).

/// Read (shared) or write (exclusive) lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LockKind {
    Read,
    Write,
}

/// A held lock: `owner` holds `kind` over the inclusive byte range `start..=end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldLock {
    pub owner: u64,
    pub start: u64,
    pub end: u64,
    pub kind: LockKind,
}

/// Upper bound on held ranges per file; SQLite needs a handful per connection.
pub const MAX_HELD_LOCKS: usize = 4096;

/// Why a lock request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error("lock conflicts with owner {} holding {:?} {}..={}", .0.owner, .0.kind, .0.start, .0.end)]
    Conflict(HeldLock),
    #[error("lock range start {start} > end {end}")]
    EmptyRange { start: u64, end: u64 },
    #[error("too many byte-range locks held (limit {MAX_HELD_LOCKS})")]
    TooManyLocks,
}

/// All locks held on one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockTable {
    held: Vec<HeldLock>,
}

impl LockTable {
    pub fn new() -> LockTable {
        LockTable::default()
    }

    /// The first lock of another owner that conflicts with `owner` taking `kind` on the range.
    pub fn conflict(&self, owner: u64, start: u64, end: u64, kind: LockKind) -> Option<HeldLock> {
        self.held.iter().copied().find(|held| {
            held.owner != owner
                && held.start <= end
                && start <= held.end
                && (kind == LockKind::Write || held.kind == LockKind::Write)
        })
    }

    /// `F_SETLK` with `F_RDLCK`/`F_WRLCK`: all or nothing.
    pub fn lock(
        &mut self,
        owner: u64,
        start: u64,
        end: u64,
        kind: LockKind,
    ) -> Result<(), LockError> {
        if start > end {
            return Err(LockError::EmptyRange { start, end });
        }
        if let Some(held) = self.conflict(owner, start, end, kind) {
            return Err(LockError::Conflict(held));
        }
        // Splitting can add at most one range, plus the new one.
        if self.held.len() + 2 > MAX_HELD_LOCKS {
            return Err(LockError::TooManyLocks);
        }
        self.remove_range(owner, start, end);
        self.held.push(HeldLock {
            owner,
            start,
            end,
            kind,
        });
        Ok(())
    }

    /// `F_SETLK` with `F_UNLCK`: never fails.
    pub fn unlock(&mut self, owner: u64, start: u64, end: u64) {
        if start <= end {
            self.remove_range(owner, start, end);
        }
    }

    /// Close of any descriptor of the file by `owner`: POSIX drops all its locks on the file.
    pub fn release_owner(&mut self, owner: u64) {
        self.held.retain(|held| held.owner != owner);
    }

    /// Does `owner` hold a write lock covering byte `offset`?
    pub fn holds_write(&self, owner: u64, offset: u64) -> bool {
        self.held.iter().any(|held| {
            held.owner == owner
                && held.kind == LockKind::Write
                && held.start <= offset
                && offset <= held.end
        })
    }

    /// The owner holding a write lock covering `offset`, if any.
    pub fn write_holder(&self, offset: u64) -> Option<u64> {
        self.held
            .iter()
            .find(|held| held.kind == LockKind::Write && held.start <= offset && offset <= held.end)
            .map(|held| held.owner)
    }

    pub fn held(&self) -> &[HeldLock] {
        &self.held
    }

    fn remove_range(&mut self, owner: u64, start: u64, end: u64) {
        let mut kept = Vec::with_capacity(self.held.len() + 1);
        for held in self.held.drain(..) {
            if held.owner != owner || held.end < start || end < held.start {
                kept.push(held);
                continue;
            }
            if held.start < start {
                kept.push(HeldLock {
                    end: start - 1,
                    ..held
                });
            }
            if end < held.end {
                kept.push(HeldLock {
                    start: end + 1,
                    ..held
                });
            }
        }
        self.held = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LockKind::{Read, Write};

    #[test]
    fn readers_share_writers_exclude() {
        let mut table = LockTable::new();
        table.lock(1, 10, 10, Read).unwrap();
        table.lock(2, 10, 10, Read).unwrap();
        assert!(matches!(
            table.lock(3, 10, 10, Write),
            Err(LockError::Conflict(HeldLock { owner: 1, .. }))
        ));
        table.unlock(1, 0, u64::MAX);
        assert!(table.lock(3, 10, 10, Write).is_err(), "owner 2 still reads");
        table.release_owner(2);
        table.lock(3, 10, 10, Write).unwrap();
        assert!(table.holds_write(3, 10));
        assert_eq!(table.write_holder(10), Some(3));
        assert!(table.lock(1, 5, 20, Read).is_err());
    }

    #[test]
    fn upgrade_and_downgrade_by_same_owner() {
        let mut table = LockTable::new();
        table.lock(1, 0, 100, Read).unwrap();
        table.lock(1, 50, 50, Write).unwrap();
        assert!(table.holds_write(1, 50));
        assert!(!table.holds_write(1, 49));
        assert_eq!(
            table.held().len(),
            3,
            "read range split around the write byte"
        );
        table.lock(1, 50, 50, Read).unwrap();
        assert!(!table.holds_write(1, 50));
        table.lock(2, 50, 50, Read).unwrap();
    }

    #[test]
    fn partial_unlock_splits_ranges() {
        let mut table = LockTable::new();
        table.lock(1, 0, 9, Write).unwrap();
        table.unlock(1, 3, 5);
        assert!(table.holds_write(1, 2) && table.holds_write(1, 6));
        assert!(!table.holds_write(1, 4));
        table.lock(2, 3, 5, Write).unwrap();
        assert_eq!(table.conflict(2, 0, 9, Write).map(|h| h.owner), Some(1));
    }

    #[test]
    fn empty_range_is_rejected() {
        let mut table = LockTable::new();
        assert_eq!(
            table.lock(1, 5, 4, Read),
            Err(LockError::EmptyRange { start: 5, end: 4 })
        );
    }
}
