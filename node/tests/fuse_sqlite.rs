//! Real FUSE, real SQLite: the `ltxfs` binary mounts a directory and unchanged SQLite programs
//! (rusqlite and the `sqlite3` CLI) write through it in every journal mode.
//!
//! These tests NEED FUSE (`/dev/fuse`, `fusermount3` from the fuse3 package) and the `sqlite3`
//! CLI. They fail loudly when those are missing rather than skip.

use ltxfs_core::ltx::{self, checksum::db_checksum};
use rusqlite::Connection;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn require_tools() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "FUSE TESTS NEED /dev/fuse (load the fuse module / run the container with --device /dev/fuse)"
    );
    for tool in ["fusermount3", "sqlite3"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "FUSE TESTS NEED `{tool}` on PATH (apt-get install fuse3 sqlite3)"
        );
    }
}

type DecodedLtx = (ltx::Header, Vec<(u32, Vec<u8>)>, ltx::Trailer);

/// One `ltxfs mount` process on a private temp dir; unmounted on drop.
struct Node {
    _dir: tempfile::TempDir,
    root: PathBuf,
    mnt: PathBuf,
    data: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(candidate: bool) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let node = Node {
            mnt: root.join("mnt"),
            data: root.join("data"),
            root,
            _dir: dir,
            child: None,
        };
        node.launch(candidate, None)
    }

    fn launch(mut self, candidate: bool, record: Option<&Path>) -> Node {
        require_tools();
        let config = self.root.join("ltxfs.yml");
        let lease = if candidate {
            "lease:\n  type: static\n  candidate: true\n  hostname: primary-1\n".to_string()
        } else {
            "lease:\n  type: static\n  candidate: false\n  hostname: primary-1\n  advertise-url: http://127.0.0.1:1\nreplication:\n  node-id: replica-1\n  members: [primary-1, replica-1]\n"
                .to_string()
        };
        std::fs::write(
            &config,
            format!(
                "fuse:\n  dir: {}\ndata:\n  dir: {}\n  compress: true\nhttp:\n  addr: 127.0.0.1:0\n{lease}",
                self.mnt.display(),
                self.data.display()
            ),
        )
        .unwrap();
        let failpoints = self.root.join("failpoints");
        std::fs::create_dir_all(&failpoints).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_ltxfs"));
        command.arg("mount").arg("--config").arg(&config).env("LTXFS_FAILPOINT_DIR", &failpoints);
        if let Some(dir) = record {
            command.arg("--record-ops").arg(dir);
        }
        let mut child = command.stdout(Stdio::piped()).spawn().expect("spawn ltxfs");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.next().expect("ltxfs exited before mounting").unwrap();
        assert!(
            ready.contains("node mounted at"),
            "unexpected first line: {ready}"
        );
        self.child = Some(child);
        self
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let status = child.wait().unwrap();
            assert!(status.success(), "ltxfs exited with {status}");
        }
    }

    fn restart(mut self, candidate: bool) -> Node {
        self.stop();
        self.launch(candidate, None)
    }

    /// kill -9, the dead mount detached, and a new process on the same directories.
    fn kill9_and_restart(mut self, candidate: bool) -> Node {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        let unmounted = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.mnt).status().unwrap();
        assert!(unmounted.success(), "detach the dead mount");
        self.launch(candidate, None)
    }

    fn db(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    fn backing(&self, name: &str) -> PathBuf {
        self.data.join("dbs").join(name)
    }

    /// LTX files of a database, in TXID order, decoded.
    fn ltx_files(&self, name: &str) -> Vec<DecodedLtx> {
        let dir = self.backing(name).join("ltx");
        if !dir.exists() {
            return Vec::new(); // created with the first LTX
        }
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".ltx"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|n| ltx::decode_slice(&std::fs::read(dir.join(n)).unwrap()).unwrap())
            .collect()
    }

    /// The transactions the LTX chain of `name` holds: the last file's max TXID, the files
    /// contiguous from TXID 1 (the LTX of WAL-mode commits queued together share one file).
    fn ltx_count(&self, name: &str) -> usize {
        let files = self.ltx_files(name);
        for pair in files.windows(2) {
            assert_eq!(pair[0].0.max_txid + 1, pair[1].0.min_txid, "contiguous LTX files");
        }
        files.last().map_or(0, |(h, _, _)| h.max_txid as usize)
    }

    /// The transactions the LTX chain of `name` holds once it is `expected`, or what it is after
    /// 10 s: a WAL commit's LTX file is written by a background thread, shortly after the commit
    /// returns (rollback-journal modes write it before).
    fn ltx_count_when(&self, name: &str, expected: usize) -> usize {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let n = self.ltx_count(name);
            if n == expected || std::time::Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
    }
}

fn sqlite3(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("run sqlite3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sqlite3 failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Checks the LTX chain of `name` against the backing database and `-pos`.
fn assert_chain_matches_database(node: &Node, name: &str, expected_txs: usize) {
    assert_eq!(
        node.ltx_count_when(name, expected_txs),
        expected_txs,
        "the LTX chain holds every committed transaction"
    );
    let files = node.ltx_files(name);
    let page_size = files[0].0.page_size;
    let mut image: Vec<u8> = Vec::new();
    let mut prev_post = 0;
    let mut next_txid = 1;
    for (header, pages, trailer) in files.iter() {
        let txid = header.min_txid;
        assert_eq!(txid, next_txid, "contiguous TXIDs");
        assert!(header.max_txid >= txid);
        next_txid = header.max_txid + 1;
        if txid == 1 {
            assert_eq!(header.max_txid, 1, "the first transaction is a snapshot on its own");
            assert!(header.is_snapshot());
        } else {
            assert_eq!(
                header.pre_apply_checksum,
                prev_post,
                "pre-apply of {txid} == post-apply of {}",
                txid - 1
            );
        }
        image.resize(header.commit as usize * page_size as usize, 0);
        for (pgno, data) in pages {
            let at = (*pgno as usize - 1) * page_size as usize;
            image[at..at + page_size as usize].copy_from_slice(data);
        }
        assert_eq!(
            db_checksum(&image, page_size),
            trailer.post_apply_checksum,
            "post-apply of {txid}"
        );
        prev_post = trailer.post_apply_checksum;
    }
    let database = std::fs::read(node.backing(name).join("database")).unwrap();
    assert_eq!(
        db_checksum(&database, page_size),
        prev_post,
        "last post-apply == backing database checksum"
    );
    assert!(
        database == image,
        "replaying every LTX rebuilds the database byte for byte"
    );
    let pos = std::fs::read_to_string(node.db(&format!("{name}-pos"))).unwrap();
    assert_eq!(pos, format!("{:016x}/{:016x}\n", expected_txs, prev_post));
}

/// Waits (at most 10 s) until `path` exists.
fn wait_for_file(path: &Path) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !path.exists() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    true
}

/// Goal: WAL commits queued while the background LTX writer is busy share one LTX file (one
/// inode for a burst of small transactions, not one each), a valid link of the chain that
/// rebuilds the database; a restart finds the chain intact. Method: real SQLite in WAL mode with
/// synchronous=NORMAL; the writer is held at a failpoint while 20 transactions commit; released,
/// it writes one file holding all of them (and the one that woke it).
#[test]
fn wal_commits_queued_together_share_one_ltx_file() {
    let node = Node::start(true);
    let path = node.db("burst.db");
    let conn = Connection::open(&path).unwrap();
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch("PRAGMA synchronous=NORMAL; CREATE TABLE t(x INTEGER PRIMARY KEY, v TEXT);").unwrap();
    conn.execute("INSERT INTO t(v) VALUES ('warm-up')", []).unwrap();
    let before = node.ltx_count_when("burst.db", 3);
    assert_eq!(before, 3, "WAL switch, CREATE TABLE, first insert");
    let fp = node.root.join("failpoints");
    std::fs::write(fp.join("ltx-write.arm"), b"").unwrap();
    conn.execute("INSERT INTO t(v) VALUES ('wakes the writer')", []).unwrap();
    assert!(wait_for_file(&fp.join("ltx-write.reached")), "the writer reached its failpoint");
    for i in 0..20 {
        conn.execute("INSERT INTO t(v) VALUES (?1)", [format!("queued {i}")]).unwrap();
    }
    std::fs::write(fp.join("ltx-write.release"), b"").unwrap();
    drop(conn); // the last connection checkpoints: the backing file is then the database
    let txs = before + 21;
    assert_chain_matches_database(&node, "burst.db", txs);
    let files = node.ltx_files("burst.db");
    let last = &files.last().unwrap().0;
    assert_eq!((last.min_txid, last.max_txid), (before as u64 + 1, txs as u64), "one file for the 21 queued commits");
    assert!(last.wal_offset > 0 && last.wal_size > 0, "it names the WAL range its commits came from");
    let node = node.restart(true);
    assert_chain_matches_database(&node, "burst.db", txs);
    let conn = Connection::open(node.db("burst.db")).unwrap();
    let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 22);
}

/// Goal: after kill -9, WAL commits whose LTX were still in memory are rebuilt from the WAL
/// after a merged LTX file (the rebuild starts where that file's WAL range ends), and the chain
/// and the database agree. Method: a burst of 8 commits queued behind the held writer becomes
/// one file; the writer is held again and 6 more commit (their LTX only in memory); kill -9.
#[test]
fn wal_commits_after_a_merged_ltx_file_are_rebuilt_after_kill9() {
    let node = Node::start(true);
    let path = node.db("rebuild.db");
    let conn = Connection::open(&path).unwrap();
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch("PRAGMA synchronous=NORMAL; CREATE TABLE t(x INTEGER PRIMARY KEY, v TEXT);").unwrap();
    conn.execute("INSERT INTO t(v) VALUES ('warm-up')", []).unwrap();
    assert_eq!(node.ltx_count_when("rebuild.db", 3), 3);
    let fp = node.root.join("failpoints");
    let hold_writer = |what: &str| {
        std::fs::write(fp.join("ltx-write.arm"), b"").unwrap();
        conn.execute("INSERT INTO t(v) VALUES (?1)", [format!("{what}: wakes the writer")]).unwrap();
        assert!(wait_for_file(&fp.join("ltx-write.reached")), "the writer reached its failpoint");
        std::fs::remove_file(fp.join("ltx-write.reached")).unwrap();
    };
    hold_writer("burst");
    for i in 0..7 {
        conn.execute("INSERT INTO t(v) VALUES (?1)", [format!("burst {i}")]).unwrap();
    }
    std::fs::write(fp.join("ltx-write.release"), b"").unwrap();
    assert_eq!(node.ltx_count_when("rebuild.db", 11), 11);
    let files = node.ltx_files("rebuild.db");
    let merged = &files.last().unwrap().0;
    assert_eq!((merged.min_txid, merged.max_txid), (4, 11), "the burst is one file");
    hold_writer("in memory");
    for i in 0..5 {
        conn.execute("INSERT INTO t(v) VALUES (?1)", [format!("in memory {i}")]).unwrap();
    }
    assert_eq!(node.ltx_count("rebuild.db"), 11, "the last 6 LTX are only in memory");
    // Killed with the connection open (its close would checkpoint the WAL and sync everything).
    let node = node.kill9_and_restart(true);
    drop(conn);
    assert_chain_matches_database(&node, "rebuild.db", 17);
    let conn = Connection::open(node.db("rebuild.db")).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 15);
    let files = node.ltx_files("rebuild.db");
    assert_eq!((files[files.len() - 2].0.min_txid, files[files.len() - 2].0.max_txid), (4, 11), "the merged file kept");
    assert_eq!((files[files.len() - 1].0.min_txid, files[files.len() - 1].0.max_txid), (12, 17), "one LTX rebuilt from the WAL");
}

fn journal_mode_round_trip(mode: &str) {
    let node = Node::start(true);
    let path = node.db("app.db");
    let conn = Connection::open(&path).unwrap();
    let got: String = conn
        .query_row(&format!("PRAGMA journal_mode={mode}"), [], |r| r.get(0))
        .unwrap();
    assert_eq!(got, mode.to_lowercase());
    // Switching an empty database to WAL writes its header (bytes 18/19 = 2) in a rollback-journal
    // transaction: that is a commit too.
    let mut txs = usize::from(mode == "WAL");
    assert_eq!(node.ltx_count_when("app.db", txs), txs);
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    txs += 1;
    for i in 0..5 {
        conn.execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i}")])
            .unwrap();
        txs += 1;
    }
    assert_eq!(node.ltx_count_when("app.db", txs), txs);

    // A rolled-back transaction leaves no LTX.
    conn.execute_batch("BEGIN; INSERT INTO t(v) VALUES ('gone'); ROLLBACK;")
        .unwrap();
    assert_eq!(
        node.ltx_count_when("app.db", txs),
        txs,
        "ROLLBACK must not produce an LTX"
    );

    // A bigger transaction (several pages) and the sqlite3 CLI in another process.
    conn.execute_batch("BEGIN; WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<300) INSERT INTO t(v) SELECT hex(randomblob(64)) FROM c; COMMIT;").unwrap();
    txs += 1;
    // WAL: a checkpoint that truncates the WAL, then one that only restarts it (new salts, stale
    // frames left behind); both must keep the chain going. No-ops in rollback-journal modes.
    conn.execute_batch(
        "PRAGMA wal_checkpoint(TRUNCATE); INSERT INTO t(v) VALUES ('after truncate');",
    )
    .unwrap();
    conn.execute_batch(
        "PRAGMA wal_checkpoint(RESTART); INSERT INTO t(v) VALUES ('after restart');",
    )
    .unwrap();
    txs += 2;
    assert_eq!(node.ltx_count_when("app.db", txs), txs);
    drop(conn);
    sqlite3(&path, &format!("PRAGMA journal_mode={mode}; INSERT INTO t(v) VALUES ('cli 1'); INSERT INTO t(v) VALUES ('cli 2');"));
    txs += 2;
    let out = sqlite3(&path, "SELECT count(*) FROM t; PRAGMA integrity_check;");
    assert_eq!(out, "309\nok\n");
    if mode == "WAL" {
        // Every connection is closed: SQLite checkpointed and removed the WAL.
        assert!(
            !node.db("app.db-wal").exists(),
            "WAL removed after the last connection closed"
        );
    }
    assert_chain_matches_database(&node, "app.db", txs);
}

#[test]
fn delete_mode_commits_become_an_ltx_chain() {
    journal_mode_round_trip("DELETE");
}

#[test]
fn truncate_mode_commits_become_an_ltx_chain() {
    journal_mode_round_trip("TRUNCATE");
}

#[test]
fn persist_mode_commits_become_an_ltx_chain() {
    journal_mode_round_trip("PERSIST");
}

#[test]
fn wal_mode_commits_become_an_ltx_chain() {
    journal_mode_round_trip("WAL");
}

fn two_writer_processes(mode: &str) {
    let node = Node::start(true);
    let path = node.db("app.db");
    sqlite3(
        &path,
        &format!("PRAGMA journal_mode={mode}; CREATE TABLE t(id INTEGER PRIMARY KEY, w INTEGER);"),
    );
    let per_writer = 100;
    let script = |w: u32| {
        let mut s = String::from(".timeout 20000\n");
        for _ in 0..per_writer {
            s.push_str(&format!(
                "INSERT INTO t(w) VALUES ({w});\nSELECT count(*) FROM t WHERE w = {w};\n"
            ));
        }
        s
    };
    let writers: Vec<_> = (1..=2)
        .map(|w| {
            let mut child = Command::new("sqlite3")
                .arg(&path)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let text = script(w);
            std::thread::spawn(move || {
                use std::io::Write;
                stdin.write_all(text.as_bytes()).unwrap();
            });
            child
        })
        .collect();
    for child in writers {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("malformed"), "{stderr}");
        assert!(!stderr.contains("locking protocol"), "{stderr}");
        assert!(
            out.status.success() && stderr.is_empty(),
            "writer failed: {stderr}"
        );
    }
    let out = sqlite3(
        &path,
        "SELECT w, count(*) FROM t GROUP BY w ORDER BY w; PRAGMA integrity_check;",
    );
    assert_eq!(out, format!("1|{per_writer}\n2|{per_writer}\nok\n"));
    let setup = 1 + usize::from(mode == "WAL");
    assert_chain_matches_database(&node, "app.db", setup + 2 * per_writer);
}

#[test]
fn two_writer_processes_delete_mode() {
    two_writer_processes("DELETE");
}

#[test]
fn two_writer_processes_wal_mode() {
    two_writer_processes("WAL");
}

#[test]
fn replica_refuses_writes_and_serves_reads() {
    let node = Node::start(true);
    let path = node.db("app.db");
    sqlite3(&path, "CREATE TABLE t(x); INSERT INTO t VALUES (1);");
    let pos_before = std::fs::read_to_string(node.db("app.db-pos")).unwrap();
    let node = node.restart(false);
    // The primary (http://127.0.0.1:1) is unreachable: `.primary` exists only while connected.
    assert!(!node.mnt.join(".primary").exists());
    let out = Command::new("sqlite3")
        .arg(&path)
        .arg("INSERT INTO t VALUES (2);")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("attempt to write a readonly database"),
        "{stderr}"
    );
    assert_eq!(sqlite3(&path, "SELECT count(*) FROM t;"), "1\n");
    assert_eq!(
        std::fs::read_to_string(node.db("app.db-pos")).unwrap(),
        pos_before
    );
    assert_eq!(node.ltx_count_when("app.db", 2), 2);
}

#[test]
fn primary_has_no_primary_file_and_zero_lag() {
    let node = Node::start(true);
    assert!(!node.mnt.join(".primary").exists());
    assert_eq!(
        std::fs::read_to_string(node.mnt.join(".lag")).unwrap(),
        "+000000000\n"
    );
}

#[test]
fn bad_config_mounts_nothing() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.yml");
    let mnt = dir.path().join("data/mnt");
    std::fs::write(
        &config,
        format!(
            "fuse:\n  dir: {}\ndata:\n  dir: {}\nlease:\n  type: static\n",
            mnt.display(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ltxfs"))
        .arg("mount")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fuse.dir"), "{stderr}");
    assert!(!mnt.exists(), "nothing created or mounted");
}

#[test]
fn mount_runs_a_command_and_exits_with_its_code() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ltxfs.yml");
    let mnt = dir.path().join("mnt");
    std::fs::write(
        &config,
        format!(
            "fuse:\n  dir: {}\ndata:\n  dir: {}\nhttp:\n  addr: 127.0.0.1:0\nlease:\n  type: static\n",
            mnt.display(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let script = format!(
        "sqlite3 {}/x.db 'CREATE TABLE t(x)' && test -f {}/x.db-pos && exit 7",
        mnt.display(),
        mnt.display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ltxfs"))
        .arg("mount")
        .arg("--config")
        .arg(&config)
        .args(["--", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(mnt.to_str().unwrap()),
        "unmounted after the command exited"
    );
}

/// Regenerates `core/tests/data/<mode>.ops`: every commit-detector input of a fixed workload,
/// recorded through the real mount. Run with `cargo test -p node --test fuse_sqlite -- --ignored`
/// after changing what the FUSE layer feeds the detector; core's `recorded_sqlite_runs` replays them.
#[test]
#[ignore = "regenerates committed fixtures; run by hand"]
fn record_detector_fixtures() {
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/data");
    std::fs::create_dir_all(&out_dir).unwrap();
    for mode in ["DELETE", "TRUNCATE", "PERSIST", "WAL"] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let record = root.join("ops");
        let node = Node {
            mnt: root.join("mnt"),
            data: root.join("data"),
            root,
            _dir: dir,
            child: None,
        }
        .launch(true, Some(&record));
        let conn = Connection::open(node.db("app.db")).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA page_size=512; PRAGMA journal_mode={mode};"
        ))
        .unwrap();
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        for i in 0..3 {
            conn.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
        }
        conn.execute_batch("BEGIN; INSERT INTO t VALUES ('rolled back'); ROLLBACK;")
            .unwrap();
        conn.execute("INSERT INTO t VALUES (?1)", [99]).unwrap();
        drop(conn);
        let expected = 5 + usize::from(mode == "WAL");
        assert_eq!(node.ltx_count_when("app.db", expected), expected);
        let text = std::fs::read_to_string(record.join("app.db.ops")).unwrap();
        let header = format!(
            "# ltxfs detector recording: journal_mode={mode}, page_size=512; PRAGMA, CREATE TABLE, 3 INSERTs,\n\
             # a ROLLBACK, 1 INSERT, close. Expected commits: {expected}.\n"
        );
        std::fs::write(
            out_dir.join(format!("{}.ops", mode.to_lowercase())),
            header + &text,
        )
        .unwrap();
    }
}

#[test]
fn two_writer_processes_truncate_mode() {
    two_writer_processes("TRUNCATE");
}

#[test]
fn two_writer_processes_persist_mode() {
    two_writer_processes("PERSIST");
}

#[test]
fn no_arguments_mounts_the_embedded_default_and_sigint_unmounts() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ltxfs"))
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut text = String::new();
    for _ in 0..4 {
        text.push_str(&lines.next().unwrap().unwrap());
        text.push('\n');
    }
    assert!(
        text.contains("primary node mounted at ./ltxfs/mnt"),
        "{text}"
    );
    assert!(text.contains("sqlite3 ./ltxfs/mnt/app.db"), "{text}");
    let mnt = dir.path().join("ltxfs/mnt");
    assert_eq!(
        sqlite3(&mnt.join("app.db"), "CREATE TABLE t(x); SELECT 1;"),
        "1\n"
    );
    assert!(
        dir.path()
            .join("ltxfs/data/dbs/app.db/ltx")
            .read_dir()
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".ltx"))
            .count()
            == 1
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    assert!(child.wait().unwrap().success());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(mnt.to_str().unwrap()),
        "unmounted on SIGINT"
    );
}

/// The CPUs the node's FUSE thread may run on (`Cpus_allowed_list` of the thread `fuser-0`).
fn fuse_thread_cpus(node: &Node) -> String {
    let pid = node.child.as_ref().expect("running").id();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let dir = task.path();
        if std::fs::read_to_string(dir.join("comm")).unwrap_or_default().trim() == "fuser-0" {
            let status = std::fs::read_to_string(dir.join("status")).unwrap();
            let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")).expect("Cpus_allowed_list");
            return line["Cpus_allowed_list:".len()..].trim().to_string();
        }
    }
    panic!("no fuser-0 thread in ltxfs {pid}");
}

#[test]
fn the_fuse_thread_follows_the_writing_thread_to_its_cpu() {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let node = Node::start(true);
    let db = node.db("follow.db");
    let allowed = sched_getaffinity(Pid::from_raw(0)).unwrap();
    let cpus: Vec<usize> = (0..CpuSet::count()).filter(|&c| allowed.is_set(c).unwrap_or(false)).take(2).collect();
    assert!(!cpus.is_empty());
    std::thread::scope(|s| {
        s.spawn(|| {
            let conn = Connection::open(&db).unwrap();
            conn.pragma_update(None, "journal_mode", "wal").unwrap();
            conn.pragma_update(None, "synchronous", "normal").unwrap();
            conn.execute("create table t(x)", []).unwrap();
            for &cpu in &cpus {
                // This thread moves to `cpu`; its next writes (2 FUSE WRITEs per commit, the
                // FUSE thread looks at its caller every 64 requests) bring the FUSE thread along.
                let mut only = CpuSet::new();
                only.set(cpu).unwrap();
                sched_setaffinity(Pid::from_raw(0), &only).unwrap();
                for i in 0..300 {
                    conn.execute("insert into t values (?1)", [i]).unwrap();
                }
                assert_eq!(fuse_thread_cpus(&node), cpu.to_string(), "the FUSE thread did not follow its caller to CPU {cpu}");
            }
        });
    });
    assert_eq!(count_rows_of(&db), 300 * cpus.len() as i64);
}

fn count_rows_of(db: &Path) -> i64 {
    Connection::open(db).unwrap().query_row("select count(*) from t", [], |r| r.get(0)).unwrap()
}

/// WAL transactions of every shape keep the chain: larger than what the node keeps of a
/// transaction's writes (`WalTail`, compared with the file on every use in debug builds — these
/// tests), one that spilled frames into the WAL and rolled back (the next one overwrites them),
/// and ones that wrote a page twice past a small cache — SQLite then overwrites the first frame
/// in place and rewrites the frames' checksums after the commit frame, so the commit is
/// complete only at that last header. (Before this test the node missed such a commit — the
/// kernel keeps the locks, so no lock release told it — and exited 99 at the next one.)
#[test]
fn wal_commits_of_every_shape_keep_the_chain() {
    let node = Node::start(true);
    let path = node.db("shapes.db");
    let conn = Connection::open(&path).unwrap();
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let mut txs = 1; // the switch to WAL
    conn.execute_batch("PRAGMA cache_size=8; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)").unwrap();
    txs += 1;
    // ~6 MiB in one transaction: more than the node keeps of a transaction's writes.
    conn.execute_batch("WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<1500) INSERT INTO t(v) SELECT randomblob(4000) FROM c").unwrap();
    txs += 1;
    // A small cache makes SQLite spill frames into the WAL before the end; then roll back.
    conn.execute_batch("BEGIN; WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<200) INSERT INTO t(v) SELECT randomblob(4000) FROM c; ROLLBACK;").unwrap();
    for i in 0..20 {
        conn.execute("INSERT INTO t(v) VALUES (?1)", [vec![i as u8; 100]]).unwrap();
        txs += 1;
    }
    // One transaction that changes the same rows again and again past its cache.
    conn.execute_batch("BEGIN; UPDATE t SET v = randomblob(3000) WHERE id <= 100; UPDATE t SET v = randomblob(3000) WHERE id <= 100; UPDATE t SET v = randomblob(2000) WHERE id <= 50; COMMIT;").unwrap();
    txs += 1;
    conn.execute_batch("PRAGMA wal_checkpoint(RESTART); INSERT INTO t(v) VALUES (x'01');").unwrap();
    txs += 1;
    let count: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(count, 1521);
    assert_eq!(node.ltx_count_when("shapes.db", txs), txs);
    drop(conn);
    assert_eq!(sqlite3(&path, "PRAGMA integrity_check;"), "ok\n");
    assert_chain_matches_database(&node, "shapes.db", txs);
}

/// More WAL shapes through one connection: `auto_vacuum=FULL` (commits that shrink the file),
/// a savepoint rolled back after its pages spilled, `VACUUM`, `journal_size_limit` with frequent
/// automatic checkpoints, and `locking_mode=EXCLUSIVE` (no shared-memory WAL index at all).
#[test]
fn wal_vacuum_savepoints_and_exclusive_locking_keep_the_chain() {
    let node = Node::start(true);
    let path = node.db("more.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA auto_vacuum=FULL;").unwrap();
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch("PRAGMA cache_size=8; PRAGMA journal_size_limit=65536; PRAGMA wal_autocheckpoint=50; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)").unwrap();
    conn.execute_batch("WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<800) INSERT INTO t(v) SELECT randomblob(3000) FROM c").unwrap();
    // Savepoint rolled back after spilling, then released.
    conn.execute_batch("BEGIN; SAVEPOINT a; UPDATE t SET v = randomblob(3500) WHERE id <= 300; ROLLBACK TO a; UPDATE t SET v = randomblob(100) WHERE id <= 20; RELEASE a; COMMIT;").unwrap();
    // Shrink with auto_vacuum (the commit truncates the database).
    conn.execute_batch("DELETE FROM t WHERE id > 100;").unwrap();
    conn.execute_batch("VACUUM;").unwrap();
    for i in 0..30 {
        conn.execute("INSERT INTO t(v) VALUES (?1)", [vec![i as u8; 50]]).unwrap();
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    conn.execute_batch("PRAGMA locking_mode=EXCLUSIVE; BEGIN; UPDATE t SET v = randomblob(200) WHERE id <= 80; COMMIT; INSERT INTO t(v) VALUES (x'02');").unwrap();
    let count: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(count, 131);
    drop(conn);
    assert_eq!(sqlite3(&path, "PRAGMA integrity_check;"), "ok\n");
    let pos = std::fs::read_to_string(node.db("more.db-pos")).unwrap();
    let txs = usize::from_str_radix(&pos[..16], 16).unwrap();
    assert_chain_matches_database(&node, "more.db", txs);
}

/// Two `sqlite3` processes whose transactions spill past a tiny cache (so SQLite rewrites
/// frames and their checksums) take turns on one WAL: every transaction is recorded once, in
/// order. (Failed before the fix for rewritten commit-frame headers.)
#[test]
fn two_writer_processes_with_spilling_wal_transactions_keep_the_chain() {
    let node = Node::start(true);
    let path = node.db("two.db");
    sqlite3(&path, "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, w INTEGER, v BLOB);");
    let script = |w: u32| {
        let mut s = String::from(".timeout 30000\nPRAGMA cache_size=5;\n");
        for _ in 0..15 {
            s.push_str(&format!("BEGIN IMMEDIATE; WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<40) INSERT INTO t(w, v) SELECT {w}, randomblob(3000) FROM c; UPDATE t SET v = randomblob(2500) WHERE w = {w} AND id % 3 = 0; COMMIT;\n"));
        }
        s
    };
    let writers: Vec<_> = (1..=2).map(|w| {
        let mut child = Command::new("sqlite3").arg(&path).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let text = script(w);
        std::thread::spawn(move || { use std::io::Write; stdin.write_all(text.as_bytes()).unwrap(); });
        child
    }).collect();
    for child in writers {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(sqlite3(&path, "SELECT count(*) FROM t; PRAGMA integrity_check;"), "1200\nok\n");
    let pos = std::fs::read_to_string(node.db("two.db-pos")).unwrap();
    let txs = usize::from_str_radix(&pos[..16], 16).unwrap();
    assert_eq!(txs, 2 + 30, "the switch to WAL, the table, 30 transactions");
    assert_chain_matches_database(&node, "two.db", txs);
}

/// A transaction whose pages spilled past a tiny cache and that then rolls back (SQLite plays the
/// journal back into the database file before it finalizes the journal) produces no LTX; commits
/// around it keep the chain. (In the rollback-journal modes the playback and the journal's end
/// look like a commit: before the fix the node recorded an LTX of the restored pages.)
fn spilled_rollback_round_trip(mode: &str) {
    let node = Node::start(true);
    let path = node.db("spill.db");
    let conn = Connection::open(&path).unwrap();
    let got: String = conn.query_row(&format!("PRAGMA journal_mode={mode}"), [], |r| r.get(0)).unwrap();
    assert_eq!(got, mode.to_lowercase());
    let mut txs = usize::from(mode == "WAL"); // switching to WAL is a commit
    conn.execute_batch("PRAGMA cache_size=5; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)").unwrap();
    txs += 1;
    conn.execute_batch("WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<300) INSERT INTO t(v) SELECT randomblob(3000) FROM c").unwrap();
    txs += 1;
    conn.execute_batch("BEGIN; UPDATE t SET v = randomblob(3500) WHERE id <= 200; ROLLBACK;").unwrap();
    conn.execute_batch("BEGIN; SAVEPOINT a; UPDATE t SET v = randomblob(3500) WHERE id <= 200; ROLLBACK TO a; UPDATE t SET v = x'00' WHERE id <= 10; RELEASE a; COMMIT;").unwrap();
    txs += 1;
    for i in 0..5 {
        conn.execute("INSERT INTO t(v) VALUES (?1)", [vec![i as u8; 50]]).unwrap();
        txs += 1;
    }
    let count: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(count, 305);
    drop(conn);
    assert_eq!(sqlite3(&path, "PRAGMA integrity_check;"), "ok\n");
    assert_eq!(node.ltx_count_when("spill.db", txs), txs, "one LTX per commit, none for the rollback");
    assert_chain_matches_database(&node, "spill.db", txs);
}

#[test]
fn spilled_rollback_produces_no_ltx_delete_mode() {
    spilled_rollback_round_trip("DELETE");
}

#[test]
fn spilled_rollback_produces_no_ltx_truncate_mode() {
    spilled_rollback_round_trip("TRUNCATE");
}

#[test]
fn spilled_rollback_produces_no_ltx_persist_mode() {
    spilled_rollback_round_trip("PERSIST");
}

#[test]
fn spilled_rollback_produces_no_ltx_wal_mode() {
    spilled_rollback_round_trip("WAL");
}

/// Scheduling policy (`/proc/<pid>/task/<tid>/stat` field 41: 0 SCHED_OTHER, 5 SCHED_IDLE) of
/// every thread of process `pid`, by thread name.
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let name = stat[stat.find('(').unwrap() + 1..stat.rfind(')').unwrap()].to_string();
        // After ')' come fields 3, 4, …: field 41 is the 39th of them.
        let policy = stat[stat.rfind(')').unwrap() + 1..].split_ascii_whitespace().nth(38).unwrap().parse().unwrap();
        out.push((name, policy));
    }
    out
}

/// Goal: `fuse.idle-priority` (default on) puts the FUSE thread and the background LTX writer at
/// SCHED_IDLE, and no other thread of the node — the runtime, the guard, threads the FUSE thread
/// started (lock opener, blocking pool) must not inherit it. Without the privilege to switch back
/// (not root) the node keeps every thread at SCHED_OTHER.
#[test]
fn the_fuse_thread_and_the_ltx_writer_run_at_idle_priority_and_nothing_else_does() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_IDLE: u32 = 5;
    let node = Node::start(true);
    let conn = Connection::open(node.db("idle.db")).unwrap();
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch("PRAGMA synchronous=NORMAL; CREATE TABLE t(x INTEGER PRIMARY KEY);").unwrap();
    for i in 0..50 {
        conn.execute("INSERT INTO t(x) VALUES (?1)", [i]).unwrap();
    }
    // The last commit's LTX reached the writer: the writer thread exists.
    assert_eq!(node.ltx_count_when("idle.db", 52), 52);
    let pid = node.child.as_ref().unwrap().id();
    let threads = thread_policies(pid);
    let policy_of = |name: &str| threads.iter().filter(|(n, _)| n == name).map(|(_, p)| *p).collect::<Vec<_>>();
    let privileged = nix::unistd::geteuid().is_root();
    let idle = if privileged { SCHED_IDLE } else { SCHED_OTHER };
    assert_eq!(policy_of("fuser-0"), vec![idle], "the FUSE thread: {threads:?}");
    assert_eq!(policy_of("ltxfs-ltx-write"), vec![idle], "the LTX writer: {threads:?}");
    let others: Vec<_> = threads.iter().filter(|(n, _)| n != "fuser-0" && n != "ltxfs-ltx-write").collect();
    assert!(others.len() >= 3, "runtime threads and the main thread: {threads:?}");
    assert!(others.iter().all(|(_, p)| *p == SCHED_OTHER), "every other thread at SCHED_OTHER: {threads:?}");
    if privileged {
        assert_eq!(policy_of("ltxfs-fuse-guar"), vec![SCHED_OTHER], "the guard runs: {threads:?}");
    }
}
