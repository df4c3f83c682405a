//! `ltxfs ltx …` end to end: the real binary on real SQLite databases made with rusqlite.

use ltxfs_core::ltx::checksum::db_checksum;
use ltxfs_core::ltx::{encode_to_vec, file_name, Header, HEADER_FLAG_COMPRESS_LZ4};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ltxfs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ltxfs"))
        .arg("ltx")
        .args(args)
        .output()
        .expect("run ltxfs")
}

fn ok(args: &[&str]) -> String {
    let out = ltxfs(args);
    assert!(
        out.status.success(),
        "ltxfs ltx {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A real database with a few tables, an index and enough rows for many pages.
fn make_db(path: &Path, page_size: u32, rows: u32) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA page_size = {page_size}; PRAGMA journal_mode = DELETE;"
    ))
    .unwrap();
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, blob BLOB); CREATE INDEX t_name ON t(name);")
        .unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    for i in 0..rows {
        tx.execute(
            "INSERT INTO t (name, blob) VALUES (?1, ?2)",
            rusqlite::params![format!("row-{i}"), vec![(i % 251) as u8; 300]],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

fn integrity_ok(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let result: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(result, "ok");
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert!(n > 0);
}

fn dump_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(&["dump", "--json", s(path)])).unwrap()
}

#[test]
fn sqlite_round_trip_through_encode_db_and_apply() {
    for (page_size, compress) in [(4096u32, false), (4096, true), (65_536, true), (512, false)] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        make_db(&db, page_size, 400);
        let ltx = dir.path().join(file_name(1, 7));
        let mut args = vec!["encode-db", "--txid", "7", s(&db), s(&ltx)];
        if compress {
            args.insert(1, "--compress");
        }
        ok(&args);
        assert_eq!(
            ok(&["verify", s(&ltx)]).trim_end(),
            format!("{}: ok", ltx.display())
        );

        let json = dump_json(&ltx);
        let original = std::fs::read(&db).unwrap();
        assert_eq!(json["page_size"], page_size);
        assert_eq!(
            json["commit"].as_u64().unwrap() as usize,
            original.len() / page_size as usize
        );
        assert_eq!(json["min_txid"], "0000000000000001");
        assert_eq!(json["max_txid"], "0000000000000007");
        assert_eq!(json["compressed"], compress);
        assert_eq!(json["pre_apply_checksum"], "0000000000000000");
        let pages: Vec<u64> = json["pages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect();
        assert_eq!(
            pages,
            (1..=json["commit"].as_u64().unwrap()).collect::<Vec<_>>()
        );
        for key in [
            "timestamp",
            "post_apply_checksum",
            "file_checksum",
            "node_id",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }

        let post = json["post_apply_checksum"].as_str().unwrap().to_string();
        assert_eq!(post.len(), 16);
        assert_eq!(ok(&["checksum", s(&db)]).trim_end(), post);
        assert_eq!(post, format!("{:016x}", db_checksum(&original, page_size)));

        let restored = dir.path().join("restored.db");
        ok(&["apply", "--db", s(&restored), s(&ltx)]);
        assert_eq!(
            std::fs::read(&restored).unwrap(),
            original,
            "page size {page_size}"
        );
        integrity_ok(&restored);
        assert_eq!(ok(&["checksum", s(&restored)]).trim_end(), post);
    }
}

/// Builds the incremental LTX file that takes `before` to `after` (both database images).
fn diff_ltx(before: &[u8], after: &[u8], page_size: u32, txid: u64, flags: u32) -> Vec<u8> {
    let ps = page_size as usize;
    let commit = (after.len() / ps) as u32;
    let pages: Vec<(u32, &[u8])> = after
        .chunks(ps)
        .enumerate()
        .filter(|(i, page)| before.get(i * ps..(i + 1) * ps) != Some(*page))
        .map(|(i, page)| (i as u32 + 1, page))
        .collect();
    let header = Header {
        flags,
        page_size,
        commit,
        min_txid: txid,
        max_txid: txid,
        pre_apply_checksum: db_checksum(before, page_size),
        ..Header::default()
    };
    encode_to_vec(header, pages, db_checksum(after, page_size)).unwrap()
}

fn write_more(path: &Path, sql: &str) -> Vec<u8> {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(sql).unwrap();
    drop(conn);
    std::fs::read(path).unwrap()
}

#[test]
fn snapshot_then_incrementals_apply_to_the_same_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 4096, 200);
    let v1 = std::fs::read(&db).unwrap();
    let snap = dir.path().join(file_name(1, 1));
    ok(&["encode-db", s(&db), s(&snap)]);
    let v2 = write_more(
        &db,
        "INSERT INTO t (name, blob) SELECT name || '-b', blob FROM t;",
    );
    let v3 = write_more(&db, "DELETE FROM t WHERE id % 3 = 0; VACUUM;");
    assert!(
        v3.len() < v2.len(),
        "VACUUM shrinks the file, so commit shrinks"
    );
    let f2 = dir.path().join(file_name(2, 2));
    let f3 = dir.path().join(file_name(3, 3));
    std::fs::write(&f2, diff_ltx(&v1, &v2, 4096, 2, HEADER_FLAG_COMPRESS_LZ4)).unwrap();
    std::fs::write(&f3, diff_ltx(&v2, &v3, 4096, 3, 0)).unwrap();
    ok(&["verify", s(&snap), s(&f2), s(&f3)]);

    let replica = dir.path().join("replica.db");
    ok(&["apply", "--db", s(&replica), s(&snap), s(&f2)]);
    assert_eq!(std::fs::read(&replica).unwrap(), v2);
    ok(&["apply", "--db", s(&replica), s(&f3)]);
    assert_eq!(std::fs::read(&replica).unwrap(), v3);
    integrity_ok(&replica);

    let listing = ok(&["list", s(dir.path())]);
    let rows: Vec<&str> = listing.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{listing}");
    assert!(
        rows[0].starts_with("0000000000000001  0000000000000001"),
        "{listing}"
    );
    assert!(
        rows[2].starts_with("0000000000000003  0000000000000003"),
        "{listing}"
    );
    let f3_size = std::fs::metadata(&f3).unwrap().len().to_string();
    assert!(
        rows[2].split_whitespace().any(|c| c == f3_size),
        "{listing}"
    );
    assert!(!listing.contains("app.db"));
}

#[test]
fn apply_refuses_a_pre_apply_mismatch_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 4096, 100);
    let v1 = std::fs::read(&db).unwrap();
    let v2 = write_more(&db, "UPDATE t SET name = 'x' WHERE id < 10;");
    let f2 = dir.path().join(file_name(2, 2));
    std::fs::write(&f2, diff_ltx(&v1, &v2, 4096, 2, 0)).unwrap();

    // The database is already at v2: the file's pre-apply (v1's checksum) does not match.
    let out = ltxfs(&["apply", "--db", s(&db), s(&f2)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pre-apply checksum mismatch"));
    assert_eq!(std::fs::read(&db).unwrap(), v2);

    // A good snapshot followed by a bad file: all or nothing, so a fresh database is not created.
    let snap = dir.path().join(file_name(1, 1));
    ok(&["encode-db", s(&db), s(&snap)]);
    let fresh = dir.path().join("fresh.db");
    let out = ltxfs(&["apply", "--db", s(&fresh), s(&snap), s(&f2)]);
    assert!(!out.status.success());
    assert!(!fresh.exists());
    let leftovers: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        leftovers
            .iter()
            .all(|p| !p.to_string_lossy().contains("ltxfs-tmp")),
        "{leftovers:?}"
    );
}

#[test]
fn apply_refuses_a_snapshot_whose_checksum_does_not_match_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 4096, 50);
    let original = std::fs::read(&db).unwrap();
    let snap = dir.path().join(file_name(1, 1));
    ok(&["encode-db", s(&db), s(&snap)]);
    let mut bytes = std::fs::read(&snap).unwrap();
    let n = bytes.len();
    bytes[n - 12] ^= 0x01; // post-apply checksum (file checksum now also mismatches)
    std::fs::write(&snap, &bytes).unwrap();
    let out = ltxfs(&["apply", "--db", s(&db), s(&snap)]);
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&db).unwrap(), original);
}

#[test]
fn verify_names_the_rule_for_each_bad_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 1024, 30);
    let good = dir.path().join("good.ltx");
    ok(&["encode-db", s(&db), s(&good)]);
    let bytes = std::fs::read(&good).unwrap();
    let flipped = dir.path().join("flipped.ltx");
    let mut b = bytes.clone();
    b[500] ^= 0xff;
    std::fs::write(&flipped, &b).unwrap();
    let short = dir.path().join("short.ltx");
    std::fs::write(&short, &bytes[..bytes.len() - 5]).unwrap();
    let magic = dir.path().join("magic.ltx");
    let mut m = bytes.clone();
    m[0] = b'X';
    std::fs::write(&magic, &m).unwrap();

    let out = ltxfs(&["verify", s(&good), s(&flipped), s(&short), s(&magic)]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].starts_with(&format!("{}: ", flipped.display()))
            && lines[0].contains("[FileChecksumMismatch]"),
        "{stderr}"
    );
    assert!(lines[1].contains("[Truncated]"), "{stderr}");
    assert!(lines[2].contains("[BadMagic]"), "{stderr}");
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("good.ltx: ok"));
    assert!(ltxfs(&["verify", s(&good)]).status.success());
}

#[test]
fn dump_text_lists_header_pages_and_trailer() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 4096, 10);
    let ltx = dir.path().join("x.ltx");
    ok(&["encode-db", "--txid", "3", s(&db), s(&ltx)]);
    let text = ok(&["dump", s(&ltx)]);
    assert!(text.contains("Page size:  4096"), "{text}");
    assert!(text.contains("Max TXID:   0000000000000003 (3)"), "{text}");
    assert!(text.contains("Frame #1\n"), "{text}");
    let post = ok(&["checksum", s(&db)]);
    assert!(
        text.contains(&format!("Post-apply: {}", post.trim_end())),
        "{text}"
    );
}

/// Interop with the reference LZ4 implementation (`lz4` CLI, the lz4 Debian package): it must
/// read our frames, and we must read frames it writes with options we do not use ourselves.
#[test]
fn lz4_reference_cli_reads_our_frames_and_we_read_its_frames() {
    let lz4 = Command::new("lz4").arg("--version").output();
    assert!(
        lz4.is_ok(),
        "the `lz4` CLI is required for this test (apt-get install lz4)"
    );
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 4096, 300);
    let ltx = dir.path().join("c.ltx");
    ok(&["encode-db", "--compress", s(&db), s(&ltx)]);
    let bytes = std::fs::read(&ltx).unwrap();
    let frame = &bytes[100..bytes.len() - 16];
    let frame_path = dir.path().join("block.lz4");
    std::fs::write(&frame_path, frame).unwrap();
    let plain_path = dir.path().join("block.bin");
    let st = Command::new("lz4")
        .args(["-d", "-f", "-q", s(&frame_path), s(&plain_path)])
        .output()
        .unwrap()
        .status;
    assert!(st.success());
    let plain = std::fs::read(&plain_path).unwrap();
    let original = std::fs::read(&db).unwrap();
    assert_eq!(
        plain.len(),
        original.len() + 4 * (original.len() / 4096) + 4
    );
    assert_eq!(&plain[4..4 + 4096], &original[..4096]);

    // Re-frame the same page block with the reference tool's other options: linked blocks,
    // block checksums, content size, 4 MiB blocks.
    for opts in [
        &["-B4", "-BD"][..],
        &["-BX", "--content-size"],
        &["-B7"],
        &["-B5", "--no-frame-crc"],
    ] {
        let re = dir.path().join("re.lz4");
        let st = Command::new("lz4")
            .args(opts)
            .args(["-f", "-q", s(&plain_path), s(&re)])
            .output()
            .unwrap()
            .status;
        assert!(st.success());
        let mut file = bytes[..100].to_vec();
        file.extend(std::fs::read(&re).unwrap());
        file.extend_from_slice(&bytes[bytes.len() - 16..]);
        let path = dir.path().join("re.ltx");
        std::fs::write(&path, &file).unwrap();
        ok(&["verify", s(&path)]);
    }
}
