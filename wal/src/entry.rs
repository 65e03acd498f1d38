use serde::{Deserialize, Serialize};

use crate::{Index, Membership, NodeId, Term};

/// One entry of a group's Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: Index,
    /// What the entry carries.
    pub payload: EntryPayload,
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// Appended by a new leader to commit entries of earlier terms (Raft §5.4.2).
    Blank,
    /// An application command, opaque to Raft.
    // Bytes as one block, not element by element (the same postcard encoding).
    Normal(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A membership configuration; it takes effect as soon as it is appended.
    Membership(Membership),
}

impl Entry {
    /// Bytes this entry counts for in flow control and size limits: the payload
    /// plus a fixed header estimate.
    pub fn size_bytes(&self) -> u64 {
        const HEADER_BYTES: u64 = 16;
        HEADER_BYTES
            + match &self.payload {
                EntryPayload::Blank => 0,
                EntryPayload::Normal(data) => data.len() as u64,
                EntryPayload::Membership(m) => 8 * m.node_count() as u64,
            }
    }
}

/// The part of a node's Raft state that must be durable before it answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// Whom this node voted for in `term`, 0 for nobody.
    pub vote: NodeId,
    /// The highest index this node knows to be committed.
    pub commit: Index,
}
