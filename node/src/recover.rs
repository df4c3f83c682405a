//! Start-up crash recovery of the data directory (reference §5.3), before the node runtime
//! reads it and before anything is mounted.
//!
//! Decides, per database, what a crash left behind and how to get back to the position of the
//! last LTX file:
//! - a stale `-shm` is deleted (SQLite rebuilds it);
//! - an LTX file whose rename to its final name a crash lost is renamed from its spare file
//!   (the LTX writer fsyncs no directory per commit: `node::runtime::disk::promote_spares`);
//! - WAL frames past the last LTX that form complete commits become one LTX file again: a
//!   local WAL commit's LTX is written without an fsync once its frames are durable in the WAL
//!   (`node::runtime::disk`, "WAL-backed"), so a power cut can take the LTX and leave the
//!   frames. The first commit of each WAL generation is always fsynced, and the node syncs the
//!   WAL-backed files before SQLite restarts, truncates or deletes the WAL, so the lost ones
//!   are exactly the commits after the last LTX in a WAL with that LTX's salts. The rebuilt
//!   file covers all of them (`min_txid..=max_txid`) and ends at the checksum of the database
//!   SQLite would show;
//! - a WAL whose salts are not those of the last LTX holds no transaction the LTX log knows:
//!   it is set aside (`wal.removed`); a WAL with the last LTX's salts is cut back to the end of
//!   that LTX's frames;
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
    /// `(min_txid, max_txid)` of the LTX rebuilt from WAL frames past the last LTX.
    pub ltx_rebuilt: Option<(u64, u64)>,
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
    let mut last = match last_ltx(dir)? {
        Some(path) => {
            let bytes = fs::read(&path)?;
            match ltx::decode_slice(&bytes) {
                Ok((header, pages, trailer)) => Some((header, pages, trailer.post_apply_checksum)),
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

    // 0. Commits in the WAL past the last LTX: rebuild their LTX.
    if let Some((header, _, post)) = &last {
        if let Some((rebuilt, pages)) = rebuild_from_wal(dir, header, *post)? {
            done.ltx_rebuilt = Some((rebuilt.min_txid, rebuilt.max_txid));
            tracing::warn!(min = rebuilt.min_txid, max = rebuilt.max_txid, "rebuilt the LTX of WAL commits a crash lost");
            last = Some((rebuilt, pages, 0));
        }
    }

    // 1. The WAL against the last LTX.
    if wal.exists() {
        let len = fs::metadata(&wal)?.len();
        let mut head = [0u8; 32];
        let readable = len >= 32 && File::open(&wal)?.read_exact_at(&mut head, 0).is_ok();
        let salts = (u32::from_be_bytes([head[16], head[17], head[18], head[19]]), u32::from_be_bytes([head[20], head[21], head[22], head[23]]));
        let keep_to = match &last {
            Some((h, _, _)) if readable && h.wal_offset > 0 && (h.wal_salt1, h.wal_salt2) == salts => Some((h.wal_offset + h.wal_size) as u64),
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

    // 3. Write the newest LTX files again: a crash may have come between the last one and the
    //    database write, and a replica writes applies without an fsync per apply (up to
    //    `APPLY_UNSYNCED_MAX` of them or `APPLY_UNSYNCED_BYTES_MAX` of their LTX bytes).
    if let Some((header, pages, _)) = last {
        let recovered_something = done != Recovered::default();
        if (!clean || recovered_something) && header.commit > 0 {
            let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&database)?;
            for (h, p) in newest_before(dir, &header)? {
                write_pages(&file, &h, &p)?;
            }
            write_pages(&file, &header, &pages)?;
            file.sync_all()?;
            done.ltx_reapplied = Some(header.max_txid);
        }
    }
    Ok(done)
}

/// The LTX files of the chain that ends with `last`, just before it, oldest first: as many as `APPLY_UNSYNCED_MAX` files in all, fewer once they
/// reach `APPLY_UNSYNCED_BYTES_MAX` bytes, none before a snapshot. A file that does not decode
/// or does not chain ends the walk.
fn newest_before(dir: &Path, last: &Header) -> io::Result<Vec<(Header, Pages)>> {
    use node::runtime::disk::{APPLY_UNSYNCED_BYTES_MAX, APPLY_UNSYNCED_MAX};
    let ltx_dir = dir.join("ltx");
    let mut by_max: std::collections::BTreeMap<u64, PathBuf> = std::collections::BTreeMap::new();
    for entry in fs::read_dir(&ltx_dir)? {
        let entry = entry?;
        if let Some((_, max)) = entry.file_name().to_str().and_then(ltx::parse_file_name) {
            by_max.insert(max, entry.path());
        }
    }
    let mut out = Vec::new();
    let mut bytes: u64 = fs::metadata(ltx_dir.join(ltx::file_name(last.min_txid, last.max_txid))).map_or(0, |m| m.len());
    let (mut min, mut pre) = (last.min_txid, last.pre_apply_checksum);
    // Bounded by APPLY_UNSYNCED_MAX iterations.
    while out.len() + 1 < APPLY_UNSYNCED_MAX && bytes < APPLY_UNSYNCED_BYTES_MAX && min > 1 {
        let Some(path) = by_max.get(&(min - 1)) else { break };
        let Ok(raw) = fs::read(path) else { break };
        let Ok((h, p, t)) = ltx::decode_slice(&raw) else { break };
        if t.post_apply_checksum != pre {
            break;
        }
        bytes += raw.len() as u64;
        (min, pre) = (h.min_txid, h.pre_apply_checksum);
        out.push((h, p));
    }
    out.reverse();
    Ok(out)
}

/// Page number and content, ascending.
type Pages = Vec<(u32, Vec<u8>)>;

/// The LTX of the commits in `<dir>/wal` past the one `last` ends at (see the module docs), as
/// one file written durably into `<dir>/ltx/`; `None` if the WAL holds none that continue it.
fn rebuild_from_wal(dir: &Path, last: &Header, last_post: u64) -> io::Result<Option<(Header, Pages)>> {
    use ltxfs_core::ltx::checksum::{lock_pgno, page_checksum, DbChecksum};
    let wal = match fs::read(dir.join("wal")) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let Ok(wal_header) = ltxfs_core::detect::wal::parse_header(&wal) else { return Ok(None) };
    if last.wal_offset <= 0 || last.page_size != wal_header.page_size {
        return Ok(None);
    }
    if (last.wal_salt1, last.wal_salt2) != (wal_header.salt1, wal_header.salt2) {
        return Ok(None);
    }
    let base_end = u64::try_from(last.wal_offset + last.wal_size).unwrap_or(u64::MAX);
    let Ok(commits) = ltxfs_core::detect::Detector::new(None).wal_data(0, &wal) else { return Ok(None) };
    let after: Vec<&ltxfs_core::detect::Commit> = commits.iter().filter(|c| c.wal.is_some_and(|w| w.offset >= base_end)).collect();
    let (Some(first), Some(final_commit)) = (after.first(), after.last()) else { return Ok(None) };
    let (Some(first_wal), Some(last_wal)) = (first.wal, final_commit.wal) else { return Ok(None) };
    if first_wal.offset != base_end {
        return Ok(None); // not the frames right after the last LTX
    }
    // The database as SQLite would show it: the file, then every committed frame of this WAL.
    let page_size = wal_header.page_size;
    let ps = page_size as usize;
    let mut latest: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
    for c in &commits {
        for p in &c.pages {
            if let Some(off) = p.wal_offset {
                latest.insert(p.pgno, off);
            }
        }
    }
    let database = File::open(dir.join("database"))?;
    let db_len = database.metadata()?.len();
    let read_page = |pgno: u32| -> io::Result<Vec<u8>> {
        let mut page = vec![0u8; ps];
        if let Some(off) = latest.get(&pgno) {
            let at = usize::try_from(*off).map_err(io::Error::other)?;
            page.copy_from_slice(wal.get(at..at + ps).ok_or_else(|| io::Error::other("WAL frame past the end"))?);
        } else {
            let at = u64::from(pgno - 1) * u64::from(page_size);
            if at + u64::from(page_size) <= db_len {
                database.read_exact_at(&mut page, at)?;
            }
        }
        Ok(page)
    };
    let commit = final_commit.commit;
    let lock = lock_pgno(page_size);
    let mut sum = DbChecksum::new();
    for pgno in (1..=commit).filter(|p| *p != lock) {
        sum.toggle(page_checksum(pgno, &read_page(pgno)?));
    }
    let changed: std::collections::BTreeSet<u32> =
        after.iter().flat_map(|c| c.pages.iter().map(|p| p.pgno)).filter(|p| *p <= commit && *p != lock).collect();
    let mut pages = Vec::with_capacity(changed.len());
    for pgno in changed {
        pages.push((pgno, read_page(pgno)?));
    }
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let header = Header {
        flags: 0,
        page_size,
        commit,
        min_txid: last.max_txid + 1,
        max_txid: last.max_txid + after.len() as u64,
        timestamp_ms: i64::try_from(now_ms).unwrap_or(i64::MAX),
        pre_apply_checksum: last_post,
        wal_offset: i64::try_from(base_end).map_err(io::Error::other)?,
        wal_size: i64::try_from(last_wal.offset + last_wal.size - base_end).map_err(io::Error::other)?,
        wal_salt1: wal_header.salt1,
        wal_salt2: wal_header.salt2,
        node_id: last.node_id,
    };
    let bytes = ltx::encode_to_vec(header, pages.iter().map(|(p, d)| (*p, d.as_slice())), sum.value())
        .map_err(|e| io::Error::other(format!("rebuilding an LTX from the WAL: {e}")))?;
    let points = inner_checksums(&wal, &commits, base_end, &after, last, last_post, &database, db_len, sum.value());
    let ltx_dir = dir.join("ltx");
    let name = ltx::file_name(header.min_txid, header.max_txid);
    let tmp = ltx_dir.join(format!("{name}.rebuild"));
    {
        let mut f = File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &bytes)?;
        if let Some(points) = points {
            // The positions inside the rebuilt file, for replicas that stand at one of them.
            node::runtime::disk::write_points(&f, &tmp, &points);
        }
        f.sync_all()?;
    }
    fs::rename(&tmp, ltx_dir.join(&name))?;
    File::open(&ltx_dir)?.sync_all()?;
    Ok(Some((header, pages)))
}

/// The database checksum after each WAL commit of `after` but the last, 8 bytes big-endian each
/// (`node::runtime::disk::POINTS_XATTR`), computed incrementally from `last_post` (the checksum
/// at the end of the WAL commits before `base_end`); `None` unless the incremental checksum
/// after the last commit equals `final_post`, the full computation's.
#[allow(clippy::too_many_arguments)]
fn inner_checksums(
    wal: &[u8],
    commits: &[ltxfs_core::detect::Commit],
    base_end: u64,
    after: &[&ltxfs_core::detect::Commit],
    last: &Header,
    last_post: u64,
    database: &File,
    db_len: u64,
    final_post: u64,
) -> Option<Vec<u8>> {
    use ltxfs_core::ltx::checksum::{lock_pgno, page_checksum, update_db_checksum};
    let page_size = last.page_size;
    let ps = page_size as usize;
    let lock = lock_pgno(page_size);
    // Each page's newest frame as of the position being computed.
    let mut newest: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
    for c in commits.iter().filter(|c| c.wal.is_some_and(|w| w.offset < base_end)) {
        for p in &c.pages {
            newest.insert(p.pgno, p.wal_offset?);
        }
    }
    let page_sum = |newest: &std::collections::BTreeMap<u32, u64>, pgno: u32| -> Option<u64> {
        let mut page = vec![0u8; ps];
        if let Some(off) = newest.get(&pgno) {
            let at = usize::try_from(*off).ok()?;
            page.copy_from_slice(wal.get(at..at + ps)?);
        } else {
            let at = u64::from(pgno - 1) * u64::from(page_size);
            if at + u64::from(page_size) <= db_len {
                database.read_exact_at(&mut page, at).ok()?;
            }
        }
        Some(page_checksum(pgno, &page))
    };
    let mut sum = last_post;
    let mut size = last.commit;
    let mut out = Vec::with_capacity(after.len().saturating_sub(1) * 8);
    for (i, c) in after.iter().enumerate() {
        let written: std::collections::BTreeSet<u32> = c.pages.iter().map(|p| p.pgno).collect();
        // Pages a shrink drops, then pages a growth adds without writing them.
        for pgno in (c.commit + 1..=size).filter(|p| *p != lock) {
            sum = update_db_checksum(sum, page_sum(&newest, pgno)?, 0);
        }
        for pgno in (size + 1..=c.commit).filter(|p| *p != lock && !written.contains(p)) {
            sum = update_db_checksum(sum, 0, page_sum(&newest, pgno)?);
        }
        for p in c.pages.iter().filter(|p| p.pgno <= c.commit && p.pgno != lock) {
            let old = if p.pgno <= size { page_sum(&newest, p.pgno)? } else { 0 };
            newest.insert(p.pgno, p.wal_offset?);
            sum = update_db_checksum(sum, old, page_sum(&newest, p.pgno)?);
        }
        size = c.commit;
        if i + 1 < after.len() {
            out.extend_from_slice(&sum.to_be_bytes());
        }
    }
    (sum == final_post).then_some(out)
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

/// Writes one LTX file's pages into the database file and sets its size (no fsync).
fn write_pages(file: &File, header: &Header, pages: &[(u32, Vec<u8>)]) -> io::Result<()> {
    if header.commit == 0 {
        return Ok(());
    }
    let ps = u64::from(header.page_size);
    for (pgno, data) in pages {
        file.write_all_at(data, u64::from(pgno - 1) * ps)?;
    }
    file.set_len(u64::from(header.commit) * ps)
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

    /// The checksums recorded inside a rebuilt LTX equal a full computation of the database
    /// after each WAL commit — growth, deletes, a VACUUM that shrinks the file, growth again.
    #[test]
    fn inner_checksums_follow_every_commit_of_the_wal() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA page_size=1024; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t(x INTEGER PRIMARY KEY, v TEXT);").unwrap();
        for _ in 0..60 {
            conn.execute("INSERT INTO t(v) VALUES (hex(randomblob(300)))", []).unwrap();
        }
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
        let steps = [
            "INSERT INTO t(v) VALUES ('base')",
            "INSERT INTO t(v) SELECT v FROM t WHERE x < 20",
            "DELETE FROM t WHERE x % 2 = 0",
            "VACUUM",
            "UPDATE t SET v = 'short' WHERE x < 30",
            "INSERT INTO t(v) SELECT hex(randomblob(500)) FROM t WHERE x < 40",
        ];
        for sql in steps {
            conn.execute_batch(sql).unwrap();
        }
        let wal = fs::read(tmp.path().join("x.db-wal")).unwrap();
        let database = File::open(&path).unwrap();
        let image = fs::read(&path).unwrap();
        let commits = ltxfs_core::detect::Detector::new(None).wal_data(0, &wal).unwrap();
        assert_eq!(commits.len(), steps.len());
        let ps = commits[0].page_size as usize;
        assert!(commits.windows(2).any(|w| w[1].commit < w[0].commit), "the VACUUM shrinks the database");
        // The database after each commit, computed in full.
        let mut state = image.clone();
        let mut expected = Vec::new();
        for c in &commits {
            state.resize(c.commit as usize * ps, 0);
            for p in &c.pages {
                let off = p.wal_offset.unwrap() as usize;
                state[(p.pgno as usize - 1) * ps..p.pgno as usize * ps].copy_from_slice(&wal[off..off + ps]);
            }
            expected.push(db_checksum(&state, ps as u32));
        }
        let first = commits[0].wal.unwrap();
        let base_end = first.offset + first.size;
        let last = Header { page_size: ps as u32, commit: commits[0].commit, ..Header::default() };
        let after: Vec<&ltxfs_core::detect::Commit> = commits[1..].iter().collect();
        let n = expected.len();
        let got = inner_checksums(&wal, &commits, base_end, &after, &last, expected[0], &database, image.len() as u64, expected[n - 1]);
        let want: Vec<u8> = expected[1..n - 1].iter().flat_map(|c| c.to_be_bytes()).collect();
        assert_eq!(got, Some(want));
        // A final checksum that disagrees (a database that is not what the chain says): none.
        assert_eq!(inner_checksums(&wal, &commits, base_end, &after, &last, expected[0] ^ 1, &database, image.len() as u64, expected[n - 1]), None);
        drop(conn);
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

    #[test]
    fn a_database_several_applies_behind_gets_the_newest_ltx_files_again() {
        // A replica writes applies without an fsync each: after a crash its database file may
        // lack several of them although their LTX files are durable.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let states = [
            [page(1), page(1)].concat(),
            [page(1), page(2)].concat(),
            [page(3), page(2), page(4)].concat(),
            [page(3), page(5)].concat(),
        ];
        let sums: Vec<u64> = states.iter().map(|s| db_checksum(s, 512)).collect();
        let ltx = |txid: u64, commit: u32, pages: &[(u32, Vec<u8>)]| {
            let i = txid as usize - 1;
            let pre = if txid == 1 { 0 } else { sums[i - 1] };
            let header = Header { page_size: 512, commit, min_txid: txid, max_txid: txid, timestamp_ms: 1, pre_apply_checksum: pre, ..Header::default() };
            let bytes = ltx::encode_to_vec(header, pages.iter().map(|(p, d)| (*p, d.as_slice())), sums[i]).unwrap();
            fs::create_dir_all(dir.join("ltx")).unwrap();
            fs::write(dir.join("ltx").join(ltx::file_name(txid, txid)), bytes).unwrap();
        };
        ltx(1, 2, &[(1, page(1)), (2, page(1))]);
        ltx(2, 2, &[(2, page(2))]);
        ltx(3, 3, &[(1, page(3)), (3, page(4))]);
        ltx(4, 2, &[(2, page(5))]);
        // The file only has transaction 1 (re-applying only the last LTX would leave page 1
        // of transaction 3 out).
        fs::write(dir.join("database"), &states[0]).unwrap();
        let done = recover_db(dir, false).unwrap();
        assert_eq!(done.ltx_reapplied, Some(4));
        assert_eq!(fs::read(dir.join("database")).unwrap(), states[3]);
        assert_eq!(db_checksum(&fs::read(dir.join("database")).unwrap(), 512), sums[3]);
    }

}
