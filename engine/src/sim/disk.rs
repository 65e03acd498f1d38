//! A simulated disk with the durability of a real one: a persist request is
//! durable only after its sync completes, and a crash loses everything unsynced.

use std::collections::VecDeque;

use flotilla_snapshot::{MemSnapshotStore, SnapshotStore};
use flotilla_wal::{Entry, HardState, Index};

use crate::raft::core::RestoreState;
use crate::raft::message::SnapshotMeta;
use crate::raft::ready::PersistRequest;

/// One node's durable state plus its writes still waiting for a sync.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    /// Durable hard state.
    pub hard_state: HardState,
    /// Durable snapshots: the current state machine image and a staged incoming one.
    pub snapshots: MemSnapshotStore,
    /// Durable log entries after the snapshot.
    pub entries: Vec<Entry>,
    /// Written but not yet synced: (step at which the sync completes, request).
    pending: VecDeque<(u64, PersistRequest)>,
}

/// What completing a sync changed that the node must act on.
pub(crate) struct Synced {
    pub(crate) seq: u64,
    /// A snapshot was installed: the state machine must load this image.
    pub(crate) installed: Option<Vec<u8>>,
    /// The snapshot store refused a write the core asked for.
    pub(crate) error: Option<String>,
}

impl SimDisk {
    pub(crate) fn new(initial: SnapshotMeta, image: Vec<u8>) -> Self {
        let mut disk = SimDisk::default();
        disk.snapshots.save(initial, image);
        disk
    }

    /// Index of the current durable snapshot.
    pub fn snapshot_index(&self) -> Index {
        self.snapshots.current().map_or(0, |m| m.index)
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
        let mut error = None;
        for chunk in request.stage_chunks {
            if let Err(e) = self
                .snapshots
                .stage_chunk(&chunk.meta, chunk.offset, &chunk.data)
            {
                error = Some(format!("staging refused: {e}"));
            }
        }
        if let Some(meta) = request.install_snapshot {
            match self.snapshots.install_staged(&meta) {
                Ok(()) => {
                    self.entries.clear();
                    installed = Some(self.snapshots.image().unwrap_or_default().to_vec());
                }
                Err(e) => error = Some(format!("install refused: {e}")),
            }
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
            error,
        }
    }

    /// A crash: unsynced writes are gone.
    pub fn crash(&mut self) {
        self.pending.clear();
    }

    /// The state a restarting core recovers from.
    pub(crate) fn restore_state(&self) -> RestoreState {
        let snapshot = self.snapshots.current().unwrap_or_default();
        RestoreState {
            hard_state: self.hard_state,
            applied: snapshot.index,
            entries: self
                .entries
                .iter()
                .filter(|e| e.index > snapshot.index)
                .cloned()
                .collect(),
            staged: self.snapshots.staged(),
            snapshot,
        }
    }

    /// Size of the durable log and hard state in bytes, for the snapshot-size tests.
    pub fn raft_state_bytes(&self) -> u64 {
        self.entries.iter().map(Entry::size_bytes).sum::<u64>() + 24
    }
}
