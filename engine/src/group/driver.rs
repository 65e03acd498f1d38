//! The bookkeeping of one group, without IO: the Raft core, the state
//! machine, and the callers waiting for their writes to apply and their
//! reads to become safe. The node runtime's group loop and the simulator
//! both drive this same type, so what the simulator checks is the code a
//! node runs; each supplies only the IO (log writes, messages, snapshots).
//!
//! ```text
//! write / read / step / tick / on_persisted      (events in)
//!          │
//!   while let Some(ready) = driver.next_ready() {
//!       persist ready.persist, then on_persisted(seq) once durable
//!       send ready.messages
//!       driver.apply(ready.committed_entries)    → writes answered
//!       driver.on_read_states(ready.read_states) → reads answered once applied
//!       answer ready.snapshot_reads
//!   }
//!   driver.end_round()                            → a deposed leader's callers answered
//! ```

use std::collections::{BTreeMap, HashMap};

use flotilla_wal::{Entry, EntryPayload, Index, NodeId, Term};

use crate::group::machine::StateMachine;
use crate::group::request::{NodeError, ReadConsistency, Replier};
use crate::raft::core::{RaftCore, Role};
use crate::raft::error::ProposeError;
use crate::raft::message::Message;
use crate::raft::ready::{ReadState, Ready};
use crate::raft::step::RefusedMessage;

/// A read waiting to be served: the key (`None`: a barrier, answered
/// `None` once a read may start) and where the answer goes.
struct ReadWaiter<R> {
    key: Option<Vec<u8>>,
    reply: R,
}

/// One group's core, machine and waiting callers. `W` answers writes, `R`
/// answers reads.
pub struct GroupDriver<M: StateMachine, W, R> {
    core: RaftCore,
    machine: M,
    pending_writes: BTreeMap<Index, (Term, W)>,
    confirming_reads: HashMap<u64, Vec<ReadWaiter<R>>>,
    ready_reads: Vec<(Index, ReadWaiter<R>)>,
    next_read_ctx: u64,
    fatal: Option<String>,
    was_leader: bool,
}

impl<M, W, R> GroupDriver<M, W, R>
where
    M: StateMachine,
    W: Replier<M::Reply>,
    R: Replier<Option<Vec<u8>>>,
{
    /// Drives `core` applying to `machine` (restored to the same applied
    /// index the core was given).
    pub fn new(core: RaftCore, machine: M) -> Self {
        GroupDriver {
            core,
            machine,
            pending_writes: BTreeMap::new(),
            confirming_reads: HashMap::new(),
            ready_reads: Vec::new(),
            // Read contexts the driver issues start high, so a caller that
            // asks the core for reads of its own (a test) never collides.
            next_read_ctx: 1 << 63,
            fatal: None,
            was_leader: false,
        }
    }

    /// The Raft core.
    pub fn core(&self) -> &RaftCore {
        &self.core
    }

    /// The Raft core, for what the driver does not wrap (membership
    /// changes, compaction, snapshot chunks, status).
    pub fn core_mut(&mut self) -> &mut RaftCore {
        &mut self.core
    }

    /// The state machine.
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// The state machine, to reload it after a snapshot install.
    pub fn machine_mut(&mut self) -> &mut M {
        &mut self.machine
    }

    /// The state machine, once the driver is done with (a node stopped);
    /// waiting callers are dropped unanswered, as a process's would be.
    pub fn into_machine(self) -> M {
        self.machine
    }

    /// Why the group stopped (storage failed), if it did.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    /// Writes waiting for their entries to apply.
    pub fn inflight_writes(&self) -> usize {
        self.pending_writes.len()
    }

    /// Hands a peer's message to the core.
    pub fn step(&mut self, msg: Message) -> Result<(), RefusedMessage> {
        self.core.step(msg)
    }

    /// Proposes `command`; `reply` gets the machine's answer once the entry
    /// applies, or an error (not leader, overloaded, deposed, stopped).
    pub fn write(&mut self, command: Vec<u8>, reply: W) {
        if let Some(why) = &self.fatal {
            reply.send(Err(NodeError::Storage(why.clone())));
            return;
        }
        match self.core.propose(command) {
            Ok((index, term)) => {
                self.pending_writes.insert(index, (term, reply));
            }
            Err(e) => reply.send(Err(self.propose_error(e))),
        }
    }

    /// Reads `key` at `consistency` (or with `None` answers `None` once a
    /// read at `consistency` may start: a barrier for scans).
    pub fn read(&mut self, consistency: ReadConsistency, key: Option<Vec<u8>>, reply: R) {
        let waiter = ReadWaiter { key, reply };
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        match consistency {
            ReadConsistency::Stale => self.serve_read(waiter),
            ReadConsistency::Lease => match self.core.read_lease(ctx) {
                Ok(state) => self.serve_once_applied(state.index, waiter),
                Err(ProposeError::LeaseExpired) => self.read_index(ctx, waiter),
                Err(e) => waiter.reply.send(Err(self.propose_error(e))),
            },
            ReadConsistency::Linearizable => self.read_index(ctx, waiter),
        }
    }

    fn read_index(&mut self, ctx: u64, waiter: ReadWaiter<R>) {
        match self.core.read_index(ctx) {
            Ok(()) => self.confirming_reads.entry(ctx).or_default().push(waiter),
            Err(e) => waiter.reply.send(Err(self.propose_error(e))),
        }
    }

    fn serve_read(&self, waiter: ReadWaiter<R>) {
        let result = match &waiter.key {
            None => Ok(None),
            Some(key) => self.machine.read(key).map_err(NodeError::Storage),
        };
        waiter.reply.send(result);
    }

    fn serve_once_applied(&mut self, index: Index, waiter: ReadWaiter<R>) {
        if index <= self.machine.applied_index() {
            self.serve_read(waiter);
        } else {
            self.ready_reads.push((index, waiter));
        }
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

    /// The core's next batch of work, if it has any: the runtime persists,
    /// sends and hands the rest back through [`apply`](Self::apply) and
    /// [`on_read_states`](Self::on_read_states).
    pub fn next_ready(&mut self) -> Option<Ready> {
        self.core.has_ready().then(|| self.core.take_ready())
    }

    /// Storage failed: refuse everything from now on, answering every
    /// waiting caller.
    pub fn poison(&mut self, why: String) {
        self.fatal.get_or_insert(why.clone());
        self.fail_all(NodeError::Storage(why));
    }

    /// Answers every waiting caller with `error` (the node is closing).
    pub fn fail_all(&mut self, error: NodeError) {
        for (_, (_, reply)) in std::mem::take(&mut self.pending_writes) {
            reply.send(Err(error.clone()));
        }
        for waiter in std::mem::take(&mut self.confirming_reads)
            .into_values()
            .flatten()
        {
            waiter.reply.send(Err(error.clone()));
        }
        for (_, waiter) in std::mem::take(&mut self.ready_reads) {
            waiter.reply.send(Err(error.clone()));
        }
    }

    /// Applies committed entries, answers the writes waiting for them (an
    /// entry of another term than proposed was replaced: `NotLeader`, and a
    /// retry with the same session number is answered from the session),
    /// then the reads that waited for this applied index.
    pub fn apply(&mut self, entries: Vec<Entry>) {
        if self.fatal.is_some() || entries.is_empty() {
            return;
        }
        let replies = match self.machine.apply(&entries) {
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
                reply.send(Err(NodeError::NotLeader {
                    leader: self.leader(),
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
                Some((_, reply)) => Ok(reply),
                None => Err(NodeError::Invalid(match &entry.payload {
                    EntryPayload::Normal(_) => "the command was not applied".to_string(),
                    _ => "not a write".to_string(),
                })),
            };
            reply.send(result);
        }
        let applied = self.machine.applied_index();
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

    /// Serves the reads the core confirmed (once applied far enough) and
    /// returns the confirmations that were not the driver's own (a test's
    /// direct `read_index` on the core).
    pub fn on_read_states(&mut self, states: Vec<ReadState>) -> Vec<ReadState> {
        let mut foreign = Vec::new();
        for state in states {
            match self.confirming_reads.remove(&state.ctx) {
                Some(waiters) => {
                    for waiter in waiters {
                        self.serve_once_applied(state.index, waiter);
                    }
                }
                None => foreign.push(state),
            }
        }
        foreign
    }

    /// After a round of work: a leader that stepped down answers its
    /// waiting callers `NotLeader`. Their entries may still commit under
    /// the new leader; a retry with the same session number is then
    /// answered from the session.
    pub fn end_round(&mut self) {
        let is_leader = self.core.role() == Role::Leader;
        if self.was_leader && !is_leader {
            self.fail_all(NodeError::NotLeader {
                leader: self.leader(),
            });
        }
        self.was_leader = is_leader;
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        let leader = self.core.leader();
        (leader != 0).then_some(leader)
    }
}
