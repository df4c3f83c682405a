//! The LTX v1 file format, byte-compatible with LiteFS 0.5 (superfly/ltx v0.3.x).
//!
//! This module encodes, decodes, validates and compacts LTX files; it decides nothing about
//! replication and does no I/O of its own beyond the `Read`/`Write` it is handed. Decoding is
//! streaming: a [`Decoder`] holds at most one LZ4 block (≤ 64 KiB for files we and LiteFS write)
//! plus the caller's page buffer, whatever the file size.
//!
//! Layout (all integers big-endian): a 100-byte [`Header`], then the page block — repeated
//! `pgno u32 ‖ page bytes`, ended by a zero `u32` — then a 16-byte [`Trailer`]. With
//! [`HEADER_FLAG_COMPRESS_LZ4`] the whole page block, zero page header included, is one standard
//! LZ4 frame and the trailer follows the frame raw.

pub mod checksum;
mod compact;
mod decoder;
mod encoder;
mod error;
mod lz4frame;

pub use compact::{compact, compact_from, compact_wal_run};
pub use decoder::{decode_slice, decode_slice_with, DecodeScratch, Decoder};
pub use encoder::{encode_to_vec, encode_to_vec_with, EncodeScratch, Encoder};
pub use error::LtxError;

use checksum::CHECKSUM_FLAG;
use std::fmt;
use std::str::FromStr;

/// The 4 magic bytes every LTX v1 file starts with.
pub const MAGIC: &[u8; 4] = b"LTX1";
pub const HEADER_SIZE: usize = 100;
pub const PAGE_HEADER_SIZE: usize = 4;
pub const TRAILER_SIZE: usize = 16;
/// Header flag: the page block is one LZ4 frame.
pub const HEADER_FLAG_COMPRESS_LZ4: u32 = 0x1;
/// Every flag bit v1 allows.
pub const HEADER_FLAG_MASK: u32 = HEADER_FLAG_COMPRESS_LZ4;
pub const MIN_PAGE_SIZE: u32 = 512;
pub const MAX_PAGE_SIZE: u32 = 65_536;

/// True iff `page_size` is a power of two in `512..=65536`.
pub fn is_valid_page_size(page_size: u32) -> bool {
    page_size.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size)
}

/// The 100-byte LTX header (§1.1). `timestamp_ms` is milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub flags: u32,
    pub page_size: u32,
    /// Database size in pages after applying the file; 0 means the database was deleted.
    pub commit: u32,
    pub min_txid: u64,
    pub max_txid: u64,
    pub timestamp_ms: i64,
    /// Database checksum before applying; 0 iff snapshot.
    pub pre_apply_checksum: u64,
    pub wal_offset: i64,
    pub wal_size: i64,
    pub wal_salt1: u32,
    pub wal_salt2: u32,
    pub node_id: u64,
}

impl Header {
    /// A snapshot holds every page of the database and starts at TXID 1.
    pub fn is_snapshot(&self) -> bool {
        self.min_txid == 1
    }

    pub fn is_compressed(&self) -> bool {
        self.flags & HEADER_FLAG_COMPRESS_LZ4 != 0
    }

    /// The lock page number for this header's page size.
    pub fn lock_pgno(&self) -> u32 {
        checksum::lock_pgno(self.page_size)
    }

    /// Checks every header rule of §1.7, in the order superfly/ltx v0.3.14 checks them.
    pub fn validate(&self) -> Result<(), LtxError> {
        if self.flags & !HEADER_FLAG_MASK != 0 {
            return Err(LtxError::InvalidFlags(self.flags));
        }
        if !is_valid_page_size(self.page_size) {
            return Err(LtxError::InvalidPageSize(self.page_size));
        }
        if self.min_txid == 0 {
            return Err(LtxError::MinTxidZero);
        }
        if self.max_txid == 0 {
            return Err(LtxError::MaxTxidZero);
        }
        if self.min_txid > self.max_txid {
            return Err(LtxError::TxidsOutOfOrder {
                min_txid: self.min_txid,
                max_txid: self.max_txid,
            });
        }
        if self.wal_offset < 0 {
            return Err(LtxError::NegativeWalOffset(self.wal_offset));
        }
        if self.wal_size < 0 {
            return Err(LtxError::NegativeWalSize(self.wal_size));
        }
        if self.wal_salt1 != 0 || self.wal_salt2 != 0 {
            if self.wal_offset == 0 {
                return Err(LtxError::WalSaltWithoutOffset);
            }
            if self.wal_size == 0 {
                return Err(LtxError::WalSaltWithoutSize);
            }
        }
        if self.wal_offset != 0 && self.wal_size == 0 {
            return Err(LtxError::WalOffsetWithoutSize);
        }
        if self.wal_offset == 0 && self.wal_size != 0 {
            return Err(LtxError::WalSizeWithoutOffset);
        }
        if self.is_snapshot() {
            if self.pre_apply_checksum != 0 {
                return Err(LtxError::SnapshotPreApplyChecksumNonZero);
            }
        } else {
            if self.pre_apply_checksum == 0 {
                return Err(LtxError::PreApplyChecksumMissing);
            }
            if self.pre_apply_checksum & CHECKSUM_FLAG == 0 {
                return Err(LtxError::PreApplyChecksumFormat);
            }
        }
        Ok(())
    }

    /// The header's bytes; the 20 reserved bytes are zero. Does not validate.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&self.flags.to_be_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_be_bytes());
        b[12..16].copy_from_slice(&self.commit.to_be_bytes());
        b[16..24].copy_from_slice(&self.min_txid.to_be_bytes());
        b[24..32].copy_from_slice(&self.max_txid.to_be_bytes());
        b[32..40].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        b[40..48].copy_from_slice(&self.pre_apply_checksum.to_be_bytes());
        b[48..56].copy_from_slice(&self.wal_offset.to_be_bytes());
        b[56..64].copy_from_slice(&self.wal_size.to_be_bytes());
        b[64..68].copy_from_slice(&self.wal_salt1.to_be_bytes());
        b[68..72].copy_from_slice(&self.wal_salt2.to_be_bytes());
        b[72..80].copy_from_slice(&self.node_id.to_be_bytes());
        b
    }

    /// Parses and validates a header. Reserved bytes are ignored, as LiteFS does.
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Result<Header, LtxError> {
        if &b[0..4] != MAGIC {
            return Err(LtxError::BadMagic);
        }
        let h = Header {
            flags: be_u32(b, 4),
            page_size: be_u32(b, 8),
            commit: be_u32(b, 12),
            min_txid: be_u64(b, 16),
            max_txid: be_u64(b, 24),
            timestamp_ms: be_u64(b, 32) as i64,
            pre_apply_checksum: be_u64(b, 40),
            wal_offset: be_u64(b, 48) as i64,
            wal_size: be_u64(b, 56) as i64,
            wal_salt1: be_u32(b, 64),
            wal_salt2: be_u32(b, 68),
            node_id: be_u64(b, 72),
        };
        h.validate()?;
        Ok(h)
    }

    /// The position a database must be at for this file to apply: `(min_txid - 1, pre-apply)`.
    pub fn pre_apply_pos(&self) -> Pos {
        Pos {
            txid: self.min_txid.saturating_sub(1),
            checksum: self.pre_apply_checksum,
        }
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(x)
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// The 16-byte trailer (§1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub post_apply_checksum: u64,
    pub file_checksum: u64,
}

impl Trailer {
    pub fn to_bytes(&self) -> [u8; TRAILER_SIZE] {
        let mut b = [0u8; TRAILER_SIZE];
        b[0..8].copy_from_slice(&self.post_apply_checksum.to_be_bytes());
        b[8..16].copy_from_slice(&self.file_checksum.to_be_bytes());
        b
    }

    /// Parses a trailer without validating it (see [`Trailer::validate`]).
    pub fn from_bytes(b: &[u8; TRAILER_SIZE]) -> Trailer {
        Trailer {
            post_apply_checksum: be_u64(b, 0),
            file_checksum: be_u64(b, 8),
        }
    }

    /// The trailer's format rules: both checksums non-zero with bit 63 set.
    pub fn validate(&self) -> Result<(), LtxError> {
        validate_post_apply(self.post_apply_checksum)?;
        if self.file_checksum == 0 {
            return Err(LtxError::FileChecksumMissing);
        }
        if self.file_checksum & CHECKSUM_FLAG == 0 {
            return Err(LtxError::FileChecksumFormat);
        }
        Ok(())
    }
}

pub(crate) fn validate_post_apply(post_apply_checksum: u64) -> Result<(), LtxError> {
    if post_apply_checksum == 0 {
        return Err(LtxError::PostApplyChecksumMissing);
    }
    if post_apply_checksum & CHECKSUM_FLAG == 0 {
        return Err(LtxError::PostApplyChecksumFormat);
    }
    Ok(())
}

/// A replication position: the TXID a database is at and its database checksum there.
/// Text form `"<txid 16 lowercase hex>/<checksum 16 lowercase hex>"` (33 chars).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub txid: u64,
    pub checksum: u64,
}

impl Pos {
    pub const ZERO: Pos = Pos {
        txid: 0,
        checksum: 0,
    };

    pub fn is_zero(&self) -> bool {
        *self == Pos::ZERO
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}/{:016x}", self.txid, self.checksum)
    }
}

impl FromStr for Pos {
    type Err = LtxError;
    fn from_str(s: &str) -> Result<Pos, LtxError> {
        let b = s.as_bytes();
        if b.len() != 33 || b[16] != b'/' {
            return Err(LtxError::InvalidPosText);
        }
        let txid = parse_hex16(&s[..16]).ok_or(LtxError::InvalidPosText)?;
        let checksum = parse_hex16(&s[17..]).ok_or(LtxError::InvalidPosText)?;
        Ok(Pos { txid, checksum })
    }
}

/// Parses exactly 16 hex digits (either case, as Go's ParseUint does).
fn parse_hex16(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// The file name of an LTX file: `%016x-%016x.ltx`.
pub fn file_name(min_txid: u64, max_txid: u64) -> String {
    let mut name = String::with_capacity(FILE_NAME_LEN);
    push_file_name(&mut name, min_txid, max_txid);
    name
}

/// Length of every LTX file name ([`file_name`]).
pub const FILE_NAME_LEN: usize = 37;

/// Appends [`file_name`]`(min_txid, max_txid)` to `out` without going through `format!` (the
/// simulator names a file on every commit; the padded-hex formatter dominated that).
pub fn push_file_name(out: &mut String, min_txid: u64, max_txid: u64) {
    push_hex16(out, min_txid);
    out.push('-');
    push_hex16(out, max_txid);
    out.push_str(".ltx");
}

/// Appends `value` as exactly 16 lower-case hex digits (`%016x`).
fn push_hex16(out: &mut String, value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.push(char::from(DIGITS[((value >> (shift * 4)) & 0xf) as usize]));
    }
}

/// Parses a name matching `^([0-9a-f]{16})-([0-9a-f]{16})\.ltx$` into `(min_txid, max_txid)`.
pub fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    let b = name.as_bytes();
    if b.len() != 37 || b[16] != b'-' || &b[33..] != b".ltx" {
        return None;
    }
    let lower_hex = |s: &[u8]| {
        s.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    if !lower_hex(&b[..16]) || !lower_hex(&b[17..33]) {
        return None;
    }
    Some((parse_hex16(&name[..16])?, parse_hex16(&name[17..33])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pos_text_round_trip() {
        let p = Pos {
            txid: 3,
            checksum: 0x8000_0000_dead_beef,
        };
        assert_eq!(p.to_string(), "0000000000000003/80000000deadbeef");
        assert_eq!("0000000000000003/80000000deadbeef".parse::<Pos>(), Ok(p));
        assert_eq!(
            "0000000000000003-80000000deadbeef".parse::<Pos>(),
            Err(LtxError::InvalidPosText)
        );
        assert_eq!(
            "000000000000003/80000000deadbeef".parse::<Pos>(),
            Err(LtxError::InvalidPosText)
        );
        assert_eq!(
            "+000000000000003/80000000deadbeef".parse::<Pos>(),
            Err(LtxError::InvalidPosText)
        );
        assert!(Pos::ZERO.is_zero());
    }

    #[test]
    fn file_name_round_trip() {
        assert_eq!(file_name(1, 0x2a), "0000000000000001-000000000000002a.ltx");
        assert_eq!(
            parse_file_name("0000000000000001-000000000000002a.ltx"),
            Some((1, 42))
        );
        assert_eq!(
            parse_file_name("0000000000000001-000000000000002A.ltx"),
            None
        );
        assert_eq!(
            parse_file_name("0000000000000001-000000000000002a.ltx.tmp"),
            None
        );
        assert_eq!(parse_file_name("1-2.ltx"), None);
    }

    #[test]
    fn file_name_matches_padded_hex_format() {
        for (min, max) in [(0, 0), (1, 1), (0x2a, 0xdead_beef), (u64::MAX - 1, u64::MAX), (1 << 60, 0x0123_4567_89ab_cdef)] {
            let name = file_name(min, max);
            assert_eq!(name, format!("{min:016x}-{max:016x}.ltx"));
            assert_eq!(name.len(), FILE_NAME_LEN);
            assert_eq!(parse_file_name(&name), Some((min, max)));
        }
    }

    #[test]
    fn pre_apply_pos_is_previous_txid() {
        let h = Header {
            min_txid: 5,
            pre_apply_checksum: CHECKSUM_FLAG | 9,
            ..Header::default()
        };
        assert_eq!(
            h.pre_apply_pos(),
            Pos {
                txid: 4,
                checksum: CHECKSUM_FLAG | 9
            }
        );
    }
}
