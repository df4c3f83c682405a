//! Test helpers shared by the LTX integration tests: an independent, by-hand LTX builder that
//! uses the `crc` crate's table CRC (not the codec's SIMD one), so golden bytes do not depend on
//! the code under test.
#![allow(dead_code)]

use ltxfs_core::ltx::Header;

pub const FLAG: u64 = 1 << 63;

pub fn crc(data: &[u8]) -> u64 {
    crc::Crc::<u64>::new(&crc::CRC_64_GO_ISO).checksum(data)
}

pub fn page_chk(pgno: u32, page: &[u8]) -> u64 {
    let mut b = pgno.to_be_bytes().to_vec();
    b.extend_from_slice(page);
    FLAG | crc(&b)
}

/// The header's 100 bytes written field by field from the spec's offset table (§1.1).
pub fn header_bytes(h: &Header) -> Vec<u8> {
    let mut b = vec![0u8; 100];
    b[0..4].copy_from_slice(b"LTX1");
    b[4..8].copy_from_slice(&h.flags.to_be_bytes());
    b[8..12].copy_from_slice(&h.page_size.to_be_bytes());
    b[12..16].copy_from_slice(&h.commit.to_be_bytes());
    b[16..24].copy_from_slice(&h.min_txid.to_be_bytes());
    b[24..32].copy_from_slice(&h.max_txid.to_be_bytes());
    b[32..40].copy_from_slice(&h.timestamp_ms.to_be_bytes());
    b[40..48].copy_from_slice(&h.pre_apply_checksum.to_be_bytes());
    b[48..56].copy_from_slice(&h.wal_offset.to_be_bytes());
    b[56..64].copy_from_slice(&h.wal_size.to_be_bytes());
    b[64..68].copy_from_slice(&h.wal_salt1.to_be_bytes());
    b[68..72].copy_from_slice(&h.wal_salt2.to_be_bytes());
    b[72..80].copy_from_slice(&h.node_id.to_be_bytes());
    b
}

/// The uncompressed page block: `pgno ‖ page` frames and the zero terminator.
pub fn page_block(pages: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (pgno, data) in pages {
        b.extend_from_slice(&pgno.to_be_bytes());
        b.extend_from_slice(data);
    }
    b.extend_from_slice(&[0, 0, 0, 0]);
    b
}

/// A whole file built by hand. `frame` turns the plain page block into what is stored (identity
/// for uncompressed files, an LZ4 frame for compressed ones); the header is taken as given (any
/// flags, even invalid values), and the file checksum is computed over the plain bytes.
pub fn build_file(
    h: &Header,
    pages: &[(u32, Vec<u8>)],
    post_apply: u64,
    frame: impl Fn(&[u8]) -> Vec<u8>,
) -> Vec<u8> {
    let hb = header_bytes(h);
    let block = page_block(pages);
    let mut hashed = hb.clone();
    hashed.extend_from_slice(&block);
    hashed.extend_from_slice(&post_apply.to_be_bytes());
    let file_checksum = FLAG | crc(&hashed);
    let mut out = hb;
    out.extend_from_slice(&frame(&block));
    out.extend_from_slice(&post_apply.to_be_bytes());
    out.extend_from_slice(&file_checksum.to_be_bytes());
    out
}

pub fn raw(block: &[u8]) -> Vec<u8> {
    block.to_vec()
}

/// A deterministic page whose content depends on `pgno` and `seed`.
pub fn page(page_size: u32, pgno: u32, seed: u8) -> Vec<u8> {
    (0..page_size)
        .map(|i| (i.wrapping_mul(31) ^ pgno.wrapping_mul(7) ^ u32::from(seed)) as u8)
        .collect()
}

/// A snapshot header for TXID 1..=max_txid.
pub fn snapshot_header(page_size: u32, commit: u32) -> Header {
    Header {
        page_size,
        commit,
        min_txid: 1,
        max_txid: 1,
        timestamp_ms: 1_700_000_000_000,
        ..Header::default()
    }
}

/// The snapshot pages `1..=commit` and their database checksum.
pub fn snapshot_pages(page_size: u32, commit: u32, seed: u8) -> (Vec<(u32, Vec<u8>)>, u64) {
    let pages: Vec<(u32, Vec<u8>)> = (1..=commit)
        .map(|p| (p, page(page_size, p, seed)))
        .collect();
    let sum = pages.iter().fold(FLAG, |acc, (p, d)| acc ^ page_chk(*p, d)) | FLAG;
    (pages, sum)
}
