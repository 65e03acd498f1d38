//! Client sessions for exactly-once writes: one session per write in
//! flight, so each session's sequence numbers reach the state machine in
//! order; a finished write returns its session with the next number.

use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;

/// Idle sessions: (client id, next sequence number).
#[derive(Default)]
pub(crate) struct SessionPool {
    idle: Mutex<Vec<(u64, u64)>>,
}

impl SessionPool {
    /// An idle session, or a new one with a random id (never 0, which means
    /// "no session") starting at sequence number 1.
    pub(crate) fn take(&self) -> (u64, u64) {
        if let Some(session) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return session;
        }
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        (hasher.finish().max(1), 1)
    }

    /// Returns a session after its write finished, whatever the outcome: a
    /// retry of that write is never sent again, so the next number is free.
    pub(crate) fn give_back(&self, client: u64, next_seq: u64) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push((client, next_seq));
        }
    }
}
