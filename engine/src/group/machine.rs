//! What a group applies its committed entries to.

use flotilla_snapshot::{AppliedState, GroupStore, SnapshotError};
use flotilla_wal::{Entry, EntryPayload, Index, Membership, SnapshotMeta};

/// A replicated state machine driven by a [`GroupDriver`](crate::group::GroupDriver):
/// the key/value machine of every data group (`KvApplier`), the
/// simulator's recording machine, and later the shard controller's.
/// Deterministic: every replica applying the same entries gets the same
/// state and replies, however the entries are cut into batches.
pub trait StateMachine {
    /// What applying one command answers the client that proposed it.
    type Reply;

    /// The last index applied.
    fn applied_index(&self) -> Index;

    /// Applies `entries` (committed, consecutive, starting right after
    /// [`applied_index`](Self::applied_index)) and returns the reply to each
    /// command, by index; entries that carry no command (blank, membership)
    /// get none. An error means the machine's storage failed: the group
    /// stops applying and refuses further work until restarted.
    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<(Index, Self::Reply)>, String>;

    /// The applied value of `key` (the machine's own key space).
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String>;
}

/// A machine whose state lives in a group's stored data, as a node's group
/// loop runs it: the key/value machine of a data group, the shard
/// controller's machine.
pub trait StoredMachine: StateMachine {
    /// What has been applied (index, term, membership), as stored with the
    /// data.
    fn applied_state(&self) -> &AppliedState;

    /// After a snapshot install replaced the group's stored data: start
    /// from what it now holds.
    fn reload(&mut self, meta: &SnapshotMeta) -> Result<(), SnapshotError>;

    /// Client sessions held, for the group's status.
    fn session_count(&self) -> usize;
}

/// The applied state stored in `data`; a group that has applied nothing
/// yet starts from `initial` membership. Where every stored machine's
/// loading starts.
pub fn stored_applied<D: GroupStore>(
    data: &D,
    initial: &Membership,
) -> Result<AppliedState, SnapshotError> {
    let mut applied = data.applied()?;
    if applied.index == 0 && applied.membership.voters.is_empty() {
        applied.membership = initial.clone();
    }
    Ok(applied)
}

/// Refuses a machine reloaded after installing snapshot `meta` that does not
/// start at the snapshot's index.
pub fn check_reloaded(applied: &AppliedState, meta: &SnapshotMeta) -> Result<(), SnapshotError> {
    if applied.index == meta.index {
        return Ok(());
    }
    Err(SnapshotError::Corrupt {
        detail: format!(
            "installed snapshot {} left applied index {}",
            meta.index, applied.index
        ),
    })
}

/// The applied state after `entries` (committed, following `applied`): the
/// last entry's index and term, and the last membership among them.
pub fn applied_after(applied: &AppliedState, entries: &[Entry]) -> AppliedState {
    let mut next = applied.clone();
    for entry in entries {
        if let EntryPayload::Membership(m) = &entry.payload {
            next.membership = m.clone();
        }
    }
    if let Some(last) = entries.last() {
        next.index = last.index;
        next.term = last.term;
    }
    next
}
