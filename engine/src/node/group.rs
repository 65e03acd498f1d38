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

use std::sync::Arc;
use std::time::Duration;

use flotilla_snapshot::{RocksSnapshotStore, SnapshotError, SnapshotStore};
use flotilla_wal::{
    CompactionPolicy, GroupId, LogSize, LogStore, LogWrite, RocksLogStore, StorageError,
};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::group::{GroupDriver, GroupStatus, NodeError, Replier, StoredMachine};
use crate::node::request::{Event, Reply};
use crate::node::Transport;
use crate::raft::core::RaftCore;
use crate::raft::message::{Message, SnapshotMeta};
use crate::raft::ready::{PersistRequest, StagedChunk};
use crate::raft::step::RefusedMessage;

/// The driver a node runs per group: machine `M` over the group's data in
/// RocksDB, callers answered on tokio oneshots (writes with `A`).
pub(crate) type NodeDriver<M, A> = GroupDriver<M, Reply<A>, Reply<Option<Vec<u8>>>>;

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
pub(crate) struct GroupQueues<A> {
    pub(crate) inbox: mpsc::Receiver<Event<A>>,
    pub(crate) peer_messages: mpsc::Receiver<Message>,
}

/// What woke the loop.
enum Wake<A> {
    Shutdown,
    Done(Option<Done>),
    Message(Option<Message>),
    Event(Option<Event<A>>),
    Tick,
}

pub(crate) struct GroupLoop<M: StoredMachine, A> {
    pub(crate) driver: NodeDriver<M, A>,
    pub(crate) group: GroupId,
    pub(crate) log: Arc<RocksLogStore>,
    pub(crate) snapshots: RocksSnapshotStore,
    pub(crate) inbox: mpsc::Receiver<Event<A>>,
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
    building: bool,
}

impl<M, A> GroupLoop<M, A>
where
    M: StoredMachine + Send + 'static,
    A: Send + 'static,
    Reply<A>: Replier<M::Reply>,
{
    pub(crate) fn new(
        core: RaftCore,
        log: Arc<RocksLogStore>,
        machine: M,
        queues: GroupQueues<A>,
        transport: Arc<dyn Transport>,
        policy: CompactionPolicy,
        chunk_bytes: u64,
    ) -> Self {
        let group = core.status().group;
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        GroupLoop {
            snapshots: RocksSnapshotStore::new(log.clone(), group, chunk_bytes),
            driver: GroupDriver::new(core, machine),
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
            building: false,
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
        self.driver.core_mut().tick();
        let next = due + TICK;
        let now = Instant::now();
        if next >= now {
            return next;
        }
        self.driver.core_mut().skip_ticks(ticks_missed(next, now));
        now + TICK
    }

    /// Runs until shut down or the inbox closes.
    pub(crate) async fn run(mut self) {
        // A sole voter need not wait out an election timeout.
        if self.driver.core_mut().membership().voters.len() == 1 {
            self.driver.core_mut().start_election();
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
        self.driver.fail_all(NodeError::Closed);
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
        match self.driver.step(msg) {
            Ok(()) => {}
            Err(e @ RefusedMessage::Malformed { .. }) => {
                warn!(group = self.group, "dropped a message: {e}");
            }
            Err(e) => debug!(group = self.group, "dropped a message: {e}"),
        }
    }

    fn on_event(&mut self, event: Event<A>) {
        match event {
            Event::Write { command, reply } => self.driver.write(command, reply),
            Event::Read {
                consistency,
                key,
                reply,
            } => self.driver.read(consistency, key, reply),
            Event::Status(reply) => {
                let status = GroupStatus {
                    raft: self.driver.core().status(),
                    applied_index: self.driver.machine().applied_state().index,
                    log_bytes: self.log.log_bytes(self.group).unwrap_or(0),
                    sessions: self.driver.machine().session_count(),
                    inflight_writes: self.driver.inflight_writes(),
                };
                let _ = reply.send(status);
            }
        }
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Persisted { seq, result } => match result {
                Ok(()) => self.driver.core_mut().on_persisted(seq),
                Err(e) => self.poison(format!("a log write failed: {e}")),
            },
            Done::SnapshotBuilt(result) => {
                self.building = false;
                match result {
                    Ok(meta) => {
                        if let Err(e) = self.driver.core_mut().compact(meta.index) {
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
        self.driver.poison(why);
    }

    async fn process_ready(&mut self) {
        while let Some(ready) = self.driver.next_ready() {
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
            let was_fatal = self.driver.fatal().is_some();
            self.driver.apply(ready.committed_entries);
            if let (false, Some(why)) = (was_fatal, self.driver.fatal()) {
                warn!(group = self.group, "{why}; refusing writes until restarted");
            }
            // Every read the loop asks for is the driver's own.
            let _ = self.driver.on_read_states(ready.read_states);
            for request in ready.snapshot_reads {
                if let Err(e) = self
                    .driver
                    .core_mut()
                    .answer_snapshot_read(&request, &self.snapshots)
                {
                    debug!(
                        group = self.group,
                        to = request.to,
                        "snapshot chunk unavailable: {e}"
                    );
                }
            }
        }
        self.driver.end_round();
        self.maybe_build_snapshot();
    }

    async fn persist(&mut self, mut request: PersistRequest) {
        if let Some(why) = self.driver.fatal() {
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
                Ok(()) => self.driver.core_mut().on_persisted(seq),
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
            self.driver.machine_mut().reload(meta)?;
        }
        Ok(())
    }

    fn maybe_build_snapshot(&mut self) {
        if self.building || self.driver.fatal().is_some() {
            return;
        }
        // Runs after every round: plain accessors, not a whole status().
        let size = LogSize {
            bytes: self.log.log_bytes(self.group).unwrap_or(0),
            snapshot_index: self.driver.core_mut().snapshot_meta().index,
            last_index: self.driver.core_mut().last_index(),
        };
        if self
            .policy
            .compact_to(size, self.driver.machine().applied_state().index)
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
