//! What can go wrong in a job.

use std::path::PathBuf;

use thiserror::Error;

/// Why a job or one of its files failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MapReduceError {
    /// An intermediate or output file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// A run file is damaged (checksum, length or footer); the task that
    /// wrote it must run again.
    #[error("{path} is damaged: {detail}; the task that wrote it must run again")]
    DamagedRun {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The store refused a read or a write.
    #[error("store: {0}")]
    Store(String),
    /// The job's settings are unusable.
    #[error("invalid job: {0}")]
    Invalid(String),
    /// The job was cancelled; it left no output.
    #[error("the job was cancelled")]
    Cancelled,
    /// The output prefix holds data and `replace` was not asked for.
    #[error("the output prefix {prefix:?} is not empty; pass replace to overwrite it")]
    OutputNotEmpty {
        /// The prefix, lossily as text.
        prefix: String,
    },
}

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> MapReduceError + '_ {
    move |source| MapReduceError::Io {
        path: path.to_path_buf(),
        source,
    }
}
