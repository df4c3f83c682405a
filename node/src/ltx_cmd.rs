//! `ltxfs ltx …`: the LTX file tool (mirrors superfly/ltx's `ltx` command).
//!
//! It moves bytes between files and `ltxfs_core::ltx`; every format decision (validity,
//! checksums, page rules) is the core codec's. `apply` never leaves a half-applied database: it
//! works on a temporary copy and renames it over the database only when every file applied and
//! every checksum matched.

use clap::{Args, Subcommand};
use ltxfs_core::ltx::checksum::{lock_pgno, page_checksum, DbChecksum, CHECKSUM_EMPTY};
use ltxfs_core::ltx::{
    is_valid_page_size, parse_file_name, Decoder, Encoder, Header, LtxError, Trailer,
    HEADER_FLAG_COMPRESS_LZ4,
};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Args, Debug)]
pub struct LtxArgs {
    #[command(subcommand)]
    command: LtxCommand,
}

#[derive(Subcommand, Debug)]
enum LtxCommand {
    /// Verify LTX files; exit 0 iff every file is valid.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print an LTX file's header, page numbers and trailer.
    Dump {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        file: PathBuf,
    },
    /// Print the LTX database checksum of a SQLite database file (16 lowercase hex chars).
    Checksum { db: PathBuf },
    /// Write a snapshot LTX file (TXID 1..N) of a SQLite database file.
    EncodeDb {
        /// The snapshot's max TXID.
        #[arg(long, default_value_t = 1)]
        txid: u64,
        /// LZ4-compress the page block, as LiteFS does by default.
        #[arg(long)]
        compress: bool,
        db: PathBuf,
        out: PathBuf,
    },
    /// Apply LTX files in order to a database (created if absent); all or nothing.
    Apply {
        #[arg(long)]
        db: PathBuf,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List the LTX files of a directory with their TXID ranges and sizes.
    List { dir: PathBuf },
}

/// An error for the command line: what failed, in words, and the codec's rule when there is one.
#[derive(Debug)]
struct CmdError(String);

impl From<io::Error> for CmdError {
    fn from(e: io::Error) -> Self {
        CmdError(e.to_string())
    }
}

impl From<LtxError> for CmdError {
    fn from(e: LtxError) -> Self {
        CmdError(describe(&e))
    }
}

/// The error's message and its rule name (the `LtxError` variant), e.g.
/// `file checksum mismatch: … [FileChecksumMismatch]`.
fn describe(e: &LtxError) -> String {
    let debug = format!("{e:?}");
    let variant: String = debug
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    format!("{e} [{variant}]")
}

pub fn run(args: LtxArgs) -> ExitCode {
    let result = match args.command {
        LtxCommand::Verify { files } => return verify(&files),
        LtxCommand::Dump { json, file } => dump(&file, json),
        LtxCommand::Checksum { db } => checksum(&db),
        LtxCommand::EncodeDb {
            txid,
            compress,
            db,
            out,
        } => encode_db(&db, &out, txid, compress),
        LtxCommand::Apply { db, files } => apply(&db, &files),
        LtxCommand::List { dir } => list(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CmdError(msg)) => {
            eprintln!("ltxfs ltx: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn open_decoder(path: &Path) -> Result<Decoder<BufReader<File>>, CmdError> {
    let f = File::open(path)?;
    Ok(Decoder::new(BufReader::new(f))?)
}

/// Decodes a whole file, calling `on_page` per page, and insists nothing follows the trailer.
/// Errors do not name the file; callers add it.
fn read_file(
    path: &Path,
    mut on_page: impl FnMut(u32, &[u8]) -> Result<(), CmdError>,
) -> Result<(Header, Trailer), CmdError> {
    let mut dec = open_decoder(path)?;
    let header = *dec.header();
    let mut buf = vec![0u8; header.page_size as usize];
    while let Some(pgno) = dec.next_page(&mut buf)? {
        on_page(pgno, &buf)?;
    }
    let (trailer, mut rest) = dec.finish_into_inner()?;
    let mut extra = [0u8; 1];
    if rest.read(&mut extra)? != 0 {
        let remaining = 1 + io::copy(&mut rest, &mut io::sink())? as usize;
        return Err(LtxError::TrailingData(remaining).into());
    }
    Ok((header, trailer))
}

fn verify(files: &[PathBuf]) -> ExitCode {
    let mut bad = 0usize;
    for path in files {
        match read_file(path, |_, _| Ok(())) {
            Ok(_) => println!("{}: ok", path.display()),
            Err(CmdError(msg)) => {
                bad += 1;
                eprintln!("{}: {msg}", path.display());
            }
        }
    }
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn hex(v: u64) -> String {
    format!("{v:016x}")
}

fn dump(path: &Path, json: bool) -> Result<(), CmdError> {
    dump_inner(path, json).map_err(|CmdError(m)| CmdError(format!("{}: {m}", path.display())))
}

fn dump_inner(path: &Path, json: bool) -> Result<(), CmdError> {
    let mut pages = Vec::new();
    let result = read_file(path, |pgno, _| {
        pages.push(pgno);
        Ok(())
    });
    if json {
        let (h, t) = result?;
        let obj = serde_json::json!({
            "version": 1,
            "flags": h.flags,
            "compressed": h.is_compressed(),
            "page_size": h.page_size,
            "commit": h.commit,
            "min_txid": hex(h.min_txid),
            "max_txid": hex(h.max_txid),
            "timestamp": rfc3339_ms(h.timestamp_ms),
            "timestamp_ms": h.timestamp_ms,
            "pre_apply_checksum": hex(h.pre_apply_checksum),
            "wal_offset": h.wal_offset,
            "wal_size": h.wal_size,
            "wal_salt1": h.wal_salt1,
            "wal_salt2": h.wal_salt2,
            "node_id": format!("{:016X}", h.node_id),
            "pages": pages,
            "post_apply_checksum": hex(t.post_apply_checksum),
            "file_checksum": hex(t.file_checksum),
        });
        println!("{obj}");
        return Ok(());
    }
    // Text: print the header even when the rest is broken, then the error.
    let header = open_decoder(path).map(|d| *d.header());
    if let Ok(h) = header {
        println!("# HEADER");
        println!("Version:    1");
        println!("Flags:      0x{:08x}", h.flags);
        println!("Page size:  {}", h.page_size);
        println!("Commit:     {}", h.commit);
        println!("Min TXID:   {} ({})", hex(h.min_txid), h.min_txid);
        println!("Max TXID:   {} ({})", hex(h.max_txid), h.max_txid);
        println!(
            "Timestamp:  {} ({})",
            rfc3339_ms(h.timestamp_ms),
            h.timestamp_ms
        );
        println!("Pre-apply:  {}", hex(h.pre_apply_checksum));
        println!("WAL offset: {}", h.wal_offset);
        println!("WAL size:   {}", h.wal_size);
        println!("WAL salt:   {:08x} {:08x}", h.wal_salt1, h.wal_salt2);
        println!("Node ID:    {:016X}", h.node_id);
        println!();
        println!("# PAGE DATA");
        for pgno in &pages {
            println!("Frame #{pgno}");
        }
        println!();
    }
    let (_, t) = result?;
    println!("# TRAILER");
    println!("Post-apply: {}", hex(t.post_apply_checksum));
    println!("File Checksum: {}", hex(t.file_checksum));
    Ok(())
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (proleptic Gregorian, UTC).
fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Days to civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Reads the SQLite page size from a database header (offset 16, big-endian u16, 1 = 65536).
fn sqlite_page_size(f: &mut File) -> Result<Option<u32>, CmdError> {
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let mut head = [0u8; 18];
    f.seek(SeekFrom::Start(0))?;
    f.read_exact(&mut head)
        .map_err(|_| CmdError("not a SQLite database: file too short".into()))?;
    if &head[..16] != b"SQLite format 3\0" {
        return Err(CmdError("not a SQLite database: bad header".into()));
    }
    let raw = u16::from_be_bytes([head[16], head[17]]);
    let page_size = if raw == 1 { 65_536 } else { u32::from(raw) };
    if !is_valid_page_size(page_size) {
        return Err(CmdError(format!("invalid SQLite page size {raw}")));
    }
    Ok(Some(page_size))
}

/// The database checksum of a file of whole pages (lock page skipped), read page by page.
fn file_checksum(f: &mut File, page_size: u32) -> Result<u64, CmdError> {
    let len = f.metadata()?.len();
    if len % u64::from(page_size) != 0 {
        return Err(CmdError(format!(
            "database size {len} is not a multiple of the page size {page_size}"
        )));
    }
    f.seek(SeekFrom::Start(0))?;
    let mut r = BufReader::with_capacity(1 << 20, &mut *f);
    let mut buf = vec![0u8; page_size as usize];
    let lock = lock_pgno(page_size);
    let mut sum = DbChecksum::new();
    let pages = len / u64::from(page_size);
    for index in 0..pages {
        r.read_exact(&mut buf)?;
        let pgno = u32::try_from(index + 1)
            .map_err(|_| CmdError("database has more than 2^32 pages".into()))?;
        if pgno != lock {
            sum.toggle(page_checksum(pgno, &buf));
        }
    }
    Ok(sum.value())
}

fn checksum(db: &Path) -> Result<(), CmdError> {
    let mut f = File::open(db).map_err(|e| CmdError(format!("{}: {e}", db.display())))?;
    let sum = match sqlite_page_size(&mut f)? {
        None => CHECKSUM_EMPTY,
        Some(page_size) => file_checksum(&mut f, page_size)?,
    };
    println!("{}", hex(sum));
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn encode_db(db: &Path, out: &Path, txid: u64, compress: bool) -> Result<(), CmdError> {
    if txid == 0 {
        return Err(CmdError("--txid must be at least 1".into()));
    }
    let mut f = File::open(db).map_err(|e| CmdError(format!("{}: {e}", db.display())))?;
    let page_size =
        sqlite_page_size(&mut f)?.ok_or_else(|| CmdError("database is empty".into()))?;
    let len = f.metadata()?.len();
    if len % u64::from(page_size) != 0 {
        return Err(CmdError(format!(
            "database size {len} is not a multiple of the page size {page_size}"
        )));
    }
    let commit = u32::try_from(len / u64::from(page_size))
        .map_err(|_| CmdError("database has more than 2^32 pages".into()))?;
    let sum = file_checksum(&mut f, page_size)?;
    let header = Header {
        flags: if compress {
            HEADER_FLAG_COMPRESS_LZ4
        } else {
            0
        },
        page_size,
        commit,
        min_txid: 1,
        max_txid: txid,
        timestamp_ms: now_ms(),
        ..Header::default()
    };
    let tmp = temp_path(out);
    let result = (|| -> Result<(), CmdError> {
        let w = BufWriter::new(File::create(&tmp)?);
        let mut enc = Encoder::new(w, header)?;
        f.seek(SeekFrom::Start(0))?;
        let mut r = BufReader::with_capacity(1 << 20, &mut f);
        let mut buf = vec![0u8; page_size as usize];
        let lock = lock_pgno(page_size);
        for pgno in 1..=commit {
            r.read_exact(&mut buf)?;
            if pgno != lock {
                enc.encode_page(pgno, &buf)?;
            }
        }
        let (w, _) = enc.finish(sum)?;
        let file = w
            .into_inner()
            .map_err(|e| CmdError(e.error().to_string()))?;
        file.sync_all()?;
        fs::rename(&tmp, out)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A sibling temporary path for `path` (same directory, so rename is atomic).
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.ltxfs-tmp-{}", std::process::id()))
}

fn apply(db: &Path, files: &[PathBuf]) -> Result<(), CmdError> {
    let tmp = temp_path(db);
    let result = (|| -> Result<(), CmdError> {
        if db.exists() {
            fs::copy(db, &tmp)?;
        } else {
            File::create(&tmp)?;
        }
        let mut f = OpenOptions::new().read(true).write(true).open(&tmp)?;
        for path in files {
            apply_one(&mut f, path)
                .map_err(|CmdError(m)| CmdError(format!("{}: {m}", path.display())))?;
        }
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, db)?;
        if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Applies one file to the working copy, checking pre-apply before and post-apply after.
fn apply_one(f: &mut File, path: &Path) -> Result<(), CmdError> {
    let header = *open_decoder(path)?.header();
    let page_size = u64::from(header.page_size);
    if header.is_snapshot() {
        f.set_len(0)?;
    } else {
        let current = file_checksum(f, header.page_size)?;
        if current != header.pre_apply_checksum {
            return Err(CmdError(format!(
                "pre-apply checksum mismatch: database {} <> file {}",
                hex(current),
                hex(header.pre_apply_checksum)
            )));
        }
    }
    // Pages beyond the new commit go; pages the file writes land in place; a grown database's
    // lock page reads as zeros.
    f.set_len(u64::from(header.commit) * page_size)?;
    let mut w = &*f;
    let (_, trailer) = read_file(path, |pgno, data| {
        w.seek(SeekFrom::Start(u64::from(pgno - 1) * page_size))?;
        w.write_all(data)?;
        Ok(())
    })?;
    let post = file_checksum(f, header.page_size)?;
    if post != trailer.post_apply_checksum {
        return Err(CmdError(format!(
            "post-apply checksum mismatch: database {} <> file {}",
            hex(post),
            hex(trailer.post_apply_checksum)
        )));
    }
    Ok(())
}

fn list(dir: &Path) -> Result<(), CmdError> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| CmdError(format!("{}: {e}", dir.display())))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((min, max)) = parse_file_name(&name) {
            entries.push((min, max, entry.metadata()?.len(), entry.path()));
        }
    }
    entries.sort();
    println!(
        "{:<16}  {:<16}  {:>12}  {:>8}  {:>6}  file",
        "min_txid", "max_txid", "bytes", "commit", "lz4"
    );
    for (min, max, size, path) in entries {
        let (commit, lz4) = match open_decoder(&path) {
            Ok(d) => (
                d.header().commit.to_string(),
                d.header().is_compressed().to_string(),
            ),
            Err(_) => ("invalid".to_string(), "-".to_string()),
        };
        println!(
            "{}  {}  {size:>12}  {commit:>8}  {lz4:>6}  {}",
            hex(min),
            hex(max),
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::rfc3339_ms;

    #[test]
    fn timestamps_format_as_rfc3339_milli_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }
}
