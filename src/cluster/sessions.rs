//! Client sessions for exactly-once writes: one session per write in
//! flight, so each session's sequence numbers reach the state machine in
//! order; a finished write returns its session with the next number.

use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;

use flotilla_engine::kv::WriteReply;

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

    /// Ends a write of session `client` with number `seq`. The session goes
    /// back to the pool with the next number whatever happened, as a retry
    /// of this write is never sent again; unless the state machine no
    /// longer knows it (evicted for `max_sessions`, or idle too long): every
    /// later number would be refused too, so the next write starts a new
    /// session.
    pub(crate) fn finish<E>(
        &self,
        client: u64,
        seq: u64,
        reply: Result<WriteReply, E>,
    ) -> Result<WriteReply, E> {
        if !matches!(reply, Ok(WriteReply::SessionExpired)) {
            if let Ok(mut idle) = self.idle.lock() {
                idle.push((client, seq + 1));
            }
        }
        reply
    }
}
