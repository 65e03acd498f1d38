//! What a leader knows about one follower's log, and the flow-control window
//! that bounds what it may send it.

use std::collections::VecDeque;

use flotilla_wal::Index;

use crate::raft::message::SnapshotMeta;

/// How the leader is replicating to a follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationState {
    /// Finding where the follower's log matches: one append at a time.
    Probe,
    /// Streaming appends optimistically, within the in-flight window.
    Replicate,
    /// Sending a snapshot chunk by chunk.
    Snapshot {
        /// Index of the snapshot being sent.
        index: Index,
        /// Bytes the follower has staged so far.
        acked_offset: u64,
        /// A chunk is on its way (or being read) and not yet answered.
        chunk_outstanding: bool,
        /// Ticks since the follower last answered the transfer.
        idle_ticks: u64,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Progress {
    pub(crate) match_index: Index,
    pub(crate) next_index: Index,
    pub(crate) state: ReplicationState,
    /// In probe state, an append is outstanding; cleared by any answer or heartbeat answer.
    pub(crate) probe_sent: bool,
    pub(crate) inflight: Inflights,
    /// Heard from since the last CheckQuorum round.
    pub(crate) recent_active: bool,
    /// Highest heartbeat round acknowledged.
    pub(crate) acked_round: u64,
    /// The snapshot being sent while in snapshot state.
    pub(crate) sending_snapshot: Option<SnapshotMeta>,
}

impl Progress {
    pub(crate) fn new(next_index: Index) -> Self {
        Progress {
            match_index: 0,
            next_index,
            state: ReplicationState::Probe,
            probe_sent: false,
            inflight: Inflights::default(),
            recent_active: false,
            acked_round: 0,
            sending_snapshot: None,
        }
    }

    pub(crate) fn become_probe(&mut self) {
        self.state = ReplicationState::Probe;
        self.sending_snapshot = None;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub(crate) fn become_replicate(&mut self) {
        self.state = ReplicationState::Replicate;
        self.sending_snapshot = None;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub(crate) fn become_snapshot(&mut self, meta: SnapshotMeta) {
        self.state = ReplicationState::Snapshot {
            index: meta.index,
            acked_offset: 0,
            chunk_outstanding: false,
            idle_ticks: 0,
        };
        self.sending_snapshot = Some(meta);
        self.inflight.clear();
    }

    /// Records an acknowledged match; false if it tells nothing new.
    pub(crate) fn update_match(&mut self, index: Index) -> bool {
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index + 1);
        self.inflight.free_up_to(index);
        advanced
    }

    /// True if no append may be sent now.
    pub(crate) fn is_paused(&self, max_msgs: usize, max_bytes: u64) -> bool {
        match self.state {
            ReplicationState::Probe => self.probe_sent,
            ReplicationState::Replicate => self.inflight.is_full(max_msgs, max_bytes),
            ReplicationState::Snapshot { .. } => true,
        }
    }
}

/// Appends sent but not acknowledged: (last index of the message, bytes).
#[derive(Clone, Debug, Default)]
pub(crate) struct Inflights {
    sent: VecDeque<(Index, u64)>,
    bytes: u64,
}

impl Inflights {
    pub(crate) fn add(&mut self, last_index: Index, bytes: u64) {
        self.sent.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    pub(crate) fn free_up_to(&mut self, index: Index) {
        while let Some(&(last, bytes)) = self.sent.front() {
            if last > index {
                break;
            }
            self.bytes -= bytes;
            self.sent.pop_front();
        }
    }

    pub(crate) fn free_first(&mut self) {
        if let Some((_, bytes)) = self.sent.pop_front() {
            self.bytes -= bytes;
        }
    }

    pub(crate) fn is_full(&self, max_msgs: usize, max_bytes: u64) -> bool {
        self.sent.len() >= max_msgs || self.bytes >= max_bytes
    }

    pub(crate) fn clear(&mut self) {
        self.sent.clear();
        self.bytes = 0;
    }

    pub(crate) fn count(&self) -> usize {
        self.sent.len()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}
