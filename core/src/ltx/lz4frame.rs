//! Reading the LZ4 frame of a compressed page block without a fixed 64 KiB buffer per frame.
//!
//! It decides only how the bytes of one LZ4 frame turn back into the page block, and whether the
//! frame is intact: header checksum, block sizes, block checksums, content size and content
//! checksum (xxHash32), exactly the checks of lz4_flex's `FrameDecoder`. Blocks are decoded with
//! lz4_flex's block API into a buffer sized to the block's decoded length, found by walking the
//! block's sequence headers first; so a small commit costs a few KiB, not a zero-filled 64 KiB
//! block per frame (lz4_flex's `FrameDecoder` allocates and clears one for every frame it reads).
//!
//! It never handles frames it does not fully understand: linked blocks, dictionary ids, legacy
//! or skippable magics, unknown versions, reserved bits and bad header checksums go to
//! `FrameDecoder` (see [`FrameStart`]), which then reads the same bytes and reports what it
//! reports. It never reads past the frame's end mark and content checksum.

use super::error::lz4_error;
use super::LtxError;
use lz4_flex::frame::Error as FrameError;
use std::io::{self, Read};
use twox_hash::XxHash32;

const MAGIC: u32 = 0x184D_2204;
const FLG_VERSION_MASK: u8 = 0b1100_0000;
const FLG_VERSION_01: u8 = 0b0100_0000;
const FLG_INDEPENDENT_BLOCKS: u8 = 0b0010_0000;
const FLG_BLOCK_CHECKSUMS: u8 = 0b0001_0000;
const FLG_CONTENT_SIZE: u8 = 0b0000_1000;
const FLG_CONTENT_CHECKSUM: u8 = 0b0000_0100;
const FLG_RESERVED: u8 = 0b0000_0010;
const FLG_DICTIONARY_ID: u8 = 0b0000_0001;
const BD_BLOCK_SIZE_MASK: u8 = 0b0111_0000;
const BLOCK_UNCOMPRESSED_BIT: u32 = 0x8000_0000;
/// Magic, FLG, BD, 8-byte content size, header checksum (dictionary ids are not handled here).
const MAX_DESCRIPTOR_SIZE: usize = 4 + 2 + 8 + 1;

/// What the first bytes of a frame turned out to be.
pub(crate) enum FrameStart<R: Read> {
    /// A frame this reader decodes itself.
    Fast(Box<FrameReader<R>>),
    /// Anything else: the bytes already consumed (to be read again, before `R`, by lz4_flex's
    /// `FrameDecoder`) and the reader.
    Other(Vec<u8>, R),
}

/// One LZ4 frame with independent blocks, read block by block from `R`.
pub(crate) struct FrameReader<R: Read> {
    r: R,
    /// Largest decoded (and stored) block the frame descriptor allows.
    block_max: usize,
    block_checksums: bool,
    content_checksum: bool,
    content_size: Option<u64>,
    content_len: u64,
    hasher: XxHash32,
    /// Stored bytes of the current compressed block.
    stored: Vec<u8>,
    /// Decoded bytes of the current block; `pos..len` not handed out yet.
    block: Vec<u8>,
    pos: usize,
    /// The end mark (and content checksum) was read and verified.
    ended: bool,
}

/// The block size code of a descriptor this reader decodes itself (version 01, independent
/// blocks, no dictionary, no reserved bits, 64 KiB..4 MiB blocks); `None` for anything else.
fn understood_block_size_code(flg: u8, bd: u8) -> Option<u8> {
    let block_size_code = (bd & BD_BLOCK_SIZE_MASK) >> 4;
    let understood = flg & FLG_VERSION_MASK == FLG_VERSION_01
        && flg & FLG_INDEPENDENT_BLOCKS != 0
        && flg & (FLG_RESERVED | FLG_DICTIONARY_ID) == 0
        && bd & !BD_BLOCK_SIZE_MASK == 0
        && (4..=7).contains(&block_size_code);
    understood.then_some(block_size_code)
}

/// A whole frame descriptor (magic included): `None` if its header checksum byte (the last,
/// covering FLG up to the byte before it) is wrong, else its content size field.
fn checked_content_size(flg: u8, descriptor: &[u8]) -> Option<Option<u64>> {
    let (checksum, covered) = descriptor.split_last()?;
    if (XxHash32::oneshot(0, covered.get(4..)?) >> 8) as u8 != *checksum {
        return None;
    }
    if flg & FLG_CONTENT_SIZE == 0 {
        return Some(None);
    }
    let size: [u8; 8] = descriptor.get(6..14)?.try_into().ok()?;
    Some(Some(u64::from_le_bytes(size)))
}

/// Reads a frame descriptor from `r`. Errors are truncation or I/O errors of `r` only.
pub(crate) fn start<R: Read>(mut r: R) -> Result<FrameStart<R>, LtxError> {
    let mut d = [0u8; MAX_DESCRIPTOR_SIZE];
    r.read_exact(&mut d[..4])?;
    if u32::from_le_bytes([d[0], d[1], d[2], d[3]]) != MAGIC {
        return Ok(FrameStart::Other(d[..4].to_vec(), r));
    }
    r.read_exact(&mut d[4..7])?;
    let (flg, bd) = (d[4], d[5]);
    let Some(block_size_code) = understood_block_size_code(flg, bd) else {
        return Ok(FrameStart::Other(d[..7].to_vec(), r));
    };
    let mut n = 7;
    if flg & FLG_CONTENT_SIZE != 0 {
        r.read_exact(&mut d[7..15])?;
        n = 15;
    }
    let Some(content_size) = checked_content_size(flg, &d[..n]) else {
        return Ok(FrameStart::Other(d[..n].to_vec(), r));
    };
    Ok(FrameStart::Fast(Box::new(FrameReader {
        r,
        // 64 KiB, 256 KiB, 1 MiB, 4 MiB.
        block_max: 1usize << (8 + 2 * usize::from(block_size_code)),
        block_checksums: flg & FLG_BLOCK_CHECKSUMS != 0,
        content_checksum: flg & FLG_CONTENT_CHECKSUM != 0,
        content_size,
        content_len: 0,
        hasher: XxHash32::with_seed(0),
        stored: Vec::new(),
        block: Vec::new(),
        pos: 0,
        ended: false,
    })))
}

fn frame_error(e: FrameError) -> LtxError {
    lz4_error(&e)
}

impl<R: Read> FrameReader<R> {
    /// Fills `buf` with the next decoded bytes. The frame ending first is [`LtxError::Truncated`]
    /// (as a short read of the page block is).
    pub(crate) fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<(), LtxError> {
        // Bounded: every iteration copies at least one byte or reads one block from `r`.
        while !buf.is_empty() {
            if self.pos == self.block.len() {
                if self.ended || !self.next_block()? {
                    return Err(LtxError::Truncated);
                }
                continue;
            }
            let n = buf.len().min(self.block.len() - self.pos);
            buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
            self.pos += n;
            buf = &mut buf[n..];
        }
        Ok(())
    }

    /// After the last byte of the page block: the frame must end right here. Gives back `R`,
    /// positioned right after the frame.
    pub(crate) fn finish(mut self) -> Result<R, LtxError> {
        // Bounded: each call reads one block from `r` or ends the frame.
        while self.pos == self.block.len() && !self.ended {
            self.next_block()?;
        }
        if self.pos != self.block.len() {
            return Err(LtxError::Lz4FrameNotEnded);
        }
        Ok(self.r)
    }

    /// Reads one block into `self.block` (possibly empty) or the end mark; false at the end mark.
    fn next_block(&mut self) -> Result<bool, LtxError> {
        let mut info = [0u8; 4];
        self.r.read_exact(&mut info)?;
        let info = u32::from_le_bytes(info);
        self.pos = 0;
        self.block.clear();
        if info == 0 {
            return self.end_mark().map(|()| false);
        }
        let len = (info & !BLOCK_UNCOMPRESSED_BIT) as usize;
        if len > self.block_max {
            return Err(frame_error(FrameError::BlockTooBig));
        }
        if info & BLOCK_UNCOMPRESSED_BIT != 0 {
            self.block.resize(len, 0);
            self.r.read_exact(&mut self.block)?;
            self.check_block_checksum(true)?;
        } else {
            self.stored.clear();
            self.stored.resize(len, 0);
            self.r.read_exact(&mut self.stored)?;
            self.check_block_checksum(false)?;
            let decoded_len = decoded_len(&self.stored, self.block_max);
            self.block.resize(decoded_len, 0);
            let n = lz4_flex::block::decompress_into(&self.stored, &mut self.block)
                .map_err(|e| frame_error(FrameError::DecompressionError(e)))?;
            self.block.truncate(n);
        }
        self.content_len += self.block.len() as u64;
        if self.content_checksum {
            std::hash::Hasher::write(&mut self.hasher, &self.block);
        }
        Ok(true)
    }

    fn check_block_checksum(&mut self, uncompressed: bool) -> Result<(), LtxError> {
        if !self.block_checksums {
            return Ok(());
        }
        let mut b = [0u8; 4];
        self.r.read_exact(&mut b)?;
        let data = if uncompressed { &self.block } else { &self.stored };
        if XxHash32::oneshot(0, data) != u32::from_le_bytes(b) {
            return Err(frame_error(FrameError::BlockChecksumError));
        }
        Ok(())
    }

    fn end_mark(&mut self) -> Result<(), LtxError> {
        if let Some(expected) = self.content_size {
            if self.content_len != expected {
                return Err(frame_error(FrameError::ContentLengthError {
                    expected,
                    actual: self.content_len,
                }));
            }
        }
        if self.content_checksum {
            let mut b = [0u8; 4];
            self.r.read_exact(&mut b)?;
            if self.hasher.finish_32() != u32::from_le_bytes(b) {
                return Err(frame_error(FrameError::ContentChecksumError));
            }
        }
        self.ended = true;
        Ok(())
    }
}

/// The whole content of the LZ4 frame at the start of `bytes`, decoded in one pass straight from
/// the slice (no copy of the stored blocks, one output buffer); returns the frame's length in
/// `bytes`. `None` for anything [`start`] would hand to `FrameDecoder`, for any damage the
/// streaming [`FrameReader`] reports (block size, block or content checksum, content size, a
/// block that does not decode, the slice ending early), and for content beyond
/// `content_max_bytes`: the caller then reads the bytes with the streaming reader, which reports
/// exactly what it always reports. `Some` only for a frame the streaming reader reads whole to the
/// same bytes without an error.
/// The content goes into `content` (cleared first; its room is reused from one frame to the
/// next); after `None` it holds nothing meaningful.
pub(crate) fn decode_frame_slice_into(bytes: &[u8], content_max_bytes: usize, content: &mut Vec<u8>) -> Option<usize> {
    content.clear();
    let at = |from: usize, n: usize| bytes.get(from..from.checked_add(n)?);
    let u32_at = |from: usize| at(from, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if u32_at(0)? != MAGIC {
        return None;
    }
    let (flg, bd) = (*bytes.get(4)?, *bytes.get(5)?);
    let block_size_code = understood_block_size_code(flg, bd)?;
    let descriptor_len = if flg & FLG_CONTENT_SIZE != 0 { 15 } else { 7 };
    let content_size = checked_content_size(flg, at(0, descriptor_len)?)?;
    let block_max = 1usize << (8 + 2 * usize::from(block_size_code));
    let block_checksums = flg & FLG_BLOCK_CHECKSUMS != 0;
    let mut i = descriptor_len;
    // Bounded: every iteration consumes at least the 4-byte block size of `bytes`.
    loop {
        let info = u32_at(i)?;
        i += 4;
        if info == 0 {
            break;
        }
        let len = (info & !BLOCK_UNCOMPRESSED_BIT) as usize;
        if len > block_max {
            return None;
        }
        let stored = at(i, len)?;
        i += len;
        if block_checksums {
            if XxHash32::oneshot(0, stored) != u32_at(i)? {
                return None;
            }
            i += 4;
        }
        let old_len = content.len();
        if info & BLOCK_UNCOMPRESSED_BIT != 0 {
            if old_len + len > content_max_bytes {
                return None;
            }
            content.extend_from_slice(stored);
        } else {
            let decoded = decoded_len(stored, block_max);
            if old_len + decoded > content_max_bytes {
                return None;
            }
            content.resize(old_len + decoded, 0);
            let n = lz4_flex::block::decompress_into(stored, &mut content[old_len..]).ok()?;
            content.truncate(old_len + n);
        }
    }
    if content_size.is_some_and(|expected| expected != content.len() as u64) {
        return None;
    }
    if flg & FLG_CONTENT_CHECKSUM != 0 {
        if XxHash32::oneshot(0, content) != u32_at(i)? {
            return None;
        }
        i += 4;
    }
    Some(i)
}

/// The decoded length of one LZ4 block, from its sequence headers alone (token, literal length,
/// literals skipped, offset, match length), or `max` when the block is malformed or decodes to
/// more than `max` — then the block decoder gets the largest buffer allowed and reports what is
/// wrong. Never reads out of `block`.
pub(crate) fn decoded_len(block: &[u8], max: usize) -> usize {
    /// Adds LZ4's 255-continued length bytes at `*i` to `len`; None if the block ends first.
    fn extend(block: &[u8], i: &mut usize, mut len: usize) -> Option<usize> {
        // Bounded: every iteration consumes one byte of `block`.
        loop {
            let b = *block.get(*i)?;
            *i += 1;
            len = len.checked_add(usize::from(b))?;
            if b != 255 {
                return Some(len);
            }
        }
    }
    let mut i = 0usize;
    let mut out = 0usize;
    // Bounded: every iteration consumes at least the token byte.
    loop {
        let Some(&token) = block.get(i) else {
            return max;
        };
        i += 1;
        let mut literals = usize::from(token >> 4);
        if literals == 15 {
            let Some(l) = extend(block, &mut i, literals) else {
                return max;
            };
            literals = l;
        }
        let Some(after) = i.checked_add(literals) else {
            return max;
        };
        i = after;
        out = out.saturating_add(literals);
        if i >= block.len() {
            // The last sequence is literals only and ends the block exactly.
            return if i == block.len() && out <= max { out } else { max };
        }
        i += 2; // match offset
        let mut matched = usize::from(token & 15);
        if matched == 15 {
            let Some(m) = extend(block, &mut i, matched) else {
                return max;
            };
            matched = m;
        }
        out = out.saturating_add(matched + 4);
        if out > max {
            return max;
        }
    }
}

/// lz4_flex's `FrameDecoder` over the bytes [`start`] consumed followed by the rest of `R`.
pub(crate) type FallbackReader<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_len_matches_the_block_decoder() {
        let mut data = Vec::new();
        for i in 0..70_000u32 {
            data.push((i % 251) as u8 ^ if i % 1000 < 300 { 0 } else { (i / 7) as u8 });
        }
        for len in [0, 1, 5, 15, 16, 300, 4096, 65_536] {
            let block = lz4_flex::block::compress(&data[..len]);
            assert_eq!(decoded_len(&block, 65_536), len, "len {len}");
        }
        // Malformed or too long: the maximum.
        assert_eq!(decoded_len(&[], 100), 100);
        assert_eq!(decoded_len(&[0xf0], 100), 100);
        let big = lz4_flex::block::compress(&[7u8; 1000]);
        assert_eq!(decoded_len(&big, 999), 999);
        assert_eq!(decoded_len(&big, 1000), 1000);
    }
}
