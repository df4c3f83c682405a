//! `/import` on real processes: a database of tens of MB streamed through `ltxfs import` reaches
//! every replica byte for byte; an oversized body gets 413, a body that is not a whole SQLite
//! file 400, and neither changes anything; no temporary file outlives a request (a client that
//! goes away mid-upload included; what arrived is on disk while it arrives), and one left by a
//! crash is removed at start-up.
//!
//! NEEDS FUSE (`/dev/fuse`, fusermount3) and the sqlite3 CLI: fails, never skips, without them.

mod cluster_support;

use std::path::Path;
use std::process::Command;

use cluster_support::*;

const DB: &str = "app.db";
const LIMIT_ENV: &str = "LTXFS_IMPORT_BYTES_MAX";

fn ltxfs(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ltxfs")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A SQLite file (rollback journal, 4 KiB pages) of about `rows` × 4 KiB of random blobs.
fn make_db(path: &Path, rows: u32) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB);").unwrap();
    conn.execute("INSERT INTO big(b) SELECT randomblob(4000) FROM generate_series(1, ?1)", [rows]).or_else(|_| {
        // Builds without generate_series: a recursive CTE does the same.
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) INSERT INTO big(b) SELECT randomblob(4000) FROM n",
            [rows],
        )
    })
    .unwrap();
    drop(conn);
}

fn export(url: &str, name: &str, to: &Path) -> Vec<u8> {
    let (ok, _, err) = ltxfs(&["export", "--url", url, "--name", name, to.to_str().unwrap()]);
    assert!(ok, "export of {name} from {url}: {err}");
    std::fs::read(to).unwrap()
}

/// The files in `<data>/tmp` (none when it does not exist).
fn temp_files(node: &ProcNode) -> Vec<String> {
    match std::fs::read_dir(node.data.join("tmp")) {
        Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

/// POSTs `body` to `/import?name=` and returns (status, text).
fn post_import(url: &str, name: &str, body: reqwest::Body) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let resp = reqwest::Client::new().post(format!("{url}/import")).query(&[("name", name)]).body(body).send().await.expect("POST /import");
        (resp.status().as_u16(), resp.text().await.unwrap_or_default())
    })
}

/// A body without a Content-Length (chunked), as the CLI sends files.
fn chunked(bytes: Vec<u8>) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = bytes.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

/// Every node's `-pos` of `db` and the primary's export: what "changes nothing" compares.
fn snapshot(cluster: &Cluster, db: &str, work: &Path) -> (Vec<Option<String>>, Vec<u8>) {
    let pos = cluster.nodes.iter().map(|n| n.pos(db)).collect();
    (pos, export(&cluster.primary().url, db, &work.join("before.db")))
}

#[test]
fn an_import_of_tens_of_mb_reaches_every_replica_byte_for_byte() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    sqlite3_ok(&cluster.primary().db(DB), "CREATE TABLE t(v); INSERT INTO t VALUES (1);");
    cluster.wait_converged(DB);
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("big.db");
    make_db(&source, 6000); // ~24 MB
    let image = std::fs::read(&source).unwrap();
    assert!(image.len() > 20 << 20, "the test database is tens of MB ({} bytes)", image.len());

    // Over an existing database (replaced as one transaction) and as a new one.
    for name in [DB, "big.db"] {
        let (ok, out, err) = ltxfs(&["import", "--url", &cluster.primary().url, "--name", name, source.to_str().unwrap()]);
        assert!(ok, "import {name}: {err}");
        assert!(out.contains("imported") && out.contains("committed"), "{out}");
        cluster.wait_converged(name);
        for (i, n) in cluster.nodes.iter().enumerate() {
            let copy = export(&n.url, name, &work.path().join(format!("{name}.{i}")));
            assert!(copy == image, "{name} on {} is byte-identical to the imported file ({} vs {} bytes)", n.name, copy.len(), image.len());
            assert_eq!(sqlite3_ok(&n.db(name), "SELECT count(*) FROM big; PRAGMA integrity_check;"), "6000\nok\n", "{name} on {}", n.name);
            assert!(temp_files(n).is_empty(), "no temporary file left on {}: {:?}", n.name, temp_files(n));
        }
    }
    // The mount of the primary still takes writes on the imported database, and they replicate.
    sqlite3_ok(&cluster.primary().db("big.db"), "INSERT INTO big(b) VALUES (x'00');");
    cluster.wait_converged("big.db");
    assert_eq!(sqlite3_ok(&cluster.nodes[2].db("big.db"), "SELECT count(*) FROM big;"), "6001\n");
}

#[test]
fn an_oversized_import_gets_413_and_changes_nothing() {
    let mut cluster = Cluster::new();
    cluster.nodes[0].env.push((LIMIT_ENV.into(), (1 << 20).to_string()));
    cluster.start_all();
    sqlite3_ok(&cluster.primary().db(DB), "CREATE TABLE t(v); INSERT INTO t VALUES (1);");
    cluster.wait_converged(DB);
    let work = tempfile::tempdir().unwrap();
    let before = snapshot(&cluster, DB, work.path());
    let source = work.path().join("big.db");
    make_db(&source, 600); // ~2.4 MB, over the 1 MiB limit
    let image = std::fs::read(&source).unwrap();
    assert!(image.len() > 1 << 20);
    let url = cluster.primary().url.clone();

    // The CLI streams the file (no Content-Length): refused once the limit is passed.
    let (ok, _, err) = ltxfs(&["import", "--url", &url, "--name", DB, source.to_str().unwrap()]);
    assert!(!ok, "oversized import refused");
    assert!(err.contains("413"), "{err}");
    // A declared Content-Length over the limit is refused before anything is written.
    let (status, text) = post_import(&url, DB, reqwest::Body::from(image.clone()));
    assert_eq!(status, 413, "{text}");
    assert!(text.contains(LIMIT_ENV), "the answer names the setting: {text}");
    // Nor is a new database created by a refused import.
    let (status, _) = post_import(&url, "new.db", chunked(image.clone()));
    assert_eq!(status, 413);

    assert_eq!(snapshot(&cluster, DB, work.path()), before, "nothing changed");
    for n in &cluster.nodes {
        assert!(!n.db("new.db").exists() && !n.data.join("dbs").join("new.db").exists(), "no new.db on {}", n.name);
        assert!(temp_files(n).is_empty(), "no temporary file left on {}: {:?}", n.name, temp_files(n));
    }
    // Under the limit the same node imports.
    let small = work.path().join("small.db");
    make_db(&small, 50);
    let (ok, _, err) = ltxfs(&["import", "--url", &url, "--name", DB, small.to_str().unwrap()]);
    assert!(ok, "{err}");
    cluster.wait_converged(DB);
    assert_eq!(sqlite3_ok(&cluster.nodes[1].db(DB), "SELECT count(*) FROM big;"), "50\n");
}

#[test]
fn a_body_that_is_not_a_whole_sqlite_file_gets_400_and_changes_nothing() {
    let mut cluster = Cluster::new();
    // A temporary file left by a crash mid-upload: removed when the node starts.
    let leftover = cluster.nodes[0].data.join("tmp").join("import-1-0");
    std::fs::create_dir_all(leftover.parent().unwrap()).unwrap();
    std::fs::write(&leftover, b"SQLite format 3\0 half an upload").unwrap();
    cluster.start_all();
    assert!(!leftover.exists(), "the leftover import file is removed at start-up");
    sqlite3_ok(&cluster.primary().db(DB), "CREATE TABLE t(v); INSERT INTO t VALUES (1);");
    cluster.wait_converged(DB);
    let work = tempfile::tempdir().unwrap();
    let before = snapshot(&cluster, DB, work.path());
    let source = work.path().join("good.db");
    make_db(&source, 300);
    let image = std::fs::read(&source).unwrap();
    let url = cluster.primary().url.clone();

    // Cut mid-page: not a whole number of pages (through the CLI, which streams the file).
    let cut = work.path().join("cut.db");
    std::fs::write(&cut, &image[..image.len() - 1000]).unwrap();
    let (ok, _, err) = ltxfs(&["import", "--url", &url, "--name", DB, cut.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("400") && err.contains("whole number of pages"), "{err}");
    // Cut at a page boundary: shorter than the size its header records.
    let (status, text) = post_import(&url, DB, chunked(image[..image.len() / 2 / 4096 * 4096].to_vec()));
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("truncated"), "{text}");
    // Not SQLite at all, large enough that the node stops writing it at once; and empty.
    let mut junk = b"this is not a database ".repeat(100_000);
    junk.truncate(2 << 20);
    let (status, text) = post_import(&url, DB, chunked(junk));
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("not a SQLite database"), "{text}");
    let (status, _) = post_import(&url, DB, reqwest::Body::from(Vec::new()));
    assert_eq!(status, 400);
    // A bad page size in an otherwise SQLite header.
    let mut bad = image.clone();
    bad[16..18].copy_from_slice(&3000u16.to_be_bytes());
    let (status, text) = post_import(&url, DB, reqwest::Body::from(bad));
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("page size"), "{text}");
    // None of that creates a database either.
    let (status, _) = post_import(&url, "new.db", chunked(image[..image.len() - 1].to_vec()));
    assert_eq!(status, 400);

    assert_eq!(snapshot(&cluster, DB, work.path()), before, "nothing changed");
    for n in &cluster.nodes {
        assert!(!n.db("new.db").exists() && !n.data.join("dbs").join("new.db").exists(), "no new.db on {}", n.name);
        assert!(temp_files(n).is_empty(), "no temporary file left on {}: {:?}", n.name, temp_files(n));
    }
}

#[test]
fn an_upload_is_streamed_to_disk_and_a_client_that_goes_away_leaves_nothing_behind() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    sqlite3_ok(&cluster.primary().db(DB), "CREATE TABLE t(v); INSERT INTO t VALUES (1);");
    cluster.wait_converged(DB);
    let work = tempfile::tempdir().unwrap();
    let before = snapshot(&cluster, DB, work.path());
    let source = work.path().join("good.db");
    make_db(&source, 1000);
    let image = std::fs::read(&source).unwrap();
    // The body sends 3 MiB, waits, then fails: the client aborts the request.
    let (give_up, gave_up) = tokio::sync::oneshot::channel::<()>();
    let head: Vec<Result<Vec<u8>, std::io::Error>> = image[..3 << 20].chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let tail = futures_util::stream::once(async move {
        let _ = gave_up.await;
        Err::<Vec<u8>, _>(std::io::Error::other("client gives up"))
    });
    let body = reqwest::Body::wrap_stream(futures_util::StreamExt::chain(futures_util::stream::iter(head), tail));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let request = reqwest::Client::new().post(format!("{}/import", cluster.primary().url)).query(&[("name", DB)]).body(body);
    let upload = rt.spawn(async move { request.send().await });
    // While the upload is under way, what arrived is on disk, not in memory.
    let primary = cluster.primary();
    let on_disk = || -> u64 {
        temp_files(primary).iter().filter_map(|f| std::fs::metadata(primary.data.join("tmp").join(f)).ok()).map(|m| m.len()).sum()
    };
    wait_until("the upload's first MiBs in a temporary file", || on_disk() >= 1 << 20);
    give_up.send(()).unwrap();
    let sent = rt.block_on(upload).unwrap();
    assert!(sent.as_ref().map_or(true, |r| !r.status().is_success()), "the aborted upload did not succeed: {sent:?}");
    wait_until("the aborted upload's temporary file to be removed", || temp_files(primary).is_empty());
    assert_eq!(snapshot(&cluster, DB, work.path()), before, "nothing changed");
}

/// An import over a WAL-mode database whose WAL still holds frames (a connection is open, so
/// SQLite has not checkpointed and deleted it): those frames belong to the old content and
/// must not be read over the imported file — not by the open connection, not by a new one,
/// not by SQLite's WAL recovery after a restart — and writes continue on top of the import.
#[test]
fn an_import_over_a_wal_database_with_frames_replaces_it_entirely() {
    let mut cluster = Cluster::new();
    cluster.start_all();
    let db = cluster.primary().db(DB);
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB); CREATE TABLE old(x);").unwrap();
    for i in 0..50 {
        conn.execute("INSERT INTO old VALUES (?1)", [i]).unwrap();
    }
    cluster.wait_converged(DB);

    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source.db");
    make_db(&source, 30);
    rusqlite::Connection::open(&source).unwrap().execute_batch("PRAGMA journal_mode=WAL;").unwrap();
    let (ok, _, err) = ltxfs(&["import", "--url", &cluster.primary().url, "--name", DB, source.to_str().unwrap()]);
    assert!(ok, "import: {err}");

    // A new connection and the one that was open both see exactly the imported database.
    assert_eq!(sqlite3_ok(&db, "PRAGMA integrity_check; SELECT count(*) FROM big; SELECT count(*) FROM sqlite_master WHERE name = 'old';"), "ok\n30\n0\n");
    let n: i64 = conn.query_row("SELECT count(*) FROM big", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 30, "the open connection sees the import");
    conn.execute("INSERT INTO big(b) VALUES (x'00')", []).unwrap();
    drop(conn);
    cluster.wait_converged(DB);
    for n in &cluster.nodes {
        assert_eq!(sqlite3_ok(&n.db(DB), "PRAGMA integrity_check; SELECT count(*) FROM big;"), "ok\n31\n", "{}", n.name);
    }

    // After a crash SQLite's WAL recovery must not bring the old frames back either.
    cluster.nodes[0].kill9();
    cluster.nodes[0].start();
    for r in &cluster.nodes[1..] {
        wait_until(&format!("{} reconnected", r.name), || r.info()["connectedToPrimary"] == serde_json::Value::Bool(true));
    }
    assert_eq!(sqlite3_ok(&cluster.primary().db(DB), "PRAGMA integrity_check; SELECT count(*) FROM big;"), "ok\n31\n");
    sqlite3_ok(&cluster.primary().db(DB), "INSERT INTO big(b) VALUES (x'01');");
    cluster.wait_converged(DB);
}
