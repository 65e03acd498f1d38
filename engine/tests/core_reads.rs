//! ReadIndex and lease reads, asserted on the exact messages and read states.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use common::{bodies, flush, Net};
use flotilla_engine::{Message, MessageBody, ProposeError, ReadState};

fn ack(from: u64, to: u64, term: u64, round: u64) -> Message {
    Message {
        group: 1,
        from,
        to,
        term,
        body: MessageBody::HeartbeatResponse { round },
    }
}

#[test]
fn read_index_confirms_leadership_with_one_heartbeat_round_for_all_waiting_reads() {
    let mut net = Net::new(3);
    net.elect(1);
    net.queue.clear();
    let commit = net.core(1).commit_index();
    for ctx in [10, 11, 12] {
        net.core(1).read_index(ctx).unwrap();
    }
    let (ready, msgs) = flush(net.core(1));
    assert!(
        ready.read_states.is_empty(),
        "read answered before leadership was confirmed"
    );
    let heartbeats: Vec<_> = bodies(&msgs);
    assert_eq!(
        heartbeats.len(),
        2,
        "one heartbeat per follower for three reads: {heartbeats:?}"
    );
    let round = match heartbeats[0].1 {
        MessageBody::Heartbeat { round, .. } => round,
        ref other => panic!("expected a heartbeat, got {other:?}"),
    };
    let term = net.core(1).term();
    net.core(1).step(ack(2, 1, term, round)).unwrap();
    let (ready, _) = flush(net.core(1));
    assert_eq!(
        ready.read_states,
        vec![
            ReadState {
                ctx: 10,
                index: commit
            },
            ReadState {
                ctx: 11,
                index: commit
            },
            ReadState {
                ctx: 12,
                index: commit
            }
        ]
    );
}

#[test]
fn acknowledgement_of_an_older_round_does_not_confirm_a_newer_read() {
    let mut net = Net::new(3);
    net.elect(1);
    net.queue.clear();
    net.core(1).read_index(1).unwrap();
    let (_, msgs) = flush(net.core(1));
    let round = match msgs[0].body {
        MessageBody::Heartbeat { round, .. } => round,
        ref other => panic!("expected a heartbeat, got {other:?}"),
    };
    let term = net.core(1).term();
    net.core(1).step(ack(2, 1, term, round - 1)).unwrap();
    let (ready, _) = flush(net.core(1));
    assert!(ready.read_states.is_empty());
}

#[test]
fn read_index_waits_for_the_first_commit_of_the_term() {
    let mut net = Net::new(3);
    net.core(1).start_election();
    // Deliver votes but lose the append acknowledgements: the blank entry stays uncommitted.
    net.settle_filtered(|m| !matches!(m.body, MessageBody::AppendResponse(_)));
    assert!(net.core(1).is_leader());
    assert_eq!(net.core(1).commit_index(), 0);
    net.core(1).read_index(5).unwrap();
    // A quorum acknowledging heartbeats is not enough while nothing of this term is committed.
    let term = net.core(1).term();
    net.core(1).step(ack(2, 1, term, 100)).unwrap();
    net.flush(1);
    assert!(
        net.reads[0].is_empty(),
        "read served before the leader committed in its term"
    );
    // Heartbeats resume replication, the blank commits, and the read is served at index 1.
    for _ in 0..20 {
        if !net.reads[0].is_empty() {
            break;
        }
        net.tick_all(1);
        net.settle();
    }
    assert_eq!(net.reads[0], vec![ReadState { ctx: 5, index: 1 }]);
}

#[test]
fn followers_refuse_reads_and_name_the_leader() {
    let mut net = Net::new(3);
    net.elect(1);
    assert_eq!(
        net.core(2).read_index(1),
        Err(ProposeError::NotLeader { leader_hint: 1 })
    );
    assert_eq!(
        net.core(2).read_lease(1),
        Err(ProposeError::NotLeader { leader_hint: 1 })
    );
}

#[test]
fn lease_read_is_served_only_within_the_lease() {
    let mut net = Net::new(3);
    net.elect(1);
    // A heartbeat round acknowledged by a quorum starts the lease.
    net.tick_all(2);
    net.settle();
    let commit = net.core(1).commit_index();
    assert_eq!(
        net.core(1).read_lease(7),
        Ok(ReadState {
            ctx: 7,
            index: commit
        })
    );
    // Followers go silent: after lease_ticks (8) the lease has lapsed, although
    // the leader has not yet stepped down (that takes the election timeout).
    for _ in 0..8 {
        net.core(1).tick();
        net.core(1).take_ready();
    }
    assert!(net.core(1).is_leader());
    assert_eq!(net.core(1).read_lease(8), Err(ProposeError::LeaseExpired));
}

#[test]
fn lease_starts_when_the_round_was_sent_not_when_it_was_acknowledged() {
    let mut net = Net::new(3);
    net.elect(1);
    net.queue.clear();
    net.core(1).read_index(1).unwrap();
    let (_, msgs) = flush(net.core(1));
    let round = match msgs[0].body {
        MessageBody::Heartbeat { round, .. } => round,
        ref other => panic!("expected a heartbeat, got {other:?}"),
    };
    // The acknowledgement arrives 8 ticks later: the lease it grants has already run out.
    for _ in 0..8 {
        net.core(1).tick();
        net.core(1).take_ready();
    }
    let term = net.core(1).term();
    net.core(1).step(ack(2, 1, term, round)).unwrap();
    assert_eq!(net.core(1).read_lease(2), Err(ProposeError::LeaseExpired));
}

#[test]
fn no_lease_reads_during_leadership_transfer() {
    let mut net = Net::new(3);
    net.elect(1);
    net.tick_all(2);
    net.settle();
    assert!(net.core(1).read_lease(1).is_ok());
    // Block the transfer's completion so it stays pending.
    net.core(1).transfer_leadership(2).unwrap();
    assert_eq!(net.core(1).read_lease(2), Err(ProposeError::LeaseExpired));
}

#[test]
fn time_the_runtime_could_not_tick_ends_the_lease_but_fires_no_timer() {
    let mut net = Net::new(3);
    net.elect(1);
    net.tick_all(2);
    net.settle();
    assert!(net.core(1).read_lease(1).is_ok());
    let term = net.core(1).term();
    // The leader's loop stalled for a second: 100 ticks that were never
    // delivered. The followers may have elected another leader meanwhile.
    net.core(1).skip_ticks(100);
    assert_eq!(
        net.core(1).read_lease(2),
        Err(ProposeError::LeaseExpired),
        "a lease that ran out during the stall serves nothing"
    );
    let (ready, msgs) = flush(net.core(1));
    assert!(
        msgs.is_empty() && ready.persist.is_none(),
        "no burst of heartbeats or check-quorum: {msgs:?}"
    );
    assert!(net.core(1).is_leader());
    assert_eq!(net.core(1).term(), term);
    // A fresh heartbeat round acknowledged by a quorum grants a new lease.
    net.tick_all(2);
    net.settle();
    assert!(net.core(1).read_lease(3).is_ok());
}
