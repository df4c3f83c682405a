//! The event trace: a running 64-bit hash of everything that happened, and the last events kept
//! for failure reports.
//!
//! The hash is FNV-1a over a canonical byte encoding (`std::hash::Hash` fed into a fixed FNV
//! hasher, never std's randomly keyed `RandomState`), so the same (seed, scenario) gives the same
//! hash on every run on one platform. Text is only produced when asked for (`--trace`, or the
//! deterministic re-run that a failure report makes to show the last events), so ordinary runs
//! pay for hashing only. This module decides nothing.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

/// FNV-1a 64 as a `std::hash::Hasher`.
#[derive(Debug, Clone)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Hashes one value with FNV-1a.
pub fn digest<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = Fnv64::default();
    value.hash(&mut hasher);
    hasher.finish()
}

/// How many recent events a failure report shows.
pub const TRACE_TAIL: usize = 40;

#[derive(Debug, Clone)]
pub struct Trace {
    hash: Fnv64,
    tail: VecDeque<(u64, String)>,
    /// Every line, when full tracing is on.
    pub full: Option<Vec<String>>,
    keep_text: bool,
    pub events: u64,
}

impl Trace {
    /// `full`: keep every line; `tail`: keep the last [`TRACE_TAIL`] lines.
    pub fn new(full: bool, tail: bool) -> Trace {
        Trace {
            hash: Fnv64::default(),
            tail: VecDeque::with_capacity(TRACE_TAIL),
            full: full.then(Vec::new),
            keep_text: full || tail,
            events: 0,
        }
    }

    /// Records one event: `key` goes into the hash; `describe` is called only when text is kept.
    pub fn record<K: Hash>(&mut self, at_us: u64, key: &K, describe: impl FnOnce() -> String) {
        self.events += 1;
        at_us.hash(&mut self.hash);
        key.hash(&mut self.hash);
        if !self.keep_text {
            return;
        }
        let text = describe();
        if let Some(full) = &mut self.full {
            full.push(format!("{:>12.3}ms {text}", at_us as f64 / 1000.0));
        }
        if self.tail.len() == TRACE_TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back((at_us, text));
    }

    pub fn hash(&self) -> u64 {
        self.hash.finish()
    }

    pub fn tail(&self) -> Vec<String> {
        self.tail.iter().map(|(t, text)| format!("{:>12.3}ms {text}", *t as f64 / 1000.0)).collect()
    }
}
