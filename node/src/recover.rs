//! Start-up crash recovery of the data directory (reference §5.3), before the node runtime
//! reads it and before anything is mounted.
//!
//! Decides, per database, what a crash left behind and how to get back to the position of the
//! last LTX file:
//! - a stale `-shm` is deleted (SQLite rebuilds it);
//! - an LTX file whose rename to its final name a crash lost is renamed from its spare file
//!   (the LTX writer fsyncs no directory per commit: `node::runtime::disk::promote_spares`);
//! - a WAL whose salts are not those of the last LTX holds no transaction the LTX log knows:
//!   it is set aside (`wal.removed`); a WAL with the last LTX's salts is cut back to the end of
//!   that LTX's frames (frames after it were never made durable as LTX);
//! - a hot rollback journal is rolled back and the remaining WAL checkpointed — by SQLite itself
//!   (the files are briefly given the names SQLite expects);
//! - the last LTX file is written again (a crash between the LTX write and the database write
//!   leaves the database one transaction behind; writing it again is idempotent).
//!
//! After a clean shutdown (`clean-shutdown` marker, written by `ltxfs mount` on exit) only the
//! file-level checks run, so start-up does not grow with the database size. Never does:
//! replication, network, or anything about positions beyond the last LTX file.

use ltxfs_core::ltx::{self, Header};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Written on clean exit, removed at start-up.
pub const CLEAN_MARKER: &str = "clean-shutdown";

/// What recovery did to one database (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub wal_removed: bool,
    pub wal_truncated_to: Option<u64>,
    pub journal_rolled_back: bool,
    pub ltx_reapplied: Option<u64>,
    /// LTX files renamed from their spare file (the rename was lost: see `promote_spares`).
    pub ltx_restored: usize,
}

/// Recovers every database under `<data>/dbs/`.
pub fn recover_data_dir(data: &Path) -> io::Result<()> {
    let marker = data.join(CLEAN_MARKER);
    let clean = marker.exists();
    if clean {
        fs::remove_file(&marker)?;
    }
    let dbs = data.join("dbs");
    if !dbs.exists() {
        return Ok(());
    }
    let mut dirs: Vec<PathBuf> = fs::read_dir(&dbs)?.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    for dir in dirs {
        let done = recover_db(&dir, clean)?;
        if done != Recovered::default() {
            tracing::warn!(db = %dir.display(), ?done, "recovered after a crash");
        }
    }
    Ok(())
}

/// Marks the data directory cleanly shut down.
pub fn mark_clean(data: &Path) -> io::Result<()> {
    File::create(data.join(CLEAN_MARKER))?.sync_all()
}

fn last_ltx(dir: &Path) -> io::Result<Option<PathBuf>> {
    let ltx_dir = dir.join("ltx");
    if !ltx_dir.exists() {
        return Ok(None);
    }
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in fs::read_dir(&ltx_dir)? {
        let entry = entry?;
        let Some((_, max)) = entry.file_name().to_str().and_then(ltx::parse_file_name) else { continue };
        if best.as_ref().is_none_or(|(b, _)| max > *b) {
            best = Some((max, entry.path()));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Recovers one database directory (`database`, `journal`, `wal`, `shm`, `ltx/`).
pub fn recover_db(dir: &Path, clean: bool) -> io::Result<Recovered> {
    let mut done = Recovered::default();
    let _ = fs::remove_file(dir.join("shm"));
    if dir.join("ltx").is_dir() {
        // An LTX whose rename a crash lost is still complete in its spare file.
        done.ltx_restored = node::runtime::disk::promote_spares(&dir.join("ltx"))?;
    }
    let last = match last_ltx(dir)? {
        Some(path) => {
            let bytes = fs::read(&path)?;
            match ltx::decode_slice(&bytes) {
                Ok((header, pages, _)) => Some((header, pages)),
                Err(err) => {
                    tracing::warn!(ltx = %path.display(), %err, "last LTX does not decode; not re-applied");
                    None
                }
            }
        }
        None => None,
    };
    let database = dir.join("database");
    let wal = dir.join("wal");
    let journal = dir.join("journal");

    // 1. The WAL against the last LTX.
    if wal.exists() {
        let len = fs::metadata(&wal)?.len();
        let mut head = [0u8; 32];
        let readable = len >= 32 && File::open(&wal)?.read_exact_at(&mut head, 0).is_ok();
        let salts = (u32::from_be_bytes([head[16], head[17], head[18], head[19]]), u32::from_be_bytes([head[20], head[21], head[22], head[23]]));
        let keep_to = match &last {
            Some((h, _)) if readable && h.wal_offset > 0 && (h.wal_salt1, h.wal_salt2) == salts => Some((h.wal_offset + h.wal_size) as u64),
            _ => None,
        };
        match keep_to {
            Some(end) if end < len => {
                OpenOptions::new().write(true).open(&wal)?.set_len(end)?;
                done.wal_truncated_to = Some(end);
            }
            Some(_) => {}
            None if len == 0 => {}
            None => {
                fs::rename(&wal, dir.join("wal.removed"))?;
                done.wal_removed = true;
            }
        }
    }

    // 2. Hot journal / remaining WAL frames: let SQLite roll back and checkpoint.
    let has_journal = journal.exists() && fs::metadata(&journal)?.len() > 0;
    let has_wal = wal.exists() && fs::metadata(&wal)?.len() > 0;
    if (has_journal || has_wal) && is_sqlite_file(&database) {
        let sqlite_journal = dir.join("database-journal");
        let sqlite_wal = dir.join("database-wal");
        if has_journal {
            fs::rename(&journal, &sqlite_journal)?;
        }
        if has_wal {
            fs::rename(&wal, &sqlite_wal)?;
        }
        let result = sqlite_recover(&database, has_wal);
        for leftover in [&sqlite_journal, &sqlite_wal, &dir.join("database-shm")] {
            let _ = fs::remove_file(leftover);
        }
        result.map_err(|e| io::Error::other(format!("SQLite recovery of {}: {e}", database.display())))?;
        done.journal_rolled_back = has_journal;
    }
    let _ = fs::remove_file(&journal);
    let _ = fs::remove_file(&wal);

    // 3. Write the last LTX again (a crash may have come between it and the database).
    if let Some((header, pages)) = last {
        let recovered_something = done != Recovered::default();
        if !clean || recovered_something {
            reapply(&database, &header, &pages)?;
            done.ltx_reapplied = Some(header.max_txid);
        }
    }
    Ok(done)
}

fn is_sqlite_file(path: &Path) -> bool {
    let mut magic = [0u8; 16];
    File::open(path).and_then(|f| f.read_exact_at(&mut magic, 0)).is_ok() && &magic == b"SQLite format 3\0"
}

pub(crate) fn sqlite_recover(database: &Path, wal: bool) -> rusqlite::Result<()> {
    let conn = rusqlite::Connection::open_with_flags(database, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    // Reading the schema makes SQLite roll back a hot journal.
    conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0))?;
    if wal {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    // Leave the file in rollback form on disk; the header keeps its journal mode.
    conn.close().map_err(|(_, e)| e)
}

fn reapply(database: &Path, header: &Header, pages: &[(u32, Vec<u8>)]) -> io::Result<()> {
    if header.commit == 0 {
        return Ok(());
    }
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(database)?;
    let ps = u64::from(header.page_size);
    for (pgno, data) in pages {
        file.write_all_at(data, u64::from(pgno - 1) * ps)?;
    }
    file.set_len(u64::from(header.commit) * ps)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ltxfs_core::ltx::checksum::db_checksum;

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; 512]
    }

    fn write_ltx(dir: &Path, txid: u64, commit: u32, pages: &[(u32, Vec<u8>)], post: u64, wal: Option<(i64, i64, u32, u32)>) {
        let mut header = Header { page_size: 512, commit, min_txid: txid, max_txid: txid, timestamp_ms: 1, ..Header::default() };
        if txid > 1 {
            header.pre_apply_checksum = post; // not checked by recovery
        }
        if let Some((o, s, a, b)) = wal {
            (header.wal_offset, header.wal_size, header.wal_salt1, header.wal_salt2) = (o, s, a, b);
        }
        let bytes = ltx::encode_to_vec(header, pages.iter().map(|(p, d)| (*p, d.as_slice())), post).unwrap();
        fs::create_dir_all(dir.join("ltx")).unwrap();
        fs::write(dir.join("ltx").join(ltx::file_name(txid, txid)), bytes).unwrap();
    }

    #[test]
    fn database_one_transaction_behind_gets_the_last_ltx_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("database"), [page(1), page(2)].concat()).unwrap();
        let after = [page(1), page(3), page(4)].concat();
        write_ltx(dir, 2, 3, &[(2, page(3)), (3, page(4))], db_checksum(&after, 512), None);
        let done = recover_db(dir, false).unwrap();
        assert_eq!(done.ltx_reapplied, Some(2));
        assert_eq!(fs::read(dir.join("database")).unwrap(), after);
    }

    #[test]
    fn clean_shutdown_skips_the_reapply() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("database"), page(9)).unwrap();
        write_ltx(dir, 1, 1, &[(1, page(1))], db_checksum(&page(1), 512), None);
        let done = recover_db(dir, true).unwrap();
        assert_eq!(done, Recovered::default());
        assert_eq!(fs::read(dir.join("database")).unwrap(), page(9), "a clean data dir is trusted");
    }

    #[test]
    fn wal_of_another_generation_is_set_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("database"), page(1)).unwrap();
        write_ltx(dir, 1, 1, &[(1, page(1))], db_checksum(&page(1), 512), Some((32, 536, 7, 8)));
        let mut wal = vec![0u8; 32 + 536];
        wal[16..20].copy_from_slice(&1u32.to_be_bytes()); // salts 1/2, not 7/8
        wal[20..24].copy_from_slice(&2u32.to_be_bytes());
        fs::write(dir.join("wal"), &wal).unwrap();
        let done = recover_db(dir, false).unwrap();
        assert!(done.wal_removed);
        assert!(!dir.join("wal").exists());
        assert!(dir.join("wal.removed").exists());
    }

    #[test]
    fn wal_frames_past_the_last_ltx_are_cut_off() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("database"), page(1)).unwrap();
        write_ltx(dir, 1, 1, &[(1, page(1))], db_checksum(&page(1), 512), Some((32, 536, 7, 8)));
        let mut wal = vec![0u8; 32 + 536 * 3];
        wal[16..20].copy_from_slice(&7u32.to_be_bytes());
        wal[20..24].copy_from_slice(&8u32.to_be_bytes());
        fs::write(dir.join("wal"), &wal).unwrap();
        // The frames are not valid SQLite frames, so SQLite's checkpoint finds nothing to copy;
        // what matters here is the cut.
        let done = recover_db(dir, false).unwrap();
        assert_eq!(done.wal_truncated_to, Some(32 + 536));
    }
}
