//! Random runs: every option of a run, and its faults, derived from one seed (swarm testing).
//!
//! A random run is an ordinary [`Scenario`] whose faults are generated up front as scripted
//! steps, so a failing run can be written out and shrunk like any scenario file. The same
//! generator expands `random_faults = true` in a scenario file.
//!
//! Faults stay inside the recoverable envelope the core promises to survive: clock drift within
//! ±200 ppm, forward jumps only, every pause and crash eventually undone (at the latest when the
//! world heals at `duration_ms`).

use std::collections::BTreeSet;

use crate::disk::DiskFault;
use crate::machine::Peer;
use crate::net::NetConfig;
use crate::rng::Rng;
use crate::scenario::{Action, MergeLtx, Scenario, Step};

/// Drift bound for random clock faults, in ppm.
pub const DRIFT_PPM_BOUND: i64 = 200;

/// Faults for `[0, duration_ms)`, drawn from `seed`.
pub fn faults(seed: u64, nodes: u8, lease_ttl_ms: u64, duration_ms: u64) -> Vec<Step> {
    let mut rng = Rng::new(seed, "faults");
    let mut steps = Vec::new();
    let node = |rng: &mut Rng| rng.below(u64::from(nodes)) as u8;
    let mean_gap_ms = 1_500.0;
    let mut at = rng.exponential(mean_gap_ms);
    // Bounded: each iteration moves `at` forward by at least 1 ms.
    while at < duration_ms {
        let until = |rng: &mut Rng, low: u64, high: u64| (at + rng.range(low, high)).min(duration_ms.saturating_sub(1));
        match rng.below(13) {
            0 | 1 => {
                let n = node(&mut rng);
                steps.push(Step { at_ms: at, action: Action::Crash { node: n } });
                let back = until(&mut rng, 100, 4_000);
                steps.push(Step { at_ms: back, action: Action::Restart { node: n } });
            }
            2 => {
                // GC-style pause, often longer than the lease.
                let n = node(&mut rng);
                steps.push(Step { at_ms: at, action: Action::Pause { node: n } });
                let back = until(&mut rng, lease_ttl_ms / 2, lease_ttl_ms * 3);
                steps.push(Step { at_ms: back, action: Action::Resume { node: n } });
            }
            3 | 4 => {
                let mut peers: Vec<Peer> = (0..nodes).map(Peer::Node).collect();
                peers.push(Peer::Lease);
                rng.shuffle(&mut peers);
                let cut = rng.range(1, peers.len() as u64 - 1) as usize;
                let groups: Vec<BTreeSet<Peer>> =
                    vec![peers[..cut].iter().copied().collect(), peers[cut..].iter().copied().collect()];
                steps.push(Step { at_ms: at, action: Action::Partition { groups } });
                let back = until(&mut rng, 500, 6_000);
                steps.push(Step { at_ms: back, action: Action::Heal });
            }
            5 => {
                // Isolate one node from the lease service only, or one direction of a link.
                let n = node(&mut rng);
                let other = if rng.chance(0.5) { Peer::Lease } else { Peer::Node(node(&mut rng)) };
                if other != Peer::Node(n) {
                    let (from, to) = if rng.chance(0.5) { (Peer::Node(n), other) } else { (other, Peer::Node(n)) };
                    steps.push(Step { at_ms: at, action: Action::Block { from, to } });
                    let back = until(&mut rng, 500, 5_000);
                    steps.push(Step { at_ms: back, action: Action::Heal });
                }
            }
            6 => {
                let n = node(&mut rng);
                let drift = rng.range(0, 2 * DRIFT_PPM_BOUND as u64) as i64 - DRIFT_PPM_BOUND;
                let offset = if rng.chance(0.3) { Some(rng.range(1, 3_000) as i64) } else { None };
                steps.push(Step { at_ms: at, action: Action::Clock { node: n, offset_ms: offset, drift_ppm: Some(drift) } });
            }
            7 => steps.push(Step { at_ms: at, action: Action::LeaseRevoke }),
            8 => steps.push(Step { at_ms: at, action: Action::Handoff { node: node(&mut rng) } }),
            9 => {
                let n = node(&mut rng);
                let kind = *rng.pick(&[DiskFault::Eio, DiskFault::Enospc, DiskFault::TornWrite]).expect("non-empty");
                steps.push(Step { at_ms: at, action: Action::DiskFault { node: n, kind } });
                if kind == DiskFault::TornWrite {
                    let crash_at = until(&mut rng, 1, 200);
                    steps.push(Step { at_ms: crash_at, action: Action::Crash { node: n } });
                    steps.push(Step { at_ms: until(&mut rng, 300, 2_000).max(crash_at), action: Action::Restart { node: n } });
                }
            }
            10 => {
                // Swizzle: clog a few nodes one by one, unclog them in random order.
                let mut victims: Vec<u8> = (0..nodes).collect();
                rng.shuffle(&mut victims);
                victims.truncate(rng.range(1, u64::from(nodes)) as usize);
                let mut t = at;
                for v in &victims {
                    steps.push(Step { at_ms: t.min(duration_ms.saturating_sub(1)), action: Action::Clog { node: Peer::Node(*v) } });
                    t += rng.range(50, 500);
                }
                rng.shuffle(&mut victims);
                for v in &victims {
                    t += rng.range(50, 800);
                    steps.push(Step { at_ms: t.min(duration_ms.saturating_sub(1)), action: Action::Unclog { node: Peer::Node(*v) } });
                }
            }
            11 => {
                // Correlated: two nodes crash together (maybe the primary and its acking replica).
                let a = node(&mut rng);
                let b = node(&mut rng);
                for n in BTreeSet::from([a, b]) {
                    steps.push(Step { at_ms: at, action: Action::Crash { node: n } });
                    steps.push(Step { at_ms: until(&mut rng, 200, 3_000), action: Action::Restart { node: n } });
                }
            }
            _ => {
                if rng.chance(0.3) {
                    // Power loss: every node at once.
                    for n in 0..nodes {
                        steps.push(Step { at_ms: at, action: Action::Crash { node: n } });
                    }
                    let back = until(&mut rng, 200, 2_000);
                    for n in 0..nodes {
                        steps.push(Step { at_ms: back, action: Action::Restart { node: n } });
                    }
                }
            }
        }
        at += 1 + rng.exponential(mean_gap_ms);
    }
    steps.sort_by_key(|s| s.at_ms);
    steps
}

/// A whole random run for `seed`: cluster shape, lease TTL, replication mode, network quality,
/// workload and faults. `nodes` forces the node count.
pub fn scenario(seed: u64, nodes: Option<u8>) -> Scenario {
    scenario_with(seed, nodes, false)
}

/// [`scenario`], with `sync` forcing synchronous replication wherever the cluster has a replica:
/// `sync_replicas` 1, or 2 in a third of the clusters of four or more nodes (drawn from a stream
/// of its own, so everything else about the run is the same as without `sync`).
pub fn scenario_with(seed: u64, nodes: Option<u8>, sync: bool) -> Scenario {
    scenario_biased(seed, nodes, Bias { sync, merge: MergeChoice::Seeded })
}

/// Share of random runs whose disks store LTX writes merged ([`MergeChoice::Seeded`]).
pub const MERGE_SHARE: f64 = 0.35;

/// Whether a random run's disks store LTX writes merged ([`Scenario::merge_ltx`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MergeChoice {
    /// In a share ([`MERGE_SHARE`]) of the seeds, drawn from the seed.
    #[default]
    Seeded,
    /// In every run.
    On,
    /// In no run.
    Off,
}

/// How a swarm biases its random runs; the default is the plain random run ([`scenario`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bias {
    /// Synchronous replication wherever the cluster has a replica ([`scenario_with`]).
    pub sync: bool,
    pub merge: MergeChoice,
}

/// [`scenario_with`], with merged LTX storage as `bias.merge` says. Whether and how a run
/// merges is drawn from a stream of its own: everything else about the run is the same as with
/// merging off, and with merging off the run is the one it was before merging existed.
pub fn scenario_biased(seed: u64, nodes: Option<u8>, bias: Bias) -> Scenario {
    let mut s = scenario_unbiased(seed, nodes);
    if bias.sync && s.nodes >= 2 {
        let mut rng = Rng::new(seed, "sync");
        s.sync_replicas = if s.nodes >= 4 && rng.chance(1.0 / 3.0) { 2 } else { 1 };
    }
    let mut rng = Rng::new(seed, "merge-knob");
    let on = match bias.merge {
        MergeChoice::Seeded => rng.chance(MERGE_SHARE),
        MergeChoice::On => true,
        MergeChoice::Off => false,
    };
    if on {
        let probability = *rng.pick(&[0.3, 0.7, 1.0]).expect("non-empty");
        let txids_max = *rng.pick(&[2, 4, 16, 64]).expect("non-empty");
        s.merge_ltx = Some(MergeLtx { probability, txids_max });
    }
    s
}

fn scenario_unbiased(seed: u64, nodes: Option<u8>) -> Scenario {
    let mut rng = Rng::new(seed, "swarm");
    let nodes = nodes.unwrap_or_else(|| *rng.pick(&[1, 2, 3, 3, 3, 4, 5]).expect("non-empty"));
    let mut s = Scenario::new(&format!("random seed {seed}"), seed, nodes);
    s.lease_ttl_ms = *rng.pick(&[1_000, 2_000, 3_000]).expect("non-empty");
    s.sync_replicas = if nodes >= 2 && rng.chance(0.3) { 1 } else { 0 };
    s.duration_ms = rng.range(4_000, 12_000);
    s.liveness_ms = 30_000;
    s.workload.writes_per_s = rng.range(20, 100) as u32;
    s.workload.reads_per_s = rng.range(0, 100) as u32;
    s.network = NetConfig {
        latency_us_min: rng.range(100, 2_000),
        latency_us_mean_extra: rng.range(200, 5_000),
        loss: if rng.chance(0.5) { rng.unit() * 0.05 } else { 0.0 },
        duplicate: if rng.chance(0.3) { rng.unit() * 0.05 } else { 0.0 },
        reorder: rng.chance(0.1),
    };
    s.steps = faults(seed, nodes, s.lease_ttl_ms, s.duration_ms);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_bias_changes_only_the_replication_mode() {
        for seed in 0..50 {
            let plain = scenario(seed, None);
            let mut sync = scenario_with(seed, None, true);
            assert_eq!(sync.sync_replicas >= 1, plain.nodes >= 2, "seed {seed}");
            assert!(u32::from(sync.sync_replicas) < u32::from(sync.nodes.max(1)));
            sync.sync_replicas = plain.sync_replicas;
            assert_eq!(sync, plain);
        }
    }

    #[test]
    fn merge_bias_changes_only_the_merge_knob() {
        let mut seeded_on = 0;
        for seed in 0..200 {
            let plain = scenario_biased(seed, None, Bias { sync: false, merge: MergeChoice::Off });
            assert_eq!(plain.merge_ltx, None);
            for merge in [MergeChoice::Seeded, MergeChoice::On] {
                let mut s = scenario_biased(seed, None, Bias { sync: false, merge });
                if merge == MergeChoice::On {
                    assert!(s.merge_ltx.is_some_and(|m| m.probability > 0.0 && m.txids_max >= 2), "seed {seed}");
                } else if s.merge_ltx.is_some() {
                    seeded_on += 1;
                }
                s.merge_ltx = None;
                assert_eq!(s, plain, "seed {seed}");
            }
        }
        assert!((40..=100).contains(&seeded_on), "a share of seeds merges: {seeded_on} of 200");
    }

    #[test]
    fn random_scenarios_are_a_function_of_the_seed() {
        assert_eq!(scenario(9, None), scenario(9, None));
        assert_ne!(scenario(9, None), scenario(10, None));
    }

    #[test]
    fn faults_stay_before_duration_and_in_order() {
        for seed in 0..50 {
            let s = scenario(seed, Some(3));
            assert!(s.steps.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
            assert!(s.steps.iter().all(|st| st.at_ms < s.duration_ms));
        }
    }
}
