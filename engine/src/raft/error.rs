use flotilla_wal::{Index, NodeId};
use thiserror::Error;

/// A Raft core configuration that cannot work.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid raft configuration: {0}")]
pub struct ConfigError(pub String);

/// Why a proposal, read or administrative request was refused.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum ProposeError {
    /// This node is not the leader; retry on `leader_hint` (0 when unknown).
    #[error("not the leader (leader hint: node {leader_hint}); retry against the leader")]
    NotLeader {
        /// The leader this node last heard from, 0 if none.
        leader_hint: NodeId,
    },
    /// Too many uncommitted bytes at the leader; retry after a short back-off.
    #[error(
        "leader overloaded: {uncommitted_bytes} uncommitted bytes, limit {limit}; retry later"
    )]
    Overloaded {
        /// Bytes currently uncommitted.
        uncommitted_bytes: u64,
        /// The configured `max_uncommitted_bytes`.
        limit: u64,
    },
    /// A leadership transfer is under way; retry once it ends.
    #[error("leadership transfer to node {0} in progress; retry shortly")]
    TransferInProgress(NodeId),
    /// Another membership change has not committed yet; retry once it has.
    #[error("a membership change is still pending; retry once it commits")]
    MembershipChangePending,
    /// The learner is too far behind to be promoted; retry once it catches up.
    #[error("learner {node} is {behind} entries behind; retry once it catches up")]
    LearnerBehind {
        /// The learner.
        node: NodeId,
        /// How many entries it lacks.
        behind: u64,
    },
    /// The leader has not yet committed an entry of its term, so it cannot serve reads.
    #[error("leader has not committed in its term yet; retry shortly")]
    LeaderNotReady,
    /// The lease has lapsed; use a ReadIndex read or retry.
    #[error("leader lease expired; retry or use a linearizable read")]
    LeaseExpired,
    /// The request makes no sense for this group (unknown node, empty voter set...).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl ProposeError {
    /// True if retrying (possibly elsewhere) can succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ProposeError::Invalid(_))
    }
}

/// Why a compaction request was refused.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompactError {
    /// The index has not been applied (or persisted) yet.
    #[error("cannot compact to {index}: only {applied} is applied and persisted")]
    NotApplied {
        /// The requested index.
        index: Index,
        /// The highest index safe to compact to.
        applied: Index,
    },
}
