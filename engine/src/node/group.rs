//! One group's loop: owns the Raft core and carries out its `Ready`s
//! against RocksDB — the log through the writer thread (group commit), the
//! state machine's writes straight to RocksDB, snapshot builds on a helper
//! thread — and answers callers.
//!
//! The loop is a future. A cluster member runs it as a task on the runtime
//! that also drives QUIC, so a Raft message goes from the socket to the core
//! and back out without crossing threads; a single-node store runs it on a
//! thread of its own. Applying blocks on RocksDB for one bounded batch;
//! staging and installing a received snapshot run on a blocking thread
//! while the loop waits, so the runtime's worker keeps serving QUIC.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use flotilla_snapshot::{RocksSnapshotStore, SnapshotError, SnapshotStore};
use flotilla_wal::{
    CompactionPolicy, Entry, EntryPayload, GroupId, Index, LogSize, LogStore, LogWrite, NodeId,
    RocksLogStore, StorageError, Term,
};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::kv::WriteReply;
use crate::node::apply::Applier;
use crate::node::request::{Event, GroupStatus, NodeError, ReadConsistency, Reply};
use crate::node::Transport;
use crate::raft::core::{RaftCore, Role};
use crate::raft::error::ProposeError;
use crate::raft::message::{Message, SnapshotMeta};
use crate::raft::ready::{PersistRequest, ReadState, StagedChunk};
use crate::raft::step::RefusedMessage;

/// Length of one tick of the core's clock.
pub const TICK: Duration = Duration::from_millis(10);
/// Ticks that fell due from `next_due` (included) up to `now`, when the
/// loop comes back after a stall: rounded up, so a lease ends early rather
/// than late.
fn ticks_missed(next_due: Instant, now: Instant) -> u64 {
    if now < next_due {
        return 0;
    }
    let missed = (now - next_due).as_nanos() / TICK.as_nanos() + 1;
    u64::try_from(missed).unwrap_or(u64::MAX)
}

/// Most inbox events handled before the core's output is carried out.
const MAX_EVENTS_PER_ROUND: usize = 4096;

/// Internal completions, on their own unbounded channel so they are never
/// dropped when the inbox is full.
pub(crate) enum Done {
    Persisted {
        seq: u64,
        result: Result<(), StorageError>,
    },
    SnapshotBuilt(Result<SnapshotMeta, SnapshotError>),
}

/// What a group loop reads: its callers' requests, and its peers'
/// messages on a queue of their own.
pub(crate) struct GroupQueues {
    pub(crate) inbox: mpsc::Receiver<Event>,
    pub(crate) peer_messages: mpsc::Receiver<Message>,
}

/// What woke the loop.
enum Wake {
    Shutdown,
    Done(Option<Done>),
    Message(Option<Message>),
    Event(Option<Event>),
    Tick,
}

struct ReadWaiter {
    key: Option<Vec<u8>>,
    reply: Reply<Option<Vec<u8>>>,
}

pub(crate) struct GroupLoop {
    pub(crate) core: RaftCore,
    pub(crate) group: GroupId,
    pub(crate) log: Arc<RocksLogStore>,
    pub(crate) snapshots: RocksSnapshotStore,
    pub(crate) applier: Applier,
    pub(crate) inbox: mpsc::Receiver<Event>,
    /// Peers' Raft messages, ahead of the inbox.
    peer_messages: mpsc::Receiver<Message>,
    pub(crate) shutdown: Arc<Notify>,
    pub(crate) done_tx: mpsc::UnboundedSender<Done>,
    pub(crate) done_rx: mpsc::UnboundedReceiver<Done>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) policy: CompactionPolicy,
    pub(crate) chunk_bytes: u64,
    /// Write the log on this loop's own thread instead of handing it to the
    /// writer thread (see [`GroupLoop::write_log_inline`]).
    write_log_inline: bool,
    pending_writes: BTreeMap<Index, (Term, Reply<WriteReply>)>,
    confirming_reads: HashMap<u64, Vec<ReadWaiter>>,
    ready_reads: Vec<(Index, ReadWaiter)>,
    next_read_ctx: u64,
    building: bool,
    fatal: Option<String>,
    was_leader: bool,
}

impl GroupLoop {
    pub(crate) fn new(
        core: RaftCore,
        log: Arc<RocksLogStore>,
        applier: Applier,
        queues: GroupQueues,
        transport: Arc<dyn Transport>,
        policy: CompactionPolicy,
        chunk_bytes: u64,
    ) -> Self {
        let group = core.status().group;
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        GroupLoop {
            snapshots: RocksSnapshotStore::new(log.clone(), group, chunk_bytes),
            applier,
            core,
            group,
            log,
            inbox: queues.inbox,
            peer_messages: queues.peer_messages,
            shutdown: Arc::new(Notify::new()),
            done_tx,
            done_rx,
            transport,
            policy,
            chunk_bytes,
            write_log_inline: false,
            pending_writes: BTreeMap::new(),
            confirming_reads: HashMap::new(),
            ready_reads: Vec::new(),
            next_read_ctx: 1,
            building: false,
            fatal: None,
            was_leader: false,
        }
    }

    /// Makes the loop write its log itself, waiting for each fsync, rather
    /// than through the writer thread: for a loop on a thread of its own,
    /// where waiting blocks nobody else and saves the two thread hand-offs
    /// per write. Writes that arrive during the fsync queue in the inbox and
    /// go out together in the next round, so batching is kept.
    pub(crate) fn write_log_inline(mut self) -> Self {
        self.write_log_inline = true;
        self
    }

    /// What stops the loop: `notify_one` on it ends [`run`](Self::run).
    pub(crate) fn shutdown_signal(&self) -> Arc<Notify> {
        self.shutdown.clone()
    }

    /// Ticks the core for the tick due at `due` and returns when the next
    /// is due. Ticks missed while the loop stalled (a long apply, a slow
    /// disk, a busy round) are not replayed as a burst of timers, but the
    /// core's lease clock counts them: a leader that stalled past its lease
    /// must not serve lease reads on it, while the others may have elected
    /// a new leader in the meantime.
    fn advance_clock(&mut self, due: Instant) -> Instant {
        self.core.tick();
        let next = due + TICK;
        let now = Instant::now();
        if next >= now {
            return next;
        }
        self.core.skip_ticks(ticks_missed(next, now));
        now + TICK
    }

    /// Runs until shut down or the inbox closes.
    pub(crate) async fn run(mut self) {
        // A sole voter need not wait out an election timeout.
        if self.core.membership().voters.len() == 1 {
            self.core.start_election();
        }
        let shutdown = self.shutdown.clone();
        let mut next_tick = Instant::now() + TICK;
        let tick = tokio::time::sleep_until(next_tick);
        tokio::pin!(tick);
        loop {
            self.process_ready().await;
            let wake = tokio::select! {
                biased;
                _ = shutdown.notified() => Wake::Shutdown,
                done = self.done_rx.recv() => Wake::Done(done),
                msg = self.peer_messages.recv() => Wake::Message(msg),
                event = self.inbox.recv() => Wake::Event(event),
                _ = &mut tick => Wake::Tick,
            };
            // Before any event: a lease read must see the time that passed.
            if Instant::now() >= next_tick {
                next_tick = self.advance_clock(next_tick);
                tick.as_mut().reset(next_tick);
            }
            match wake {
                // Both queues close when the last handle goes.
                Wake::Shutdown | Wake::Event(None) | Wake::Message(None) => break,
                Wake::Done(Some(done)) => self.on_done(done),
                Wake::Message(Some(msg)) => self.on_message(msg),
                Wake::Event(Some(event)) => self.on_event(event),
                Wake::Done(None) | Wake::Tick => {}
            }
            for _ in 0..MAX_EVENTS_PER_ROUND {
                if let Ok(done) = self.done_rx.try_recv() {
                    self.on_done(done);
                    continue;
                }
                if let Ok(msg) = self.peer_messages.try_recv() {
                    self.on_message(msg);
                    continue;
                }
                match self.inbox.try_recv() {
                    Ok(event) => self.on_event(event),
                    Err(_) => break,
                }
            }
            if Instant::now() >= next_tick {
                next_tick = self.advance_clock(next_tick);
                tick.as_mut().reset(next_tick);
            }
        }
        self.fail_all(NodeError::Closed);
        // A running snapshot build holds the store: let it finish before
        // the node closes the store under it.
        while self.building {
            match tokio::time::timeout(Duration::from_secs(60), self.done_rx.recv()).await {
                Ok(Some(Done::SnapshotBuilt(_))) => self.building = false,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }

    fn on_message(&mut self, msg: Message) {
        match self.core.step(msg) {
            Ok(()) => {}
            Err(e @ RefusedMessage::Malformed { .. }) => {
                warn!(group = self.group, "dropped a message: {e}");
            }
            Err(e) => debug!(group = self.group, "dropped a message: {e}"),
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Write { command, reply } => self.on_write(command, reply),
            Event::Read {
                consistency,
                key,
                reply,
            } => self.on_read(consistency, key, reply),
            Event::Status(reply) => {
                let status = GroupStatus {
                    raft: self.core.status(),
                    applied_index: self.applier.applied_index(),
                    log_bytes: self.log.log_bytes(self.group).unwrap_or(0),
                    sessions: self.applier.session_count(),
                    inflight_writes: self.pending_writes.len(),
                };
                let _ = reply.send(status);
            }
        }
    }

    fn on_write(&mut self, command: Vec<u8>, reply: Reply<WriteReply>) {
        if let Some(why) = &self.fatal {
            let _ = reply.send(Err(NodeError::Storage(why.clone())));
            return;
        }
        match self.core.propose(command) {
            Ok((index, term)) => {
                self.pending_writes.insert(index, (term, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(self.propose_error(e)));
            }
        }
    }

    fn on_read(
        &mut self,
        consistency: ReadConsistency,
        key: Option<Vec<u8>>,
        reply: Reply<Option<Vec<u8>>>,
    ) {
        let waiter = ReadWaiter { key, reply };
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        match consistency {
            ReadConsistency::Stale => self.serve_read(waiter),
            ReadConsistency::Lease => match self.core.read_lease(ctx) {
                Ok(state) => self.serve_once_applied(state.index, waiter),
                Err(ProposeError::LeaseExpired) => self.read_index(ctx, waiter),
                Err(e) => {
                    let _ = waiter.reply.send(Err(self.propose_error(e)));
                }
            },
            ReadConsistency::Linearizable => self.read_index(ctx, waiter),
        }
    }

    fn read_index(&mut self, ctx: u64, waiter: ReadWaiter) {
        match self.core.read_index(ctx) {
            Ok(()) => self.confirming_reads.entry(ctx).or_default().push(waiter),
            Err(e) => {
                let _ = waiter.reply.send(Err(self.propose_error(e)));
            }
        }
    }

    fn serve_read(&self, waiter: ReadWaiter) {
        let result = match &waiter.key {
            None => Ok(None),
            Some(key) => self
                .applier
                .get(key)
                .map_err(|e| NodeError::Storage(e.to_string())),
        };
        let _ = waiter.reply.send(result);
    }

    fn propose_error(&self, e: ProposeError) -> NodeError {
        match e {
            ProposeError::NotLeader { leader_hint } => NodeError::NotLeader {
                leader: (leader_hint != 0).then_some(leader_hint),
            },
            ProposeError::Overloaded { .. } => NodeError::Overloaded(e.to_string()),
            ProposeError::Invalid(why) => NodeError::Invalid(why),
            other => NodeError::Unavailable(other.to_string()),
        }
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Persisted { seq, result } => match result {
                Ok(()) => self.core.on_persisted(seq),
                Err(e) => self.poison(format!("a log write failed: {e}")),
            },
            Done::SnapshotBuilt(result) => {
                self.building = false;
                match result {
                    Ok(meta) => {
                        if let Err(e) = self.core.compact(meta.index) {
                            warn!(
                                group = self.group,
                                "compaction after a snapshot refused: {e}"
                            );
                        }
                    }
                    Err(e) => warn!(group = self.group, "snapshot build failed: {e}"),
                }
            }
        }
    }

    /// Storage failed: refuse everything from now on (the store itself is
    /// poisoned too), answering every waiting caller.
    fn poison(&mut self, why: String) {
        warn!(group = self.group, "{why}; refusing writes until restarted");
        self.fatal.get_or_insert(why.clone());
        self.fail_all(NodeError::Storage(why));
    }

    fn fail_all(&mut self, error: NodeError) {
        for (_, (_, reply)) in std::mem::take(&mut self.pending_writes) {
            let _ = reply.send(Err(error.clone()));
        }
        for waiter in std::mem::take(&mut self.confirming_reads)
            .into_values()
            .flatten()
        {
            let _ = waiter.reply.send(Err(error.clone()));
        }
        for (_, waiter) in std::mem::take(&mut self.ready_reads) {
            let _ = waiter.reply.send(Err(error.clone()));
        }
    }

    async fn process_ready(&mut self) {
        while self.core.has_ready() {
            let ready = self.core.take_ready();
            // A log written inline blocks this loop until it is durable, so
            // the messages go first: they are safe to send before the
            // persist (the core holds back those that promise durable
            // state), and a leader's appends then reach the followers while
            // its own write runs. A log handed to the writer thread goes
            // first: the writer starts on it while the messages go out.
            let mut persist = ready.persist;
            if !self.write_log_inline {
                if let Some(request) = persist.take() {
                    self.persist(request).await;
                }
            }
            for msg in ready.messages {
                self.transport.send(msg);
            }
            if let Some(request) = persist {
                self.persist(request).await;
            }
            if !ready.committed_entries.is_empty() {
                self.apply(ready.committed_entries);
            }
            self.on_read_states(ready.read_states);
            for request in ready.snapshot_reads {
                if let Err(e) = self.core.answer_snapshot_read(&request, &self.snapshots) {
                    debug!(
                        group = self.group,
                        to = request.to,
                        "snapshot chunk unavailable: {e}"
                    );
                }
            }
        }
        self.after_role_change();
        self.maybe_build_snapshot();
    }

    /// A leader that stepped down answers its waiting callers: their
    /// entries may still commit under the new leader, and a retry carrying
    /// the same session sequence number is then answered from the session.
    fn after_role_change(&mut self) {
        let is_leader = self.core.role() == Role::Leader;
        if self.was_leader && !is_leader {
            self.fail_all(NodeError::NotLeader {
                leader: leader_of(&self.core),
            });
        }
        self.was_leader = is_leader;
    }

    async fn persist(&mut self, mut request: PersistRequest) {
        if let Some(why) = &self.fatal {
            debug!(
                group = self.group,
                "not persisting after a storage failure: {why}"
            );
            return;
        }
        if !request.stage_chunks.is_empty() || request.install_snapshot.is_some() {
            let chunks = std::mem::take(&mut request.stage_chunks);
            let install = request.install_snapshot.take();
            if let Err(e) = self.persist_snapshot_part(chunks, install).await {
                self.poison(format!("snapshot staging or install failed: {e}"));
                return;
            }
        }
        let write = LogWrite {
            group: self.group,
            install: None,
            compact: request.compact,
            entries: request.entries,
            hard_state: request.hard_state,
        };
        let seq = request.seq;
        if self.write_log_inline {
            match self.log.write_now(vec![write]) {
                Ok(()) => self.core.on_persisted(seq),
                Err(e) => self.poison(format!("a log write failed: {e}")),
            }
            return;
        }
        let done = self.done_tx.clone();
        self.log.submit(
            vec![write],
            Box::new(move |result| {
                let _ = done.send(Done::Persisted { seq, result });
            }),
        );
    }

    /// Stages received chunks and installs a complete snapshot. Both are
    /// rare and everything after them must wait, so the loop waits; the
    /// RocksDB work runs on a blocking thread, because an install writes the
    /// whole image in one batch and the member runtime's one worker also
    /// drives QUIC, which must keep answering meanwhile.
    async fn persist_snapshot_part(
        &mut self,
        chunks: Vec<StagedChunk>,
        install: Option<SnapshotMeta>,
    ) -> Result<(), SnapshotError> {
        // A build running against the old data would make an older
        // snapshot current after the install; let it finish first.
        while self.building {
            match self.done_rx.recv().await {
                Some(done) => self.on_done(done),
                None => break,
            }
        }
        // The store keeps no state of its own: a second handle on the
        // same group is as good as the loop's.
        let mut store = RocksSnapshotStore::new(self.log.clone(), self.group, self.chunk_bytes);
        let stored = tokio::task::spawn_blocking(move || {
            for chunk in &chunks {
                store.stage_chunk(&chunk.meta, chunk.offset, &chunk.data)?;
            }
            if let Some(meta) = &install {
                store.install_staged(meta)?;
            }
            Ok::<_, SnapshotError>(install)
        })
        .await;
        let installed = stored.map_err(|e| {
            SnapshotError::Storage(StorageError::Engine(format!(
                "snapshot staging stopped: {e}"
            )))
        })??;
        if let Some(meta) = &installed {
            self.applier.reload(meta)?;
        }
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        if self.fatal.is_some() {
            return;
        }
        let replies = match self.applier.apply(&entries) {
            Ok(replies) => replies,
            Err(e) => {
                self.poison(format!("applying committed entries failed: {e}"));
                return;
            }
        };
        let mut replies = replies.into_iter().peekable();
        for entry in &entries {
            let Some((term, reply)) = self.pending_writes.remove(&entry.index) else {
                continue;
            };
            if term != entry.term {
                let _ = reply.send(Err(NodeError::NotLeader {
                    leader: leader_of(&self.core),
                }));
                continue;
            }
            while replies
                .peek()
                .is_some_and(|(index, _)| *index < entry.index)
            {
                replies.next();
            }
            let result = match replies.next_if(|(index, _)| *index == entry.index) {
                Some((_, Ok(reply))) => Ok(reply),
                Some((_, Err(e))) => Err(NodeError::Invalid(e.to_string())),
                None => Err(NodeError::Invalid(match &entry.payload {
                    EntryPayload::Normal(_) => "the command was not applied".to_string(),
                    _ => "not a write".to_string(),
                })),
            };
            let _ = reply.send(result);
        }
        let applied = self.applier.applied_index();
        let mut still_waiting = Vec::new();
        for (index, waiter) in std::mem::take(&mut self.ready_reads) {
            if index <= applied {
                self.serve_read(waiter);
            } else {
                still_waiting.push((index, waiter));
            }
        }
        self.ready_reads = still_waiting;
    }

    fn on_read_states(&mut self, states: Vec<ReadState>) {
        for state in states {
            for waiter in self.confirming_reads.remove(&state.ctx).unwrap_or_default() {
                self.serve_once_applied(state.index, waiter);
            }
        }
    }

    fn serve_once_applied(&mut self, index: Index, waiter: ReadWaiter) {
        if index <= self.applier.applied_index() {
            self.serve_read(waiter);
        } else {
            self.ready_reads.push((index, waiter));
        }
    }

    fn maybe_build_snapshot(&mut self) {
        if self.building || self.fatal.is_some() {
            return;
        }
        // Runs after every round: plain accessors, not a whole status().
        let size = LogSize {
            bytes: self.log.log_bytes(self.group).unwrap_or(0),
            snapshot_index: self.core.snapshot_meta().index,
            last_index: self.core.last_index(),
        };
        if self
            .policy
            .compact_to(size, self.applier.applied_index())
            .is_none()
        {
            return;
        }
        self.building = true;
        let mut store = RocksSnapshotStore::new(self.log.clone(), self.group, self.chunk_bytes);
        let done = self.done_tx.clone();
        let group = self.group;
        let spawned = std::thread::Builder::new()
            .name(format!("flotilla-snapshot-{group}"))
            .spawn(move || {
                let _ = done.send(Done::SnapshotBuilt(store.build()));
            });
        if let Err(e) = spawned {
            self.building = false;
            warn!(group, "cannot start a snapshot build thread: {e}");
        }
    }
}

/// The id of a node that leads nothing: 0 in the core, `None` here.
fn leader_of(core: &RaftCore) -> Option<NodeId> {
    let leader = core.leader();
    (leader != 0).then_some(leader)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_counts_every_tick_that_fell_due_rounded_up() {
        let due = Instant::now();
        assert_eq!(ticks_missed(due, due - TICK), 0, "not due yet");
        assert_eq!(ticks_missed(due, due), 1, "the tick due now");
        assert_eq!(ticks_missed(due, due + TICK / 2), 1);
        assert_eq!(ticks_missed(due, due + TICK), 2);
        assert_eq!(ticks_missed(due, due + TICK * 99 + TICK / 2), 100);
    }
}
