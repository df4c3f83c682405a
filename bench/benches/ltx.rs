//! LTX codec benches (issue 2 §5): page checksums (CRC-64/GO-ISO via crc-fast vs CRC-64/XZ via
//! crc64fast, same pages, same run) and encode/decode throughput of 4 KiB pages, with and
//! without LZ4. Run: `cargo bench -p bench --bench ltx`. Figures: bench/RESULTS.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ltxfs_core::ltx::checksum::{db_checksum, page_checksum};
use ltxfs_core::ltx::{encode_to_vec, Decoder, Header, HEADER_FLAG_COMPRESS_LZ4};
use std::hint::black_box;
use std::time::Duration;

const PAGE_SIZE: u32 = 4096;
/// 1024 pages = 4 MiB per iteration.
const PAGES: u32 = 1024;

/// SQLite-like pages: a structured, compressible half (small integers, repeated text) and a
/// noisy half, so LZ4 has real work and finds some redundancy (roughly 2:1).
fn pages() -> Vec<u8> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut db = vec![0u8; (PAGE_SIZE * PAGES) as usize];
    for (i, b) in db.iter_mut().enumerate() {
        let in_page = i % PAGE_SIZE as usize;
        *b = if in_page < PAGE_SIZE as usize / 2 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        } else {
            b"row-000042|alice@example.com|"[in_page % 29]
        };
    }
    db
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
}

fn checksums(c: &mut Criterion) {
    let db = pages();
    let mut g = c.benchmark_group("page_checksum_4k");
    g.throughput(Throughput::Bytes(db.len() as u64));
    g.bench_function("crc64_go_iso_crc_fast", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for (i, page) in db.chunks_exact(PAGE_SIZE as usize).enumerate() {
                acc ^= page_checksum(i as u32 + 1, black_box(page));
            }
            acc
        })
    });
    g.bench_function("crc64_xz_crc64fast", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for (i, page) in db.chunks_exact(PAGE_SIZE as usize).enumerate() {
                let mut d = crc64fast::Digest::new();
                d.write(&(i as u32 + 1).to_be_bytes());
                d.write(black_box(page));
                acc ^= d.sum64();
            }
            acc
        })
    });
    g.finish();
}

fn header(flags: u32, snapshot: bool) -> Header {
    Header {
        flags,
        page_size: PAGE_SIZE,
        commit: PAGES,
        min_txid: if snapshot { 1 } else { 2 },
        max_txid: 2,
        pre_apply_checksum: if snapshot { 0 } else { 1 << 63 },
        ..Header::default()
    }
}

fn encode_file(db: &[u8], flags: u32, snapshot: bool) -> Vec<u8> {
    let pages = db.chunks_exact(PAGE_SIZE as usize).enumerate().map(|(i, p)| (i as u32 + 1, p));
    encode_to_vec(header(flags, snapshot), pages, db_checksum(db, PAGE_SIZE)).unwrap()
}

fn codec(c: &mut Criterion) {
    let db = pages();
    let mut g = c.benchmark_group("ltx_4k_pages");
    g.throughput(Throughput::Bytes(db.len() as u64));
    for (name, flags) in [("raw", 0), ("lz4", HEADER_FLAG_COMPRESS_LZ4)] {
        let file = encode_file(&db, flags, false);
        eprintln!("{name}: {} page bytes -> {} file bytes", db.len(), file.len());
        g.bench_with_input(BenchmarkId::new("encode_incremental", name), &db, |b, db| {
            b.iter(|| encode_file(black_box(db), flags, false))
        });
        for (kind, snapshot) in [("decode_incremental", false), ("decode_snapshot", true)] {
            let file = encode_file(&db, flags, snapshot);
            g.bench_with_input(BenchmarkId::new(kind, name), &file, |b, file| {
                let mut buf = vec![0u8; PAGE_SIZE as usize];
                b.iter(|| {
                    let mut dec = Decoder::new(black_box(file.as_slice())).unwrap();
                    let mut n = 0u32;
                    while let Some(_pgno) = dec.next_page(&mut buf).unwrap() {
                        n += 1;
                    }
                    assert_eq!(n, PAGES);
                    dec.finish().unwrap()
                })
            });
        }
    }
    g.finish();
}

criterion_group! { name = benches; config = config(); targets = checksums, codec }
criterion_main!(benches);
