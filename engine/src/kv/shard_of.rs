//! Which shard a user key is stored under.

use std::sync::Arc;

/// The store's shard policy as the key/value machine sees it. The policy
/// (hash and count, fixed when the store is created) is
/// `flotilla_shard::ShardPolicy`, handed to the machine by whoever builds
/// it; the engine only stores each key under the shard it is told, as
/// `shard ‖ key` (`keys::shard_key`), so a shard is one contiguous range.
pub trait ShardOf: Send + Sync + std::fmt::Debug {
    /// The shard of `key`.
    fn shard_of(&self, key: &[u8]) -> u16;

    /// How many shards there are (shards are `0..count`).
    fn count(&self) -> u16;

    /// `key` as stored in its group's data: `shard ‖ key`.
    fn inner_key(&self, key: &[u8]) -> Vec<u8> {
        flotilla_wal::keys::shard_key(self.shard_of(key), key)
    }
}

/// Every key in shard 0: the policy of the engine's own tests and of the
/// simulator's client scenarios, where shards play no part.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleShard;

impl ShardOf for SingleShard {
    fn shard_of(&self, _key: &[u8]) -> u16 {
        0
    }

    fn count(&self) -> u16 {
        1
    }
}

/// The policy of a store with this stored shard count (`None`: a store
/// created before counts were stored), or why there is none.
pub type PolicyFor = fn(Option<u16>) -> Result<Arc<dyn ShardOf>, String>;

/// How a node learns its store's shard policy, which is fixed when the
/// store is created: the count to store if opening creates the store, and
/// the policy a stored count stands for (`None`: a store created before
/// counts were stored). `flotilla_shard::ShardPolicy::setup` makes one.
#[derive(Clone, Copy, Debug)]
pub struct ShardSetup {
    /// Stored in a store this open creates.
    pub create_with: u16,
    /// The policy of a store with this stored count.
    pub policy: PolicyFor,
}
