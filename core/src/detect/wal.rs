//! SQLite WAL file format: header and frame parsing, and the cumulative frame checksum.
//!
//! Decides: whether WAL bytes form a valid header / a valid chain of frames (salts match the
//! header, each frame's cumulative checksum matches), and where transactions end (commit frames).
//! Never does: read files; callers hand it byte slices.

/// WAL header size in bytes.
pub const WAL_HEADER_SIZE: usize = 32;
/// Frame header size in bytes (followed by one page).
pub const WAL_FRAME_HEADER_SIZE: usize = 24;
/// Magic with the checksum words in little-endian order; `| 1` means big-endian.
pub const WAL_MAGIC_LE: u32 = 0x377f_0682;
pub const WAL_MAGIC_BE: u32 = 0x377f_0683;
/// The only WAL format version SQLite writes.
pub const WAL_VERSION: u32 = 3_007_000;

/// A parsed, checksum-verified WAL header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    pub big_endian_checksum: bool,
    pub page_size: u32,
    pub checkpoint_seq: u32,
    pub salt1: u32,
    pub salt2: u32,
    /// Cumulative checksum after the header: the seed for the first frame.
    pub checksum: (u32, u32),
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub pgno: u32,
    /// Database size in pages after this frame for a commit frame, 0 otherwise.
    pub commit: u32,
    pub salt1: u32,
    pub salt2: u32,
    pub checksum: (u32, u32),
}

/// Why a WAL header is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WalHeaderError {
    #[error("WAL header shorter than 32 bytes ({0})")]
    Short(usize),
    #[error("bad WAL magic {0:#x}")]
    BadMagic(u32),
    #[error("unsupported WAL version {0}")]
    BadVersion(u32),
    #[error("bad WAL page size {0}")]
    BadPageSize(u32),
    #[error("WAL header checksum mismatch")]
    BadChecksum,
}

pub(crate) fn be_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(word)
}

/// SQLite's `walChecksumBytes`: Fibonacci-weighted sum over 32-bit words, 8 bytes at a time.
/// `data.len()` must be a multiple of 8 (SQLite guarantees it: 24-byte header prefix, pages).
pub fn wal_checksum(big_endian: bool, data: &[u8], seed: (u32, u32)) -> (u32, u32) {
    debug_assert!(
        data.len() % 8 == 0,
        "WAL checksum input must be 8-byte aligned"
    );
    let (mut s1, mut s2) = seed;
    for chunk in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (be_u32(chunk, 0), be_u32(chunk, 4))
        } else {
            (
                u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
                u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]),
            )
        };
        s1 = s1.wrapping_add(x0).wrapping_add(s2);
        s2 = s2.wrapping_add(x1).wrapping_add(s1);
    }
    (s1, s2)
}

/// Parses and verifies the 32-byte WAL header.
pub fn parse_header(bytes: &[u8]) -> Result<WalHeader, WalHeaderError> {
    if bytes.len() < WAL_HEADER_SIZE {
        return Err(WalHeaderError::Short(bytes.len()));
    }
    let magic = be_u32(bytes, 0);
    if magic != WAL_MAGIC_LE && magic != WAL_MAGIC_BE {
        return Err(WalHeaderError::BadMagic(magic));
    }
    let version = be_u32(bytes, 4);
    if version != WAL_VERSION {
        return Err(WalHeaderError::BadVersion(version));
    }
    let page_size = be_u32(bytes, 8);
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(WalHeaderError::BadPageSize(page_size));
    }
    let big_endian_checksum = magic == WAL_MAGIC_BE;
    let checksum = wal_checksum(big_endian_checksum, &bytes[..24], (0, 0));
    if checksum != (be_u32(bytes, 24), be_u32(bytes, 28)) {
        return Err(WalHeaderError::BadChecksum);
    }
    Ok(WalHeader {
        big_endian_checksum,
        page_size,
        checkpoint_seq: be_u32(bytes, 12),
        salt1: be_u32(bytes, 16),
        salt2: be_u32(bytes, 20),
        checksum,
    })
}

/// Parses a 24-byte frame header (no validation).
pub fn parse_frame_header(bytes: &[u8]) -> FrameHeader {
    FrameHeader {
        pgno: be_u32(bytes, 0),
        commit: be_u32(bytes, 4),
        salt1: be_u32(bytes, 8),
        salt2: be_u32(bytes, 12),
        checksum: (be_u32(bytes, 16), be_u32(bytes, 20)),
    }
}

/// Verifies one frame (`24 + page_size` bytes) against the header's salts and the running
/// checksum `seed`; returns the frame header and the new running checksum, or `None` when the
/// frame is not part of the valid chain (stale, torn or from an older WAL generation).
pub fn verify_frame(
    header: &WalHeader,
    frame: &[u8],
    seed: (u32, u32),
) -> Option<(FrameHeader, (u32, u32))> {
    if frame.len() != WAL_FRAME_HEADER_SIZE + header.page_size as usize {
        return None;
    }
    let frame_header = parse_frame_header(frame);
    if frame_header.salt1 != header.salt1 || frame_header.salt2 != header.salt2 {
        return None;
    }
    if frame_header.pgno == 0 {
        return None;
    }
    let checksum = wal_checksum(header.big_endian_checksum, &frame[..8], seed);
    let checksum = wal_checksum(
        header.big_endian_checksum,
        &frame[WAL_FRAME_HEADER_SIZE..],
        checksum,
    );
    if checksum != frame_header.checksum {
        return None;
    }
    Some((frame_header, checksum))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a valid WAL (header + frames) the way SQLite does; used by detector tests too.
    pub(crate) fn build_wal(
        page_size: u32,
        salts: (u32, u32),
        frames: &[(u32, u32, u8)],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&WAL_MAGIC_LE.to_be_bytes());
        out.extend_from_slice(&WAL_VERSION.to_be_bytes());
        out.extend_from_slice(&page_size.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&salts.0.to_be_bytes());
        out.extend_from_slice(&salts.1.to_be_bytes());
        let mut checksum = wal_checksum(false, &out, (0, 0));
        out.extend_from_slice(&checksum.0.to_be_bytes());
        out.extend_from_slice(&checksum.1.to_be_bytes());
        for &(pgno, commit, fill) in frames {
            let mut frame = Vec::new();
            frame.extend_from_slice(&pgno.to_be_bytes());
            frame.extend_from_slice(&commit.to_be_bytes());
            frame.extend_from_slice(&salts.0.to_be_bytes());
            frame.extend_from_slice(&salts.1.to_be_bytes());
            let page = vec![fill; page_size as usize];
            checksum = wal_checksum(false, &frame[..8], checksum);
            checksum = wal_checksum(false, &page, checksum);
            frame.extend_from_slice(&checksum.0.to_be_bytes());
            frame.extend_from_slice(&checksum.1.to_be_bytes());
            frame.extend_from_slice(&page);
            out.extend_from_slice(&frame);
        }
        out
    }

    #[test]
    fn header_round_trip_and_rejections() {
        let wal = build_wal(512, (7, 9), &[]);
        let header = parse_header(&wal).unwrap();
        assert_eq!((header.page_size, header.salt1, header.salt2), (512, 7, 9));
        let mut bad = wal.clone();
        bad[0] = 0;
        assert!(matches!(
            parse_header(&bad),
            Err(WalHeaderError::BadMagic(_))
        ));
        let mut bad = wal.clone();
        bad[17] ^= 1;
        assert_eq!(parse_header(&bad), Err(WalHeaderError::BadChecksum));
        assert_eq!(parse_header(&wal[..31]), Err(WalHeaderError::Short(31)));
    }

    #[test]
    fn frames_chain_and_detect_corruption() {
        let wal = build_wal(512, (1, 2), &[(1, 0, 0xaa), (2, 2, 0xbb)]);
        let header = parse_header(&wal).unwrap();
        let frame_len = 24 + 512;
        let (first, seed) =
            verify_frame(&header, &wal[32..32 + frame_len], header.checksum).unwrap();
        assert_eq!((first.pgno, first.commit), (1, 0));
        let (second, _) = verify_frame(&header, &wal[32 + frame_len..], seed).unwrap();
        assert_eq!((second.pgno, second.commit), (2, 2));
        // Out of order (wrong seed) fails.
        assert!(verify_frame(&header, &wal[32 + frame_len..], header.checksum).is_none());
        let mut torn = wal.clone();
        torn[32 + frame_len + 100] ^= 0xff;
        assert!(verify_frame(&header, &torn[32 + frame_len..], seed).is_none());
    }
}
