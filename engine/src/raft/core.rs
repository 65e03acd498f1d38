//! The Raft core: state, the event entry points and the persistence pipeline.
//! Election, replication, reads, membership and snapshots live in sibling
//! modules as further `impl RaftCore` blocks.

use std::collections::{BTreeMap, VecDeque};

use flotilla_wal::{Entry, HardState, Index, Membership, NodeId, Term};

use crate::raft::config::Config;
use crate::raft::error::ConfigError;
use crate::raft::log::RaftLog;
use crate::raft::message::{Message, MessageBody, SnapshotMeta};
use crate::raft::progress::Progress;
use crate::raft::read::LeaderReads;
use crate::raft::ready::{PersistRequest, ReadState, Ready, SnapshotChunkRequest, StagedChunk};
use crate::raft::rng::SplitMix64;
use crate::raft::status::{PeerStatus, Status};

/// A node's role in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking for pre-votes; its term has not changed.
    PreCandidate,
    /// Campaigning in its current term.
    Candidate,
    /// Leads the group.
    Leader,
}

/// What a core starts from: the durable state the log store recovered.
#[derive(Clone, Debug, Default)]
pub struct RestoreState {
    /// Term, vote and commit.
    pub hard_state: HardState,
    /// The latest snapshot (index 0 with the initial membership for a new group).
    pub snapshot: SnapshotMeta,
    /// Log entries after the snapshot, in order.
    pub entries: Vec<Entry>,
    /// The index the state machine has applied (at least the snapshot's).
    pub applied: Index,
    /// A partly staged incoming snapshot and how many bytes of it are staged.
    pub staged: Option<(SnapshotMeta, u64)>,
}

impl RestoreState {
    /// A brand-new group whose initial voters are `voters`.
    pub fn bootstrap(voters: impl IntoIterator<Item = NodeId>) -> Self {
        RestoreState {
            snapshot: SnapshotMeta {
                membership: Membership::with_voters(voters),
                ..SnapshotMeta::default()
            },
            ..RestoreState::default()
        }
    }
}

/// State changed since the last `take_ready` that must be made durable.
#[derive(Default)]
pub(crate) struct Unstable {
    pub(crate) hard_state: bool,
    pub(crate) entries_from: Option<Index>,
    pub(crate) stage_chunks: Vec<StagedChunk>,
    pub(crate) install_snapshot: Option<SnapshotMeta>,
    pub(crate) compact: Option<SnapshotMeta>,
}

impl Unstable {
    fn is_dirty(&self) -> bool {
        self.hard_state
            || self.entries_from.is_some()
            || !self.stage_chunks.is_empty()
            || self.install_snapshot.is_some()
            || self.compact.is_some()
    }
}

/// A persist request handed out and not yet reported durable.
struct Issued {
    seq: u64,
    /// The log's last index once this request is durable, if it touches the log.
    last_index: Option<Index>,
    installs: Option<Index>,
}

/// The sans-IO Raft state machine of one node in one group.
///
/// Feed it events ([`tick`](Self::tick), [`step`](Self::step),
/// [`propose`](Self::propose), [`on_persisted`](Self::on_persisted), ...) and
/// carry out what [`take_ready`](Self::take_ready) returns. It never blocks,
/// reads a clock, draws from the OS for randomness or touches IO.
pub struct RaftCore {
    pub(crate) cfg: Config,
    pub(crate) rng: SplitMix64,
    pub(crate) term: Term,
    pub(crate) vote: NodeId,
    pub(crate) role: Role,
    pub(crate) leader: NodeId,
    pub(crate) log: RaftLog,
    /// Last entry handed out for applying.
    pub(crate) applied: Index,
    /// Last log index known durable locally.
    pub(crate) persisted_index: Index,
    pub(crate) unstable: Unstable,
    next_seq: u64,
    persisted_seq: u64,
    issued: VecDeque<Issued>,
    /// Responses waiting for the persist request of the given seq.
    held: VecDeque<(u64, Message)>,
    pub(crate) outbox: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    pub(crate) snapshot_reads: Vec<SnapshotChunkRequest>,
    /// Ticks since start; only differences matter.
    pub(crate) ticks: u64,
    pub(crate) election_elapsed: u64,
    pub(crate) heartbeat_elapsed: u64,
    pub(crate) randomized_election_timeout: u64,
    pub(crate) votes: BTreeMap<NodeId, bool>,
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    pub(crate) uncommitted_bytes: u64,
    /// Leadership transfer target and ticks spent on it.
    pub(crate) transfer: Option<(NodeId, u64)>,
    pub(crate) reads: LeaderReads,
    /// An incoming snapshot being staged, and the next offset wanted.
    pub(crate) staging: Option<(SnapshotMeta, u64)>,
    /// Proposals were appended since the last `take_ready`: send appends then.
    pub(crate) append_wanted: bool,
}

impl RaftCore {
    /// Builds a core from recovered durable state.
    pub fn new(cfg: Config, restore: RestoreState) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let applied = restore.applied.max(restore.snapshot.index);
        let log = RaftLog::new(
            restore.snapshot,
            restore.entries,
            restore.hard_state.commit.max(applied),
        );
        if applied > log.last_index() {
            return Err(ConfigError(format!(
                "applied index {applied} is beyond the recovered log's last index {}",
                log.last_index()
            )));
        }
        let mut core = RaftCore {
            rng: SplitMix64::derive(&[cfg.seed, cfg.id, cfg.group]),
            term: restore.hard_state.term,
            vote: restore.hard_state.vote,
            role: Role::Follower,
            leader: 0,
            persisted_index: log.last_index(),
            log,
            applied,
            unstable: Unstable::default(),
            next_seq: 1,
            persisted_seq: 0,
            issued: VecDeque::new(),
            held: VecDeque::new(),
            outbox: Vec::new(),
            read_states: Vec::new(),
            snapshot_reads: Vec::new(),
            ticks: 0,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: 0,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            uncommitted_bytes: 0,
            transfer: None,
            reads: LeaderReads::default(),
            staging: restore.staged,
            append_wanted: false,
            cfg,
        };
        core.reset_election_timer();
        Ok(core)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The leader this node knows of, 0 if none.
    pub fn leader(&self) -> NodeId {
        self.leader
    }

    /// Highest committed index known here.
    pub fn commit_index(&self) -> Index {
        self.log.committed
    }

    /// Index of the last log entry.
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }

    /// The term of the entry at `index`, if the log (or its snapshot point) has it.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.log.term(index)
    }

    /// The entry at `index`, if it is held in memory.
    pub fn entry_at(&self, index: Index) -> Option<&Entry> {
        self.log.entry(index)
    }

    /// The membership in force (the latest appended configuration).
    pub fn membership(&self) -> &Membership {
        self.log.membership().1
    }

    /// The snapshot the log starts after.
    pub fn snapshot_meta(&self) -> &SnapshotMeta {
        self.log.snapshot()
    }

    /// Entries currently held in memory after the snapshot, in order (for inspection).
    pub fn log_entries(&self) -> Vec<Entry> {
        self.log
            .slice(self.log.first_index(), self.log.last_index(), u64::MAX)
    }

    /// Role, term, indexes and per-peer replication state.
    pub fn status(&self) -> Status {
        Status {
            id: self.cfg.id,
            group: self.cfg.group,
            role: self.role,
            term: self.term,
            leader: self.leader,
            commit_index: self.log.committed,
            applied_index: self.applied,
            persisted_index: self.persisted_index,
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            snapshot_index: self.log.snapshot().index,
            log_entries: self.log.entry_count(),
            membership: self.membership().clone(),
            uncommitted_bytes: self.uncommitted_bytes,
            peers: self
                .progress
                .iter()
                .filter(|(id, _)| **id != self.cfg.id)
                .map(|(id, pr)| PeerStatus {
                    id: *id,
                    match_index: pr.match_index,
                    next_index: pr.next_index,
                    state: pr.state.clone(),
                    inflight_msgs: pr.inflight.count(),
                    inflight_bytes: pr.inflight.bytes(),
                })
                .collect(),
        }
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
    }

    /// Records that `ticks` ticks of time passed without being delivered
    /// (the runtime's loop stalled). Leases count them, so a leader does not
    /// serve lease reads on a lease that ran out in real time during the
    /// stall; election and heartbeat timers do not, so a stall is not
    /// replayed as a burst of elections and heartbeats.
    pub fn skip_ticks(&mut self, ticks: u64) {
        self.ticks = self.ticks.saturating_add(ticks);
    }

    /// True if `take_ready` would return work.
    pub fn has_ready(&self) -> bool {
        self.unstable.is_dirty()
            || !self.outbox.is_empty()
            || !self.read_states.is_empty()
            || !self.snapshot_reads.is_empty()
            || self.reads.round_wanted
            || self.append_wanted
            || (self.applied < self.apply_limit() && self.log.entry(self.applied + 1).is_some())
    }

    /// Hands out what the runtime must do now.
    pub fn take_ready(&mut self) -> Ready {
        if std::mem::take(&mut self.append_wanted) && self.role == Role::Leader {
            self.broadcast_new_entries();
        }
        if self.role == Role::Leader && self.reads.round_wanted {
            self.broadcast_heartbeat();
        }
        let persist = self.take_persist_request();
        let committed_entries = self.take_committed_entries();
        Ready {
            persist,
            messages: std::mem::take(&mut self.outbox),
            committed_entries,
            read_states: std::mem::take(&mut self.read_states),
            snapshot_reads: std::mem::take(&mut self.snapshot_reads),
        }
    }

    /// Reports that every persist request up to `seq` is durable.
    pub fn on_persisted(&mut self, seq: u64) {
        if seq <= self.persisted_seq || seq >= self.next_seq {
            return;
        }
        self.persisted_seq = seq;
        while self.issued.front().is_some_and(|i| i.seq <= seq) {
            let Some(done) = self.issued.pop_front() else {
                break;
            };
            if let Some(last) = done.last_index {
                self.persisted_index = last;
            }
            if let Some(index) = done.installs {
                self.applied = self.applied.max(index);
            }
        }
        while self
            .held
            .front()
            .is_some_and(|(required, _)| *required <= seq)
        {
            let Some((_, msg)) = self.held.pop_front() else {
                break;
            };
            if msg.to == self.cfg.id {
                self.step_local(msg);
            } else {
                self.outbox.push(msg);
            }
        }
        if self.role == Role::Leader {
            let me = self.cfg.id;
            let persisted = self.persisted_index;
            if let Some(pr) = self.progress.get_mut(&me) {
                pr.update_match(persisted);
            }
            self.maybe_commit();
        }
    }

    /// Queues a message that promises durable state: it leaves only once the
    /// state it reflects has been persisted.
    pub(crate) fn respond(&mut self, msg: Message) {
        let required = if self.unstable.is_dirty() {
            self.next_seq
        } else {
            self.next_seq - 1
        };
        if required <= self.persisted_seq && self.held.is_empty() {
            if msg.to == self.cfg.id {
                self.step_local(msg);
            } else {
                self.outbox.push(msg);
            }
        } else {
            self.held.push_back((required, msg));
        }
    }

    /// Queues a message that needs no durability.
    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        let msg = self.message(to, body);
        self.outbox.push(msg);
    }

    pub(crate) fn message(&self, to: NodeId, body: MessageBody) -> Message {
        Message {
            group: self.cfg.group,
            from: self.cfg.id,
            to,
            term: self.term,
            body,
        }
    }

    pub(crate) fn set_hard_state(&mut self, term: Term, vote: NodeId) {
        if term != self.term || vote != self.vote {
            self.term = term;
            self.vote = vote;
            self.unstable.hard_state = true;
        }
    }

    /// Appends entries to the in-memory log and schedules them for persistence.
    pub(crate) fn append_entries(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first().map(|e| e.index) else {
            return;
        };
        if first <= self.log.last_index() {
            self.forget_persisted_from(first);
        }
        self.log.append(entries);
        self.unstable.entries_from =
            Some(self.unstable.entries_from.map_or(first, |f| f.min(first)));
    }

    /// Entries from `index` on are being replaced: what was persisted of them no longer counts.
    fn forget_persisted_from(&mut self, index: Index) {
        let keep = index - 1;
        self.persisted_index = self.persisted_index.min(keep);
        for issued in &mut self.issued {
            if let Some(last) = issued.last_index.as_mut() {
                *last = (*last).min(keep);
            }
        }
    }

    /// Replaces the log with an installed snapshot (follower side).
    pub(crate) fn restore_snapshot(&mut self, meta: SnapshotMeta) {
        self.forget_persisted_from(meta.index + 1);
        self.unstable.entries_from = None;
        self.unstable.install_snapshot = Some(meta.clone());
        self.log.restore(meta);
    }

    fn take_persist_request(&mut self) -> Option<PersistRequest> {
        if !self.unstable.is_dirty() {
            return None;
        }
        let unstable = std::mem::take(&mut self.unstable);
        let entries = match unstable.entries_from {
            Some(from) => self.log.slice(
                from.max(self.log.first_index()),
                self.log.last_index(),
                u64::MAX,
            ),
            None => Vec::new(),
        };
        let touches_log = unstable.entries_from.is_some() || unstable.install_snapshot.is_some();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.issued.push_back(Issued {
            seq,
            last_index: touches_log.then(|| self.log.last_index()),
            installs: unstable.install_snapshot.as_ref().map(|m| m.index),
        });
        Some(PersistRequest {
            seq,
            hard_state: unstable.hard_state.then(|| self.hard_state()),
            stage_chunks: unstable.stage_chunks,
            install_snapshot: unstable.install_snapshot,
            compact: unstable.compact,
            entries,
        })
    }

    /// Term, vote and the commit index as of now.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    fn apply_limit(&self) -> Index {
        if self.applied < self.log.snapshot().index {
            // An installed snapshot is not durable yet; nothing in the log follows from it.
            return self.applied;
        }
        self.log.committed.min(self.persisted_index)
    }

    fn take_committed_entries(&mut self) -> Vec<Entry> {
        let limit = self.apply_limit();
        if self.applied >= limit {
            return Vec::new();
        }
        let entries = self
            .log
            .slice(self.applied + 1, limit, self.cfg.max_uncommitted_bytes);
        if let Some(last) = entries.last() {
            self.applied = last.index;
        }
        entries
    }

    /// The index of the last entry handed out for applying.
    pub fn applied_index(&self) -> Index {
        self.applied
    }
}
