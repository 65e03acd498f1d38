//! Raft lab 3A (leader election), run on the deterministic simulator.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use flotilla_engine::sim::lab::SECOND;
use flotilla_engine::sim::{Cluster, ClusterOptions};

fn cluster(n: usize, seed: u64) -> Cluster {
    Cluster::new(ClusterOptions::lab(n, seed))
}

#[test]
fn initial_election() {
    let mut c = cluster(3, 1);
    c.check_one_leader();
    // Terms settle: the same term before and after a quiet period, and no
    // term change without failures.
    let term1 = c.check_terms();
    assert!(term1 >= 1, "term is {term1}, but should be at least 1");
    c.run_ticks(2 * SECOND);
    let term2 = c.check_terms();
    assert_eq!(
        term1, term2,
        "term changed even though there were no failures"
    );
    c.check_one_leader();
}

#[test]
fn re_election() {
    let mut c = cluster(3, 2);
    let leader1 = c.check_one_leader();
    // The old leader leaves: a new one is elected.
    c.disconnect(leader1);
    c.check_one_leader();
    // The old leader rejoins: it must not disturb the new leader.
    c.connect(leader1);
    let leader2 = c.check_one_leader();
    // No quorum: no leader.
    c.disconnect(leader2);
    c.disconnect(leader2 % 3 + 1);
    c.run_ticks(2 * SECOND);
    c.check_no_leader();
    // A quorum again: a leader.
    c.connect(leader2 % 3 + 1);
    c.check_one_leader();
    c.connect(leader2);
    c.check_one_leader();
}

#[test]
fn many_elections() {
    let mut c = cluster(7, 3);
    c.check_one_leader();
    for _ in 0..10 {
        let picks: Vec<u64> = (0..3).map(|_| c.rng().range(1, 8)).collect();
        for &p in &picks {
            c.disconnect(p);
        }
        // Either the current leader is still alive or the remaining four elect one.
        c.check_one_leader();
        for &p in &picks {
            c.connect(p);
        }
    }
    c.check_one_leader();
}
