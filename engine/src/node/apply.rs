//! Applying committed entries to a group's data in RocksDB: the key/value
//! machine decides the writes, which go in one batch with the new applied
//! state, so the applied index always matches the data.

use flotilla_snapshot::{AppliedState, DataOp, GroupData, SnapshotError};
use flotilla_wal::{keys, Entry, EntryPayload, Index, Membership};

use crate::kv::{CommandReply, KvMachine, KvView, KvWrite, SessionLimits};
use crate::raft::message::SnapshotMeta;

struct DataView<'a>(&'a GroupData);

impl KvView for DataView<'_> {
    fn get(&self, inner_key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.0.get(inner_key).map_err(|e| e.to_string())
    }
}

/// The applying half of a group.
pub(crate) struct Applier {
    data: GroupData,
    machine: KvMachine,
    applied: AppliedState,
    limits: SessionLimits,
}

impl Applier {
    /// Loads the stored applied state and sessions (start-up). A group that
    /// has applied nothing yet starts from `initial` membership.
    pub(crate) fn load(
        data: GroupData,
        limits: SessionLimits,
        initial: &Membership,
    ) -> Result<Self, SnapshotError> {
        let mut applied = data.applied()?;
        if applied.index == 0 && applied.membership.voters.is_empty() {
            applied.membership = initial.clone();
        }
        let mut machine = KvMachine::new(limits);
        let (start, end) = keys::session_range();
        let stored = data.scan(&start, &end, usize::MAX)?;
        machine
            .load_sessions(stored.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
            .map_err(|detail| SnapshotError::Corrupt { detail })?;
        Ok(Applier {
            data,
            machine,
            applied,
            limits,
        })
    }

    /// After a snapshot install replaced the data: start from what it holds.
    pub(crate) fn reload(&mut self, meta: &SnapshotMeta) -> Result<(), SnapshotError> {
        let loaded = Applier::load(self.data.clone(), self.limits, &meta.membership)?;
        if loaded.applied.index != meta.index {
            return Err(SnapshotError::Corrupt {
                detail: format!(
                    "installed snapshot {} left applied index {}",
                    meta.index, loaded.applied.index
                ),
            });
        }
        *self = loaded;
        Ok(())
    }

    /// What has been applied.
    pub(crate) fn applied(&self) -> &AppliedState {
        &self.applied
    }

    pub(crate) fn applied_index(&self) -> Index {
        self.applied.index
    }

    pub(crate) fn session_count(&self) -> usize {
        self.machine.session_count()
    }

    pub(crate) fn get(&self, inner_key: &[u8]) -> Result<Option<Vec<u8>>, SnapshotError> {
        self.data.get(inner_key)
    }

    /// Applies `entries` (consecutive, committed) and returns the reply to
    /// each command by index.
    pub(crate) fn apply(&mut self, entries: &[Entry]) -> Result<Vec<CommandReply>, SnapshotError> {
        let Some(last) = entries.last() else {
            return Ok(Vec::new());
        };
        let mut membership: Option<Membership> = None;
        let commands = entries.iter().filter_map(|entry| match &entry.payload {
            EntryPayload::Normal(data) => Some((entry.index, data.as_slice())),
            EntryPayload::Membership(m) => {
                membership = Some(m.clone());
                None
            }
            EntryPayload::Blank => None,
        });
        let commands: Vec<_> = commands.collect();
        let batch = self
            .machine
            .apply(&DataView(&self.data), commands)
            .map_err(|detail| SnapshotError::Corrupt { detail })?;
        let mut next = self.applied.clone();
        next.index = last.index;
        next.term = last.term;
        if let Some(m) = membership {
            next.membership = m;
        }
        let ops = batch
            .writes
            .into_iter()
            .map(|write| match write {
                KvWrite::Put(key, value) => DataOp::Put(key, value),
                KvWrite::Delete(key) => DataOp::Delete(key),
            })
            .collect();
        self.data.apply_unsynced(&next, ops)?;
        self.applied = next;
        Ok(batch.replies)
    }
}
