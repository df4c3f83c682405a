//! Streaming LTX encoder: header, pages, trailer, with every encoder rule of §1.2/§1.7 enforced.
//!
//! It decides only whether a page or trailer is allowed; it never buffers more than the LZ4
//! block it is filling, and does no I/O beyond the `Write` it is handed.

use super::checksum::{page_checksum, DbChecksum, Hasher, CHECKSUM_FLAG};
use super::{validate_post_apply, Header, LtxError, Trailer, HEADER_SIZE, PAGE_HEADER_SIZE, TRAILER_SIZE};
use lz4_flex::block::CompressTable;
use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
use std::io::Write;

/// The LZ4 frame options superfly/ltx v0.3.14 uses through pierrec/lz4 v4: 64 KiB independent
/// blocks, content checksum on, block checksums off, no content size. The frame descriptor bytes
/// are therefore `04 22 4d 18 64 40 <hc>`, the same as LiteFS writes.
pub(crate) fn lz4_frame_info() -> FrameInfo {
    FrameInfo::new()
        .block_size(BlockSize::Max64KB)
        .block_mode(BlockMode::Independent)
        .content_checksum(true)
        .block_checksums(false)
        .content_size(None)
}

/// Tracks the page-number rules of a page block (shared by encoder and decoder).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageRules {
    commit: u32,
    lock_pgno: u32,
    snapshot: bool,
    /// The last accepted page number; 0 before the first page.
    prev_pgno: u32,
}

impl PageRules {
    pub(crate) fn new(header: &Header) -> Self {
        PageRules {
            commit: header.commit,
            lock_pgno: header.lock_pgno(),
            snapshot: header.is_snapshot(),
            prev_pgno: 0,
        }
    }

    /// Accepts `pgno` as the next page or names the rule it breaks.
    pub(crate) fn accept(&mut self, pgno: u32) -> Result<(), LtxError> {
        if pgno == 0 {
            return Err(LtxError::PageNumberZero);
        }
        if pgno > self.commit {
            return Err(LtxError::PageOutOfBounds {
                pgno,
                commit: self.commit,
            });
        }
        if pgno == self.lock_pgno {
            return Err(LtxError::LockPage(pgno));
        }
        let prev = self.prev_pgno;
        if self.snapshot {
            if prev == 0 {
                if pgno != 1 {
                    return Err(LtxError::SnapshotStartNotOne(pgno));
                }
            } else {
                let step = if prev.checked_add(1) == Some(self.lock_pgno) {
                    2
                } else {
                    1
                };
                if prev.checked_add(step) != Some(pgno) {
                    return Err(LtxError::SnapshotNotSequential { prev, pgno });
                }
            }
        } else if prev >= pgno {
            return Err(LtxError::PagesOutOfOrder { prev, pgno });
        }
        self.prev_pgno = pgno;
        Ok(())
    }

    /// At the end of the page block: a snapshot must have reached its commit page.
    pub(crate) fn check_end(&self) -> Result<(), LtxError> {
        if !self.snapshot {
            return Ok(());
        }
        let expected_last = if self.commit == self.lock_pgno {
            self.commit - 1
        } else {
            self.commit
        };
        if self.prev_pgno != expected_last {
            return Err(LtxError::SnapshotIncomplete {
                last: self.prev_pgno,
                commit: self.commit,
            });
        }
        Ok(())
    }
}

enum Sink<W: Write> {
    Raw(W),
    Lz4(Box<FrameEncoder<W>>),
}

impl<W: Write> Sink<W> {
    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Raw(w) => w.write_all(b),
            Sink::Lz4(w) => w.write_all(b),
        }
    }
}

/// Writes one LTX file to `W`. Create with [`Encoder::new`], add pages in order with
/// [`Encoder::encode_page`], end with [`Encoder::finish`].
pub struct Encoder<W: Write> {
    sink: Sink<W>,
    header: Header,
    hasher: Hasher,
    rules: PageRules,
    /// Recomputed database checksum, kept for snapshots only.
    db_sum: DbChecksum,
    pages_written: u64,
    failed: bool,
}

impl<W: Write> std::fmt::Debug for Encoder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("header", &self.header)
            .field("pages_written", &self.pages_written)
            .finish_non_exhaustive()
    }
}

impl<W: Write> Encoder<W> {
    /// Validates `header` and writes it.
    pub fn new(mut w: W, header: Header) -> Result<Self, LtxError> {
        header.validate()?;
        let bytes: [u8; HEADER_SIZE] = header.to_bytes();
        w.write_all(&bytes)?;
        let sink = if header.is_compressed() {
            Sink::Lz4(Box::new(FrameEncoder::with_frame_info(lz4_frame_info(), w)))
        } else {
            Sink::Raw(w)
        };
        Ok(Self::started(sink, header, &bytes))
    }

    /// An encoder whose header (`header_bytes`) was written ahead of `sink`.
    fn started(sink: Sink<W>, header: Header, header_bytes: &[u8; HEADER_SIZE]) -> Self {
        let mut hasher = Hasher::new();
        hasher.update(header_bytes);
        Encoder {
            sink,
            header,
            hasher,
            rules: PageRules::new(&header),
            db_sum: DbChecksum::new(),
            pages_written: 0,
            failed: false,
        }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn pages_written(&self) -> u64 {
        self.pages_written
    }

    /// Adds one page. A page that breaks a rule is refused and the encoder stays usable; a write
    /// error makes it unusable.
    pub fn encode_page(&mut self, pgno: u32, data: &[u8]) -> Result<(), LtxError> {
        if self.failed {
            return Err(LtxError::EncoderFailed);
        }
        if data.len() != self.header.page_size as usize {
            return Err(LtxError::PageBufferSize {
                len: data.len(),
                page_size: self.header.page_size,
            });
        }
        let mut rules = self.rules;
        rules.accept(pgno)?;
        let pgno_bytes = pgno.to_be_bytes();
        if let Err(e) = self
            .sink
            .write_all(&pgno_bytes)
            .and_then(|()| self.sink.write_all(data))
        {
            self.failed = true;
            return Err(e.into());
        }
        self.rules = rules;
        self.hasher.update(&pgno_bytes);
        self.hasher.update(data);
        if self.header.is_snapshot() {
            self.db_sum.toggle(page_checksum(pgno, data));
        }
        self.pages_written += 1;
        Ok(())
    }

    /// Ends the page block and writes the trailer. Refuses a post-apply checksum the format
    /// forbids, an incomplete snapshot, and a snapshot whose pages do not sum to it.
    pub fn finish(self, post_apply_checksum: u64) -> Result<(W, Trailer), LtxError> {
        let (hasher, sink) = self.close_pages(post_apply_checksum)?;
        let w = match sink {
            Sink::Raw(w) => w,
            Sink::Lz4(enc) => enc.finish().map_err(|e| super::error::lz4_error(&e))?,
        };
        write_trailer(w, hasher, post_apply_checksum)
    }

    /// The checks of [`Encoder::finish`] and the page block's end marker; returns what is left
    /// to close: the file hasher and the sink.
    fn close_pages(self, post_apply_checksum: u64) -> Result<(Hasher, Sink<W>), LtxError> {
        if self.failed {
            return Err(LtxError::EncoderFailed);
        }
        check_close(&self.header, &self.rules, &self.db_sum, post_apply_checksum)?;
        let mut hasher = self.hasher;
        // The end marker: every file writes at least these 4 bytes into its page block, so an
        // LZ4 frame is always opened (a reused frame encoder relies on it, see [`EncodeScratch`]).
        let zero = [0u8; 4];
        hasher.update(&zero);
        let mut sink = self.sink;
        sink.write_all(&zero)?;
        Ok((hasher, sink))
    }
}

/// The checks that end a page block: a post-apply checksum the format allows, an empty one for
/// a deletion, a complete snapshot whose pages sum to it.
fn check_close(header: &Header, rules: &PageRules, db_sum: &DbChecksum, post_apply_checksum: u64) -> Result<(), LtxError> {
    validate_post_apply(post_apply_checksum)?;
    if header.commit == 0 && post_apply_checksum != CHECKSUM_FLAG {
        return Err(LtxError::DeletionPostApplyNotEmpty(post_apply_checksum));
    }
    rules.check_end()?;
    if header.is_snapshot() && db_sum.value() != post_apply_checksum {
        return Err(LtxError::SnapshotChecksumMismatch {
            stored: post_apply_checksum,
            computed: db_sum.value(),
        });
    }
    Ok(())
}

/// Writes the trailer after the page block.
fn write_trailer<W: Write>(mut w: W, mut hasher: Hasher, post_apply_checksum: u64) -> Result<(W, Trailer), LtxError> {
    hasher.update(&post_apply_checksum.to_be_bytes());
    let trailer = Trailer {
        post_apply_checksum,
        file_checksum: hasher.finish_flagged(),
    };
    w.write_all(&trailer.to_bytes())?;
    Ok((w, trailer))
}

/// State kept between in-memory encodes ([`encode_to_vec_with`]): the page block being
/// compressed, the LZ4 match table and output buffer, and for page blocks larger than one LZ4
/// block an lz4_flex frame encoder — allocated once instead of once per file.
///
/// The bytes are the same as a fresh encoder's. A page block of at most one 64 KiB block (every
/// commit of a few pages) is framed here around lz4_flex's block compressor with its 4K-entry
/// 32-bit match table, cleared before each block: the same compressor call, table and start
/// offset lz4_flex's `FrameEncoder` makes for the one block of a new frame, so the same block
/// bytes; the frame around it (descriptor, block size word or stored block when compression does
/// not shrink it, end mark, content xxHash32) is the one `FrameEncoder` writes. A larger page
/// block goes through the reused `FrameEncoder`, which starts every frame after the first by
/// clearing its match table and resetting stream offset, buffers and content hash (the state of
/// a new encoder); reusing it depends on every frame being non-empty, which the page block's
/// 4-byte end marker guarantees.
#[derive(Default)]
pub struct EncodeScratch {
    lz4: Option<Box<FrameEncoder<Vec<u8>>>>,
    /// The uncompressed page block of the file being encoded.
    page_block: Vec<u8>,
    table: Option<CompressTable>,
    /// Compressor output, as long as the largest block compressed so far can need.
    compressed: Vec<u8>,
}

impl std::fmt::Debug for EncodeScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodeScratch").field("lz4_ready", &self.lz4.is_some()).finish_non_exhaustive()
    }
}

impl Encoder<Vec<u8>> {
    /// [`Encoder::new`] into a new `Vec` with room for `capacity_bytes`, taking the LZ4 encoder
    /// from `scratch` if it has one.
    fn new_reusing(scratch: &mut EncodeScratch, header: Header, capacity_bytes: usize) -> Result<Self, LtxError> {
        header.validate()?;
        let bytes: [u8; HEADER_SIZE] = header.to_bytes();
        let mut w = Vec::with_capacity(capacity_bytes.max(HEADER_SIZE));
        w.extend_from_slice(&bytes);
        let sink = if header.is_compressed() {
            let mut enc = scratch
                .lz4
                .take()
                .unwrap_or_else(|| Box::new(FrameEncoder::with_frame_info(lz4_frame_info(), Vec::new())));
            *enc.get_mut() = w;
            Sink::Lz4(enc)
        } else {
            Sink::Raw(w)
        };
        Ok(Self::started(sink, header, &bytes))
    }

    /// [`Encoder::finish`], handing the LZ4 encoder back to `scratch` for the next file.
    fn finish_reusing(self, scratch: &mut EncodeScratch, post_apply_checksum: u64) -> Result<Vec<u8>, LtxError> {
        let (hasher, sink) = self.close_pages(post_apply_checksum)?;
        let w = match sink {
            Sink::Raw(w) => w,
            Sink::Lz4(mut enc) => {
                enc.try_finish().map_err(|e| super::error::lz4_error(&e))?;
                let w = std::mem::take(enc.get_mut());
                scratch.lz4 = Some(enc);
                w
            }
        };
        Ok(write_trailer(w, hasher, post_apply_checksum)?.0)
    }
}

/// Encodes a whole file into memory. Pages must obey the encoder rules (ascending; a snapshot
/// every page `1..=commit` but the lock page).
pub fn encode_to_vec<'a>(
    header: Header,
    pages: impl IntoIterator<Item = (u32, &'a [u8])>,
    post_apply_checksum: u64,
) -> Result<Vec<u8>, LtxError> {
    let mut enc = Encoder::new(Vec::new(), header)?;
    for (pgno, data) in pages {
        enc.encode_page(pgno, data)?;
    }
    Ok(enc.finish(post_apply_checksum)?.0)
}

/// Room for a file of `pages` pages stored as they are (what incompressible pages take, LZ4
/// framing included), at most 1 MiB: the output then grows at most a few times instead of
/// doubling its way up from nothing. Only a capacity; the bytes do not depend on it.
fn output_bytes_hint(header: &Header, pages: usize) -> usize {
    const HINT_BYTES_MAX: usize = 1 << 20;
    // LZ4 frame: descriptor (at most 19 bytes), a 4-byte size per 64 KiB block, end mark and
    // content checksum (4 bytes each).
    const LZ4_FRAMING_BYTES: usize = 19 + 4 + 4;
    let page_block = pages.saturating_add(1).saturating_mul(PAGE_HEADER_SIZE + header.page_size as usize);
    let framing = if header.is_compressed() { LZ4_FRAMING_BYTES + 4 * (page_block / 65_536 + 1) } else { 0 };
    (HEADER_SIZE + TRAILER_SIZE).saturating_add(page_block).saturating_add(framing).min(HINT_BYTES_MAX)
}

/// [`encode_to_vec`] reusing the LZ4 state in `scratch` (same bytes, fewer allocations): for a
/// caller that encodes many files one after another.
pub fn encode_to_vec_with<'a>(
    scratch: &mut EncodeScratch,
    header: Header,
    pages: impl IntoIterator<Item = (u32, &'a [u8])>,
    post_apply_checksum: u64,
) -> Result<Vec<u8>, LtxError> {
    let pages = pages.into_iter();
    let pages_hint = pages.size_hint().0;
    if !header.is_compressed() {
        let mut enc = Encoder::new_reusing(scratch, header, output_bytes_hint(&header, pages_hint))?;
        for (pgno, data) in pages {
            enc.encode_page(pgno, data)?;
        }
        return enc.finish_reusing(scratch, post_apply_checksum);
    }
    // The checks of `Encoder::new`, `encode_page` and `finish`, in their order.
    header.validate()?;
    let header_bytes: [u8; HEADER_SIZE] = header.to_bytes();
    let mut hasher = Hasher::new();
    hasher.update(&header_bytes);
    let mut rules = PageRules::new(&header);
    let mut db_sum = DbChecksum::new();
    // The page block is collected while it fits one LZ4 block with its end marker; past that the
    // pages stream through the frame encoder.
    let page_block = &mut scratch.page_block;
    page_block.clear();
    let mut streaming: Option<Box<FrameEncoder<Vec<u8>>>> = None;
    for (pgno, data) in pages {
        if data.len() != header.page_size as usize {
            return Err(LtxError::PageBufferSize { len: data.len(), page_size: header.page_size });
        }
        rules.accept(pgno)?;
        if header.is_snapshot() {
            db_sum.toggle(page_checksum(pgno, data));
        }
        let pgno_bytes = pgno.to_be_bytes();
        if streaming.is_none() && page_block.len() + PAGE_HEADER_SIZE + data.len() + PAGE_HEADER_SIZE > LZ4_BLOCK_BYTES {
            let mut enc = scratch
                .lz4
                .take()
                .unwrap_or_else(|| Box::new(FrameEncoder::with_frame_info(lz4_frame_info(), Vec::new())));
            let mut w = Vec::with_capacity(output_bytes_hint(&header, pages_hint));
            w.extend_from_slice(&header_bytes);
            *enc.get_mut() = w;
            enc.write_all(page_block)?;
            hasher.update(page_block);
            page_block.clear();
            streaming = Some(enc);
        }
        match streaming.as_mut() {
            Some(enc) => {
                enc.write_all(&pgno_bytes)?;
                enc.write_all(data)?;
                hasher.update(&pgno_bytes);
                hasher.update(data);
            }
            None => {
                page_block.extend_from_slice(&pgno_bytes);
                page_block.extend_from_slice(data);
            }
        }
    }
    check_close(&header, &rules, &db_sum, post_apply_checksum)?;
    let end_marker = [0u8; PAGE_HEADER_SIZE];
    let out = match streaming {
        None => {
            page_block.extend_from_slice(&end_marker);
            hasher.update(page_block);
            let table = scratch.table.get_or_insert_with(CompressTable::large);
            single_block_frame(table, &mut scratch.compressed, page_block, &header_bytes)?
        }
        Some(mut enc) => {
            enc.write_all(&end_marker)?;
            hasher.update(&end_marker);
            enc.try_finish().map_err(|e| super::error::lz4_error(&e))?;
            let w = std::mem::take(enc.get_mut());
            scratch.lz4 = Some(enc);
            w
        }
    };
    Ok(write_trailer(out, hasher, post_apply_checksum)?.0)
}

/// The block size of [`lz4_frame_info`].
const LZ4_BLOCK_BYTES: usize = 64 * 1024;

/// The frame descriptor [`lz4_frame_info`] makes lz4_flex write: magic, FLG (version 01,
/// independent blocks, content checksum), BD (64 KiB blocks), header checksum (second byte of
/// the xxHash32 of FLG and BD).
const LZ4_FRAME_DESCRIPTOR: [u8; 7] = [0x04, 0x22, 0x4d, 0x18, 0x64, 0x40, 0xa7];

/// `header_bytes` followed by `content` (at most one block) as one LZ4 frame, with room for the
/// trailer: what lz4_flex's `FrameEncoder` with [`lz4_frame_info`] writes for that content.
fn single_block_frame(
    table: &mut CompressTable,
    compressed: &mut Vec<u8>,
    content: &[u8],
    header_bytes: &[u8; HEADER_SIZE],
) -> Result<Vec<u8>, LtxError> {
    debug_assert!(content.len() <= LZ4_BLOCK_BYTES);
    let bound = lz4_flex::block::get_maximum_output_size(content.len());
    if compressed.len() < bound {
        compressed.resize(bound, 0);
    }
    let n = lz4_flex::block::compress_into_with_table(content, compressed, table)
        .map_err(|e| super::error::lz4_error(&lz4_flex::frame::Error::CompressionError(e)))?;
    // lz4_flex stores a block as it is unless compression made it shorter.
    let (block_info, block) = if n < content.len() {
        (n as u32, &compressed[..n])
    } else {
        (content.len() as u32 | 0x8000_0000, content)
    };
    let mut out = Vec::with_capacity(HEADER_SIZE + LZ4_FRAME_DESCRIPTOR.len() + 4 + block.len() + 8 + TRAILER_SIZE);
    out.extend_from_slice(header_bytes);
    out.extend_from_slice(&LZ4_FRAME_DESCRIPTOR);
    out.extend_from_slice(&block_info.to_le_bytes());
    out.extend_from_slice(block);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&twox_hash::XxHash32::oneshot(0, content).to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ltx::HEADER_FLAG_COMPRESS_LZ4;

    #[test]
    fn frame_descriptor_is_the_one_lz4_flex_writes() {
        let mut enc = FrameEncoder::with_frame_info(lz4_frame_info(), Vec::new());
        enc.write_all(b"x").unwrap();
        let frame = enc.finish().unwrap();
        assert_eq!(frame[..7], LZ4_FRAME_DESCRIPTOR);
        let hc = (twox_hash::XxHash32::oneshot(0, &LZ4_FRAME_DESCRIPTOR[4..6]) >> 8) as u8;
        assert_eq!(hc, LZ4_FRAME_DESCRIPTOR[6]);
    }

    /// The one-block frame path writes what lz4_flex's frame encoder writes (`encode_to_vec`),
    /// for page blocks on both sides of one LZ4 block, compressible or not, one after another
    /// through the same scratch; and refuses what the encoder refuses.
    #[test]
    fn reused_scratch_writes_what_a_fresh_frame_encoder_writes() {
        let mut scratch = EncodeScratch::default();
        let mut state = 0x1234_5678_u64;
        let mut next = move || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as u8
        };
        for page_size in [512u32, 1024, 4096] {
            let per_page = PAGE_HEADER_SIZE + page_size as usize;
            let fit = (LZ4_BLOCK_BYTES - PAGE_HEADER_SIZE) / per_page;
            for count in [1, 2, 3, fit - 1, fit, fit + 1, 2 * fit + 3] {
                for zeros in [0usize, 100, page_size as usize] {
                    let pages: Vec<(u32, Vec<u8>)> = (1..=count as u32)
                        .map(|pgno| (pgno * 2, (0..page_size as usize).map(|i| if i < zeros { 0 } else { next() }).collect()))
                        .collect();
                    let header = Header {
                        flags: HEADER_FLAG_COMPRESS_LZ4,
                        page_size,
                        commit: count as u32 * 2,
                        min_txid: 5,
                        max_txid: 5,
                        timestamp_ms: 9,
                        pre_apply_checksum: CHECKSUM_FLAG | 3,
                        ..Header::default()
                    };
                    let refs = || pages.iter().map(|(p, d)| (*p, d.as_slice()));
                    let fresh = encode_to_vec(header, refs(), CHECKSUM_FLAG | 11).unwrap();
                    let reused = encode_to_vec_with(&mut scratch, header, refs(), CHECKSUM_FLAG | 11).unwrap();
                    assert_eq!(reused, fresh, "page size {page_size}, {count} pages, {zeros} zeros");
                    let (_, decoded, _) = crate::ltx::decode_slice(&reused).unwrap();
                    assert_eq!(decoded, pages);
                    // Refused: pages out of order, a bad post-apply checksum.
                    let backwards = encode_to_vec_with(&mut scratch, header, refs().rev(), CHECKSUM_FLAG | 11);
                    assert_eq!(backwards.is_err(), count > 1);
                    assert_eq!(
                        encode_to_vec_with(&mut scratch, header, refs(), 11),
                        encode_to_vec(header, refs(), 11)
                    );
                }
            }
        }
    }
}
