//! Elections, PreVote, CheckQuorum and vote durability, asserted on the exact
//! messages and state one core produces.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use common::{bodies, core, core_with, flush, Net};
use flotilla_engine::{AppendResponse, Message, MessageBody, Role};

#[test]
fn election_timeout_starts_a_pre_vote_without_changing_term() {
    let mut c = core(1, &[1, 2, 3]);
    for _ in 0..20 {
        c.tick();
    }
    assert_eq!(c.role(), Role::PreCandidate);
    assert_eq!(c.term(), 0, "a pre-vote must not bump the term");
    let (ready, msgs) = flush(&mut c);
    assert!(ready.persist.is_none(), "nothing to persist for a pre-vote");
    let expected = MessageBody::PreVote {
        last_index: 0,
        last_term: 0,
    };
    assert_eq!(bodies(&msgs), vec![(2, expected.clone()), (3, expected)]);
    assert!(
        msgs.iter().all(|m| m.term == 1),
        "pre-votes carry the term the node would campaign in"
    );
}

#[test]
fn pre_vote_quorum_starts_real_election_and_own_vote_waits_for_disk() {
    let mut c = core(1, &[1, 2, 3]);
    c.start_election();
    c.take_ready();
    let grant = Message {
        group: 1,
        from: 2,
        to: 1,
        term: 1,
        body: MessageBody::PreVoteResponse { granted: true },
    };
    c.step(grant).unwrap();
    assert_eq!(c.role(), Role::Candidate);
    assert_eq!(c.term(), 1);
    let ready = c.take_ready();
    let persist = ready.persist.expect("term and vote must be persisted");
    assert_eq!(persist.hard_state.map(|h| (h.term, h.vote)), Some((1, 1)));
    let expected = MessageBody::RequestVote {
        last_index: 0,
        last_term: 0,
        transfer: false,
    };
    assert_eq!(
        bodies(&ready.messages),
        vec![(2, expected.clone()), (3, expected)]
    );
    // A vote from node 2 alone is not a quorum until our own vote is durable.
    let vote = Message {
        group: 1,
        from: 2,
        to: 1,
        term: 1,
        body: MessageBody::RequestVoteResponse { granted: true },
    };
    c.step(vote).unwrap();
    assert_eq!(
        c.role(),
        Role::Candidate,
        "own vote counted before it was persisted"
    );
    c.on_persisted(persist.seq);
    assert_eq!(c.role(), Role::Leader);
}

#[test]
fn vote_response_is_held_until_the_vote_is_durable() {
    let mut c = core(2, &[1, 2, 3]);
    let request = Message {
        group: 1,
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::RequestVote {
            last_index: 0,
            last_term: 0,
            transfer: false,
        },
    };
    c.step(request).unwrap();
    let ready = c.take_ready();
    assert!(
        ready.messages.is_empty(),
        "vote sent before it was persisted"
    );
    let persist = ready.persist.expect("vote to persist");
    assert_eq!(persist.hard_state.map(|h| (h.term, h.vote)), Some((1, 1)));
    c.on_persisted(persist.seq);
    let ready = c.take_ready();
    assert_eq!(
        bodies(&ready.messages),
        vec![(1, MessageBody::RequestVoteResponse { granted: true })]
    );
}

#[test]
fn one_vote_per_term() {
    let mut c = core(3, &[1, 2, 3]);
    for candidate in [1, 2] {
        let request = Message {
            group: 1,
            from: candidate,
            to: 3,
            term: 1,
            body: MessageBody::RequestVote {
                last_index: 0,
                last_term: 0,
                transfer: false,
            },
        };
        c.step(request).unwrap();
    }
    let (_, msgs) = flush(&mut c);
    assert_eq!(
        bodies(&msgs),
        vec![
            (1, MessageBody::RequestVoteResponse { granted: true }),
            (2, MessageBody::RequestVoteResponse { granted: false }),
        ]
    );
}

#[test]
fn vote_refused_to_a_less_up_to_date_log() {
    let mut net = Net::new(3);
    net.elect(1);
    net.core(1).propose(b"x".to_vec()).unwrap();
    net.settle();
    // Node 3 has entries of term 1 up to index 2; a candidate with an empty log asks.
    let mut c = net.cores.remove(2);
    let request = Message {
        group: 1,
        from: 2,
        to: 3,
        term: 5,
        body: MessageBody::RequestVote {
            last_index: 1,
            last_term: 1,
            transfer: false,
        },
    };
    // Not in a leader lease: no ticks elapsed? Simulate an election timeout first.
    for _ in 0..30 {
        c.tick();
    }
    c.take_ready();
    c.step(request).unwrap();
    let (_, msgs) = flush(&mut c);
    let answers: Vec<_> = msgs
        .iter()
        .filter(|m| m.to == 2)
        .map(|m| m.body.clone())
        .collect();
    assert_eq!(
        answers,
        vec![MessageBody::RequestVoteResponse { granted: false }]
    );
    assert_eq!(
        c.term(),
        5,
        "the higher term is adopted even when the vote is refused"
    );
}

#[test]
fn rejoining_node_cannot_disrupt_a_healthy_leader() {
    let mut net = Net::new(3);
    net.elect(1);
    let term = net.core(1).term();
    // Node 3 is partitioned and times out repeatedly; with PreVote its term never moves.
    for _ in 0..100 {
        net.core(3).tick();
        net.core(3).take_ready();
    }
    assert_eq!(
        net.core(3).term(),
        term,
        "pre-vote kept the isolated node's term"
    );
    // Even a node that somehow has a higher term is ignored by followers that
    // hear from the leader (CheckQuorum lease).
    let disruptive = Message {
        group: 1,
        from: 3,
        to: 2,
        term: term + 5,
        body: MessageBody::RequestVote {
            last_index: 99,
            last_term: term + 4,
            transfer: false,
        },
    };
    net.core(2).step(disruptive).unwrap();
    let (_, msgs) = flush(net.core(2));
    assert!(
        msgs.is_empty(),
        "follower answered a vote request while in a leader lease: {msgs:?}"
    );
    assert_eq!(net.core(2).term(), term);
    assert_eq!(net.core(2).leader(), 1);
}

#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    let mut net = Net::new(3);
    net.elect(1);
    // No responses reach the leader for two election timeouts.
    for _ in 0..20 {
        net.core(1).tick();
        net.core(1).take_ready();
    }
    assert_eq!(net.core(1).role(), Role::Follower);
    assert_eq!(net.core(1).leader(), 0);
}

#[test]
fn leader_with_quorum_contact_stays() {
    let mut net = Net::new(3);
    net.elect(1);
    let term = net.core(1).term();
    for _ in 0..50 {
        net.tick_all(1);
        net.settle();
    }
    assert!(net.core(1).is_leader());
    assert_eq!(net.core(1).term(), term);
}

#[test]
fn stale_leader_learns_the_new_term_from_any_follower() {
    let mut c = core_with(2, &[1, 2, 3], |_| {});
    // Node 2 is at term 3; an old leader of term 1 sends an append.
    let newer = Message {
        group: 1,
        from: 3,
        to: 2,
        term: 3,
        body: MessageBody::Heartbeat {
            commit: 0,
            round: 1,
        },
    };
    c.step(newer).unwrap();
    flush(&mut c);
    let old = Message {
        group: 1,
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::Append {
            prev_index: 0,
            prev_term: 0,
            entries: vec![],
            commit: 0,
        },
    };
    c.step(old).unwrap();
    let (_, msgs) = flush(&mut c);
    let to_old: Vec<_> = msgs.iter().filter(|m| m.to == 1).collect();
    assert_eq!(to_old.len(), 1);
    assert_eq!(to_old[0].term, 3);
    assert_eq!(
        to_old[0].body,
        MessageBody::AppendResponse(AppendResponse::Success { match_index: 0 })
    );
}

#[test]
fn a_message_from_node_zero_is_refused_and_moves_nothing() {
    let mut c = core_with(2, &[1, 2, 3], |_| {});
    let before = c.status();
    let forged = Message {
        group: 1,
        from: 0,
        to: 2,
        term: 9,
        body: MessageBody::Heartbeat {
            commit: 0,
            round: 1,
        },
    };
    assert!(c.step(forged).is_err());
    let (_, msgs) = flush(&mut c);
    assert!(msgs.is_empty());
    assert_eq!(c.status().term, before.term);
    assert_eq!(c.status().leader, before.leader);
}

#[test]
fn single_node_elects_itself() {
    let mut c = core(1, &[1]);
    for _ in 0..25 {
        c.tick();
        flush(&mut c);
    }
    assert!(c.is_leader());
    assert_eq!(
        c.commit_index(),
        1,
        "the leader's blank entry commits on its own"
    );
}

#[test]
fn learners_and_non_members_never_campaign() {
    let mut c = core(4, &[1, 2, 3]);
    for _ in 0..100 {
        c.tick();
    }
    let (_, msgs) = flush(&mut c);
    assert!(msgs.is_empty());
    assert_eq!(c.role(), Role::Follower);
}

#[test]
fn cores_with_one_seed_draw_different_election_timeouts() {
    // Every core of a cluster is configured with the same seed; node ids must
    // still give them unrelated timeouts, or they campaign in lockstep.
    let first_campaign = |id: u64| {
        let mut c = core(id, &[1, 2, 3, 4, 5]);
        let mut ticks = Vec::new();
        for t in 0..200 {
            c.tick();
            if c.role() == Role::PreCandidate {
                ticks.push(t);
                c.take_ready();
                // Reset as a refused pre-vote would.
                let refusal = Message {
                    group: 1,
                    from: if id == 1 { 2 } else { 1 },
                    to: id,
                    term: c.term(),
                    body: MessageBody::Heartbeat {
                        commit: 0,
                        round: 0,
                    },
                };
                c.step(refusal).unwrap();
                c.take_ready();
            }
        }
        ticks
    };
    let schedules: Vec<Vec<u64>> = (1..=5).map(first_campaign).collect();
    for a in 0..5 {
        for b in a + 1..5 {
            assert_ne!(
                schedules[a],
                schedules[b],
                "nodes {} and {} time out in lockstep",
                a + 1,
                b + 1
            );
        }
    }
}

#[test]
fn refusing_a_stale_candidate_does_not_restart_the_election_timer() {
    // Without PreVote a node with a stale log keeps campaigning in ever higher
    // terms. Followers that refuse it must still time out and campaign.
    let mut cfg = flotilla_engine::Config::new(1, 1);
    cfg.pre_vote = false;
    let mut restore = flotilla_engine::RestoreState::bootstrap([1, 2, 3]);
    restore.hard_state.term = 1;
    restore.entries = vec![flotilla_engine::Entry {
        index: 1,
        term: 1,
        payload: flotilla_engine::EntryPayload::Blank,
    }];
    let mut c = flotilla_engine::RaftCore::new(cfg, restore).unwrap();
    let mut campaigned = false;
    for t in 0..40u64 {
        c.tick();
        if c.role() == Role::Candidate {
            campaigned = true;
            break;
        }
        if t % 5 == 0 {
            let term = c.term() + 1;
            let stale = Message {
                group: 1,
                from: 3,
                to: 1,
                term,
                body: MessageBody::RequestVote {
                    last_index: 0,
                    last_term: 0,
                    transfer: false,
                },
            };
            c.step(stale).unwrap();
            flush(&mut c);
        }
    }
    assert!(
        campaigned,
        "a stream of refused vote requests kept the node from ever campaigning"
    );
}

#[test]
fn pre_vote_refused_to_a_less_up_to_date_log() {
    let mut net = Net::new(3);
    net.elect(1);
    net.core(1).propose(b"x".to_vec()).unwrap();
    net.settle();
    let term = net.core(3).term();
    // Let node 3 forget the leader (no lease), then ask it with a shorter log.
    for _ in 0..30 {
        net.core(3).tick();
    }
    net.core(3).take_ready();
    let pre_vote = Message {
        group: 1,
        from: 2,
        to: 3,
        term: term + 2,
        body: MessageBody::PreVote {
            last_index: 1,
            last_term: term,
        },
    };
    let mut c = net.cores.remove(2);
    let before = c.term();
    c.step(pre_vote).unwrap();
    let (_, msgs) = flush(&mut c);
    let answers: Vec<_> = msgs
        .iter()
        .filter(|m| m.to == 2)
        .map(|m| m.body.clone())
        .collect();
    assert_eq!(
        answers,
        vec![MessageBody::PreVoteResponse { granted: false }]
    );
    assert_eq!(
        c.term(),
        before,
        "a pre-vote must not change the receiver's term"
    );
}

#[test]
fn joint_configuration_election_needs_both_majorities() {
    use flotilla_engine::{Config, Membership, RaftCore, RestoreState, SnapshotMeta};
    let joint = Membership {
        voters: [1, 4, 5].into(),
        outgoing: [1, 2, 3].into(),
        learners: Default::default(),
    };
    let restore = RestoreState {
        snapshot: SnapshotMeta {
            membership: joint,
            ..SnapshotMeta::default()
        },
        ..RestoreState::default()
    };
    let mut c = RaftCore::new(Config::new(1, 1), restore).unwrap();
    c.start_election();
    flush(&mut c);
    for from in [4, 5] {
        c.step(Message {
            group: 1,
            from,
            to: 1,
            term: 1,
            body: MessageBody::PreVoteResponse { granted: true },
        })
        .unwrap();
    }
    flush(&mut c);
    assert_eq!(
        c.role(),
        Role::PreCandidate,
        "the new half alone must not carry a joint election"
    );
    c.step(Message {
        group: 1,
        from: 2,
        to: 1,
        term: 1,
        body: MessageBody::PreVoteResponse { granted: true },
    })
    .unwrap();
    flush(&mut c);
    assert_eq!(c.role(), Role::Candidate);
}

#[test]
fn vote_request_from_an_older_term_is_refused_with_the_newer_term() {
    let mut c = core(3, &[1, 2, 3]);
    let newer = Message {
        group: 1,
        from: 2,
        to: 3,
        term: 9,
        body: MessageBody::Heartbeat {
            commit: 0,
            round: 1,
        },
    };
    c.step(newer).unwrap();
    flush(&mut c);
    let stale = Message {
        group: 1,
        from: 1,
        to: 3,
        term: 4,
        body: MessageBody::RequestVote {
            last_index: 50,
            last_term: 4,
            transfer: false,
        },
    };
    c.step(stale).unwrap();
    let (_, msgs) = flush(&mut c);
    let to1: Vec<_> = msgs.iter().filter(|m| m.to == 1).collect();
    assert_eq!(to1.len(), 1);
    assert_eq!(to1[0].term, 9, "the refusal must carry the newer term");
    assert_eq!(
        to1[0].body,
        MessageBody::RequestVoteResponse { granted: false }
    );
}

#[test]
fn granting_a_vote_draws_a_fresh_election_timeout() {
    // Simulator seed 9,075,098 (PreVote off): after healing, a voter with a
    // stale log kept taking the swing vote of a new term just before the
    // up-to-date candidates asked for it, and the voters that could have won
    // granted a vote to one of those doomed candidates every round. A grant
    // restarted their timers with the timeout drawn long before, so a voter
    // that once drew a long timeout stayed the slowest in every round and the
    // same race was lost for over 10 election timeouts. A grant must draw a
    // fresh timeout, as a campaign does.
    //
    // Node 1 grants `grants` votes 9 ticks apart (under the minimum timeout of
    // 10, so it never campaigns in between), then waits until it times out:
    // the wait is the timeout the last grant left in force.
    let timeout_after = |grants: u64| -> u64 {
        let mut c = core_with(1, &[1, 2, 3], |cfg| cfg.pre_vote = false);
        for term in 1..=grants {
            if term > 1 {
                for _ in 0..9 {
                    c.tick();
                }
            }
            c.step(Message {
                group: 1,
                from: 2,
                to: 1,
                term,
                body: MessageBody::RequestVote {
                    last_index: 0,
                    last_term: 0,
                    transfer: false,
                },
            })
            .unwrap();
            let (ready, msgs) = flush(&mut c);
            assert_eq!(
                ready
                    .persist
                    .and_then(|p| p.hard_state)
                    .map(|h| (h.term, h.vote)),
                Some((term, 2))
            );
            assert_eq!(
                msgs,
                vec![Message {
                    group: 1,
                    from: 1,
                    to: 2,
                    term,
                    body: MessageBody::RequestVoteResponse { granted: true },
                }]
            );
            assert_eq!((c.role(), c.term()), (Role::Follower, term));
        }
        let mut waited = 0;
        while c.role() != Role::Candidate {
            assert!(waited < 20, "no campaign within 2 × the election timeout");
            c.tick();
            waited += 1;
        }
        assert_eq!(c.term(), grants + 1);
        waited
    };
    let timeouts: Vec<u64> = (0..6).map(timeout_after).collect();
    assert!(
        timeouts.iter().all(|t| (10..20).contains(t)),
        "timeouts outside [T, 2T): {timeouts:?}"
    );
    let distinct: std::collections::BTreeSet<u64> = timeouts.iter().copied().collect();
    assert!(
        distinct.len() >= 3,
        "the timeout after 0..=5 grants should be a fresh draw each time, not the boot draw kept: {timeouts:?}"
    );
}
