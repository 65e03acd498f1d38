//! flotilla-wal: the Raft log entry type and durable storage for Raft logs.
//!
//! The wal crate owns what goes into the Raft log, so the Raft core (in
//! `flotilla-engine`) and every log store agree on one representation. The
//! [`LogStore`] trait serves many groups from one store; [`MemLogStore`] models
//! durability in memory for the simulator, and (with the `rocksdb` feature)
//! [`RocksLogStore`] keeps logs in RocksDB column families with one group-commit
//! writer thread. Both pass [`conformance::run_all`].

pub mod conformance;
mod entry;
mod error;
pub mod failpoint;
pub mod keys;
mod membership;
mod memory;
mod policy;
pub mod record;
#[cfg(feature = "rocksdb")]
mod rocks;
/// The RocksDB crate this store is built on, so other crates use the same one.
#[cfg(feature = "rocksdb")]
pub use rocksdb;
mod snapshot_meta;
mod store;

pub use entry::{Entry, EntryPayload, HardState};
pub use error::StorageError;
pub use membership::Membership;
pub use memory::MemLogStore;
pub use policy::{CompactionPolicy, LogSize};
#[cfg(feature = "rocksdb")]
pub use rocks::{
    BatchFiller, Extra, OpenOptions, RawOp, RawOpKind, RocksLogStore, DEFAULT_WRITER_POLL,
    FORMAT_VERSION, MAX_BATCH_REQUESTS, MAX_QUEUED_REQUESTS, MAX_WAL_PREALLOCATION,
    MAX_WRITER_POLL,
};
pub use snapshot_meta::SnapshotMeta;
pub use store::{Completion, Durability, LogStore, LogWrite};

/// Identifies one node (process) of a cluster. Node id 0 is reserved for "none".
pub type NodeId = u64;
/// Identifies one Raft group; a node hosts many groups.
pub type GroupId = u64;
/// A Raft term.
pub type Term = u64;
/// A Raft log index; the first real entry has index 1, index 0 is the empty prefix.
pub type Index = u64;
