//! PRIMARY-ONLY STAND-IN for the core node state machine: "a local commit becomes the next LTX".
//!
//! Decides (until `ltxfs_core`'s `Node` with `Input::LocalCommit` replaces it): the next position
//! of a database — TXID + 1, pre-apply = current checksum, post-apply = checksum updated with the
//! transaction's pages — and writes + fsyncs that LTX file (temp file, fsync, rename, directory
//! fsync) before returning, so the FUSE layer can let the commit complete only afterwards. The
//! running database checksum is kept with one checksum per page, so a commit costs O(dirty pages).
//!
//! Never does: leases, replication, crash recovery, or anything about FUSE or SQLite's files; the
//! FUSE layer hands it pages (see [`LocalCommit`]) and reads its [`DbLog::pos`].
//!
//! Swap point: the FUSE layer only calls [`DbLog::open`], [`DbLog::commit`] and [`DbLog::pos`].

use ltxfs_core::detect::WalRange;
use ltxfs_core::ltx::checksum::{lock_pgno, page_checksum, DbChecksum, CHECKSUM_FLAG};
use ltxfs_core::ltx::{self, Header, Pos, HEADER_FLAG_COMPRESS_LZ4};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Why a commit could not be turned into an LTX file. The transaction must then fail.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("LTX I/O: {0}")]
    Io(#[from] io::Error),
    #[error("LTX encoding: {0}")]
    Ltx(#[from] ltx::LtxError),
    #[error("page size changed from {old} to {new} in a non-empty database")]
    PageSizeChanged { old: u32, new: u32 },
    #[error("page {pgno} missing from a transaction that must carry it")]
    MissingPage { pgno: u32 },
}

/// One committed SQLite transaction, as the FUSE layer saw it.
pub struct LocalCommit<'a> {
    pub page_size: u32,
    /// Database size in pages after the transaction.
    pub commit: u32,
    /// Changed pages, ascending, `<= commit`, each `page_size` bytes.
    pub pages: &'a [(u32, &'a [u8])],
    pub wal: Option<WalRange>,
    pub wall_ms: i64,
    /// Reads the current content of an unchanged page (only needed for the first LTX of a
    /// database, which must be a full snapshot).
    pub read_page: &'a mut dyn FnMut(u32, &mut [u8]) -> io::Result<()>,
}

/// The LTX log and running checksum of one database.
#[derive(Debug)]
pub struct DbLog {
    ltx_dir: PathBuf,
    compress: bool,
    page_size: u32,
    /// Database size in pages at `pos`.
    commit: u32,
    pos: Pos,
    /// `page_checksums[pgno - 1]`; 0 for the lock page.
    page_checksums: Vec<u64>,
    sum: DbChecksum,
}

impl DbLog {
    /// Opens the log of a database whose content is the `database` file (rollback mode or fully
    /// checkpointed WAL). Checksums every page once (O(database size)).
    pub fn open(ltx_dir: &Path, database: &File, compress: bool) -> Result<DbLog, EngineError> {
        fs::create_dir_all(ltx_dir)?;
        let mut log = DbLog {
            ltx_dir: ltx_dir.to_path_buf(),
            compress,
            page_size: 0,
            commit: 0,
            pos: Pos::ZERO,
            page_checksums: Vec::new(),
            sum: DbChecksum::new(),
        };
        let mut header = [0u8; 100];
        let len = database.metadata()?.len();
        if len >= 100 {
            database.read_exact_at(&mut header, 0)?;
            if let Some(db) = ltxfs_core::detect::DbHeader::parse(&header) {
                log.page_size = db.page_size;
                let pages = len / u64::from(db.page_size);
                log.commit = u32::try_from(pages)
                    .unwrap_or(u32::MAX)
                    .min(db.commit.max(1));
                let lock = lock_pgno(db.page_size);
                let mut buf = vec![0u8; db.page_size as usize];
                log.page_checksums.reserve(log.commit as usize);
                for pgno in 1..=log.commit {
                    database
                        .read_exact_at(&mut buf, u64::from(pgno - 1) * u64::from(db.page_size))?;
                    let checksum = if pgno == lock {
                        0
                    } else {
                        page_checksum(pgno, &buf)
                    };
                    log.sum.toggle(checksum);
                    log.page_checksums.push(checksum);
                }
            }
        }
        if let Some(last) = last_ltx(ltx_dir)? {
            let bytes = fs::read(&last)?;
            let (header, _, trailer) = ltx::decode_slice(&bytes)?;
            log.pos = Pos {
                txid: header.max_txid,
                checksum: trailer.post_apply_checksum,
            };
            if log.pos.checksum != log.checksum() {
                tracing::warn!(
                    ltx = %last.display(),
                    ltx_checksum = format!("{:016x}", log.pos.checksum),
                    db_checksum = format!("{:016x}", log.checksum()),
                    "database does not match its last LTX (crash recovery is not implemented yet)"
                );
            }
        }
        Ok(log)
    }

    pub fn pos(&self) -> Pos {
        self.pos
    }

    /// Database checksum of the committed state (`FLAG | XOR(page checksums)`).
    pub fn checksum(&self) -> u64 {
        self.sum.value()
    }

    #[cfg(test)]
    pub fn ltx_dir(&self) -> &Path {
        &self.ltx_dir
    }

    /// Writes and fsyncs the LTX of one transaction. `Ok(None)`: nothing changed (e.g. a
    /// rollback after a cache spill restored every page), no LTX written.
    pub fn commit(&mut self, tx: LocalCommit<'_>) -> Result<Option<Pos>, EngineError> {
        assert!(
            ltx::is_valid_page_size(tx.page_size),
            "detector passes valid page sizes"
        );
        if self.page_size != tx.page_size {
            if self.commit != 0 && self.page_size != 0 {
                return Err(EngineError::PageSizeChanged {
                    old: self.page_size,
                    new: tx.page_size,
                });
            }
            self.page_size = tx.page_size;
        }
        let lock = lock_pgno(tx.page_size);
        let snapshot = self.pos.txid == 0;

        // New checksums, O(dirty + truncated pages).
        let mut sum = self.sum;
        let mut changed: Vec<(u32, u64)> = Vec::with_capacity(tx.pages.len());
        for &(pgno, data) in tx.pages {
            assert!(
                pgno >= 1 && pgno <= tx.commit,
                "dirty page {pgno} beyond commit {}",
                tx.commit
            );
            assert_eq!(data.len(), tx.page_size as usize);
            if pgno == lock {
                continue;
            }
            let new = page_checksum(pgno, data);
            let old = self.page_checksum_of(pgno);
            sum.toggle(old);
            sum.toggle(new);
            changed.push((pgno, new));
        }
        for pgno in tx.commit + 1..=self.commit {
            sum.toggle(self.page_checksum_of(pgno));
        }
        // Pages that appeared without being written (cannot happen with SQLite, which writes
        // every new page) would make the checksum wrong: refuse rather than diverge.
        for pgno in self.commit + 1..=tx.commit {
            if pgno != lock && !changed.iter().any(|(p, _)| *p == pgno) {
                return Err(EngineError::MissingPage { pgno });
            }
        }
        if !snapshot && sum == self.sum && tx.commit == self.commit {
            return Ok(None);
        }

        let txid = self.pos.txid + 1;
        let mut header = Header {
            flags: if self.compress {
                HEADER_FLAG_COMPRESS_LZ4
            } else {
                0
            },
            page_size: tx.page_size,
            commit: tx.commit,
            min_txid: txid,
            max_txid: txid,
            timestamp_ms: tx.wall_ms,
            pre_apply_checksum: if snapshot { 0 } else { self.pos.checksum },
            ..Header::default()
        };
        if let Some(wal) = tx.wal {
            header.wal_offset = i64::try_from(wal.offset).unwrap_or(i64::MAX);
            header.wal_size = i64::try_from(wal.size).unwrap_or(i64::MAX);
            header.wal_salt1 = wal.salt1;
            header.wal_salt2 = wal.salt2;
        }
        let post_apply = sum.value();
        debug_assert!(post_apply & CHECKSUM_FLAG != 0);
        let bytes = if snapshot {
            let mut buf = vec![0u8; tx.page_size as usize];
            let mut encoder = ltx::Encoder::new(Vec::new(), header)?;
            let mut dirty = tx.pages.iter().peekable();
            for pgno in 1..=tx.commit {
                while dirty.peek().is_some_and(|(p, _)| *p < pgno) {
                    dirty.next();
                }
                if pgno == lock {
                    continue;
                }
                match dirty.peek() {
                    Some((p, data)) if *p == pgno => encoder.encode_page(pgno, data)?,
                    _ => {
                        (tx.read_page)(pgno, &mut buf)?;
                        encoder.encode_page(pgno, &buf)?;
                    }
                }
            }
            encoder.finish(post_apply)?.0
        } else {
            let pages = tx
                .pages
                .iter()
                .filter(|(pgno, _)| *pgno != lock)
                .map(|(p, d)| (*p, *d));
            ltx::encode_to_vec(header, pages, post_apply)?
        };
        self.write_durably(&ltx::file_name(txid, txid), &bytes)?;

        // Only now, with the LTX durable, does the position advance.
        self.page_checksums.resize(tx.commit as usize, 0);
        for (pgno, checksum) in changed {
            self.page_checksums[pgno as usize - 1] = checksum;
        }
        self.commit = tx.commit;
        self.sum = sum;
        self.pos = Pos {
            txid,
            checksum: post_apply,
        };
        Ok(Some(self.pos))
    }

    fn page_checksum_of(&self, pgno: u32) -> u64 {
        self.page_checksums
            .get(pgno as usize - 1)
            .copied()
            .unwrap_or(0)
    }

    fn write_durably(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.ltx_dir.join(format!("{name}.tmp"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, self.ltx_dir.join(name))?;
        File::open(&self.ltx_dir)?.sync_all()
    }
}

/// The LTX file with the highest max TXID in `dir`.
fn last_ltx(dir: &Path) -> io::Result<Option<PathBuf>> {
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some((_, max)) = name.to_str().and_then(ltx::parse_file_name) else {
            continue;
        };
        if best.as_ref().is_none_or(|(b, _)| max > *b) {
            best = Some((max, entry.path()));
        }
    }
    Ok(best.map(|(_, path)| path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ltxfs_core::ltx::checksum::db_checksum;

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; 512]
    }

    fn no_read(_: u32, _: &mut [u8]) -> io::Result<()> {
        Err(io::Error::other("unexpected read"))
    }

    #[test]
    fn commits_chain_and_match_full_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let db = tempfile::tempfile().unwrap();
        let mut log = DbLog::open(&dir.path().join("ltx"), &db, true).unwrap();
        assert_eq!(log.pos(), Pos::ZERO);
        let (p1, p2, p3) = (page(1), page(2), page(3));
        let mut read = no_read;
        let first = log
            .commit(LocalCommit {
                page_size: 512,
                commit: 2,
                pages: &[(1, &p1), (2, &p2)],
                wal: None,
                wall_ms: 1,
                read_page: &mut read,
            })
            .unwrap()
            .unwrap();
        assert_eq!(first.txid, 1);
        assert_eq!(
            first.checksum,
            db_checksum(&[p1.clone(), p2.clone()].concat(), 512)
        );
        let second = log
            .commit(LocalCommit {
                page_size: 512,
                commit: 2,
                pages: &[(2, &p3)],
                wal: None,
                wall_ms: 2,
                read_page: &mut read,
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            second.checksum,
            db_checksum(&[p1.clone(), p3.clone()].concat(), 512)
        );
        // A no-op commit writes nothing.
        let none = log
            .commit(LocalCommit {
                page_size: 512,
                commit: 2,
                pages: &[(2, &p3)],
                wal: None,
                wall_ms: 3,
                read_page: &mut read,
            })
            .unwrap();
        assert_eq!(none, None);
        // Truncation removes page 2 from the checksum.
        let third = log
            .commit(LocalCommit {
                page_size: 512,
                commit: 1,
                pages: &[(1, &p2)],
                wal: None,
                wall_ms: 4,
                read_page: &mut read,
            })
            .unwrap()
            .unwrap();
        assert_eq!(third.checksum, db_checksum(&p2, 512));

        let bytes = fs::read(log.ltx_dir().join(ltx::file_name(2, 2))).unwrap();
        let (header, pages, trailer) = ltx::decode_slice(&bytes).unwrap();
        assert_eq!(header.pre_apply_checksum, first.checksum);
        assert_eq!(trailer.post_apply_checksum, second.checksum);
        assert_eq!(pages, vec![(2, p3.clone())]);

        // Reopening finds the position again.
        drop(log);
        let log = DbLog::open(&dir.path().join("ltx"), &db, true).unwrap();
        assert_eq!(log.pos(), third);
    }

    #[test]
    fn new_page_without_content_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = tempfile::tempfile().unwrap();
        let mut log = DbLog::open(&dir.path().join("ltx"), &db, false).unwrap();
        let p1 = page(1);
        let mut read = no_read;
        let err = log
            .commit(LocalCommit {
                page_size: 512,
                commit: 2,
                pages: &[(1, &p1)],
                wal: None,
                wall_ms: 1,
                read_page: &mut read,
            })
            .unwrap_err();
        assert!(matches!(err, EngineError::MissingPage { pgno: 2 }));
        assert_eq!(log.pos(), Pos::ZERO);
    }
}
