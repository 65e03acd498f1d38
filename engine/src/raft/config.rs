use flotilla_wal::{GroupId, NodeId};

use crate::raft::error::ConfigError;

/// Settings of one Raft core. All durations are in ticks: the runtime decides
/// how long a tick is (the node runtime uses 10 ms).
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id; never 0.
    pub id: NodeId,
    /// The group this core belongs to.
    pub group: GroupId,
    /// Minimum election timeout; each timeout is drawn from
    /// `[election_timeout_ticks, 2 * election_timeout_ticks)`. Default 10.
    pub election_timeout_ticks: u64,
    /// Interval between leader heartbeats. Default 2; must be below the election timeout.
    pub heartbeat_ticks: u64,
    /// How long a leader may serve lease reads after a quorum acknowledged a
    /// heartbeat it sent. Must be below `election_timeout_ticks`; default 8 (leaves
    /// 20% for clock drift between nodes).
    pub lease_ticks: u64,
    /// Ask for pre-votes before starting a real election. Default true.
    pub pre_vote: bool,
    /// Leaders step down without a quorum's contact for an election timeout, and
    /// followers ignore vote requests while they hear from a leader. Default true.
    pub check_quorum: bool,
    /// Most payload bytes in one append message (at least one entry is always sent). Default 1 MiB.
    pub max_append_bytes: u64,
    /// Most unacknowledged append messages per follower. Default 256.
    pub max_inflight_msgs: usize,
    /// Most unacknowledged append bytes per follower. Default 32 MiB.
    pub max_inflight_bytes: u64,
    /// Most bytes of uncommitted entries a leader accepts before refusing
    /// proposals with a retryable error. Default 64 MiB.
    pub max_uncommitted_bytes: u64,
    /// Size of one snapshot chunk asked of the runtime. Default 1 MiB.
    pub snapshot_chunk_bytes: u64,
    /// A learner is promoted only when within this many entries of the leader's last index. Default 1024.
    pub learner_catch_up_entries: u64,
    /// Seed of the core's private random number generator (election jitter).
    pub seed: u64,
}

impl Config {
    /// The documented defaults for node `id` in group `group`.
    pub fn new(id: NodeId, group: GroupId) -> Self {
        Config {
            id,
            group,
            election_timeout_ticks: 10,
            heartbeat_ticks: 2,
            lease_ticks: 8,
            pre_vote: true,
            check_quorum: true,
            max_append_bytes: 1 << 20,
            max_inflight_msgs: 256,
            max_inflight_bytes: 32 << 20,
            max_uncommitted_bytes: 64 << 20,
            snapshot_chunk_bytes: 1 << 20,
            learner_catch_up_entries: 1024,
            seed: 0,
        }
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |why: &str| Err(ConfigError(why.to_string()));
        if self.id == 0 {
            return bad("node id 0 is reserved; use an id of 1 or more");
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_timeout_ticks {
            return bad("heartbeat_ticks must be at least 1 and below election_timeout_ticks");
        }
        if self.lease_ticks >= self.election_timeout_ticks {
            return bad(
                "lease_ticks must be below election_timeout_ticks, or lease reads are unsafe",
            );
        }
        if self.max_inflight_msgs == 0 || self.max_inflight_bytes == 0 {
            return bad("max_inflight_msgs and max_inflight_bytes must be at least 1");
        }
        if self.max_append_bytes == 0
            || self.snapshot_chunk_bytes == 0
            || self.max_uncommitted_bytes == 0
        {
            return bad("max_append_bytes, snapshot_chunk_bytes and max_uncommitted_bytes must be at least 1");
        }
        Ok(())
    }
}
