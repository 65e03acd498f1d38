//! Client sessions for exactly-once writes: one session per write in
//! flight, so each session's sequence numbers reach the state machine in
//! order; a finished write returns its session with the next number.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;

use flotilla_engine::kv::{self, WriteOp, WriteReply};

use crate::error::{Error, Result};

/// Idle sessions: (client id, next sequence number).
#[derive(Default)]
pub(crate) struct SessionPool {
    idle: Mutex<Vec<(u64, u64)>>,
}

impl SessionPool {
    /// An idle session, or a new one with a random id (never 0, which means
    /// "no session") at sequence number 0: not opened yet. The caller opens
    /// it with `WriteOp::OpenSession` before its first write, number 1.
    pub(crate) fn take(&self) -> (u64, u64) {
        if let Some(session) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return session;
        }
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        (hasher.finish().max(1), 0)
    }

    /// Runs one write in a session of the pool: a new session is opened
    /// first (`send` with number 0 and `OpenSession`; opening is idempotent,
    /// so it is retried freely, and if it fails the new session is dropped
    /// unused), then `op` goes out with the session's next number. `send`
    /// carries one write to the cluster, retrying as its transport does.
    pub(crate) async fn write<F, Fut>(&self, op: WriteOp, send: F) -> Result<WriteReply>
    where
        F: Fn(u64, u64, WriteOp) -> Fut,
        Fut: Future<Output = Result<WriteReply>>,
    {
        let (client, mut seq) = self.take();
        if seq == 0 {
            send(client, 0, WriteOp::OpenSession).await?;
            seq = 1;
        }
        let reply = send(client, seq, op).await;
        self.finish(client, seq, reply)
    }

    /// Ends a write of session `client` with number `seq`. The session goes
    /// back to the pool with the next number whatever happened, as a retry
    /// of this write is never sent again; unless the state machine no
    /// longer knows it (evicted for `max_sessions`, or idle too long): every
    /// later number would be refused too, so the next write starts a new
    /// session.
    fn finish(&self, client: u64, seq: u64, reply: Result<WriteReply>) -> Result<WriteReply> {
        if !matches!(reply, Ok(WriteReply::SessionExpired)) {
            if let Ok(mut idle) = self.idle.lock() {
                idle.push((client, seq + 1));
            }
        }
        reply
    }
}

/// A write's reply as the caller sees it: the refusals become errors.
pub(crate) fn write_outcome(reply: WriteReply) -> Result<WriteReply> {
    match reply {
        WriteReply::SessionExpired => Err(Error::SessionExpired),
        WriteReply::TooLarge { bytes } => Err(Error::InvalidArgument(format!(
            "the value would grow to {bytes} bytes, over the {}-byte limit of a stored value",
            kv::MAX_VALUE_BYTES
        ))),
        WriteReply::StaleSequence { last } => Err(Error::InvalidArgument(format!(
            "write sequence number is older than the session's last ({last})"
        ))),
        other => Ok(other),
    }
}
