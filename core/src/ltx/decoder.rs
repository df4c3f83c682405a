//! Streaming LTX decoder: validates header, pages and trailer of one file as it reads them.
//!
//! It decides only whether the bytes are a valid LTX v1 file. It holds the caller's page buffer
//! plus, for compressed files, one LZ4 block; it never reads past the trailer, so a file followed
//! by other bytes (a stream of files) leaves the reader right after the trailer.
//!
//! On top of superfly/ltx v0.3.14's decoder checks, it enforces the page rules its encoder
//! enforces (no page 0, none past commit, no lock page, ascending order, complete snapshots), so
//! it rejects only files the Go encoder can never have written.

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
