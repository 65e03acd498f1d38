//! Log compaction and chunked snapshot transfer: what the leader asks the
//! runtime to read, what it sends, how the follower stages and installs, and
//! how a cut transfer resumes.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use common::{flush, Net};
use flotilla_engine::{
    CompactError, Message, MessageBody, NodeId, RaftCore, ReplicationState, RestoreState,
    SnapshotChunk, SnapshotMeta,
};

/// Leader 1 with 10 committed entries compacted into a snapshot; node 3 missed them all.
fn leader_with_compacted_log() -> (Net, SnapshotMeta) {
    let mut net = Net::with(3, |cfg| cfg.snapshot_chunk_bytes = 4);
    net.elect(1);
    for i in 0..10u8 {
        net.core(1).propose(vec![i]).unwrap();
    }
    net.settle_within(&[1, 2]);
    net.tick_all(2);
    net.settle_within(&[1, 2]);
    let applied = net.core(1).applied_index();
    assert_eq!(applied, 11);
    let meta = net.core(1).compact(applied).unwrap();
    (net, meta)
}

/// Lets leader 1 and follower 3 talk until the leader asks the runtime for a
/// snapshot chunk; returns the offsets asked for.
fn until_snapshot_read(net: &mut Net) -> Vec<u64> {
    let term = net.core(1).term();
    net.core(1)
        .step(Message {
            group: 1,
            from: 3,
            to: 1,
            term,
            body: MessageBody::HeartbeatResponse { round: 0 },
        })
        .unwrap();
    for _ in 0..10 {
        let ready = net.core(1).take_ready();
        if !ready.snapshot_reads.is_empty() {
            return ready.snapshot_reads.iter().map(|r| r.offset).collect();
        }
        for m in ready.messages.into_iter().filter(|m| m.to == 3) {
            net.core(3).step(m).unwrap();
            let (_, replies) = flush(net.core(3));
            for r in replies {
                net.core(1).step(r).unwrap();
            }
        }
    }
    panic!("the leader never started a snapshot transfer to node 3");
}

fn chunk_of(image: &[u8], meta: &SnapshotMeta, offset: u64, max: u64) -> SnapshotChunk {
    let start = offset as usize;
    let end = (start + max as usize).min(image.len());
    SnapshotChunk {
        snapshot_index: meta.index,
        snapshot_term: meta.term,
        offset,
        data: image[start..end].to_vec(),
        done: end == image.len(),
    }
}

#[test]
fn compaction_is_limited_to_applied_and_persisted_entries() {
    let mut net = Net::new(3);
    net.elect(1);
    let applied = net.core(1).applied_index();
    assert_eq!(
        net.core(1).compact(applied + 1),
        Err(CompactError::NotApplied {
            index: applied + 1,
            applied
        })
    );
    let meta = net.core(1).compact(applied).unwrap();
    assert_eq!(meta.index, applied);
    let ready = net.core(1).take_ready();
    assert_eq!(
        ready.persist.and_then(|p| p.compact).map(|m| m.index),
        Some(applied)
    );
    assert_eq!(net.core(1).status().first_index, applied + 1);
}

#[test]
fn lagging_follower_gets_the_snapshot_in_chunks_and_installs_it_atomically() {
    let (mut net, meta) = leader_with_compacted_log();
    let image = b"0123456789".to_vec();
    // Node 3 answers a heartbeat; the leader finds it behind its first index.
    let first = until_snapshot_read(&mut net);
    assert_eq!(first, vec![0]);
    net.core(1)
        .on_snapshot_chunk(3, chunk_of(&image, &meta, 0, 4));
    let mut leader_msgs = net.core(1).take_ready().messages;
    let mut staged = Vec::new();
    let mut installed = None;
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 50, "transfer did not finish");
        // Leader -> follower 3.
        let to3: Vec<Message> = leader_msgs.drain(..).filter(|m| m.to == 3).collect();
        let mut replies = Vec::new();
        for m in to3 {
            if let MessageBody::InstallSnapshot {
                offset, data, done, ..
            } = &m.body
            {
                staged.push((*offset, data.clone(), *done));
            }
            let is_chunk = matches!(m.body, MessageBody::InstallSnapshot { .. });
            net.core(3).step(m).unwrap();
            let ready = net.core(3).take_ready();
            if is_chunk {
                assert!(
                    ready.messages.is_empty(),
                    "snapshot acknowledged before the chunk was staged"
                );
            }
            replies.extend(ready.messages);
            if let Some(p) = ready.persist {
                if let Some(meta) = p.install_snapshot.clone() {
                    installed = Some(meta);
                }
                net.core(3).on_persisted(p.seq);
            }
            replies.extend(net.core(3).take_ready().messages);
        }
        // Follower -> leader; the leader asks the runtime for the next chunk.
        for r in replies {
            net.core(1).step(r).unwrap();
        }
        let ready = net.core(1).take_ready();
        leader_msgs.extend(ready.messages);
        for req in ready.snapshot_reads {
            assert_eq!(req.to, 3);
            assert_eq!(req.meta, meta);
            assert_eq!(req.max_bytes, 4);
            net.core(1)
                .on_snapshot_chunk(3, chunk_of(&image, &meta, req.offset, req.max_bytes));
        }
        leader_msgs.extend(net.core(1).take_ready().messages);
        if installed.is_some()
            && leader_msgs
                .iter()
                .all(|m| !matches!(m.body, MessageBody::InstallSnapshot { .. }))
        {
            break;
        }
    }
    assert_eq!(
        staged
            .iter()
            .map(|(o, d, done)| (*o, d.len(), *done))
            .collect::<Vec<_>>(),
        vec![(0, 4, false), (4, 4, false), (8, 2, true)],
        "three chunks of at most 4 bytes, in order"
    );
    assert_eq!(installed, Some(meta.clone()));
    assert_eq!(net.core(3).snapshot_meta(), &meta);
    assert_eq!(net.core(3).commit_index(), meta.index);
    let status = net.core(1).status();
    let peer = status.peers.iter().find(|p| p.id == 3).expect("peer 3");
    assert_eq!(peer.match_index, meta.index);
    assert!(!matches!(peer.state, ReplicationState::Snapshot { .. }));
}

#[test]
fn follower_restarted_with_a_staged_prefix_resumes_where_it_stopped() {
    let meta = SnapshotMeta {
        index: 20,
        term: 2,
        membership: flotilla_engine::Membership::with_voters([1, 2, 3]),
    };
    let mut restore = RestoreState::bootstrap([1, 2, 3]);
    restore.hard_state.term = 2;
    restore.staged = Some((meta.clone(), 8));
    let mut f = RaftCore::new(flotilla_engine::Config::new(3, 1), restore).unwrap();
    // The leader restarts the transfer from 0; the follower asks for byte 8.
    let chunk = Message {
        group: 1,
        from: 1,
        to: 3,
        term: 2,
        body: MessageBody::InstallSnapshot {
            meta: meta.clone(),
            offset: 0,
            data: vec![0; 4],
            done: false,
        },
    };
    f.step(chunk).unwrap();
    let (ready, msgs) = flush(&mut f);
    assert!(
        ready.persist.is_none(),
        "a chunk it already has was staged again"
    );
    assert_eq!(
        msgs.iter().map(|m| m.body.clone()).collect::<Vec<_>>(),
        vec![MessageBody::InstallSnapshotResponse {
            snapshot_index: 20,
            next_offset: 8,
            done: false
        }]
    );
}

#[test]
fn leader_resumes_a_transfer_at_the_offset_the_follower_reports() {
    let (mut net, meta) = leader_with_compacted_log();
    assert_eq!(until_snapshot_read(&mut net), vec![0]);
    let resume = Message {
        group: 1,
        from: 3,
        to: 1,
        term: net.core(1).term(),
        body: MessageBody::InstallSnapshotResponse {
            snapshot_index: meta.index,
            next_offset: 8,
            done: false,
        },
    };
    net.core(1).step(resume).unwrap();
    let ready = net.core(1).take_ready();
    assert_eq!(
        ready
            .snapshot_reads
            .iter()
            .map(|r| r.offset)
            .collect::<Vec<u64>>(),
        vec![8]
    );
}

#[test]
fn silent_transfer_is_retried_after_an_election_timeout() {
    let (mut net, _) = leader_with_compacted_log();
    let term = net.core(1).term();
    assert_eq!(until_snapshot_read(&mut net), vec![0]);
    let mut retried: Vec<NodeId> = Vec::new();
    for _ in 0..10 {
        net.core(1).tick();
        // Keep the leader in quorum through node 2.
        net.core(1)
            .step(Message {
                group: 1,
                from: 2,
                to: 1,
                term,
                body: MessageBody::HeartbeatResponse { round: 0 },
            })
            .unwrap();
        retried.extend(net.core(1).take_ready().snapshot_reads.iter().map(|r| r.to));
    }
    assert_eq!(
        retried,
        vec![3],
        "exactly one retry after the election timeout"
    );
}

#[test]
fn snapshot_older_than_the_commit_index_is_acknowledged_without_install() {
    let mut net = Net::new(3);
    net.elect(1);
    for i in 0..3u8 {
        net.core(1).propose(vec![i]).unwrap();
    }
    net.settle();
    net.tick_all(2);
    net.settle();
    let commit = net.core(2).commit_index();
    let meta = SnapshotMeta {
        index: commit - 1,
        term: 1,
        membership: net.core(2).membership().clone(),
    };
    let term = net.core(1).term();
    let m = Message {
        group: 1,
        from: 1,
        to: 2,
        term,
        body: MessageBody::InstallSnapshot {
            meta,
            offset: 0,
            data: vec![1],
            done: true,
        },
    };
    net.core(2).step(m).unwrap();
    let (ready, msgs) = flush(net.core(2));
    assert!(ready.persist.is_none());
    assert_eq!(
        msgs.iter().map(|m| m.body.clone()).collect::<Vec<_>>(),
        vec![MessageBody::InstallSnapshotResponse {
            snapshot_index: commit - 1,
            next_offset: 0,
            done: true
        }]
    );
}

#[test]
fn snapshot_matching_the_log_keeps_the_entries_after_it() {
    // Follower 2 holds entries 1..=5 of term 1, committed up to 2. A snapshot at
    // (3, term 1) arrives: the follower must not throw away 4 and 5, which it
    // may already have acknowledged.
    let mut net = Net::new(3);
    net.elect(1);
    for i in 0..4u8 {
        net.core(1).propose(vec![i]).unwrap();
    }
    net.settle_within(&[1, 2]);
    let last = net.core(2).last_index();
    assert_eq!(last, 5);
    let term = net.core(1).term();
    let meta = SnapshotMeta {
        index: 3,
        term,
        membership: net.core(2).membership().clone(),
    };
    let commit_before = net.core(2).commit_index();
    assert!(
        commit_before < 3,
        "the scenario needs an uncommitted snapshot index"
    );
    let m = Message {
        group: 1,
        from: 1,
        to: 2,
        term,
        body: MessageBody::InstallSnapshot {
            meta,
            offset: 0,
            data: vec![1, 2],
            done: true,
        },
    };
    net.core(2).step(m).unwrap();
    let (ready, msgs) = flush(net.core(2));
    assert!(
        ready
            .persist
            .as_ref()
            .and_then(|p| p.install_snapshot.as_ref())
            .is_none(),
        "log discarded for a snapshot it already covers"
    );
    assert_eq!(net.core(2).last_index(), last);
    assert_eq!(net.core(2).commit_index(), 3);
    assert_eq!(
        msgs.iter().map(|m| m.body.clone()).collect::<Vec<_>>(),
        vec![MessageBody::InstallSnapshotResponse {
            snapshot_index: 3,
            next_offset: 0,
            done: true
        }]
    );
}
