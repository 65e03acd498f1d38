//! What a controller client sends, and what it gets back.

use std::collections::BTreeMap;

use flotilla_wal::{GroupId, NodeId};
use serde::{Deserialize, Serialize};

use crate::config::{ShardConfig, ShardId};

/// The version byte every encoded command and configuration starts with.
const VERSION: u8 = 1;

/// A change to the shard configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerOp {
    /// New groups, each with its nodes; the shards are divided again.
    Join(BTreeMap<GroupId, Vec<NodeId>>),
    /// Groups that go away; their shards are divided among the rest.
    Leave(Vec<GroupId>),
    /// One shard to one group. Pins nothing: a later Join or Leave divides
    /// the shards again.
    Move {
        /// The shard.
        shard: ShardId,
        /// Its new group.
        group: GroupId,
    },
}

/// An operation with the client's session: a retry with the same `seq` is
/// answered from the session, not applied again. Client 0 has no session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerCommand {
    /// The client's id (random, non-zero for exactly-once).
    pub client: u64,
    /// The client's operation number, from 1, one up per operation.
    pub seq: u64,
    /// The change.
    pub op: ControllerOp,
}

/// What applying a command answers: the number of the configuration it
/// made, or why it was refused (nothing changed).
pub type ControllerReply = Result<u64, ControllerError>;

/// Why the controller refused a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ControllerError {
    /// The bytes are no controller command of this version.
    #[error("not a controller command: {0}")]
    Malformed(String),
    /// A Join or Leave that names no group.
    #[error("the operation names no group")]
    NoGroups,
    /// Group 0 stands for "no group".
    #[error("group id 0 is reserved (it marks shards no group holds)")]
    ReservedGroup,
    /// A Join of a group already in the configuration.
    #[error("group {0} has already joined")]
    AlreadyJoined(GroupId),
    /// A group named that is not in the configuration.
    #[error("group {0} is not in the configuration")]
    UnknownGroup(GroupId),
    /// A Join whose node list is empty, names node 0 or a node twice.
    #[error("group {group}: {why}")]
    BadNodes {
        /// The group.
        group: GroupId,
        /// What is wrong with its nodes.
        why: String,
    },
    /// A Move of a shard the store does not have.
    #[error("shard {shard} does not exist (the store has {shards} shards)")]
    NoSuchShard {
        /// The shard named.
        shard: ShardId,
        /// How many the store has.
        shards: usize,
    },
    /// More groups than the controller keeps.
    #[error("a configuration holds at most {0} groups")]
    TooManyGroups(usize),
    /// An operation number older than the session's last: a duplicate
    /// from long ago, whose answer is gone.
    #[error("client {client}: operation {seq} is older than its last, {last}")]
    StaleSequence {
        /// The client.
        client: u64,
        /// The number sent.
        seq: u64,
        /// The session's last number.
        last: u64,
    },
}

/// Which configuration a query asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Query {
    /// The newest.
    Latest,
    /// Number `n`; a number past the newest gives the newest.
    Number(u64),
}

impl Query {
    /// The key to read from the controller's group for this query: a
    /// linearizable read of it through the group's driver answers the
    /// encoded configuration ([`ShardConfig::decode`]).
    pub fn key(self) -> Vec<u8> {
        match self {
            Query::Latest => LATEST_QUERY.to_vec(),
            Query::Number(n) => n.to_be_bytes().to_vec(),
        }
    }

    /// The query a read key stands for.
    pub(crate) fn from_key(key: &[u8]) -> Option<Query> {
        if key == LATEST_QUERY {
            return Some(Query::Latest);
        }
        Some(Query::Number(u64::from_be_bytes(key.try_into().ok()?)))
    }
}

const LATEST_QUERY: &[u8] = b"latest";

impl ControllerCommand {
    /// The command's bytes, as proposed to the controller's group.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes [`encode`](Self::encode)'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, ControllerError> {
        decode(bytes)
    }
}

impl ShardConfig {
    /// The configuration's bytes (as stored and as a query answers it).
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes [`encode`](Self::encode)'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, ControllerError> {
        decode(bytes)
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![VERSION];
    // Serializing these types to a Vec cannot fail: no maps with non-string
    // keys are refused by postcard, and there is no I/O.
    bytes.extend(postcard::to_allocvec(value).unwrap_or_default());
    bytes
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ControllerError> {
    match bytes.split_first() {
        Some((&VERSION, body)) => {
            postcard::from_bytes(body).map_err(|e| ControllerError::Malformed(e.to_string()))
        }
        Some((version, _)) => Err(ControllerError::Malformed(format!(
            "version {version}, this build reads {VERSION}"
        ))),
        None => Err(ControllerError::Malformed("empty".into())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn commands_and_queries_round_trip_and_bad_bytes_are_refused() {
        let command = ControllerCommand {
            client: 7,
            seq: 3,
            op: ControllerOp::Join(BTreeMap::from([(4, vec![1, 2, 3])])),
        };
        assert_eq!(
            ControllerCommand::decode(&command.encode()).unwrap(),
            command
        );
        assert!(matches!(
            ControllerCommand::decode(&[]),
            Err(ControllerError::Malformed(_))
        ));
        let mut other_version = command.encode();
        other_version[0] = 9;
        let error = ControllerCommand::decode(&other_version).unwrap_err();
        assert!(error.to_string().contains("version 9"), "{error}");
        let truncated = &command.encode()[..4];
        assert!(ControllerCommand::decode(truncated).is_err());
        for query in [Query::Latest, Query::Number(0), Query::Number(u64::MAX)] {
            assert_eq!(Query::from_key(&query.key()), Some(query));
        }
        assert_eq!(Query::from_key(b"bad"), None);
    }
}
