//! flotilla-engine: the sans-IO Raft core and the deterministic simulator that
//! tests it.
//!
//! The core ([`RaftCore`]) is a deterministic state machine. It takes events —
//! [`tick`](RaftCore::tick), [`step`](RaftCore::step) (a message),
//! [`propose`](RaftCore::propose), [`on_persisted`](RaftCore::on_persisted) —
//! and returns the work to do as a [`Ready`]: state to persist, messages to
//! send, committed entries to apply, confirmed reads, snapshot chunks to read.
//! No clock, randomness source, socket, file or thread lives inside it.
//!
//! A single-node group, driven by hand:
//!
//! ```
//! use flotilla_engine::{Config, RaftCore, RestoreState};
//!
//! let mut core = RaftCore::new(Config::new(1, 7), RestoreState::bootstrap([1])).unwrap();
//! let mut applied = Vec::new();
//! let mut proposed = false;
//! for _ in 0..100 {
//!     core.tick();
//!     if core.is_leader() && !proposed {
//!         core.propose(b"hello".to_vec()).unwrap();
//!         proposed = true;
//!     }
//!     while core.has_ready() {
//!         let ready = core.take_ready();
//!         // A real runtime writes `ready.persist` to its log store and syncs;
//!         // here "durable" is immediate.
//!         if let Some(request) = ready.persist {
//!             core.on_persisted(request.seq);
//!         }
//!         assert!(ready.messages.is_empty(), "a single node has nobody to talk to");
//!         applied.extend(ready.committed_entries);
//!     }
//! }
//! assert!(applied.iter().any(|e| e.payload == flotilla_wal::EntryPayload::Normal(b"hello".to_vec())));
//! ```
//!
//! The [`sim`] module runs many cores against a simulated network and disk
//! from one seed and checks Raft's safety properties after every step.

mod codec;
pub mod group;
pub mod kv;
#[cfg(feature = "runtime")]
pub mod node;
mod raft;
pub mod sim;

pub use codec::{decode_message, encode_message, CodecError, WIRE_VERSION};
pub use flotilla_wal::{Entry, EntryPayload, GroupId, HardState, Index, Membership, NodeId, Term};
pub use raft::config::Config;
pub use raft::core::{RaftCore, RestoreState, Role};
pub use raft::error::{CompactError, ConfigError, ProposeError};
pub use raft::membership::MembershipChange;
pub use raft::message::{AppendResponse, Message, MessageBody, SnapshotMeta};
pub use raft::progress::ReplicationState;
pub use raft::ready::{
    PersistRequest, ReadState, Ready, SnapshotChunk, SnapshotChunkRequest, StagedChunk,
};
pub use raft::rng::SplitMix64;
pub use raft::status::{PeerStatus, Status};
pub use raft::step::RefusedMessage;
pub use raft::validate::MAX_TERM_OR_INDEX;

impl RaftCore {
    /// True if this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.role() == Role::Leader
    }
}
