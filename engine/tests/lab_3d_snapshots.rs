//! Raft lab 3D (log compaction and snapshots), run on the deterministic
//! simulator. Every node snapshots its state machine every
//! [`SNAPSHOT_INTERVAL`] applied entries, as the lab's applier does; snapshots
//! travel in chunks of 256 bytes, so each install takes several chunks.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use flotilla_engine::sim::lab::cmd;
use flotilla_engine::sim::{Cluster, ClusterOptions, LinkFaults};

const SNAPSHOT_INTERVAL: u64 = 10;
/// Each randomized scenario runs over this many seeds.
const SEEDS: u64 = 4;
/// The lab's MAXLOGSIZE: the persisted Raft state must stay below it.
const MAX_LOG_SIZE: u64 = 2000;

fn cluster(n: usize, seed: u64, reliable: bool) -> Cluster {
    let mut opts = ClusterOptions::lab(n, seed);
    opts.snapshot_every = Some(SNAPSHOT_INTERVAL);
    if !reliable {
        opts.faults = LinkFaults::unreliable();
    }
    Cluster::new(opts)
}

fn random_cmd(c: &mut Cluster) -> Vec<u8> {
    let r = c.rng().next_u64();
    cmd(r)
}

fn log_size(c: &Cluster) -> u64 {
    c.nodes
        .iter()
        .map(|n| n.disk.raft_state_bytes())
        .max()
        .unwrap_or(0)
}

fn snap_common(seed: u64, disconnect: bool, reliable: bool, crash_victim: bool) {
    let servers = 3;
    let mut c = cluster(servers, seed, reliable);
    let command = random_cmd(&mut c);
    c.one(command, servers, true);
    let mut leader1 = c.check_one_leader();
    let mut snapshots_installed = false;
    for i in 0..30 {
        let (mut victim, mut sender) = (leader1 % servers as u64 + 1, leader1);
        if i % 3 == 1 {
            sender = leader1 % servers as u64 + 1;
            victim = leader1;
        }
        if disconnect {
            c.disconnect(victim);
            let command = random_cmd(&mut c);
            c.one(command, servers - 1, true);
        }
        if crash_victim {
            c.crash1(victim);
            let command = random_cmd(&mut c);
            c.one(command, servers - 1, true);
        }
        // Enough entries to make the others snapshot past the victim.
        let nn = SNAPSHOT_INTERVAL / 2 + c.rng().range(0, SNAPSHOT_INTERVAL);
        for _ in 0..nn {
            let command = random_cmd(&mut c);
            c.start_on(sender, command);
        }
        let command = random_cmd(&mut c);
        if !disconnect && !crash_victim {
            c.one(command, servers, true);
        } else {
            c.one(command, servers - 1, true);
        }
        assert!(
            log_size(&c) < MAX_LOG_SIZE,
            "log size too large: {}",
            log_size(&c)
        );
        if disconnect {
            // The victim must catch up, through a snapshot once the log moved past it.
            let before = c.node(victim).disk.snapshot_index();
            c.connect(victim);
            let command = random_cmd(&mut c);
            c.one(command, servers, true);
            snapshots_installed |=
                c.node(victim).disk.snapshot_index() > before + SNAPSHOT_INTERVAL;
            leader1 = c.check_one_leader();
        }
        if crash_victim {
            c.revive(victim);
            let command = random_cmd(&mut c);
            c.one(command, servers, true);
            leader1 = c.check_one_leader();
        }
    }
    if disconnect {
        assert!(
            snapshots_installed,
            "no lagging follower ever caught up through a snapshot"
        );
    }
}

#[test]
fn snapshot_basic() {
    for seed in 0..SEEDS {
        snap_common(4100 + seed, false, true, false);
    }
}

#[test]
fn snapshot_install() {
    for seed in 0..SEEDS {
        snap_common(4200 + seed, true, true, false);
    }
}

#[test]
fn snapshot_install_unreliable() {
    for seed in 0..SEEDS {
        snap_common(4300 + seed, true, false, false);
    }
}

#[test]
fn snapshot_install_crash() {
    for seed in 0..SEEDS {
        snap_common(4400 + seed, false, true, true);
    }
}

#[test]
fn snapshot_install_unreliable_crash() {
    for seed in 0..SEEDS {
        snap_common(4500 + seed, false, false, true);
    }
}

#[test]
fn snapshot_all_crash() {
    let servers = 3;
    let mut c = cluster(servers, 46, true);
    let command = random_cmd(&mut c);
    c.one(command, servers, true);
    for _ in 0..5 {
        let nn = SNAPSHOT_INTERVAL / 2 + c.rng().range(0, SNAPSHOT_INTERVAL);
        for _ in 0..nn {
            let command = random_cmd(&mut c);
            c.one(command, servers, true);
        }
        let command = random_cmd(&mut c);
        let index1 = c.one(command, servers, true);
        for id in 1..=servers as u64 {
            c.crash1(id);
        }
        for id in 1..=servers as u64 {
            c.revive(id);
        }
        let command = random_cmd(&mut c);
        let index2 = c.one(command, servers, true);
        assert!(index2 > index1, "index decreased from {index1} to {index2}");
    }
}

#[test]
fn snapshot_init() {
    let servers = 3;
    let mut c = cluster(servers, 47, true);
    let command = random_cmd(&mut c);
    c.one(command, servers, true);
    for _ in 0..=SNAPSHOT_INTERVAL {
        let command = random_cmd(&mut c);
        c.one(command, servers, true);
    }
    assert!(
        c.nodes.iter().all(|n| n.disk.snapshot_index() > 0),
        "every node should have snapshotted"
    );
    for id in 1..=servers as u64 {
        c.crash1(id);
    }
    for id in 1..=servers as u64 {
        c.revive(id);
    }
    // A single op, to get something written back to persistent storage.
    let command = random_cmd(&mut c);
    c.one(command, servers, true);
    for id in 1..=servers as u64 {
        c.crash1(id);
    }
    for id in 1..=servers as u64 {
        c.revive(id);
    }
    let command = random_cmd(&mut c);
    c.one(command, servers, true);
}
