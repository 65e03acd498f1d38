//! Client sessions: the last sequence number and reply of every client, so a
//! retried write is answered from here instead of being applied twice.
//!
//! Bounded two ways, both decided by applied commands alone so every replica
//! evicts the same sessions at the same index: a session idle for longer than
//! `idle_expiry_ms` (on the leaders' clock stamped into commands) expires, and
//! beyond `max_sessions` the least recently used go first. Both are enforced
//! at every command, never once per batch: replicas cut the same log into
//! different batches, and a session kept to the end of one replica's batch
//! but evicted mid-batch on another would answer the same retry differently.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::kv::command::WriteReply;

/// Limits on client sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Most sessions kept. Default 10,000.
    pub max_sessions: usize,
    /// A session unused this long expires. Default one hour.
    pub idle_expiry_ms: u64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_sessions: 10_000,
            idle_expiry_ms: 3_600_000,
        }
    }
}

/// One client's session as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Last applied sequence number.
    pub seq: u64,
    /// Clock of the last command applied for the client.
    pub last_used_ms: u64,
    /// The reply to `seq`, for a retry.
    pub reply: WriteReply,
}

/// What happened to a session in a batch, for writing back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionChange {
    /// Store this session.
    Upsert(u64, Session),
    /// Remove it.
    Remove(u64),
}

/// The sessions of one group, in memory (they are also stored with the data).
#[derive(Debug, Default)]
pub struct Sessions {
    limits: SessionLimits,
    by_client: BTreeMap<u64, Session>,
    by_age: BTreeSet<(u64, u64)>,
    /// Recorded since the last `take_changes`.
    dirty: BTreeSet<u64>,
    /// Expired or evicted since the last `take_changes`.
    removed: BTreeSet<u64>,
}

impl Sessions {
    /// An empty table.
    pub fn new(limits: SessionLimits) -> Self {
        Sessions {
            limits,
            ..Sessions::default()
        }
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// The newest clock any session saw (the state machine's clock after a restart).
    pub fn latest_ms(&self) -> u64 {
        self.by_age.last().map_or(0, |(at, _)| *at)
    }

    /// The session of `client`.
    pub fn get(&self, client: u64) -> Option<&Session> {
        self.by_client.get(&client)
    }

    /// Loads a stored session (at start-up or after a snapshot install).
    pub fn load(&mut self, client: u64, session: Session) {
        self.remove(client);
        self.by_age.insert((session.last_used_ms, client));
        self.by_client.insert(client, session);
    }

    /// Forgets every session (before loading an installed snapshot's).
    pub fn clear(&mut self) {
        self.by_client.clear();
        self.by_age.clear();
        self.dirty.clear();
        self.removed.clear();
    }

    /// Records the reply to `client`'s write `seq`.
    pub fn record(&mut self, client: u64, seq: u64, now_ms: u64, reply: WriteReply) {
        self.load(
            client,
            Session {
                seq,
                last_used_ms: now_ms,
                reply,
            },
        );
        self.removed.remove(&client);
        self.dirty.insert(client);
    }

    fn remove(&mut self, client: u64) -> bool {
        match self.by_client.remove(&client) {
            Some(old) => {
                self.by_age.remove(&(old.last_used_ms, client));
                true
            }
            None => false,
        }
    }

    /// Expires sessions idle at `now_ms` and evicts the oldest beyond the
    /// limit. The machine calls it around every command.
    pub fn enforce(&mut self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(self.limits.idle_expiry_ms);
        while let Some(&(at, client)) = self.by_age.first() {
            let over_limit = self.by_client.len() > self.limits.max_sessions;
            if at >= cutoff && !over_limit {
                break;
            }
            self.remove(client);
            self.dirty.remove(&client);
            self.removed.insert(client);
        }
    }

    /// Every change since the last call, to write with the batch's data.
    pub fn take_changes(&mut self) -> Vec<SessionChange> {
        let mut changes = Vec::new();
        for client in std::mem::take(&mut self.dirty) {
            if let Some(session) = self.by_client.get(&client) {
                changes.push(SessionChange::Upsert(client, session.clone()));
            }
        }
        let removed = std::mem::take(&mut self.removed);
        changes.extend(removed.into_iter().map(SessionChange::Remove));
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_sessions_expire_and_the_oldest_go_beyond_the_limit() {
        let mut sessions = Sessions::new(SessionLimits {
            max_sessions: 2,
            idle_expiry_ms: 100,
        });
        sessions.record(1, 1, 10, WriteReply::Done);
        sessions.record(2, 1, 20, WriteReply::Done);
        sessions.record(3, 1, 30, WriteReply::Done);
        sessions.enforce(30);
        let changes = sessions.take_changes();
        assert!(changes.contains(&SessionChange::Remove(1)), "{changes:?}");
        assert!(!changes.contains(&SessionChange::Upsert(1, sessions_session(10))));
        assert_eq!(sessions.len(), 2);
        // Client 2 stays in use; client 3 goes idle past the expiry.
        sessions.record(2, 2, 125, WriteReply::Done);
        sessions.enforce(135);
        let changes = sessions.take_changes();
        assert_eq!(
            changes,
            vec![
                SessionChange::Upsert(
                    2,
                    Session {
                        seq: 2,
                        last_used_ms: 125,
                        reply: WriteReply::Done
                    }
                ),
                SessionChange::Remove(3)
            ]
        );
        assert_eq!(sessions.get(2).map(|s| s.seq), Some(2));
        assert_eq!(sessions.latest_ms(), 125);
    }

    fn sessions_session(at: u64) -> Session {
        Session {
            seq: 1,
            last_used_ms: at,
            reply: WriteReply::Done,
        }
    }
}
