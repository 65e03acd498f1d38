//! The inbox of a group loop: what its callers ask, answered on tokio
//! oneshots.

use tokio::sync::oneshot;

use crate::group::{GroupStatus, NodeError, ReadConsistency, Replier};
use crate::kv::{CommandError, WriteReply};

/// Where an answer goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

impl Replier<Option<Vec<u8>>> for Reply<Option<Vec<u8>>> {
    fn send(self, result: Result<Option<Vec<u8>>, NodeError>) {
        let _ = oneshot::Sender::send(self, result);
    }
}

/// A write's answer: the machine's reply, or why there is none. A command
/// the machine refused (it does not decode) is an invalid request.
impl Replier<Result<WriteReply, CommandError>> for Reply<WriteReply> {
    fn send(self, result: Result<Result<WriteReply, CommandError>, NodeError>) {
        let flat = result.and_then(|reply| reply.map_err(|e| NodeError::Invalid(e.to_string())));
        let _ = oneshot::Sender::send(self, flat);
    }
}

/// The inbox of a group loop: what its callers ask. Peers' messages come
/// on a queue of their own, so a full inbox never drops Raft traffic.
pub(crate) enum Event {
    /// Propose an encoded [`crate::kv::Command`].
    Write {
        command: Vec<u8>,
        reply: Reply<WriteReply>,
    },
    /// Wait until a read at `consistency` is safe, then read `key` (an inner
    /// key), or just answer `None` when `key` is `None` (a barrier for scans).
    Read {
        consistency: ReadConsistency,
        key: Option<Vec<u8>>,
        reply: Reply<Option<Vec<u8>>>,
    },
    /// The core's state.
    Status(oneshot::Sender<GroupStatus>),
}
