//! A simulated disk with the durability of a real one: a persist request is
//! durable only after its sync completes, and a crash loses everything unsynced.

use std::collections::VecDeque;

use flotilla_wal::{Entry, HardState};

use crate::raft::core::RestoreState;
use crate::raft::message::SnapshotMeta;
use crate::raft::ready::PersistRequest;

/// One node's durable state plus its writes still waiting for a sync.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    /// Durable hard state.
    pub hard_state: HardState,
    /// Durable snapshot: metadata and the state machine image.
    pub snapshot: (SnapshotMeta, Vec<u8>),
    /// Durable log entries after the snapshot.
    pub entries: Vec<Entry>,
    /// A durably staged incoming snapshot.
    pub staged: Option<(SnapshotMeta, Vec<u8>)>,
    /// Written but not yet synced: (step at which the sync completes, request).
    pending: VecDeque<(u64, PersistRequest)>,
}

/// What completing a sync changed that the node must act on.
pub(crate) struct Synced {
    pub(crate) seq: u64,
    /// A snapshot was installed: the state machine must load this image.
    pub(crate) installed: Option<Vec<u8>>,
}

impl SimDisk {
    pub(crate) fn new(membership_snapshot: SnapshotMeta, image: Vec<u8>) -> Self {
        SimDisk {
            snapshot: (membership_snapshot, image),
            ..SimDisk::default()
        }
    }

    /// Queues a write; it becomes durable at step `sync_at` (not earlier than
    /// any write queued before it).
    pub(crate) fn write(&mut self, sync_at: u64, request: PersistRequest) {
        let after = self.pending.back().map_or(0, |(at, _)| *at);
        self.pending.push_back((sync_at.max(after), request));
    }

    /// Completes the syncs due by `now`.
    pub(crate) fn sync_due(&mut self, now: u64) -> Vec<Synced> {
        let mut done = Vec::new();
        while self.pending.front().is_some_and(|(at, _)| *at <= now) {
            let Some((_, request)) = self.pending.pop_front() else {
                break;
            };
            done.push(self.make_durable(request));
        }
        done
    }

    fn make_durable(&mut self, request: PersistRequest) -> Synced {
        let mut installed = None;
        for chunk in request.stage_chunks {
            let restart = self
                .staged
                .as_ref()
                .is_none_or(|(meta, _)| *meta != chunk.meta)
                || chunk.offset == 0;
            if restart {
                self.staged = Some((chunk.meta.clone(), Vec::new()));
            }
            if let Some((_, data)) = self.staged.as_mut() {
                data.truncate(chunk.offset as usize);
                data.extend_from_slice(&chunk.data);
            }
        }
        if let Some(meta) = request.install_snapshot {
            let image = self.staged.take().map(|(_, data)| data).unwrap_or_default();
            self.entries.clear();
            self.snapshot = (meta, image.clone());
            installed = Some(image);
        }
        if let Some(meta) = request.compact {
            self.entries.retain(|e| e.index > meta.index);
        }
        if let Some(first) = request.entries.first().map(|e| e.index) {
            self.entries.retain(|e| e.index < first);
            self.entries.extend(request.entries);
        }
        if let Some(hs) = request.hard_state {
            self.hard_state = hs;
        }
        Synced {
            seq: request.seq,
            installed,
        }
    }

    /// A crash: unsynced writes are gone.
    pub fn crash(&mut self) {
        self.pending.clear();
    }

    /// The state a restarting core recovers from.
    pub(crate) fn restore_state(&self) -> RestoreState {
        let snapshot = self.snapshot.0.clone();
        RestoreState {
            hard_state: self.hard_state,
            applied: snapshot.index,
            entries: self
                .entries
                .iter()
                .filter(|e| e.index > snapshot.index)
                .cloned()
                .collect(),
            staged: self
                .staged
                .as_ref()
                .map(|(meta, data)| (meta.clone(), data.len() as u64)),
            snapshot,
        }
    }

    /// Size of the durable log and hard state in bytes, for the snapshot-size tests.
    pub fn raft_state_bytes(&self) -> u64 {
        self.entries.iter().map(Entry::size_bytes).sum::<u64>() + 24
    }
}
