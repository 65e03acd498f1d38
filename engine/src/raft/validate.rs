//! What a message must look like before the core acts on it.
//!
//! Certificates prove which member sent a message, not that the member is
//! right: a bug, an old binary or a corrupted frame that still decodes can
//! say anything. The handlers assume what every correct leader and voter
//! guarantees, so a message that breaks it is refused here, whole, instead of
//! being half applied: entries numbered one after another from
//! `prev_index + 1` (the log stores them by position), terms that never
//! decrease along a log and never exceed the sender's term, memberships with
//! voters and without node 0, and numbers far enough below `u64::MAX` that
//! the core's `+ 1` and `+ len` cannot overflow.

use flotilla_wal::{Entry, EntryPayload, Index, Membership, Term};

use crate::raft::message::{AppendResponse, Message, MessageBody, SnapshotMeta};

/// The largest term and log index a message may carry: half of `u64`, so
/// the arithmetic on them never overflows. At one election per millisecond
/// a cluster would take 292 million years to reach it.
pub const MAX_TERM_OR_INDEX: u64 = u64::MAX >> 1;

/// Why a message is refused, in words for the log.
pub(crate) fn check(msg: &Message) -> Result<(), &'static str> {
    bounded(msg.term)?;
    match &msg.body {
        MessageBody::PreVote {
            last_index,
            last_term,
        }
        | MessageBody::RequestVote {
            last_index,
            last_term,
            ..
        } => {
            bounded(*last_index)?;
            if *last_term > msg.term {
                return Err("a candidate's last log term is above the term it campaigns in");
            }
        }
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => {
            bounded(*commit)?;
            check_entries(msg.term, *prev_index, *prev_term, entries)?;
        }
        MessageBody::AppendResponse(AppendResponse::Success { match_index }) => {
            bounded(*match_index)?;
        }
        MessageBody::AppendResponse(AppendResponse::Reject {
            rejected_index,
            conflict_term,
            conflict_index,
        }) => {
            bounded(*rejected_index)?;
            bounded(*conflict_term)?;
            bounded(*conflict_index)?;
        }
        MessageBody::Heartbeat { commit, .. } => bounded(*commit)?,
        MessageBody::InstallSnapshot {
            meta, offset, data, ..
        } => {
            check_snapshot(msg.term, meta)?;
            if offset
                .checked_add(data.len() as u64)
                .is_none_or(|end| end > MAX_TERM_OR_INDEX)
            {
                return Err("a snapshot chunk ends beyond any possible snapshot size");
            }
        }
        MessageBody::InstallSnapshotResponse {
            snapshot_index,
            next_offset,
            ..
        } => {
            bounded(*snapshot_index)?;
            bounded(*next_offset)?;
        }
        MessageBody::PreVoteResponse { .. }
        | MessageBody::RequestVoteResponse { .. }
        | MessageBody::HeartbeatResponse { .. }
        | MessageBody::TimeoutNow => {}
    }
    Ok(())
}

fn bounded(value: u64) -> Result<(), &'static str> {
    if value > MAX_TERM_OR_INDEX {
        return Err("a term or log index is beyond 2^63 - 1");
    }
    Ok(())
}

fn check_entries(
    term: Term,
    prev_index: Index,
    prev_term: Term,
    entries: &[Entry],
) -> Result<(), &'static str> {
    bounded(prev_index)?;
    if prev_term > term {
        return Err("an append's previous entry has a term above the leader's");
    }
    let mut last_term = prev_term;
    for (offset, entry) in (1..).zip(entries) {
        if entry.index != prev_index + offset {
            return Err(
                "an append's entries are not numbered one after another from prev_index + 1",
            );
        }
        if entry.term < last_term || entry.term > term {
            return Err("an append's entry terms decrease, or exceed the leader's term");
        }
        last_term = entry.term;
        if let EntryPayload::Membership(membership) = &entry.payload {
            check_membership(membership)?;
        }
    }
    bounded(prev_index + entries.len() as u64)
}

fn check_snapshot(term: Term, meta: &SnapshotMeta) -> Result<(), &'static str> {
    bounded(meta.index)?;
    if meta.term > term {
        return Err("a snapshot's last term is above the sender's term");
    }
    check_membership(&meta.membership)
}

fn check_membership(membership: &Membership) -> Result<(), &'static str> {
    let sets = [
        &membership.voters,
        &membership.outgoing,
        &membership.learners,
    ];
    if membership.voters.is_empty() || sets.iter().any(|set| set.contains(&0)) {
        return Err("a membership has no voters, or names node 0");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            term,
            index,
            payload: EntryPayload::Blank,
        }
    }

    fn append(term: Term, prev_index: Index, prev_term: Term, entries: Vec<Entry>) -> Message {
        Message {
            group: 1,
            from: 2,
            to: 1,
            term,
            body: MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit: 0,
            },
        }
    }

    #[test]
    fn a_correct_append_passes() {
        let msg = append(3, 4, 2, vec![entry(5, 2), entry(6, 3)]);
        assert_eq!(check(&msg), Ok(()));
    }

    #[test]
    fn misnumbered_entries_are_refused() {
        for entries in [
            vec![entry(6, 3)],              // a gap after prev_index
            vec![entry(5, 3), entry(5, 3)], // a repeated index
            vec![entry(4, 3)],              // at prev_index itself
        ] {
            assert!(check(&append(3, 4, 2, entries)).is_err());
        }
    }

    #[test]
    fn entry_terms_that_decrease_or_pass_the_leaders_are_refused() {
        assert!(check(&append(3, 4, 2, vec![entry(5, 1)])).is_err());
        assert!(check(&append(3, 4, 2, vec![entry(5, 3), entry(6, 2)])).is_err());
        assert!(check(&append(3, 4, 2, vec![entry(5, 4)])).is_err());
        assert!(check(&append(3, 4, 4, vec![])).is_err());
    }

    #[test]
    fn numbers_near_u64_max_are_refused() {
        let mut msg = append(MAX_TERM_OR_INDEX + 1, 0, 0, vec![]);
        assert!(check(&msg).is_err());
        msg.term = MAX_TERM_OR_INDEX;
        assert_eq!(check(&msg), Ok(()));
        let at_the_edge = append(
            3,
            MAX_TERM_OR_INDEX,
            3,
            vec![entry(MAX_TERM_OR_INDEX + 1, 3)],
        );
        assert!(check(&at_the_edge).is_err());
        let chunk = Message {
            body: MessageBody::InstallSnapshot {
                meta: SnapshotMeta {
                    index: 9,
                    term: 3,
                    membership: Membership::with_voters([1, 2, 3]),
                },
                offset: u64::MAX - 2,
                data: vec![0; 4],
                done: false,
            },
            ..append(3, 0, 0, vec![])
        };
        assert!(check(&chunk).is_err());
    }

    #[test]
    fn memberships_without_voters_or_naming_node_zero_are_refused() {
        for membership in [
            Membership::default(),
            Membership::with_voters([0, 1]),
            Membership {
                learners: [0].into(),
                ..Membership::with_voters([1])
            },
        ] {
            let msg = append(
                3,
                4,
                2,
                vec![Entry {
                    term: 3,
                    index: 5,
                    payload: EntryPayload::Membership(membership.clone()),
                }],
            );
            assert!(check(&msg).is_err(), "{membership:?} in an entry");
            let chunk = Message {
                body: MessageBody::InstallSnapshot {
                    meta: SnapshotMeta {
                        index: 9,
                        term: 3,
                        membership,
                    },
                    offset: 0,
                    data: vec![],
                    done: true,
                },
                ..append(3, 0, 0, vec![])
            };
            assert!(check(&chunk).is_err());
        }
    }
}
