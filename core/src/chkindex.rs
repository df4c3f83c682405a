//! The checksum index: one CRC-64 page checksum per database page, so that a commit costs
//! O(dirty pages + truncated pages) instead of a pass over the whole database.
//!
//! It decides the database checksum after a set of page writes and a new commit size (preview or
//! apply), and whether a persisted index is intact (its own CRC and its XOR total). It never
//! decides whether an index belongs to the database it is loaded for — the node compares the
//! persisted position with the last LTX's post-apply position and falls back to a full recompute
//! ([`ChecksumIndex::from_image`]) when they differ. It does no I/O: [`ChecksumIndex::encode`]
//! produces bytes the node hands to the shell in an I/O command.
//!
//! Persisted form (big-endian): `"LTXFSIX1" ‖ page_size u32 ‖ page_count u32 ‖ pos.txid u64 ‖
//! pos.checksum u64 ‖ db_checksum u64 ‖ page_checksum u64 × page_count ‖ crc64(all before) u64`.
//! The lock page's slot holds 0.

use crate::ltx::checksum::{crc64_go_iso, lock_pgno, page_checksum, DbChecksum};
use crate::ltx::{is_valid_page_size, Pos};

const MAGIC: &[u8; 8] = b"LTXFSIX1";
const FIXED_BYTES: usize = 8 + 4 + 4 + 8 + 8 + 8;

/// Why an index operation was refused; the index is unchanged after any error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("page size {0} is not a power of two in 512..=65536")]
    BadPageSize(u32),
    #[error("database image of {len} bytes is not a multiple of the {page_size}-byte page size")]
    ImageNotPageAligned { len: usize, page_size: u32 },
    #[error("page {pgno} has {len} bytes, not the {page_size}-byte page size")]
    WrongPageLength { pgno: u32, len: usize, page_size: u32 },
    #[error("page number 0 does not exist")]
    PageZero,
    #[error("page {0} is SQLite's lock page and is never written")]
    LockPage(u32),
    #[error("page {pgno} is beyond the commit size of {commit} pages")]
    PageBeyondCommit { pgno: u32, commit: u32 },
    #[error("page numbers are not strictly ascending at page {0}")]
    PagesNotAscending(u32),
    #[error("database grows to {commit} pages but page {pgno} was not written")]
    MissingGrowthPage { pgno: u32, commit: u32 },
    #[error("persisted index: bad magic")]
    BadMagic,
    #[error("persisted index: {0} bytes is not the length its header implies")]
    BadLength(usize),
    #[error("persisted index: file checksum mismatch")]
    FileChecksumMismatch,
    #[error("persisted index: page checksums do not add up to the stored database checksum")]
    TotalMismatch,
}

/// Per-page checksums of one database plus their running XOR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksumIndex {
    page_size: u32,
    /// `pages[pgno - 1]`; 0 for the lock page.
    pages: Vec<u64>,
    total: DbChecksum,
}

impl ChecksumIndex {
    /// The index of an empty (zero-page) database.
    pub fn new(page_size: u32) -> Result<ChecksumIndex, IndexError> {
        if !is_valid_page_size(page_size) {
            return Err(IndexError::BadPageSize(page_size));
        }
        Ok(ChecksumIndex { page_size, pages: Vec::new(), total: DbChecksum::new() })
    }

    /// Full recompute from a whole database image (O(database)).
    pub fn from_image(page_size: u32, image: &[u8]) -> Result<ChecksumIndex, IndexError> {
        let mut index = ChecksumIndex::new(page_size)?;
        let page_bytes = page_size as usize;
        if image.len() % page_bytes != 0 {
            return Err(IndexError::ImageNotPageAligned { len: image.len(), page_size });
        }
        let lock = lock_pgno(page_size);
        for (i, page) in image.chunks_exact(page_bytes).enumerate() {
            let pgno = u32::try_from(i + 1).map_err(|_| IndexError::PageBeyondCommit { pgno: u32::MAX, commit: u32::MAX })?;
            let sum = if pgno == lock { 0 } else { page_checksum(pgno, page) };
            index.total.toggle(sum);
            index.pages.push(sum);
        }
        Ok(index)
    }

    pub fn page_size(&self) -> u32 {
        self.page_size
    }
    /// Database size in pages.
    pub fn page_count(&self) -> u32 {
        self.pages.len() as u32
    }
    /// The database checksum (`FLAG | XOR of page checksums`).
    pub fn checksum(&self) -> u64 {
        self.total.value()
    }
    /// The stored checksum of `pgno`, `None` beyond the end; 0 for the lock page.
    pub fn page(&self, pgno: u32) -> Option<u64> {
        let i = usize::try_from(pgno.checked_sub(1)?).ok()?;
        self.pages.get(i).copied()
    }

    /// Checks a commit's pages: right length, ascending, not 0, not the lock page, within
    /// `commit`, and every page added by growth present.
    fn validate<P: AsRef<[u8]>>(&self, commit: u32, pages: &[(u32, P)]) -> Result<(), IndexError> {
        let lock = lock_pgno(self.page_size);
        let mut prev = 0u32;
        for (pgno, data) in pages {
            let (pgno, data) = (*pgno, data.as_ref());
            if pgno == 0 {
                return Err(IndexError::PageZero);
            }
            if pgno == lock {
                return Err(IndexError::LockPage(pgno));
            }
            if pgno > commit {
                return Err(IndexError::PageBeyondCommit { pgno, commit });
            }
            if pgno <= prev {
                return Err(IndexError::PagesNotAscending(pgno));
            }
            if data.len() != self.page_size as usize {
                return Err(IndexError::WrongPageLength { pgno, len: data.len(), page_size: self.page_size });
            }
            prev = pgno;
        }
        self.validate_growth(commit, pages, lock)
    }

    fn validate_growth<P>(&self, commit: u32, pages: &[(u32, P)], lock: u32) -> Result<(), IndexError> {
        let old = self.page_count();
        if commit <= old {
            return Ok(());
        }
        // Pages old+1..=commit must all be written (they are a suffix of the ascending list).
        let mut grown = pages.iter().map(|p| p.0).filter(|&p| p > old);
        let mut want = old + 1;
        while want <= commit {
            if want == lock {
                want += 1;
                continue;
            }
            if grown.next() != Some(want) {
                return Err(IndexError::MissingGrowthPage { pgno: want, commit });
            }
            want += 1;
        }
        Ok(())
    }

    /// The database checksum after writing `pages` and resizing to `commit` pages, without
    /// changing the index. O(pages + truncated pages).
    pub fn preview<P: AsRef<[u8]>>(&self, commit: u32, pages: &[(u32, P)]) -> Result<u64, IndexError> {
        self.validate(commit, pages)?;
        Ok(self.preview_valid(commit, pages, &page_sums(pages)))
    }

    /// [`ChecksumIndex::preview`] with the pages' checksums already computed by [`page_sums`]
    /// (`sums[i]` belongs to `pages[i]`), so a commit that is previewed and then applied hashes
    /// each page once.
    pub fn preview_with_sums<P: AsRef<[u8]>>(&self, commit: u32, pages: &[(u32, P)], sums: &[u64]) -> Result<u64, IndexError> {
        self.validate(commit, pages)?;
        check_sums(pages, sums);
        Ok(self.preview_valid(commit, pages, sums))
    }

    fn preview_valid<P>(&self, commit: u32, pages: &[(u32, P)], sums: &[u64]) -> u64 {
        let mut total = self.total;
        let old = self.page_count();
        for pgno in commit.saturating_add(1)..=old {
            total.toggle(self.page(pgno).unwrap_or(0));
        }
        for (&(pgno, _), &sum) in pages.iter().zip(sums) {
            if pgno <= old {
                total.toggle(self.page(pgno).unwrap_or(0));
            }
            total.toggle(sum);
        }
        total.value()
    }

    /// Writes `pages`, resizes to `commit` pages and returns the new database checksum.
    pub fn apply<P: AsRef<[u8]>>(&mut self, commit: u32, pages: &[(u32, P)]) -> Result<u64, IndexError> {
        self.validate(commit, pages)?;
        let sums = page_sums(pages);
        Ok(self.apply_valid(commit, pages, &sums))
    }

    /// [`ChecksumIndex::apply`] with the pages' checksums already computed by [`page_sums`].
    pub fn apply_with_sums<P: AsRef<[u8]>>(&mut self, commit: u32, pages: &[(u32, P)], sums: &[u64]) -> Result<u64, IndexError> {
        self.validate(commit, pages)?;
        check_sums(pages, sums);
        Ok(self.apply_valid(commit, pages, sums))
    }

    fn apply_valid<P>(&mut self, commit: u32, pages: &[(u32, P)], sums: &[u64]) -> u64 {
        let expected = self.preview_valid(commit, pages, sums);
        for pgno in commit.saturating_add(1)..=self.page_count() {
            self.total.toggle(self.page(pgno).unwrap_or(0));
        }
        self.pages.truncate(commit as usize);
        self.pages.resize(commit as usize, 0);
        for (&(pgno, _), &sum) in pages.iter().zip(sums) {
            let slot = &mut self.pages[pgno as usize - 1];
            self.total.toggle(*slot);
            *slot = sum;
            self.total.toggle(*slot);
        }
        // Paired with preview: the slot-by-slot update and the running XOR must agree.
        assert_eq!(self.total.value(), expected, "checksum index apply disagrees with preview");
        expected
    }

    /// The persisted form, tagged with the position it belongs to.
    pub fn encode(&self, pos: Pos) -> Vec<u8> {
        let mut b = Vec::with_capacity(FIXED_BYTES + 8 * self.pages.len() + 8);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.page_size.to_be_bytes());
        b.extend_from_slice(&self.page_count().to_be_bytes());
        b.extend_from_slice(&pos.txid.to_be_bytes());
        b.extend_from_slice(&pos.checksum.to_be_bytes());
        b.extend_from_slice(&self.checksum().to_be_bytes());
        for p in &self.pages {
            b.extend_from_slice(&p.to_be_bytes());
        }
        let crc = crc64_go_iso(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b
    }

    /// Reloads a persisted index and the position it was saved at. Verifies the file checksum
    /// and that the page checksums add up to the stored total; the caller still has to check the
    /// position against the last LTX file.
    pub fn decode(bytes: &[u8]) -> Result<(Pos, ChecksumIndex), IndexError> {
        if bytes.len() < FIXED_BYTES + 8 {
            return Err(IndexError::BadLength(bytes.len()));
        }
        if &bytes[..8] != MAGIC {
            return Err(IndexError::BadMagic);
        }
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let page_size = u32_at(8);
        let count = u32_at(12) as usize;
        if count.checked_mul(8).and_then(|n| n.checked_add(FIXED_BYTES + 8)) != Some(bytes.len()) {
            return Err(IndexError::BadLength(bytes.len()));
        }
        let body = bytes.len() - 8;
        if crc64_go_iso(&bytes[..body]) != u64_at(body) {
            return Err(IndexError::FileChecksumMismatch);
        }
        let mut index = ChecksumIndex::new(page_size)?;
        let pos = Pos { txid: u64_at(16), checksum: u64_at(24) };
        let stored_total = u64_at(32);
        for i in 0..count {
            let sum = u64_at(FIXED_BYTES + 8 * i);
            index.total.toggle(sum);
            index.pages.push(sum);
        }
        if index.checksum() != stored_total {
            return Err(IndexError::TotalMismatch);
        }
        Ok((pos, index))
    }
}

/// The page checksum of every page of a commit, in order, for
/// [`ChecksumIndex::preview_with_sums`] and [`ChecksumIndex::apply_with_sums`].
pub fn page_sums<P: AsRef<[u8]>>(pages: &[(u32, P)]) -> Vec<u64> {
    pages.iter().map(|(pgno, data)| page_checksum(*pgno, data.as_ref())).collect()
}

/// Sums handed in must be the pages' own: one per page always, and (in debug builds, so every
/// test run) each equal to a recomputation.
fn check_sums<P: AsRef<[u8]>>(pages: &[(u32, P)], sums: &[u64]) {
    assert_eq!(pages.len(), sums.len(), "one checksum per page");
    debug_assert!(
        pages.iter().zip(sums).all(|((pgno, data), &sum)| page_checksum(*pgno, data.as_ref()) == sum),
        "page checksums handed in match the pages"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ltx::checksum::{db_checksum, CHECKSUM_EMPTY};
    use proptest::prelude::*;

    const PS: u32 = 512;

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; PS as usize]
    }

    /// A model database: the image as bytes.
    fn write_model(image: &mut Vec<u8>, commit: u32, pages: &[(u32, Vec<u8>)]) {
        image.resize(commit as usize * PS as usize, 0);
        for (pgno, data) in pages {
            let at = (*pgno as usize - 1) * PS as usize;
            image[at..at + PS as usize].copy_from_slice(data);
        }
    }

    #[test]
    fn empty_index_has_empty_checksum() {
        let ix = ChecksumIndex::new(PS).unwrap();
        assert_eq!(ix.checksum(), CHECKSUM_EMPTY);
        assert_eq!(ix.page_count(), 0);
        assert_eq!(ChecksumIndex::new(100), Err(IndexError::BadPageSize(100)));
    }

    #[test]
    fn invalid_commits_are_refused_and_leave_the_index_alone() {
        let mut ix = ChecksumIndex::new(PS).unwrap();
        let p = page(1);
        assert_eq!(ix.apply(2, &[(1, &p)]), Err(IndexError::MissingGrowthPage { pgno: 2, commit: 2 }));
        assert_eq!(ix.apply(1, &[(2, &p)]), Err(IndexError::PageBeyondCommit { pgno: 2, commit: 1 }));
        assert_eq!(ix.apply(2, &[(2, &p), (1, &p)]), Err(IndexError::PagesNotAscending(1)));
        assert_eq!(ix.apply(1, &[(0, &p)]), Err(IndexError::PageZero));
        assert_eq!(ix.apply(1, &[(1, &p[..10])]), Err(IndexError::WrongPageLength { pgno: 1, len: 10, page_size: PS }));
        let lock = lock_pgno(PS);
        assert_eq!(ix.apply(lock, &[(lock, &p)]), Err(IndexError::LockPage(lock)));
        assert_eq!(ix, ChecksumIndex::new(PS).unwrap());
    }

    #[test]
    fn corrupt_persisted_index_is_detected() {
        let mut ix = ChecksumIndex::new(PS).unwrap();
        ix.apply(2, &[(1, &page(1)), (2, &page(2))]).unwrap();
        let bytes = ix.encode(Pos { txid: 2, checksum: ix.checksum() });
        let mut flipped = bytes.clone();
        flipped[FIXED_BYTES + 3] ^= 1;
        assert_eq!(ChecksumIndex::decode(&flipped), Err(IndexError::FileChecksumMismatch));
        assert_eq!(ChecksumIndex::decode(&bytes[..bytes.len() - 1]), Err(IndexError::BadLength(bytes.len() - 1)));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert_eq!(ChecksumIndex::decode(&magic), Err(IndexError::BadMagic));
    }

    fn commit_strategy() -> impl Strategy<Value = (u32, Vec<(u32, u8)>)> {
        (0u32..40).prop_flat_map(|commit| {
            (Just(commit), proptest::collection::btree_map(1..=commit.max(1), any::<u8>(), 0..10))
                .prop_map(|(c, m)| (c, m.into_iter().filter(|(p, _)| *p <= c).collect()))
        })
    }

    proptest! {
        /// Goal: the incremental index equals a full recompute after any sequence of page writes,
        /// growths and truncations. Method: mirror every commit on a byte image and compare.
        #[test]
        fn incremental_equals_full_recompute(commits in proptest::collection::vec(commit_strategy(), 1..12)) {
            let mut ix = ChecksumIndex::new(PS).unwrap();
            let mut image = Vec::new();
            for (commit, writes) in commits {
                // Growth must write every new page: add the missing ones.
                let mut pages: std::collections::BTreeMap<u32, Vec<u8>> =
                    writes.into_iter().map(|(p, f)| (p, page(f))).collect();
                for p in ix.page_count() + 1..=commit {
                    pages.entry(p).or_insert_with(|| page(p as u8));
                }
                let pages: Vec<(u32, Vec<u8>)> = pages.into_iter().collect();
                let refs: Vec<(u32, &[u8])> = pages.iter().map(|(p, d)| (*p, d.as_slice())).collect();
                let preview = ix.preview(commit, &refs).unwrap();
                let applied = ix.apply(commit, &refs).unwrap();
                write_model(&mut image, commit, &pages);
                prop_assert_eq!(preview, applied);
                prop_assert_eq!(applied, db_checksum(&image, PS));
                prop_assert_eq!(&ix, &ChecksumIndex::from_image(PS, &image).unwrap());
            }
        }

        /// Goal: persisting and reloading is lossless, position included.
        #[test]
        fn persisted_index_reloads_equal(fills in proptest::collection::vec(any::<u8>(), 0..30), txid in any::<u64>()) {
            let mut image = Vec::new();
            for f in &fills {
                image.extend_from_slice(&page(*f));
            }
            let ix = ChecksumIndex::from_image(PS, &image).unwrap();
            let pos = Pos { txid, checksum: ix.checksum() };
            let (pos2, ix2) = ChecksumIndex::decode(&ix.encode(pos)).unwrap();
            prop_assert_eq!(pos2, pos);
            prop_assert_eq!(ix2, ix);
        }
    }

    proptest! {
        /// Goal: handing in precomputed page checksums changes nothing. Method: drive two indexes
        /// through the same commits, one with `preview`/`apply`, one with the `_with_sums` forms,
        /// and compare results and indexes after every commit.
        #[test]
        fn precomputed_sums_give_the_same_index(commits in proptest::collection::vec(commit_strategy(), 1..12)) {
            let mut plain = ChecksumIndex::new(PS).unwrap();
            let mut summed = ChecksumIndex::new(PS).unwrap();
            for (commit, writes) in commits {
                let pages: Vec<(u32, Vec<u8>)> = writes.into_iter().map(|(p, f)| (p, page(f))).collect();
                let refs: Vec<(u32, &[u8])> = pages.iter().map(|(p, d)| (*p, d.as_slice())).collect();
                let sums = page_sums(&refs);
                prop_assert_eq!(plain.preview(commit, &refs), summed.preview_with_sums(commit, &refs, &sums));
                prop_assert_eq!(plain.apply(commit, &refs), summed.apply_with_sums(commit, &refs, &sums));
                prop_assert_eq!(&plain, &summed);
            }
        }
    }

    #[test]
    #[should_panic(expected = "one checksum per page")]
    fn missing_sums_are_a_caller_bug() {
        let ix = ChecksumIndex::new(PS).unwrap();
        let p = page(1);
        let _ = ix.preview_with_sums(1, &[(1, &p)], &[]);
    }
}
