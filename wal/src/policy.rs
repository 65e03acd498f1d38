//! When to compact a group's log: the `max_raft_state` rule of the lab, by
//! bytes and by entries.
//!
//! Once the log holds `max_raft_state_bytes` (or `max_log_entries`), it is
//! compacted up to the index the state machine has made **durable** — never
//! further, since entries after it are the only record of what is not yet
//! in the data. Between two checks the log grows by at most what the leader
//! lets through (its uncommitted-bytes limit) plus the apply lag, so with
//! checks after every apply the persisted Raft state stays within a small
//! multiple of the threshold; the tests hold it to 8×.

use crate::Index;

/// The thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Compact once the log's entries count this many bytes
    /// ([`crate::Entry::size_bytes`]). Default 64 MiB.
    pub max_raft_state_bytes: u64,
    /// Compact once the log holds this many entries. Default 100,000 (as
    /// etcd's snapshot count): each snapshot reads the whole data, so
    /// taking them often costs more than the log they free.
    pub max_log_entries: u64,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        CompactionPolicy {
            max_raft_state_bytes: 64 << 20,
            max_log_entries: 100_000,
        }
    }
}

/// A log's size, as the policy sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogSize {
    /// Bytes of the entries held.
    pub bytes: u64,
    /// Index the log starts after.
    pub snapshot_index: Index,
    /// Last index held.
    pub last_index: Index,
}

impl CompactionPolicy {
    /// The index to compact to now, if any: `durable_applied` once a
    /// threshold is reached and compaction would drop something.
    pub fn compact_to(&self, log: LogSize, durable_applied: Index) -> Option<Index> {
        let entries = log.last_index.saturating_sub(log.snapshot_index);
        let over = log.bytes >= self.max_raft_state_bytes || entries >= self.max_log_entries;
        let to = durable_applied.min(log.last_index);
        (over && to > log.snapshot_index).then_some(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: CompactionPolicy = CompactionPolicy {
        max_raft_state_bytes: 1000,
        max_log_entries: 50,
    };

    fn log(bytes: u64, snapshot_index: Index, last_index: Index) -> LogSize {
        LogSize {
            bytes,
            snapshot_index,
            last_index,
        }
    }

    #[test]
    fn compacts_to_the_durable_applied_index_once_over_a_threshold() {
        assert_eq!(POLICY.compact_to(log(999, 0, 10), 10), None, "under both");
        assert_eq!(POLICY.compact_to(log(1000, 0, 10), 7), Some(7), "bytes");
        assert_eq!(POLICY.compact_to(log(10, 0, 50), 30), Some(30), "entries");
    }

    #[test]
    fn never_past_what_is_durable_nor_behind_the_snapshot() {
        assert_eq!(
            POLICY.compact_to(log(5000, 20, 40), 20),
            None,
            "nothing new applied"
        );
        assert_eq!(
            POLICY.compact_to(log(5000, 20, 40), 15),
            None,
            "applied behind"
        );
        assert_eq!(
            POLICY.compact_to(log(5000, 20, 40), 99),
            Some(40),
            "capped at the log"
        );
    }
}
