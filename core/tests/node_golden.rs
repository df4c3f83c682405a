//! Golden output sequences (openraft style): feed one node inputs by hand and assert the exact
//! outputs it emits, for the lease, write path, replica apply, catch-up and retention rules.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ltxfs_core::catchup::SnapshotReason;
use ltxfs_core::chkindex::ChecksumIndex;
use ltxfs_core::ids::{ClusterId, DbName, Epoch, NodeId};
use ltxfs_core::ltx::{self, Header, Pos};
use ltxfs_core::msg::{DbPos, ErrorCode, Message, StreamMode};
use ltxfs_core::node::*;
use ltxfs_core::retention::RetentionPolicy;
use ltxfs_core::time::{Time, WallMs};

const PS: u32 = 512;
const CLUSTER: ClusterId = ClusterId(7);
const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);
const N3: NodeId = NodeId(3);
const E1: Epoch = Epoch(1);

fn db() -> DbName {
    DbName::new("a.db").unwrap()
}
fn ms(n: u64) -> Time {
    Time::from_millis(n)
}
fn drain(n: &mut Node) -> Vec<Output> {
    std::iter::from_fn(|| n.poll_output()).collect()
}
fn ev(e: Event) -> Output {
    Output::Event(e)
}
fn peers(ids: &[u64]) -> BTreeSet<NodeId> {
    ids.iter().map(|&i| NodeId(i)).collect()
}
fn dynamic(ids: &[u64]) -> Config {
    Config::new(CLUSTER, peers(ids), LeaseMode::Dynamic { candidate: true, clock_margin: Duration::from_secs(1) })
}
fn page(fill: u8) -> Vec<u8> {
    vec![fill; PS as usize]
}
fn commit_input(commit: u32, pages: &[(u32, u8)]) -> Input {
    let pages = pages.iter().map(|&(p, f)| (p, page(f))).collect();
    Input::LocalCommit(LocalCommit { db: db(), page_size: PS, commit, pages, wall: WallMs(1000), wal: None })
}
fn io_id(o: &Output) -> IoId {
    match o {
        Output::Io(c) => c.id,
        other => panic!("expected an I/O command, got {other:?}"),
    }
}
fn done(id: IoId) -> Input {
    Input::IoDone { id, result: Ok(IoOutcome::Done) }
}

/// Node 1 as a dynamic candidate in a 3-node cluster that acquired epoch 1 at t=0 (reply at
/// 100 ms) and finished recovery with empty answers.
fn primary_at_epoch_1(sync_replicas: u32) -> Node {
    let mut cfg = dynamic(&[2, 3]);
    cfg.sync_replicas = sync_replicas;
    let mut n = Node::new(cfg, N1, Time::ZERO);
    n.handle_timeout(Time::ZERO);
    drain(&mut n);
    n.handle_input(ms(100), Input::LeaseReply { id: LeaseRequestId(1), result: LeaseResult::Granted { epoch: E1, ttl: Duration::from_secs(10) } }).unwrap();
    drain(&mut n);
    for p in [N2, N3] {
        let msg = Message::PositionAnswer { epoch: E1, cluster_id: CLUSTER, positions: BTreeMap::new() };
        n.handle_input(ms(100), Input::Receive { from: p, msg }).unwrap();
        drain(&mut n);
    }
    assert!(n.is_writable(ms(100)));
    n
}

/// Registers `peer` as a follower at `pos` and drains.
fn follow(n: &mut Node, now: Time, peer: NodeId, pos: Option<Pos>) -> Vec<Output> {
    let positions = pos.map(|p| (db(), DbPos { epoch: E1, pos: p })).into_iter().collect();
    let msg = Message::StreamRequest { epoch: E1, cluster_id: CLUSTER, node_id: peer, mode: StreamMode::Follow, positions };
    n.handle_input(now, Input::Receive { from: peer, msg }).unwrap();
    drain(n)
}

/// Commits on a writable primary and completes the LTX write; returns the outputs after it.
fn commit_durably(n: &mut Node, now: Time, commit: u32, pages: &[(u32, u8)]) -> Vec<Output> {
    n.handle_input(now, commit_input(commit, pages)).unwrap();
    let out = drain(n);
    assert_eq!(out.len(), 1, "{out:?}");
    n.handle_input(now, done(io_id(&out[0]))).unwrap();
    drain(n)
}

#[test]
fn acquire_goes_candidate_then_recovering_then_primary() {
    let mut n = Node::new(dynamic(&[2, 3]), N1, Time::ZERO);
    assert_eq!(drain(&mut n), vec![]);
    assert_eq!(n.poll_timeout(), Some(Time::ZERO));
    n.handle_timeout(Time::ZERO);
    assert_eq!(
        drain(&mut n),
        vec![
            ev(Event::RoleChanged { role: Role::Candidate, epoch: Epoch::ZERO }),
            Output::Lease(LeaseRequest { id: LeaseRequestId(1), kind: LeaseKind::Acquire }),
        ]
    );
    n.handle_input(ms(100), Input::LeaseReply { id: LeaseRequestId(1), result: LeaseResult::Granted { epoch: E1, ttl: Duration::from_secs(10) } }).unwrap();
    let query = Message::PositionQuery { epoch: E1, cluster_id: CLUSTER };
    assert_eq!(
        drain(&mut n),
        vec![
            ev(Event::RoleChanged { role: Role::Recovering, epoch: E1 }),
            Output::Send { to: N2, msg: query.clone() },
            Output::Send { to: N3, msg: query },
        ]
    );
    // Deadline measured from when the request was sent (t=0), not from the reply (t=100ms).
    assert_eq!(n.lease_deadline(), Some(Time::from_secs(9)));
    n.handle_input(ms(150), commit_input(1, &[(1, 1)])).unwrap();
    assert_eq!(drain(&mut n), vec![ev(Event::WriteRejected { db: db(), reason: RejectReason::Recovering })]);
    for p in [N2, N3] {
        let msg = Message::PositionAnswer { epoch: E1, cluster_id: CLUSTER, positions: BTreeMap::new() };
        n.handle_input(ms(200), Input::Receive { from: p, msg }).unwrap();
    }
    assert_eq!(
        drain(&mut n),
        vec![ev(Event::RecoveryComplete { epoch: E1 }), ev(Event::RoleChanged { role: Role::Primary, epoch: E1 })]
    );
    assert!(n.is_writable(ms(200)));
}

#[test]
fn renew_at_a_third_of_ttl_extends_the_deadline_from_the_send_time() {
    let mut n = primary_at_epoch_1(0);
    let renew_at = Time::ZERO + Duration::from_secs(10) / 3;
    assert!(n.poll_timeout().unwrap() <= renew_at);
    n.handle_timeout(renew_at);
    let out: Vec<Output> = drain(&mut n).into_iter().filter(|o| matches!(o, Output::Lease(_))).collect();
    assert_eq!(out, vec![Output::Lease(LeaseRequest { id: LeaseRequestId(2), kind: LeaseKind::Renew { epoch: E1 } })]);
    // The reply comes late (t=8s): the deadline is sent_at + ttl - margin, not reply + ttl.
    n.handle_input(Time::from_secs(8), Input::LeaseReply { id: LeaseRequestId(2), result: LeaseResult::Granted { epoch: E1, ttl: Duration::from_secs(10) } }).unwrap();
    assert_eq!(drain(&mut n), vec![]);
    assert_eq!(n.lease_deadline(), Some(renew_at + Duration::from_secs(9)));
}

#[test]
fn lease_expiry_without_renewal_stops_writes_at_the_deadline() {
    let mut n = primary_at_epoch_1(0);
    let deadline = Time::from_secs(9);
    // Renewals are sent but never answered.
    n.handle_timeout(deadline - Duration::from_nanos(1));
    drain(&mut n);
    assert!(n.is_writable(deadline - Duration::from_nanos(1)));
    assert!(!n.is_writable(deadline));
    n.handle_input(deadline, commit_input(1, &[(1, 1)])).unwrap();
    assert_eq!(drain(&mut n), vec![ev(Event::WriteRejected { db: db(), reason: RejectReason::LeaseDeadline })]);
    n.handle_timeout(deadline);
    let out = drain(&mut n);
    assert_eq!(
        out,
        vec![
            ev(Event::SteppedDown { reason: StepDownReason::DeadlinePassed, epoch: E1 }),
            ev(Event::RoleChanged { role: Role::Replica, epoch: E1 }),
            Output::Lease(LeaseRequest { id: LeaseRequestId(3), kind: LeaseKind::Release { epoch: E1 } }),
        ]
    );
}

/// Goal: with a clock running 1 % slow and a slow acquire, the node stops writing before the
/// lease service's expiry in true time. Method: map node time to true time explicitly.
#[test]
fn lease_expiry_with_clock_drift_stays_inside_the_true_lease() {
    let drift = 0.99_f64; // node seconds per true second (slow clock: the dangerous direction)
    let true_of = |node: Time| node.as_nanos() as f64 / drift / 1e9;
    let mut n = Node::new(dynamic(&[]), N1, Time::ZERO);
    n.handle_timeout(Time::ZERO); // acquire sent at node 0 = true 0
    drain(&mut n);
    // The service handles it at true 0.5 s: the lease lasts until true 10.5 s. The reply reaches
    // the node at node time 2 s.
    let service_expiry_true = 0.5 + 10.0;
    n.handle_input(Time::from_secs(2), Input::LeaseReply { id: LeaseRequestId(1), result: LeaseResult::Granted { epoch: E1, ttl: Duration::from_secs(10) } }).unwrap();
    drain(&mut n);
    let deadline = n.lease_deadline().unwrap();
    assert_eq!(deadline, Time::from_secs(9));
    assert!(true_of(deadline) < service_expiry_true, "writes stop at true {} s", true_of(deadline));
    assert!(n.is_writable(deadline - Duration::from_millis(1)));
    assert!(!n.is_writable(deadline));
}

#[test]
fn renewal_refused_steps_down_and_pending_sync_commit_is_unknown() {
    let mut n = primary_at_epoch_1(1);
    follow(&mut n, ms(200), N2, None);
    let out = commit_durably(&mut n, ms(300), 1, &[(1, 1)]);
    assert!(out.iter().all(|o| !matches!(o, Output::Event(Event::Committed { .. }))), "{out:?}");
    let pos = n.db_pos(&db()).unwrap().pos;
    n.handle_timeout(Time::from_secs(4));
    let renew = drain(&mut n).into_iter().find_map(|o| match o {
        Output::Lease(r) => Some(r.id),
        _ => None,
    });
    n.handle_input(Time::from_secs(4), Input::LeaseReply { id: renew.unwrap(), result: LeaseResult::Lost }).unwrap();
    assert_eq!(
        drain(&mut n),
        vec![
            ev(Event::CommitOutcomeUnknown { db: db(), pos }),
            ev(Event::SteppedDown { reason: StepDownReason::LeaseLost, epoch: E1 }),
            ev(Event::RoleChanged { role: Role::Replica, epoch: E1 }),
        ]
    );
}

#[test]
fn sync_mode_waits_for_an_ack_and_times_out_to_unknown() {
    let mut n = primary_at_epoch_1(1);
    follow(&mut n, ms(200), N2, None);
    let out = commit_durably(&mut n, ms(300), 1, &[(1, 1)]);
    let pos1 = n.db_pos(&db()).unwrap().pos;
    assert!(matches!(&out[..], [Output::Send { to: N2, msg: Message::Ltx { .. } }]), "{out:?}");
    n.handle_input(ms(310), Input::Receive { from: N2, msg: Message::Ack { epoch: E1, db: db(), pos: pos1 } }).unwrap();
    assert_eq!(
        drain(&mut n),
        vec![ev(Event::ReplicaCaughtUp { peer: N2, db: db(), pos: pos1 }), ev(Event::Committed { db: db(), pos: pos1 })]
    );
    // A second commit is never acked: after sync_ack_timeout its outcome is unknown.
    commit_durably(&mut n, ms(400), 1, &[(1, 2)]);
    let pos2 = n.db_pos(&db()).unwrap().pos;
    let t = ms(400) + Duration::from_secs(10);
    n.handle_timeout(t);
    let out = drain(&mut n);
    assert!(out.contains(&ev(Event::CommitOutcomeUnknown { db: db(), pos: pos2 })), "{out:?}");
    assert!(!out.iter().any(|o| matches!(o, Output::Event(Event::Committed { .. }))));
}

#[test]
fn handoff_waits_for_the_target_then_hands_the_lease_over() {
    let mut n = primary_at_epoch_1(0);
    n.handle_input(ms(150), Input::PeerConnected { peer: N2 }).unwrap();
    assert_eq!(drain(&mut n), vec![]);
    follow(&mut n, ms(200), N2, None);
    commit_durably(&mut n, ms(300), 1, &[(1, 1)]);
    let pos = n.db_pos(&db()).unwrap().pos;
    n.handle_input(ms(400), Input::Handoff { to: N2 }).unwrap();
    assert_eq!(drain(&mut n), vec![], "target has not acked yet");
    n.handle_input(ms(400), commit_input(1, &[(1, 9)])).unwrap();
    assert_eq!(drain(&mut n), vec![ev(Event::WriteRejected { db: db(), reason: RejectReason::HandoffInProgress })]);
    n.handle_input(ms(410), Input::Receive { from: N2, msg: Message::Ack { epoch: E1, db: db(), pos } }).unwrap();
    assert_eq!(
        drain(&mut n),
        vec![
            ev(Event::ReplicaCaughtUp { peer: N2, db: db(), pos }),
            Output::Lease(LeaseRequest { id: LeaseRequestId(2), kind: LeaseKind::Handoff { epoch: E1, to: N2 } }),
        ]
    );
    n.handle_input(ms(420), Input::LeaseReply { id: LeaseRequestId(2), result: LeaseResult::Released }).unwrap();
    let out = drain(&mut n);
    assert_eq!(out[0], Output::Send { to: N2, msg: Message::Handoff { epoch: E1, to: N2 } });
    assert_eq!(out[1], ev(Event::SteppedDown { reason: StepDownReason::HandedOff, epoch: E1 }));
    assert_eq!(out[2], ev(Event::RoleChanged { role: Role::Replica, epoch: E1 }));
    assert!(matches!(&out[3], Output::Send { to: N2, msg: Message::StreamRequest { mode: StreamMode::Follow, .. } }), "{out:?}");
    assert_eq!(out.len(), 4);
    assert_eq!(n.upstream(), Some(N2));
}

// ----- replica side -----

/// An LTX for `db()`: `min..=max`, pre-apply at `pre`, pages on top of `index` (updated).
fn make_ltx(index: &mut ChecksumIndex, min: u64, pre: Pos, commit: u32, pages: &[(u32, u8)]) -> (Vec<u8>, Pos) {
    let pages: Vec<(u32, Vec<u8>)> = pages.iter().map(|&(p, f)| (p, page(f))).collect();
    let refs: Vec<(u32, &[u8])> = pages.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    let post = index.apply(commit, &refs).unwrap();
    let header = Header {
        page_size: PS,
        commit,
        min_txid: min,
        max_txid: min,
        timestamp_ms: 5,
        pre_apply_checksum: if min == 1 { 0 } else { pre.checksum },
        ..Header::default()
    };
    (ltx::encode_to_vec(header, refs, post).unwrap(), Pos { txid: min, checksum: post })
}

fn ltx_msg(epoch: Epoch, bytes: &[u8]) -> Input {
    Input::Receive { from: N1, msg: Message::Ltx { epoch, db: db(), offset: 0, total_bytes: bytes.len() as u64, bytes: bytes.to_vec() } }
}

/// Node 2, replica of the static primary node 1.
fn static_replica() -> Node {
    let mut n = Node::new(Config::new(CLUSTER, peers(&[1]), LeaseMode::Static { primary: N1 }), N2, Time::ZERO);
    n.handle_input(ms(1), Input::PeerConnected { peer: N1 }).unwrap();
    let out = drain(&mut n);
    let expected = Message::StreamRequest { epoch: E1, cluster_id: CLUSTER, node_id: N2, mode: StreamMode::Follow, positions: BTreeMap::new() };
    assert_eq!(out, vec![Output::Send { to: N1, msg: expected }]);
    n
}

/// Feeds one LTX and completes its write and apply; returns all outputs.
fn apply(n: &mut Node, input: Input) -> Vec<Output> {
    n.handle_input(ms(10), input).unwrap();
    let mut all = drain(n);
    let write = all.iter().rev().find(|o| matches!(o, Output::Io(IoCommand { kind: IoKind::WriteLtx { .. }, .. }))).cloned();
    let Some(write) = write else { return all };
    n.handle_input(ms(10), done(io_id(&write))).unwrap();
    let out = drain(n);
    n.handle_input(ms(10), done(io_id(&out[0]))).unwrap();
    all.extend(out);
    all.extend(drain(n));
    all
}

#[test]
fn replica_applies_in_order_and_acks() {
    let mut n = static_replica();
    let mut index = ChecksumIndex::new(PS).unwrap();
    let (snap, p1) = make_ltx(&mut index, 1, Pos::ZERO, 2, &[(1, 1), (2, 2)]);
    let out = apply(&mut n, ltx_msg(E1, &snap));
    assert!(matches!(&out[0], Output::Io(IoCommand { kind: IoKind::WriteLtx { min_txid: 1, max_txid: 1, fsync: true, .. }, .. })), "{out:?}");
    assert!(matches!(&out[1], Output::Io(IoCommand { kind: IoKind::ApplyPages { commit: 2, .. }, .. })), "{out:?}");
    assert_eq!(out[2..], [ev(Event::Applied { db: db(), pos: p1, from: N1 }), Output::Send { to: N1, msg: Message::Ack { epoch: E1, db: db(), pos: p1 } }]);
    let (inc, p2) = make_ltx(&mut index, 2, p1, 3, &[(2, 7), (3, 8)]);
    let out = apply(&mut n, ltx_msg(E1, &inc));
    assert_eq!(out[2..], [ev(Event::Applied { db: db(), pos: p2, from: N1 }), Output::Send { to: N1, msg: Message::Ack { epoch: E1, db: db(), pos: p2 } }]);
    assert_eq!(n.db_pos(&db()).unwrap().pos, p2);
    assert_eq!(n.index_checksum(&db()), Some(p2.checksum));
}

/// LTX that arrive while one is being written queue up; when it is applied, the queued ones
/// that continue it are merged into one LTX: one write (one fsync), one apply, one ack at the
/// newest position, and the database ends where applying them one by one would.
#[test]
fn a_replica_that_fell_behind_applies_its_queued_ltx_as_one() {
    let mut n = static_replica();
    let mut index = ChecksumIndex::new(PS).unwrap();
    let (snap, p1) = make_ltx(&mut index, 1, Pos::ZERO, 2, &[(1, 1), (2, 2)]);
    apply(&mut n, ltx_msg(E1, &snap));
    let (two, p2) = make_ltx(&mut index, 2, p1, 2, &[(2, 7)]);
    let (three, p3) = make_ltx(&mut index, 3, p2, 3, &[(1, 8), (3, 9)]);
    let (four, p4) = make_ltx(&mut index, 4, p3, 3, &[(3, 10)]);
    n.handle_input(ms(20), ltx_msg(E1, &two)).unwrap();
    let out = drain(&mut n);
    assert!(matches!(&out[..], [Output::Io(IoCommand { kind: IoKind::WriteLtx { min_txid: 2, max_txid: 2, .. }, .. })]), "{out:?}");
    let write_two = io_id(&out[0]);
    // Two more arrive while TXID 2 is being written: queued.
    n.handle_input(ms(21), ltx_msg(E1, &three)).unwrap();
    n.handle_input(ms(22), ltx_msg(E1, &four)).unwrap();
    assert_eq!(drain(&mut n), vec![]);
    n.handle_input(ms(23), done(write_two)).unwrap();
    let out = drain(&mut n);
    n.handle_input(ms(24), done(io_id(&out[0]))).unwrap();
    let out = drain(&mut n);
    assert_eq!(out[..2], [ev(Event::Applied { db: db(), pos: p2, from: N1 }), Output::Send { to: N1, msg: Message::Ack { epoch: E1, db: db(), pos: p2 } }]);
    // 3 and 4 as one file.
    let Some(Output::Io(IoCommand { id, kind: IoKind::WriteLtx { min_txid: 3, max_txid: 4, bytes, fsync: true, .. }, .. })) = out.get(2) else {
        panic!("one merged write expected: {out:?}")
    };
    let (header, pages, trailer) = ltx::decode_slice(bytes).unwrap();
    assert_eq!((header.pre_apply_checksum, trailer.post_apply_checksum, header.commit), (p2.checksum, p4.checksum, 3));
    assert_eq!(pages, vec![(1, page(8)), (3, page(10))], "the newest version of each page");
    assert_eq!(out.len(), 3, "{out:?}");
    n.handle_input(ms(25), done(*id)).unwrap();
    let out = drain(&mut n);
    n.handle_input(ms(26), done(io_id(&out[0]))).unwrap();
    assert_eq!(drain(&mut n), vec![ev(Event::Applied { db: db(), pos: p4, from: N1 }), Output::Send { to: N1, msg: Message::Ack { epoch: E1, db: db(), pos: p4 } }]);
    assert_eq!(n.db_pos(&db()).unwrap().pos, p4);
    assert_eq!(n.index_checksum(&db()), Some(p4.checksum));
}

#[test]
fn gap_makes_the_replica_request_a_resync() {
    let mut n = static_replica();
    let mut index = ChecksumIndex::new(PS).unwrap();
    let (snap, p1) = make_ltx(&mut index, 1, Pos::ZERO, 1, &[(1, 1)]);
    apply(&mut n, ltx_msg(E1, &snap));
    let (_, p2) = make_ltx(&mut index, 2, p1, 1, &[(1, 2)]);
    let (three, _) = make_ltx(&mut index, 3, p2, 1, &[(1, 3)]);
    n.handle_input(ms(20), ltx_msg(E1, &three)).unwrap();
    assert_eq!(
        drain(&mut n),
        vec![
            ev(Event::PreApplyMismatch { db: db(), have: p1, need: p2, from: N1 }),
            Output::Send { to: N1, msg: Message::Resync { epoch: E1, db: db(), pos: p1 } },
        ]
    );
    assert_eq!(n.db_pos(&db()).unwrap().pos, p1);
}

#[test]
fn post_apply_checksum_mismatch_stops_the_replica() {
    let mut n = static_replica();
    let mut index = ChecksumIndex::new(PS).unwrap();
    let (snap, p1) = make_ltx(&mut index, 1, Pos::ZERO, 1, &[(1, 1)]);
    apply(&mut n, ltx_msg(E1, &snap));
    // A well-formed LTX whose post-apply checksum is not what its pages produce.
    let pages = [(1u32, page(2))];
    let header = Header { page_size: PS, commit: 1, min_txid: 2, max_txid: 2, timestamp_ms: 5, pre_apply_checksum: p1.checksum, ..Header::default() };
    let wrong = (1u64 << 63) | 12345;
    let bytes = ltx::encode_to_vec(header, pages.iter().map(|(p, d)| (*p, d.as_slice())), wrong).unwrap();
    n.handle_input(ms(20), ltx_msg(E1, &bytes)).unwrap();
    let actual = index.preview(1, &[(1, &page(2))]).unwrap();
    assert_eq!(drain(&mut n), vec![ev(Event::ChecksumMismatch { db: db(), expected: wrong, actual })]);
    assert!(n.is_halted(&db()));
    // It never silently continues: later frames are ignored.
    let (next, _) = make_ltx(&mut index, 2, p1, 1, &[(1, 3)]);
    n.handle_input(ms(30), ltx_msg(E1, &next)).unwrap();
    assert_eq!(drain(&mut n), vec![]);
    assert_eq!(n.db_pos(&db()).unwrap().pos, p1);
}

#[test]
fn frame_from_a_stale_epoch_is_rejected() {
    let mut n = static_replica();
    n.handle_input(ms(5), Input::LeaseObserved { holder: Some(N1), epoch: Epoch(5) }).unwrap();
    drain(&mut n);
    let mut index = ChecksumIndex::new(PS).unwrap();
    let (snap, _) = make_ltx(&mut index, 1, Pos::ZERO, 1, &[(1, 1)]);
    n.handle_input(ms(10), ltx_msg(Epoch(4), &snap)).unwrap();
    assert_eq!(drain(&mut n), vec![ev(Event::StaleEpochRejected { from: N1, epoch: Epoch(4), highest: Epoch(5) })]);
    assert_eq!(n.db_pos(&db()), None);
}

// ----- primary catch-up decisions -----

/// Node 1, static primary with `commits` durable commits of one page each.
fn static_primary(commits: u8) -> Node {
    let mut n = Node::new(Config::new(CLUSTER, peers(&[2]), LeaseMode::Static { primary: N1 }), N1, Time::ZERO);
    assert_eq!(drain(&mut n), vec![ev(Event::RoleChanged { role: Role::Primary, epoch: E1 })]);
    for i in 0..commits {
        commit_durably(&mut n, ms(1), 1, &[(1, i)]);
    }
    n
}

#[test]
fn same_txid_with_a_different_checksum_gets_a_snapshot() {
    let mut n = static_primary(2);
    let ours = n.db_pos(&db()).unwrap().pos;
    let diverged = Pos { txid: ours.txid, checksum: ours.checksum ^ 1 };
    let out = follow(&mut n, ms(5), N2, Some(diverged));
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0], ev(Event::SnapshotNeeded { peer: N2, db: db(), reason: SnapshotReason::Diverged }));
    let read = io_id(&out[1]);
    assert!(matches!(&out[1], Output::Io(IoCommand { kind: IoKind::ReadDatabase { .. }, .. })));
    n.handle_input(ms(6), Input::IoDone { id: read, result: Ok(IoOutcome::Database(page(1))) }).unwrap();
    let out = drain(&mut n);
    let Output::Send { to: N2, msg: Message::Ltx { bytes, .. } } = &out[0] else { panic!("{out:?}") };
    let (h, pages, t) = ltx::decode_slice(bytes).unwrap();
    assert_eq!((h.min_txid, h.max_txid, h.commit, t.post_apply_checksum), (1, 2, 1, ours.checksum));
    assert_eq!(pages, vec![(1, page(1))]);
    assert_eq!(out[1], Output::Send { to: N2, msg: Message::Ready { epoch: E1 } });
}

#[test]
fn lagging_replica_with_intact_chain_gets_one_compacted_ltx() {
    let mut n = static_primary(4);
    // Node 2 is at TXID 1: files 2..=4 are read and compacted (the newest alone is in memory).
    let mut index = ChecksumIndex::new(PS).unwrap();
    let p1 = Pos { txid: 1, checksum: index.apply(1, &[(1, &page(0))]).unwrap() };
    let out = follow(&mut n, ms(5), N2, Some(p1));
    let Output::Io(IoCommand { kind: IoKind::ReadLtx { files, .. }, .. }) = &out[0] else { panic!("{out:?}") };
    assert_eq!(files, &vec![(2, 2), (3, 3), (4, 4)]);
    assert_eq!(out.len(), 1);
}

#[test]
fn peer_from_another_cluster_is_refused() {
    let mut n = static_primary(0);
    let msg = Message::StreamRequest { epoch: E1, cluster_id: ClusterId(99), node_id: N2, mode: StreamMode::Follow, positions: BTreeMap::new() };
    n.handle_input(ms(5), Input::Receive { from: N2, msg }).unwrap();
    let out = drain(&mut n);
    assert_eq!(out[0], ev(Event::ClusterMismatch { peer: N2, theirs: ClusterId(99) }));
    assert!(matches!(&out[1], Output::Send { to: N2, msg: Message::Error { code: ErrorCode::ClusterMismatch, .. } }));
    assert_eq!(out.len(), 2);
}

#[test]
fn retention_deletes_old_files_as_an_output() {
    let mut cfg = Config::new(CLUSTER, peers(&[]), LeaseMode::Static { primary: N1 });
    cfg.retention = RetentionPolicy { age_max: Duration::from_secs(5), bytes_max: u64::MAX };
    cfg.retention_interval = Duration::from_secs(10);
    cfg.checksum_index_persist_interval = Duration::from_secs(3600);
    let mut n = Node::new(cfg, N1, Time::ZERO);
    drain(&mut n);
    for (t, fill) in [(1u64, 1u8), (3, 2), (8, 3)] {
        commit_durably(&mut n, Time::from_secs(t), 1, &[(1, fill)]);
    }
    n.handle_timeout(Time::from_secs(10));
    // Files written at 1 s and 3 s are older than 5 s at 10 s; the one from 8 s is not.
    assert_eq!(
        drain(&mut n),
        vec![Output::Io(IoCommand { id: IoId(4), kind: IoKind::DeleteLtx { db: db(), files: vec![(1, 1), (2, 2)] } })]
    );
}

// ----- recovery phase -----

#[test]
fn sync_recovery_waits_for_enough_answers_then_fetches_the_best_chain() {
    let mut cfg = dynamic(&[2, 3]);
    cfg.sync_replicas = 1;
    let mut n = Node::new(cfg, N1, Time::ZERO);
    n.handle_timeout(Time::ZERO);
    drain(&mut n);
    n.handle_input(ms(10), Input::LeaseReply { id: LeaseRequestId(1), result: LeaseResult::Granted { epoch: Epoch(3), ttl: Duration::from_secs(10) } }).unwrap();
    drain(&mut n);
    n.handle_timeout(ms(10) + Duration::from_secs(1));
    let query = Message::PositionQuery { epoch: Epoch(3), cluster_id: CLUSTER };
    assert_eq!(
        drain(&mut n),
        vec![
            ev(Event::RecoveryWaiting { have: 1, need: 2 }),
            Output::Send { to: N2, msg: query.clone() },
            Output::Send { to: N3, msg: query },
        ]
    );
    assert!(!n.is_writable(Time::from_secs(2)));
    // Node 3 answers with a chain from epoch 2 at TXID 5: fetch it from node 3.
    let ahead = DbPos { epoch: Epoch(2), pos: Pos { txid: 5, checksum: (1 << 63) | 5 } };
    let msg = Message::PositionAnswer { epoch: Epoch(3), cluster_id: CLUSTER, positions: [(db(), ahead)].into_iter().collect() };
    n.handle_input(Time::from_secs(2), Input::Receive { from: N3, msg }).unwrap();
    let fetch = Message::StreamRequest {
        epoch: Epoch(3),
        cluster_id: CLUSTER,
        node_id: N1,
        mode: StreamMode::Recovery,
        positions: [(db(), DbPos::default())].into_iter().collect(),
    };
    assert_eq!(drain(&mut n), vec![Output::Send { to: N3, msg: fetch }]);
    assert!(!n.is_writable(Time::from_secs(2)));
}

/// Seed 1214 of the simulator, by hand: a recovery source that cannot serve a database it
/// advertised (there: halted after a failed write) still says `Ready`. Ending the phase on that
/// `Ready` let the new primary write on from a shorter chain and lose acknowledged writes. The
/// phase must end only once the target chain is held; a miss asks again and prefers another
/// holder of the same chain.
#[test]
fn sync_recovery_ready_without_the_target_chain_asks_again_elsewhere() {
    let mut cfg = dynamic(&[2, 3]);
    cfg.sync_replicas = 1;
    let mut n = Node::new(cfg, N1, Time::ZERO);
    n.handle_timeout(Time::ZERO);
    drain(&mut n);
    n.handle_input(ms(10), Input::LeaseReply { id: LeaseRequestId(1), result: LeaseResult::Granted { epoch: Epoch(3), ttl: Duration::from_secs(10) } }).unwrap();
    drain(&mut n);
    let mut index = ChecksumIndex::new(PS).unwrap();
    let (bytes, p1) = make_ltx(&mut index, 1, Pos::ZERO, 1, &[(1, 9)]);
    let ahead = DbPos { epoch: Epoch(2), pos: p1 };
    let answer = Message::PositionAnswer { epoch: Epoch(3), cluster_id: CLUSTER, positions: [(db(), ahead)].into_iter().collect() };
    let fetch = Message::StreamRequest {
        epoch: Epoch(3),
        cluster_id: CLUSTER,
        node_id: N1,
        mode: StreamMode::Recovery,
        positions: [(db(), DbPos::default())].into_iter().collect(),
    };
    // Both peers hold the chain; node 2 (first) is asked for it.
    n.handle_input(ms(20), Input::Receive { from: N2, msg: answer.clone() }).unwrap();
    assert_eq!(drain(&mut n), vec![Output::Send { to: N2, msg: fetch.clone() }]);
    n.handle_input(ms(21), Input::Receive { from: N3, msg: answer.clone() }).unwrap();
    assert_eq!(drain(&mut n), vec![]);
    // Node 2 says Ready having sent nothing: not writable; the phase starts over.
    n.handle_input(ms(30), Input::Receive { from: N2, msg: Message::Ready { epoch: Epoch(3) } }).unwrap();
    let query = Message::PositionQuery { epoch: Epoch(3), cluster_id: CLUSTER };
    assert_eq!(drain(&mut n), vec![Output::Send { to: N2, msg: query.clone() }, Output::Send { to: N3, msg: query }]);
    assert!(!n.is_writable(ms(30)));
    assert_eq!(n.db_pos(&db()), None);
    // Same answers again, node 2 first: node 3 is asked this time.
    n.handle_input(ms(40), Input::Receive { from: N2, msg: answer.clone() }).unwrap();
    assert_eq!(drain(&mut n), vec![]);
    n.handle_input(ms(41), Input::Receive { from: N3, msg: answer }).unwrap();
    assert_eq!(drain(&mut n), vec![Output::Send { to: N3, msg: fetch }]);
    // Node 3 sends the chain: applied, acked, and only then the phase ends.
    let ltx = Message::Ltx { epoch: Epoch(3), db: db(), offset: 0, total_bytes: bytes.len() as u64, bytes: bytes.clone() };
    n.handle_input(ms(50), Input::Receive { from: N3, msg: ltx }).unwrap();
    let out = drain(&mut n);
    assert!(matches!(&out[..], [Output::Io(IoCommand { kind: IoKind::WriteLtx { min_txid: 1, max_txid: 1, .. }, .. })]), "{out:?}");
    n.handle_input(ms(51), done(io_id(&out[0]))).unwrap();
    let out = drain(&mut n);
    assert!(matches!(&out[..], [Output::Io(IoCommand { kind: IoKind::ApplyPages { .. }, .. })]), "{out:?}");
    n.handle_input(ms(52), done(io_id(&out[0]))).unwrap();
    assert_eq!(
        drain(&mut n),
        vec![
            ev(Event::Applied { db: db(), pos: p1, from: N3 }),
            Output::Send { to: N3, msg: Message::Ack { epoch: Epoch(3), db: db(), pos: p1 } }
        ]
    );
    assert!(!n.is_writable(ms(52)));
    n.handle_input(ms(53), Input::Receive { from: N3, msg: Message::Ready { epoch: Epoch(3) } }).unwrap();
    assert_eq!(
        drain(&mut n),
        vec![ev(Event::RecoveryComplete { epoch: Epoch(3) }), ev(Event::RoleChanged { role: Role::Primary, epoch: Epoch(3) })]
    );
    assert!(n.is_writable(ms(53)));
    assert_eq!(n.db_pos(&db()).map(|p| p.pos), Some(p1));
}

// ----- checksum index reload -----

#[test]
fn checksum_index_reload_is_trusted_only_at_the_last_ltx_position() {
    let mut index = ChecksumIndex::new(PS).unwrap();
    let p1 = Pos { txid: 1, checksum: index.apply(1, &[(1, &page(1))]).unwrap() };
    let open = |pos: Pos, saved: Vec<u8>| {
        Input::OpenDb(OpenDb { db: db(), page_size: PS, pos, epoch: E1, files: vec![], points: vec![], checksum_index: Some(saved) })
    };
    let mut n = Node::new(Config::new(CLUSTER, peers(&[]), LeaseMode::Static { primary: N1 }), N1, Time::ZERO);
    drain(&mut n);
    n.handle_input(ms(1), open(p1, index.encode(p1))).unwrap();
    assert_eq!(drain(&mut n), vec![]);
    assert_eq!(n.index_checksum(&db()), Some(p1.checksum));

    // Saved at an older position: rebuilt from the database file.
    let mut n = Node::new(Config::new(CLUSTER, peers(&[]), LeaseMode::Static { primary: N1 }), N1, Time::ZERO);
    drain(&mut n);
    let stale = Pos { txid: 0, checksum: p1.checksum };
    n.handle_input(ms(1), open(p1, index.encode(stale))).unwrap();
    let out = drain(&mut n);
    assert_eq!(out[0], ev(Event::ChecksumIndexRebuilt { db: db() }));
    assert!(matches!(&out[1], Output::Io(IoCommand { kind: IoKind::ReadDatabase { .. }, .. })));
    n.handle_input(ms(2), Input::IoDone { id: io_id(&out[1]), result: Ok(IoOutcome::Database(page(1))) }).unwrap();
    assert_eq!(drain(&mut n), vec![]);
    assert_eq!(n.index_checksum(&db()), Some(p1.checksum));
    assert_eq!(n.db_pos(&db()).unwrap().pos, p1);
}

#[test]
fn lease_lost_while_the_ltx_write_is_in_flight_reports_an_unknown_outcome() {
    let mut n = primary_at_epoch_1(0);
    n.handle_input(ms(200), commit_input(1, &[(1, 1)])).unwrap();
    let write = drain(&mut n);
    n.handle_input(ms(300), Input::LeaseObserved { holder: Some(N2), epoch: Epoch(2) }).unwrap();
    assert_eq!(
        drain(&mut n),
        vec![
            ev(Event::SteppedDown { reason: StepDownReason::HigherEpoch, epoch: E1 }),
            ev(Event::RoleChanged { role: Role::Replica, epoch: Epoch(2) }),
        ]
    );
    n.handle_input(ms(400), done(io_id(&write[0]))).unwrap();
    let pos = n.db_pos(&db()).unwrap().pos;
    assert_eq!(pos.txid, 1);
    assert_eq!(drain(&mut n), vec![ev(Event::CommitOutcomeUnknown { db: db(), pos })]);
}

#[test]
fn invalid_local_commit_is_an_input_error_and_changes_nothing() {
    let mut n = static_primary(0);
    // Growth to 2 pages without writing page 2.
    let err = n.handle_input(ms(1), commit_input(2, &[(1, 1)])).unwrap_err();
    assert_eq!(
        err,
        InputError::InvalidCommit { db: db(), error: ltxfs_core::chkindex::IndexError::MissingGrowthPage { pgno: 2, commit: 2 } }
    );
    assert_eq!(drain(&mut n), vec![]);
    assert_eq!(n.db_pos(&db()), None);
    let err = n.handle_input(ms(1), Input::LocalCommit(LocalCommit { db: db(), page_size: 1000, commit: 1, pages: vec![], wall: WallMs(0), wal: None }));
    assert_eq!(err, Err(InputError::BadPageSize(1000)));
}

#[test]
fn messages_from_non_members_are_dropped() {
    let mut n = static_primary(1);
    let msg = Message::StreamRequest { epoch: E1, cluster_id: CLUSTER, node_id: NodeId(9), mode: StreamMode::Follow, positions: BTreeMap::new() };
    n.handle_input(ms(5), Input::Receive { from: NodeId(9), msg }).unwrap();
    assert_eq!(drain(&mut n), vec![ev(Event::UnknownPeer { peer: NodeId(9) })]);
}

#[test]
fn wal_commit_fills_the_ltx_header_wal_fields() {
    let mut n = primary_at_epoch_1(0);
    let pages = vec![(1, page(1)), (2, page(2))];
    let wal = WalFrames { offset: 32, size: 2 * (24 + u64::from(PS)), salt1: 0xdead, salt2: 0xbeef };
    let input = Input::LocalCommit(LocalCommit { db: db(), page_size: PS, commit: 2, pages, wall: WallMs(1000), wal: Some(wal) });
    n.handle_input(ms(200), input).unwrap();
    let out = drain(&mut n);
    let bytes = out
        .iter()
        .find_map(|o| match o {
            Output::Io(IoCommand { kind: IoKind::WriteLtx { bytes, .. }, .. }) => Some(bytes.clone()),
            _ => None,
        })
        .expect("a commit writes an LTX");
    let (header, _, _) = ltx::decode_slice(&bytes).unwrap();
    assert_eq!((header.wal_offset, header.wal_size), (32, 2 * (24 + i64::from(PS))));
    assert_eq!((header.wal_salt1, header.wal_salt2), (0xdead, 0xbeef));
}

// ----- start-up: a database behind its newest LTX -----

fn meta(min: u64, pre: Pos, post: Pos, bytes: &[u8]) -> ltxfs_core::catchup::LtxFileMeta {
    ltxfs_core::catchup::LtxFileMeta {
        min_txid: min,
        max_txid: post.txid,
        pre_apply_checksum: if min == 1 { 0 } else { pre.checksum },
        post_apply_checksum: post.checksum,
        size_bytes: bytes.len() as u64,
        written_at: Time::ZERO,
    }
}

/// Node 1 (dynamic, peers 2 and 3) opening `db()` at `p2` with files 1-1 and 2-2 and no index:
/// returns the node, the ReadDatabase outputs, p1, p2, the file 2-2 and the index at p2.
fn open_two_files() -> (Node, Vec<Output>, Pos, Pos, Vec<u8>, ChecksumIndex) {
    let mut index = ChecksumIndex::new(PS).unwrap();
    let (f1, p1) = make_ltx(&mut index, 1, Pos::ZERO, 1, &[(1, 1)]);
    let (f2, p2) = make_ltx(&mut index, 2, p1, 2, &[(2, 4)]);
    let mut n = Node::new(dynamic(&[2, 3]), N1, Time::ZERO);
    drain(&mut n);
    let files = vec![meta(1, Pos::ZERO, p1, &f1), meta(2, p1, p2, &f2)];
    n.handle_input(ms(1), Input::OpenDb(OpenDb { db: db(), page_size: PS, pos: p2, epoch: E1, files, points: vec![], checksum_index: None })).unwrap();
    let out = drain(&mut n);
    assert_eq!(out[0], ev(Event::ChecksumIndexRebuilt { db: db() }));
    assert!(matches!(&out[1], Output::Io(IoCommand { kind: IoKind::ReadDatabase { .. }, .. })), "{out:?}");
    (n, out, p1, p2, f2, index)
}

/// Seeds 881 and 1456 of `sim swarm --sync`: after a power loss a node's database file was one
/// transaction behind its newest (durable) LTX. It used to forget its position and answer a new
/// primary's recovery with TXID 0, so the answers no longer covered the writes it had acked. Now
/// the newest file is re-applied, and the node answers with the position its LTX chain proves.
#[test]
fn database_behind_its_newest_ltx_is_repaired_by_reapplying_it() {
    let (mut n, out, _p1, p2, f2, _) = open_two_files();
    // The file is at TXID 1 (the crash came between the LTX write and the page write).
    n.handle_input(ms(2), Input::IoDone { id: io_id(&out[1]), result: Ok(IoOutcome::Database(page(1))) }).unwrap();
    let out = drain(&mut n);
    assert!(matches!(&out[..], [Output::Io(IoCommand { kind: IoKind::ReadLtx { files, .. }, .. })] if files == &vec![(2, 2)]), "{out:?}");
    n.handle_input(ms(3), Input::IoDone { id: io_id(&out[0]), result: Ok(IoOutcome::LtxFiles(vec![f2])) }).unwrap();
    let out = drain(&mut n);
    let expected = IoKind::ApplyPages { db: db(), page_size: PS, commit: 2, pages: vec![(2, page(4))] };
    assert!(matches!(&out[..], [Output::Io(IoCommand { kind, .. })] if *kind == expected), "{out:?}");
    n.handle_input(ms(4), done(io_id(&out[0]))).unwrap();
    assert_eq!(drain(&mut n), vec![]);
    assert_eq!(n.db_pos(&db()), Some(DbPos { epoch: E1, pos: p2 }));
    assert_eq!(n.index_checksum(&db()), Some(p2.checksum));
    // A new primary's recovery query gets the durable position, not TXID 0.
    n.handle_input(ms(5), Input::Receive { from: N2, msg: Message::PositionQuery { epoch: Epoch(2), cluster_id: CLUSTER } }).unwrap();
    let positions = BTreeMap::from([(db(), DbPos { epoch: E1, pos: p2 })]);
    assert_eq!(drain(&mut n), vec![Output::Send { to: N2, msg: Message::PositionAnswer { epoch: Epoch(2), cluster_id: CLUSTER, positions } }]);
}

/// The outputs after the node reads `file` for the repair (its answer to the ReadLtx `out[0]`).
fn answer_read(n: &mut Node, out: &[Output], at: Time, file: &[u8]) -> Vec<Output> {
    n.handle_input(at, Input::IoDone { id: io_id(&out[0]), result: Ok(IoOutcome::LtxFiles(vec![file.to_vec()])) }).unwrap();
    drain(n)
}

fn is_read_of(out: &[Output], range: (u64, u64)) -> bool {
    matches!(out, [Output::Io(IoCommand { kind: IoKind::ReadLtx { files, .. }, .. })] if files == &vec![range])
}

fn is_apply_of(out: &[Output], commit: u32, pages: &[(u32, u8)]) -> bool {
    let pages = pages.iter().map(|&(p, f)| (p, page(f))).collect();
    let expected = IoKind::ApplyPages { db: db(), page_size: PS, commit, pages };
    matches!(out, [Output::Io(IoCommand { kind, .. })] if *kind == expected)
}

/// A three-page database whose snapshot 1-1 retention already deleted, and retained files
/// 2-2, 3-3, ... changing `changes[0]`, `changes[1]`, ... (page, fill). Node 1 (`cfg`) opens
/// `db()` at their end with no index and is handed `image` as the file: returns the node, its
/// outputs, the end position and the files from 2-2 on.
fn open_chain_without_snapshot(cfg: Config, changes: &[&[(u32, u8)]], image: Vec<u8>) -> (Node, Vec<Output>, Pos, Vec<Vec<u8>>) {
    let mut index = ChecksumIndex::new(PS).unwrap();
    let (_f1, mut pos) = make_ltx(&mut index, 1, Pos::ZERO, 3, &[(1, 1), (2, 2), (3, 3)]);
    let (mut files, mut metas) = (Vec::new(), Vec::new());
    for (txid, pages) in (2..).zip(changes) {
        let (file, post) = make_ltx(&mut index, txid, pos, 3, pages);
        metas.push(meta(txid, pos, post, &file));
        files.push(file);
        pos = post;
    }
    let mut n = Node::new(cfg, N1, Time::ZERO);
    drain(&mut n);
    let open = OpenDb { db: db(), page_size: PS, pos, epoch: E1, files: metas, points: vec![], checksum_index: None };
    n.handle_input(ms(1), Input::OpenDb(open)).unwrap();
    let out = drain(&mut n);
    n.handle_input(ms(2), Input::IoDone { id: io_id(&out[1]), result: Ok(IoOutcome::Database(image)) }).unwrap();
    let out = drain(&mut n);
    (n, out, pos, files)
}

fn image_of(fills: &[u8]) -> Vec<u8> {
    fills.iter().flat_map(|&f| page(f)).collect()
}

/// Seed 19693 (one node): a torn write of a local commit's pages (its LTX never became durable)
/// left page 1 changed, a page the newest LTX does not hold. Re-applying only the newest file
/// did not reach the position, so the node forgot it and, without a peer to send a snapshot,
/// refused every write for good. The repair now walks the retained chain back until the pages
/// read so far land on the position (nothing written until then), then writes them: each page
/// once, with the newest file's value of it.
#[test]
fn database_torn_in_a_page_an_older_ltx_holds_is_repaired_from_the_chain() {
    let (mut n, out, p3, files) = open_chain_without_snapshot(dynamic(&[2, 3]), &[&[(1, 3), (2, 4)], &[(2, 5)]], image_of(&[9, 5, 3]));
    let (f2, f3) = (&files[0], &files[1]);
    assert!(is_read_of(&out, (3, 3)), "{out:?}");
    let out = answer_read(&mut n, &out, ms(3), f3);
    assert!(is_read_of(&out, (2, 2)), "3-3 does not land: the older file is read, nothing written: {out:?}");
    let out = answer_read(&mut n, &out, ms(4), f2);
    // 3-3 and 2-2 land: 3-3 is read again and written, then 2-2's page 1 (its page 2 is 3-3's).
    assert!(is_read_of(&out, (3, 3)), "{out:?}");
    let out = answer_read(&mut n, &out, ms(5), f3);
    assert!(is_apply_of(&out, 3, &[(2, 5)]), "{out:?}");
    n.handle_input(ms(6), done(io_id(&out[0]))).unwrap();
    let out = drain(&mut n);
    assert!(is_apply_of(&out, 3, &[(1, 3)]), "{out:?}");
    assert_eq!(n.db_pos(&db()).map(|p| p.pos), Some(p3), "the position is kept while the repair runs");
    n.handle_input(ms(7), done(io_id(&out[0]))).unwrap();
    assert_eq!(drain(&mut n), vec![]);
    assert_eq!(n.db_pos(&db()), Some(DbPos { epoch: E1, pos: p3 }));
    assert_eq!(n.index_checksum(&db()), Some(p3.checksum));
}

/// As above when the chain starts at the snapshot: a page only the snapshot holds is repaired
/// from it (the newest file re-applied alone used to leave page 1 torn and forget the position).
#[test]
fn database_torn_in_a_page_only_the_snapshot_holds_is_repaired_from_it() {
    let (mut n, out, p1, p2, f2, _) = open_two_files();
    let (f1, _) = make_ltx(&mut ChecksumIndex::new(PS).unwrap(), 1, Pos::ZERO, 1, &[(1, 1)]);
    assert_eq!(ltx::decode_slice(&f1).unwrap().2.post_apply_checksum, p1.checksum);
    n.handle_input(ms(2), Input::IoDone { id: io_id(&out[1]), result: Ok(IoOutcome::Database(image_of(&[9, 2]))) }).unwrap();
    let out = drain(&mut n);
    assert!(is_read_of(&out, (2, 2)), "{out:?}");
    let out = answer_read(&mut n, &out, ms(3), &f2);
    assert!(is_read_of(&out, (1, 1)), "{out:?}");
    let out = answer_read(&mut n, &out, ms(4), &f1);
    assert!(is_read_of(&out, (2, 2)), "{out:?}");
    let out = answer_read(&mut n, &out, ms(5), &f2);
    assert!(is_apply_of(&out, 2, &[(2, 4)]), "{out:?}");
    n.handle_input(ms(6), done(io_id(&out[0]))).unwrap();
    let out = drain(&mut n);
    assert!(is_apply_of(&out, 2, &[(1, 1)]), "{out:?}");
    n.handle_input(ms(7), done(io_id(&out[0]))).unwrap();
    assert_eq!(drain(&mut n), vec![]);
    assert_eq!(n.db_pos(&db()), Some(DbPos { epoch: E1, pos: p2 }));
}

/// A file with a page no retained LTX holds (page 3 changed, retained files 2-2 and 3-3 touch
/// pages 1 and 2) cannot be proven at any position: after the whole chain is read (and nothing
/// written) the position is forgotten; the index describes the file as it is.
#[test]
fn database_matching_no_retained_ltx_forgets_its_position() {
    let image = image_of(&[3, 5, 9]);
    let actual = ltxfs_core::ltx::checksum::db_checksum(&image, PS);
    let (mut n, out, p3, files) = open_chain_without_snapshot(dynamic(&[2, 3]), &[&[(1, 3), (2, 4)], &[(2, 5)]], image);
    let (f2, f3) = (&files[0], &files[1]);
    assert!(is_read_of(&out, (3, 3)), "{out:?}");
    let out = answer_read(&mut n, &out, ms(3), f3);
    assert!(is_read_of(&out, (2, 2)), "{out:?}");
    let out = answer_read(&mut n, &out, ms(4), f2);
    assert_eq!(out, vec![ev(Event::ChecksumMismatch { db: db(), expected: p3.checksum, actual })], "no page written");
    assert_eq!(n.db_pos(&db()).map(|p| p.pos), Some(Pos::ZERO));
    assert_eq!(n.index_checksum(&db()), Some(actual));
}

/// A repair read that fails forgets the position without writing anything.
#[test]
fn a_failed_repair_read_forgets_the_position() {
    let image = image_of(&[9, 5, 3]);
    let actual = ltxfs_core::ltx::checksum::db_checksum(&image, PS);
    let (mut n, out, p3, files) = open_chain_without_snapshot(dynamic(&[2, 3]), &[&[(1, 3), (2, 4)], &[(2, 5)]], image);
    let f3 = &files[1];
    let out = answer_read(&mut n, &out, ms(3), f3);
    assert!(is_read_of(&out, (2, 2)), "{out:?}");
    n.handle_input(ms(4), Input::IoDone { id: io_id(&out[0]), result: Err(IoErrorKind::NotFound) }).unwrap();
    assert_eq!(drain(&mut n), vec![ev(Event::ChecksumMismatch { db: db(), expected: p3.checksum, actual })]);
    assert_eq!(n.db_pos(&db()).map(|p| p.pos), Some(Pos::ZERO));
}

/// A file read again in the writing pass must be the one the checking pass read (same LTX file
/// checksum); another one forgets the position before anything is written.
#[test]
fn a_repair_file_that_changed_between_the_passes_forgets_the_position() {
    let image = image_of(&[9, 5, 3]);
    let actual = ltxfs_core::ltx::checksum::db_checksum(&image, PS);
    let (mut n, out, p3, files) = open_chain_without_snapshot(dynamic(&[2, 3]), &[&[(1, 3), (2, 4)], &[(2, 5)]], image);
    let out = answer_read(&mut n, &out, ms(3), &files[1]);
    let out = answer_read(&mut n, &out, ms(4), &files[0]);
    assert!(is_read_of(&out, (3, 3)), "{out:?}");
    // The same range, pages and end, another timestamp: another file.
    let (header, pages, trailer) = ltx::decode_slice(&files[1]).unwrap();
    let other = ltx::encode_to_vec(Header { timestamp_ms: 6, ..header }, pages.iter().map(|(p, d)| (*p, d.as_slice())).collect::<Vec<_>>(), trailer.post_apply_checksum).unwrap();
    assert_ne!(ltx::decode_slice(&other).unwrap().2.file_checksum, trailer.file_checksum);
    let out = answer_read(&mut n, &out, ms(5), &other);
    assert_eq!(out, vec![ev(Event::ChecksumMismatch { db: db(), expected: p3.checksum, actual })]);
    assert_eq!(n.db_pos(&db()).map(|p| p.pos), Some(Pos::ZERO));
}

/// A chain file whose pages newer files all set again is read in both passes but not written.
#[test]
fn a_repair_writes_each_page_once_and_skips_a_file_left_with_none() {
    let changes: &[&[(u32, u8)]] = &[&[(1, 3), (2, 4)], &[(2, 5)], &[(2, 6)]];
    let (mut n, out, p4, files) = open_chain_without_snapshot(dynamic(&[2, 3]), changes, image_of(&[9, 6, 3]));
    let mut out = out;
    for (at, range) in [(3, (4, 4)), (4, (3, 3)), (5, (2, 2))] {
        assert!(is_read_of(&out, range), "checking pass reads {range:?}: {out:?}");
        out = answer_read(&mut n, &out, ms(at), &files[range.0 as usize - 2]);
    }
    assert!(is_read_of(&out, (4, 4)), "{out:?}");
    let out = answer_read(&mut n, &out, ms(6), &files[2]);
    assert!(is_apply_of(&out, 3, &[(2, 6)]), "{out:?}");
    n.handle_input(ms(7), done(io_id(&out[0]))).unwrap();
    let out = drain(&mut n);
    assert!(is_read_of(&out, (3, 3)), "{out:?}");
    let out = answer_read(&mut n, &out, ms(8), &files[1]);
    assert!(is_apply_of(&out, 3, &[(1, 3)]), "3-3 has nothing left to write; 2-2's page 1 follows: {out:?}");
    n.handle_input(ms(9), done(io_id(&out[0]))).unwrap();
    assert_eq!(drain(&mut n), vec![]);
    assert_eq!(n.db_pos(&db()), Some(DbPos { epoch: E1, pos: p4 }));
    assert_eq!(n.index_checksum(&db()), Some(p4.checksum));
}

/// Retention leaves a loading database alone: a repair may still need every file of its chain.
#[test]
fn retention_waits_for_a_repair_to_end() {
    let mut cfg = dynamic(&[2, 3]);
    cfg.retention.age_max = Duration::ZERO;
    let (mut n, out, _p3, _files) = open_chain_without_snapshot(cfg, &[&[(1, 3), (2, 4)], &[(2, 5)]], image_of(&[9, 5, 3]));
    assert!(is_read_of(&out, (3, 3)), "{out:?}");
    n.handle_timeout(ms(600_000));
    let deletes: Vec<Output> = drain(&mut n).into_iter().filter(|o| matches!(o, Output::Io(IoCommand { kind: IoKind::DeleteLtx { .. }, .. }))).collect();
    assert_eq!(deletes, vec![]);
}

/// Seed 181 of `sim swarm --sync`: LTX files that arrive while a database is still loading are
/// queued; once loading ended nothing started them, and every later file queued behind them, so
/// the replica never caught up. They are applied when loading ends.
#[test]
fn ltx_queued_while_loading_is_applied_once_loaded() {
    let (mut n, out, _p1, p2, _f2, mut index) = open_two_files();
    let (f3, p3) = make_ltx(&mut index, 3, p2, 2, &[(1, 5)]);
    let from_n2 = |bytes: &[u8]| Input::Receive {
        from: N2,
        msg: Message::Ltx { epoch: E1, db: db(), offset: 0, total_bytes: bytes.len() as u64, bytes: bytes.to_vec() },
    };
    n.handle_input(ms(2), from_n2(&f3)).unwrap();
    assert_eq!(drain(&mut n), vec![], "queued while loading");
    // The file is at its position: loading ends and the queued file is written, then applied.
    let mut image = page(1);
    image.extend(page(4));
    n.handle_input(ms(3), Input::IoDone { id: io_id(&out[1]), result: Ok(IoOutcome::Database(image)) }).unwrap();
    let out = drain(&mut n);
    assert!(matches!(&out[..], [Output::Io(IoCommand { kind: IoKind::WriteLtx { min_txid: 3, max_txid: 3, .. }, .. })]), "{out:?}");
    n.handle_input(ms(4), done(io_id(&out[0]))).unwrap();
    let out = drain(&mut n);
    n.handle_input(ms(5), done(io_id(&out[0]))).unwrap();
    assert_eq!(
        drain(&mut n),
        vec![ev(Event::Applied { db: db(), pos: p3, from: N2 }), Output::Send { to: N2, msg: Message::Ack { epoch: E1, db: db(), pos: p3 } }]
    );
    assert_eq!(n.db_pos(&db()).map(|p| p.pos), Some(p3));
}

/// A snapshot LTX of `db()` up to `max_txid` with `pages` (the whole database).
fn make_snapshot(max_txid: u64, pages: &[(u32, u8)]) -> (Vec<u8>, Pos) {
    let mut index = ChecksumIndex::new(PS).unwrap();
    let pages: Vec<(u32, Vec<u8>)> = pages.iter().map(|&(p, f)| (p, page(f))).collect();
    let refs: Vec<(u32, &[u8])> = pages.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    let commit = pages.len() as u32;
    let post = index.apply(commit, &refs).unwrap();
    let header = Header { page_size: PS, commit, min_txid: 1, max_txid, timestamp_ms: 5, ..Header::default() };
    (ltx::encode_to_vec(header, refs, post).unwrap(), Pos { txid: max_txid, checksum: post })
}

/// A snapshot that replaces a history is written only once the replaced LTX files are deleted;
/// if the delete fails the database stops (random seed 17035: the snapshot written beside a
/// newer stale file made a restart report that file's position).
#[test]
fn a_snapshot_whose_replaced_files_cannot_be_deleted_is_not_written() {
    let (mut n, out, _p1, _p2, _f2, _) = open_two_files();
    let (snap, _theirs) = make_snapshot(2, &[(1, 1), (2, 7)]);
    let msg = Message::Ltx { epoch: Epoch(2), db: db(), offset: 0, total_bytes: snap.len() as u64, bytes: snap.clone() };
    n.handle_input(ms(2), Input::Receive { from: N2, msg }).unwrap();
    let mut image = page(1);
    image.extend(page(4));
    n.handle_input(ms(3), Input::IoDone { id: io_id(&out[1]), result: Ok(IoOutcome::Database(image)) }).unwrap();
    let out = drain(&mut n);
    assert!(matches!(&out[1..], [Output::Io(IoCommand { kind: IoKind::DeleteLtx { .. }, .. })]), "{out:?}");
    n.handle_input(ms(4), Input::IoDone { id: io_id(&out[1]), result: Err(IoErrorKind::Failed) }).unwrap();
    assert_eq!(drain(&mut n), vec![ev(Event::IoFailed { db: db(), error: IoErrorKind::Failed })], "no WriteLtx");
}

/// The failover_sync convergence failure (kill -9 of a sync-mode primary right after acknowledged
/// commits): the old primary restarts at its own unacknowledged TXID 2, rebuilding its index;
/// the new primary (epoch 2) has another TXID 2, so it resets the old primary by snapshot, and
/// does so twice (the old primary's stream request is re-sent when loading ends). Both snapshots
/// arrive while the database loads. They used to stay queued forever (the old primary never
/// converged); now the first replaces the history (never silently) and the second is a no-op
/// re-apply at the same position.
#[test]
fn diverged_old_primary_applies_the_snapshots_that_arrived_while_it_loaded() {
    let (mut n, out, _p1, p2, _f2, _) = open_two_files();
    let (snap, theirs) = make_snapshot(2, &[(1, 1), (2, 7)]);
    assert_eq!(theirs.txid, p2.txid);
    assert_ne!(theirs, p2, "same TXID, another history");
    let from_n2 = |bytes: &[u8]| Input::Receive {
        from: N2,
        msg: Message::Ltx { epoch: Epoch(2), db: db(), offset: 0, total_bytes: bytes.len() as u64, bytes: bytes.to_vec() },
    };
    n.handle_input(ms(2), from_n2(&snap)).unwrap();
    n.handle_input(ms(2), from_n2(&snap)).unwrap();
    assert_eq!(drain(&mut n), vec![], "both snapshots queued while loading");

    // Loading ends at the node's own position; the first snapshot replaces its history.
    let mut image = page(1);
    image.extend(page(4));
    n.handle_input(ms(3), Input::IoDone { id: io_id(&out[1]), result: Ok(IoOutcome::Database(image)) }).unwrap();
    let out = drain(&mut n);
    assert_eq!(out[0], ev(Event::HistoryReplaced { db: db(), from: N2, old: p2, old_epoch: E1, new: theirs }));
    assert!(matches!(&out[1], Output::Io(IoCommand { kind: IoKind::DeleteLtx { files, .. }, .. }) if files == &vec![(1, 1), (2, 2)]), "{out:?}");
    assert_eq!(out.len(), 2, "the snapshot's LTX waits for the replaced files to be gone: {out:?}");
    n.handle_input(ms(4), done(io_id(&out[1]))).unwrap();
    let out = drain(&mut n);
    assert!(matches!(&out[..], [Output::Io(IoCommand { kind: IoKind::WriteLtx { min_txid: 1, max_txid: 2, .. }, .. })]), "{out:?}");
    n.handle_input(ms(4), done(io_id(&out[0]))).unwrap();
    let out = drain(&mut n);
    assert!(matches!(&out[..], [Output::Io(IoCommand { kind: IoKind::ApplyPages { commit: 2, .. }, .. })]), "{out:?}");
    n.handle_input(ms(5), done(io_id(&out[0]))).unwrap();
    let out = drain(&mut n);
    let acked = Output::Send { to: N2, msg: Message::Ack { epoch: Epoch(2), db: db(), pos: theirs } };
    assert_eq!(out[..2], [ev(Event::Applied { db: db(), pos: theirs, from: N2 }), acked.clone()]);
    // The second snapshot starts at once: same position, no history replaced.
    assert!(matches!(&out[2..], [Output::Io(IoCommand { kind: IoKind::WriteLtx { min_txid: 1, max_txid: 2, .. }, .. })]), "{out:?}");
    n.handle_input(ms(6), done(io_id(&out[2]))).unwrap();
    let out = drain(&mut n);
    n.handle_input(ms(7), done(io_id(&out[0]))).unwrap();
    assert_eq!(drain(&mut n), vec![ev(Event::Applied { db: db(), pos: theirs, from: N2 }), acked]);
    assert_eq!(n.db_pos(&db()).map(|p| (p.pos, p.epoch)), Some((theirs, Epoch(2))));
}

#[test]
fn a_follower_reporting_a_position_of_another_history_counts_for_no_sync_commit() {
    let mut n = primary_at_epoch_1(1);
    // N2 reports TXID 5 of another history: not an ack of this node's TXID 1..=5.
    follow(&mut n, ms(200), N2, Some(Pos { txid: 5, checksum: 0xdead_beef }));
    let out = commit_durably(&mut n, ms(300), 1, &[(1, 1)]);
    let pos1 = n.db_pos(&db()).unwrap().pos;
    assert!(!out.iter().any(|o| matches!(o, Output::Event(Event::Committed { .. }))), "counted N2's other history as an ack: {out:?}");
    // Once N2 acks this history's position (after its snapshot), the commit completes.
    n.handle_input(ms(310), Input::Receive { from: N2, msg: Message::Ack { epoch: E1, db: db(), pos: pos1 } }).unwrap();
    let out = drain(&mut n);
    assert!(out.contains(&ev(Event::Committed { db: db(), pos: pos1 })), "{out:?}");
}

#[test]
fn an_ack_of_a_position_on_another_history_counts_for_nothing() {
    let mut n = primary_at_epoch_1(1);
    follow(&mut n, ms(200), N2, None);
    commit_durably(&mut n, ms(300), 1, &[(1, 1)]);
    let pos1 = n.db_pos(&db()).unwrap().pos;
    for other in [Pos { txid: pos1.txid, checksum: pos1.checksum ^ 1 }, Pos { txid: pos1.txid + 1, checksum: 7 }] {
        n.handle_input(ms(310), Input::Receive { from: N2, msg: Message::Ack { epoch: E1, db: db(), pos: other } }).unwrap();
        let out = drain(&mut n);
        assert!(!out.iter().any(|o| matches!(o, Output::Event(Event::Committed { .. } | Event::ReplicaCaughtUp { .. }))), "{other:?}: {out:?}");
    }
    n.handle_input(ms(320), Input::Receive { from: N2, msg: Message::Ack { epoch: E1, db: db(), pos: pos1 } }).unwrap();
    let out = drain(&mut n);
    assert!(out.contains(&ev(Event::Committed { db: db(), pos: pos1 })), "{out:?}");
}

#[test]
fn a_duplicate_ending_at_our_txid_with_another_checksum_asks_for_a_resync() {
    let mut n = static_replica();
    let mut index = ChecksumIndex::new(PS).unwrap();
    let (snap, p1) = make_ltx(&mut index, 1, Pos::ZERO, 1, &[(1, 1)]);
    apply(&mut n, ltx_msg(E1, &snap));
    let mut other = index.clone();
    let (two, p2) = make_ltx(&mut index, 2, p1, 1, &[(1, 2)]);
    apply(&mut n, ltx_msg(E1, &two));
    // TXID 2 of another history (a new primary's own TXID 2): not a duplicate to skip.
    let (other_two, q2) = make_ltx(&mut other, 2, p1, 1, &[(1, 9)]);
    assert_ne!(p2, q2);
    n.handle_input(ms(20), ltx_msg(E1, &other_two)).unwrap();
    assert_eq!(
        drain(&mut n),
        vec![
            ev(Event::PreApplyMismatch { db: db(), have: p2, need: q2, from: N1 }),
            Output::Send { to: N1, msg: Message::Resync { epoch: E1, db: db(), pos: p2 } },
        ]
    );
    // A true duplicate is still skipped without a word.
    n.handle_input(ms(30), ltx_msg(E1, &two)).unwrap();
    assert_eq!(drain(&mut n), vec![]);
    assert_eq!(n.db_pos(&db()).unwrap().pos, p2);
}

#[test]
fn an_apply_of_an_older_epoch_finishing_after_a_new_primary_won_tells_the_new_primary() {
    let mut n = Node::new(dynamic(&[1, 3]), N2, Time::ZERO);
    for input in [Input::LeaseObserved { holder: Some(N1), epoch: E1 }, Input::PeerConnected { peer: N1 }, Input::PeerConnected { peer: N3 }] {
        n.handle_input(ms(1), input).unwrap();
        drain(&mut n);
    }
    assert_eq!(n.upstream(), Some(N1));
    let mut index = ChecksumIndex::new(PS).unwrap();
    let (snap, p1) = make_ltx(&mut index, 1, Pos::ZERO, 1, &[(1, 1)]);
    n.handle_input(ms(10), ltx_msg(E1, &snap)).unwrap();
    let out = drain(&mut n);
    let write = out.iter().find(|o| matches!(o, Output::Io(IoCommand { kind: IoKind::WriteLtx { .. }, .. }))).cloned().expect("the LTX write");
    // While the write is in flight N3 wins epoch 2 and N2 asks it for its stream (position 0).
    n.handle_input(ms(20), Input::LeaseObserved { holder: Some(N3), epoch: Epoch(2) }).unwrap();
    drain(&mut n);
    assert_eq!(n.upstream(), Some(N3));
    n.handle_input(ms(30), done(io_id(&write))).unwrap();
    let out = drain(&mut n);
    n.handle_input(ms(30), done(io_id(&out[0]))).unwrap();
    let out = drain(&mut n);
    assert!(out.contains(&Output::Send { to: N3, msg: Message::Resync { epoch: Epoch(2), db: db(), pos: p1 } }), "{out:?}");
}

#[test]
fn a_snapshot_that_failed_to_read_is_tried_again_at_a_heartbeat_without_a_commit() {
    let mut n = static_primary(2);
    let ours = n.db_pos(&db()).unwrap().pos;
    let diverged = Pos { txid: ours.txid, checksum: ours.checksum ^ 1 };
    let mut out = follow(&mut n, ms(5), N2, Some(diverged));
    // Every read of the database fails (a full disk): the immediate retries give up.
    let mut reads = 0;
    while let Some(read) = out.iter().find(|o| matches!(o, Output::Io(IoCommand { kind: IoKind::ReadDatabase { .. }, .. }))).cloned() {
        reads += 1;
        assert!(reads <= 10, "bounded retries");
        n.handle_input(ms(6), Input::IoDone { id: io_id(&read), result: Err(IoErrorKind::NoSpace) }).unwrap();
        out = drain(&mut n);
    }
    assert!(reads >= 1);
    // No commit comes (the disk is still full); the next heartbeat tries again.
    n.handle_timeout(ms(6) + Duration::from_secs(5));
    let out = drain(&mut n);
    assert!(out.iter().any(|o| matches!(o, Output::Io(IoCommand { kind: IoKind::ReadDatabase { .. }, .. }))), "{out:?}");
}

#[test]
fn a_recovering_primary_serves_a_follower_only_after_its_recovery() {
    let (mut n, out, p1, p2, _f2, _index) = open_two_files();
    n.handle_input(ms(2), Input::IoDone { id: io_id(&out[1]), result: Ok(IoOutcome::Database(image_of(&[1, 4]))) }).unwrap();
    drain(&mut n);
    assert_eq!(n.db_pos(&db()).unwrap().pos, p2);
    n.handle_timeout(ms(10));
    let out = drain(&mut n);
    let acquire = out.iter().find_map(|o| match o {
        Output::Lease(LeaseRequest { id, kind: LeaseKind::Acquire }) => Some(*id),
        _ => None,
    });
    let e2 = Epoch(2);
    n.handle_input(ms(100), Input::LeaseReply { id: acquire.expect("acquires"), result: LeaseResult::Granted { epoch: e2, ttl: Duration::from_secs(10) } }).unwrap();
    drain(&mut n);
    assert!(!n.is_writable(ms(100)), "recovering until the peers answer");
    // N2 follows at TXID 1 and asks for a resync while N1 recovers: nothing is served yet (the
    // recovery may still move N1 past TXID 2; a snapshot now would label N2 with epoch 2 there).
    let served = |out: &[Output]| out.iter().any(|o| matches!(o, Output::Send { to: N2, msg: Message::Ltx { .. } } | Output::Io(IoCommand { kind: IoKind::ReadLtx { .. } | IoKind::ReadDatabase { .. }, .. })));
    let positions = [(db(), DbPos { epoch: E1, pos: p1 })].into_iter().collect();
    n.handle_input(ms(110), Input::Receive { from: N2, msg: Message::StreamRequest { epoch: e2, cluster_id: CLUSTER, node_id: N2, mode: StreamMode::Follow, positions } }).unwrap();
    let out = drain(&mut n);
    assert!(!served(&out), "{out:?}");
    n.handle_input(ms(120), Input::Receive { from: N2, msg: Message::Resync { epoch: e2, db: db(), pos: p1 } }).unwrap();
    let out = drain(&mut n);
    assert!(!served(&out), "served a follower while recovering: {out:?}");
    // Recovery ends (the peers have nothing newer): now N2 is brought forward.
    let mut out = Vec::new();
    for p in [N2, N3] {
        let msg = Message::PositionAnswer { epoch: e2, cluster_id: CLUSTER, positions: BTreeMap::new() };
        n.handle_input(ms(130), Input::Receive { from: p, msg }).unwrap();
        out.extend(drain(&mut n));
    }
    assert!(n.is_writable(ms(130)));
    assert!(served(&out), "{out:?}");
}
