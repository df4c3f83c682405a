//! Invariant checkers. Each invariant is stated precisely next to the code that checks it. The
//! world feeds every node event, every step boundary, periodic sweeps and the final state; the
//! first violation stops the run.
//!
//! The checkers see only what the simulator can see: node events ([`MachineEvent`]), each node's
//! [`MachineView`] between steps, the simulated disks, the lease service's record of epochs in
//! true time, and the client history. They never influence the run.

use std::collections::{BTreeMap, BTreeSet};

use ltxfs_core::ltx::checksum::CHECKSUM_EMPTY;

use crate::clock::TrueUs;
use crate::disk::SimDisk;
use crate::lease::LeaseService;
use crate::machine::{DbId, MachineEvent, MachineView, NodeIdx};
use crate::workload::{History, OpKind, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// 1: two nodes able to commit at one true instant (checked as: a commit decided outside the
    /// committing node's lease validity).
    SplitBrain,
    /// 1: a replica applied a frame from an epoch older than one it already applied.
    EpochRegression,
    /// 1: two different LTX for one (db, txid) survived on read-serving nodes.
    DivergentHistories,
    /// 2: an applied or committed LTX did not start at the node's position.
    ChecksumContinuity,
    /// 2: a node's checksum differs from a recomputation of its simulated pages.
    ChecksumRecompute,
    /// 3: a replica's history is not a prefix of its primary's.
    PrefixConsistency,
    /// 4: an acknowledged write was lost with `sync_replicas ≥ 1`.
    Durability,
    /// 5: no convergence within the bound after healing.
    Liveness,
    /// A scenario's `[expect]` did not hold.
    Expectation,
    /// A node panicked or the run exceeded its event budget.
    Crash,
}

impl Invariant {
    pub fn name(self) -> &'static str {
        match self {
            Invariant::SplitBrain => "split-brain",
            Invariant::EpochRegression => "epoch-regression",
            Invariant::DivergentHistories => "divergent-histories",
            Invariant::ChecksumContinuity => "checksum-continuity",
            Invariant::ChecksumRecompute => "checksum-recompute",
            Invariant::PrefixConsistency => "prefix-consistency",
            Invariant::Durability => "durability",
            Invariant::Liveness => "liveness",
            Invariant::Expectation => "expectation",
            Invariant::Crash => "crash",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: Invariant,
    pub at_us: TrueUs,
    pub detail: String,
}

#[derive(Debug, Clone, Default)]
struct NodeTrack {
    /// Position per db as of the node's last step (from its view), advanced by events within a
    /// step.
    pos: BTreeMap<DbId, (u64, u64)>,
    /// txid → checksum since the node's last snapshot reset.
    chain: BTreeMap<DbId, Chain>,
    /// Highest epoch of any frame the node applied.
    max_applied_epoch: u64,
}

/// Continuous and final checks for one run.
#[derive(Debug, Clone)]
pub struct Checker {
    nodes: Vec<NodeTrack>,
    /// Every state a primary decided: (db, txid, post) → (pre, epoch).
    produced: Produced,
    pub violation: Option<Violation>,
    /// Writable epochs seen (for the failover count).
    pub writable_epochs: BTreeSet<u64>,
    pub lost_acked_writes: u64,
    pub reads_checked: u64,
    /// `ClusterMismatch` events seen (refusals between nodes of different clusters).
    pub cluster_mismatches: u64,
    /// Snapshots replicas applied (`SnapshotReset` events).
    pub snapshot_resets: u64,
}

impl Checker {
    pub fn new(nodes: u8) -> Checker {
        Checker {
            nodes: vec![NodeTrack::default(); usize::from(nodes)],
            produced: Produced::default(),
            violation: None,
            writable_epochs: BTreeSet::new(),
            lost_acked_writes: 0,
            reads_checked: 0,
            cluster_mismatches: 0,
            snapshot_resets: 0,
        }
    }

    pub fn fail(&mut self, invariant: Invariant, at_us: TrueUs, detail: String) {
        if self.violation.is_none() {
            self.violation = Some(Violation { invariant, at_us, detail });
        }
    }

    pub fn failovers(&self) -> u64 {
        (self.writable_epochs.len() as u64).saturating_sub(1)
    }

    /// One node event, in the order the node emitted it.
    pub fn on_event(&mut self, now: TrueUs, node: NodeIdx, event: &MachineEvent, lease: &LeaseService) {
        match event {
            MachineEvent::Role { primary: true, writable: true, epoch } => {
                self.writable_epochs.insert(*epoch);
            }
            MachineEvent::CommitDecided { db, txid, pre, post, epoch } => {
                self.check_lease(now, node, *epoch, || format!("n{} decided {db} txid {txid}", node + 1), lease);
                self.check_continuity(now, node, db, *txid, *txid, *pre, *post, "decided");
                self.produced.insert(db, *txid, *post, (*pre, *epoch));
                let track = &mut self.nodes[usize::from(node)];
                chain_of(&mut track.chain, db).insert(*txid, *post);
            }
            MachineEvent::Applied { db, min_txid, txid, pre, post, epoch } => {
                self.check_epoch(now, node, *epoch);
                self.check_continuity(now, node, db, *min_txid, *txid, *pre, *post, "applied");
                self.check_prefix(now, node, db, *txid, *post, *epoch, lease);
                let track = &mut self.nodes[usize::from(node)];
                chain_of(&mut track.chain, db).insert(*txid, *post);
            }
            MachineEvent::SnapshotReset { db, txid, checksum, epoch } => {
                self.check_epoch(now, node, *epoch);
                self.check_prefix(now, node, db, *txid, *checksum, *epoch, lease);
                let track = &mut self.nodes[usize::from(node)];
                track.pos.insert(db.clone(), (*txid, *checksum));
                track.chain.insert(db.clone(), Chain::single(*txid, *checksum));
                self.snapshot_resets += 1;
            }
            MachineEvent::ClusterMismatch { .. } => self.cluster_mismatches += 1,
            _ => {}
        }
    }

    /// Invariant 1 (split-brain freedom), checked on the node's own belief after each of its
    /// steps: a node that would accept a local commit now under epoch `E` holds `E` at the lease
    /// service at this true instant (`granted(E) ≤ now < valid_until(E)`, granted to it), and the
    /// true instant at which its local write deadline falls is not after `valid_until(E)`: its
    /// belief never outlives what the service guarantees, whatever its clock does.
    pub fn check_writable(&mut self, now: TrueUs, node: NodeIdx, epoch: u64, deadline_true: Option<TrueUs>, lease: &LeaseService) {
        let what = || format!("n{} writable", node + 1);
        self.check_lease(now, node, epoch, what, lease);
        if let (Some(deadline), Some(record)) = (deadline_true, lease.epochs.get(&epoch)) {
            if deadline > record.valid_until_us {
                self.fail(
                    Invariant::SplitBrain,
                    now,
                    format!(
                        "{} under epoch {epoch} until {deadline}us, but the lease service guarantees it only until {}us",
                        what(),
                        record.valid_until_us
                    ),
                );
            }
        }
    }

    /// Invariant 1 (split-brain freedom), checked as its sufficient condition: a primary may
    /// decide a commit (issue its LTX write) at true instant `t` under epoch `E` only if the
    /// lease service granted `E` to that very node and `E` is valid at `t`:
    /// `granted(E) ≤ t < valid_until(E)`, where `valid_until` is the expiry the service computed
    /// at its last renewal (a release or handoff pulls it back; a revocation does not, see
    /// [`crate::lease`]). The service grants a new epoch only after the previous one's
    /// `valid_until`, so validity windows are disjoint and at no true instant can two nodes make a
    /// commit durable for the same database.
    /// `what` names the decision; it is only called to describe a violation.
    fn check_lease(&mut self, now: TrueUs, node: NodeIdx, epoch: u64, what: impl Fn() -> String, lease: &LeaseService) {
        match lease.epochs.get(&epoch) {
            None => self.fail(Invariant::SplitBrain, now, format!("{} under epoch {epoch}, which was never granted", what())),
            Some(record) if record.holder != node => self.fail(
                Invariant::SplitBrain,
                now,
                format!("{} under epoch {epoch}, which the lease service granted to n{}", what(), record.holder + 1),
            ),
            Some(record) if now < record.granted_us || now >= record.valid_until_us => self.fail(
                Invariant::SplitBrain,
                now,
                format!(
                    "{} under epoch {epoch} at {}us, outside its validity [{}us, {}us)",
                    what(),
                    now,
                    record.granted_us,
                    record.valid_until_us
                ),
            ),
            Some(_) => {}
        }
    }

    /// Invariant 1 (epochs only move forward): every frame a node applies — incremental LTX or
    /// snapshot — carries an epoch ≥ the highest epoch of any frame that node applied before
    /// (across restarts too: the check is on the node's whole life).
    fn check_epoch(&mut self, now: TrueUs, node: NodeIdx, epoch: u64) {
        let track = &mut self.nodes[usize::from(node)];
        if epoch < track.max_applied_epoch {
            let highest = track.max_applied_epoch;
            self.fail(
                Invariant::EpochRegression,
                now,
                format!("n{} applied a frame of epoch {epoch} after one of epoch {highest}", node + 1),
            );
            return;
        }
        track.max_applied_epoch = epoch;
    }

    /// Invariant 2 (checksum continuity): each LTX a node applies or commits, covering
    /// `min_txid..=txid`, has `min_txid = position.txid + 1` and `pre-apply = position.checksum`,
    /// where `position` is the node's position before it (as its view showed after its previous
    /// step, advanced by the events of the current step; the empty database before TXID 1).
    #[allow(clippy::too_many_arguments)]
    fn check_continuity(&mut self, now: TrueUs, node: NodeIdx, db: &DbId, min_txid: u64, txid: u64, pre: u64, post: u64, what: &str) {
        let track = &mut self.nodes[usize::from(node)];
        let (pos_txid, pos_checksum) = track.pos.get(db).copied().unwrap_or((0, CHECKSUM_EMPTY));
        if min_txid != pos_txid + 1 || pre != pos_checksum {
            self.fail(
                Invariant::ChecksumContinuity,
                now,
                format!(
                    "n{} {what} {db} txid {txid} pre {pre:016x}, but its position was {pos_txid}/{pos_checksum:016x}",
                    node + 1
                ),
            );
            return;
        }
        match track.pos.get_mut(db) {
            Some(pos) => *pos = (txid, post),
            None => {
                track.pos.insert(db.clone(), (txid, post));
            }
        }
    }

    /// Invariant 3 (prefix consistency): a replica's history is a prefix of the history of the
    /// primary of the epoch it followed. Checked incrementally: a state (db, txid, checksum) a
    /// node applies (or resets to) from a frame of epoch `E` must (a) have been decided by some
    /// primary of an epoch ≤ `E` — no phantom states — and (b) agree with what the holder of `E`
    /// has at that txid in its own history, if it still has that txid from epoch `E` or earlier
    /// (not replaced since by a later epoch's history). With continuity
    /// (invariant 2) this makes every replica history a chain of the primary's states.
    #[allow(clippy::too_many_arguments)]
    fn check_prefix(&mut self, now: TrueUs, node: NodeIdx, db: &DbId, txid: u64, checksum: u64, epoch: u64, lease: &LeaseService) {
        match self.produced.get(db, txid, checksum) {
            None => {
                self.fail(
                    Invariant::PrefixConsistency,
                    now,
                    format!("n{} took {db} txid {txid} checksum {checksum:016x}, which no primary produced", node + 1),
                );
                return;
            }
            Some((_, produced_epoch)) if *produced_epoch > epoch => {
                self.fail(
                    Invariant::PrefixConsistency,
                    now,
                    format!("n{} took {db} txid {txid} in a frame of epoch {epoch}, but it was produced in epoch {produced_epoch}", node + 1),
                );
                return;
            }
            Some(_) => {}
        }
        let Some(holder) = lease.holder(epoch) else { return };
        if holder == node {
            return;
        }
        let theirs = self.nodes[usize::from(holder)].chain.get(db).and_then(|c| c.get(&txid)).copied();
        // The holder's entry says what it had in epoch `epoch` only if no later epoch's history
        // replaced it since (a deposed primary reset by its successor's snapshot holds the later
        // epoch's state at that TXID; a frame it sent before, delivered late, is still epoch
        // `epoch`'s — (a) above checked that state was produced).
        let replaced_later = |theirs: u64| self.produced.get(db, txid, theirs).is_some_and(|(_, e)| *e > epoch);
        if let Some(theirs) = theirs.filter(|t| !replaced_later(*t)) {
            if theirs != checksum {
                self.fail(
                    Invariant::PrefixConsistency,
                    now,
                    format!(
                        "n{} took {db} txid {txid} = {checksum:016x} from epoch {epoch}, whose primary n{} has {theirs:016x}",
                        node + 1,
                        holder + 1
                    ),
                );
            }
        }
    }

    /// After each step of a node (and after a restart): the node's view is authoritative for its
    /// position; a restart truncates the tracked history above the restored position.
    pub fn after_step(&mut self, node: NodeIdx, view: &MachineView, restarted: bool) {
        let track = &mut self.nodes[usize::from(node)];
        // Incremental: the same map as rebuilding it from the view, without allocating a key
        // per database on every step (positions rarely change between two steps of one node).
        // Fast path: the view lists the same databases as the map, in the same (name) order —
        // names are shared, so equal names are usually the same allocation.
        let same_names = track.pos.len() == view.positions.len()
            && track.pos.keys().zip(&view.positions).all(|(have, (db, ..))| DbId::ptr_eq(have, db) || have == db);
        if same_names {
            for (pos, (_, txid, checksum)) in track.pos.values_mut().zip(&view.positions) {
                *pos = (*txid, *checksum);
            }
        } else {
            track.pos.retain(|db, _| view.positions.iter().any(|(d, ..)| d == db));
            for (db, txid, checksum) in &view.positions {
                match track.pos.get_mut(db) {
                    Some(pos) => *pos = (*txid, *checksum),
                    None => {
                        track.pos.insert(db.clone(), (*txid, *checksum));
                    }
                }
            }
        }
        debug_assert!(track.pos.iter().map(|(d, p)| (&**d, *p)).eq(view_sorted(view)), "incremental position map");
        if restarted {
            // A database the restarted node does not have (its only commits never became
            // durable) has no history there any more.
            track.chain.retain(|db, _| view.positions.iter().any(|(d, ..)| d == db));
            for (db, txid, checksum) in &view.positions {
                let chain = chain_of(&mut track.chain, db);
                chain.truncate_after(*txid);
                if chain.get(txid) != Some(checksum) {
                    chain.clear();
                    chain.insert(*txid, *checksum);
                }
            }
        }
    }

    /// Invariant 2 (recomputation): whenever a running node has no disk command in flight, for
    /// each database it reports, its reported checksum equals the checksum recomputed from the
    /// simulated database pages it would serve to readers (a missing file counts as empty).
    /// This covers "after every apply and every restart": both end in such a quiescent moment.
    pub fn sweep(&mut self, now: TrueUs, node: NodeIdx, view: &MachineView, disk: &SimDisk) {
        for (db, txid, checksum) in &view.positions {
            let on_disk = disk.db_checksum(db);
            if on_disk != *checksum {
                self.fail(
                    Invariant::ChecksumRecompute,
                    now,
                    format!(
                        "n{} reports {db} at {txid}/{checksum:016x} but its pages checksum to {on_disk:016x}",
                        node + 1
                    ),
                );
            }
        }
    }

    /// Reads: a read of a quiescent node must observe a state some primary produced (or the
    /// empty database) — no torn or phantom state is ever visible.
    pub fn on_read(&mut self, now: TrueUs, node: NodeIdx, db: &DbId, txid: u64, checksum: u64) {
        self.reads_checked += 1;
        if txid == 0 || checksum == CHECKSUM_EMPTY {
            return;
        }
        if self.produced.get(db, txid, checksum).is_none() {
            self.fail(
                Invariant::PrefixConsistency,
                now,
                format!("a read on n{} saw {db} at {txid}/{checksum:016x}, which no primary produced", node + 1),
            );
        }
    }

    /// Invariant 1 (no divergent survivors), checked once the cluster has converged: for every
    /// database, the histories (txid → checksum since each node's last snapshot reset) of all
    /// live nodes agree on every txid they share. Two different LTX for one (db, txid) on two
    /// read-serving nodes would show up as a disagreement.
    pub fn check_no_divergence(&mut self, now: TrueUs, live: &[NodeIdx]) {
        if let Some(detail) = self.first_divergence(live) {
            self.fail(Invariant::DivergentHistories, now, detail);
        }
    }

    /// The first (db, txid) on which two of `live` disagree, described: walking the nodes in
    /// order, each entry is compared with the first earlier node that has that (db, txid).
    fn first_divergence(&self, live: &[NodeIdx]) -> Option<String> {
        for (k, node) in live.iter().enumerate() {
            for (db, chain) in &self.nodes[usize::from(*node)].chain {
                // The earlier nodes' chains of `db`, each walked once alongside this one (both
                // ascend by txid) instead of searched per entry.
                let mut earlier_chains: Vec<(NodeIdx, std::iter::Peekable<ChainIter<'_>>)> =
                    live[..k]
                        .iter()
                        .filter_map(|other| Some((*other, self.nodes[usize::from(*other)].chain.get(db)?.iter().peekable())))
                        .collect();
                // txid 0 marks "position unknown" (e.g. after a torn write), not a transaction.
                for (&txid, &checksum) in chain.iter().filter(|(t, _)| **t > 0) {
                    let earlier = earlier_chains.iter_mut().find_map(|(other, theirs)| {
                        // Bounded by the chain's length: each step consumes one entry.
                        while theirs.next_if(|(t, _)| **t < txid).is_some() {}
                        theirs.peek().filter(|(t, _)| **t == txid).map(|(_, c)| (**c, *other))
                    });
                    if let Some((other, other_node)) = earlier.filter(|(other, _)| *other != checksum) {
                        return Some(format!(
                            "{db} txid {txid}: n{} has {checksum:016x}, n{} has {other:016x}",
                            node + 1,
                            other_node + 1
                        ));
                    }
                }
            }
        }
        None
    }

    /// Invariant 4 (durability), checked at the end: an acknowledged write (db, txid, checksum)
    /// survives iff it is an ancestor-or-self of the final primary's state in the tree of decided
    /// states (each state's parent is its pre-apply checksum at txid − 1). With
    /// `sync_replicas ≥ 1` a lost acknowledged write is a violation; in async mode lost writes are
    /// counted in [`Checker::lost_acked_writes`].
    pub fn check_durability(&mut self, now: TrueUs, history: &History, finals: &[(DbId, u64, u64)], sync_replicas: u8) {
        // Per database: the surviving (txid, checksum) states, as a sorted set (a vector: the
        // walk yields thousands of states, sorted once).
        let mut survivors: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
        for (db, txid, checksum) in finals {
            let (mut txid, mut checksum) = (*txid, *checksum);
            let states = survivors.entry(&**db).or_default();
            // Bounded by the txid: each step goes one txid down.
            while txid > 0 {
                states.push((txid, checksum));
                match self.produced.get(db, txid, checksum) {
                    Some((pre, _)) => {
                        checksum = *pre;
                        txid -= 1;
                    }
                    None => break,
                }
            }
        }
        for states in survivors.values_mut() {
            states.sort_unstable();
            states.dedup();
        }
        let mut lost = Vec::new();
        for op in &history.ops {
            if let (OpKind::Write { db }, Outcome::Ok { txid, checksum }) = (&op.kind, &op.outcome) {
                if survivors.get(*db).is_none_or(|states| states.binary_search(&(*txid, *checksum)).is_err()) {
                    lost.push((op.id, *db, *txid));
                }
            }
        }
        self.lost_acked_writes = lost.len() as u64;
        if sync_replicas >= 1 && !lost.is_empty() {
            self.fail(
                Invariant::Durability,
                now,
                format!("{} acknowledged writes lost with sync_replicas = {sync_replicas}, first: {:?}", lost.len(), lost[0]),
            );
        }
    }
}

/// The states primaries decided, as a map (db, txid, post-apply checksum) → (pre-apply
/// checksum, epoch): per database a vector sorted by (txid, checksum), searched by bisection.
/// Primaries decide TXIDs in increasing order (a new primary continues from its position), so
/// nearly every insert is an append, where a B-tree map allocated nodes and chased pointers on
/// every lookup (one per apply and per read).
#[derive(Debug, Clone, Default)]
struct Produced {
    dbs: Vec<(DbId, Vec<ProducedState>)>,
}

/// One decided state: (txid, post-apply checksum) and its (pre-apply checksum, epoch).
type ProducedState = ((u64, u64), (u64, u64));

impl Produced {
    fn states(&self, db: &DbId) -> Option<&Vec<ProducedState>> {
        self.dbs.iter().find(|(d, _)| DbId::ptr_eq(d, db) || d == db).map(|(_, states)| states)
    }

    /// Records a decided state, replacing what was recorded for the same (db, txid, post).
    fn insert(&mut self, db: &DbId, txid: u64, post: u64, value: (u64, u64)) {
        let at = match self.dbs.iter().position(|(d, _)| DbId::ptr_eq(d, db) || d == db) {
            Some(at) => at,
            None => {
                self.dbs.push((db.clone(), Vec::new()));
                self.dbs.len() - 1
            }
        };
        let states = &mut self.dbs[at].1;
        let key = (txid, post);
        if states.last().is_none_or(|(last, _)| *last < key) {
            states.push((key, value));
            return;
        }
        match states.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => states[i].1 = value,
            Err(i) => states.insert(i, (key, value)),
        }
    }

    fn get(&self, db: &DbId, txid: u64, post: u64) -> Option<&(u64, u64)> {
        let states = self.states(db)?;
        let key = (txid, post);
        // TXIDs are dense and mostly decided once: the state sits at its distance from the first
        // TXID unless histories branched (then bisection finds it).
        if let Some(state) = dense_guess(states, txid, |((t, _), _)| *t).filter(|(k, _)| *k == key) {
            return Some(&state.1);
        }
        let i = states.binary_search_by(|(k, _)| k.cmp(&key)).ok()?;
        Some(&states[i].1)
    }
}

/// The entry of `entries` (sorted by TXID, `txid_of` each entry's) at `txid`'s distance from the
/// first entry's TXID, if there is one there: where `txid` sits when TXIDs are dense. The caller
/// checks that it is the entry sought.
fn dense_guess<T>(entries: &[T], txid: u64, txid_of: impl Fn(&T) -> u64) -> Option<&T> {
    let first = txid_of(entries.first()?);
    entries.get(usize::try_from(txid.checked_sub(first)?).ok()?)
}

/// One node's history of one database, txid → checksum, as a map ordered by txid would hold
/// it: a vector sorted by txid, searched by bisection. Histories grow by one txid per commit or
/// apply (appends); a B-tree map allocated nodes as they grew and chased pointers on every
/// lookup (the prefix check looks one up per apply).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Chain {
    entries: Vec<(u64, u64)>,
}

/// [`Chain::iter`]'s iterator: entries as `(&txid, &checksum)`, ascending.
type ChainIter<'a> = std::iter::Map<std::slice::Iter<'a, (u64, u64)>, fn(&'a (u64, u64)) -> (&'a u64, &'a u64)>;

impl Chain {
    fn single(txid: u64, checksum: u64) -> Chain {
        Chain { entries: vec![(txid, checksum)] }
    }

    fn find(&self, txid: u64) -> Result<usize, usize> {
        // Histories are dense runs of TXIDs: `txid` sits at its distance from the first one.
        if dense_guess(&self.entries, txid, |(t, _)| *t).is_some_and(|(t, _)| *t == txid) {
            return Ok((txid - self.entries[0].0) as usize);
        }
        self.entries.binary_search_by_key(&txid, |(t, _)| *t)
    }

    /// Sets the checksum of `txid`.
    fn insert(&mut self, txid: u64, checksum: u64) {
        if self.entries.last().is_none_or(|(last, _)| *last < txid) {
            self.entries.push((txid, checksum));
            return;
        }
        match self.find(txid) {
            Ok(at) => self.entries[at].1 = checksum,
            Err(at) => self.entries.insert(at, (txid, checksum)),
        }
    }

    fn get(&self, txid: &u64) -> Option<&u64> {
        self.find(*txid).ok().map(|at| &self.entries[at].1)
    }

    /// Forgets every txid above `txid`.
    fn truncate_after(&mut self, txid: u64) {
        let keep = self.entries.partition_point(|(t, _)| *t <= txid);
        self.entries.truncate(keep);
    }

    fn clear(&mut self) {
        self.entries.clear();
    }

    fn iter(&self) -> ChainIter<'_> {
        fn refs(entry: &(u64, u64)) -> (&u64, &u64) {
            (&entry.0, &entry.1)
        }
        self.entries.iter().map(refs as fn(&(u64, u64)) -> (&u64, &u64))
    }
}

/// The history map of `db`, created empty on first use (without cloning the name when it exists).
fn chain_of<'a>(chains: &'a mut BTreeMap<DbId, Chain>, db: &DbId) -> &'a mut Chain {
    if !chains.contains_key(db) {
        chains.insert(db.clone(), Chain::default());
    }
    chains.get_mut(db).expect("inserted above")
}

/// The view's positions as the checker's map would list them (sorted by database).
fn view_sorted(view: &MachineView) -> impl Iterator<Item = (&str, (u64, u64))> {
    let mut all: Vec<(&str, (u64, u64))> = view.positions.iter().map(|(d, t, c)| (&**d, (*t, *c))).collect();
    all.sort_unstable();
    all.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(entries: &[(u64, u64)]) -> Chain {
        let mut chain = Chain::default();
        for (txid, checksum) in entries {
            chain.insert(*txid, *checksum);
        }
        chain
    }

    /// The decided-state store answers as a map keyed by (db, txid, checksum) would, for
    /// appends, out-of-order inserts (a failover's lower TXIDs), replacements and misses.
    #[test]
    fn produced_states_behave_as_a_map() {
        let dbs = [DbId::from("db"), DbId::from("db2"), DbId::from("db")];
        let mut produced = Produced::default();
        let mut reference: BTreeMap<(String, u64, u64), (u64, u64)> = BTreeMap::new();
        let mut state = 7u64;
        for i in 0..2_000u64 {
            let r = crate::rng::splitmix64(&mut state);
            let db = &dbs[(r % 3) as usize];
            let txid = if r % 5 == 0 { (r >> 8) % 50 } else { i / 3 };
            let post = (r >> 16) % 4;
            produced.insert(db, txid, post, (i, r));
            reference.insert((db.to_string(), txid, post), (i, r));
            for probe in [txid, txid + 1, (r >> 24) % 60] {
                for post in 0..5 {
                    let want = reference.get(&(db.to_string(), probe, post));
                    assert_eq!(produced.get(db, probe, post), want, "{db} {probe} {post}");
                }
            }
        }
    }

    /// A history answers, truncates and lists as a map ordered by txid would.
    #[test]
    fn chains_behave_as_ordered_maps() {
        let mut chain = Chain::default();
        let mut reference: BTreeMap<u64, u64> = BTreeMap::new();
        let mut state = 11u64;
        for i in 0..3_000u64 {
            let r = crate::rng::splitmix64(&mut state);
            match r % 50 {
                0 => {
                    let cut = (r >> 8) % (i / 2 + 1);
                    chain.truncate_after(cut);
                    reference.retain(|t, _| *t <= cut);
                }
                1 => {
                    chain.clear();
                    reference.clear();
                }
                _ => {
                    let txid = if r % 7 == 0 { (r >> 8) % (i + 1) } else { i };
                    chain.insert(txid, r);
                    reference.insert(txid, r);
                }
            }
            let probe = (r >> 16) % (i + 2);
            assert_eq!(chain.get(&probe), reference.get(&probe));
            assert!(chain.iter().eq(reference.iter()), "after step {i}");
        }
    }

    /// Invariant 1 (no divergent survivors): a disagreement is found between any two live nodes
    /// that share a txid, even when the first node lacks it; agreeing and dead nodes pass.
    #[test]
    fn divergence_is_found_between_any_two_live_nodes_sharing_a_txid() {
        let db = DbId::from("db");
        let mut checker = Checker::new(4);
        checker.nodes[0].chain.insert(db.clone(), chain(&[(0, 99), (1, 10), (2, 20)]));
        checker.nodes[1].chain.insert(db.clone(), chain(&[(0, 98), (2, 20), (3, 30)]));
        checker.nodes[2].chain.insert(db.clone(), chain(&[(3, 31)]));
        checker.nodes[3].chain.insert(db.clone(), chain(&[(1, 11)]));
        // n4 is not live: its different txid 1 does not count; txid 0 never counts.
        checker.check_no_divergence(7, &[0, 1]);
        assert_eq!(checker.violation, None);
        checker.check_no_divergence(7, &[0, 1, 2]);
        let v = checker.violation.expect("n3 disagrees with n2 on txid 3");
        assert_eq!(v.invariant, Invariant::DivergentHistories);
        assert!(v.detail.contains("txid 3") && v.detail.contains("n3 has") && v.detail.contains("n2 has"), "{}", v.detail);
    }
}
