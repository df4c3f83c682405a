//! The data directory: LiteFS's layout `<data>/dbs/<db>/{database, ltx/<min>-<max>.ltx}` plus
//! ltxfs's persisted checksum index (`chkindex`) and lineage epoch (`epoch`).
//!
//! It executes the core's [`IoKind`] commands on real files (blocking calls; the runtime runs
//! them on tokio's blocking pool, one database at a time in emission order) and scans the data
//! directory at start-up into [`OpenDb`] inputs. It decides nothing about replication: what to
//! write, apply or delete always comes from the core. It never panics on what it finds on disk:
//! unreadable or foreign files are skipped with a warning, I/O failures become [`IoErrorKind`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ltxfs_core::catchup::LtxFileMeta;
use ltxfs_core::ids::{DbName, Epoch};
use ltxfs_core::ltx::{self, Header, Pos, Trailer, HEADER_SIZE, TRAILER_SIZE};
use ltxfs_core::node::{IoErrorKind, IoKind, IoOutcome, OpenDb};
use ltxfs_core::time::Time;

use super::ApplyHook;

/// File names inside `<data>/dbs/<db>/`.
pub const DATABASE_FILE: &str = "database";
pub const LTX_DIR: &str = "ltx";
pub const CHECKSUM_INDEX_FILE: &str = "chkindex";
pub const EPOCH_FILE: &str = "epoch";

/// The data directory of one node.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn dbs_dir(&self) -> PathBuf {
        self.root.join("dbs")
    }
    pub fn db_dir(&self, db: &DbName) -> PathBuf {
        self.dbs_dir().join(db.as_str())
    }
    /// `<data>/dbs/<db>/database`: the SQLite file the FUSE layer exposes as `<mount>/<db>`.
    pub fn database_path(&self, db: &DbName) -> PathBuf {
        self.db_dir(db).join(DATABASE_FILE)
    }
    pub fn ltx_dir(&self, db: &DbName) -> PathBuf {
        self.db_dir(db).join(LTX_DIR)
    }
    pub fn ltx_path(&self, db: &DbName, min_txid: u64, max_txid: u64) -> PathBuf {
        self.ltx_dir(db).join(ltx::file_name(min_txid, max_txid))
    }

    /// Every database with at least one valid LTX file, as the core's start-up input.
    /// `now` stamps the files' `written_at` (retention counts their age from start-up).
    pub fn scan(&self, now: Time) -> io::Result<Vec<OpenDb>> {
        let dbs_dir = self.dbs_dir();
        fs::create_dir_all(&dbs_dir)?;
        let mut out = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for entry in fs::read_dir(&dbs_dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        for name in names {
            let Ok(db) = DbName::new(name.clone()) else {
                tracing::warn!(dir = %name, "skipping a directory that is not a database name");
                continue;
            };
            match self.scan_db(&db, now) {
                Ok(Some(open)) => out.push(open),
                Ok(None) => {}
                Err(err) => tracing::warn!(%db, %err, "skipping a database whose LTX files cannot be read"),
            }
        }
        Ok(out)
    }

    fn scan_db(&self, db: &DbName, now: Time) -> io::Result<Option<OpenDb>> {
        let dir = self.ltx_dir(db);
        if !dir.exists() {
            return Ok(None);
        }
        let mut files = Vec::new();
        let mut last: Option<(Header, Trailer)> = None;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let Some(range) = entry.file_name().to_str().and_then(ltx::parse_file_name) else { continue };
            ranges.push(range);
        }
        ranges.sort();
        for (min, max) in ranges {
            let path = dir.join(ltx::file_name(min, max));
            let (header, trailer, size) = match read_header_trailer(&path) {
                Ok(ht) => ht,
                Err(err) => {
                    tracing::warn!(path = %path.display(), %err, "ignoring an unreadable LTX file");
                    continue;
                }
            };
            files.push(LtxFileMeta {
                min_txid: header.min_txid,
                max_txid: header.max_txid,
                pre_apply_checksum: header.pre_apply_checksum,
                post_apply_checksum: trailer.post_apply_checksum,
                size_bytes: size,
                written_at: now,
            });
            if last.as_ref().is_none_or(|(h, _)| header.max_txid > h.max_txid) {
                last = Some((header, trailer));
            }
        }
        let Some((header, trailer)) = last else { return Ok(None) };
        let pos = Pos { txid: header.max_txid, checksum: trailer.post_apply_checksum };
        let checksum_index = fs::read(self.db_dir(db).join(CHECKSUM_INDEX_FILE)).ok();
        let epoch = fs::read_to_string(self.db_dir(db).join(EPOCH_FILE))
            .ok()
            .and_then(|s| parse_epoch_file(&s, pos))
            .unwrap_or(Epoch::ZERO);
        Ok(Some(OpenDb { db: db.clone(), page_size: header.page_size, pos, epoch, files, checksum_index }))
    }

    /// Executes one I/O command. `epoch` is the lineage epoch of the database's position when
    /// the command was emitted (persisted next to the checksum index).
    pub fn execute(&self, kind: &IoKind, epoch: Epoch, pos: Pos, hook: &dyn ApplyHook) -> Result<IoOutcome, IoErrorKind> {
        let result = match kind {
            IoKind::WriteLtx { db, min_txid, max_txid, bytes, fsync } => {
                self.write_ltx(db, *min_txid, *max_txid, bytes, *fsync).map(|()| IoOutcome::Done)
            }
            IoKind::ApplyPages { db, page_size, commit, pages } => {
                hook.before_apply(db);
                let result = self.apply_pages(db, *page_size, *commit, pages);
                hook.after_apply(db, pages.iter().map(|(p, _)| *p).collect::<Vec<_>>().as_slice(), *commit);
                result.map(|()| IoOutcome::Done)
            }
            IoKind::ReadLtx { db, files } => files
                .iter()
                .map(|(min, max)| fs::read(self.ltx_path(db, *min, *max)))
                .collect::<io::Result<Vec<_>>>()
                .map(IoOutcome::LtxFiles),
            IoKind::ReadDatabase { db } => {
                hook.before_read(db);
                let result = match hook.read_database(db).unwrap_or_else(|| fs::read(self.database_path(db))) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
                    other => other,
                };
                hook.after_read(db);
                result.map(IoOutcome::Database)
            }
            IoKind::DeleteLtx { db, files } => {
                let mut result = Ok(());
                for (min, max) in files {
                    match fs::remove_file(self.ltx_path(db, *min, *max)) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => result = Err(e),
                        _ => {}
                    }
                }
                result.map(|()| IoOutcome::Done)
            }
            IoKind::WriteChecksumIndex { db, bytes } => {
                let dir = self.db_dir(db);
                atomic_write(&dir, CHECKSUM_INDEX_FILE, bytes, true)
                    .and_then(|()| atomic_write(&dir, EPOCH_FILE, format_epoch_file(epoch, pos).as_bytes(), true))
                    .map(|()| IoOutcome::Done)
            }
        };
        result.map_err(|e| {
            tracing::warn!(db = %kind.db(), error = %e, "I/O command failed");
            io_error_kind(&e)
        })
    }

    /// Replaces the database file with `image` (an `/import`), under the apply hook.
    pub fn write_database(&self, db: &DbName, image: &[u8], hook: &dyn ApplyHook) -> io::Result<()> {
        fs::create_dir_all(self.db_dir(db))?;
        hook.before_apply(db);
        let result = (|| {
            let file = OpenOptions::new().write(true).create(true).truncate(false).open(self.database_path(db))?;
            file.write_all_at(image, 0)?;
            file.set_len(image.len() as u64)?;
            file.sync_all()
        })();
        hook.after_apply(db, &[], (image.len() / 512) as u32);
        result
    }

    fn write_ltx(&self, db: &DbName, min: u64, max: u64, bytes: &[u8], fsync: bool) -> io::Result<()> {
        let dir = self.ltx_dir(db);
        fs::create_dir_all(&dir)?;
        atomic_write(&dir, &ltx::file_name(min, max), bytes, fsync)
    }

    fn apply_pages(&self, db: &DbName, page_size: u32, commit: u32, pages: &[(u32, Vec<u8>)]) -> io::Result<()> {
        let path = self.database_path(db);
        if commit == 0 {
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        fs::create_dir_all(self.db_dir(db))?;
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let page_bytes = u64::from(page_size);
        for (pgno, data) in pages {
            if *pgno == 0 || data.len() as u64 != page_bytes {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "page number 0 or wrong page length"));
            }
            file.write_all_at(data, u64::from(*pgno - 1) * page_bytes)?;
        }
        file.set_len(u64::from(commit) * page_bytes)?;
        file.sync_all()
    }
}

/// `<txid hex16>/<checksum hex16> <epoch>`: the epoch belongs to that position only.
fn format_epoch_file(epoch: Epoch, pos: Pos) -> String {
    format!("{:016x}/{:016x} {}\n", pos.txid, pos.checksum, epoch.0)
}

fn parse_epoch_file(text: &str, pos: Pos) -> Option<Epoch> {
    let (at, epoch) = text.trim().split_once(' ')?;
    let (txid, checksum) = at.split_once('/')?;
    let same = u64::from_str_radix(txid, 16).ok()? == pos.txid && u64::from_str_radix(checksum, 16).ok()? == pos.checksum;
    same.then(|| epoch.parse().ok().map(Epoch)).flatten()
}

/// Reads an LTX file's header and trailer (not its pages) and checks both.
fn read_header_trailer(path: &Path) -> io::Result<(Header, Trailer, u64)> {
    let mut f = File::open(path)?;
    let size = f.metadata()?.len();
    if size < (HEADER_SIZE + TRAILER_SIZE) as u64 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "LTX file shorter than header + trailer"));
    }
    let mut h = [0u8; HEADER_SIZE];
    f.read_exact(&mut h)?;
    let header = Header::from_bytes(&h).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let mut t = [0u8; TRAILER_SIZE];
    f.read_exact_at(&mut t, size - TRAILER_SIZE as u64)?;
    let trailer = Trailer::from_bytes(&t);
    trailer.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    Ok((header, trailer, size))
}

/// Writes `name` in `dir` atomically: temp file, fsync, rename, fsync of the directory.
fn atomic_write(dir: &Path, name: &str, bytes: &[u8], fsync: bool) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if fsync {
            f.sync_all()?;
        }
    }
    fs::rename(&tmp, dir.join(name))?;
    if fsync {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn io_error_kind(e: &io::Error) -> IoErrorKind {
    match e.kind() {
        io::ErrorKind::NotFound => IoErrorKind::NotFound,
        io::ErrorKind::StorageFull => IoErrorKind::NoSpace,
        _ => IoErrorKind::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_file_only_counts_for_its_position() {
        let pos = Pos { txid: 3, checksum: 0x8000_0000_0000_00ff };
        let text = format_epoch_file(Epoch(7), pos);
        assert_eq!(parse_epoch_file(&text, pos), Some(Epoch(7)));
        assert_eq!(parse_epoch_file(&text, Pos { txid: 4, ..pos }), None);
        assert_eq!(parse_epoch_file("garbage", pos), None);
    }
}
