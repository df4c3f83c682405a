//! Identifiers shared by every part of the node: [`NodeId`], [`Epoch`], [`ClusterId`],
//! [`DbName`].
//!
//! This module decides only what a well-formed identifier is (a database name's length and
//! characters); it never assigns identifiers — node ids and cluster ids come from configuration,
//! epochs from the lease service.

use std::fmt;

/// A node of the cluster. Printed `%016X` as LiteFS prints node ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

/// A lease epoch: the fencing token the lease service grants, strictly increasing per lease key.
/// Epoch 0 means "no lease ever seen".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

impl Epoch {
    pub const ZERO: Epoch = Epoch(0);
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

/// The cluster a node belongs to; nodes of different clusters never stream to each other
/// (LiteFS #331). Printed as LiteFS prints cluster ids: `LFSC` + 16 uppercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ClusterId(pub u64);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LFSC{:016X}", self.0)
    }
}

/// Longest database name accepted, in bytes.
pub const DB_NAME_BYTES_MAX: usize = 255;

/// A database name: 1..=255 bytes of UTF-8, no `/`, no NUL, not `.` or `..` (it is a file name
/// in the mount's flat root directory).
/// Shared (`Arc<str>`): a name is cloned into every message, I/O command and event, and a
/// clone is then a reference count, not an allocation.
///
/// Equality and order are those of the text (byte-wise, as `str`), compared in place: names are
/// looked up in the core's per-database maps several times per message, and most comparisons
/// meet the same shared allocation (equal at once) or differ within a few bytes, where a call
/// into the C library's `memcmp` costs more than the comparison.
#[derive(Debug, Clone)]
pub struct DbName(std::sync::Arc<str>);

/// The text's hash, as `str` hashes: equal names (equal text) hash alike.
impl std::hash::Hash for DbName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for DbName {
    fn eq(&self, other: &DbName) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for DbName {}

impl PartialOrd for DbName {
    fn partial_cmp(&self, other: &DbName) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for DbName {
    fn cmp(&self, other: &DbName) -> std::cmp::Ordering {
        if std::sync::Arc::ptr_eq(&self.0, &other.0) {
            return std::cmp::Ordering::Equal;
        }
        cmp_names(&self.0, &other.0)
    }
}

/// `str`'s order for database names, compared in place (names are short: a byte loop beats a
/// `memcmp` call). Shared with the simulator's own name type.
pub fn cmp_names(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    // Bounded by the shorter name.
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

/// Why a string is not a valid [`DbName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbNameError {
    #[error("database name is empty")]
    Empty,
    #[error("database name is {0} bytes, more than {DB_NAME_BYTES_MAX}")]
    TooLong(usize),
    #[error("database name contains '/' or NUL")]
    BadCharacter,
    #[error("database name is '.' or '..'")]
    DotName,
}

impl DbName {
    /// Validates `name` and copies it into its shared allocation (one allocation, whether the
    /// caller holds a `String` or a `&str`).
    pub fn new(name: impl AsRef<str>) -> Result<DbName, DbNameError> {
        let name = name.as_ref();
        if name.is_empty() {
            return Err(DbNameError::Empty);
        }
        if name.len() > DB_NAME_BYTES_MAX {
            return Err(DbNameError::TooLong(name.len()));
        }
        if name.bytes().any(|b| b == b'/' || b == 0) {
            return Err(DbNameError::BadCharacter);
        }
        if name == "." || name == ".." {
            return Err(DbNameError::DotName);
        }
        Ok(DbName(std::sync::Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DbName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_names_are_validated() {
        assert_eq!(DbName::new("app.db").map(|n| n.to_string()), Ok("app.db".to_string()));
        assert_eq!(DbName::new(""), Err(DbNameError::Empty));
        assert_eq!(DbName::new("a/b"), Err(DbNameError::BadCharacter));
        assert_eq!(DbName::new(".."), Err(DbNameError::DotName));
        assert_eq!(DbName::new("x".repeat(256)), Err(DbNameError::TooLong(256)));
        assert!(DbName::new("x".repeat(255)).is_ok());
    }

    #[test]
    fn db_names_compare_like_their_text() {
        let names = ["", "a", "a.db", "a.db2", "ab", "b", "\u{e9}", "x".repeat(255).as_str()].map(str::to_string);
        for x in &names {
            for y in &names {
                let (Ok(a), Ok(b)) = (DbName::new(x), DbName::new(y)) else { continue };
                assert_eq!(a.cmp(&b), x.cmp(y), "{x:?} vs {y:?}");
                assert_eq!(a == b, x == y, "{x:?} vs {y:?}");
                assert_eq!(a.cmp(&a.clone()), std::cmp::Ordering::Equal);
            }
        }
    }

    #[test]
    fn ids_print_like_litefs() {
        assert_eq!(NodeId(0xab).to_string(), "00000000000000AB");
        assert_eq!(ClusterId(1).to_string(), "LFSC0000000000000001");
    }
}
