//! LTX checksums (reference §1.5): CRC-64/GO-ISO with bit 63 always set.
//!
//! Go's `hash/crc64` with the ISO table is the catalogue's CRC-64/GO-ISO (poly 0x1B reflected,
//! init and xorout all ones). `crc64fast` only implements CRC-64/XZ, so it cannot be used here;
//! `crc-fast` accelerates GO-ISO with SIMD and is checked against a plain table implementation in
//! the tests.
//!
//! This module decides nothing; it only computes. It never allocates.

use crc_fast::{CrcAlgorithm, Digest};

/// Bit 63: every stored LTX checksum has it set, so a valid checksum is never zero.
pub const CHECKSUM_FLAG: u64 = 1 << 63;

/// The database checksum of an empty database (no pages) and of a deleted one.
pub const CHECKSUM_EMPTY: u64 = CHECKSUM_FLAG;

/// Raw CRC-64/GO-ISO of `data` (no flag).
pub fn crc64_go_iso(data: &[u8]) -> u64 {
    crc_fast::checksum(CrcAlgorithm::Crc64GoIso, data)
}

/// A streaming CRC-64/GO-ISO hasher, used for file checksums.
///
/// It keeps the CRC register itself: short inputs (a page number, half a trailer) step through
/// the byte table, since a SIMD call on a few bytes costs more than on a page, and longer ones
/// go through `crc-fast` starting from the register.
#[derive(Clone, Copy)]
pub struct Hasher {
    /// The CRC register (init all ones; the CRC is the register xor all ones).
    state: u64,
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher").finish_non_exhaustive()
    }
}

/// Inputs shorter than this go through the byte table.
const TABLE_STEP_MAX_LEN: usize = 16;

impl Hasher {
    pub fn new() -> Self {
        Hasher { state: u64::MAX }
    }
    pub fn update(&mut self, data: &[u8]) {
        if data.len() < TABLE_STEP_MAX_LEN {
            for &byte in data {
                self.state = GO_ISO_TABLE[((self.state ^ u64::from(byte)) & 0xff) as usize] ^ (self.state >> 8);
            }
        } else {
            let mut digest = Digest::new_with_init_state(CrcAlgorithm::Crc64GoIso, self.state);
            digest.update(data);
            // GO-ISO's xorout is all ones: the register is the CRC so far xor all ones.
            self.state = digest.finalize() ^ u64::MAX;
        }
    }
    /// The raw CRC of everything fed so far (no flag).
    pub fn finish_raw(&self) -> u64 {
        self.state ^ u64::MAX
    }
    /// The CRC of everything fed so far with [`CHECKSUM_FLAG`] set, as LTX stores it.
    pub fn finish_flagged(&self) -> u64 {
        CHECKSUM_FLAG | self.finish_raw()
    }
}

/// The checksum of one page: `FLAG | crc64(be_u32(pgno) ‖ page)`.
pub fn page_checksum(pgno: u32, page: &[u8]) -> u64 {
    // The 4-byte page number goes through the byte table (a SIMD call on 4 bytes costs more than
    // the page's), and the page continues from that register state.
    let mut state = u64::MAX;
    for byte in pgno.to_be_bytes() {
        state = GO_ISO_TABLE[((state ^ u64::from(byte)) & 0xff) as usize] ^ (state >> 8);
    }
    let mut digest = Digest::new_with_init_state(CrcAlgorithm::Crc64GoIso, state);
    digest.update(page);
    CHECKSUM_FLAG | digest.finalize()
}

/// Byte table of CRC-64/GO-ISO (reflected polynomial `0xD800_0000_0000_0000`), as Go's
/// `crc64.MakeTable(crc64.ISO)`.
const GO_ISO_TABLE: [u64; 256] = go_iso_table();

const fn go_iso_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xD800_0000_0000_0000 } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// SQLite's lock page for a page size: the page holding byte offset 2^30. It is never stored in
/// an LTX file and never counted in a database checksum.
pub fn lock_pgno(page_size: u32) -> u32 {
    debug_assert!(page_size.is_power_of_two());
    (0x4000_0000 / page_size) + 1
}

/// Incremental database checksum update when one page changes: `old ^ old_page ^ new_page`,
/// re-flagged. Pass [`CHECKSUM_FLAG`]-flagged page checksums; a page that did not exist before
/// (database grew) has `old_page = 0`, a page removed by truncation has `new_page = 0`.
pub fn update_db_checksum(db_checksum: u64, old_page_checksum: u64, new_page_checksum: u64) -> u64 {
    CHECKSUM_FLAG | (db_checksum ^ old_page_checksum ^ new_page_checksum)
}

/// An order-independent accumulator of page checksums into a database checksum:
/// `FLAG | XOR(page_checksum(p))` over every page except the lock page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbChecksum {
    xor: u64,
}

impl Default for DbChecksum {
    fn default() -> Self {
        Self::new()
    }
}

impl DbChecksum {
    pub const fn new() -> Self {
        DbChecksum { xor: 0 }
    }
    /// Adds (or, applied twice, removes) a page checksum.
    pub fn toggle(&mut self, page_checksum: u64) {
        self.xor ^= page_checksum;
    }
    pub fn value(&self) -> u64 {
        CHECKSUM_FLAG | self.xor
    }
}

/// The database checksum of a whole database image (`data.len()` a multiple of `page_size`).
/// The lock page is skipped whatever its content.
pub fn db_checksum(data: &[u8], page_size: u32) -> u64 {
    assert!(page_size.is_power_of_two());
    let page_size_bytes = page_size as usize;
    assert_eq!(
        data.len() % page_size_bytes,
        0,
        "database size is not a multiple of the page size"
    );
    let lock = lock_pgno(page_size);
    let mut sum = DbChecksum::new();
    for (index, page) in data.chunks_exact(page_size_bytes).enumerate() {
        let pgno = u32::try_from(index + 1).expect("page number overflows u32");
        if pgno != lock {
            sum.toggle(page_checksum(pgno, page));
        }
    }
    sum.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain table implementation of Go's crc64.ISO, to check the SIMD crate against.
    fn reference_crc(data: &[u8]) -> u64 {
        crc::Crc::<u64>::new(&crc::CRC_64_GO_ISO).checksum(data)
    }

    #[test]
    fn go_iso_check_value_matches_catalogue() {
        // The catalogue's check value for CRC-64/GO-ISO over "123456789".
        assert_eq!(crc64_go_iso(b"123456789"), 0xb909_56c7_75a4_1001);
        assert_eq!(reference_crc(b"123456789"), 0xb909_56c7_75a4_1001);
    }

    /// The table-stepped page number plus the SIMD page equals one CRC over both.
    #[test]
    fn page_checksum_equals_crc_of_pgno_and_page() {
        let data: Vec<u8> = (0..65_536u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        for pgno in [1u32, 2, 255, 256, 0x0102_0304, 0x8000_0000, u32::MAX] {
            for len in [0usize, 1, 512, 1024, 4096, 65_536] {
                let mut whole = pgno.to_be_bytes().to_vec();
                whole.extend_from_slice(&data[..len]);
                assert_eq!(
                    page_checksum(pgno, &data[..len]),
                    CHECKSUM_FLAG | reference_crc(&whole),
                    "pgno {pgno} len {len}"
                );
            }
        }
    }

    #[test]
    fn simd_crc_equals_table_crc_for_many_lengths() {
        let data: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [
            0usize, 1, 7, 8, 15, 16, 63, 64, 255, 256, 4095, 4096, 4100, 65_536, 70_000,
        ] {
            assert_eq!(
                crc64_go_iso(&data[..len]),
                reference_crc(&data[..len]),
                "len {len}"
            );
        }
    }

    /// Any split of the input into short (table) and long (SIMD) updates gives the one-shot CRC.
    #[test]
    fn streaming_hasher_equals_reference_for_any_chunking() {
        let data: Vec<u8> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8)
            .collect();
        for chunks in [
            &[4usize, 4096, 4, 4096, 4, 8][..],
            &[100, 1, 15, 16, 17, 3, 4096],
            &[0, 0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89],
            &[20_000],
        ] {
            let mut h = Hasher::new();
            let mut at = 0;
            for &len in chunks {
                h.update(&data[at..at + len]);
                at += len;
            }
            assert_eq!(h.finish_raw(), reference_crc(&data[..at]), "{chunks:?}");
        }
    }

    #[test]
    fn streaming_hasher_equals_one_shot() {
        let mut h = Hasher::new();
        h.update(b"1234");
        h.update(b"56789");
        assert_eq!(h.finish_raw(), crc64_go_iso(b"123456789"));
        assert_eq!(
            h.finish_flagged(),
            CHECKSUM_FLAG | crc64_go_iso(b"123456789")
        );
    }

    #[test]
    fn page_checksum_covers_pgno_and_has_flag() {
        let page = vec![7u8; 4096];
        let a = page_checksum(1, &page);
        let b = page_checksum(2, &page);
        assert_ne!(a, b);
        assert_eq!(a & CHECKSUM_FLAG, CHECKSUM_FLAG);
        let mut buf = 1u32.to_be_bytes().to_vec();
        buf.extend_from_slice(&page);
        assert_eq!(a, CHECKSUM_FLAG | reference_crc(&buf));
    }

    #[test]
    fn lock_page_numbers() {
        assert_eq!(lock_pgno(4096), 262_145);
        assert_eq!(lock_pgno(512), 2_097_153);
        assert_eq!(lock_pgno(65_536), 16_385);
    }

    #[test]
    fn empty_db_checksum_is_flag_only() {
        assert_eq!(db_checksum(&[], 4096), CHECKSUM_EMPTY);
    }

    #[test]
    fn incremental_update_equals_recompute() {
        let page_size = 512u32;
        let mut db = vec![0u8; 512 * 4];
        for (i, b) in db.iter_mut().enumerate() {
            *b = (i * 31 % 251) as u8;
        }
        let before = db_checksum(&db, page_size);
        let old = page_checksum(3, &db[1024..1536]);
        db[1024..1536].fill(0xAB);
        let new = page_checksum(3, &db[1024..1536]);
        assert_eq!(
            update_db_checksum(before, old, new),
            db_checksum(&db, page_size)
        );
        // Growth: a new page 5 contributes with old = 0.
        let grown_page = vec![0x11u8; 512];
        let after_growth = update_db_checksum(
            db_checksum(&db, page_size),
            0,
            page_checksum(5, &grown_page),
        );
        db.extend_from_slice(&grown_page);
        assert_eq!(after_growth, db_checksum(&db, page_size));
        // Truncation: removing page 5 contributes with new = 0.
        let truncated = update_db_checksum(after_growth, page_checksum(5, &grown_page), 0);
        db.truncate(512 * 4);
        assert_eq!(truncated, db_checksum(&db, page_size));
    }
}
