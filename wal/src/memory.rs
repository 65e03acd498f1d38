//! An in-memory `LogStore` with the durability of a real one, for the
//! deterministic simulator and for tests: writes are visible at once, durable
//! only once synced, and `crash` throws away whatever was not.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use crate::error::StorageError;
use crate::store::{Completion, Durability, LogStore, LogWrite};
use crate::{Entry, GroupId, HardState, Index, SnapshotMeta};

#[derive(Clone, Debug, Default)]
struct MemGroup {
    hard_state: HardState,
    snapshot: SnapshotMeta,
    entries: BTreeMap<Index, Entry>,
}

#[derive(Default)]
struct MemState {
    /// What readers see.
    live: BTreeMap<GroupId, MemGroup>,
    /// What survives a crash.
    durable: BTreeMap<GroupId, MemGroup>,
    /// Acknowledged but not yet synced submissions, oldest first: a sync
    /// makes a prefix of them durable, in order, as a write-ahead log would.
    unsynced: VecDeque<Vec<LogWrite>>,
    poisoned: Option<String>,
    fail_next_sync: bool,
}

/// The in-memory log store.
pub struct MemLogStore {
    state: Mutex<MemState>,
    durability: Durability,
}

impl MemLogStore {
    /// An empty store. With `Durability::Sync` every write is durable when
    /// acknowledged; otherwise only after [`sync`](Self::sync).
    pub fn new(durability: Durability) -> Self {
        MemLogStore {
            state: Mutex::new(MemState::default()),
            durability,
        }
    }

    /// Makes everything written so far durable (the periodic sync of `Buffered`).
    pub fn sync(&self) {
        self.sync_oldest(usize::MAX);
    }

    /// Makes the oldest `n` unsynced submissions durable, in submission order
    /// (the simulator completes syncs one write at a time). An injected sync
    /// failure makes nothing durable and poisons the store.
    pub fn sync_oldest(&self, n: usize) {
        let mut state = self.lock();
        let state = &mut *state;
        if state.poisoned.is_some() {
            return;
        }
        if state.fail_next_sync && !state.unsynced.is_empty() {
            state.fail_next_sync = false;
            state.poisoned = Some("injected sync failure".to_string());
            return;
        }
        for _ in 0..n {
            let Some(writes) = state.unsynced.pop_front() else {
                break;
            };
            for write in &writes {
                apply(&mut state.durable, write);
            }
        }
    }

    /// Submissions acknowledged but not yet durable.
    pub fn unsynced(&self) -> usize {
        self.lock().unsynced.len()
    }

    /// A simulated crash and restart: everything not synced is gone, and the
    /// store works again from what is durable (as reopening a poisoned
    /// RocksDB store does).
    pub fn crash(&self) {
        let mut state = self.lock();
        state.unsynced.clear();
        state.live = state.durable.clone();
        state.poisoned = None;
    }

    /// Makes the next sync fail, which poisons the store: with `Sync` the
    /// next write, otherwise the next [`sync_oldest`](Self::sync_oldest).
    pub fn fail_next_sync(&self) {
        self.lock().fail_next_sync = true;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        // A panic while holding the lock leaves the maps consistent (each
        // write is applied by a single non-panicking pass), so keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read<T>(&self, group: GroupId, f: impl FnOnce(&MemGroup) -> T) -> T {
        let state = self.lock();
        let empty = MemGroup::default();
        f(state.live.get(&group).unwrap_or(&empty))
    }
}

fn apply(groups: &mut BTreeMap<GroupId, MemGroup>, write: &LogWrite) {
    let group = groups.entry(write.group).or_default();
    if let Some(meta) = &write.install {
        group.entries.clear();
        group.snapshot = meta.clone();
    }
    if let Some(meta) = &write.compact {
        if meta.index > group.snapshot.index {
            group.entries = group.entries.split_off(&(meta.index + 1));
            group.snapshot = meta.clone();
        }
    }
    if let Some(first) = write.entries.first() {
        group.entries.split_off(&first.index);
        for entry in &write.entries {
            group.entries.insert(entry.index, entry.clone());
        }
    }
    if let Some(hs) = write.hard_state {
        group.hard_state = hs;
    }
}

impl LogStore for MemLogStore {
    fn submit(&self, writes: Vec<LogWrite>, done: Completion) {
        let result = {
            let mut state = self.lock();
            if let Some(cause) = &state.poisoned {
                Err(StorageError::Poisoned {
                    cause: cause.clone(),
                })
            } else if state.fail_next_sync && self.durability == Durability::Sync {
                state.fail_next_sync = false;
                let cause = "injected sync failure".to_string();
                state.poisoned = Some(cause.clone());
                Err(StorageError::Poisoned { cause })
            } else if let Err(e) = crate::store::check_writes(&writes, |group| {
                Ok(state.live.get(&group).map_or((0, 0), |g| {
                    let last = g.entries.keys().next_back().copied();
                    (g.snapshot.index, last.unwrap_or(g.snapshot.index))
                }))
            }) {
                Err(e)
            } else {
                for write in &writes {
                    apply(&mut state.live, write);
                }
                if self.durability == Durability::Sync {
                    for write in &writes {
                        apply(&mut state.durable, write);
                    }
                } else {
                    state.unsynced.push_back(writes);
                }
                Ok(())
            }
        };
        done(result);
    }

    fn entries(
        &self,
        group: GroupId,
        lo: Index,
        hi: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self.read(group, |g| {
            let mut out = Vec::new();
            let mut bytes = 0;
            for index in lo..=hi {
                let Some(entry) = g.entries.get(&index) else {
                    break;
                };
                bytes += entry.size_bytes();
                if !out.is_empty() && bytes > max_bytes {
                    break;
                }
                out.push(entry.clone());
            }
            out
        }))
    }

    fn hard_state(&self, group: GroupId) -> Result<HardState, StorageError> {
        Ok(self.read(group, |g| g.hard_state))
    }

    fn snapshot_meta(&self, group: GroupId) -> Result<SnapshotMeta, StorageError> {
        Ok(self.read(group, |g| g.snapshot.clone()))
    }

    fn last_index(&self, group: GroupId) -> Result<Index, StorageError> {
        Ok(self.read(group, |g| {
            g.entries
                .keys()
                .next_back()
                .copied()
                .unwrap_or(g.snapshot.index)
        }))
    }

    fn groups(&self) -> Result<Vec<GroupId>, StorageError> {
        Ok(self.lock().live.keys().copied().collect())
    }

    fn log_bytes(&self, group: GroupId) -> Result<u64, StorageError> {
        Ok(self.read(group, |g| g.entries.values().map(Entry::size_bytes).sum()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EntryPayload;

    #[test]
    fn passes_the_conformance_suite() {
        crate::conformance::run_all(|| MemLogStore::new(Durability::Sync));
    }

    #[test]
    fn buffered_writes_are_lost_in_a_crash_until_synced() {
        let store = MemLogStore::new(Durability::Buffered {
            max_delay: std::time::Duration::from_millis(5),
        });
        let e = |i| Entry {
            term: 1,
            index: i,
            payload: EntryPayload::Blank,
        };
        store
            .write(vec![LogWrite {
                group: 1,
                entries: vec![e(1)],
                ..LogWrite::default()
            }])
            .unwrap();
        store.sync();
        store
            .write(vec![LogWrite {
                group: 1,
                entries: vec![e(2)],
                ..LogWrite::default()
            }])
            .unwrap();
        assert_eq!(store.last_index(1).unwrap(), 2);
        store.crash();
        assert_eq!(
            store.last_index(1).unwrap(),
            1,
            "the unsynced entry survived a crash"
        );
    }

    #[test]
    fn a_failed_buffered_sync_loses_the_unsynced_and_poisons_until_restart() {
        let store = MemLogStore::new(Durability::Buffered {
            max_delay: std::time::Duration::from_millis(5),
        });
        let w = |i| {
            vec![LogWrite {
                group: 1,
                entries: vec![Entry {
                    term: 1,
                    index: i,
                    payload: EntryPayload::Blank,
                }],
                ..LogWrite::default()
            }]
        };
        store.write(w(1)).unwrap();
        store.fail_next_sync();
        store.sync();
        assert!(matches!(
            store.write(w(2)),
            Err(StorageError::Poisoned { .. })
        ));
        store.crash();
        assert_eq!(
            store.last_index(1).unwrap(),
            0,
            "the failed sync made entry 1 durable"
        );
        store
            .write(w(1))
            .expect("a restarted store takes writes again");
    }

    #[test]
    fn failed_sync_poisons_every_later_write() {
        let store = MemLogStore::new(Durability::Sync);
        store.fail_next_sync();
        let w = || {
            vec![LogWrite {
                group: 1,
                hard_state: Some(HardState {
                    term: 1,
                    vote: 1,
                    commit: 0,
                }),
                ..LogWrite::default()
            }]
        };
        assert!(matches!(
            store.write(w()),
            Err(StorageError::Poisoned { .. })
        ));
        assert!(
            matches!(store.write(w()), Err(StorageError::Poisoned { .. })),
            "a poisoned store accepted a write"
        );
        assert_eq!(store.hard_state(1).unwrap(), HardState::default());
    }
}
