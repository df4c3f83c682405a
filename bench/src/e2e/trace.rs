//! Per-commit FUSE operations and fsyncs of an `ltxfs` process, counted with `strace`.
//!
//! The node exposes no counters of its own (no `/metrics` on the mount yet, `fuse.debug` is
//! parsed but unused), so this attaches `strace -f -y -xx -s 8` to the running process for a
//! window of transactions and reads: every `read()` on `/dev/fuse` is one FUSE request (fuser
//! reads one request per call; bytes 4..8 of the header are the opcode), every `fsync` /
//! `fdatasync` names the file it syncs (`-y`), so forwarded SQLite fsyncs and the node's own LTX
//! syncs can be told apart: a backing-file fsync is SQLite's when a FUSE `FSYNC` request asked for
//! it, the node's own otherwise.
//!
//! Decides: how strace output is parsed and classified. Never does: time anything (strace slows
//! the process down; counts are taken in a separate window from the timed runs).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a traced window contained.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// FUSE requests by opcode name.
    pub fuse_ops: BTreeMap<String, u64>,
    /// fsync/fdatasync calls by what they synced.
    pub fsyncs: BTreeMap<String, u64>,
}

impl Counts {
    pub fn fuse_total(&self) -> u64 {
        self.fuse_ops.values().sum()
    }

    pub fn fsync_total(&self) -> u64 {
        self.fsyncs.values().sum()
    }

    /// `NAME x/commit, ...` sorted by count, descending.
    pub fn per_commit(map: &BTreeMap<String, u64>, commits: u64) -> String {
        let mut entries: Vec<(&String, &u64)> = map.iter().collect();
        entries.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        entries
            .iter()
            .map(|(name, n)| format!("{name} {:.2}", **n as f64 / commits.max(1) as f64))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Name of a FUSE opcode (include/uapi/linux/fuse.h).
pub fn fuse_opcode_name(opcode: u32) -> String {
    let name = match opcode {
        1 => "LOOKUP",
        2 => "FORGET",
        3 => "GETATTR",
        4 => "SETATTR",
        10 => "UNLINK",
        12 => "RENAME",
        14 => "OPEN",
        15 => "READ",
        16 => "WRITE",
        17 => "STATFS",
        18 => "RELEASE",
        20 => "FSYNC",
        22 => "GETXATTR",
        23 => "LISTXATTR",
        25 => "FLUSH",
        26 => "INIT",
        27 => "OPENDIR",
        28 => "READDIR",
        29 => "RELEASEDIR",
        30 => "FSYNCDIR",
        31 => "GETLK",
        32 => "SETLK",
        33 => "SETLKW",
        34 => "ACCESS",
        35 => "CREATE",
        36 => "INTERRUPT",
        42 => "BATCH_FORGET",
        43 => "FALLOCATE",
        44 => "READDIRPLUS",
        46 => "LSEEK",
        52 => "STATX",
        other => return format!("OP{other}"),
    };
    name.to_string()
}

/// What an fsync'ed path is, for the node's data dir layout (`dbs/<db>/{database,journal,wal,
/// shm,ltx/...}`).
pub fn classify_fsync_path(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    // `.spare-*`: an LTX written into a pre-made spare file before its rename (node
    // `runtime/disk.rs`, SPARE_PREFIX).
    if file.ends_with(".ltx.tmp") || file.ends_with(".ltx") || file.starts_with(".spare-") {
        return "LTX file".into();
    }
    if file == "ltx" {
        return "LTX dir".into();
    }
    match file {
        "database" => "db file".into(),
        "journal" => "journal".into(),
        "wal" => "WAL".into(),
        "shm" => "shm".into(),
        _ if file.is_empty() => "?".into(),
        _ => format!("other ({file})"),
    }
}

/// One syscall as strace reported it (possibly reassembled from unfinished/resumed halves).
#[derive(Debug, PartialEq, Eq)]
struct Call {
    name: String,
    /// Path of the first argument's fd (`-y`), if any.
    fd_path: Option<String>,
    /// The first 8 bytes of a read's buffer.
    data: Vec<u8>,
}

/// Parses `strace -f -y -xx -s 8` output into counts.
pub fn parse_strace(text: &str) -> Counts {
    let mut counts = Counts::default();
    // pid → (syscall, fd path) of an `<unfinished ...>` call.
    let mut pending: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    for line in text.lines() {
        let (pid, rest) = match line.split_once(' ') {
            Some((pid, rest)) if pid.chars().all(|c| c.is_ascii_digit()) => (pid, rest.trim_start()),
            _ => ("", line),
        };
        let call = if let Some(after) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = after.split_once(" resumed>") else {
                continue;
            };
            let Some((pending_name, fd_path)) = pending.remove(pid) else {
                continue;
            };
            if pending_name != name {
                continue;
            }
            if !returned_ok(tail) {
                continue;
            }
            Call {
                name: name.to_string(),
                fd_path,
                data: first_string_bytes(tail),
            }
        } else {
            let Some((name, args)) = rest.split_once('(') else {
                continue;
            };
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let fd_path = fd_path(args);
            if args.contains("<unfinished ...>") {
                pending.insert(pid.to_string(), (name.to_string(), fd_path));
                continue;
            }
            if !returned_ok(args) {
                continue;
            }
            Call {
                name: name.to_string(),
                fd_path,
                data: first_string_bytes(args),
            }
        };
        record(&mut counts, &call);
    }
    counts
}

fn record(counts: &mut Counts, call: &Call) {
    match call.name.as_str() {
        "read" if call.fd_path.as_deref() == Some("/dev/fuse") && call.data.len() >= 8 => {
            let opcode = u32::from_le_bytes([call.data[4], call.data[5], call.data[6], call.data[7]]);
            *counts.fuse_ops.entry(fuse_opcode_name(opcode)).or_default() += 1;
        }
        "fsync" | "fdatasync" => {
            let what = classify_fsync_path(call.fd_path.as_deref().unwrap_or(""));
            *counts.fsyncs.entry(what).or_default() += 1;
        }
        _ => {}
    }
}

/// `... = N` with N ≥ 0.
fn returned_ok(text: &str) -> bool {
    text.rsplit_once(" = ")
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|n| n.parse::<i64>().ok())
        .is_some_and(|n| n >= 0)
}

/// `5</dev/fuse>, ...` → `/dev/fuse`.
fn fd_path(args: &str) -> Option<String> {
    let open = args.find('<')?;
    if !args[..open].chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let close = args[open..].find('>')? + open;
    let raw = &args[open + 1..close];
    // With -xx, strace hex-escapes the path too.
    if raw.starts_with("\\x") {
        let bytes = decode_hex_escapes(raw);
        return Some(String::from_utf8_lossy(&bytes).into_owned());
    }
    Some(raw.to_string())
}

/// Bytes of the first `"..."` argument written with `-xx` (`\xNN` escapes).
fn first_string_bytes(text: &str) -> Vec<u8> {
    let Some(start) = text.find('"') else {
        return Vec::new();
    };
    let body = &text[start + 1..];
    let end = body.find('"').unwrap_or(body.len());
    decode_hex_escapes(&body[..end])
}

/// `\xNN\xNN...` → bytes (stops at the first non-escape).
fn decode_hex_escapes(body: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(pos) = rest.find("\\x") {
        let hex = rest.get(pos + 2..pos + 4).unwrap_or("");
        match u8::from_str_radix(hex, 16) {
            Ok(b) => out.push(b),
            Err(_) => break,
        }
        rest = &rest[pos + 4..];
    }
    out
}

/// An attached `strace` writing to a file; [`Tracer::finish`] detaches and parses.
pub struct Tracer {
    child: Option<Child>,
    out: PathBuf,
}

impl Tracer {
    /// `None` when strace is not installed.
    pub fn available() -> bool {
        Command::new("strace")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Attaches to every thread of `pid` and returns once strace reports it attached (strace
    /// prints "Process N attached with K threads" once, after seizing all of them).
    pub fn attach(pid: u32, out: &Path) -> Result<Tracer, String> {
        let mut child = Command::new("strace")
            .args(["-f", "-y", "-xx", "-s", "8"])
            .args(["-e", "trace=read,fsync,fdatasync", "-e", "signal=none"])
            .arg("-o")
            .arg(out)
            .arg("-p")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("strace: {e}"))?;
        let stderr = child.stderr.take().ok_or("strace: no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("attached") => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("strace did not attach (ptrace not permitted?)".into());
                }
            }
        }
        Ok(Tracer {
            child: Some(child),
            out: out.to_path_buf(),
        })
    }

    /// Detaches (SIGINT to strace) and parses what was recorded.
    pub fn finish(mut self) -> Result<Counts, String> {
        self.detach();
        let text = std::fs::read_to_string(&self.out)
            .map_err(|e| format!("{}: {e}", self.out.display()))?;
        Ok(parse_strace(&text))
    }

    fn detach(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let _ = child.wait();
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"1234 read(5<\x2f\x64\x65\x76\x2f\x66\x75\x73\x65>, "\x50\x00\x00\x00\x10\x00\x00\x00"..., 1052672) = 4176
1234 read(5</dev/fuse>,  <unfinished ...>
1240 fsync(9</d/data/dbs/a.db/ltx/0000000000000002-0000000000000002.ltx.tmp>) = 0
1234 <... read resumed>"\x38\x00\x00\x00\x14\x00\x00\x00"..., 1052672) = 64
1240 fsync(10</d/data/dbs/a.db/ltx>) = 0
1234 fdatasync(7</d/data/dbs/a.db/journal>) = 0
1234 read(5</dev/fuse>, 0x7f00, 1052672) = -1 EINTR (Interrupted system call)
1234 read(11</d/data/dbs/a.db/database>, "\x00\x00\x00\x00\x10\x00\x00\x00"..., 4096) = 4096
1234 +++ exited with 0 +++
"#;

    #[test]
    fn strace_lines_become_fuse_ops_and_classified_fsyncs() {
        let counts = parse_strace(SAMPLE);
        let ops: Vec<(&str, u64)> = counts
            .fuse_ops
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(ops, vec![("FSYNC", 1), ("WRITE", 1)]);
        assert_eq!(counts.fsyncs.get("LTX file"), Some(&1));
        assert_eq!(classify_fsync_path("/d/dbs/app.db/ltx/.spare-0000000000000007"), "LTX file");
        assert_eq!(counts.fsyncs.get("LTX dir"), Some(&1));
        assert_eq!(counts.fsyncs.get("journal"), Some(&1));
        assert_eq!(counts.fsync_total(), 3);
        assert_eq!(counts.fuse_total(), 2);
    }

    #[test]
    fn per_commit_text_sorts_by_count() {
        let mut map = BTreeMap::new();
        map.insert("A".to_string(), 10);
        map.insert("B".to_string(), 30);
        assert_eq!(Counts::per_commit(&map, 10), "B 3.00, A 1.00");
    }
}
