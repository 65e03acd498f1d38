//! The inbox of a group loop: what its callers ask, answered on tokio
//! oneshots.

use tokio::sync::oneshot;

use crate::group::{GroupStatus, NodeError, ReadConsistency, Replier};
use crate::kv::{CommandError, WriteReply};

/// Where an answer goes.
pub type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

/// An answer passed on as the machine gave it (reads; the controller's
/// replies).
impl<T> Replier<T> for Reply<T> {
    fn send(self, result: Result<T, NodeError>) {
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
/// `A` is what a write answers its caller: [`WriteReply`] for a data
/// group.
pub(crate) enum Event<A = WriteReply> {
    /// Propose an encoded command of the group's machine.
    Write { command: Vec<u8>, reply: Reply<A> },
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
