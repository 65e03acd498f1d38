//! The key/value state machine every group runs: commands, exactly-once
//! client sessions, and the deterministic apply step.

pub mod command;
pub mod machine;
pub mod sessions;
mod shard_of;

pub use command::{BatchOp, Command, CommandError, WriteOp, WriteReply, MAX_VALUE_BYTES};
pub use machine::{AppliedBatch, CommandReply, KvMachine, KvView, KvWrite};
pub use sessions::{Session, SessionLimits};
pub use shard_of::{PolicyFor, ShardOf, ShardSetup, SingleShard};
