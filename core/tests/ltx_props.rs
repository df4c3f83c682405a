//! Property tests of the LTX codec: round trip, chain-vs-compaction equivalence, corruption.

mod ltx_support;

use ltx_support::{page_chk, FLAG};
use ltxfs_core::ltx::checksum::db_checksum;
use ltxfs_core::ltx::{
    compact, compact_from, decode_slice, encode_to_vec, Decoder, Header, LtxError, HEADER_FLAG_COMPRESS_LZ4,
};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn page_size() -> impl Strategy<Value = u32> {
    (9u32..=16).prop_map(|shift| 1 << shift)
}

/// Page content that compresses sometimes (runs) and sometimes not (noise).
fn page_bytes(page_size: u32, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let noisy = seed % 3 == 0;
    (0..page_size)
        .map(|i| {
            if noisy {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            } else {
                ((i / 64) as u64 ^ seed) as u8
            }
        })
        .collect()
}

fn flags() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), Just(HEADER_FLAG_COMPRESS_LZ4)]
}

/// A small in-memory database: page number → bytes.
#[derive(Debug, Clone, Default, PartialEq)]
struct Db {
    page_size: u32,
    pages: BTreeMap<u32, Vec<u8>>,
}

impl Db {
    fn image(&self) -> Vec<u8> {
        self.pages.values().flatten().copied().collect()
    }
    fn checksum(&self) -> u64 {
        db_checksum(&self.image(), self.page_size)
    }
    /// Applies one file the way LiteFS does: pre-apply check, pages, truncate, post-apply check.
    fn apply(&mut self, file: &[u8]) -> Result<(), String> {
        let (h, pages, t) = decode_slice(file).map_err(|e| e.to_string())?;
        if h.is_snapshot() {
            self.pages.clear();
            self.page_size = h.page_size;
        } else if h.pre_apply_checksum != self.checksum() {
            return Err("pre-apply mismatch".into());
        }
        for (p, d) in pages {
            self.pages.insert(p, d);
        }
        self.pages.retain(|p, _| *p <= h.commit);
        if self.pages.len() != h.commit as usize {
            return Err("hole in database".into());
        }
        if t.post_apply_checksum != self.checksum() {
            return Err("post-apply mismatch".into());
        }
        Ok(())
    }
}

/// One transaction: the new commit and the pages it writes (values are content seeds).
#[derive(Debug, Clone)]
struct Tx {
    commit: u32,
    dirty: BTreeMap<u32, u64>,
}

fn tx(max_commit: u32) -> impl Strategy<Value = Tx> {
    (1..=max_commit).prop_flat_map(move |commit| {
        proptest::collection::btree_map(1..=commit, any::<u64>(), 0..=commit as usize)
            .prop_map(move |dirty| Tx { commit, dirty })
    })
}

/// Builds the chain of files for an initial snapshot followed by `txs`, tracking the database.
fn build_chain(page_size: u32, flags: u32, snapshot_commit: u32, txs: &[Tx]) -> (Vec<Vec<u8>>, Db) {
    let mut db = Db {
        page_size,
        pages: BTreeMap::new(),
    };
    for p in 1..=snapshot_commit {
        db.pages.insert(p, page_bytes(page_size, u64::from(p)));
    }
    let header = Header {
        flags,
        page_size,
        commit: snapshot_commit,
        min_txid: 1,
        max_txid: 1,
        ..Header::default()
    };
    let mut files = vec![encode_to_vec(
        header,
        db.pages.iter().map(|(p, d)| (*p, d.as_slice())),
        db.checksum(),
    )
    .unwrap()];
    for (i, t) in txs.iter().enumerate() {
        let pre = db.checksum();
        let old_commit = db.pages.len() as u32;
        let mut written = BTreeMap::new();
        for (p, seed) in &t.dirty {
            written.insert(*p, page_bytes(page_size, *seed));
        }
        // Growth must write every new page (a database has no holes).
        for p in old_commit + 1..=t.commit {
            written
                .entry(p)
                .or_insert_with(|| page_bytes(page_size, u64::from(p) * 1000));
        }
        for (p, d) in &written {
            db.pages.insert(*p, d.clone());
        }
        db.pages.retain(|p, _| *p <= t.commit);
        let txid = i as u64 + 2;
        let h = Header {
            flags,
            page_size,
            commit: t.commit,
            min_txid: txid,
            max_txid: txid,
            pre_apply_checksum: pre,
            ..Header::default()
        };
        let file = encode_to_vec(
            h,
            written.iter().map(|(p, d)| (*p, d.as_slice())),
            db.checksum(),
        )
        .unwrap();
        files.push(file);
    }
    (files, db)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn encode_decode_is_identity(
        page_size in page_size(),
        flags in flags(),
        commit in 1u32..=24,
        snapshot in any::<bool>(),
        picks in proptest::collection::btree_set(1u32..=24, 0..24),
        seed in any::<u64>(),
        timestamp_ms in any::<i64>(),
        node_id in any::<u64>(),
    ) {
        let pgnos: Vec<u32> = if snapshot {
            (1..=commit).collect()
        } else {
            picks.into_iter().filter(|p| *p <= commit).collect()
        };
        let pages: Vec<(u32, Vec<u8>)> =
            pgnos.iter().map(|p| (*p, page_bytes(page_size, seed ^ u64::from(*p)))).collect();
        let post = if snapshot {
            pages.iter().fold(FLAG, |a, (p, d)| a ^ page_chk(*p, d)) | FLAG
        } else {
            FLAG | seed
        };
        let h = Header {
            flags,
            page_size,
            commit,
            min_txid: if snapshot { 1 } else { 5 },
            max_txid: 9,
            timestamp_ms,
            pre_apply_checksum: if snapshot { 0 } else { FLAG | (seed >> 1) },
            node_id,
            ..Header::default()
        };
        let file = encode_to_vec(h, pages.iter().map(|(p, d)| (*p, d.as_slice())), post).unwrap();
        let (h2, pages2, t) = decode_slice(&file).unwrap();
        prop_assert_eq!(h2, h);
        prop_assert_eq!(pages2, pages);
        prop_assert_eq!(t.post_apply_checksum, post);
    }

    #[test]
    fn applying_a_chain_equals_applying_its_compaction(
        page_size in page_size(),
        flags in flags(),
        out_flags in flags(),
        snapshot_commit in 1u32..=12,
        txs in proptest::collection::vec(tx(12), 1..6),
        split in any::<prop::sample::Index>(),
    ) {
        let (files, expected) = build_chain(page_size, flags, snapshot_commit, &txs);

        let mut one_by_one = Db::default();
        for f in &files {
            one_by_one.apply(f).unwrap();
        }
        prop_assert_eq!(&one_by_one, &expected);

        // The whole chain compacts to a snapshot that rebuilds the same database.
        let decoders = files.iter().map(|f| Decoder::new(f.as_slice()).unwrap()).collect();
        let (whole, h, _) = compact(decoders, Vec::new(), out_flags).unwrap();
        prop_assert!(h.is_snapshot());
        let mut from_snapshot = Db::default();
        from_snapshot.apply(&whole).unwrap();
        prop_assert_eq!(&from_snapshot, &expected);

        // Any incremental tail compacts to one file that applies on top of the prefix.
        let at = 1 + split.index(files.len() - 1);
        let mut db = Db::default();
        for f in &files[..at] {
            db.apply(f).unwrap();
        }
        let decoders = files[at..].iter().map(|f| Decoder::new(f.as_slice()).unwrap()).collect();
        let (tail, h, _) = compact(decoders, Vec::new(), out_flags).unwrap();
        prop_assert_eq!(h.min_txid, at as u64 + 1);
        db.apply(&tail).unwrap();
        prop_assert_eq!(&db, &expected);
    }

    /// A reader at a position inside a merged run of files (after its `k`-th transaction) applies
    /// `compact_from` of the merged file and lands exactly where the chain does.
    #[test]
    fn a_reader_inside_a_merged_file_applies_compact_from_it(
        page_size in page_size(),
        flags in flags(),
        out_flags in flags(),
        snapshot_commit in 1u32..=12,
        txs in proptest::collection::vec(tx(12), 2..7),
        picks in any::<[prop::sample::Index; 3]>(),
    ) {
        let (files, expected) = build_chain(page_size, flags, snapshot_commit, &txs);
        let n = files.len();
        let mut idx: Vec<usize> = picks.iter().map(|p| p.index(n)).collect();
        idx.sort();
        let (lo, k, hi) = (idx[0], idx[1], idx[2]);
        prop_assume!(k < hi);
        let decoders = files[lo..=hi].iter().map(|f| Decoder::new(f.as_slice()).unwrap()).collect();
        let (merged, _, _) = compact(decoders, Vec::new(), flags).unwrap();
        let mut db = Db::default();
        for f in &files[..=k] {
            db.apply(f).unwrap();
        }
        let start = ltxfs_core::ltx::Pos { txid: k as u64 + 1, checksum: db.checksum() };
        let mut inputs = vec![Decoder::new(merged.as_slice()).unwrap()];
        inputs.extend(files[hi + 1..].iter().map(|f| Decoder::new(f.as_slice()).unwrap()));
        let (tail, h, _) = compact_from(inputs, Vec::new(), out_flags, start).unwrap();
        prop_assert_eq!(h.min_txid, k as u64 + 2);
        prop_assert_eq!(h.pre_apply_checksum, start.checksum);
        db.apply(&tail).unwrap();
        prop_assert_eq!(&db, &expected);
        // A start outside the first file is an error, not a wrong file.
        if lo > 0 {
            let inputs = vec![Decoder::new(merged.as_slice()).unwrap()];
            let outside = ltxfs_core::ltx::Pos { txid: lo as u64, checksum: 1 << 63 };
            prop_assert!(compact_from(inputs, Vec::new(), out_flags, outside).is_err());
        }
    }

    #[test]
    fn corruption_gives_an_error_or_the_same_valid_file(
        page_size in (9u32..=12).prop_map(|s| 1u32 << s),
        flags in flags(),
        commit in 1u32..=6,
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
        cut in any::<prop::sample::Index>(),
    ) {
        let pages: Vec<(u32, Vec<u8>)> =
            (1..=commit).map(|p| (p, page_bytes(page_size, u64::from(p)))).collect();
        let post = pages.iter().fold(FLAG, |a, (p, d)| a ^ page_chk(*p, d)) | FLAG;
        let h = Header { flags, page_size, commit, min_txid: 1, max_txid: 1, ..Header::default() };
        let file = encode_to_vec(h, pages.iter().map(|(p, d)| (*p, d.as_slice())), post).unwrap();

        let mut flipped = file.clone();
        flipped[at.index(file.len())] ^= xor;
        match decode_slice(&flipped) {
            Err(_) => {}
            // Only a flip inside compressed data that decompresses to the same bytes can pass.
            Ok((h2, pages2, _)) => {
                prop_assert!(h.is_compressed());
                prop_assert_eq!(h2, h);
                prop_assert_eq!(pages2, pages.clone());
            }
        }
        if !h.is_compressed() {
            prop_assert!(decode_slice(&flipped).is_err(), "a byte flip in an uncompressed file went unnoticed");
        }

        let truncated = &file[..cut.index(file.len())];
        let err = decode_slice(truncated).unwrap_err();
        prop_assert!(matches!(err, LtxError::Truncated | LtxError::Lz4(_)), "{:?}", err);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), valid_header in any::<bool>()) {
        let mut input = bytes;
        if valid_header && input.len() >= 100 {
            let h = Header { page_size: 512, commit: 1, min_txid: 2, max_txid: 2, pre_apply_checksum: FLAG | 1, flags: u32::from(input[0] & 1), ..Header::default() };
            input[..100].copy_from_slice(&h.to_bytes());
        }
        // Only errors, never panics; random bytes are never a valid file.
        prop_assert!(decode_slice(&input).is_err());
    }
}
