use flotilla_wal::{GroupId, Index, Membership, NodeId, Term};

use crate::raft::core::Role;
use crate::raft::progress::ReplicationState;

/// A snapshot of one core's state for `Db::status()` and tests.
#[derive(Clone, Debug)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// The group.
    pub group: GroupId,
    /// Current role.
    pub role: Role,
    /// Current term.
    pub term: Term,
    /// Known leader, 0 if none.
    pub leader: NodeId,
    /// Commit index.
    pub commit_index: Index,
    /// Last index handed out for applying.
    pub applied_index: Index,
    /// Last index durable locally.
    pub persisted_index: Index,
    /// First index held in the log.
    pub first_index: Index,
    /// Last index in the log.
    pub last_index: Index,
    /// Index of the latest snapshot.
    pub snapshot_index: Index,
    /// Entries held after the snapshot.
    pub log_entries: usize,
    /// The membership in force.
    pub membership: Membership,
    /// Bytes proposed in this term and not yet committed (leader only).
    pub uncommitted_bytes: u64,
    /// Per-follower replication state (leader only).
    pub peers: Vec<PeerStatus>,
}

/// What a leader knows about one follower.
#[derive(Clone, Debug)]
pub struct PeerStatus {
    /// The follower.
    pub id: NodeId,
    /// Highest index known replicated there.
    pub match_index: Index,
    /// Next index to send.
    pub next_index: Index,
    /// Probe, replicate or snapshot.
    pub state: ReplicationState,
    /// Unacknowledged append messages.
    pub inflight_msgs: usize,
    /// Unacknowledged append bytes.
    pub inflight_bytes: u64,
}
