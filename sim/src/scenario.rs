//! Scenario files (`scenarios/*.toml`): parsing, validation and writing.
//!
//! The format is issue 4's, accepted as written. Unknown keys and unknown actions are errors that
//! name the key (or action) and its line. Steps run in `at_ms` order, ties in file order.
//! Extensions (all optional, written by the shrinker so that a shrunk random run reproduces):
//! a `[network]` table (`latency_us_min`, `latency_us_mean_extra`, `loss`, `duplicate`,
//! `reorder`), a top-level `planted = "NAME"`, a top-level `liveness_ms`, and the actions
//! `clog`/`unclog` (`node`) and `block` (`from`, `to`: one direction cut until `heal`).
//! Cluster membership: a top-level `other_cluster = ["n3"]` configures the listed nodes with
//! another cluster id than the rest (they try to follow, never lead; they are not members, so
//! liveness does not wait for them), and `[expect] min_cluster_mismatches = N` requires that many
//! `ClusterMismatch` refusals to have happened. A top-level `compress_ltx = false` runs every node
//! with LZ4 compression of LTX files off (the core's `Config::compress_ltx`, LiteFS's
//! `data.compress`); the default is on, as in production.
//! Merged LTX storage: a `[merge_ltx]` table (`probability`, `txids_max`) lets each node's disk
//! answer a one-transaction incremental LTX write by storing it merged with the node's newest LTX
//! file before it (the core's `IoOutcome::LtxMerged`, as `ltxfs` stores bursts of WAL-mode
//! commits): each such write is merged with chance `probability` (drawn from the run's seed) when
//! the merged file would span at most `txids_max` TXIDs (2 or more); absent, nothing is merged.
//! `[expect] max_snapshots = N` bounds the snapshots replicas applied (0: every catch-up was
//! incremental), `[expect] min_merged_ltx = N` requires that many merged writes.
//!
//! This module decides nothing about running a scenario.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Deserialize;
use toml::Spanned;

use crate::disk::DiskFault;
use crate::machine::{NodeIdx, Peer};
use crate::net::NetConfig;

#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub writes_per_s: u32,
    pub reads_per_s: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Pause { node: NodeIdx },
    Resume { node: NodeIdx },
    Crash { node: NodeIdx },
    Restart { node: NodeIdx },
    Partition { groups: Vec<BTreeSet<Peer>> },
    Heal,
    Clock { node: NodeIdx, offset_ms: Option<i64>, drift_ppm: Option<i64> },
    LeaseRevoke,
    Handoff { node: NodeIdx },
    DiskFault { node: NodeIdx, kind: DiskFault },
    Clog { node: Peer },
    Unclog { node: Peer },
    Block { from: Peer, to: Peer },
}

impl Action {
    /// The nodes this action names (for shrinking by node count).
    pub fn nodes(&self) -> Vec<Peer> {
        match self {
            Action::Pause { node }
            | Action::Resume { node }
            | Action::Crash { node }
            | Action::Restart { node }
            | Action::Clock { node, .. }
            | Action::Handoff { node }
            | Action::DiskFault { node, .. } => vec![Peer::Node(*node)],
            Action::Partition { groups } => groups.iter().flatten().copied().collect(),
            Action::Clog { node } | Action::Unclog { node } => vec![*node],
            Action::Block { from, to } => vec![*from, *to],
            Action::Heal | Action::LeaseRevoke => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub at_ms: u64,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Expect {
    pub lost_acked_writes: Option<u64>,
    pub min_failovers: Option<u64>,
    pub min_cluster_mismatches: Option<u64>,
    /// At most this many snapshots applied by replicas (`SnapshotReset` events).
    pub max_snapshots: Option<u64>,
    /// At least this many LTX writes stored merged.
    pub min_merged_ltx: Option<u64>,
}

/// Merged LTX storage (`[merge_ltx]`): see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MergeLtx {
    /// Chance that a write that can be merged is merged.
    pub probability: f64,
    /// Most TXIDs one merged file spans (at least 2).
    pub txids_max: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    pub nodes: u8,
    pub lease_ttl_ms: u64,
    pub sync_replicas: u8,
    pub duration_ms: u64,
    pub random_faults: bool,
    pub workload: Workload,
    /// Sorted by `at_ms`, ties in file order.
    pub steps: Vec<Step>,
    pub expect: Expect,
    pub network: NetConfig,
    pub planted: Option<String>,
    /// How long after healing the cluster has to converge.
    pub liveness_ms: u64,
    /// Nodes configured with another cluster id.
    pub other_cluster: Vec<NodeIdx>,
    /// Whether nodes LZ4-compress the LTX files they write (`Config::compress_ltx`).
    pub compress_ltx: bool,
    /// Whether (and how) disks store LTX writes merged; `None`: never.
    pub merge_ltx: Option<MergeLtx>,
}

impl Scenario {
    pub fn new(name: &str, seed: u64, nodes: u8) -> Scenario {
        Scenario {
            name: name.to_string(),
            seed,
            nodes,
            lease_ttl_ms: 2000,
            sync_replicas: 0,
            duration_ms: 10_000,
            random_faults: false,
            workload: Workload { writes_per_s: 50, reads_per_s: 100 },
            steps: Vec::new(),
            expect: Expect::default(),
            network: NetConfig::default(),
            planted: None,
            liveness_ms: 30_000,
            other_cluster: Vec::new(),
            compress_ltx: true,
            merge_ltx: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<String>,
    seed: Option<u64>,
    nodes: Option<Spanned<u8>>,
    lease_ttl_ms: Option<u64>,
    sync_replicas: Option<Spanned<u8>>,
    duration_ms: Option<u64>,
    random_faults: Option<bool>,
    planted: Option<String>,
    liveness_ms: Option<u64>,
    other_cluster: Option<Spanned<Vec<Spanned<String>>>>,
    compress_ltx: Option<bool>,
    merge_ltx: Option<Spanned<RawMergeLtx>>,
    workload: Option<RawWorkload>,
    network: Option<RawNetwork>,
    #[serde(default)]
    step: Vec<Spanned<RawStep>>,
    expect: Option<RawExpect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    writes_per_s: Option<u32>,
    reads_per_s: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMergeLtx {
    probability: f64,
    txids_max: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    latency_us_min: Option<u64>,
    latency_us_mean_extra: Option<u64>,
    loss: Option<f64>,
    duplicate: Option<f64>,
    reorder: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    lost_acked_writes: Option<u64>,
    min_failovers: Option<u64>,
    min_cluster_mismatches: Option<u64>,
    max_snapshots: Option<u64>,
    min_merged_ltx: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    at_ms: Option<Spanned<u64>>,
    action: Option<Spanned<String>>,
    node: Option<Spanned<String>>,
    groups: Option<Spanned<Vec<Vec<String>>>>,
    offset_ms: Option<Spanned<i64>>,
    drift_ppm: Option<Spanned<i64>>,
    kind: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    to: Option<Spanned<String>>,
}

/// A scenario error, with the 1-based line it refers to.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

fn parse_peer(text: &str, name: &Spanned<String>, nodes: u8, allow_lease: bool) -> Result<Peer, ScenarioError> {
    let line = line_of(text, name.span().start);
    let value = name.get_ref().as_str();
    if value == "lease" {
        return if allow_lease {
            Ok(Peer::Lease)
        } else {
            Err(ScenarioError { line, message: "\"lease\" is not a node here".into() })
        };
    }
    let index = value
        .strip_prefix('n')
        .and_then(|digits| digits.parse::<u8>().ok())
        .filter(|index| (1..=nodes).contains(index))
        .ok_or_else(|| ScenarioError { line, message: format!("unknown node `{value}` (nodes are n1..n{nodes})") })?;
    Ok(Peer::Node(index - 1))
}

fn parse_node(text: &str, name: &Spanned<String>, nodes: u8) -> Result<NodeIdx, ScenarioError> {
    match parse_peer(text, name, nodes, false)? {
        Peer::Node(index) => Ok(index),
        Peer::Lease => unreachable!("lease rejected above"),
    }
}

const ACTIONS: &[&str] = &[
    "pause", "resume", "crash", "restart", "partition", "heal", "clock", "lease_revoke", "handoff",
    "disk_fault", "clog", "unclog", "block",
];

fn allowed_keys(action: &str) -> &'static [&'static str] {
    match action {
        "pause" | "resume" | "crash" | "restart" | "handoff" | "clog" | "unclog" => &["node"],
        "partition" => &["groups"],
        "clock" => &["node", "offset_ms", "drift_ppm"],
        "disk_fault" => &["node", "kind"],
        "block" => &["from", "to"],
        _ => &[],
    }
}

fn parse_step(text: &str, raw: &Spanned<RawStep>, nodes: u8) -> Result<Step, ScenarioError> {
    let table_line = line_of(text, raw.span().start);
    let step = raw.get_ref();
    let at_ms = step
        .at_ms
        .as_ref()
        .map(|v| *v.get_ref())
        .ok_or_else(|| ScenarioError { line: table_line, message: "step without `at_ms`".into() })?;
    let action_name = step
        .action
        .as_ref()
        .ok_or_else(|| ScenarioError { line: table_line, message: "step without `action`".into() })?;
    let action_line = line_of(text, action_name.span().start);
    let name = action_name.get_ref().as_str();
    if !ACTIONS.contains(&name) {
        return Err(ScenarioError { line: action_line, message: format!("unknown action `{name}`") });
    }
    let present: [(&str, Option<usize>); 7] = [
        ("node", step.node.as_ref().map(|v| v.span().start)),
        ("groups", step.groups.as_ref().map(|v| v.span().start)),
        ("offset_ms", step.offset_ms.as_ref().map(|v| v.span().start)),
        ("drift_ppm", step.drift_ppm.as_ref().map(|v| v.span().start)),
        ("kind", step.kind.as_ref().map(|v| v.span().start)),
        ("from", step.from.as_ref().map(|v| v.span().start)),
        ("to", step.to.as_ref().map(|v| v.span().start)),
    ];
    let allowed = allowed_keys(name);
    for (key, offset) in present {
        if let Some(offset) = offset {
            if !allowed.contains(&key) {
                return Err(ScenarioError {
                    line: line_of(text, offset),
                    message: format!("key `{key}` is not valid for action `{name}`"),
                });
            }
        }
    }
    let need_node = || {
        step.node.as_ref().ok_or_else(|| ScenarioError {
            line: action_line,
            message: format!("action `{name}` needs `node`"),
        })
    };
    let action = match name {
        "pause" => Action::Pause { node: parse_node(text, need_node()?, nodes)? },
        "resume" => Action::Resume { node: parse_node(text, need_node()?, nodes)? },
        "crash" => Action::Crash { node: parse_node(text, need_node()?, nodes)? },
        "restart" => Action::Restart { node: parse_node(text, need_node()?, nodes)? },
        "handoff" => Action::Handoff { node: parse_node(text, need_node()?, nodes)? },
        "clog" => Action::Clog { node: parse_peer(text, need_node()?, nodes, true)? },
        "unclog" => Action::Unclog { node: parse_peer(text, need_node()?, nodes, true)? },
        "heal" => Action::Heal,
        "lease_revoke" => Action::LeaseRevoke,
        "partition" => {
            let groups = step.groups.as_ref().ok_or_else(|| ScenarioError {
                line: action_line,
                message: "action `partition` needs `groups`".into(),
            })?;
            let line = line_of(text, groups.span().start);
            let mut parsed = Vec::new();
            for group in groups.get_ref() {
                let mut set = BTreeSet::new();
                for member in group {
                    let spanned = Spanned::new(groups.span(), member.clone());
                    set.insert(parse_peer(text, &spanned, nodes, true).map_err(|e| ScenarioError { line, ..e })?);
                }
                parsed.push(set);
            }
            Action::Partition { groups: parsed }
        }
        "clock" => Action::Clock {
            node: parse_node(text, need_node()?, nodes)?,
            offset_ms: step.offset_ms.as_ref().map(|v| *v.get_ref()),
            drift_ppm: step.drift_ppm.as_ref().map(|v| *v.get_ref()),
        },
        "disk_fault" => {
            let kind = step.kind.as_ref().ok_or_else(|| ScenarioError {
                line: action_line,
                message: "action `disk_fault` needs `kind`".into(),
            })?;
            let fault = match kind.get_ref().as_str() {
                "eio" => DiskFault::Eio,
                "enospc" => DiskFault::Enospc,
                "torn_write" => DiskFault::TornWrite,
                other => {
                    return Err(ScenarioError {
                        line: line_of(text, kind.span().start),
                        message: format!("unknown disk fault kind `{other}` (eio | enospc | torn_write)"),
                    })
                }
            };
            Action::DiskFault { node: parse_node(text, need_node()?, nodes)?, kind: fault }
        }
        "block" => {
            let missing = || ScenarioError { line: action_line, message: "action `block` needs `from` and `to`".into() };
            let from = parse_peer(text, step.from.as_ref().ok_or_else(missing)?, nodes, true)?;
            let to = parse_peer(text, step.to.as_ref().ok_or_else(missing)?, nodes, true)?;
            Action::Block { from, to }
        }
        _ => unreachable!("checked against ACTIONS"),
    };
    if let Action::Clock { drift_ppm: Some(drift), .. } = &action {
        if drift.abs() > crate::clock::DRIFT_PPM_LIMIT {
            return Err(ScenarioError { line: action_line, message: format!("drift_ppm {drift} out of range") });
        }
    }
    Ok(Step { at_ms, action })
}

/// Parses and validates a scenario file's text.
pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    let raw: RawScenario = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
        ScenarioError { line, message: e.message().to_string() }
    })?;
    let nodes = raw.nodes.as_ref().map(|n| *n.get_ref()).unwrap_or(3);
    if !(1..=7).contains(&nodes) {
        let line = raw.nodes.as_ref().map(|n| line_of(text, n.span().start)).unwrap_or(1);
        return Err(ScenarioError { line, message: format!("nodes = {nodes}: must be 1..=7") });
    }
    let mut scenario = Scenario::new(raw.name.as_deref().unwrap_or("unnamed"), raw.seed.unwrap_or(0), nodes);
    if let Some(ttl) = raw.lease_ttl_ms {
        scenario.lease_ttl_ms = ttl.max(1);
    }
    if let Some(sync) = &raw.sync_replicas {
        if *sync.get_ref() >= nodes {
            return Err(ScenarioError {
                line: line_of(text, sync.span().start),
                message: format!("sync_replicas = {} needs more than {} nodes", sync.get_ref(), nodes),
            });
        }
        scenario.sync_replicas = *sync.get_ref();
    }
    scenario.duration_ms = raw.duration_ms.unwrap_or(scenario.duration_ms);
    scenario.random_faults = raw.random_faults.unwrap_or(false);
    scenario.planted = raw.planted;
    scenario.liveness_ms = raw.liveness_ms.unwrap_or(scenario.liveness_ms);
    scenario.compress_ltx = raw.compress_ltx.unwrap_or(true);
    if let Some(m) = &raw.merge_ltx {
        let (probability, txids_max) = (m.get_ref().probability, m.get_ref().txids_max);
        if !(0.0..=1.0).contains(&probability) || txids_max < 2 {
            return Err(ScenarioError {
                line: line_of(text, m.span().start),
                message: format!("merge_ltx: probability {probability} must be in 0..=1 and txids_max {txids_max} at least 2"),
            });
        }
        scenario.merge_ltx = Some(MergeLtx { probability, txids_max });
    }
    if let Some(w) = raw.workload {
        scenario.workload.writes_per_s = w.writes_per_s.unwrap_or(scenario.workload.writes_per_s);
        scenario.workload.reads_per_s = w.reads_per_s.unwrap_or(scenario.workload.reads_per_s);
    }
    if let Some(n) = raw.network {
        let d = NetConfig::default();
        scenario.network = NetConfig {
            latency_us_min: n.latency_us_min.unwrap_or(d.latency_us_min),
            latency_us_mean_extra: n.latency_us_mean_extra.unwrap_or(d.latency_us_mean_extra),
            loss: n.loss.unwrap_or(d.loss).clamp(0.0, 0.9),
            duplicate: n.duplicate.unwrap_or(d.duplicate).clamp(0.0, 0.9),
            reorder: n.reorder.unwrap_or(d.reorder),
        };
    }
    if let Some(e) = raw.expect {
        scenario.expect = Expect {
            lost_acked_writes: e.lost_acked_writes,
            min_failovers: e.min_failovers,
            min_cluster_mismatches: e.min_cluster_mismatches,
            max_snapshots: e.max_snapshots,
            min_merged_ltx: e.min_merged_ltx,
        };
    }
    if let Some(list) = &raw.other_cluster {
        for name in list.get_ref() {
            let index = parse_node(text, name, nodes)?;
            if !scenario.other_cluster.contains(&index) {
                scenario.other_cluster.push(index);
            }
        }
        if scenario.other_cluster.len() >= usize::from(nodes) {
            return Err(ScenarioError {
                line: line_of(text, list.span().start),
                message: "other_cluster must leave at least one node in the cluster".into(),
            });
        }
    }
    for raw_step in &raw.step {
        scenario.steps.push(parse_step(text, raw_step, nodes)?);
    }
    // Stable: ties keep file order.
    scenario.steps.sort_by_key(|s| s.at_ms);
    Ok(scenario)
}

fn peer_str(peer: Peer) -> String {
    format!("\"{}\"", peer.name())
}

/// Writes a scenario in the file format (steps in run order); `parse(write(s)) == s`.
pub fn write(scenario: &Scenario) -> String {
    let mut out = String::new();
    let s = scenario;
    let _ = writeln!(out, "name = {:?}", s.name);
    let _ = writeln!(out, "seed = {}", s.seed);
    let _ = writeln!(out, "nodes = {}", s.nodes);
    let _ = writeln!(out, "lease_ttl_ms = {}", s.lease_ttl_ms);
    let _ = writeln!(out, "sync_replicas = {}", s.sync_replicas);
    let _ = writeln!(out, "duration_ms = {}", s.duration_ms);
    let _ = writeln!(out, "random_faults = {}", s.random_faults);
    let _ = writeln!(out, "liveness_ms = {}", s.liveness_ms);
    if let Some(planted) = &s.planted {
        let _ = writeln!(out, "planted = {planted:?}");
    }
    if !s.other_cluster.is_empty() {
        let names: Vec<String> = s.other_cluster.iter().map(|i| peer_str(Peer::Node(*i))).collect();
        let _ = writeln!(out, "other_cluster = [{}]", names.join(", "));
    }
    if !s.compress_ltx {
        let _ = writeln!(out, "compress_ltx = false");
    }
    if let Some(m) = &s.merge_ltx {
        let _ = writeln!(out, "\n[merge_ltx]\nprobability = {:?}\ntxids_max = {}", m.probability, m.txids_max);
    }
    let _ = writeln!(out, "\n[workload]\nwrites_per_s = {}\nreads_per_s = {}", s.workload.writes_per_s, s.workload.reads_per_s);
    let n = &s.network;
    let _ = writeln!(
        out,
        "\n[network]\nlatency_us_min = {}\nlatency_us_mean_extra = {}\nloss = {:?}\nduplicate = {:?}\nreorder = {}",
        n.latency_us_min, n.latency_us_mean_extra, n.loss, n.duplicate, n.reorder
    );
    if s.expect != Expect::default() {
        let _ = writeln!(out, "\n[expect]");
        if let Some(v) = s.expect.lost_acked_writes {
            let _ = writeln!(out, "lost_acked_writes = {v}");
        }
        if let Some(v) = s.expect.min_failovers {
            let _ = writeln!(out, "min_failovers = {v}");
        }
        if let Some(v) = s.expect.min_cluster_mismatches {
            let _ = writeln!(out, "min_cluster_mismatches = {v}");
        }
        if let Some(v) = s.expect.max_snapshots {
            let _ = writeln!(out, "max_snapshots = {v}");
        }
        if let Some(v) = s.expect.min_merged_ltx {
            let _ = writeln!(out, "min_merged_ltx = {v}");
        }
    }
    for step in &s.steps {
        let _ = writeln!(out, "\n[[step]]\nat_ms = {}", step.at_ms);
        let node = |i: NodeIdx| peer_str(Peer::Node(i));
        let body = match &step.action {
            Action::Pause { node: i } => format!("action = \"pause\"\nnode = {}", node(*i)),
            Action::Resume { node: i } => format!("action = \"resume\"\nnode = {}", node(*i)),
            Action::Crash { node: i } => format!("action = \"crash\"\nnode = {}", node(*i)),
            Action::Restart { node: i } => format!("action = \"restart\"\nnode = {}", node(*i)),
            Action::Handoff { node: i } => format!("action = \"handoff\"\nnode = {}", node(*i)),
            Action::Clog { node: p } => format!("action = \"clog\"\nnode = {}", peer_str(*p)),
            Action::Unclog { node: p } => format!("action = \"unclog\"\nnode = {}", peer_str(*p)),
            Action::Heal => "action = \"heal\"".to_string(),
            Action::LeaseRevoke => "action = \"lease_revoke\"".to_string(),
            Action::Partition { groups } => {
                let groups: Vec<String> = groups
                    .iter()
                    .map(|g| format!("[{}]", g.iter().map(|p| peer_str(*p)).collect::<Vec<_>>().join(", ")))
                    .collect();
                format!("action = \"partition\"\ngroups = [{}]", groups.join(", "))
            }
            Action::Clock { node: i, offset_ms, drift_ppm } => {
                let mut text = format!("action = \"clock\"\nnode = {}", node(*i));
                if let Some(v) = offset_ms {
                    let _ = write!(text, "\noffset_ms = {v}");
                }
                if let Some(v) = drift_ppm {
                    let _ = write!(text, "\ndrift_ppm = {v}");
                }
                text
            }
            Action::DiskFault { node: i, kind } => {
                let kind = match kind {
                    DiskFault::Eio => "eio",
                    DiskFault::Enospc => "enospc",
                    DiskFault::TornWrite => "torn_write",
                };
                format!("action = \"disk_fault\"\nnode = {}\nkind = \"{kind}\"", node(*i))
            }
            Action::Block { from, to } => format!("action = \"block\"\nfrom = {}\nto = {}", peer_str(*from), peer_str(*to)),
        };
        let _ = writeln!(out, "{body}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_EXAMPLE: &str = r#"
name = "stale primary after pause"
seed = 7                  # drives everything not scripted
nodes = 3                 # ids n1..nN; "lease" names the lease service
lease_ttl_ms = 2000
sync_replicas = 0         # 0 = async
duration_ms = 60000       # scripted and random faults happen before this; then healing + liveness check
random_faults = false     # true: the simulator also injects its own random faults before duration_ms
[workload]
writes_per_s = 50
reads_per_s = 200
[[step]]
at_ms = 5000
action = "pause"          # pause | resume | crash | restart | partition | heal | clock | lease_revoke | handoff | disk_fault
node = "n1"
[[step]]
at_ms = 3000
action = "partition"
groups = [["n1"], ["n2", "n3", "lease"]]   # two participants can talk iff some group holds both;
                                           # groups may overlap; one named in no group keeps all links;
                                           # action = "heal" (no other keys) ends every partition
[[step]]
at_ms = 4000
action = "clock"
node = "n2"
offset_ms = 1500          # optional
drift_ppm = 200           # optional
[[step]]
at_ms = 6000
action = "handoff"
node = "n2"               # the node that should become primary
[[step]]
at_ms = 7000
action = "disk_fault"
node = "n3"
kind = "eio"              # eio | enospc | torn_write (tears the next write before a crash)
[[step]]
at_ms = 8000
action = "lease_revoke"   # the lease service revokes the current lease (no other keys)
[expect]                  # all optional; invariants 1–5 always hold
lost_acked_writes = 0
min_failovers = 1
"#;

    #[test]
    fn issue_example_is_accepted_and_steps_run_in_time_order() {
        let s = parse(ISSUE_EXAMPLE).unwrap();
        assert_eq!(s.name, "stale primary after pause");
        assert_eq!((s.seed, s.nodes, s.lease_ttl_ms, s.duration_ms), (7, 3, 2000, 60_000));
        assert_eq!(s.workload, Workload { writes_per_s: 50, reads_per_s: 200 });
        let times: Vec<u64> = s.steps.iter().map(|st| st.at_ms).collect();
        assert_eq!(times, vec![3000, 4000, 5000, 6000, 7000, 8000]);
        assert_eq!(s.steps[2].action, Action::Pause { node: 0 });
        assert_eq!(s.expect, Expect { lost_acked_writes: Some(0), min_failovers: Some(1), ..Expect::default() });
    }

    #[test]
    fn ties_keep_file_order() {
        let text = "[[step]]\nat_ms = 5\naction = \"crash\"\nnode = \"n2\"\n[[step]]\nat_ms = 5\naction = \"heal\"\n[[step]]\nat_ms = 1\naction = \"lease_revoke\"\n";
        let s = parse(text).unwrap();
        assert_eq!(s.steps[0].action, Action::LeaseRevoke);
        assert_eq!(s.steps[1].action, Action::Crash { node: 1 });
        assert_eq!(s.steps[2].action, Action::Heal);
    }

    #[test]
    fn unknown_top_level_key_names_key_and_line() {
        let err = parse("name = \"x\"\nbogus = 3\n").unwrap_err();
        assert_eq!(err.line, 2, "{err}");
        assert!(err.message.contains("bogus"), "{err}");
    }

    #[test]
    fn unknown_step_key_names_key_and_line() {
        let err = parse("[[step]]\nat_ms = 1\naction = \"pause\"\nnode = \"n1\"\nwhatever = 2\n").unwrap_err();
        assert_eq!(err.line, 5, "{err}");
        assert!(err.message.contains("whatever"), "{err}");
    }

    #[test]
    fn unknown_action_names_action_and_line() {
        let err = parse("nodes = 2\n\n[[step]]\nat_ms = 1\naction = \"explode\"\n").unwrap_err();
        assert_eq!(err.line, 5);
        assert!(err.message.contains("explode"));
    }

    #[test]
    fn key_not_valid_for_action_is_an_error() {
        let err = parse("[[step]]\nat_ms = 1\naction = \"heal\"\nnode = \"n1\"\n").unwrap_err();
        assert_eq!(err.line, 4);
        assert!(err.message.contains("node") && err.message.contains("heal"), "{err}");
    }

    #[test]
    fn unknown_node_is_an_error() {
        let err = parse("nodes = 2\n[[step]]\nat_ms = 1\naction = \"crash\"\nnode = \"n3\"\n").unwrap_err();
        assert_eq!(err.line, 5);
    }

    #[test]
    fn written_scenario_parses_back_identically() {
        let mut s = parse(ISSUE_EXAMPLE).unwrap();
        s.planted = Some("skip-epoch-check".into());
        s.network.loss = 0.05;
        s.steps.push(Step { at_ms: 9000, action: Action::Block { from: Peer::Node(0), to: Peer::Lease } });
        s.steps.push(Step { at_ms: 9500, action: Action::Clog { node: Peer::Node(2) } });
        let back = parse(&write(&s)).unwrap();
        assert_eq!(back, s);
        assert!(back.compress_ltx, "compression is on unless a scenario turns it off");
        s.compress_ltx = false;
        assert_eq!(parse(&write(&s)).unwrap(), s);
        assert_eq!(s.merge_ltx, None, "nothing is merged unless a scenario asks");
        s.merge_ltx = Some(MergeLtx { probability: 0.25, txids_max: 8 });
        s.expect.max_snapshots = Some(0);
        s.expect.min_merged_ltx = Some(3);
        assert_eq!(parse(&write(&s)).unwrap(), s);
    }

    #[test]
    fn merge_ltx_out_of_range_names_its_line() {
        let err = parse("name = \"x\"\n[merge_ltx]\nprobability = 1.5\ntxids_max = 4\n").unwrap_err();
        assert!(err.message.contains("merge_ltx"), "{err}");
        assert!(err.line >= 2, "{err}");
        let err = parse("[merge_ltx]\nprobability = 0.5\ntxids_max = 1\n").unwrap_err();
        assert!(err.message.contains("txids_max"), "{err}");
        assert!(parse("[merge_ltx]\nprobability = 0.5\n").is_err(), "both keys are required");
    }
}
