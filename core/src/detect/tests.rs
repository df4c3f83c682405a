use super::locks::LockKind;
use super::wal::tests::build_wal;
use super::*;

const PAGE: u32 = 4096;

fn db_header(page_size: u32, commit: u32, wal: bool) -> Vec<u8> {
    let mut head = vec![0u8; 100];
    head[..16].copy_from_slice(b"SQLite format 3\0");
    let raw = if page_size == 65536 {
        1u16
    } else {
        page_size as u16
    };
    head[16..18].copy_from_slice(&raw.to_be_bytes());
    let version = if wal { 2 } else { 1 };
    head[18] = version;
    head[19] = version;
    head[28..32].copy_from_slice(&commit.to_be_bytes());
    head
}

fn journal_header(magic: bool, page_size: u32) -> Vec<u8> {
    let mut head = vec![0u8; 100];
    if magic {
        head[..8].copy_from_slice(&JOURNAL_MAGIC);
    }
    head[20..24].copy_from_slice(&512u32.to_be_bytes());
    head[24..28].copy_from_slice(&page_size.to_be_bytes());
    head
}

fn begin_journal(d: &mut Detector) {
    let header = journal_header(false, PAGE);
    assert_eq!(
        d.apply(Op::JournalWrite {
            offset: 0,
            len: 512,
            head: &header
        }),
        Ok(None)
    );
    // A page record, then the sync that writes the magic.
    assert_eq!(
        d.apply(Op::JournalWrite {
            offset: 512,
            len: 4100,
            head: &[0, 0, 0, 1]
        }),
        Ok(None)
    );
}

fn sync_journal(d: &mut Detector) {
    let mut magic = JOURNAL_MAGIC.to_vec();
    magic.extend_from_slice(&1u32.to_be_bytes());
    assert_eq!(
        d.apply(Op::JournalWrite {
            offset: 0,
            len: 12,
            head: &magic
        }),
        Ok(None)
    );
}

fn write_pages(d: &mut Detector, commit: u32, pgnos: &[u32]) {
    for &pgno in pgnos {
        let head = if pgno == 1 {
            db_header(PAGE, commit, false)
        } else {
            vec![7u8; 100]
        };
        let offset = u64::from(pgno - 1) * u64::from(PAGE);
        assert_eq!(
            d.apply(Op::DbWrite {
                offset,
                len: u64::from(PAGE),
                head: &head
            }),
            Ok(None)
        );
    }
}

fn rollback_commit(commit: u32, pgnos: &[u32]) -> Event {
    Event::Committed(Commit {
        page_size: PAGE,
        commit,
        pages: pgnos
            .iter()
            .map(|&pgno| DirtyPage {
                pgno,
                wal_offset: None,
            })
            .collect(),
        wal: None,
    })
}

#[test]
fn delete_mode_commit_on_journal_unlink() {
    let mut d = Detector::new(None);
    begin_journal(&mut d);
    assert!(d.in_journal_transaction());
    sync_journal(&mut d);
    write_pages(&mut d, 2, &[2, 1]);
    assert_eq!(
        d.apply(Op::JournalUnlink),
        Ok(Some(rollback_commit(2, &[1, 2])))
    );
    assert!(!d.in_journal_transaction());
    assert_eq!(d.commit(), 2);
    // Deleting a journal outside a transaction is no commit.
    assert_eq!(d.apply(Op::JournalUnlink), Ok(None));
}

#[test]
fn truncate_mode_commit_on_truncate_to_zero_only() {
    let mut d = Detector::new(Some(DbHeader {
        page_size: PAGE,
        commit: 3,
        wal_mode: false,
    }));
    begin_journal(&mut d);
    sync_journal(&mut d);
    write_pages(&mut d, 3, &[1, 3]);
    assert_eq!(d.apply(Op::JournalTruncate { size: 4096 }), Ok(None));
    assert_eq!(
        d.apply(Op::JournalTruncate { size: 0 }),
        Ok(Some(rollback_commit(3, &[1, 3])))
    );
}

#[test]
fn persist_mode_commit_on_zeroed_header() {
    let mut d = Detector::new(None);
    for round in 1..=2u32 {
        begin_journal(&mut d);
        sync_journal(&mut d);
        write_pages(&mut d, round + 1, &[1, round + 1]);
        let zeros = [0u8; 28];
        assert_eq!(
            d.apply(Op::JournalWrite {
                offset: 0,
                len: 28,
                head: &zeros
            }),
            Ok(Some(rollback_commit(round + 1, &[1, round + 1]))),
            "round {round}"
        );
    }
}

#[test]
fn rollback_before_sync_produces_no_commit() {
    let mut d = Detector::new(None);
    begin_journal(&mut d);
    assert_eq!(
        d.apply(Op::JournalUnlink),
        Ok(None),
        "nothing written to the database"
    );
    begin_journal(&mut d);
    write_pages(&mut d, 2, &[2]);
    assert_eq!(
        d.apply(Op::JournalUnlink),
        Ok(Some(Event::RolledBack { pages: vec![2] }))
    );
}

#[test]
fn pages_beyond_a_shrunk_database_are_dropped() {
    let mut d = Detector::new(Some(DbHeader {
        page_size: PAGE,
        commit: 5,
        wal_mode: false,
    }));
    begin_journal(&mut d);
    sync_journal(&mut d);
    write_pages(&mut d, 5, &[5]);
    write_pages(&mut d, 3, &[1]);
    assert_eq!(
        d.apply(Op::JournalUnlink),
        Ok(Some(rollback_commit(3, &[1])))
    );
}

#[test]
fn database_writes_must_be_whole_aligned_pages() {
    let mut d = Detector::new(None);
    let head = [0u8; 10];
    assert_eq!(
        d.apply(Op::DbWrite {
            offset: 0,
            len: 10,
            head: &head
        }),
        Err(DetectError::PageSizeUnknown)
    );
    begin_journal(&mut d);
    assert_eq!(
        d.apply(Op::DbWrite {
            offset: 100,
            len: 4096,
            head: &head
        }),
        Err(DetectError::UnalignedDbWrite {
            offset: 100,
            len: 4096,
            page_size: PAGE
        })
    );
    assert_eq!(
        d.apply(Op::DbWrite {
            offset: 4096,
            len: 512,
            head: &head
        }),
        Err(DetectError::UnalignedDbWrite {
            offset: 4096,
            len: 512,
            page_size: PAGE
        })
    );
}

#[test]
fn database_write_without_journal_is_refused_unless_wal_checkpoint() {
    let mut d = Detector::new(Some(DbHeader {
        page_size: PAGE,
        commit: 2,
        wal_mode: false,
    }));
    let head = [0u8; 100];
    assert_eq!(
        d.apply(Op::DbWrite {
            offset: 4096,
            len: 4096,
            head: &head
        }),
        Err(DetectError::NoJournal)
    );
    let mut d = Detector::new(Some(DbHeader {
        page_size: PAGE,
        commit: 2,
        wal_mode: true,
    }));
    assert_eq!(
        d.apply(Op::DbWrite {
            offset: 4096,
            len: 4096,
            head: &head
        }),
        Ok(None)
    );
}

fn lock(
    d: &mut Detector,
    owner: u64,
    byte: u64,
    kind: LockKind,
) -> Result<Option<Event>, DetectError> {
    d.apply(Op::Lock {
        file: LockFile::Shm,
        owner,
        start: byte,
        end: byte,
        kind,
    })
}

fn unlock(d: &mut Detector, owner: u64, byte: u64) -> Result<Option<Event>, DetectError> {
    d.apply(Op::Unlock {
        file: LockFile::Shm,
        owner,
        start: byte,
        end: byte,
    })
}

/// Feeds the WAL writes SQLite would make for `wal[from..]`: header, then per frame a 24-byte
/// header write and a page write.
fn write_wal(d: &mut Detector, wal: &[u8], from: usize, page_size: usize) {
    let mut at = from;
    if at == 0 {
        assert_eq!(d.apply(Op::WalWrite { offset: 0, len: 32 }), Ok(None));
        at = 32;
    }
    while at < wal.len() {
        d.apply(Op::WalWrite {
            offset: at as u64,
            len: 24,
        })
        .unwrap();
        d.apply(Op::WalWrite {
            offset: at as u64 + 24,
            len: page_size as u64,
        })
        .unwrap();
        at += 24 + page_size;
    }
}

#[test]
fn wal_commit_on_write_lock_release() {
    let mut d = Detector::new(None);
    let frames = [(1, 0, 0x11), (2, 0, 0x22), (1, 2, 0x33)];
    let wal = build_wal(512, (5, 6), &frames);
    assert_eq!(lock(&mut d, 7, SHM_WRITE_LOCK, LockKind::Write), Ok(None));
    write_wal(&mut d, &wal, 0, 512);
    let len = wal.len() as u64;
    assert_eq!(
        unlock(&mut d, 7, SHM_WRITE_LOCK),
        Ok(Some(Event::ReadWal { offset: 0, len }))
    );
    let commits = d.wal_data(0, &wal).unwrap();
    let frame = 24 + 512u64;
    assert_eq!(
        commits,
        vec![Commit {
            page_size: 512,
            commit: 2,
            pages: vec![
                DirtyPage {
                    pgno: 1,
                    wal_offset: Some(32 + 2 * frame + 24)
                },
                DirtyPage {
                    pgno: 2,
                    wal_offset: Some(32 + frame + 24)
                },
            ],
            wal: Some(WalRange {
                offset: 32,
                size: 3 * frame,
                salt1: 5,
                salt2: 6
            }),
        }]
    );
    assert_eq!(d.commit(), 2);

    // The next transaction continues the chain: only the new frames are asked for.
    let frames2 = [(1, 0, 0x11), (2, 0, 0x22), (1, 2, 0x33), (3, 3, 0x44)];
    let wal2 = build_wal(512, (5, 6), &frames2);
    lock(&mut d, 8, SHM_WRITE_LOCK, LockKind::Write).unwrap();
    write_wal(&mut d, &wal2, wal.len(), 512);
    assert_eq!(
        unlock(&mut d, 8, SHM_WRITE_LOCK),
        Ok(Some(Event::ReadWal {
            offset: len,
            len: frame
        }))
    );
    assert_eq!(
        d.wal_data(0, &wal2[wal.len()..]),
        Err(DetectError::WalOffsetMismatch {
            given: 0,
            expected: len
        })
    );
    let commits = d.wal_data(len, &wal2[wal.len()..]).unwrap();
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0].commit, 3);
    assert_eq!(
        commits[0].pages,
        vec![DirtyPage {
            pgno: 3,
            wal_offset: Some(len + 24)
        }]
    );
}

#[test]
fn wal_rolled_back_frames_produce_nothing_and_are_overwritten() {
    let mut d = Detector::new(None);
    let committed = build_wal(512, (1, 1), &[(1, 1, 0xaa)]);
    lock(&mut d, 1, SHM_WRITE_LOCK, LockKind::Write).unwrap();
    write_wal(&mut d, &committed, 0, 512);
    unlock(&mut d, 1, SHM_WRITE_LOCK).unwrap();
    assert_eq!(d.wal_data(0, &committed).unwrap().len(), 1);

    // A spilled transaction without a commit frame, then rollback: nothing.
    let spilled = build_wal(512, (1, 1), &[(1, 1, 0xaa), (2, 0, 0xbb)]);
    lock(&mut d, 1, SHM_WRITE_LOCK, LockKind::Write).unwrap();
    write_wal(&mut d, &spilled, committed.len(), 512);
    let Ok(Some(Event::ReadWal { offset, .. })) = unlock(&mut d, 1, SHM_WRITE_LOCK) else {
        panic!("expected a WAL read");
    };
    assert_eq!(
        d.wal_data(offset, &spilled[offset as usize..]).unwrap(),
        vec![]
    );

    // The next transaction overwrites those frames from the last commit.
    let next = build_wal(512, (1, 1), &[(1, 1, 0xaa), (2, 2, 0xcc)]);
    lock(&mut d, 2, SHM_WRITE_LOCK, LockKind::Write).unwrap();
    write_wal(&mut d, &next, committed.len(), 512);
    let Ok(Some(Event::ReadWal { offset, .. })) = d.apply(Op::ReleaseOwner {
        file: LockFile::Shm,
        owner: 2,
    }) else {
        panic!("closing the shm releases the write lock");
    };
    let commits = d.wal_data(offset, &next[offset as usize..]).unwrap();
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0].commit, 2);
}

#[test]
fn wal_restart_rereads_header_and_ignores_stale_frames() {
    let mut d = Detector::new(None);
    let first = build_wal(512, (1, 1), &[(1, 1, 0xaa), (2, 2, 0xbb)]);
    lock(&mut d, 1, SHM_WRITE_LOCK, LockKind::Write).unwrap();
    write_wal(&mut d, &first, 0, 512);
    unlock(&mut d, 1, SHM_WRITE_LOCK).unwrap();
    assert_eq!(d.wal_data(0, &first).unwrap().len(), 2);

    // Restart with new salts: one frame, the old second frame stays in the file after it.
    let second = build_wal(512, (2, 2), &[(2, 2, 0xcc)]);
    let mut file = second.clone();
    file.extend_from_slice(&first[second.len()..]);
    lock(&mut d, 1, SHM_WRITE_LOCK, LockKind::Write).unwrap();
    write_wal(&mut d, &second, 0, 512);
    assert_eq!(
        unlock(&mut d, 1, SHM_WRITE_LOCK),
        Ok(Some(Event::ReadWal {
            offset: 0,
            len: second.len() as u64
        }))
    );
    let commits = d.wal_data(0, &file).unwrap();
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0].wal.map(|w| (w.salt1, w.offset)), Some((2, 32)));
}

#[test]
fn wal_commits_are_found_without_any_lock_operation() {
    // A shell that leaves POSIX locks to the kernel (node/src/fs.rs) feeds writes only and asks
    // for the unread WAL once a commit frame is written.
    let mut d = Detector::new(None);
    let wal = build_wal(512, (1, 1), &[(1, 0, 0xaa), (2, 2, 0xbb)]);
    write_wal(&mut d, &wal, 0, 512);
    let Some(Event::ReadWal { offset, len }) = d.unread_wal() else {
        panic!("written frames are unread");
    };
    assert_eq!((offset, len), (0, wal.len() as u64));
    let commits = d.wal_data(0, &wal).unwrap();
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0].commit, 2);
    assert_eq!(d.unread_wal(), None);
}

#[test]
fn wal_rewind_of_committed_frames_is_refused() {
    let mut d = Detector::new(None);
    let wal = build_wal(512, (1, 1), &[(1, 1, 0xaa)]);
    lock(&mut d, 1, SHM_WRITE_LOCK, LockKind::Write).unwrap();
    write_wal(&mut d, &wal, 0, 512);
    unlock(&mut d, 1, SHM_WRITE_LOCK).unwrap();
    d.wal_data(0, &wal).unwrap();
    lock(&mut d, 1, SHM_WRITE_LOCK, LockKind::Write).unwrap();
    assert_eq!(
        d.apply(Op::WalWrite {
            offset: 32,
            len: 24
        }),
        Err(DetectError::WalRewind {
            offset: 32,
            scanned: wal.len() as u64
        })
    );
}

#[test]
fn checkpoint_lock_refused_while_another_owner_writes() {
    let mut d = Detector::new(None);
    lock(&mut d, 1, SHM_WRITE_LOCK, LockKind::Write).unwrap();
    assert_eq!(
        lock(&mut d, 2, SHM_CKPT_LOCK, LockKind::Write),
        Err(DetectError::CheckpointDuringWrite { writer: 1 })
    );
    assert_eq!(lock(&mut d, 1, SHM_CKPT_LOCK, LockKind::Write), Ok(None));
    assert!(matches!(
        lock(&mut d, 2, SHM_WRITE_LOCK, LockKind::Write),
        Err(DetectError::Lock(locks::LockError::Conflict(_)))
    ));
}

#[test]
fn lock_release_without_wal_writes_asks_nothing() {
    let mut d = Detector::new(None);
    lock(&mut d, 1, SHM_WRITE_LOCK, LockKind::Write).unwrap();
    assert_eq!(unlock(&mut d, 1, SHM_WRITE_LOCK), Ok(None));
    let db = LockFile::Database;
    d.apply(Op::Lock {
        file: db,
        owner: 1,
        start: DB_SHARED_FIRST,
        end: DB_SHARED_FIRST + 509,
        kind: LockKind::Read,
    })
    .unwrap();
    assert_eq!(
        d.query_lock(
            db,
            2,
            DB_PENDING_BYTE,
            DB_SHARED_FIRST + 600,
            LockKind::Write
        )
        .map(|h| h.owner),
        Some(1)
    );
    assert_eq!(
        d.query_lock(db, 2, DB_RESERVED_BYTE, DB_RESERVED_BYTE, LockKind::Write),
        None
    );
}

#[test]
fn wal_commit_recorded_at_its_frame_write_then_rewound_when_refused() {
    let mut d = Detector::new(None);
    // tx1 = frame 1; tx2 = frames 2-3 (refused); tx3 = one frame written where tx2 was.
    let with_tx2 = build_wal(512, (3, 4), &[(1, 1, 0x11), (2, 0, 0x22), (1, 2, 0x23)]);
    let with_tx3 = build_wal(512, (3, 4), &[(1, 1, 0x11), (2, 2, 0x33)]);
    let frame = 24 + 512;
    let tx1_end = 32 + frame;
    lock(&mut d, 1, SHM_WRITE_LOCK, LockKind::Write).unwrap();
    write_wal(&mut d, &with_tx2[..tx1_end], 0, 512);
    assert_eq!(
        unlock(&mut d, 1, SHM_WRITE_LOCK).unwrap(),
        Some(Event::ReadWal {
            offset: 0,
            len: tx1_end as u64
        })
    );
    assert_eq!(d.wal_data(0, &with_tx2[..tx1_end]).unwrap().len(), 1);

    // tx2: the shell asks at its commit frame's write, before the unlock.
    lock(&mut d, 1, SHM_WRITE_LOCK, LockKind::Write).unwrap();
    write_wal(&mut d, &with_tx2, tx1_end, 512);
    let mark = d.wal_mark();
    let unread = Some(Event::ReadWal {
        offset: tx1_end as u64,
        len: (with_tx2.len() - tx1_end) as u64,
    });
    assert_eq!(d.unread_wal(), unread);
    assert_eq!(d.wal_data(tx1_end as u64, &with_tx2[tx1_end..]).unwrap().len(), 1);
    assert_eq!(d.unread_wal(), None, "nothing left for the unlock");
    // The node refused it: SQLite's write fails and the commit never becomes visible.
    d.rewind_wal(mark);
    assert_eq!(d.unread_wal(), unread, "tx2's frames are unread again");
    unlock(&mut d, 1, SHM_WRITE_LOCK).unwrap();

    // tx3 is written over tx2's first frame: not a rewind of committed frames.
    lock(&mut d, 1, SHM_WRITE_LOCK, LockKind::Write).unwrap();
    write_wal(&mut d, &with_tx3, tx1_end, 512);
    let mut file = with_tx3.clone();
    file.extend_from_slice(&with_tx2[with_tx3.len()..]);
    assert_eq!(unlock(&mut d, 1, SHM_WRITE_LOCK).unwrap(), unread);
    let commits = d.wal_data(tx1_end as u64, &file[tx1_end..]).unwrap();
    assert_eq!(commits.len(), 1, "tx2's stale frame does not continue the checksum chain");
    assert_eq!(commits[0].pages.len(), 1);
    assert_eq!(commits[0].pages[0].pgno, 2);
}
