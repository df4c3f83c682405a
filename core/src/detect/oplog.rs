//! A line-based text form of detector inputs, used to record operation sequences from real SQLite
//! runs through the FUSE mount and replay them in tests.
//!
//! Decides: the text syntax only. Never does: I/O (callers write/read the text).
//!
//! ```text
//! dbw OFFSET LEN HEXHEAD       database write (HEXHEAD = first min(LEN,100) bytes)
//! dbt SIZE                     database truncate
//! jw OFFSET LEN HEXHEAD        journal write
//! jt SIZE | ju                 journal truncate / unlink
//! ww OFFSET LEN                WAL write
//! wt SIZE | wu                 WAL truncate / unlink
//! lk db|shm OWNER START END r|w
//! ul db|shm OWNER START END
//! ro db|shm OWNER              owner closed the file
//! wal OFFSET HEX               WAL bytes handed over after an Event::ReadWal
//! # ...                        comment
//! ```

use super::locks::LockKind;
use super::{LockFile, Op, HEAD_LEN};
use std::fmt::Write as _;

/// One recorded line, owning its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    DbWrite {
        offset: u64,
        len: u64,
        head: Vec<u8>,
    },
    DbTruncate {
        size: u64,
    },
    JournalWrite {
        offset: u64,
        len: u64,
        head: Vec<u8>,
    },
    JournalTruncate {
        size: u64,
    },
    JournalUnlink,
    WalWrite {
        offset: u64,
        len: u64,
    },
    WalTruncate {
        size: u64,
    },
    WalUnlink,
    Lock {
        file: LockFile,
        owner: u64,
        start: u64,
        end: u64,
        kind: LockKind,
    },
    Unlock {
        file: LockFile,
        owner: u64,
        start: u64,
        end: u64,
    },
    ReleaseOwner {
        file: LockFile,
        owner: u64,
    },
    WalData {
        offset: u64,
        data: Vec<u8>,
    },
    Comment(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("oplog line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

impl Record {
    /// Borrowed detector input, or `None` for `wal` data and comments.
    pub fn as_op(&self) -> Option<Op<'_>> {
        Some(match self {
            Record::DbWrite { offset, len, head } => Op::DbWrite {
                offset: *offset,
                len: *len,
                head,
            },
            Record::DbTruncate { size } => Op::DbTruncate { size: *size },
            Record::JournalWrite { offset, len, head } => Op::JournalWrite {
                offset: *offset,
                len: *len,
                head,
            },
            Record::JournalTruncate { size } => Op::JournalTruncate { size: *size },
            Record::JournalUnlink => Op::JournalUnlink,
            Record::WalWrite { offset, len } => Op::WalWrite {
                offset: *offset,
                len: *len,
            },
            Record::WalTruncate { size } => Op::WalTruncate { size: *size },
            Record::WalUnlink => Op::WalUnlink,
            Record::Lock {
                file,
                owner,
                start,
                end,
                kind,
            } => Op::Lock {
                file: *file,
                owner: *owner,
                start: *start,
                end: *end,
                kind: *kind,
            },
            Record::Unlock {
                file,
                owner,
                start,
                end,
            } => Op::Unlock {
                file: *file,
                owner: *owner,
                start: *start,
                end: *end,
            },
            Record::ReleaseOwner { file, owner } => Op::ReleaseOwner {
                file: *file,
                owner: *owner,
            },
            Record::WalData { .. } | Record::Comment(_) => return None,
        })
    }
}

fn file_name(file: LockFile) -> &'static str {
    match file {
        LockFile::Database => "db",
        LockFile::Shm => "shm",
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Formats one operation as a line (without newline).
pub fn format_op(op: &Op<'_>) -> String {
    let head = |h: &[u8]| {
        if h.is_empty() {
            "-".to_string()
        } else {
            hex(&h[..h.len().min(HEAD_LEN)])
        }
    };
    match op {
        Op::DbWrite {
            offset,
            len,
            head: h,
        } => format!("dbw {offset} {len} {}", head(h)),
        Op::DbTruncate { size } => format!("dbt {size}"),
        Op::JournalWrite {
            offset,
            len,
            head: h,
        } => format!("jw {offset} {len} {}", head(h)),
        Op::JournalTruncate { size } => format!("jt {size}"),
        Op::JournalUnlink => "ju".into(),
        Op::WalWrite { offset, len } => format!("ww {offset} {len}"),
        Op::WalTruncate { size } => format!("wt {size}"),
        Op::WalUnlink => "wu".into(),
        Op::Lock {
            file,
            owner,
            start,
            end,
            kind,
        } => {
            let kind = if *kind == LockKind::Write { "w" } else { "r" };
            format!("lk {} {owner} {start} {end} {kind}", file_name(*file))
        }
        Op::Unlock {
            file,
            owner,
            start,
            end,
        } => {
            format!("ul {} {owner} {start} {end}", file_name(*file))
        }
        Op::ReleaseOwner { file, owner } => format!("ro {} {owner}", file_name(*file)),
    }
}

/// Formats WAL bytes handed to the detector.
pub fn format_wal_data(offset: u64, data: &[u8]) -> String {
    format!("wal {offset} {}", hex(data))
}

/// Parses a whole recording.
pub fn parse(text: &str) -> Result<Vec<Record>, ParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            parse_line(line).map_err(|reason| ParseError {
                line: n + 1,
                reason,
            })
        })
        .collect()
}

fn parse_line(line: &str) -> Result<Record, String> {
    let line = line.trim();
    if let Some(comment) = line.strip_prefix('#') {
        return Ok(Record::Comment(comment.trim().to_string()));
    }
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    let num = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .ok_or_else(|| format!("missing field {i}"))?
            .parse::<u64>()
            .map_err(|e| format!("field {i}: {e}"))
    };
    let bytes = |i: usize| -> Result<Vec<u8>, String> {
        let text = fields.get(i).ok_or_else(|| format!("missing field {i}"))?;
        if *text == "-" {
            return Ok(Vec::new());
        }
        unhex(text)
    };
    let file = |i: usize| -> Result<LockFile, String> {
        match fields.get(i).copied() {
            Some("db") => Ok(LockFile::Database),
            Some("shm") => Ok(LockFile::Shm),
            other => Err(format!("bad lock file {other:?}")),
        }
    };
    let want = |n: usize| -> Result<(), String> {
        if fields.len() == n {
            Ok(())
        } else {
            Err(format!("expected {n} fields, got {}", fields.len()))
        }
    };
    let record = match fields[0] {
        "dbw" => {
            want(4)?;
            Record::DbWrite {
                offset: num(1)?,
                len: num(2)?,
                head: bytes(3)?,
            }
        }
        "dbt" => {
            want(2)?;
            Record::DbTruncate { size: num(1)? }
        }
        "jw" => {
            want(4)?;
            Record::JournalWrite {
                offset: num(1)?,
                len: num(2)?,
                head: bytes(3)?,
            }
        }
        "jt" => {
            want(2)?;
            Record::JournalTruncate { size: num(1)? }
        }
        "ju" => {
            want(1)?;
            Record::JournalUnlink
        }
        "ww" => {
            want(3)?;
            Record::WalWrite {
                offset: num(1)?,
                len: num(2)?,
            }
        }
        "wt" => {
            want(2)?;
            Record::WalTruncate { size: num(1)? }
        }
        "wu" => {
            want(1)?;
            Record::WalUnlink
        }
        "lk" => {
            want(6)?;
            let kind = match fields[5] {
                "r" => LockKind::Read,
                "w" => LockKind::Write,
                other => return Err(format!("bad lock kind {other:?}")),
            };
            Record::Lock {
                file: file(1)?,
                owner: num(2)?,
                start: num(3)?,
                end: num(4)?,
                kind,
            }
        }
        "ul" => {
            want(5)?;
            Record::Unlock {
                file: file(1)?,
                owner: num(2)?,
                start: num(3)?,
                end: num(4)?,
            }
        }
        "ro" => {
            want(3)?;
            Record::ReleaseOwner {
                file: file(1)?,
                owner: num(2)?,
            }
        }
        "wal" => {
            want(3)?;
            Record::WalData {
                offset: num(1)?,
                data: bytes(2)?,
            }
        }
        other => return Err(format!("unknown record {other:?}")),
    };
    Ok(record)
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    if text.len() % 2 != 0 {
        return Err("odd hex length".into());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| format!("hex: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_round_trips() {
        let head = [1u8, 2, 3];
        let ops = [
            Op::DbWrite {
                offset: 4096,
                len: 4096,
                head: &head,
            },
            Op::DbTruncate { size: 8192 },
            Op::JournalWrite {
                offset: 0,
                len: 512,
                head: &head,
            },
            Op::JournalTruncate { size: 0 },
            Op::JournalUnlink,
            Op::WalWrite {
                offset: 32,
                len: 24,
            },
            Op::WalTruncate { size: 0 },
            Op::WalUnlink,
            Op::Lock {
                file: LockFile::Shm,
                owner: 9,
                start: 120,
                end: 120,
                kind: LockKind::Write,
            },
            Op::Unlock {
                file: LockFile::Database,
                owner: 9,
                start: 0,
                end: u64::MAX,
            },
            Op::ReleaseOwner {
                file: LockFile::Shm,
                owner: 9,
            },
        ];
        let text: String = ops.iter().map(|op| format_op(op) + "\n").collect();
        let text = text + "# a comment\n" + &format_wal_data(32, &[0xab, 0xcd]) + "\n";
        let records = parse(&text).unwrap();
        let replayed: Vec<Op<'_>> = records.iter().filter_map(Record::as_op).collect();
        assert_eq!(replayed, ops);
        assert_eq!(
            records[12],
            Record::WalData {
                offset: 32,
                data: vec![0xab, 0xcd]
            }
        );
    }

    #[test]
    fn bad_lines_are_errors_with_line_numbers() {
        assert_eq!(parse("ju\nxx 1\n").unwrap_err().line, 2);
        assert!(parse("dbw 1 2\n").is_err());
        assert!(parse("wal 0 abc\n").is_err());
        assert!(parse("lk db 1 2 3 x\n").is_err());
    }
}
