//! Dividing the shards among the groups after a Join or a Leave.

use std::collections::BTreeMap;

use flotilla_wal::GroupId;

use crate::config::NO_GROUP;

/// Gives every shard a group of `groups`, moving as few shards as possible,
/// so that the groups' counts differ by at most one. Deterministic: the
/// same input gives the same output on every replica.
///
/// Each group's target is `shards / groups`, and the `shards % groups`
/// groups holding the most (ties to the lower id) get one more, so no
/// group that holds enough gives anything up. Shards of a group not in
/// `groups` (and unassigned ones) and each group's shards above its target
/// (its highest-numbered ones) are freed, then handed, lowest shard first,
/// to the groups below their targets, lowest id first. Every shard moved is
/// one that had to move, so the count is the least possible. With no
/// groups, every shard goes to [`NO_GROUP`].
pub fn rebalance(shards: &mut [GroupId], groups: &[GroupId]) {
    if groups.is_empty() {
        shards.fill(NO_GROUP);
        return;
    }
    let mut held: BTreeMap<GroupId, Vec<usize>> = groups.iter().map(|&g| (g, Vec::new())).collect();
    let mut free = Vec::new();
    for (shard, group) in shards.iter().enumerate() {
        match held.get_mut(group) {
            Some(list) => list.push(shard),
            None => free.push(shard),
        }
    }
    let mut by_holding: Vec<(GroupId, usize)> = held.iter().map(|(&g, s)| (g, s.len())).collect();
    by_holding.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let base = shards.len() / groups.len();
    let extra = shards.len() % groups.len();
    let target: BTreeMap<GroupId, usize> = by_holding
        .iter()
        .enumerate()
        .map(|(rank, &(g, _))| (g, base + usize::from(rank < extra)))
        .collect();
    for (group, list) in &mut held {
        while list.len() > target[group] {
            if let Some(shard) = list.pop() {
                free.push(shard);
            }
        }
    }
    free.sort_unstable();
    let mut free = free.into_iter();
    for (group, list) in &held {
        for _ in list.len()..target[group] {
            if let Some(shard) = free.next() {
                shards[shard] = *group;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(shards: &[GroupId]) -> BTreeMap<GroupId, usize> {
        let mut counts = BTreeMap::new();
        for g in shards {
            *counts.entry(*g).or_insert(0) += 1;
        }
        counts
    }

    /// The fewest shards any balanced assignment must move: every shard
    /// not kept. A group keeps at most `base` of its shards, or `base + 1`
    /// if it is one of the `extra` groups allowed one more, best given to
    /// those holding the most.
    fn fewest_moves(shards: &[GroupId], groups: &[GroupId]) -> usize {
        let base = shards.len() / groups.len();
        let extra = shards.len() % groups.len();
        let mut held: Vec<usize> = groups
            .iter()
            .map(|g| shards.iter().filter(|s| *s == g).count())
            .collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        let kept: usize = held
            .iter()
            .enumerate()
            .map(|(rank, &h)| h.min(base + usize::from(rank < extra)))
            .sum();
        shards.len() - kept
    }

    #[test]
    fn random_joins_and_leaves_move_the_fewest_shards_possible() {
        let mut rng = flotilla_engine::SplitMix64::new(3);
        for _ in 0..2_000 {
            let count = rng.range(1, 40) as usize;
            let mut shards: Vec<GroupId> = (0..count).map(|_| rng.range(0, 8)).collect();
            let groups: Vec<GroupId> = (1..=8).filter(|_| rng.chance(0.6)).collect();
            if groups.is_empty() {
                continue;
            }
            let before = shards.clone();
            rebalance(&mut shards, &groups);
            let moved = before.iter().zip(&shards).filter(|(a, b)| a != b).count();
            assert_eq!(
                moved,
                fewest_moves(&before, &groups),
                "{before:?} -> {shards:?} over {groups:?}"
            );
            let counts = counts(&shards);
            assert!(shards.iter().all(|g| groups.contains(g)), "{shards:?}");
            let (min, max) = groups
                .iter()
                .map(|g| counts.get(g).copied().unwrap_or(0))
                .fold((usize::MAX, 0), |(lo, hi), c| (lo.min(c), hi.max(c)));
            assert!(max <= min + 1, "{shards:?} over {groups:?}");
        }
    }

    #[test]
    fn joins_and_leaves_balance_within_one_and_move_only_what_must() {
        let mut shards = vec![NO_GROUP; 10];
        rebalance(&mut shards, &[1]);
        assert_eq!(shards, vec![1; 10]);
        let before = shards.clone();
        rebalance(&mut shards, &[1, 2, 3]);
        assert_eq!(
            counts(&shards).values().copied().collect::<Vec<_>>(),
            vec![4, 3, 3]
        );
        // Only the shards group 1 gave up moved.
        let moved = before.iter().zip(&shards).filter(|(a, b)| a != b).count();
        assert_eq!(moved, 6);
        let before = shards.clone();
        rebalance(&mut shards, &[1, 3]);
        let moved = before.iter().zip(&shards).filter(|(a, b)| a != b).count();
        assert_eq!(
            moved, 3,
            "only group 2's shards move: {before:?} -> {shards:?}"
        );
        assert_eq!(
            counts(&shards).values().copied().collect::<Vec<_>>(),
            vec![5, 5]
        );
        // More groups than shards: one each, and nobody gives up a shard
        // to a group that has none.
        let mut few = vec![1, 2, 3];
        rebalance(&mut few, &[1, 2, 3, 4, 5]);
        assert_eq!(few, vec![1, 2, 3]);
        rebalance(&mut few, &[]);
        assert_eq!(few, vec![NO_GROUP; 3]);
    }
}
