//! Per-node clocks: a pure mapping from true (simulator) time to a node's local monotonic time.
//!
//! `local(t) = anchor_local + (t − anchor_true) · (1 + drift_ppm / 10⁶)`. A drift change or a jump
//! re-anchors the mapping at the current true instant. Local time is monotonic, as the core's
//! `Time` is: a jump may only move a clock forward; a requested backward jump is recorded but
//! clamped to "no jump" (a monotonic clock never runs backwards; slow clocks are modelled with
//! negative drift instead). All values are microseconds.
//!
//! This module decides nothing about faults; the world tells it when to drift or jump.

/// Microseconds of true simulator time.
pub type TrueUs = u64;

#[derive(Debug, Clone)]
pub struct NodeClock {
    anchor_true_us: TrueUs,
    anchor_local_us: u64,
    drift_ppm: i64,
    /// Offset relative to true time requested by scenarios (for reporting only).
    offset_us: i64,
}

/// Drift is bounded well inside ±100% so that local time always moves forward.
pub const DRIFT_PPM_LIMIT: i64 = 500_000;

impl NodeClock {
    /// A clock that reads `base_local_us` at true time 0.
    pub fn new(base_local_us: u64, drift_ppm: i64) -> NodeClock {
        assert!(drift_ppm.abs() <= DRIFT_PPM_LIMIT);
        NodeClock { anchor_true_us: 0, anchor_local_us: base_local_us, drift_ppm, offset_us: 0 }
    }

    pub fn drift_ppm(&self) -> i64 {
        self.drift_ppm
    }

    /// Local time at true instant `t` (`t` must not precede the last re-anchoring).
    pub fn local(&self, t: TrueUs) -> u64 {
        assert!(t >= self.anchor_true_us, "clock asked about the past");
        let elapsed_us = t - self.anchor_true_us;
        if self.drift_ppm == 0 {
            return self.anchor_local_us + elapsed_us;
        }
        // 64-bit arithmetic while the product fits (runs of under ~200 simulated days), the same
        // truncating division as the 128-bit fallback.
        let skew = match i64::try_from(elapsed_us).ok().and_then(|e| e.checked_mul(self.drift_ppm)) {
            Some(product) => i128::from(product / 1_000_000),
            None => i128::from(elapsed_us) * i128::from(self.drift_ppm) / 1_000_000,
        };
        let local = i128::from(self.anchor_local_us) + i128::from(elapsed_us) + skew;
        assert!(local >= i128::from(self.anchor_local_us));
        local as u64
    }

    /// The first true instant `≥ now` at which the clock reads at least `local_us`.
    pub fn true_at(&self, now: TrueUs, local_us: u64) -> TrueUs {
        let local_now = self.local(now);
        if local_us <= local_now {
            return now;
        }
        if self.drift_ppm == 0 {
            return now + (local_us - local_now);
        }
        let need = i128::from(local_us - local_now);
        let rate = 1_000_000 + i128::from(self.drift_ppm);
        let mut t = now + ((need * 1_000_000 + rate - 1) / rate) as u64;
        // Integer rounding may leave us a microsecond short; bounded fix-up.
        for _ in 0..4 {
            if self.local(t) >= local_us {
                break;
            }
            t += 1;
        }
        assert!(self.local(t) >= local_us);
        t
    }

    /// Changes the drift rate from true instant `now` on.
    pub fn set_drift(&mut self, now: TrueUs, drift_ppm: i64) {
        assert!(drift_ppm.abs() <= DRIFT_PPM_LIMIT);
        self.reanchor(now);
        self.drift_ppm = drift_ppm;
    }

    /// Sets the offset against true time to `offset_us` (relative to the offset set before): a
    /// forward jump takes effect now, a backward one is clamped away (monotonic clock).
    pub fn set_offset(&mut self, now: TrueUs, offset_us: i64) {
        self.reanchor(now);
        let delta = offset_us - self.offset_us;
        self.offset_us = offset_us;
        if delta > 0 {
            self.anchor_local_us += delta as u64;
        }
    }

    fn reanchor(&mut self, now: TrueUs) {
        self.anchor_local_us = self.local(now);
        self.anchor_true_us = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_makes_clock_fast_and_inverse_agrees() {
        let clock = NodeClock::new(1_000, 1_000); // 1000 ppm fast
        assert_eq!(clock.local(0), 1_000);
        assert_eq!(clock.local(1_000_000), 1_000 + 1_001_000);
        let t = clock.true_at(0, 500_000);
        assert!(clock.local(t) >= 500_000);
        assert!(clock.local(t - 1) < 500_000);
    }

    /// The 64-bit and zero-drift fast paths give what the exact 128-bit formula gives.
    #[test]
    fn fast_paths_match_the_exact_formula() {
        let exact = |anchor_local: u64, elapsed: u64, drift: i64| -> u64 {
            let elapsed = i128::from(elapsed);
            (i128::from(anchor_local) + elapsed + elapsed * i128::from(drift) / 1_000_000) as u64
        };
        for drift in [-DRIFT_PPM_LIMIT, -1_000, -1, 0, 1, 777, DRIFT_PPM_LIMIT] {
            let clock = NodeClock::new(123_456, drift);
            for t in [0, 1, 999_999, 1_000_001, 86_400_000_000, 1 << 45, u64::MAX / 4] {
                assert_eq!(clock.local(t), exact(123_456, t, drift), "drift {drift} t {t}");
            }
            let t = clock.true_at(5_000, 9_000_000);
            assert!(clock.local(t) >= 9_000_000);
            if drift == 0 {
                assert_eq!(t, 5_000 + (9_000_000 - clock.local(5_000)));
            }
        }
    }

    #[test]
    fn forward_jump_applies_and_backward_jump_is_clamped() {
        let mut clock = NodeClock::new(0, 0);
        clock.set_offset(10, 5_000);
        assert_eq!(clock.local(10), 5_010);
        clock.set_offset(20, 0);
        assert_eq!(clock.local(20), 5_020, "monotonic clock never runs backwards");
    }
}
