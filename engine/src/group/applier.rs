//! The key/value machine over a group's stored data: the machine decides
//! the writes, which go in one batch with the new applied state, so the
//! applied index always matches the data.

use flotilla_snapshot::{AppliedState, DataOp, GroupStore, SnapshotError};
use flotilla_wal::{keys, Entry, EntryPayload, Index, Membership, SnapshotMeta};

use crate::group::machine::{
    applied_after, check_reloaded, stored_applied, StateMachine, StoredMachine,
};
use std::sync::Arc;

use crate::kv::{CommandError, KvMachine, KvView, KvWrite, SessionLimits, ShardOf, WriteReply};

struct DataView<'a, D>(&'a D);

impl<D: GroupStore> KvView for DataView<'_, D> {
    fn get(&self, inner_key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.0.get(inner_key).map_err(|e| e.to_string())
    }
}

/// The applying half of a data group: [`KvMachine`] over a [`GroupStore`]
/// (RocksDB on a node, memory in the simulator).
pub struct KvApplier<D> {
    data: D,
    machine: KvMachine,
    applied: AppliedState,
    limits: SessionLimits,
    shards: Arc<dyn ShardOf>,
}

impl<D: GroupStore + Clone> KvApplier<D> {
    /// Loads the stored applied state and sessions (start-up). A group that
    /// has applied nothing yet starts from `initial` membership. Keys are
    /// stored under the shards `shards` gives them.
    pub fn load(
        data: D,
        limits: SessionLimits,
        shards: Arc<dyn ShardOf>,
        initial: &Membership,
    ) -> Result<Self, SnapshotError> {
        let applied = stored_applied(&data, initial)?;
        let mut machine = KvMachine::new(limits, shards.clone());
        let (start, end) = keys::session_range();
        let stored = data.scan(&start, &end, usize::MAX)?;
        machine
            .load_sessions(stored.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
            .map_err(|detail| SnapshotError::Corrupt { detail })?;
        Ok(KvApplier {
            data,
            machine,
            applied,
            limits,
            shards,
        })
    }

    /// After a snapshot install replaced the data in the store: start from
    /// what it holds.
    pub fn reload(&mut self, meta: &SnapshotMeta) -> Result<(), SnapshotError> {
        let loaded = KvApplier::load(
            self.data.clone(),
            self.limits,
            self.shards.clone(),
            &meta.membership,
        )?;
        check_reloaded(&loaded.applied, meta)?;
        *self = loaded;
        Ok(())
    }
}

impl<D: GroupStore> KvApplier<D> {
    /// What has been applied.
    pub fn applied(&self) -> &AppliedState {
        &self.applied
    }

    /// Client sessions held.
    pub fn session_count(&self) -> usize {
        self.machine.session_count()
    }

    /// The data this applier writes.
    pub fn data(&self) -> &D {
        &self.data
    }
}

impl<D: GroupStore> StateMachine for KvApplier<D> {
    type Reply = Result<WriteReply, CommandError>;

    fn applied_index(&self) -> Index {
        self.applied.index
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<(Index, Self::Reply)>, String> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let commands = entries.iter().filter_map(|entry| match &entry.payload {
            EntryPayload::Normal(data) => Some((entry.index, data.as_slice())),
            EntryPayload::Membership(_) | EntryPayload::Blank => None,
        });
        let batch = self
            .machine
            .apply(&DataView(&self.data), commands.collect::<Vec<_>>())?;
        let next = applied_after(&self.applied, entries);
        let ops = batch
            .writes
            .into_iter()
            .map(|write| match write {
                KvWrite::Put(key, value) => DataOp::Put(key, value),
                KvWrite::Delete(key) => DataOp::Delete(key),
            })
            .collect();
        self.data
            .apply_unsynced(&next, ops)
            .map_err(|e| e.to_string())?;
        self.applied = next;
        Ok(batch.replies)
    }

    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.data.get(key).map_err(|e| e.to_string())
    }
}

impl<D: GroupStore + Clone> StoredMachine for KvApplier<D> {
    fn applied_state(&self) -> &AppliedState {
        &self.applied
    }

    fn reload(&mut self, meta: &SnapshotMeta) -> Result<(), SnapshotError> {
        KvApplier::reload(self, meta)
    }

    fn session_count(&self) -> usize {
        self.machine.session_count()
    }
}
