//! What the writer knows about each group's log without reading it: where it
//! starts and ends and how many bytes each entry counts for. Loaded from disk
//! the first time a group is touched, then kept in step with every commit.

use std::collections::{HashMap, VecDeque};

use rocksdb::{Direction, IteratorMode, DB};

use super::{cf_handle, engine};
use crate::error::StorageError;
use crate::keys::{self, StateKind, RAFT_LOG_CF, RAFT_STATE_CF};
use crate::record;
use crate::{Entry, GroupId, Index, SnapshotMeta};

/// One group's log shape.
#[derive(Clone, Debug, Default)]
pub(crate) struct LogCache {
    snapshot_index: Index,
    /// Index of `sizes[0]`.
    first: Index,
    /// `Entry::size_bytes` of each entry, in index order.
    sizes: VecDeque<u64>,
    bytes: u64,
}

impl LogCache {
    fn starting_after(snapshot_index: Index) -> Self {
        LogCache {
            snapshot_index,
            first: snapshot_index + 1,
            ..LogCache::default()
        }
    }

    pub(crate) fn snapshot_index(&self) -> Index {
        self.snapshot_index
    }

    /// The last entry's index, or the snapshot's when the log is empty.
    pub(crate) fn last_index(&self) -> Index {
        self.first + self.sizes.len() as u64 - 1
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn install(&mut self, index: Index) {
        *self = LogCache::starting_after(index);
    }

    pub(crate) fn compact(&mut self, index: Index) {
        while self.first <= index {
            let Some(size) = self.sizes.pop_front() else {
                break;
            };
            self.bytes -= size;
            self.first += 1;
        }
        self.first = self.first.max(index + 1);
        self.snapshot_index = index;
    }

    pub(crate) fn truncate_from(&mut self, index: Index) {
        while !self.sizes.is_empty() && self.last_index() >= index {
            if let Some(size) = self.sizes.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Appends the entry after the last one.
    pub(crate) fn push(&mut self, size: u64) {
        self.sizes.push_back(size);
        self.bytes += size;
    }
}

/// Every group's cache.
#[derive(Default)]
pub(crate) struct GroupCaches {
    groups: HashMap<GroupId, LogCache>,
}

impl GroupCaches {
    pub(crate) fn get(&self, group: GroupId) -> Option<&LogCache> {
        self.groups.get(&group)
    }

    pub(crate) fn get_or_load(
        &mut self,
        db: &DB,
        group: GroupId,
    ) -> Result<&mut LogCache, StorageError> {
        match self.groups.entry(group) {
            std::collections::hash_map::Entry::Occupied(slot) => Ok(slot.into_mut()),
            std::collections::hash_map::Entry::Vacant(slot) => Ok(slot.insert(load(db, group)?)),
        }
    }

    pub(crate) fn clear(&mut self) {
        self.groups.clear();
    }
}

/// Reads a group's snapshot metadata and every entry's size from disk.
fn load(db: &DB, group: GroupId) -> Result<LogCache, StorageError> {
    let state = cf_handle(db, RAFT_STATE_CF)?;
    let log = cf_handle(db, RAFT_LOG_CF)?;
    let meta_key = keys::state_key(group, StateKind::SnapshotMeta);
    let snapshot: SnapshotMeta = match db.get_cf(state, meta_key).map_err(|e| engine(&e))? {
        Some(bytes) => record::decode(RAFT_STATE_CF, &meta_key, &bytes)?,
        None => SnapshotMeta::default(),
    };
    let mut cache = LogCache::starting_after(snapshot.index);
    let start = keys::log_key(group, 0);
    let mut expected = None;
    for item in db.iterator_cf(log, IteratorMode::From(&start, Direction::Forward)) {
        let (key, value) = item.map_err(|e| engine(&e))?;
        let Some((g, index)) = keys::parse_log_key(&key) else {
            break;
        };
        if g != group {
            break;
        }
        let entry: Entry = record::decode(RAFT_LOG_CF, &key, &value)?;
        match expected {
            None => cache.first = index,
            Some(next) if next == index => {}
            Some(next) => {
                return Err(StorageError::Corruption {
                    cf: RAFT_LOG_CF,
                    key: keys::display_key(&key),
                    detail: format!(
                        "the log of group {group} jumps from {} to {index}",
                        next - 1
                    ),
                })
            }
        }
        cache.push(entry.size_bytes());
        expected = Some(index + 1);
    }
    Ok(cache)
}
