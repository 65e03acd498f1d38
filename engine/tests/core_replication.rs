//! Replication: commit rule, conflict hints, flow control, asynchronous
//! persistence, asserted on the exact messages and state one core produces.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use common::{bodies, core_with, flush, normal, Net};
use flotilla_engine::{
    AppendResponse, Config, Entry, EntryPayload, HardState, Membership, Message, MessageBody,
    ProposeError, RaftCore, RestoreState, SnapshotMeta,
};

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        payload: normal(&index.to_le_bytes()),
    }
}

/// A core restored with a given log and term, as after a crash.
fn restored(
    id: u64,
    voters: &[u64],
    term: u64,
    log: Vec<Entry>,
    tweak: impl FnOnce(&mut Config),
) -> RaftCore {
    let mut cfg = Config::new(id, 1);
    tweak(&mut cfg);
    let restore = RestoreState {
        hard_state: HardState {
            term,
            vote: 0,
            commit: 0,
        },
        snapshot: SnapshotMeta {
            membership: Membership::with_voters(voters.iter().copied()),
            ..SnapshotMeta::default()
        },
        entries: log,
        ..RestoreState::default()
    };
    RaftCore::new(cfg, restore).unwrap()
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message {
        group: 1,
        from,
        to,
        term,
        body,
    }
}

fn win_election(c: &mut RaftCore, voters: &[u64]) {
    let me = c.id();
    c.start_election();
    flush(c);
    let term = c.term() + 1;
    for &v in voters.iter().filter(|v| **v != me) {
        c.step(msg(
            v,
            me,
            term,
            MessageBody::PreVoteResponse { granted: true },
        ))
        .unwrap();
    }
    flush(c);
    let term = c.term();
    for &v in voters.iter().filter(|v| **v != me) {
        c.step(msg(
            v,
            me,
            term,
            MessageBody::RequestVoteResponse { granted: true },
        ))
        .unwrap();
    }
    flush(c);
    assert!(c.is_leader());
}

/// Figure 8: a leader must not commit an entry of an earlier term by counting
/// replicas, even when a majority holds it.
#[test]
fn figure8_old_term_entry_is_not_committed_by_counting_replicas() {
    let voters = [1, 2, 3, 4, 5];
    // Node 1 has (1,t1) (2,t2) and is now at term 3: it wins term 4.
    let mut c = restored(1, &voters, 3, vec![entry(1, 1), entry(2, 2)], |cfg| {
        cfg.max_append_bytes = 1
    });
    win_election(&mut c, &voters);
    let term = c.term();
    assert_eq!(term, 4);
    assert_eq!(c.last_index(), 3, "blank entry of the new term appended");
    // Followers 2 and 3 acknowledge index 2 (the term-2 entry) only.
    for f in [2, 3] {
        c.step(msg(
            f,
            1,
            term,
            MessageBody::AppendResponse(AppendResponse::Success { match_index: 2 }),
        ))
        .unwrap();
    }
    flush(&mut c);
    assert_eq!(
        c.commit_index(),
        0,
        "an entry of term 2 was committed by counting replicas in term 4"
    );
    // Once a majority holds the term-4 entry, everything up to it commits.
    for f in [2, 3] {
        c.step(msg(
            f,
            1,
            term,
            MessageBody::AppendResponse(AppendResponse::Success { match_index: 3 }),
        ))
        .unwrap();
    }
    assert_eq!(c.commit_index(), 3);
}

#[test]
fn rejection_carries_the_conflict_term_and_its_first_index() {
    // Follower log: 1:t1 2:t2 3:t2 4:t2; leader probes prev (4, t3).
    let mut f = restored(
        2,
        &[1, 2, 3],
        3,
        vec![entry(1, 1), entry(2, 2), entry(3, 2), entry(4, 2)],
        |_| {},
    );
    f.step(msg(
        1,
        2,
        3,
        MessageBody::Append {
            prev_index: 4,
            prev_term: 3,
            entries: vec![],
            commit: 0,
        },
    ))
    .unwrap();
    let (_, msgs) = flush(&mut f);
    assert_eq!(
        bodies(&msgs),
        vec![(
            1,
            MessageBody::AppendResponse(AppendResponse::Reject {
                rejected_index: 4,
                conflict_term: 2,
                conflict_index: 2
            })
        )]
    );
    // A probe past the end reports the follower's last index + 1 and no term.
    f.step(msg(
        1,
        2,
        3,
        MessageBody::Append {
            prev_index: 9,
            prev_term: 3,
            entries: vec![],
            commit: 0,
        },
    ))
    .unwrap();
    let (_, msgs) = flush(&mut f);
    assert_eq!(
        bodies(&msgs),
        vec![(
            1,
            MessageBody::AppendResponse(AppendResponse::Reject {
                rejected_index: 9,
                conflict_term: 0,
                conflict_index: 5
            })
        )]
    );
}

#[test]
fn leader_skips_a_whole_conflicting_term_after_one_rejection() {
    // Leader log: 1:t1 2:t1 3:t3 ... 6:t3; it leads term 4 and probes at its last index.
    let log = vec![
        entry(1, 1),
        entry(2, 1),
        entry(3, 3),
        entry(4, 3),
        entry(5, 3),
        entry(6, 3),
    ];
    let mut c = restored(1, &[1, 2, 3], 3, log, |_| {});
    win_election(&mut c, &[1, 2, 3]);
    let term = c.term();
    // The new leader probes after its old last index (6, t3). Follower 2 has
    // 1:t1 2:t1 3:t2 .. 7:t2, so it rejects with term 2, first seen at index 3.
    let reject = AppendResponse::Reject {
        rejected_index: 6,
        conflict_term: 2,
        conflict_index: 3,
    };
    c.step(msg(2, 1, term, MessageBody::AppendResponse(reject)))
        .unwrap();
    let (_, msgs) = flush(&mut c);
    let to2: Vec<_> = msgs.iter().filter(|m| m.to == 2).collect();
    assert_eq!(to2.len(), 1);
    match &to2[0].body {
        // The leader has no term-2 entry, so it jumps straight to the follower's first term-2 index.
        MessageBody::Append {
            prev_index: 2,
            prev_term: 1,
            entries,
            ..
        } => assert_eq!(entries.first().map(|e| e.index), Some(3)),
        other => panic!("expected an append after index 2, got {other:?}"),
    }
}

#[test]
fn append_ack_waits_for_persistence_and_apply_runs_ahead_of_newer_writes() {
    let mut f = core_with(2, &[1, 2, 3], |_| {});
    let e1 = Entry {
        index: 1,
        term: 1,
        payload: EntryPayload::Blank,
    };
    f.step(msg(
        1,
        2,
        1,
        MessageBody::Append {
            prev_index: 0,
            prev_term: 0,
            entries: vec![e1],
            commit: 0,
        },
    ))
    .unwrap();
    let ready = f.take_ready();
    let first = ready.persist.expect("entries to persist");
    assert_eq!(first.entries.len(), 1);
    assert!(
        ready.messages.is_empty(),
        "append acknowledged before it was durable"
    );
    f.on_persisted(first.seq);
    let ready = f.take_ready();
    assert_eq!(
        bodies(&ready.messages),
        vec![(
            1,
            MessageBody::AppendResponse(AppendResponse::Success { match_index: 1 })
        )]
    );
    // Entry 2 arrives with commit 1: entry 1 is applied while entry 2 is still being written.
    f.step(msg(
        1,
        2,
        1,
        MessageBody::Append {
            prev_index: 1,
            prev_term: 1,
            entries: vec![entry(2, 1)],
            commit: 1,
        },
    ))
    .unwrap();
    let ready = f.take_ready();
    assert!(ready.persist.is_some());
    assert_eq!(
        ready
            .committed_entries
            .iter()
            .map(|e| e.index)
            .collect::<Vec<_>>(),
        vec![1]
    );
    assert!(ready.messages.is_empty());
}

#[test]
fn committed_entries_are_applied_only_once_durable_locally() {
    let mut f = core_with(2, &[1, 2, 3], |_| {});
    let entries = vec![entry(1, 1), entry(2, 1)];
    f.step(msg(
        1,
        2,
        1,
        MessageBody::Append {
            prev_index: 0,
            prev_term: 0,
            entries,
            commit: 2,
        },
    ))
    .unwrap();
    let ready = f.take_ready();
    assert!(
        ready.committed_entries.is_empty(),
        "applied entries that are not yet on local disk"
    );
    f.on_persisted(ready.persist.expect("persist").seq);
    let ready = f.take_ready();
    assert_eq!(ready.committed_entries.len(), 2);
}

#[test]
fn in_flight_message_limit_pauses_replication() {
    let mut net = Net::with(3, |cfg| {
        cfg.max_inflight_msgs = 2;
        cfg.max_append_bytes = 1;
    });
    net.elect(1);
    net.queue.clear();
    for i in 0..5u8 {
        net.core(1).propose(vec![i]).unwrap();
    }
    let msgs = net.flush(1);
    let to2 = msgs
        .iter()
        .filter(|m| m.to == 2 && matches!(m.body, MessageBody::Append { .. }))
        .count();
    assert_eq!(
        to2, 2,
        "sent {to2} appends to a follower with a window of 2"
    );
    let status = net.core(1).status();
    let peer = status.peers.iter().find(|p| p.id == 2).expect("peer 2");
    assert_eq!(peer.inflight_msgs, 2);
    // Acks open the window again and everything drains.
    net.settle();
    let last = net.core(1).last_index();
    assert_eq!(net.core(1).commit_index(), last);
    assert_eq!(net.core(2).last_index(), last);
}

#[test]
fn in_flight_byte_limit_pauses_replication() {
    let mut net = Net::with(3, |cfg| {
        cfg.max_inflight_bytes = 100;
        cfg.max_append_bytes = 1;
    });
    net.elect(1);
    net.queue.clear();
    for _ in 0..5 {
        net.core(1).propose(vec![0; 60]).unwrap();
    }
    let msgs = net.flush(1);
    let to2 = msgs
        .iter()
        .filter(|m| m.to == 2 && matches!(m.body, MessageBody::Append { .. }))
        .count();
    assert_eq!(
        to2, 2,
        "76-byte entries against a 100-byte window: two fit before it closes"
    );
}

#[test]
fn uncommitted_bytes_limit_refuses_proposals_with_a_retryable_error() {
    let mut net = Net::with(3, |cfg| cfg.max_uncommitted_bytes = 200);
    net.elect(1);
    net.queue.clear();
    let mut refused = None;
    for _ in 0..10 {
        if let Err(e) = net.core(1).propose(vec![0; 50]) {
            refused = Some(e);
            break;
        }
    }
    let err = refused.expect("proposals beyond the limit must be refused");
    assert!(
        matches!(err, ProposeError::Overloaded { limit: 200, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
    // Once the backlog commits, proposals are accepted again.
    net.settle();
    assert!(net.core(1).propose(vec![0; 50]).is_ok());
}

#[test]
fn followers_refuse_proposals_and_name_the_leader() {
    let mut net = Net::new(3);
    net.elect(1);
    assert_eq!(
        net.core(2).propose(b"x".to_vec()),
        Err(ProposeError::NotLeader { leader_hint: 1 })
    );
}

#[test]
fn conflicting_suffix_is_replaced_and_persist_truncates_from_the_conflict() {
    let mut f = restored(
        2,
        &[1, 2, 3],
        2,
        vec![entry(1, 1), entry(2, 2), entry(3, 2)],
        |_| {},
    );
    let new = vec![entry(2, 3), entry(3, 3), entry(4, 3)];
    f.step(msg(
        1,
        2,
        3,
        MessageBody::Append {
            prev_index: 1,
            prev_term: 1,
            entries: new.clone(),
            commit: 0,
        },
    ))
    .unwrap();
    let ready = f.take_ready();
    let persist = ready.persist.expect("persist");
    assert_eq!(
        persist.entries, new,
        "the request rewrites the log from the first conflicting index"
    );
    assert_eq!(f.term_at(2), Some(3));
    assert_eq!(f.last_index(), 4);
}

#[test]
fn duplicate_append_does_not_truncate_newer_entries() {
    let mut f = restored(
        2,
        &[1, 2, 3],
        1,
        vec![entry(1, 1), entry(2, 1), entry(3, 1)],
        |_| {},
    );
    f.step(msg(
        1,
        2,
        1,
        MessageBody::Append {
            prev_index: 0,
            prev_term: 0,
            entries: vec![entry(1, 1)],
            commit: 0,
        },
    ))
    .unwrap();
    let (ready, msgs) = flush(&mut f);
    assert!(
        ready.persist.is_none(),
        "an old duplicate must not rewrite the log"
    );
    assert_eq!(f.last_index(), 3);
    assert_eq!(
        bodies(&msgs),
        vec![(
            1,
            MessageBody::AppendResponse(AppendResponse::Success { match_index: 1 })
        )]
    );
}

#[test]
fn heartbeat_commit_never_runs_past_the_followers_log() {
    let mut f = restored(2, &[1, 2, 3], 1, vec![entry(1, 1), entry(2, 1)], |_| {});
    f.step(msg(
        1,
        2,
        1,
        MessageBody::Heartbeat {
            commit: 5,
            round: 1,
        },
    ))
    .unwrap();
    let (ready, _) = flush(&mut f);
    assert_eq!(
        f.commit_index(),
        0,
        "commit taken from a heartbeat beyond the follower's log"
    );
    assert!(ready.committed_entries.is_empty());
    f.step(msg(
        1,
        2,
        1,
        MessageBody::Heartbeat {
            commit: 2,
            round: 2,
        },
    ))
    .unwrap();
    assert_eq!(f.commit_index(), 2);
}
