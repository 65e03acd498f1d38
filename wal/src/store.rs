//! The `LogStore` trait: durable Raft logs and state for many groups.

use std::time::Duration;

use crate::error::StorageError;
use crate::{Entry, EntryPayload, GroupId, HardState, Index, Membership, SnapshotMeta, Term};

/// How durable an acknowledged write is.
///
/// | mode | process crash (kill -9) | power failure / kernel crash |
/// |---|---|---|
/// | `Sync` | nothing acknowledged is lost | nothing acknowledged is lost |
/// | `Buffered { max_delay }` | nothing is lost (the write reached the OS) | up to `max_delay` of acknowledged writes |
/// | `None` | everything since the last memtable flush | the same |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every batch is fsynced before its writes are acknowledged. The default.
    #[default]
    Sync,
    /// Writes go to the write-ahead log without fsync and are acknowledged at
    /// once; a sync runs at least every `max_delay`.
    Buffered {
        /// Longest time an acknowledged write may stay unsynced.
        max_delay: Duration,
    },
    /// No write-ahead log at all: for benchmarks and throwaway data.
    None,
}

/// One group's share of a write: applied in this order — install, compact,
/// entries (truncating the log from the first one), hard state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogWrite {
    /// The group.
    pub group: GroupId,
    /// A snapshot was installed: drop the whole log and start after it.
    pub install: Option<SnapshotMeta>,
    /// A snapshot was taken: drop entries up to its index.
    pub compact: Option<SnapshotMeta>,
    /// Entries to write, after removing every entry from `entries[0].index` on.
    pub entries: Vec<Entry>,
    /// New hard state.
    pub hard_state: Option<HardState>,
}

/// Called once a submitted write is as durable as the store's [`Durability`] promises.
pub type Completion = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// Durable storage for the Raft logs and hard state of many groups.
pub trait LogStore: Send + Sync {
    /// Queues writes (from any number of groups) to be applied atomically in
    /// order; `done` runs when they are durable, or with the error that
    /// stopped them.
    fn submit(&self, writes: Vec<LogWrite>, done: Completion);

    /// Entries `lo..=hi` of `group`, stopping once `max_bytes` is reached (at
    /// least one entry when the range is not empty). Stops at the first gap.
    fn entries(
        &self,
        group: GroupId,
        lo: Index,
        hi: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError>;

    /// The latest hard state of `group` (default if none was written).
    fn hard_state(&self, group: GroupId) -> Result<HardState, StorageError>;

    /// The snapshot `group`'s log starts after (default if none).
    fn snapshot_meta(&self, group: GroupId) -> Result<SnapshotMeta, StorageError>;

    /// Index of the last entry of `group`, or its snapshot index if the log is empty.
    fn last_index(&self, group: GroupId) -> Result<Index, StorageError>;

    /// Every group with any state in the store.
    fn groups(&self) -> Result<Vec<GroupId>, StorageError>;

    /// Sum of [`Entry::size_bytes`] over the entries `group`'s log holds: what
    /// the compaction policy weighs against `max_raft_state`.
    fn log_bytes(&self, group: GroupId) -> Result<u64, StorageError>;

    /// Writes and waits for durability.
    fn write(&self, writes: Vec<LogWrite>) -> Result<(), StorageError> {
        wait_for(|done| self.submit(writes, done))
    }

    /// Index of the first entry of `group` held in the log.
    fn first_index(&self, group: GroupId) -> Result<Index, StorageError> {
        Ok(self.snapshot_meta(group)?.index + 1)
    }

    /// The term at `index`: the snapshot's term at its index, None if compacted or absent.
    fn term(&self, group: GroupId, index: Index) -> Result<Option<Term>, StorageError> {
        let snapshot = self.snapshot_meta(group)?;
        if index == snapshot.index {
            return Ok(Some(snapshot.term));
        }
        if index < snapshot.index {
            return Ok(None);
        }
        Ok(self
            .entries(group, index, index, u64::MAX)?
            .first()
            .map(|e| e.term))
    }

    /// The membership in force: the last membership entry in the log, or the snapshot's.
    fn membership(&self, group: GroupId) -> Result<Membership, StorageError> {
        let snapshot = self.snapshot_meta(group)?;
        let entries = self.entries(group, snapshot.index + 1, self.last_index(group)?, u64::MAX)?;
        Ok(last_membership(&entries).unwrap_or(snapshot.membership))
    }
}

/// Refuses an append that does not fit a log with this snapshot and last
/// index: one leaving a hole, starting at or before the snapshot, or with
/// indexes that do not follow one another.
fn check_append(
    group: GroupId,
    snapshot: Index,
    last: Index,
    entries: &[Entry],
) -> Result<(), StorageError> {
    let Some(first) = entries.first() else {
        return Ok(());
    };
    let follows = entries.windows(2).all(|w| w[1].index == w[0].index + 1);
    if first.index > last + 1 || first.index <= snapshot || !follows {
        return Err(StorageError::NonContiguous {
            group,
            snapshot,
            last,
            first: first.index,
        });
    }
    Ok(())
}

/// Checks that every append of `writes` fits its log, given the writes before
/// it; `shape` gives a group's (snapshot index, last index) before the request.
pub(crate) fn check_writes(
    writes: &[LogWrite],
    mut shape: impl FnMut(GroupId) -> Result<(Index, Index), StorageError>,
) -> Result<(), StorageError> {
    let mut after: std::collections::HashMap<GroupId, (Index, Index)> =
        std::collections::HashMap::new();
    for write in writes {
        let group = write.group;
        let (mut snapshot, mut last) = match after.get(&group) {
            Some(s) => *s,
            None => shape(group)?,
        };
        if let Some(meta) = &write.install {
            (snapshot, last) = (meta.index, meta.index);
        }
        if let Some(meta) = write.compact.as_ref().filter(|m| m.index > snapshot) {
            (snapshot, last) = (meta.index, last.max(meta.index));
        }
        check_append(group, snapshot, last, &write.entries)?;
        if let Some(end) = write.entries.last() {
            last = end.index;
        }
        after.insert(group, (snapshot, last));
    }
    Ok(())
}

/// The last membership entry among `entries`.
pub(crate) fn last_membership(entries: &[Entry]) -> Option<Membership> {
    entries.iter().rev().find_map(|e| match &e.payload {
        EntryPayload::Membership(m) => Some(m.clone()),
        _ => None,
    })
}

/// Runs `submit` with a completion and blocks until it is called.
pub(crate) fn wait_for(submit: impl FnOnce(Completion)) -> Result<(), StorageError> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    submit(Box::new(move |result| {
        let _ = tx.send(result);
    }));
    rx.recv().unwrap_or(Err(StorageError::Closed))
}
