use flotilla_wal::{Entry, HardState, Index, NodeId, Term};

use crate::raft::message::{Message, SnapshotMeta};

/// Everything the runtime must do after feeding the core events: persist, send,
/// apply, answer reads and fetch snapshot chunks. Take it with
/// [`RaftCore::take_ready`](crate::RaftCore::take_ready).
#[derive(Debug, Default)]
pub struct Ready {
    /// State to make durable, in order, then report with `on_persisted(seq)`.
    pub persist: Option<PersistRequest>,
    /// Messages safe to send now.
    pub messages: Vec<Message>,
    /// Committed and locally durable entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// ReadIndex reads whose index is now confirmed.
    pub read_states: Vec<ReadState>,
    /// Snapshot chunks the core wants to send: read each and hand it back with
    /// `on_snapshot_chunk`, or report `on_snapshot_unavailable`.
    pub snapshot_reads: Vec<SnapshotChunkRequest>,
}

impl Ready {
    /// True if there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.persist.is_none()
            && self.messages.is_empty()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
            && self.snapshot_reads.is_empty()
    }
}

/// One unit of durable work. The runtime carries the parts out in this order:
/// stage the snapshot chunks, install the snapshot (replacing log and state
/// machine atomically), apply the compaction, truncate the log at the first
/// entry's index and append `entries`, write `hard_state`; then sync.
#[derive(Debug, Default, Clone)]
pub struct PersistRequest {
    /// Sequence number to report back through `on_persisted`.
    pub seq: u64,
    /// New hard state, if it changed.
    pub hard_state: Option<HardState>,
    /// Received snapshot chunks to stage durably, in order.
    pub stage_chunks: Vec<StagedChunk>,
    /// Install the fully staged snapshot: discard the log, load the state machine.
    pub install_snapshot: Option<SnapshotMeta>,
    /// The application made a snapshot at this point: drop log entries up to it.
    pub compact: Option<SnapshotMeta>,
    /// Entries to write after truncating the log from `entries[0].index`.
    pub entries: Vec<Entry>,
}

impl PersistRequest {
    /// True if the request carries no work.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none()
            && self.stage_chunks.is_empty()
            && self.install_snapshot.is_none()
            && self.compact.is_none()
            && self.entries.is_empty()
    }
}

/// A received snapshot chunk to stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedChunk {
    /// Which snapshot the chunk belongs to; a different one discards what was staged.
    pub meta: SnapshotMeta,
    /// Byte offset of the chunk.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// A confirmed read: once the state machine has applied `index`, reads issued
/// with `ctx` may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's context passed to `read_index`.
    pub ctx: u64,
    /// The commit index the read must wait for.
    pub index: Index,
}

/// A request to read one chunk of the local snapshot for a follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunkRequest {
    /// The follower.
    pub to: NodeId,
    /// The snapshot to read from.
    pub meta: SnapshotMeta,
    /// Byte offset to read from.
    pub offset: u64,
    /// Most bytes to read.
    pub max_bytes: u64,
}

/// A snapshot chunk the runtime read for a follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// Index of the snapshot read from.
    pub snapshot_index: Index,
    /// Term of the snapshot read from.
    pub snapshot_term: Term,
    /// Offset of `data`.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
    /// True if this chunk ends the snapshot.
    pub done: bool,
}
