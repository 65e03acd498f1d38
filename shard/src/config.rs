//! One numbered assignment of shards to replica groups.

use std::collections::BTreeMap;

use flotilla_wal::{GroupId, NodeId};
use serde::{Deserialize, Serialize};

/// A shard's number, `0..shard count`.
pub type ShardId = u16;

/// The group of a shard no group holds (before the first Join, after the
/// last Leave). No replica group may use this id.
pub const NO_GROUP: GroupId = 0;

/// The most shards a store may have.
pub const MAX_SHARDS: usize = 4096;

/// Configuration number `num`: the group of every shard and the nodes of
/// every group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardConfig {
    /// Numbered from 0 (no groups, every shard on [`NO_GROUP`]), one up for
    /// every Join, Leave and Move applied.
    pub num: u64,
    /// The group of each shard, indexed by shard.
    pub shards: Vec<GroupId>,
    /// Each group's nodes, in the order the Join named them.
    pub groups: BTreeMap<GroupId, Vec<NodeId>>,
}

impl ShardConfig {
    /// Configuration 0 of a store with `shards` shards.
    pub fn initial(shards: usize) -> Self {
        ShardConfig {
            num: 0,
            shards: vec![NO_GROUP; shards],
            groups: BTreeMap::new(),
        }
    }

    /// The shards `group` holds, in order.
    pub fn shards_of(&self, group: GroupId) -> Vec<ShardId> {
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, g)| **g == group)
            .map(|(shard, _)| shard as ShardId)
            .collect()
    }

    /// How many shards each group holds (groups holding none included).
    pub fn shard_counts(&self) -> BTreeMap<GroupId, usize> {
        let mut counts: BTreeMap<GroupId, usize> = self.groups.keys().map(|&g| (g, 0)).collect();
        for group in &self.shards {
            if let Some(count) = counts.get_mut(group) {
                *count += 1;
            }
        }
        counts
    }
}
