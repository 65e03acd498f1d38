//! What callers ask of a group and what they get back, whoever drives it
//! (the node runtime or the simulator).

use flotilla_wal::NodeId;
use thiserror::Error;

use crate::raft::status::Status;

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Sees every write acknowledged before the read started (ReadIndex: the
    /// leader confirms it still leads with a heartbeat round). The default.
    #[default]
    Linearizable,
    /// Like `Linearizable` without the heartbeat round, while the leader's
    /// lease holds. Safe as long as clocks drift less than the lease margin.
    Lease,
    /// Whatever this replica has applied: fastest, may miss recent writes.
    Stale,
}

/// Why a group could not serve a request.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeError {
    /// This node does not lead the group; `leader` is the one it last heard of.
    #[error("not the leader{}; retry against the leader", leader_hint(*leader))]
    NotLeader {
        /// The last known leader.
        leader: Option<NodeId>,
    },
    /// Too much work queued; retry after a short back-off.
    #[error("overloaded: {0}; retry after a short back-off")]
    Overloaded(String),
    /// The group cannot answer right now (no leader yet, leadership transfer,
    /// lease lapsed); retry shortly.
    #[error("unavailable: {0}; retry shortly")]
    Unavailable(String),
    /// Storage failed; the node refuses writes until restarted.
    #[error("storage failed: {0}")]
    Storage(String),
    /// The node is shutting down.
    #[error("the node is shut down")]
    Closed,
    /// The request is malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
}

fn leader_hint(leader: Option<NodeId>) -> String {
    leader.map_or_else(String::new, |id| format!(" (leader: node {id})"))
}

impl NodeError {
    /// True if the same request may succeed when retried.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            NodeError::NotLeader { .. } | NodeError::Overloaded(_) | NodeError::Unavailable(_)
        )
    }
}

/// A group's state as `Db::status()` shows it.
#[derive(Clone, Debug)]
pub struct GroupStatus {
    /// The Raft core's view.
    pub raft: Status,
    /// Index the state machine has written.
    pub applied_index: u64,
    /// Bytes of the log held in storage.
    pub log_bytes: u64,
    /// Client sessions held.
    pub sessions: usize,
    /// Write requests waiting for their entries to apply.
    pub inflight_writes: usize,
}

/// Where a [`GroupDriver`](crate::group::GroupDriver) sends an answer: a
/// tokio oneshot on a node, a recorded reply in the simulator. Each
/// request is answered exactly once.
pub trait Replier<T> {
    /// Delivers the answer (the caller may have gone; that is not an error).
    fn send(self, result: Result<T, NodeError>);
}
