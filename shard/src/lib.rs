//! flotilla-shard: which replica group holds which shard, and the shard
//! controller that decides it.
//!
//! Keys hash to a fixed number of shards; a [`ShardConfig`] maps every shard
//! to a replica group (a Raft group of its own) and names each group's
//! nodes. The controller is itself a Raft group whose state machine
//! ([`Controller`]) applies Join, Leave and Move and keeps every
//! configuration it ever made, numbered from 0, so any of them can be
//! queried. It runs on the same group driver as every data group, on a node
//! and in the deterministic simulator alike.

mod config;
pub mod controller;
mod policy;
mod rebalance;

pub use config::{ShardConfig, ShardId, MAX_SHARDS, NO_GROUP};
pub use controller::{
    sim_loader, Controller, ControllerCommand, ControllerError, ControllerOp, ControllerReply,
    Query, SimController,
};
pub use policy::{BadShardCount, ShardPolicy, DEFAULT_SHARDS, LEGACY_SHARDS};
pub use rebalance::rebalance;
