//! `ltxfs.yml`: LiteFS's configuration keys plus ltxfs's own (`replication.*`, `http.auth-token`,
//! `lease.ttl`, `lease.etcd.*`).
//!
//! ltxfs keys beyond LiteFS's:
//! - `replication.node-id`: this node's name (any text; its node id is a CRC-64 of it). Default:
//!   `lease.hostname` on a static-lease primary and on etcd nodes, else the system host name
//!   followed by `:` and `http.addr`.
//! - `replication.members`: the names of every node of the cluster, this one included (the core
//!   only talks to configured members). A static primary's name is its `lease.hostname`.
//! - `replication.cluster-id`: clusters with different ids never exchange data (16 hex digits,
//!   or any text, hashed). Default `ltxfs`.
//! - `replication.sync: N`: a commit returns to SQLite only after N replicas hold its LTX durably
//!   (0 = asynchronous, LiteFS's behaviour; `false`/`true` are accepted for compatibility and mean
//!   0 / a majority of the other members). Needs `N < replication.cluster-size`.
//! - `replication.cluster-size: M`: the number of members, configured so the quorum a new primary
//!   recovers from (M − N nodes, itself included) never shrinks when nodes die. Defaults to the
//!   number of `replication.members`; when both are given they must agree.
//! - `replication.heartbeat-interval` (1s).
//! - `lease.type: etcd` with `lease.ttl` (10s), `lease.etcd.endpoints`, `lease.etcd.key`.
//! - `http.auth-token`.
//!
//! Decides: what a configuration file means, its defaults, and whether it is acceptable. Every
//! rejection names the offending key (`fuse.dir`, `lease.type`, ...), so a bad file is caught
//! before anything is mounted. Never does: mount, open data files, or start the node.
//!
//! `$VAR` / `${VAR}` are expanded from the environment before parsing (like LiteFS's
//! `os.ExpandEnv`), except that an unset variable is an error rather than an empty string;
//! `HOSTNAME` is filled from the system host name when unset. `$$` is a literal `$`.
//! Like LiteFS, `${...}` may also hold a comparison that expands to `true` or `false`:
//! `${VAR == 'text'}`, `${VAR != "text"}` (single or double quotes, the text taken literally)
//! and `${VAR == OTHER}` (two variables), e.g. `candidate: ${FLY_REGION == "ord"}`. Anything
//! else inside `${...}` is an error naming its line.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a configuration was rejected. The `key` is the dotted YAML path of the culprit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("config: cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config: ${{{var}}} is not set in the environment")]
    UnsetVariable { var: String },
    #[error("config: unterminated ${{...}} at byte {offset}")]
    UnterminatedVariable { offset: usize },
    /// `${...}` holds neither a variable name nor a comparison.
    #[error("config line {line}{}: ${{{expr}}}: {reason} (expected ${{VAR}}, ${{VAR == 'text'}}, ${{VAR != \"text\"}} or ${{VAR == OTHER}})", key.as_ref().map(|k| format!(" ({k})")).unwrap_or_default())]
    BadExpression { line: usize, key: Option<String>, expr: String, reason: &'static str },
    /// Unknown key, wrong type, or malformed YAML (serde's message carries the key path).
    #[error("config: {message}")]
    Parse { message: String },
    #[error("config: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// The whole configuration file. Unknown keys are rejected at every level.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    pub exit_on_error: bool,
    pub skip_sync: bool,
    pub strict_verify: bool,
    pub exec: Option<Exec>,
    pub data: DataConfig,
    pub fuse: FuseConfig,
    pub http: HttpConfig,
    pub lease: LeaseConfig,
    pub replication: ReplicationConfig,
    pub log: LogConfig,
}

/// `exec`: one command line, or a list of `{cmd, if-candidate}` run in order (the last one is the
/// long-running application).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Exec {
    Single(String),
    List(Vec<ExecEntry>),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExecEntry {
    pub cmd: String,
    #[serde(default)]
    pub if_candidate: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct DataConfig {
    pub dir: PathBuf,
    pub compress: bool,
    #[serde(with = "duration_text")]
    pub retention: Duration,
    #[serde(with = "duration_text")]
    pub retention_monitor_interval: Duration,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct FuseConfig {
    pub dir: PathBuf,
    pub allow_other: bool,
    pub debug: bool,
    /// Run the FUSE thread on the CPU of the application thread it serves (see the README).
    pub follow_caller_cpu: bool,
    /// Run the FUSE thread at SCHED_IDLE, guarded against starvation (see the README).
    pub idle_priority: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct HttpConfig {
    /// Listen address; `:20202` means every interface.
    pub addr: String,
    #[serde(with = "duration_text")]
    pub snapshot_timeout: Duration,
    /// Shared secret peers and mutating requests must present (ltxfs extension).
    pub auth_token: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseType {
    Static,
    Etcd,
}

/// `lease.etcd`: where the lease lives.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct EtcdLeaseConfig {
    /// Client URLs (`http://host:2379`), tried in order.
    pub endpoints: Vec<String>,
    /// The key holding the primary's lease.
    pub key: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct LeaseConfig {
    /// Required (`static`; `etcd` later). `None` only until validation.
    #[serde(rename = "type")]
    pub kind: Option<LeaseType>,
    pub hostname: Option<String>,
    pub advertise_url: Option<String>,
    /// Static lease: `true` makes this node the primary.
    pub candidate: bool,
    pub promote: bool,
    #[serde(with = "duration_text")]
    pub reconnect_delay: Duration,
    #[serde(with = "duration_text")]
    pub demote_delay: Duration,
    pub databases: Vec<String>,
    /// Lease time to live (etcd; default 10s).
    #[serde(with = "duration_text")]
    pub ttl: Duration,
    pub etcd: EtcdLeaseConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ReplicationConfig {
    /// Replica acks a commit waits for before it returns to SQLite (ltxfs extension; 0 = async).
    pub sync: SyncReplicas,
    /// Number of nodes in the cluster, used for the sync quorum.
    pub cluster_size: u32,
    /// This node's name (see the module docs for the default).
    pub node_id: Option<String>,
    /// Every node's name, this one included.
    pub members: Vec<String>,
    pub cluster_id: Option<String>,
    /// Primary → replica heartbeats.
    #[serde(with = "duration_text")]
    pub heartbeat_interval: Duration,
}

/// `replication.sync`: a number of replica acks, or the legacy boolean.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum SyncReplicas {
    /// `sync: N` (0 = asynchronous).
    Count(u32),
    /// `sync: true` (a majority of the other members) / `sync: false` (0). Compatibility only.
    Legacy(bool),
}

impl ReplicationConfig {
    /// `replication.cluster-size`, or the number of members when it is left at its default.
    pub fn effective_cluster_size(&self) -> usize {
        if self.cluster_size == 1 && !self.members.is_empty() {
            self.members.len()
        } else {
            self.cluster_size as usize
        }
    }

    /// The number of replica acks a commit waits for (`sync: true` = ⌊M/2⌋, a majority with the
    /// primary).
    pub fn sync_replicas(&self) -> u32 {
        match self.sync {
            SyncReplicas::Count(n) => n,
            SyncReplicas::Legacy(false) => 0,
            SyncReplicas::Legacy(true) => (self.effective_cluster_size() / 2) as u32,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub timestamp: bool,
    pub debug: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            exit_on_error: true,
            skip_sync: false,
            strict_verify: false,
            exec: None,
            data: DataConfig::default(),
            fuse: FuseConfig::default(),
            http: HttpConfig::default(),
            lease: LeaseConfig::default(),
            replication: ReplicationConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dir: PathBuf::from("/var/lib/litefs"),
            compress: true,
            retention: Duration::from_secs(600),
            retention_monitor_interval: Duration::from_secs(60),
        }
    }
}

impl Default for FuseConfig {
    fn default() -> Self {
        FuseConfig {
            dir: PathBuf::from("/litefs"),
            allow_other: false,
            debug: false,
            follow_caller_cpu: true,
            idle_priority: true,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: ":20202".into(),
            snapshot_timeout: Duration::ZERO,
            auth_token: None,
        }
    }
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            kind: None,
            hostname: None,
            advertise_url: None,
            candidate: true,
            promote: false,
            reconnect_delay: Duration::from_secs(1),
            demote_delay: Duration::from_secs(10),
            databases: Vec::new(),
            ttl: Duration::from_secs(10),
            etcd: EtcdLeaseConfig::default(),
        }
    }
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            sync: SyncReplicas::Count(0),
            cluster_size: 1,
            node_id: None,
            members: Vec::new(),
            cluster_id: None,
            heartbeat_interval: Duration::from_secs(1),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            timestamp: false,
            debug: false,
        }
    }
}

impl Config {
    /// The configuration `ltxfs` runs with when given no arguments: one primary node with a static
    /// lease, mounted at `./ltxfs/mnt`, data in `./ltxfs/data`, HTTP on 127.0.0.1:20202.
    pub fn embedded_default() -> Config {
        let mut config = Config::default();
        config.fuse.dir = PathBuf::from("./ltxfs/mnt");
        config.data.dir = PathBuf::from("./ltxfs/data");
        config.http.addr = "127.0.0.1:20202".into();
        config.lease.kind = Some(LeaseType::Static);
        config.lease.candidate = true;
        config.lease.hostname = Some("localhost".into());
        config.lease.advertise_url = Some("http://127.0.0.1:20202".into());
        config
    }

    /// This node's name (`replication.node-id`, or its default; see the module docs).
    pub fn node_name(&self) -> String {
        if let Some(name) = &self.replication.node_id {
            return name.clone();
        }
        let system = system_hostname;
        match (self.lease.kind, self.lease.candidate) {
            (Some(LeaseType::Static), true) | (Some(LeaseType::Etcd), _) => self.lease.hostname.clone().unwrap_or_else(system),
            _ => format!("{}:{}", system(), self.http.addr),
        }
    }

    /// Every member's name (this node included); with none configured, this node and, under a
    /// static lease, its primary.
    pub fn member_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.replication.members.clone();
        if names.is_empty() {
            names.push(self.node_name());
            if self.lease.kind == Some(LeaseType::Static) && !self.lease.candidate {
                names.push(self.static_primary_name());
            }
        }
        names.sort();
        names.dedup();
        names
    }

    /// Under a static lease: the primary's name (its `lease.hostname`).
    pub fn static_primary_name(&self) -> String {
        self.lease.hostname.clone().unwrap_or_else(system_hostname)
    }

    /// Reads, expands and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: path.display().to_string(),
            reason: err.to_string(),
        })?;
        Config::parse(&text, &|name| {
            std::env::var(name).ok().or_else(|| default_env(name))
        })
    }

    /// Expands `${VAR}` with `env`, parses YAML and validates. Pure apart from `env`.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let expanded = expand_env(text, env)?;
        // An empty document means "all defaults" (which then fails on the required lease.type).
        let config: Config = if expanded.trim().is_empty() {
            Config::default()
        } else {
            serde_norway::from_str(&expanded).map_err(|err| ConfigError::Parse {
                message: err.to_string(),
            })?
        };
        config.validate()?;
        Ok(config)
    }

    /// Cross-field rules serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.fuse.dir.as_os_str().is_empty() {
            return Err(invalid("fuse.dir", "must be set"));
        }
        if self.data.dir.as_os_str().is_empty() {
            return Err(invalid("data.dir", "must be set"));
        }
        let fuse_dir = lexical_absolute(&self.fuse.dir);
        let data_dir = lexical_absolute(&self.data.dir);
        if fuse_dir.starts_with(&data_dir) {
            return Err(invalid("fuse.dir", "must not be inside data.dir"));
        }
        if data_dir.starts_with(&fuse_dir) {
            return Err(invalid("data.dir", "must not be inside fuse.dir"));
        }
        if self.lease.kind.is_none() {
            return Err(invalid("lease.type", "required (supported: static, etcd)"));
        }
        if self.lease.kind == Some(LeaseType::Etcd) {
            if self.lease.etcd.endpoints.is_empty() {
                return Err(invalid("lease.etcd.endpoints", "required with lease.type etcd"));
            }
            if self.lease.etcd.key.trim().is_empty() {
                return Err(invalid("lease.etcd.key", "required with lease.type etcd"));
            }
            if self.lease.advertise_url.is_none() {
                return Err(invalid("lease.advertise-url", "required with lease.type etcd (this node's URL)"));
            }
            if self.lease.ttl < Duration::from_secs(1) {
                return Err(invalid("lease.ttl", "must be at least 1s"));
            }
        }
        if self.replication.heartbeat_interval.is_zero() {
            return Err(invalid("replication.heartbeat-interval", "must be above 0"));
        }
        let me = self.node_name();
        if self.replication.node_id.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(invalid("replication.node-id", "must not be empty"));
        }
        if self.lease.kind == Some(LeaseType::Static) && self.lease.candidate {
            if let (Some(id), Some(host)) = (&self.replication.node_id, &self.lease.hostname) {
                if id != host {
                    return Err(invalid("replication.node-id", "on a static-lease primary it must equal lease.hostname"));
                }
            }
        }
        if !self.replication.members.is_empty() {
            let unique: std::collections::BTreeSet<&String> = self.replication.members.iter().collect();
            if unique.len() != self.replication.members.len() {
                return Err(invalid("replication.members", "lists a node twice"));
            }
            if !unique.contains(&me) {
                return Err(invalid("replication.members", format!("must include this node ({me})")));
            }
            if self.replication.cluster_size != 1 && self.replication.cluster_size as usize != unique.len() {
                return Err(invalid("replication.cluster-size", "differs from the number of replication.members"));
            }
        }
        if !self.lease.candidate && self.lease.advertise_url.is_none() {
            return Err(invalid(
                "lease.advertise-url",
                "a static-lease replica needs the primary's URL",
            ));
        }
        if let Some(url) = &self.lease.advertise_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    "lease.advertise-url",
                    "must start with http:// or https://",
                ));
            }
        }
        if self.lease.kind == Some(LeaseType::Static) && !self.lease.candidate && self.replication.members.is_empty() {
            return Err(invalid("replication.members", "a static-lease replica needs the cluster's members (the primary only talks to members)"));
        }
        parse_listen_addr(&self.http.addr).map_err(|reason| invalid("http.addr", reason))?;
        if self.replication.cluster_size == 0 {
            return Err(invalid("replication.cluster-size", "must be at least 1"));
        }
        let size = self.replication.effective_cluster_size();
        let sync = self.replication.sync_replicas();
        let wants_sync = !matches!(self.replication.sync, SyncReplicas::Count(0) | SyncReplicas::Legacy(false));
        if wants_sync && size < 2 {
            return Err(invalid(
                "replication.cluster-size",
                "replication.sync needs a cluster of at least 2 nodes (set replication.members)",
            ));
        }
        if sync as usize >= size {
            return Err(invalid(
                "replication.sync",
                format!("{sync} replica acks need more than {size} members (replication.cluster-size)"),
            ));
        }
        if sync > 0 && self.replication.members.len() != size {
            return Err(invalid(
                "replication.members",
                "replication.sync needs every member named (the recovery quorum is counted over them)",
            ));
        }
        if let Some(token) = &self.http.auth_token {
            if token.is_empty() {
                return Err(invalid("http.auth-token", "must not be empty when set"));
            }
        }
        if let Some(Exec::List(entries)) = &self.exec {
            if entries.iter().any(|entry| entry.cmd.trim().is_empty()) {
                return Err(invalid("exec", "every entry needs a non-empty cmd"));
            }
        }
        if let Some(Exec::Single(cmd)) = &self.exec {
            if cmd.trim().is_empty() {
                return Err(invalid("exec", "must not be empty"));
            }
        }
        Ok(())
    }
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// `$HOSTNAME`, else the system host name, else `localhost`.
fn system_hostname() -> String {
    std::env::var("HOSTNAME").ok().or_else(|| default_env("HOSTNAME")).unwrap_or_else(|| "localhost".into())
}

fn default_env(name: &str) -> Option<String> {
    if name == "HOSTNAME" {
        return nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok());
    }
    None
}

/// `host:port` or `:port` (all interfaces).
pub fn parse_listen_addr(addr: &str) -> Result<std::net::SocketAddr, String> {
    let full = if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    };
    full.parse()
        .map_err(|_| format!("{addr:?} is not host:port or :port"))
}

/// Makes a path absolute without touching the file system (the dirs may not exist yet).
fn lexical_absolute(path: &Path) -> PathBuf {
    let base = if path.is_absolute() {
        PathBuf::new()
    } else {
        std::env::current_dir().unwrap_or_default()
    };
    let mut out = PathBuf::new();
    for component in base.join(path).components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `$VAR`, `${VAR}` → value; `${VAR == 'x'}` / `${VAR != "x"}` / `${VAR == OTHER}` → `true` or
/// `false`; `$$` → `$`. Anything else after `$` is kept as is.
pub fn expand_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            let next = text[i..].find('$').map_or(text.len(), |n| i + n);
            out.push_str(&text[i..next]);
            i = next;
            continue;
        }
        match bytes.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => {
                let close = text[i + 2..]
                    .find('}')
                    .ok_or(ConfigError::UnterminatedVariable { offset: i })?;
                let inner = &text[i + 2..i + 2 + close];
                let value = match parse_braced(inner) {
                    Ok(Braced::Var(name)) => lookup(name, env)?,
                    Ok(Braced::Compare { var, equal, rhs }) => {
                        let left = lookup(var, env)?;
                        let right = match rhs {
                            Operand::Literal(text) => text.to_string(),
                            Operand::Var(name) => lookup(name, env)?,
                        };
                        ((left == right) == equal).to_string()
                    }
                    Err(reason) => return Err(bad_expression(text, i, inner, reason)),
                };
                out.push_str(&value);
                i += close + 3;
            }
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                let len = text[i + 1..]
                    .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                    .unwrap_or(text.len() - i - 1);
                out.push_str(&lookup(&text[i + 1..i + 1 + len], env)?);
                i += len + 1;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Ok(out)
}

/// What a `${...}` holds.
#[derive(Debug, PartialEq, Eq)]
enum Braced<'a> {
    Var(&'a str),
    /// `var == rhs` (`equal`) or `var != rhs`.
    Compare { var: &'a str, equal: bool, rhs: Operand<'a> },
}

#[derive(Debug, PartialEq, Eq)]
enum Operand<'a> {
    /// A quoted text, quotes removed (nothing inside is unescaped).
    Literal(&'a str),
    Var(&'a str),
}

/// Parses the inside of `${...}` (LiteFS's grammar: a name, or `NAME (==|!=) 'text'`,
/// `"text"` or `NAME`, spaces allowed around the operator and inside the braces).
fn parse_braced(inner: &str) -> Result<Braced<'_>, &'static str> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let trimmed = inner.trim();
    let name_len = trimmed.find(|c: char| !is_word(c)).unwrap_or(trimmed.len());
    let (var, rest) = trimmed.split_at(name_len);
    if var.is_empty() {
        return Err("expected a variable name first");
    }
    if rest.is_empty() {
        return Ok(Braced::Var(var));
    }
    let rest = rest.trim_start();
    let equal = if rest.starts_with("==") {
        true
    } else if rest.starts_with("!=") {
        false
    } else {
        return Err("expected == or != after the variable name");
    };
    let rhs = rest[2..].trim_start();
    let rhs = match rhs.chars().next() {
        None => return Err("nothing to compare with after the operator"),
        Some(quote @ ('\'' | '"')) => {
            if rhs.len() < 2 || !rhs.ends_with(quote) {
                return Err("unterminated quoted text");
            }
            Operand::Literal(&rhs[1..rhs.len() - 1])
        }
        Some(_) if rhs.chars().all(is_word) => Operand::Var(rhs),
        Some(_) => return Err("the right side must be 'text', \"text\" or a variable name"),
    };
    Ok(Braced::Compare { var, equal, rhs })
}

/// The error for a malformed `${inner}` starting at byte `at` of `text`: its line (1-based) and
/// the YAML key on that line, when the line reads `key: ...`.
fn bad_expression(text: &str, at: usize, inner: &str, reason: &'static str) -> ConfigError {
    let line = text[..at].matches('\n').count() + 1;
    let line_start = text[..at].rfind('\n').map_or(0, |n| n + 1);
    let key = text[line_start..at]
        .split_once(':')
        .map(|(key, _)| key.trim().trim_start_matches("- ").trim())
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .map(str::to_string);
    ConfigError::BadExpression { line, key, expr: inner.to_string(), reason }
}

fn lookup(name: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    env(name).ok_or_else(|| ConfigError::UnsetVariable {
        var: name.to_string(),
    })
}

/// Durations written like Go's (`10m`, `1s`, `500ms`, `1h30m`) or plain seconds.
mod duration_text {
    use serde::Deserializer;
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        // A visitor (not an untagged enum) so the error is raised inside the value's own
        // deserializer and carries its key path (`data.retention: ...`).
        d.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl serde::de::Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration such as 10s, 1m30s or 500ms")
        }

        fn visit_u64<E: serde::de::Error>(self, seconds: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(seconds))
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
            let text = text.trim();
            if text == "0" {
                return Ok(Duration::ZERO);
            }
            humantime::parse_duration(text)
                .map_err(|err| E::custom(format!("invalid duration {text:?}: {err}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "NODE" => Some("n1".into()),
            "PRIMARY" => Some("true".into()),
            _ => None,
        }
    }

    const GOOD: &str = "\
fuse:
  dir: /mnt/${NODE}
  allow-other: true
  follow-caller-cpu: false
  idle-priority: false
data:
  dir: /var/lib/ltxfs/$NODE
  compress: false
  retention: 1m30s
http:
  addr: ':20203'
  auth-token: secret
lease:
  type: static
  candidate: ${PRIMARY}
  hostname: ${NODE}
  advertise-url: http://n1:20202
  promote: false
replication:
  sync: true
  cluster-size: 3
  members: [n1, n2, n3]
log:
  format: json
exec:
  - cmd: migrate
    if-candidate: true
  - cmd: app serve
";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, &env)
    }

    #[test]
    fn full_file_parses_with_expansion() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.fuse.dir, PathBuf::from("/mnt/n1"));
        assert!(config.fuse.allow_other);
        assert!(!config.fuse.follow_caller_cpu);
        assert!(Config::default().fuse.follow_caller_cpu, "on unless turned off");
        assert!(!config.fuse.idle_priority);
        assert!(Config::default().fuse.idle_priority, "on unless turned off");
        assert_eq!(config.data.dir, PathBuf::from("/var/lib/ltxfs/n1"));
        assert!(!config.data.compress);
        assert_eq!(config.data.retention, Duration::from_secs(90));
        assert_eq!(config.http.addr, ":20203");
        assert_eq!(config.http.auth_token.as_deref(), Some("secret"));
        assert_eq!(config.lease.kind, Some(LeaseType::Static));
        assert!(config.lease.candidate);
        assert_eq!(config.lease.hostname.as_deref(), Some("n1"));
        assert_eq!(config.replication.sync, SyncReplicas::Legacy(true));
        assert_eq!(config.replication.sync_replicas(), 1);
        assert_eq!(config.replication.cluster_size, 3);
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(
            config.exec,
            Some(Exec::List(vec![
                ExecEntry {
                    cmd: "migrate".into(),
                    if_candidate: true
                },
                ExecEntry {
                    cmd: "app serve".into(),
                    if_candidate: false
                },
            ]))
        );
    }

    #[test]
    fn defaults_match_litefs() {
        let config = parse("lease:\n  type: static\n").unwrap();
        assert!(config.exit_on_error);
        assert!(config.data.compress);
        assert_eq!(config.data.retention, Duration::from_secs(600));
        assert_eq!(config.fuse.dir, PathBuf::from("/litefs"));
        assert_eq!(config.data.dir, PathBuf::from("/var/lib/litefs"));
        assert_eq!(config.http.addr, ":20202");
        assert!(config.lease.candidate);
        assert_eq!(config.log.format, LogFormat::Text);
        assert_eq!(config.exec, None);
    }

    #[test]
    fn embedded_default_is_valid() {
        let config = Config::embedded_default();
        config.validate().unwrap();
        assert_eq!(config.fuse.dir, PathBuf::from("./ltxfs/mnt"));
        assert_eq!(config.http.addr, "127.0.0.1:20202");
    }

    fn parse_error_message(text: &str) -> String {
        match parse(text) {
            Err(ConfigError::Parse { message }) => message,
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let message = parse_error_message("lease:\n  type: static\nbogus: 1\n");
        assert!(message.contains("bogus"), "{message}");
    }

    #[test]
    fn unknown_nested_key_is_named_with_its_section() {
        let message = parse_error_message("lease:\n  type: static\nfuse:\n  dri: /x\n");
        assert!(
            message.contains("fuse") && message.contains("dri"),
            "{message}"
        );
    }

    #[test]
    fn bad_value_names_the_key() {
        let message = parse_error_message("lease:\n  type: static\nfuse:\n  allow-other: maybe\n");
        assert!(message.contains("fuse.allow-other"), "{message}");
        let message = parse_error_message("lease:\n  type: consul-ish\n");
        assert!(message.contains("lease.type"), "{message}");
        let message = parse_error_message("lease:\n  type: static\ndata:\n  retention: soon\n");
        assert!(message.contains("data.retention"), "{message}");
        let message = parse_error_message("lease:\n  type: static\nlog:\n  format: xml\n");
        assert!(message.contains("log.format"), "{message}");
    }

    #[test]
    fn missing_lease_type_is_an_error() {
        assert!(matches!(
            parse("fuse:\n  dir: /m\n"),
            Err(ConfigError::Invalid {
                key: "lease.type",
                ..
            })
        ));
        assert!(matches!(
            parse(""),
            Err(ConfigError::Invalid {
                key: "lease.type",
                ..
            })
        ));
    }

    #[test]
    fn fuse_dir_inside_data_dir_is_rejected() {
        let text = "lease: {type: static}\nfuse: {dir: /d/mnt}\ndata: {dir: /d}\n";
        assert!(matches!(
            parse(text),
            Err(ConfigError::Invalid {
                key: "fuse.dir",
                ..
            })
        ));
        let text = "lease: {type: static}\nfuse: {dir: /d}\ndata: {dir: /d}\n";
        assert!(matches!(
            parse(text),
            Err(ConfigError::Invalid {
                key: "fuse.dir",
                ..
            })
        ));
        let text = "lease: {type: static}\nfuse: {dir: /d/../data/m}\ndata: {dir: /data}\n";
        assert!(matches!(
            parse(text),
            Err(ConfigError::Invalid {
                key: "fuse.dir",
                ..
            })
        ));
        let text = "lease: {type: static}\nfuse: {dir: /m}\ndata: {dir: /m/data}\n";
        assert!(matches!(
            parse(text),
            Err(ConfigError::Invalid {
                key: "data.dir",
                ..
            })
        ));
        let text = "lease: {type: static}\nfuse: {dir: /data-mnt}\ndata: {dir: /data}\n";
        assert!(
            parse(text).is_ok(),
            "a sibling with a common prefix is fine"
        );
    }

    #[test]
    fn bad_http_addr_is_rejected() {
        let text = "lease: {type: static}\nhttp: {addr: 'localhost'}\n";
        assert!(matches!(
            parse(text),
            Err(ConfigError::Invalid {
                key: "http.addr",
                ..
            })
        ));
    }

    #[test]
    fn replica_needs_advertise_url() {
        let text = "lease: {type: static, candidate: false}\n";
        assert!(matches!(
            parse(text),
            Err(ConfigError::Invalid {
                key: "lease.advertise-url",
                ..
            })
        ));
        let text = "lease: {type: static, candidate: false, advertise-url: 'ftp://x'}\n";
        assert!(matches!(
            parse(text),
            Err(ConfigError::Invalid {
                key: "lease.advertise-url",
                ..
            })
        ));
    }

    #[test]
    fn sync_is_a_number_of_acks_below_the_cluster_size() {
        let members = "members: [a, b, c]";
        let text = format!("lease: {{type: static, hostname: a}}\nreplication: {{sync: 1, cluster-size: 3, {members}}}\n");
        let config = parse(&text).unwrap();
        assert_eq!(config.replication.sync, SyncReplicas::Count(1));
        assert_eq!(config.replication.sync_replicas(), 1);
        let text = format!("lease: {{type: static, hostname: a}}\nreplication: {{sync: 2, {members}}}\n");
        assert_eq!(parse(&text).unwrap().replication.sync_replicas(), 2);
        let text = format!("lease: {{type: static, hostname: a}}\nreplication: {{sync: 3, cluster-size: 3, {members}}}\n");
        assert!(matches!(parse(&text), Err(ConfigError::Invalid { key: "replication.sync", .. })));
        let text = format!("lease: {{type: static, hostname: a}}\nreplication: {{sync: false, {members}}}\n");
        assert_eq!(parse(&text).unwrap().replication.sync_replicas(), 0);
        let text = "lease: {type: static, hostname: a}\nreplication: {sync: 1, cluster-size: 3}\n";
        assert!(matches!(parse(text), Err(ConfigError::Invalid { key: "replication.members", .. })));
    }

    #[test]
    fn sync_replication_needs_a_cluster() {
        let text = "lease: {type: static}\nreplication: {sync: true}\n";
        assert!(matches!(
            parse(text),
            Err(ConfigError::Invalid {
                key: "replication.cluster-size",
                ..
            })
        ));
        let text = "lease: {type: static}\nreplication: {cluster-size: 0}\n";
        assert!(matches!(
            parse(text),
            Err(ConfigError::Invalid {
                key: "replication.cluster-size",
                ..
            })
        ));
    }

    #[test]
    fn empty_auth_token_and_empty_exec_are_rejected() {
        let text = "lease: {type: static}\nhttp: {auth-token: ''}\n";
        assert!(matches!(
            parse(text),
            Err(ConfigError::Invalid {
                key: "http.auth-token",
                ..
            })
        ));
        let text = "lease: {type: static}\nexec: ' '\n";
        assert!(matches!(
            parse(text),
            Err(ConfigError::Invalid { key: "exec", .. })
        ));
    }

    #[test]
    fn unset_variable_is_an_error_naming_it() {
        assert_eq!(
            parse("lease: {type: static}\nfuse: {dir: /m/${NOPE}}\n"),
            Err(ConfigError::UnsetVariable { var: "NOPE".into() })
        );
        assert_eq!(
            parse("fuse: {dir: /m/${NODE"),
            Err(ConfigError::UnterminatedVariable { offset: 15 })
        );
    }

    #[test]
    fn membership_and_identity_keys() {
        let text = "lease: {type: static, candidate: false, hostname: p, advertise-url: 'http://p:1'}\n";
        assert!(matches!(parse(text), Err(ConfigError::Invalid { key: "replication.members", .. })));
        let text = "lease: {type: static, candidate: false, hostname: p, advertise-url: 'http://p:1'}\nreplication: {node-id: r1, members: [p, r2]}\n";
        assert!(matches!(parse(text), Err(ConfigError::Invalid { key: "replication.members", .. })), "must include this node");
        let text = "lease: {type: static, candidate: false, hostname: p, advertise-url: 'http://p:1'}\nreplication: {node-id: r1, members: [p, r1, r1]}\n";
        assert!(matches!(parse(text), Err(ConfigError::Invalid { key: "replication.members", .. })), "no duplicates");
        let text = "lease: {type: static, candidate: false, hostname: p, advertise-url: 'http://p:1'}\nreplication: {node-id: r1, members: [p, r1], cluster-id: c1}\n";
        let config = parse(text).unwrap();
        assert_eq!(config.node_name(), "r1");
        assert_eq!(config.member_names(), vec!["p".to_string(), "r1".to_string()]);
        assert_eq!(config.replication.cluster_id.as_deref(), Some("c1"));
        let text = "lease: {type: static, candidate: true, hostname: p}\nreplication: {node-id: q}\n";
        assert!(matches!(parse(text), Err(ConfigError::Invalid { key: "replication.node-id", .. })));
        let text = "lease: {type: static, candidate: true, hostname: p}\n";
        assert_eq!(parse(text).unwrap().node_name(), "p", "a static primary is named by lease.hostname");
    }

    #[test]
    fn etcd_lease_keys() {
        let text = "lease: {type: etcd, hostname: n1, advertise-url: 'http://n1:20202', ttl: 2s}\n";
        assert!(matches!(parse(text), Err(ConfigError::Invalid { key: "lease.etcd.endpoints", .. })));
        let text = "lease: {type: etcd, hostname: n1, advertise-url: 'http://n1:20202', ttl: 2s, etcd: {endpoints: ['http://127.0.0.1:2379']}}\n";
        assert!(matches!(parse(text), Err(ConfigError::Invalid { key: "lease.etcd.key", .. })));
        let text = "lease: {type: etcd, hostname: n1, advertise-url: 'http://n1:20202', ttl: 2s, etcd: {endpoints: ['http://127.0.0.1:2379'], key: ltxfs/app}}\n";
        let config = parse(text).unwrap();
        assert_eq!(config.lease.ttl, Duration::from_secs(2));
        assert_eq!(config.lease.etcd.key, "ltxfs/app");
        assert_eq!(config.node_name(), "n1");
    }

    #[test]
    fn example_cluster_configs_are_valid() {
        let env = |name: &str| (name == "NODE_DIR").then(|| "/tmp/demo".to_string());
        let primary = Config::parse(include_str!("../../examples/primary.yml"), &env).unwrap();
        assert!(primary.lease.candidate);
        assert_eq!(primary.fuse.dir, PathBuf::from("/tmp/demo/primary/mnt"));
        let mut addrs = vec![primary.http.addr.clone()];
        for text in [
            include_str!("../../examples/replica1.yml"),
            include_str!("../../examples/replica2.yml"),
        ] {
            let replica = Config::parse(text, &env).unwrap();
            assert!(!replica.lease.candidate);
            assert_eq!(
                replica.lease.advertise_url.as_deref(),
                Some("http://127.0.0.1:20202")
            );
            addrs.push(replica.http.addr.clone());
        }
        addrs.dedup();
        assert_eq!(addrs.len(), 3, "each node listens on its own port");
    }

    #[test]
    fn comparison_expressions_expand_to_true_or_false() {
        let env = |name: &str| match name {
            "REGION" => Some("ord".to_string()),
            "PRIMARY_REGION" => Some("ord".to_string()),
            "OTHER" => Some("lhr".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let cases = [
            ("${REGION == 'ord'}", "true"),
            ("${REGION == 'lhr'}", "false"),
            ("${REGION != 'ord'}", "false"),
            ("${REGION != 'lhr'}", "true"),
            ("${REGION == \"ord\"}", "true"),
            ("${REGION != \"ord\"}", "false"),
            ("${REGION==\"ord\"}", "true"),
            ("${ REGION   ==   'ord' }", "true"),
            ("${REGION == PRIMARY_REGION}", "true"),
            ("${REGION != PRIMARY_REGION}", "false"),
            ("${REGION == OTHER}", "false"),
            ("${REGION != OTHER}", "true"),
            ("${EMPTY == ''}", "true"),
            ("${EMPTY == \"\"}", "true"),
            // The text is taken literally, as LiteFS does: spaces and the other quote included.
            ("${REGION == ' ord'}", "false"),
            ("${REGION != \"it's\"}", "true"),
            ("${ REGION }", "ord"),
        ];
        for (text, want) in cases {
            assert_eq!(expand_env(text, &env).as_deref(), Ok(want), "{text}");
        }
        let text = "lease: {type: static, candidate: ${REGION == \"ord\"}, hostname: p}\n";
        assert!(Config::parse(text, &env).unwrap().lease.candidate);
        let text = "lease: {type: static, candidate: ${REGION == 'lhr'}, hostname: p, advertise-url: 'http://p:1'}\nreplication: {node-id: r, members: [p, r]}\n";
        assert!(!Config::parse(text, &env).unwrap().lease.candidate);
    }

    #[test]
    fn comparison_with_an_unset_variable_is_an_error_naming_it() {
        let env = |name: &str| (name == "REGION").then(|| "ord".to_string());
        assert_eq!(expand_env("${NOPE == 'x'}", &env), Err(ConfigError::UnsetVariable { var: "NOPE".into() }));
        assert_eq!(expand_env("${REGION != NOPE}", &env), Err(ConfigError::UnsetVariable { var: "NOPE".into() }));
    }

    #[test]
    fn malformed_expressions_name_their_line_and_key() {
        let env = |name: &str| (name == "REGION").then(|| "ord".to_string());
        let cases = [
            ("${REGION = 'ord'}", "expected == or != after the variable name"),
            ("${REGION === 'ord'}", "the right side must be 'text', \"text\" or a variable name"),
            ("${REGION == ord lhr}", "the right side must be 'text', \"text\" or a variable name"),
            ("${REGION == 'ord}", "unterminated quoted text"),
            ("${REGION == \"ord'}", "unterminated quoted text"),
            ("${REGION == '}", "unterminated quoted text"),
            ("${REGION ==}", "nothing to compare with after the operator"),
            ("${== 'ord'}", "expected a variable name first"),
            ("${}", "expected a variable name first"),
            ("${REGION-X}", "expected == or != after the variable name"),
        ];
        for (expr, reason) in cases {
            let text = format!("fuse:\n  dir: /mnt\nlease:\n  type: static\n  candidate: {expr}\n");
            let inner = &expr[2..expr.len() - 1];
            let want = ConfigError::BadExpression { line: 5, key: Some("candidate".into()), expr: inner.into(), reason };
            assert_eq!(Config::parse(&text, &env).unwrap_err(), want, "{expr}");
        }
        let err = expand_env("exec:\n  - cmd: run ${REGION = 'ord'}\n", &env).unwrap_err();
        assert!(matches!(&err, ConfigError::BadExpression { line: 2, key: Some(k), .. } if k == "cmd"), "{err:?}");
        assert_eq!(
            err.to_string(),
            "config line 2 (cmd): ${REGION = 'ord'}: expected == or != after the variable name \
             (expected ${VAR}, ${VAR == 'text'}, ${VAR != \"text\"} or ${VAR == OTHER})"
        );
        let err = expand_env("a ${REGION ==}", &env).unwrap_err();
        assert!(matches!(err, ConfigError::BadExpression { line: 1, key: None, .. }), "{err:?}");
    }

    #[test]
    fn expansion_keeps_literal_dollars() {
        assert_eq!(
            expand_env("a$$b $1 ${NODE}x $NODE.y", &env).unwrap(),
            "a$b $1 n1x n1.y"
        );
    }
}
