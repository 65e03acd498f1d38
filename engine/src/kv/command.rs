//! What clients ask of the key/value state machine, and what it answers. The
//! encoding (one version byte, then postcard) lives here and nowhere else.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Version byte in front of every encoded command.
pub const COMMAND_VERSION: u8 = 1;

/// A write, applied through the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Set `key` to `value`.
    Put {
        /// Key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Append `value` to `key`'s value (an absent key counts as empty).
    Append {
        /// Key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Bytes to append.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// Key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Set `key` to `new` (or remove it if `None`) only if its value is
    /// `expected` (`None`: the key must be absent).
    CompareAndSwap {
        /// Key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value the key must have.
        #[serde(with = "serde_bytes")]
        expected: Option<Vec<u8>>,
        /// The value to set; `None` removes the key.
        #[serde(with = "serde_bytes")]
        new: Option<Vec<u8>>,
    },
    /// Puts and deletes applied together, atomically: one log entry, one
    /// reply. Later operations on a key win over earlier ones.
    Batch {
        /// The operations, in order.
        ops: Vec<BatchOp>,
    },
    /// Opens the command's client session at sequence number 0 if the
    /// state machine does not hold it; an open session is left as it is.
    /// A client opens its session before its first write (number 1), so a
    /// write whose session is unknown is refused with `SessionExpired`
    /// rather than taken for a new client's first write: it may be the
    /// retry of a write applied before the session was evicted.
    OpenSession,
}

/// One operation of a [`WriteOp::Batch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchOp {
    /// Set `key` to `value`.
    Put {
        /// Key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// Key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

impl BatchOp {
    /// The key the operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key } => key,
        }
    }
}

impl WriteOp {
    /// Every key the operation touches.
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            WriteOp::Put { key, .. }
            | WriteOp::Append { key, .. }
            | WriteOp::Delete { key }
            | WriteOp::CompareAndSwap { key, .. } => vec![key],
            WriteOp::Batch { ops } => ops.iter().map(BatchOp::key).collect(),
            WriteOp::OpenSession => Vec::new(),
        }
    }
}

/// One client write as it travels in a log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The client's session id; 0 means no session (no deduplication: the
    /// embedded single-node store, which never retries a write).
    pub client: u64,
    /// The client's sequence number, from 1, one more for each new write. A
    /// retried write carries the same number and is applied once.
    pub seq: u64,
    /// The proposing leader's wall clock in milliseconds. The state machine's
    /// only notion of time (session expiry), the same on every replica.
    pub now_ms: u64,
    /// What to do.
    pub op: WriteOp,
}

/// The state machine's answer to a write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteReply {
    /// Put or Append done.
    Done,
    /// Delete done; whether the key existed.
    Deleted {
        /// True if a value was removed.
        existed: bool,
    },
    /// CompareAndSwap done.
    Swapped {
        /// True if the value matched and was replaced.
        swapped: bool,
        /// The key's value after the operation.
        #[serde(with = "serde_bytes")]
        current: Option<Vec<u8>>,
    },
    /// The client's session expired (idle too long, or evicted to keep the
    /// number of sessions bounded), so whether an earlier attempt of this
    /// write was applied is unknown. The write was not applied now; the
    /// client must start a new session.
    SessionExpired,
    /// A sequence number older than the session's last: the reply to it is
    /// gone. Happens only to a client that reuses sequence numbers.
    StaleSequence {
        /// The session's last applied sequence number.
        last: u64,
    },
    /// An append would have grown the value past [`MAX_VALUE_BYTES`]; it
    /// was not applied.
    TooLarge {
        /// The size the value would have had.
        bytes: u64,
    },
}

/// Largest value the state machine stores. Clients check puts against
/// their own (lower or equal) limit; an append is checked here, where the
/// value it grows is known. A larger value could not travel to a remote
/// reader in one 4 MiB frame.
pub const MAX_VALUE_BYTES: usize = 2 << 20;

/// A command that does not decode.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandError {
    /// Written by another version of the state machine.
    #[error("command has version {found}, this node applies version {COMMAND_VERSION}")]
    Version {
        /// The version byte found.
        found: u8,
    },
    /// The bytes are not a command.
    #[error("malformed command: {0}")]
    Malformed(String),
}

/// Encodes a value (command, reply or session) with the version byte in front.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding plain enums and byte vectors into a Vec cannot fail.
    postcard::to_extend(value, vec![COMMAND_VERSION]).unwrap_or_else(|_| vec![COMMAND_VERSION])
}

/// Decodes what [`encode`] wrote.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, CommandError> {
    match bytes.split_first() {
        None => Err(CommandError::Malformed("empty".into())),
        Some((&COMMAND_VERSION, body)) => {
            postcard::from_bytes(body).map_err(|e| CommandError::Malformed(e.to_string()))
        }
        Some((&found, _)) => Err(CommandError::Version { found }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_bad_bytes_are_refused() {
        let command = Command {
            client: 7,
            seq: 3,
            now_ms: 1_000,
            op: WriteOp::CompareAndSwap {
                key: b"k".to_vec(),
                expected: None,
                new: Some(b"v".to_vec()),
            },
        };
        let bytes = encode(&command);
        assert_eq!(decode::<Command>(&bytes), Ok(command));
        assert_eq!(
            decode::<Command>(&[]),
            Err(CommandError::Malformed("empty".into()))
        );
        let mut other_version = bytes.clone();
        other_version[0] = 9;
        assert_eq!(
            decode::<Command>(&other_version),
            Err(CommandError::Version { found: 9 })
        );
        assert!(matches!(
            decode::<Command>(&bytes[..bytes.len() - 1]),
            Err(CommandError::Malformed(_))
        ));
    }
}
