//! One Raft group as a node hosts it, without IO: [`GroupDriver`] (the
//! core, a [`StateMachine`], the callers waiting on them), the key/value
//! machine over stored data ([`KvApplier`]), and what callers ask and get
//! back. The node runtime (`node`, feature `runtime`) runs a driver per
//! group against RocksDB and QUIC; the simulator (`sim`) runs the same
//! driver against its simulated disk and network.

mod applier;
mod driver;
mod machine;
mod request;

pub use applier::KvApplier;
pub use driver::GroupDriver;
pub use machine::{applied_after, check_reloaded, stored_applied, StateMachine, StoredMachine};
pub use request::{GroupStatus, NodeError, ReadConsistency, Replier};
