//! The one error type of the `flotilla` crate.

use std::time::Duration;

use flotilla_engine::node::NodeError;
use thiserror::Error;

/// Everything that can go wrong in flotilla. Retryable errors
/// ([`is_retryable`](Error::is_retryable)) may succeed if the same request is
/// sent again; the others will not.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The node asked does not lead the group. Retryable.
    #[error("not the leader{}; retry against the leader", leader_hint(*leader))]
    NotLeader {
        /// The node it last heard was leader.
        leader: Option<u64>,
    },
    /// No answer within the request timeout. Retryable; a write that timed
    /// out may still be applied, once (the handle resent it with the same
    /// session number while it waited). Sending it again is a new write: for
    /// an append or a compare-and-swap, read first whether it took effect.
    #[error("no answer within {0:?}; the request may still complete, retry to find out")]
    Timeout(Duration),
    /// Too much work queued. Retryable after a short back-off.
    #[error("overloaded: {0}; retry after a short back-off")]
    Overloaded(String),
    /// The group cannot serve right now (electing a leader, transferring
    /// leadership). Retryable.
    #[error("temporarily unavailable: {0}; retry shortly")]
    Unavailable(String),
    /// Storage failed or holds corrupt data. Fatal: the store refuses writes
    /// until the process restarts; check the disk and the message.
    #[error("storage failure: {0}")]
    Storage(String),
    /// The configuration is invalid. Fatal; fix it and open again.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An argument is out of bounds (key or value too large, bad range).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The cluster no longer knows the client session of a write (evicted
    /// past `max_sessions`, or idle too long), so whether an earlier attempt
    /// of it was applied is unknown. Fatal for that write; the handle's next
    /// write starts a new session.
    #[error("client session expired; whether the write was applied is unknown")]
    SessionExpired,
    /// The `Db` was closed.
    #[error("the database is closed")]
    Closed,
    /// A MapReduce job was cancelled; it left no output.
    #[error("the job was cancelled; it left no output")]
    Cancelled,
}

fn leader_hint(leader: Option<u64>) -> String {
    leader.map_or_else(String::new, |id| format!(" (leader: node {id})"))
}

impl Error {
    /// True if sending the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::Timeout(_)
                | Error::Overloaded(_)
                | Error::Unavailable(_)
        )
    }
}

impl From<NodeError> for Error {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::NotLeader { leader } => Error::NotLeader { leader },
            NodeError::Overloaded(why) => Error::Overloaded(why),
            NodeError::Unavailable(why) => Error::Unavailable(why),
            NodeError::Storage(why) => Error::Storage(why),
            NodeError::Closed => Error::Closed,
            NodeError::Invalid(why) => Error::InvalidArgument(why),
            other => Error::Storage(other.to_string()),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
