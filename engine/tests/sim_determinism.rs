//! The simulator is deterministic, and the randomized scenarios hold Raft's
//! invariants. Seeds that once failed during development stay here as
//! regression tests.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use flotilla_engine::sim::regression::REGRESSION_SEEDS;
use flotilla_engine::sim::scenario::{run_seed, ScenarioOptions};

#[test]
fn same_seed_same_trace_hash() {
    let options = ScenarioOptions::default();
    for seed in [0, 7, 1234] {
        let a = run_seed(seed, &options);
        let b = run_seed(seed, &options);
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "seed {seed} is not reproducible"
        );
        assert_eq!(a.committed, b.committed);
    }
}

#[test]
fn different_seeds_take_different_paths() {
    let options = ScenarioOptions::default();
    let a = run_seed(1, &options);
    let b = run_seed(2, &options);
    assert_ne!(a.trace_hash, b.trace_hash);
}

#[test]
fn randomized_scenarios_hold_every_invariant() {
    let options = ScenarioOptions::default();
    let mut commits = 0;
    let mut changes = 0;
    for seed in 0..40 {
        let report = run_seed(seed, &options);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}",
            report.violations
        );
        commits += report.committed;
        changes += report.membership_changes;
    }
    // The scenarios must actually exercise the system, or passing means nothing.
    assert!(commits > 40 * 20, "only {commits} commits over 40 seeds");
    assert!(
        changes > 20,
        "only {changes} membership changes over 40 seeds"
    );
}

/// Seeds that failed during development (`sim::regression`).
#[test]
fn regression_seeds() {
    let options = ScenarioOptions::default();
    for &(seed, bug) in REGRESSION_SEEDS {
        let report = run_seed(seed, &options);
        assert!(
            report.violations.is_empty(),
            "seed {seed} ({bug}): {:?}",
            report.violations
        );
    }
}
