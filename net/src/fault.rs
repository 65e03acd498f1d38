//! Fault injection for tests: drop frames on chosen links (partitions,
//! one-way cuts), drop a share of all frames, delay delivery. A `Mesh`
//! checks these rules on every frame it sends and receives; with no rules
//! set (the default) every frame passes.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Rules {
    /// Directed links (from, to) that drop everything.
    cut: BTreeSet<(u64, u64)>,
    /// Probability of dropping any frame, in millionths.
    drop_ppm: u32,
    /// Extra delay before a received frame is delivered.
    delay: Duration,
}

/// Shared, mutable fault rules. Cheap to clone.
#[derive(Clone, Default)]
pub struct Faults {
    rules: Arc<Mutex<Rules>>,
    rng: Arc<AtomicU64>,
    /// Frames the rules dropped since [`take_dropped`](Faults::take_dropped):
    /// a test asserts it above 0 to know its faults took effect.
    dropped: Arc<AtomicU64>,
}

impl Faults {
    fn with<R>(&self, f: impl FnOnce(&mut Rules) -> R) -> R {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut rules)
    }

    /// Drops everything sent from `from` to `to` (one way).
    pub fn cut(&self, from: u64, to: u64) {
        self.with(|r| r.cut.insert((from, to)));
    }

    /// Splits `nodes` into the given sides: links between sides are cut
    /// both ways, links inside a side restored.
    pub fn partition(&self, sides: &[Vec<u64>]) {
        self.with(|r| {
            r.cut.clear();
            for (i, a) in sides.iter().enumerate() {
                for (j, b) in sides.iter().enumerate() {
                    if i != j {
                        for &x in a {
                            for &y in b {
                                r.cut.insert((x, y));
                            }
                        }
                    }
                }
            }
        });
    }

    /// Restores every link and clears drop and delay.
    pub fn heal(&self) {
        self.with(|r| *r = Rules::default());
    }

    /// Drops each frame with probability `p` (0 to 1).
    pub fn set_drop(&self, p: f64) {
        self.with(|r| r.drop_ppm = (p.clamp(0.0, 1.0) * 1e6) as u32);
    }

    /// Delays every received frame by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.with(|r| r.delay = delay);
    }

    /// The current delivery delay.
    pub fn delay(&self) -> Duration {
        self.with(|r| r.delay)
    }

    /// Frames dropped by the rules since the last call (each frame counted
    /// once, where the rules were checked: on send, or on receipt).
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }

    /// True if a frame from `from` to `to` may pass now.
    pub fn allows(&self, from: u64, to: u64) -> bool {
        let passes = self.decide(from, to);
        if !passes {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        passes
    }

    fn decide(&self, from: u64, to: u64) -> bool {
        let (cut, drop_ppm) = self.with(|r| (r.cut.contains(&(from, to)), r.drop_ppm));
        if cut {
            return false;
        }
        if drop_ppm == 0 {
            return true;
        }
        // SplitMix64 step on a shared counter: cheap, good enough for tests.
        let mut z = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z % 1_000_000) as u32 >= drop_ppm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_partitions_and_drops() {
        let faults = Faults::default();
        assert!(faults.allows(1, 2));
        assert_eq!(faults.take_dropped(), 0, "nothing dropped without rules");
        faults.cut(1, 2);
        assert!(!faults.allows(1, 2));
        assert!(faults.allows(2, 1), "a cut is one-way");
        assert_eq!(faults.take_dropped(), 1, "the cut frame is counted");
        assert_eq!(faults.take_dropped(), 0, "and the count restarts");
        faults.partition(&[vec![1], vec![2, 3]]);
        assert!(!faults.allows(1, 3) && !faults.allows(3, 1));
        assert!(faults.allows(2, 3));
        assert_eq!(faults.take_dropped(), 2, "both directions of the cut");
        faults.heal();
        faults.set_drop(0.5);
        let passed = (0..10_000).filter(|_| faults.allows(1, 2)).count();
        assert!((4_000..6_000).contains(&passed), "{passed} of 10000 passed");
        assert_eq!(faults.take_dropped(), 10_000 - passed as u64);
        faults.set_drop(1.0);
        assert!(!faults.allows(2, 3));
    }
}
