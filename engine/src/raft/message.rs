pub use flotilla_wal::SnapshotMeta;
use flotilla_wal::{Entry, GroupId, Index, NodeId, Term};
use serde::{Deserialize, Serialize};

/// A message between two cores of one group. The runtime delivers it to the
/// core of `group` on node `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The Raft group.
    pub group: GroupId,
    /// Sender.
    pub from: NodeId,
    /// Recipient.
    pub to: NodeId,
    /// The sender's term (for pre-votes: the term it would campaign in).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The kinds of Raft messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Would you vote for me in `term`? Changes no state at the receiver.
    PreVote {
        /// Index of the candidate's last entry.
        last_index: Index,
        /// Term of the candidate's last entry.
        last_term: Term,
    },
    /// Answer to a pre-vote.
    PreVoteResponse {
        /// Whether the vote would be granted.
        granted: bool,
    },
    /// Vote for me in `term`.
    RequestVote {
        /// Index of the candidate's last entry.
        last_index: Index,
        /// Term of the candidate's last entry.
        last_term: Term,
        /// Set when the election follows a leadership transfer, so receivers
        /// do not ignore it for having heard from the leader recently.
        transfer: bool,
    },
    /// Answer to a vote request.
    RequestVoteResponse {
        /// Whether the vote was granted.
        granted: bool,
    },
    /// Append `entries` after (`prev_index`, `prev_term`).
    Append {
        /// Index just before the first entry.
        prev_index: Index,
        /// Term at `prev_index`.
        prev_term: Term,
        /// Entries to append, possibly none.
        entries: Vec<Entry>,
        /// The leader's commit index.
        commit: Index,
    },
    /// Answer to an append.
    AppendResponse(AppendResponse),
    /// Leader heartbeat; `round` numbers heartbeat rounds for ReadIndex and leases.
    Heartbeat {
        /// Commit index, capped at what the follower is known to have.
        commit: Index,
        /// The heartbeat round.
        round: u64,
    },
    /// Answer to a heartbeat, echoing its round.
    HeartbeatResponse {
        /// The round answered.
        round: u64,
    },
    /// One chunk of a snapshot.
    InstallSnapshot {
        /// Which snapshot.
        meta: SnapshotMeta,
        /// Byte offset of `data` in the snapshot stream.
        offset: u64,
        /// The chunk.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        /// Whether this is the last chunk.
        done: bool,
    },
    /// Progress of a snapshot transfer.
    InstallSnapshotResponse {
        /// Index of the snapshot this answers.
        snapshot_index: Index,
        /// The next byte offset the receiver wants.
        next_offset: u64,
        /// True once the snapshot is installed (or made moot by the receiver's commit).
        done: bool,
    },
    /// Start an election now (leadership transfer).
    TimeoutNow,
}

/// A follower's answer to an append.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendResponse {
    /// The follower's log matches the leader's through `match_index`.
    Success {
        /// Last index known to match.
        match_index: Index,
    },
    /// `prev_index` did not match; the hint lets the leader skip a whole term at a time.
    Reject {
        /// The `prev_index` of the rejected append.
        rejected_index: Index,
        /// Term of the follower's entry at `rejected_index`, 0 if it has none.
        conflict_term: Term,
        /// First index of `conflict_term` in the follower's log, or its last index + 1.
        conflict_index: Index,
    },
}

impl Message {
    /// True for messages answered only once the sender's state is durable.
    pub fn is_response(&self) -> bool {
        matches!(
            self.body,
            MessageBody::RequestVoteResponse { .. }
                | MessageBody::AppendResponse(_)
                | MessageBody::HeartbeatResponse { .. }
                | MessageBody::InstallSnapshotResponse { .. }
        )
    }
}
