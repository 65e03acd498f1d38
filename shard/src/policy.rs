//! Which shard a key belongs to, and how many shards a store has.

use std::sync::Arc;

use flotilla_engine::kv::{ShardOf, ShardSetup};

use crate::config::MAX_SHARDS;

/// Shards of a store created without naming a count.
pub const DEFAULT_SHARDS: u16 = 64;

/// Shards of a store created before the count was stored: every such store
/// had 16.
pub const LEGACY_SHARDS: u16 = 16;

/// A store's shard policy: FNV-1a of the key modulo the shard count, so
/// every node and every version agrees. The count is fixed when the store
/// (or cluster) is created and stored in it: a key's shard is part of how it
/// is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardPolicy {
    count: u16,
}

/// A shard count outside `1..=4096`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a store has 1 to {MAX_SHARDS} shards, not {0}")]
pub struct BadShardCount(pub u64);

impl ShardPolicy {
    /// `count` shards, if `count` is in `1..=4096`.
    pub fn new(count: u64) -> Result<Self, BadShardCount> {
        match u16::try_from(count) {
            Ok(n) if (1..=MAX_SHARDS as u64).contains(&count) => Ok(ShardPolicy { count: n }),
            _ => Err(BadShardCount(count)),
        }
    }

    /// The policy of a store that stored `stored` as its count (`None`: a
    /// store from before the count was stored, [`LEGACY_SHARDS`]).
    pub fn stored(stored: Option<u16>) -> Result<Self, BadShardCount> {
        ShardPolicy::new(u64::from(stored.unwrap_or(LEGACY_SHARDS)))
    }

    /// How many shards.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// The shard of `key`.
    pub fn shard(&self, key: &[u8]) -> u16 {
        let mut hash: u32 = 0x811c_9dc5;
        for byte in key {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        (hash % u32::from(self.count)) as u16
    }
}

impl Default for ShardPolicy {
    fn default() -> Self {
        ShardPolicy {
            count: DEFAULT_SHARDS,
        }
    }
}

impl ShardOf for ShardPolicy {
    fn shard_of(&self, key: &[u8]) -> u16 {
        self.shard(key)
    }

    fn count(&self) -> u16 {
        self.count
    }
}

impl ShardPolicy {
    /// How a node opens a store with this policy: it creates a new store
    /// with this count, and runs an existing one with the count it stored.
    /// (Whether that count is the one asked for is the opener's check: an
    /// unnamed count takes the store's.)
    pub fn setup(&self) -> ShardSetup {
        ShardSetup {
            create_with: self.count,
            policy: |stored| {
                ShardPolicy::stored(stored)
                    .map(|policy| Arc::new(policy) as Arc<dyn ShardOf>)
                    .map_err(|e| format!("the store's shard count: {e}"))
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn counts_outside_the_range_are_refused_and_keys_spread_over_every_shard() {
        for bad in [0, 4097, u64::from(u16::MAX) + 1] {
            assert_eq!(ShardPolicy::new(bad), Err(BadShardCount(bad)));
        }
        assert_eq!(ShardPolicy::stored(None).unwrap().count(), LEGACY_SHARDS);
        assert_eq!(ShardPolicy::default().count(), 64);
        for count in [1u16, 16, 64, 4096] {
            let policy = ShardPolicy::new(u64::from(count)).unwrap();
            let mut seen = vec![0u32; usize::from(count)];
            for i in 0..u32::from(count) * 50 {
                seen[usize::from(policy.shard(format!("key{i}").as_bytes()))] += 1;
            }
            assert!(seen.iter().all(|&n| n > 0), "{count} shards: {seen:?}");
        }
        // The hash stores keys where the 16-shard stores before it did.
        let legacy = ShardPolicy::stored(None).unwrap();
        assert_eq!(legacy.shard(b""), (0x811c_9dc5u32 % 16) as u16);
        assert_eq!(
            legacy.shard(b"a"),
            ((0x811c_9dc5u32 ^ 97).wrapping_mul(0x0100_0193) % 16) as u16
        );
    }
}
