//! A simulated disk with the durability of a real one: a persist request is
//! durable only after its sync completes, and a crash loses everything unsynced.
//!
//! The log and hard state live in a [`MemLogStore`] in buffered mode — the
//! same `LogStore` the RocksDB store implements: each request's log part is
//! submitted when the core hands it out (readable at once, like a write to
//! the OS) and made durable in order as its sync completes; a crash drops
//! what was not. Snapshots live in a [`MemSnapshotStore`], changed only when
//! a request's sync completes.

use std::collections::VecDeque;
use std::time::Duration;

use flotilla_snapshot::{MemSnapshotStore, SnapshotStore};
use flotilla_wal::{Durability, Index, LogStore, LogWrite, MemLogStore};

use crate::raft::core::RestoreState;
use crate::raft::message::SnapshotMeta;
use crate::raft::ready::PersistRequest;

/// The group id the simulated nodes' single group has.
const GROUP: u64 = 1;

/// One node's durable state plus its writes still waiting for a sync.
pub struct SimDisk {
    /// Durable snapshots: the current state machine image and a staged incoming one.
    pub snapshots: MemSnapshotStore,
    /// The log and hard state.
    pub log: MemLogStore,
    /// Written but not yet synced: (step at which the sync completes, request).
    pending: VecDeque<(u64, PersistRequest)>,
    /// A log store error, reported with the next completed sync.
    log_error: Option<String>,
}

/// What completing a sync changed that the node must act on.
pub(crate) struct Synced {
    pub(crate) seq: u64,
    /// A snapshot was installed: the state machine must load this image.
    pub(crate) installed: Option<(SnapshotMeta, Vec<u8>)>,
    /// The snapshot store refused a write the core asked for.
    pub(crate) error: Option<String>,
}

impl SimDisk {
    pub(crate) fn new(initial: SnapshotMeta, image: Vec<u8>) -> Self {
        let mut snapshots = MemSnapshotStore::default();
        snapshots.save(initial, image);
        SimDisk {
            snapshots,
            // Buffered: acknowledged at once, durable only when synced; the
            // delay is the simulator's own, not this one.
            log: MemLogStore::new(Durability::Buffered {
                max_delay: Duration::MAX,
            }),
            pending: VecDeque::new(),
            log_error: None,
        }
    }

    /// Index of the current durable snapshot.
    pub fn snapshot_index(&self) -> Index {
        self.snapshots.current().map_or(0, |m| m.index)
    }

    /// Queues a write; it becomes durable at step `sync_at` (not earlier than
    /// any write queued before it).
    pub(crate) fn write(&mut self, sync_at: u64, request: PersistRequest) {
        let after = self.pending.back().map_or(0, |(at, _)| *at);
        // Exactly one submission per request, so the n-th sync makes the
        // n-th request's log part durable.
        let write = LogWrite {
            group: GROUP,
            install: request.install_snapshot.clone(),
            compact: request.compact.clone(),
            entries: request.entries.clone(),
            hard_state: request.hard_state,
        };
        // The in-memory store completes at once; acknowledged is not durable.
        if let Err(e) = self.log.write(vec![write]) {
            self.log_error
                .get_or_insert(format!("log store refused a write: {e}"));
        }
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
        let mut error = self.log_error.take();
        self.log.sync_oldest(1);
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
                    let image = self.snapshots.image().unwrap_or_default().to_vec();
                    installed = Some((meta, image));
                }
                Err(e) => error = Some(format!("install refused: {e}")),
            }
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
        self.log.crash();
    }

    /// The state a restarting core recovers from.
    pub(crate) fn restore_state(&self) -> Result<RestoreState, String> {
        let snapshot = self.snapshots.current().unwrap_or_default();
        let read = |e: flotilla_wal::StorageError| format!("log store read failed: {e}");
        let last = self.log.last_index(GROUP).map_err(read)?;
        Ok(RestoreState {
            hard_state: self.log.hard_state(GROUP).map_err(read)?,
            applied: snapshot.index,
            entries: self
                .log
                .entries(GROUP, snapshot.index + 1, last, u64::MAX)
                .map_err(read)?,
            staged: self.snapshots.staged(),
            snapshot,
        })
    }

    /// Size of the log and hard state in bytes, for the snapshot-size tests.
    pub fn raft_state_bytes(&self) -> u64 {
        self.log.log_bytes(GROUP).unwrap_or(0) + 24
    }
}
