//! The lab's shard controller tests (shardctrler's TestBasic and TestMulti,
//! part by part, asserting what they assert), run on the deterministic
//! simulator: three controller replicas, each a node's group driver over
//! the controller's machine, with clients that retry across leader changes.

#![allow(clippy::unwrap_used)]

mod support;

use flotilla_engine::sim::{ClusterOptions, LinkFaults};
use flotilla_shard::{ControllerError, ControllerOp, Query, ShardConfig};
use support::{
    check, check_same_config_on_servers, controller_cluster, run_concurrently,
    run_concurrently_with, Clerk, Step, NSHARDS,
};

const SEEDS: u64 = 4;

/// The lab's minimal-transfer check: every shard that one of `gids` holds
/// in `c2` (the configuration after the joins) is in the same group in
/// `before` and `after`.
fn assert_unmoved(
    before: &ShardConfig,
    after: &ShardConfig,
    c2: &ShardConfig,
    gids: &[u64],
    what: &str,
) {
    for j in 0..NSHARDS {
        if gids.contains(&c2.shards[j]) {
            assert_eq!(before.shards[j], after.shards[j], "{what}");
        }
    }
}

/// TestBasic, all its parts in order, on `opts`' cluster.
fn basic(opts: ClusterOptions) {
    let mut cluster = controller_cluster(opts);
    let mut ck = Clerk::new(1);

    // Test: Basic leave/join.
    let mut cfa: Vec<ShardConfig> = Vec::new();
    cfa.push(ck.query(&mut cluster, Query::Latest));
    check(&cfa[0], &[]);
    ck.join(&mut cluster, &[(1, &[11, 12, 13])]);
    check(&ck.query(&mut cluster, Query::Latest), &[1]);
    cfa.push(ck.query(&mut cluster, Query::Latest));
    ck.join(&mut cluster, &[(2, &[21, 22, 23])]);
    check(&ck.query(&mut cluster, Query::Latest), &[1, 2]);
    cfa.push(ck.query(&mut cluster, Query::Latest));
    let cfx = ck.query(&mut cluster, Query::Latest);
    assert_eq!(cfx.groups[&1], vec![11, 12, 13]);
    assert_eq!(cfx.groups[&2], vec![21, 22, 23]);
    ck.leave(&mut cluster, &[1]);
    check(&ck.query(&mut cluster, Query::Latest), &[2]);
    cfa.push(ck.query(&mut cluster, Query::Latest));
    ck.leave(&mut cluster, &[2]);
    cfa.push(ck.query(&mut cluster, Query::Latest));
    check(&cfa[4], &[]);

    // Test: Historical queries (each replica down in turn).
    for down in 1..=3 {
        cluster.crash(down);
        for config in &cfa {
            let again = ck.query(&mut cluster, Query::Number(config.num));
            assert_eq!(&again, config, "configuration {} changed", config.num);
        }
        cluster.restart(down);
    }

    // Test: Move.
    let gid3 = 503;
    let gid4 = 504;
    ck.join(&mut cluster, &[(gid3, &[31, 32, 33])]);
    ck.join(&mut cluster, &[(gid4, &[41, 42, 43])]);
    for i in 0..NSHARDS as u16 {
        let cf = ck.query(&mut cluster, Query::Latest);
        let to = if usize::from(i) < NSHARDS / 2 {
            gid3
        } else {
            gid4
        };
        let num = ck.move_shard(&mut cluster, i, to);
        assert!(num > cf.num, "Move should increase Config.Num");
        let cf1 = ck.query(&mut cluster, Query::Latest);
        assert!(cf1.num > cf.num, "Move should increase Config.Num");
    }
    let cf2 = ck.query(&mut cluster, Query::Latest);
    for i in 0..NSHARDS {
        let want = if i < NSHARDS / 2 { gid3 } else { gid4 };
        assert_eq!(cf2.shards[i], want, "shard {i} wrong group after Move");
    }
    ck.leave(&mut cluster, &[gid3]);
    ck.leave(&mut cluster, &[gid4]);

    // Test: Concurrent leave/join.
    let npara = 10u64;
    let gids: Vec<u64> = (0..npara).map(|i| i * 10 + 100).collect();
    let mut clerks: Vec<Clerk> = (0..npara).map(|i| Clerk::new(100 + i)).collect();
    let work = clerks
        .iter_mut()
        .zip(&gids)
        .map(|(clerk, &gid)| {
            let steps = vec![
                Step::Op(ControllerOp::Join(
                    [(gid + 1000, vec![gid * 10 + 1])].into(),
                )),
                Step::Op(ControllerOp::Join([(gid, vec![gid * 10 + 2])].into())),
                Step::Op(ControllerOp::Leave(vec![gid + 1000])),
            ];
            (clerk, steps)
        })
        .collect();
    for outcome in run_concurrently(&mut cluster, work).into_iter().flatten() {
        outcome.num();
    }
    check(&ck.query(&mut cluster, Query::Latest), &gids);

    // Test: Minimal transfers after joins.
    let c1 = ck.query(&mut cluster, Query::Latest);
    for i in 0..5 {
        let gid = npara + 1 + i;
        ck.join(&mut cluster, &[(gid, &[gid * 10 + 1, gid * 10 + 2])]);
    }
    let c2 = ck.query(&mut cluster, Query::Latest);
    assert_unmoved(&c1, &c2, &c2, &gids, "non-minimal transfer after Join()s");

    // Test: Minimal transfers after leaves.
    for i in 0..5 {
        ck.leave(&mut cluster, &[npara + 1 + i]);
    }
    let c3 = ck.query(&mut cluster, Query::Latest);
    assert_unmoved(&c2, &c3, &c2, &gids, "non-minimal transfer after Leave()s");

    // Test: Check Same config on servers.
    check_same_config_on_servers(&mut cluster);
}

/// TestMulti, all its parts in order.
fn multi(opts: ClusterOptions) {
    let mut cluster = controller_cluster(opts);
    let mut ck = Clerk::new(1);

    // Test: Multi-group join/leave.
    let mut cfa = vec![ck.query(&mut cluster, Query::Latest)];
    check(&cfa[0], &[]);
    ck.join(&mut cluster, &[(1, &[11, 12, 13]), (2, &[21, 22, 23])]);
    check(&ck.query(&mut cluster, Query::Latest), &[1, 2]);
    cfa.push(ck.query(&mut cluster, Query::Latest));
    ck.join(&mut cluster, &[(3, &[31, 32, 33])]);
    check(&ck.query(&mut cluster, Query::Latest), &[1, 2, 3]);
    cfa.push(ck.query(&mut cluster, Query::Latest));
    let cfx = ck.query(&mut cluster, Query::Latest);
    assert_eq!(cfx.groups[&1], vec![11, 12, 13]);
    assert_eq!(cfx.groups[&2], vec![21, 22, 23]);
    assert_eq!(cfx.groups[&3], vec![31, 32, 33]);
    ck.leave(&mut cluster, &[1, 3]);
    check(&ck.query(&mut cluster, Query::Latest), &[2]);
    cfa.push(ck.query(&mut cluster, Query::Latest));
    let cfx = ck.query(&mut cluster, Query::Latest);
    assert_eq!(cfx.groups[&2], vec![21, 22, 23]);
    ck.leave(&mut cluster, &[2]);

    // Test: Concurrent multi leave/join.
    let npara = 10u64;
    let gids: Vec<u64> = (0..npara).map(|i| i + 1000).collect();
    let mut clerks: Vec<Clerk> = (0..npara).map(|i| Clerk::new(100 + i)).collect();
    let work = clerks
        .iter_mut()
        .zip(&gids)
        .map(|(clerk, &gid)| {
            let steps = vec![
                Step::Op(ControllerOp::Join(
                    [
                        (gid, vec![gid * 10 + 1, gid * 10 + 2, gid * 10 + 3]),
                        (gid + 1000, vec![gid * 10 + 4]),
                        (gid + 2000, vec![gid * 10 + 5]),
                    ]
                    .into(),
                )),
                Step::Op(ControllerOp::Leave(vec![gid + 1000, gid + 2000])),
            ];
            (clerk, steps)
        })
        .collect();
    for outcome in run_concurrently(&mut cluster, work).into_iter().flatten() {
        outcome.num();
    }
    check(&ck.query(&mut cluster, Query::Latest), &gids);

    // Test: Minimal transfers after multijoins.
    let c1 = ck.query(&mut cluster, Query::Latest);
    let joined: Vec<(u64, &[u64])> = (0..5).map(|i| (npara + 1 + i, &[1u64, 2][..])).collect();
    ck.join(&mut cluster, &joined);
    let c2 = ck.query(&mut cluster, Query::Latest);
    assert_unmoved(
        &c1,
        &c2,
        &c2,
        &gids,
        "non-minimal transfer after multijoins",
    );

    // Test: Minimal transfers after multileaves.
    let left: Vec<u64> = (0..5).map(|i| npara + 1 + i).collect();
    ck.leave(&mut cluster, &left);
    let c3 = ck.query(&mut cluster, Query::Latest);
    assert_unmoved(
        &c2,
        &c3,
        &c2,
        &gids,
        "non-minimal transfer after multileaves",
    );

    // Test: Check Same config on servers.
    check_same_config_on_servers(&mut cluster);

    // Historical configurations are still there.
    for config in &cfa {
        assert_eq!(&ck.query(&mut cluster, Query::Number(config.num)), config);
    }
}

#[test]
fn test_basic() {
    for seed in 0..SEEDS {
        basic(ClusterOptions::lab(3, seed));
    }
}

#[test]
fn test_multi() {
    for seed in 0..SEEDS {
        multi(ClusterOptions::lab(3, seed));
    }
}

#[test]
fn test_basic_and_multi_on_an_unreliable_network_with_snapshots() {
    // Lost, duplicated and reordered messages; replicas snapshot and
    // compact every 20 entries, so catching up goes through snapshots.
    for seed in 0..SEEDS {
        let mut opts = ClusterOptions::lab(3, 100 + seed);
        opts.faults = LinkFaults::unreliable();
        opts.snapshot_every = Some(20);
        basic(opts.clone());
        multi(opts);
    }
}

#[test]
fn the_controller_agrees_after_its_leader_is_killed() {
    // The leader is killed while changes are in flight, on a network that
    // loses answers: clients resend the same session numbers to the next
    // leader, and each change must still be applied exactly once.
    for seed in 0..20 {
        let mut opts = ClusterOptions::lab(3, 200 + seed);
        opts.faults = LinkFaults::unreliable();
        let mut cluster = controller_cluster(opts);
        let mut ck = Clerk::new(1);
        ck.join(&mut cluster, &[(1, &[1, 2, 3]), (2, &[4, 5, 6])]);
        let before = ck.query(&mut cluster, Query::Latest);
        let mut clerks: Vec<Clerk> = (0..4).map(|i| Clerk::new(10 + i)).collect();
        let work = clerks
            .iter_mut()
            .enumerate()
            .map(|(i, clerk)| {
                let gid = 10 + i as u64;
                let steps = vec![
                    Step::Op(ControllerOp::Join([(gid, vec![gid])].into())),
                    Step::Op(ControllerOp::Move {
                        shard: i as u16,
                        group: gid,
                    }),
                ];
                (clerk, steps)
            })
            .collect::<Vec<_>>();
        let start = cluster.now;
        let mut killed = None;
        let outcomes = run_concurrently_with(&mut cluster, work, |c| {
            let since = c.now - start;
            if since == 30 {
                killed = c.leaders().first().map(|(id, _)| *id);
                if let Some(id) = killed {
                    c.crash(id);
                }
            }
            if since == 3_000 {
                if let Some(id) = killed {
                    c.restart(id);
                }
            }
        });
        assert!(killed.is_some(), "seed {seed}: no leader to kill");
        if cluster.nodes.iter().any(|n| n.driver.is_none()) {
            cluster.restart(killed.unwrap_or(1));
        }
        for outcome in outcomes.into_iter().flatten() {
            outcome.num();
        }
        let after = ck.query(&mut cluster, Query::Latest);
        // Four joins and four moves, each applied once.
        assert_eq!(after.num, before.num + 8, "seed {seed}: {after:?}");
        assert_eq!(after.groups.len(), 6);
        check_same_config_on_servers(&mut cluster);
    }
}

#[test]
fn a_retried_change_is_applied_once_and_bad_changes_are_refused() {
    let mut cluster = controller_cluster(ClusterOptions::lab(3, 300));
    let mut ck = Clerk::new(1);
    let first = ck.join(&mut cluster, &[(1, &[1, 2, 3])]);
    // Every node applies the command the client resends: once.
    let command = flotilla_shard::ControllerCommand {
        client: 9,
        seq: 1,
        op: ControllerOp::Move { shard: 0, group: 1 },
    };
    let mut resender = Clerk::new(9);
    let num = resender.op(&mut cluster, command.op.clone()).unwrap();
    assert_eq!(num, first + 1);
    let stale = Clerk::new(9).op(&mut cluster, ControllerOp::Move { shard: 1, group: 1 });
    assert_eq!(
        stale,
        Ok(num),
        "the same session number answers from the session"
    );
    assert_eq!(ck.query(&mut cluster, Query::Latest).num, num);

    let refusals = [
        (
            ControllerOp::Join([(0, vec![1])].into()),
            ControllerError::ReservedGroup,
        ),
        (
            ControllerOp::Join([(1, vec![4])].into()),
            ControllerError::AlreadyJoined(1),
        ),
        (
            ControllerOp::Join(Default::default()),
            ControllerError::NoGroups,
        ),
        (
            ControllerOp::Leave(vec![7]),
            ControllerError::UnknownGroup(7),
        ),
        (
            ControllerOp::Move { shard: 0, group: 7 },
            ControllerError::UnknownGroup(7),
        ),
        (
            ControllerOp::Move {
                shard: NSHARDS as u16,
                group: 1,
            },
            ControllerError::NoSuchShard {
                shard: NSHARDS as u16,
                shards: NSHARDS,
            },
        ),
    ];
    for (op, error) in refusals {
        assert_eq!(ck.op(&mut cluster, op), Err(error));
    }
    for nodes in [vec![], vec![0], vec![4, 4]] {
        let refused = ck.op(&mut cluster, ControllerOp::Join([(5, nodes)].into()));
        assert!(
            matches!(refused, Err(ControllerError::BadNodes { group: 5, .. })),
            "{refused:?}"
        );
    }
    // Nothing refused made a configuration.
    assert_eq!(ck.query(&mut cluster, Query::Latest).num, num);
    check_same_config_on_servers(&mut cluster);
}
