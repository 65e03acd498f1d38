//! A deterministic cluster simulator for the Raft core.
//!
//! One `u64` seed decides everything: message drops, delays, duplicates and
//! reordering, partitions (including one-way and ring), disk sync timing, crash
//! points and client load. The same seed always produces the same
//! [`Cluster::trace_hash`]. After every step the [`checker`] verifies election
//! safety, log matching, leader completeness and state machine safety.
//!
//! The simulated disk ([`SimDisk`]) keeps what a persist request wrote only once
//! its simulated sync completes; a crash discards everything not yet synced.

pub mod checker;
mod cluster;
mod disk;
mod fnv;
pub mod kv;
pub mod lab;
pub mod linearizability;
mod network;
mod node;
pub mod regression;
pub mod scenario;

pub use cluster::{Cluster, ClusterOptions, STEPS_PER_TICK};
pub use disk::SimDisk;
pub use fnv::Fnv64;
pub use network::{LinkFaults, SimNetwork};
pub use node::{
    kv_loader, Answers, KvMachineOverMemory, MachineLoader, SimDriver, SimMachine, SimNode,
    SimReply, StateMachine,
};
