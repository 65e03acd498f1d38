//! MapReduce over what a flotilla store holds.
//!
//! A [`Job`] maps every input pair to intermediate pairs and reduces each
//! intermediate key's values to output pairs. The [`Coordinator`] hands out
//! map tasks (one per input split) and then reduce tasks (one per
//! partition), re-issuing any task not completed within the task timeout.
//! Map tasks write sorted runs ([`run_file`]) that reduce tasks merge with
//! bounded memory ([`merge`]). [`run_local`] runs a job with worker threads
//! against any [`Store`], and commits the output only once every task is
//! done.

pub mod builtin;
pub mod coordinator;
pub mod error;
pub mod job;
pub mod local;
mod map_buffer;
pub mod merge;
pub mod run_file;
pub mod store;
pub mod tasks;

pub use coordinator::{Assignment, Coordinator, TaskId, TaskKind};
pub use error::MapReduceError;
pub use job::{fnv1a, Emit, Job, Values};
pub use local::{run_local, JobSpec, Progress, Report};
pub use store::{Split, Store};
pub use tasks::{Counters, TaskContext};
