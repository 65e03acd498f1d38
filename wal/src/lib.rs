//! flotilla-wal: the Raft log entry type, hard state and membership records.
//!
//! The wal crate owns what goes into the Raft log, so the Raft core (in
//! `flotilla-engine`) and every log store agree on one representation. The
//! RocksDB-backed `LogStore` arrives with the persistence issue; today the crate
//! holds the types only.

mod entry;
mod membership;
mod snapshot_meta;

pub use entry::{Entry, EntryPayload, HardState};
pub use membership::Membership;
pub use snapshot_meta::SnapshotMeta;

/// Identifies one node (process) of a cluster. Node id 0 is reserved for "none".
pub type NodeId = u64;
/// Identifies one Raft group; a node hosts many groups.
pub type GroupId = u64;
/// A Raft term.
pub type Term = u64;
/// A Raft log index; the first real entry has index 1, index 0 is the empty prefix.
pub type Index = u64;
