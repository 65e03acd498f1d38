//! What a group applies its committed entries to.

use flotilla_snapshot::{AppliedState, SnapshotError};
use flotilla_wal::{Entry, Index, SnapshotMeta};

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
