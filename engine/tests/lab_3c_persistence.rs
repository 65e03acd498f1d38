//! Raft lab 3C (persistence), run on the deterministic simulator. A crash
//! loses every write the simulated disk had not synced.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use flotilla_engine::sim::lab::{cmd, SECOND};
use flotilla_engine::sim::{Cluster, ClusterOptions};
use flotilla_engine::{Index, NodeId};

fn cluster(n: usize, seed: u64) -> Cluster {
    Cluster::new(ClusterOptions::lab(n, seed))
}

fn one_entry_per_append(n: usize, seed: u64) -> Cluster {
    let mut opts = ClusterOptions::lab(n, seed);
    opts.config.max_append_bytes = 1;
    Cluster::new(opts)
}

fn nth(servers: usize, base: NodeId, k: u64) -> NodeId {
    (base - 1 + k) % servers as u64 + 1
}

#[test]
fn persist1() {
    let servers = 3;
    let mut c = cluster(servers, 31);
    c.one(cmd(11), servers, true);
    for id in 1..=3 {
        c.crash1(id);
    }
    for id in 1..=3 {
        c.revive(id);
    }
    c.one(cmd(12), servers, true);
    let leader1 = c.check_one_leader();
    c.crash1(leader1);
    c.revive(leader1);
    c.one(cmd(13), servers, true);
    let leader2 = c.check_one_leader();
    c.crash1(leader2);
    let index14 = c.one(cmd(14), servers - 1, true);
    c.revive(leader2);
    // Wait for leader2 to join before killing i3.
    c.wait(index14, servers, None);
    let leader = c.check_one_leader();
    let i3 = nth(servers, leader, 1);
    c.crash1(i3);
    c.one(cmd(15), servers - 1, true);
    c.revive(i3);
    c.one(cmd(16), servers, true);
}

#[test]
fn persist2() {
    let servers = 5;
    let mut c = cluster(servers, 32);
    let mut value = 11;
    for _ in 0..5 {
        c.one(cmd(value), servers, true);
        value += 1;
        let leader1 = c.check_one_leader();
        c.crash1(nth(servers, leader1, 1));
        c.crash1(nth(servers, leader1, 2));
        c.one(cmd(value), servers - 2, true);
        value += 1;
        c.crash1(leader1);
        c.crash1(nth(servers, leader1, 3));
        c.crash1(nth(servers, leader1, 4));
        c.revive(nth(servers, leader1, 1));
        c.revive(nth(servers, leader1, 2));
        c.run_ticks(SECOND);
        c.revive(nth(servers, leader1, 3));
        c.one(cmd(value), servers - 2, true);
        value += 1;
        c.revive(nth(servers, leader1, 4));
        c.revive(leader1);
    }
    c.one(cmd(1000), servers, true);
}

#[test]
fn persist3() {
    let servers = 3;
    let mut c = cluster(servers, 33);
    c.one(cmd(101), 3, true);
    let leader = c.check_one_leader();
    c.disconnect(nth(servers, leader, 2));
    c.one(cmd(102), 2, true);
    c.crash1(leader);
    c.crash1(nth(servers, leader, 1));
    c.connect(nth(servers, leader, 2));
    c.revive(leader);
    c.one(cmd(103), 2, true);
    c.revive(nth(servers, leader, 1));
    c.one(cmd(104), servers, true);
}

/// Figure 8 of the Raft paper: leaders crash right after appending, so logs
/// diverge across many terms; entries of old terms must never be committed by
/// counting replicas. The checker's state machine safety check fails the test
/// the moment two nodes commit different entries at one index.
#[test]
fn figure8() {
    for seed in 0..SEEDS {
        figure8_seed(3400 + seed);
    }
}

/// The randomized lab scenarios run over several seeds each: every seed is a
/// different interleaving, and the simulator makes each one cheap.
const SEEDS: u64 = 8;

fn figure8_seed(seed: u64) {
    let servers = 5;
    // One entry per append message, so followers acknowledge old-term entries
    // separately from the new leader's blank entry: the Figure 8 window.
    let mut c = one_entry_per_append(servers, seed);
    let r = c.rng().next_u64();
    c.one(cmd(r), 1, true);
    let mut up = servers;
    for _ in 0..1000 {
        let mut leader = None;
        for id in 1..=servers as u64 {
            let r = c.rng().next_u64();
            if c.start_on(id, cmd(r)).is_some() {
                leader = Some(id);
            }
        }
        let pause = if c.rng().range(0, 1000) < 100 {
            c.rng().range(0, SECOND / 2)
        } else {
            c.rng().range(0, 2)
        };
        c.run_ticks(pause);
        if let Some(leader) = leader {
            c.crash1(leader);
            up -= 1;
        }
        if up < 3 {
            let s = c.rng().range(1, servers as u64 + 1);
            if !c.node(s).is_up() {
                c.revive(s);
                up += 1;
            }
        }
    }
    for id in 1..=servers as u64 {
        if !c.node(id).is_up() {
            c.revive(id);
        }
    }
    let r = c.rng().next_u64();
    c.one(cmd(r), servers, true);
}

#[test]
fn unreliable_agree() {
    for seed in 0..SEEDS {
        unreliable_agree_seed(3500 + seed);
    }
}

fn unreliable_agree_seed(seed: u64) {
    let servers = 5;
    let mut c = cluster(servers, seed);
    c.set_unreliable(true);
    for iters in 1..50u64 {
        for j in 0..4 {
            for id in 1..=servers as u64 {
                c.start_on(id, cmd(100 * iters + j));
            }
        }
        c.one(cmd(iters), 1, true);
    }
    c.set_unreliable(false);
    c.one(cmd(100), servers, true);
}

#[test]
fn figure8_unreliable() {
    for seed in 0..SEEDS {
        figure8_unreliable_seed(3600 + seed);
    }
}

fn figure8_unreliable_seed(seed: u64) {
    let servers = 5;
    let mut c = one_entry_per_append(servers, seed);
    c.set_unreliable(true);
    let r = c.rng().range(0, 10_000);
    c.one(cmd(r), 1, true);
    let mut up = servers;
    for iters in 0..1000 {
        if iters == 200 {
            c.set_long_reordering(true);
        }
        let mut leader = None;
        for id in 1..=servers as u64 {
            let r = c.rng().range(0, 10_000);
            if c.start_on(id, cmd(r)).is_some() && c.connected(id) {
                leader = Some(id);
            }
        }
        let pause = if c.rng().range(0, 1000) < 100 {
            c.rng().range(0, SECOND / 2)
        } else {
            c.rng().range(0, 2)
        };
        c.run_ticks(pause);
        if let Some(leader) = leader {
            if c.rng().range(0, 1000) < SECOND / 2 * 10 {
                c.disconnect(leader);
                up -= 1;
            }
        }
        if up < 3 {
            let s = c.rng().range(1, servers as u64 + 1);
            if !c.connected(s) {
                c.connect(s);
                up += 1;
            }
        }
    }
    for id in 1..=servers as u64 {
        c.connect(id);
    }
    let r = c.rng().range(0, 10_000);
    c.one(cmd(r), servers, true);
}

/// Lab `internalChurn`: clients keep proposing on random nodes while nodes are
/// disconnected, crashed and restarted; every value a client saw committed must
/// be in every node's log at the end.
fn churn(unreliable: bool, seed: u64) {
    let servers = 5;
    let mut c = cluster(servers, seed);
    c.set_unreliable(unreliable);
    let mut accepted: Vec<(Index, Vec<u8>)> = Vec::new();
    for _ in 0..20 {
        let steps = 7 * SECOND / 10;
        for tick in 0..steps {
            if tick % 3 == 0 {
                for client in 0..3u64 {
                    let id = c.rng().range(1, servers as u64 + 1);
                    let value = cmd(c.rng().next_u64() ^ client);
                    if let Some((index, _)) = c.start_on(id, value.clone()) {
                        accepted.push((index, value));
                    }
                }
            }
            c.run_ticks(1);
        }
        let what = c.rng().range(0, 1000);
        let id = c.rng().range(1, servers as u64 + 1);
        if what < 200 {
            c.disconnect(id);
        } else if what < 500 {
            if !c.node(id).is_up() {
                c.restart(id);
            }
            c.connect(id);
        } else if what < 700 {
            c.crash1(id);
        }
    }
    c.run_ticks(SECOND);
    c.set_unreliable(false);
    for id in 1..=servers as u64 {
        if !c.node(id).is_up() {
            c.restart(id);
        }
        c.connect(id);
    }
    let r = c.rng().next_u64();
    let last = c.one(cmd(r), servers, true);
    let mut committed_values = 0;
    for (index, value) in accepted {
        if index > last {
            continue;
        }
        let (n, got) = c.n_committed(index);
        if got.as_ref() == Some(&value) {
            assert_eq!(
                n, servers,
                "committed value at {index} is missing on some node"
            );
            committed_values += 1;
        }
    }
    assert!(
        committed_values > 0,
        "no client value was committed during churn"
    );
}

#[test]
fn reliable_churn() {
    for seed in 0..SEEDS {
        churn(false, 3700 + seed);
    }
}

#[test]
fn unreliable_churn() {
    for seed in 0..SEEDS {
        churn(true, 3800 + seed);
    }
}
