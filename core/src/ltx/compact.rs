//! Compaction (§1.8): merges a contiguous run of LTX files into one, streaming.
//!
//! It decides only which version of each page survives (the newest input's) and which pages are
//! dropped (those past the final commit). It holds one page per input, never the whole page set.

use super::{Decoder, Encoder, Header, LtxError, Pos, Trailer};
use std::io::{Read, Write};

/// Merges `inputs` (fresh decoders, header read, no page read yet; oldest first, contiguous:
/// each `min_txid` is the previous `max_txid + 1`) into one file written to `out` with `flags`.
///
/// The output takes page size, min TXID and pre-apply checksum from the first input; commit, max
/// TXID, timestamp and post-apply checksum from the last; WAL fields and node ID are zero. Every
/// input is fully verified (file checksum, snapshot checksum) before the output is finished.
pub fn compact<R: Read, W: Write>(
    inputs: Vec<Decoder<R>>,
    out: W,
    flags: u32,
) -> Result<(W, Header, Trailer), LtxError> {
    compact_inner(inputs, out, flags, None, false)
}

/// [`compact`] for LTX files made from consecutive commits of one WAL: if every input names a
/// WAL range, all with the same salts, each starting where the previous one ends, the output
/// names their union (offset of the first, total size, the salts) — what start-up recovery needs
/// to find the commits that follow in the WAL. Otherwise the WAL fields are zero, as in
/// [`compact`].
pub fn compact_wal_run<R: Read, W: Write>(
    inputs: Vec<Decoder<R>>,
    out: W,
    flags: u32,
) -> Result<(W, Header, Trailer), LtxError> {
    compact_inner(inputs, out, flags, None, true)
}

/// [`compact`] for a reader at `start`, a position inside the first input (after one of the
/// transactions it merged: `first.min_txid <= start.txid < first.max_txid`): the output's min
/// TXID is `start.txid + 1` and its pre-apply checksum `start.checksum`. Its pages are those of
/// the whole run — a superset of what changed after `start`; the extra pages hold, at the end,
/// the content they had at `start` (no later transaction of the run changed them), so applying
/// the output to the database at `start` brings it exactly to the run's end.
pub fn compact_from<R: Read, W: Write>(
    inputs: Vec<Decoder<R>>,
    out: W,
    flags: u32,
    start: Pos,
) -> Result<(W, Header, Trailer), LtxError> {
    compact_inner(inputs, out, flags, Some(start), false)
}

fn compact_inner<R: Read, W: Write>(
    mut inputs: Vec<Decoder<R>>,
    out: W,
    flags: u32,
    start: Option<Pos>,
    wal_range: bool,
) -> Result<(W, Header, Trailer), LtxError> {
    let headers: Vec<Header> = inputs.iter().map(|d| *d.header()).collect();
    let (Some(first), Some(last)) = (headers.first(), headers.last()) else {
        return Err(LtxError::NoInputs);
    };
    for pair in headers.windows(2) {
        if pair[0].page_size != pair[1].page_size {
            return Err(LtxError::InputPageSizeMismatch(
                pair[0].page_size,
                pair[1].page_size,
            ));
        }
        if pair[0].max_txid.checked_add(1) != Some(pair[1].min_txid) {
            return Err(LtxError::NonContiguousInputs {
                prev_max_txid: pair[0].max_txid,
                next_min_txid: pair[1].min_txid,
            });
        }
    }
    let (min_txid, pre_apply_checksum) = match start {
        None => (first.min_txid, first.pre_apply_checksum),
        Some(s) if s.txid >= first.min_txid && s.txid < first.max_txid => (s.txid + 1, s.checksum),
        Some(s) => return Err(LtxError::NonContiguousInputs { prev_max_txid: s.txid, next_min_txid: first.min_txid }),
    };
    let mut header = Header {
        flags,
        page_size: first.page_size,
        commit: last.commit,
        min_txid,
        max_txid: last.max_txid,
        timestamp_ms: last.timestamp_ms,
        pre_apply_checksum,
        ..Header::default()
    };
    let one_wal_run = headers.iter().all(|h| h.wal_offset > 0 && h.wal_size > 0 && (h.wal_salt1, h.wal_salt2) == (first.wal_salt1, first.wal_salt2))
        && headers.windows(2).all(|w| w[0].wal_offset.checked_add(w[0].wal_size) == Some(w[1].wal_offset));
    if wal_range && one_wal_run {
        header.wal_offset = first.wal_offset;
        header.wal_size = last.wal_offset + last.wal_size - first.wal_offset;
        (header.wal_salt1, header.wal_salt2) = (first.wal_salt1, first.wal_salt2);
    }
    let mut enc = Encoder::new(out, header)?;

    // One buffered page per input: the k-way merge front.
    let page_size = header.page_size as usize;
    let mut front: Vec<(Option<u32>, Vec<u8>)> = Vec::with_capacity(inputs.len());
    for dec in inputs.iter_mut() {
        let mut buf = vec![0u8; page_size];
        let pgno = dec.next_page(&mut buf)?;
        front.push((pgno, buf));
    }
    // Bounded: each round consumes at least one page of some input, and every input's pages are
    // strictly ascending and ≤ its commit (the decoder enforces both).
    while let Some(pgno) = front.iter().filter_map(|(p, _)| *p).min() {
        let mut written = false;
        for (dec, (slot_pgno, buf)) in inputs.iter_mut().zip(front.iter_mut()).rev() {
            if *slot_pgno != Some(pgno) {
                continue;
            }
            if !written && pgno <= header.commit {
                enc.encode_page(pgno, buf)?;
                written = true;
            }
            *slot_pgno = dec.next_page(buf)?;
        }
    }

    let mut post_apply_checksum = 0;
    for dec in inputs {
        post_apply_checksum = dec.finish()?.post_apply_checksum;
    }
    let (w, trailer) = enc.finish(post_apply_checksum)?;
    Ok((w, header, trailer))
}
