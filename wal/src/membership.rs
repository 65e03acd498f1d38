use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// A group's membership: voters, the outgoing voters while in joint consensus,
/// and learners (which replicate but neither vote nor count for commit).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The voters of the (incoming) configuration.
    pub voters: BTreeSet<NodeId>,
    /// The voters of the old configuration while the group is in joint consensus;
    /// empty otherwise. Decisions then need a majority of both sets.
    pub outgoing: BTreeSet<NodeId>,
    /// Non-voting members.
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    /// A plain (non-joint) configuration with the given voters and no learners.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership {
            voters: voters.into_iter().collect(),
            ..Membership::default()
        }
    }

    /// True while in joint consensus.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// True if `id` votes in either half of the configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing.contains(&id)
    }

    /// True if `id` is a learner and not a voter.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id) && !self.is_voter(id)
    }

    /// Every member: voters of both halves and learners, in ascending order.
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.voters
            .iter()
            .chain(&self.outgoing)
            .chain(&self.learners)
            .copied()
            .collect()
    }

    /// How many distinct nodes the configuration names.
    pub fn node_count(&self) -> usize {
        self.members().len()
    }

    /// True if the votes (or acknowledgements) in `granted` form a quorum: a
    /// majority of `voters`, and of `outgoing` too while joint.
    pub fn has_quorum(&self, granted: impl Fn(NodeId) -> bool) -> bool {
        majority_of(&self.voters, &granted)
            && (self.outgoing.is_empty() || majority_of(&self.outgoing, &granted))
    }

    /// True if the rejections in `rejected` make a quorum impossible.
    pub fn quorum_impossible(&self, rejected: impl Fn(NodeId) -> bool) -> bool {
        let blocks = |set: &BTreeSet<NodeId>| {
            !set.is_empty() && set.iter().filter(|id| rejected(**id)).count() * 2 >= set.len()
        };
        blocks(&self.voters) || blocks(&self.outgoing)
    }

    /// The highest index acknowledged by a quorum, given each voter's matched index.
    pub fn committed_index(&self, matched: impl Fn(NodeId) -> u64) -> u64 {
        let incoming = majority_index(&self.voters, &matched);
        if self.outgoing.is_empty() {
            incoming
        } else {
            incoming.min(majority_index(&self.outgoing, &matched))
        }
    }
}

fn majority_of(set: &BTreeSet<NodeId>, granted: &impl Fn(NodeId) -> bool) -> bool {
    set.iter().filter(|id| granted(**id)).count() > set.len() / 2
}

/// The largest index that more than half of `set` have reached. An empty set
/// imposes no constraint.
fn majority_index(set: &BTreeSet<NodeId>, matched: &impl Fn(NodeId) -> u64) -> u64 {
    if set.is_empty() {
        return u64::MAX;
    }
    let mut indexes: Vec<u64> = set.iter().map(|id| matched(*id)).collect();
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    indexes[set.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joint_quorum_needs_both_majorities() {
        let m = Membership {
            voters: [1, 2, 3].into(),
            outgoing: [3, 4, 5].into(),
            learners: BTreeSet::new(),
        };
        assert!(!m.has_quorum(|id| [1, 2].contains(&id)));
        assert!(m.has_quorum(|id| [1, 3, 4].contains(&id)));
        assert_eq!(m.committed_index(|id| [0, 9, 8, 7, 2, 1][id as usize]), 2);
    }

    #[test]
    fn majority_index_of_five() {
        let m = Membership::with_voters([1, 2, 3, 4, 5]);
        assert_eq!(m.committed_index(|id| [0, 10, 9, 3, 2, 1][id as usize]), 3);
        assert!(m.quorum_impossible(|id| id >= 3));
        assert!(!m.quorum_impossible(|id| id >= 4));
    }
}
