use std::path::PathBuf;

use thiserror::Error;

/// What went wrong in the log store.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageError {
    /// An earlier write or sync failed, so nothing written since can be trusted
    /// to be durable. Every later write is refused.
    #[error("storage poisoned: an earlier write or sync failed ({cause}); the store refuses writes — restart the node to recover from what is on disk")]
    Poisoned {
        /// The failure that poisoned the store.
        cause: String,
    },
    /// A stored record failed its checksum or did not decode.
    #[error("corruption in column family {cf} at key {key}: {detail}; restore this node from a replica or a backup")]
    Corruption {
        /// Column family.
        cf: &'static str,
        /// The key, in hex.
        key: String,
        /// What was wrong.
        detail: String,
    },
    /// The directory holds something that is not a flotilla store.
    #[error("{path} is not a flotilla store ({why}); point the node at an empty directory or an existing flotilla data directory")]
    NotAFlotillaStore {
        /// The directory.
        path: PathBuf,
        /// What gave it away.
        why: String,
    },
    /// The store was written by a newer flotilla.
    #[error("{path} was written by store format {found}, this build understands up to {supported}; upgrade flotilla")]
    NewerFormat {
        /// The directory.
        path: PathBuf,
        /// Format found on disk.
        found: u32,
        /// Newest format this build reads.
        supported: u32,
    },
    /// An append does not fit the log: it would leave a hole after the last
    /// entry, or it starts at or before the snapshot. A caller bug; nothing
    /// of the request is written.
    #[error("append to group {group} at index {first} does not fit its log (snapshot at {snapshot}, last entry {last}); nothing written")]
    NonContiguous {
        /// The group.
        group: u64,
        /// The snapshot index the log starts after.
        snapshot: u64,
        /// Last index held (or the snapshot index).
        last: u64,
        /// First index of the refused append.
        first: u64,
    },
    /// The storage engine reported an error.
    #[error("storage engine error: {0}")]
    Engine(String),
    /// The store has been closed.
    #[error("the log store is closed")]
    Closed,
}

impl StorageError {
    /// True if the error is permanent for this process (poisoned, corrupt,
    /// wrong directory or format) rather than a transient engine error.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, StorageError::Engine(_))
    }
}
