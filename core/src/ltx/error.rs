//! The one error type of the LTX codec: one variant per rule a file or a caller can break.
//!
//! Callers match on variants, never on message text. Nothing here decides anything; it only names
//! what went wrong.

use std::io;

/// Everything that can make an LTX file (or a request to write one) invalid.
///
/// The decoder-side rules follow `Header.Validate`, `Trailer.Validate` and `Decoder` of
/// superfly/ltx v0.3.14; the encoder-side rules follow its `Encoder`. Where this decoder is
/// stricter than the Go one (page order, bounds, lock page, snapshot completeness), it only rejects
/// files the Go encoder refuses to write.
#[non_exhaustive]
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum LtxError {
    // --- header (§1.1, §1.7) ---
    #[error("invalid LTX file: bad magic")]
    BadMagic,
    #[error("invalid header flags: {0:#010x}")]
    InvalidFlags(u32),
    #[error("invalid page size: {0}")]
    InvalidPageSize(u32),
    #[error("minimum transaction id required")]
    MinTxidZero,
    #[error("maximum transaction id required")]
    MaxTxidZero,
    #[error("transaction ids out of order: ({min_txid},{max_txid})")]
    TxidsOutOfOrder { min_txid: u64, max_txid: u64 },
    #[error("wal offset cannot be negative: {0}")]
    NegativeWalOffset(i64),
    #[error("wal size cannot be negative: {0}")]
    NegativeWalSize(i64),
    #[error("wal offset required if salt exists")]
    WalSaltWithoutOffset,
    #[error("wal size required if salt exists")]
    WalSaltWithoutSize,
    #[error("wal size required if wal offset exists")]
    WalOffsetWithoutSize,
    #[error("wal offset required if wal size exists")]
    WalSizeWithoutOffset,
    #[error("pre-apply checksum must be zero on snapshots")]
    SnapshotPreApplyChecksumNonZero,
    #[error("pre-apply checksum required on non-snapshot files")]
    PreApplyChecksumMissing,
    #[error("invalid pre-apply checksum format (bit 63 clear)")]
    PreApplyChecksumFormat,

    // --- page block (§1.2, §1.3) ---
    #[error("page number zero is not a page")]
    PageNumberZero,
    #[error("page number {pgno} out of bounds for commit size {commit}")]
    PageOutOfBounds { pgno: u32, commit: u32 },
    #[error("the lock page {0} is never stored")]
    LockPage(u32),
    #[error("snapshot must start with page 1, got {0}")]
    SnapshotStartNotOne(u32),
    #[error("nonsequential page numbers in snapshot: {prev},{pgno}")]
    SnapshotNotSequential { prev: u32, pgno: u32 },
    #[error("out-of-order page numbers: {prev},{pgno}")]
    PagesOutOfOrder { prev: u32, pgno: u32 },
    #[error("snapshot ends at page {last} but commit is {commit}")]
    SnapshotIncomplete { last: u32, commit: u32 },
    #[error("invalid page buffer size: {len}, expecting {page_size}")]
    PageBufferSize { len: usize, page_size: u32 },
    #[error("file ends early (short read)")]
    Truncated,
    #[error("lz4 frame does not end right after the zero page header")]
    Lz4FrameNotEnded,
    #[error("lz4 frame error: {0}")]
    Lz4(String),

    // --- trailer (§1.4, §1.5) ---
    #[error("post-apply checksum required")]
    PostApplyChecksumMissing,
    #[error("invalid post-apply checksum format (bit 63 clear)")]
    PostApplyChecksumFormat,
    #[error("file checksum required")]
    FileChecksumMissing,
    #[error("invalid file checksum format (bit 63 clear)")]
    FileChecksumFormat,
    #[error("file checksum mismatch: trailer {stored:016x}, computed {computed:016x}")]
    FileChecksumMismatch { stored: u64, computed: u64 },
    #[error(
        "post-apply checksum {stored:016x} does not match the pages' checksum {computed:016x}"
    )]
    SnapshotChecksumMismatch { stored: u64, computed: u64 },
    #[error("post-apply checksum must be 8000000000000000 for a deleted database, got {0:016x}")]
    DeletionPostApplyNotEmpty(u64),

    // --- state machine misuse ---
    #[error("the decoder already failed and cannot continue")]
    DecoderFailed,
    #[error("the encoder already failed and cannot continue")]
    EncoderFailed,
    #[error("finish called before the end of the page block")]
    PagesRemaining,

    // --- compaction (§1.8) ---
    #[error("at least one input file required")]
    NoInputs,
    #[error("input files have mismatched page sizes: {0} != {1}")]
    InputPageSizeMismatch(u32, u32),
    #[error("non-contiguous transaction ids in input files: max {prev_max_txid:016x} then min {next_min_txid:016x}")]
    NonContiguousInputs {
        prev_max_txid: u64,
        next_min_txid: u64,
    },

    // --- text forms (§1.9) ---
    #[error("invalid position text (want <16 hex>/<16 hex>)")]
    InvalidPosText,

    #[error("{0} bytes follow the trailer")]
    TrailingData(usize),

    #[error("i/o error: {0:?}")]
    Io(io::ErrorKind),
}

impl From<io::Error> for LtxError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return LtxError::Truncated;
        }
        if let Some(inner) = e.get_ref() {
            if let Some(lz) = inner.downcast_ref::<lz4_flex::frame::Error>() {
                return lz4_error(lz);
            }
        }
        LtxError::Io(e.kind())
    }
}

/// Maps an lz4_flex frame error (which may itself wrap an I/O error) to [`LtxError`].
pub(crate) fn lz4_error(e: &lz4_flex::frame::Error) -> LtxError {
    match e {
        lz4_flex::frame::Error::IoError(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
            LtxError::Truncated
        }
        lz4_flex::frame::Error::IoError(io) => LtxError::Io(io.kind()),
        other => LtxError::Lz4(other.to_string()),
    }
}
