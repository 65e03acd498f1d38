//! The sans-IO Raft core. See the crate docs for the driving loop.

pub(crate) mod config;
pub(crate) mod core;
mod election;
pub(crate) mod error;
pub(crate) mod log;
pub(crate) mod membership;
pub(crate) mod message;
pub(crate) mod progress;
pub(crate) mod read;
pub(crate) mod ready;
mod replication;
pub(crate) mod rng;
mod snapshot;
pub(crate) mod status;
pub(crate) mod step;
pub(crate) mod validate;
