//! flotilla-snapshot: moving snapshots between nodes in bounded chunks.
//!
//! The Raft core decides *what* to send and tracks how far a transfer got; a
//! [`SnapshotStore`] does the IO: it reads chunks of the local snapshot for a
//! follower, stages received chunks durably (so a cut transfer resumes from the
//! last staged byte), and installs a fully staged snapshot. The total size need
//! not be known up front: the last chunk says it is the last.
//!
//! [`MemSnapshotStore`] serves the deterministic simulator; with the `rocksdb`
//! feature, [`RocksSnapshotStore`] builds snapshots of a group's RocksDB data
//! through a RocksDB snapshot, stages received chunks in the `snapshot` column
//! family and installs atomically. Both pass the [`conformance`] suite.

pub mod conformance;
mod data;
pub mod image;
mod memory;
#[cfg(feature = "rocksdb")]
mod rocks;

pub use data::{DataOp, GroupStore, MemGroupData};
pub use flotilla_wal::{SnapshotMeta, StorageError};
pub use image::AppliedState;
pub use memory::MemSnapshotStore;
#[cfg(feature = "rocksdb")]
pub use rocks::{GroupData, RocksSnapshotStore, DEFAULT_CHUNK_BYTES};
use thiserror::Error;

/// One chunk read from a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The bytes, at most the requested length.
    pub data: Vec<u8>,
    /// True if the chunk ends the snapshot.
    pub done: bool,
}

/// Why a snapshot operation failed.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The store no longer holds the snapshot asked for (a newer one replaced
    /// it); restart the transfer from the current snapshot.
    #[error("snapshot at index {index} term {term} is no longer available; restart the transfer")]
    Unavailable {
        /// Index of the snapshot asked for.
        index: u64,
        /// Term of the snapshot asked for.
        term: u64,
    },
    /// A chunk does not continue what is staged.
    #[error("chunk at offset {offset} does not continue the staged {staged} bytes; resend from {staged}")]
    OutOfOrder {
        /// Offset of the refused chunk.
        offset: u64,
        /// Bytes staged so far.
        staged: u64,
    },
    /// The snapshot's bytes are damaged (a checksum failed, a frame does not
    /// decode, the image ends early); nothing was installed.
    #[error("snapshot image is corrupt: {detail}; discard it and transfer it again")]
    Corrupt {
        /// What was wrong.
        detail: String,
    },
    /// Something is too large to go into a snapshot image; nothing was built.
    #[error("{what} of {bytes} bytes is too large for a snapshot (at most {max})")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// The underlying store failed (including a corrupt stored chunk, reported
    /// with its column family and key).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Install was asked for a snapshot that is not the one staged.
    #[error("snapshot at index {index} is not the one staged; nothing installed")]
    NotStaged {
        /// Index of the snapshot asked for.
        index: u64,
    },
}

/// Storage for one group's snapshots: the current one and an incoming one being staged.
pub trait SnapshotStore {
    /// The current snapshot (the latest saved locally or installed), if any.
    fn current(&self) -> Option<SnapshotMeta>;

    /// Reads at most `max_bytes` at `offset` of the snapshot `meta`.
    /// `Unavailable` if the store no longer holds that snapshot.
    fn read_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_bytes: u64,
    ) -> Result<Chunk, SnapshotError>;

    /// Durably stages a received chunk. A chunk of another snapshot, or at
    /// offset 0, restarts staging; otherwise `offset` must equal the bytes
    /// already staged.
    fn stage_chunk(
        &mut self,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), SnapshotError>;

    /// The snapshot being staged and how many bytes of it are durable.
    fn staged(&self) -> Option<(SnapshotMeta, u64)>;

    /// Makes the fully staged snapshot `meta` the current one, atomically.
    fn install_staged(&mut self, meta: &SnapshotMeta) -> Result<(), SnapshotError>;
}
