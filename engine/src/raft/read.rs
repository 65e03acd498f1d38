//! Linearizable reads without log writes: ReadIndex (confirm leadership with a
//! heartbeat round, batched across all reads waiting for it) and lease reads.
//!
//! Lease reads assume bounded clock drift: a lease that started when a heartbeat
//! round was *sent* lasts `lease_ticks`, shorter than the election timeout, and a
//! follower that heard from the leader ignores vote requests for an election
//! timeout (CheckQuorum). If one node's ticks ran faster than another's by more
//! than `election_timeout_ticks / lease_ticks`, a lease read could be stale.

use std::collections::VecDeque;

use flotilla_wal::Index;

use crate::raft::core::{RaftCore, Role};
use crate::raft::error::ProposeError;
use crate::raft::ready::ReadState;

/// Heartbeat rounds remembered for lease computation; older ones cannot extend a lease.
const MAX_REMEMBERED_ROUNDS: usize = 64;

#[derive(Default)]
pub(crate) struct LeaderReads {
    /// Number of the last heartbeat round sent.
    round: u64,
    /// (round, tick it was sent at), for the lease.
    sent_at: VecDeque<(u64, u64)>,
    /// Reads waiting for a quorum to acknowledge `round`.
    pending: VecDeque<PendingRead>,
    /// Reads taken before this term committed an entry; they get an index later.
    awaiting_commit: Vec<u64>,
    /// A read is waiting for the next round: send it at the next `take_ready`.
    pub(crate) round_wanted: bool,
}

struct PendingRead {
    ctx: u64,
    index: Index,
    round: u64,
}

impl LeaderReads {
    pub(crate) fn current_round(&self) -> u64 {
        self.round
    }

    pub(crate) fn start_round(&mut self, tick: u64) -> u64 {
        self.round += 1;
        self.round_wanted = false;
        self.sent_at.push_back((self.round, tick));
        if self.sent_at.len() > MAX_REMEMBERED_ROUNDS {
            self.sent_at.pop_front();
        }
        self.round
    }
}

impl RaftCore {
    /// Starts a ReadIndex read. When leadership is confirmed, a [`ReadState`]
    /// with `ctx` and the index to wait for appears in a later `Ready`.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if !self.committed_in_current_term() {
            self.reads.awaiting_commit.push(ctx);
            return Ok(());
        }
        self.queue_read(ctx);
        Ok(())
    }

    /// A lease read: answers at once while the leader holds a lease, without
    /// any message. Falls back to nothing: on `LeaseExpired` use `read_index`.
    pub fn read_lease(&mut self, ctx: u64) -> Result<ReadState, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if !self.committed_in_current_term() {
            return Err(ProposeError::LeaderNotReady);
        }
        if self.transfer.is_some() || !self.lease_valid() {
            return Err(ProposeError::LeaseExpired);
        }
        Ok(ReadState {
            ctx,
            index: self.log.committed,
        })
    }

    /// True while a quorum acknowledged a heartbeat round sent less than `lease_ticks` ago.
    pub fn lease_valid(&self) -> bool {
        if self.role != Role::Leader {
            return false;
        }
        let progress = &self.progress;
        let acked = self
            .membership()
            .committed_index(|id| progress.get(&id).map_or(0, |p| p.acked_round));
        self.reads
            .sent_at
            .iter()
            .find(|(round, _)| *round == acked)
            .is_some_and(|(_, sent)| self.ticks < sent + self.cfg.lease_ticks)
    }

    fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed) == Some(self.term)
    }

    fn queue_read(&mut self, ctx: u64) {
        let index = self.log.committed;
        let round = self.reads.round + 1;
        self.reads
            .pending
            .push_back(PendingRead { ctx, index, round });
        self.reads.round_wanted = true;
    }

    /// Called when commit advances: reads that waited for this term's first commit can proceed.
    pub(crate) fn release_reads_awaiting_commit(&mut self) {
        if self.reads.awaiting_commit.is_empty() || !self.committed_in_current_term() {
            return;
        }
        for ctx in std::mem::take(&mut self.reads.awaiting_commit) {
            self.queue_read(ctx);
        }
    }

    /// Answers every pending read whose round a quorum has acknowledged.
    pub(crate) fn release_confirmed_reads(&mut self) {
        let progress = &self.progress;
        let acked = self
            .membership()
            .committed_index(|id| progress.get(&id).map_or(0, |p| p.acked_round));
        while self.reads.pending.front().is_some_and(|r| r.round <= acked) {
            let Some(read) = self.reads.pending.pop_front() else {
                break;
            };
            self.read_states.push(ReadState {
                ctx: read.ctx,
                index: read.index,
            });
        }
    }
}
