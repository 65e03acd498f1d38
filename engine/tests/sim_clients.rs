//! The simulator's client scenarios: clients of a key/value group write
//! and read (linearizable and lease) through the group driver a node runs,
//! over the simulated disk and network, under each seed's faults; every
//! seed's history must be linearizable and exactly once. And the checks,
//! shown to fire: with one rule broken on purpose, seeds are reported.

use flotilla_engine::sim::kv::{run_kv_seed, KvScenarioOptions, Sabotage};
use flotilla_engine::sim::regression::REGRESSION_SEEDS;

#[test]
fn client_histories_are_linearizable_and_exactly_once() {
    let options = KvScenarioOptions::default();
    let (mut appends, mut reads, mut retries) = (0, 0, 0);
    for seed in 0..24 {
        let report = run_kv_seed(seed, &options);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}",
            report.violations
        );
        appends += report.appends_acked;
        reads += report.reads;
        retries += report.retries;
    }
    // The scenarios must exercise what they check, or passing means nothing.
    assert!(appends > 24 * 50, "only {appends} appends acknowledged");
    assert!(reads > 24 * 20, "only {reads} reads answered");
    assert!(
        retries > 24,
        "only {retries} retries: faults never reached the clients"
    );
}

/// The seeds that once failed, in the client scenario too.
#[test]
fn regression_seeds_hold_for_clients() {
    let options = KvScenarioOptions::default();
    for &(seed, bug) in REGRESSION_SEEDS {
        let report = run_kv_seed(seed, &options);
        assert!(
            report.violations.is_empty(),
            "seed {seed} ({bug}): {:?}",
            report.violations
        );
    }
}

#[test]
fn same_seed_same_client_run() {
    let options = KvScenarioOptions::default();
    let a = run_kv_seed(5, &options);
    let b = run_kv_seed(5, &options);
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.appends_acked, b.appends_acked);
}

/// The seeds among `seeds` whose run reports a violation with `sabotage`.
fn reported(sabotage: Sabotage, seeds: std::ops::Range<u64>) -> Vec<(u64, Vec<String>)> {
    let options = KvScenarioOptions {
        sabotage: Some(sabotage),
        ..KvScenarioOptions::default()
    };
    seeds
        .map(|seed| {
            let report = run_kv_seed(seed, &options);
            assert_eq!(report.seed, seed);
            (seed, report.violations)
        })
        .filter(|(_, violations)| !violations.is_empty())
        .collect()
}

#[test]
fn a_retried_write_applied_twice_is_reported() {
    let found = reported(Sabotage::ApplyRetriesTwice, 0..24);
    assert!(
        !found.is_empty(),
        "no seed reported writes applied once per attempt"
    );
    assert!(
        found
            .iter()
            .flat_map(|(_, v)| v)
            .any(|v| v.contains("applied 2 times") || v.contains("not linearizable")),
        "reported, but not as a doubled write: {found:?}"
    );
}

#[test]
fn a_read_answered_before_its_read_index_is_applied_is_reported() {
    let found = reported(Sabotage::ReadBeforeReadIndex, 0..24);
    assert!(
        !found.is_empty(),
        "no seed reported reads served without a read index"
    );
    assert!(
        found
            .iter()
            .flat_map(|(_, v)| v)
            .any(|v| v.contains("not linearizable")),
        "reported, but not as a stale read: {found:?}"
    );
}
