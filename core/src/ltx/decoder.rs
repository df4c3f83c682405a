//! Streaming LTX decoder: validates header, pages and trailer of one file as it reads them.
//!
//! It decides only whether the bytes are a valid LTX v1 file. It holds the caller's page buffer
//! plus, for compressed files, one LZ4 block; it never reads past the trailer, so a file followed
//! by other bytes (a stream of files) leaves the reader right after the trailer.
//!
//! On top of superfly/ltx v0.3.14's decoder checks, it enforces the page rules its encoder
//! enforces (no page 0, none past commit, no lock page, ascending order, complete snapshots), so
//! it rejects only files the Go encoder can never have written.
//!
//! [`decode_slice`] reads a whole in-memory file in one pass when it is valid and its page block
//! is at most 1 MiB (one buffer for the decoded page block, no per-page staging copy), and
//! otherwise through the streaming decoder, which alone decides every error.

use super::checksum::{page_checksum, DbChecksum, Hasher, CHECKSUM_FLAG};
use super::encoder::PageRules;
use super::{Header, LtxError, Trailer, HEADER_SIZE, PAGE_HEADER_SIZE, TRAILER_SIZE};
use super::lz4frame::{self, FallbackReader, FrameReader, FrameStart};
use lz4_flex::frame::FrameDecoder;
use std::io::{self, Read};

enum Source<R: Read> {
    Raw(R),
    /// A frame with independent blocks, the kind LiteFS and we write.
    Lz4(Box<FrameReader<R>>),
    /// Any other LZ4 frame, read by lz4_flex's own frame reader.
    Lz4Other(Box<FrameDecoder<FallbackReader<R>>>),
    /// Only while switching from `Lz4` back to `Raw`, and after a failure there.
    Taken,
}

impl<R: Read> Source<R> {
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), LtxError> {
        match self {
            Source::Raw(r) => r.read_exact(buf)?,
            Source::Lz4(r) => r.read_exact(buf)?,
            Source::Lz4Other(r) => r.read_exact(buf)?,
            Source::Taken => return Err(LtxError::DecoderFailed),
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pages,
    /// The zero page header was read; the trailer comes next.
    Trailer,
    Failed,
}

/// Reads one LTX file from `R`, page by page.
pub struct Decoder<R: Read> {
    src: Source<R>,
    header: Header,
    hasher: Hasher,
    rules: PageRules,
    /// Recomputed database checksum, kept for snapshots only.
    db_sum: DbChecksum,
    pages_read: u64,
    state: State,
}

impl<R: Read> std::fmt::Debug for Decoder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("header", &self.header)
            .field("pages_read", &self.pages_read)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Decoder<R> {
    /// Reads and validates the header.
    pub fn new(mut r: R) -> Result<Self, LtxError> {
        let mut bytes = [0u8; HEADER_SIZE];
        r.read_exact(&mut bytes)?;
        let header = Header::from_bytes(&bytes)?;
        let mut hasher = Hasher::new();
        hasher.update(&bytes);
        let src = if header.is_compressed() {
            match lz4frame::start(r)? {
                FrameStart::Fast(frame) => Source::Lz4(frame),
                FrameStart::Other(read, r) => Source::Lz4Other(Box::new(FrameDecoder::new(
                    io::Cursor::new(read).chain(r),
                ))),
            }
        } else {
            Source::Raw(r)
        };
        Ok(Decoder {
            src,
            header,
            hasher,
            rules: PageRules::new(&header),
            db_sum: DbChecksum::new(),
            pages_read: 0,
            state: State::Pages,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Pages returned so far.
    pub fn pages_read(&self) -> u64 {
        self.pages_read
    }

    /// Reads the next page into buf (len == page_size); Ok(None) at the end of the page block.
    /// Any error but a wrong buffer size leaves the decoder failed.
    pub fn next_page(&mut self, buf: &mut [u8]) -> Result<Option<u32>, LtxError> {
        match self.state {
            State::Pages => {}
            State::Trailer => return Ok(None),
            State::Failed => return Err(LtxError::DecoderFailed),
        }
        if buf.len() != self.header.page_size as usize {
            return Err(LtxError::PageBufferSize {
                len: buf.len(),
                page_size: self.header.page_size,
            });
        }
        match self.read_page(buf) {
            Ok(page) => Ok(page),
            Err(e) => {
                self.state = State::Failed;
                Err(e)
            }
        }
    }

    fn read_page(&mut self, buf: &mut [u8]) -> Result<Option<u32>, LtxError> {
        let mut pgno_bytes = [0u8; PAGE_HEADER_SIZE];
        self.src.read_exact(&mut pgno_bytes)?;
        self.hasher.update(&pgno_bytes);
        let pgno = u32::from_be_bytes(pgno_bytes);
        if pgno == 0 {
            self.end_page_block()?;
            return Ok(None);
        }
        self.rules.accept(pgno)?;
        self.src.read_exact(buf)?;
        self.hasher.update(buf);
        if self.header.is_snapshot() {
            self.db_sum.toggle(page_checksum(pgno, buf));
        }
        self.pages_read += 1;
        Ok(Some(pgno))
    }

    /// After the zero page header: a compressed block must end its LZ4 frame right there (end
    /// mark and content checksum consumed, nothing more), then reading continues raw.
    fn end_page_block(&mut self) -> Result<(), LtxError> {
        match std::mem::replace(&mut self.src, Source::Taken) {
            Source::Raw(r) => self.src = Source::Raw(r),
            Source::Lz4(frame) => self.src = Source::Raw(frame.finish()?),
            Source::Lz4Other(mut frame) => {
                let mut one = [0u8; 1];
                // lz4_flex reads the end mark and verifies the content checksum on this call and
                // reports end of data; it reads nothing beyond the frame.
                match frame.read(&mut one) {
                    Ok(0) => {}
                    Ok(_) => return Err(LtxError::Lz4FrameNotEnded),
                    Err(e) => return Err(e.into()),
                }
                // The consumed descriptor bytes were read again by the frame reader first.
                let (_, r) = frame.into_inner().into_inner();
                self.src = Source::Raw(r);
            }
            Source::Taken => return Err(LtxError::DecoderFailed),
        }
        self.rules.check_end()?;
        self.state = State::Trailer;
        Ok(())
    }

    /// Reads the trailer; verifies the file checksum and, for snapshots, the recomputed DB checksum == post-apply.
    /// Pages not read yet are read (and verified) first.
    pub fn finish(self) -> Result<Trailer, LtxError> {
        Ok(self.finish_into_inner()?.0)
    }

    /// Like [`Decoder::finish`], and hands back the reader positioned right after the trailer.
    pub fn finish_into_inner(mut self) -> Result<(Trailer, R), LtxError> {
        if self.state == State::Pages {
            let mut scratch = vec![0u8; self.header.page_size as usize];
            // Bounded: every iteration consumes one page and pages are strictly ascending ≤ commit.
            while self.next_page(&mut scratch)?.is_some() {}
        }
        if self.state != State::Trailer {
            return Err(LtxError::DecoderFailed);
        }
        let Source::Raw(mut r) = self.src else {
            return Err(LtxError::DecoderFailed);
        };
        let mut bytes = [0u8; TRAILER_SIZE];
        r.read_exact(&mut bytes)?;
        let trailer = Trailer::from_bytes(&bytes);
        trailer.validate()?;
        self.hasher.update(&bytes[..8]);
        let computed = self.hasher.finish_flagged();
        if computed != trailer.file_checksum {
            return Err(LtxError::FileChecksumMismatch {
                stored: trailer.file_checksum,
                computed,
            });
        }
        if self.header.commit == 0 && trailer.post_apply_checksum != CHECKSUM_FLAG {
            return Err(LtxError::DeletionPostApplyNotEmpty(
                trailer.post_apply_checksum,
            ));
        }
        if self.header.is_snapshot() && self.db_sum.value() != trailer.post_apply_checksum {
            return Err(LtxError::SnapshotChecksumMismatch {
                stored: trailer.post_apply_checksum,
                computed: self.db_sum.value(),
            });
        }
        Ok((trailer, r))
    }
}

/// Fully decodes and verifies an in-memory file: header, pages in file order, trailer.
/// Bytes after the trailer are an error ([`LtxError::TrailingData`]).
#[allow(clippy::type_complexity)] // the signature other modules code against
pub fn decode_slice(bytes: &[u8]) -> Result<(Header, Vec<(u32, Vec<u8>)>, Trailer), LtxError> {
    decode_slice_with(&mut DecodeScratch::default(), bytes)
}

/// [`decode_slice`] with a decompression buffer kept across calls (same result): a node decodes
/// every replicated LTX, and a fresh buffer per file is an allocation and a first touch each.
#[allow(clippy::type_complexity)] // the signature other modules code against
pub fn decode_slice_with(scratch: &mut DecodeScratch, bytes: &[u8]) -> Result<(Header, Vec<(u32, Vec<u8>)>, Trailer), LtxError> {
    if let Some(decoded) = decode_slice_fast_with(&mut scratch.content, bytes) {
        return Ok(decoded);
    }
    decode_slice_streaming(bytes)
}

/// Buffers [`decode_slice_with`] reuses from one file to the next (speed only: results are the
/// same as with fresh ones).
#[derive(Debug, Default)]
pub struct DecodeScratch {
    /// The decompressed page block of the last compressed file.
    content: Vec<u8>,
}

/// Content of a compressed page block that [`decode_slice_fast`] decodes into one buffer; a
/// larger one goes through the streaming decoder (which holds one LZ4 block at a time).
const FAST_CONTENT_MAX_BYTES: usize = 1 << 20;

/// [`decode_slice`] of a valid file in one pass over the slice: the page block (decoded in one go
/// when compressed) is parsed in place, each page copied once into its own `Vec`, and the file
/// checksum taken over the page block in one call. `None` on anything else — any rule broken,
/// anything unusual in the LZ4 frame, a large page block — and the streaming decoder then reads
/// the same bytes and reports what it reports; so `Some` is exactly the streaming decoder's
/// result for a file it accepts. It checks every rule the streaming decoder checks.
#[allow(clippy::type_complexity)]
#[cfg(test)]
fn decode_slice_fast(bytes: &[u8]) -> Option<(Header, Vec<(u32, Vec<u8>)>, Trailer)> {
    decode_slice_fast_with(&mut Vec::new(), bytes)
}

/// [`decode_slice_fast`] decompressing into `content` (its room reused).
#[allow(clippy::type_complexity)]
fn decode_slice_fast_with(content: &mut Vec<u8>, bytes: &[u8]) -> Option<(Header, Vec<(u32, Vec<u8>)>, Trailer)> {
    let header_bytes: &[u8; HEADER_SIZE] = bytes.get(..HEADER_SIZE)?.try_into().ok()?;
    let header = Header::from_bytes(header_bytes).ok()?;
    let rest = &bytes[HEADER_SIZE..];
    let (block, trailer_at) = if header.is_compressed() {
        let frame_len = lz4frame::decode_frame_slice_into(rest, FAST_CONTENT_MAX_BYTES, content)?;
        (content.as_slice(), frame_len)
    } else {
        (rest, 0)
    };
    let page_size = header.page_size as usize;
    let mut rules = PageRules::new(&header);
    let mut db_sum = DbChecksum::new();
    let mut pages = Vec::with_capacity(block.len() / (PAGE_HEADER_SIZE + page_size));
    let mut at = 0usize;
    // Bounded: every iteration consumes a page header and a page of `block`, or ends.
    loop {
        let pgno_bytes: [u8; PAGE_HEADER_SIZE] = block.get(at..at + PAGE_HEADER_SIZE)?.try_into().ok()?;
        at += PAGE_HEADER_SIZE;
        let pgno = u32::from_be_bytes(pgno_bytes);
        if pgno == 0 {
            break;
        }
        rules.accept(pgno).ok()?;
        let page = block.get(at..at + page_size)?;
        at += page_size;
        if header.is_snapshot() {
            db_sum.toggle(page_checksum(pgno, page));
        }
        pages.push((pgno, page.to_vec()));
    }
    rules.check_end().ok()?;
    let page_block = &block[..at];
    let trailer_at = if header.is_compressed() {
        // The frame must end right after the zero page header.
        if at != block.len() {
            return None;
        }
        trailer_at
    } else {
        at
    };
    let trailer_bytes: &[u8; TRAILER_SIZE] = rest.get(trailer_at..)?.try_into().ok()?;
    let trailer = Trailer::from_bytes(trailer_bytes);
    trailer.validate().ok()?;
    let mut hasher = Hasher::new();
    hasher.update(header_bytes);
    hasher.update(page_block);
    hasher.update(&trailer_bytes[..8]);
    if hasher.finish_flagged() != trailer.file_checksum {
        return None;
    }
    if header.commit == 0 && trailer.post_apply_checksum != CHECKSUM_FLAG {
        return None;
    }
    if header.is_snapshot() && db_sum.value() != trailer.post_apply_checksum {
        return None;
    }
    Some((header, pages, trailer))
}

/// [`decode_slice`] through the streaming [`Decoder`].
#[allow(clippy::type_complexity)]
fn decode_slice_streaming(bytes: &[u8]) -> Result<(Header, Vec<(u32, Vec<u8>)>, Trailer), LtxError> {
    let mut dec = Decoder::new(bytes)?;
    let header = *dec.header();
    let mut pages = Vec::new();
    let mut buf = vec![0u8; header.page_size as usize];
    while let Some(pgno) = dec.next_page(&mut buf)? {
        pages.push((pgno, buf.clone()));
    }
    let (trailer, rest) = dec.finish_into_inner()?;
    if !rest.is_empty() {
        return Err(LtxError::TrailingData(rest.len()));
    }
    Ok((header, pages, trailer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ltx::checksum::page_checksum;
    use crate::ltx::{encode_to_vec, HEADER_FLAG_COMPRESS_LZ4};

    /// Valid files of every kind: compressed or not, snapshot or incremental, one page to
    /// several LZ4 blocks' worth, pages that compress and pages that do not.
    fn files() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for flags in [0, HEADER_FLAG_COMPRESS_LZ4] {
            for (page_size, pages) in [(512u32, 1u32), (512, 3), (4096, 40), (512, 300)] {
                let data = |pgno: u32| -> Vec<u8> {
                    let mut state = u64::from(pgno) * 0x9e37_79b9;
                    (0..page_size)
                        .map(|i| {
                            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                            if pgno % 2 == 0 && i > 64 { 0 } else { (state >> 56) as u8 }
                        })
                        .collect()
                };
                let lock = crate::ltx::checksum::lock_pgno(page_size);
                let all: Vec<(u32, Vec<u8>)> = (1..=pages).filter(|p| *p != lock).map(|p| (p, data(p))).collect();
                let sum = all.iter().fold(DbChecksum::new(), |mut s, (p, d)| {
                    s.toggle(page_checksum(*p, d));
                    s
                });
                let snapshot = Header { flags, page_size, commit: pages, min_txid: 1, max_txid: 1, timestamp_ms: 1, ..Header::default() };
                out.push(encode_to_vec(snapshot, all.iter().map(|(p, d)| (*p, d.as_slice())), sum.value()).unwrap());
                let incremental = Header { min_txid: 2, max_txid: 3, pre_apply_checksum: CHECKSUM_FLAG | 5, ..snapshot };
                let some: Vec<_> = all.iter().step_by(3).map(|(p, d)| (*p, d.as_slice())).collect();
                out.push(encode_to_vec(incremental, some, CHECKSUM_FLAG | 77).unwrap());
            }
        }
        out
    }

    /// The one-pass path gives the streaming decoder's result for every valid file, and for a
    /// damaged file either declines (the streaming decoder then reports the error) or agrees.
    #[test]
    fn fast_path_agrees_with_the_streaming_decoder() {
        let mut declined = 0;
        for file in files() {
            let streamed = decode_slice_streaming(&file).unwrap();
            assert_eq!(decode_slice_fast(&file), Some(streamed.clone()));
            assert_eq!(decode_slice(&file).unwrap(), streamed);
            let step = (file.len() / 200).max(1);
            for at in (0..file.len()).step_by(step) {
                for flip in [0x01u8, 0x80] {
                    let mut bad = file.clone();
                    bad[at] ^= flip;
                    match decode_slice_fast(&bad) {
                        Some(fast) => assert_eq!(Ok(fast), decode_slice_streaming(&bad), "byte {at} ^ {flip:#x}"),
                        None => declined += 1,
                    }
                }
            }
            for cut in [1, 4, 16, 17, file.len() / 2] {
                assert_eq!(decode_slice_fast(&file[..file.len() - cut]), None);
            }
            let mut longer = file.clone();
            longer.push(0);
            assert_eq!(decode_slice_fast(&longer), None);
            assert_eq!(decode_slice(&longer).unwrap_err(), LtxError::TrailingData(1));
        }
        assert!(declined > 1000, "damaged files are declined ({declined})");
    }

    /// One scratch reused across files — valid ones, damaged ones that fail part way through
    /// decompression, truncated ones — decodes each file as a fresh one does.
    #[test]
    fn a_reused_scratch_decodes_like_a_fresh_one() {
        let mut scratch = DecodeScratch::default();
        for file in files().iter().chain(files().iter().rev()) {
            let mut bad = file.clone();
            let middle = bad.len() / 2;
            bad[middle] ^= 0x10;
            for variant in [file.as_slice(), &bad, &file[..file.len() - 9], file.as_slice()] {
                assert_eq!(decode_slice_with(&mut scratch, variant), decode_slice(variant));
            }
        }
    }
}
