//! The event trace: a running 64-bit hash of everything that happened, and the last events kept
//! for failure reports.
//!
//! The hash is FNV-1a over 64-bit words of a canonical encoding (`std::hash::Hash` fed into a
//! fixed hasher, never std's randomly keyed `RandomState`), so the same (seed, scenario) gives
//! the same hash on every run on one platform. Each step (`h = (h ^ word) · prime`) is a
//! bijection of the state for a given word, so two traces that differ in a single word always
//! end at different hashes. Text is only produced when asked for (`--trace`, or the
//! deterministic re-run that a failure report makes to show the last events), so ordinary runs
//! pay for hashing only. This module decides nothing.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

/// FNV-1a 64 over words (integers whole, byte strings 8 bytes at a time) as a
/// `std::hash::Hasher`: byte-at-a-time FNV was a few percent of a run.
#[derive(Debug, Clone)]
pub struct Fnv64(u64);

impl Fnv64 {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(0x0000_0100_0000_01b3);
    }
}

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
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.mix(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            // The length keeps "ab" and "ab\0" apart.
            self.mix(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 56));
        }
    }
    fn write_u8(&mut self, value: u8) {
        self.mix(u64::from(value));
    }
    fn write_u16(&mut self, value: u16) {
        self.mix(u64::from(value));
    }
    fn write_u32(&mut self, value: u32) {
        self.mix(u64::from(value));
    }
    fn write_u64(&mut self, value: u64) {
        self.mix(value);
    }
    fn write_usize(&mut self, value: usize) {
        self.mix(value as u64);
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
