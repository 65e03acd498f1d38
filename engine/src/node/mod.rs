//! The node runtime: one RocksDB store per node, one loop per Raft group
//! driving its core (a task on the caller's tokio runtime, or a thread of
//! its own), and handles through which callers write and read.
//!
//! ```text
//! caller ──Event──▶ group loop ──LogWrite──▶ wal writer thread (group commit, fsync)
//!   ▲                 │  ▲                          │
//!   └──reply──────────┘  └──────Persisted(seq)──────┘
//!                     │──Message──▶ Transport (QUIC in a cluster, nothing alone)
//!                     └──apply──▶ RocksDB data + applied state (one batch)
//! ```
//!
//! Every queue is bounded: a group's inbox holds `inbox_capacity` events and
//! a full inbox answers `Overloaded`; the writer's queue blocks submitters
//! beyond `flotilla_wal::MAX_QUEUED_REQUESTS`; the leader refuses proposals
//! beyond `max_uncommitted_bytes`.

mod group;
mod request;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use flotilla_snapshot::{
    GroupData, RocksSnapshotStore, SnapshotError, SnapshotStore, DEFAULT_CHUNK_BYTES,
};
use flotilla_wal::{
    CompactionPolicy, Durability, GroupId, LogStore, Membership, NodeId, OpenOptions, RocksLogStore,
};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::Sender;
use tokio::sync::oneshot;
use tokio::sync::Notify;
use tracing::debug;

pub use crate::group::{GroupStatus, NodeError, ReadConsistency};
pub use group::TICK;
pub use request::Reply;

use crate::group::{KvApplier, Replier, StoredMachine};
use crate::kv::{SessionLimits, ShardOf, ShardSetup, WriteReply};
use crate::node::group::{GroupLoop, GroupQueues};
use crate::node::request::Event;
use crate::raft::config::Config;
use crate::raft::core::{RaftCore, RestoreState};
use crate::raft::message::Message;

/// Carries a group's outgoing Raft messages to their nodes. Sending never
/// blocks: a message that cannot be queued is dropped, and Raft retries.
pub trait Transport: Send + Sync {
    /// Sends `msg` to `msg.to`.
    fn send(&self, msg: Message);
}

/// The transport of a single-node store: there is nobody to talk to.
#[derive(Debug, Default)]
pub struct NoNetwork;

impl Transport for NoNetwork {
    fn send(&self, msg: Message) {
        debug!(to = msg.to, "no network: dropped a message");
    }
}

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// This node's id (1 or more).
    pub id: NodeId,
    /// Directory of the node's RocksDB store.
    pub path: PathBuf,
    /// How durable an acknowledged write is. Default `Durability::Sync`.
    pub durability: Durability,
    /// Bytes of WAL preallocated at open (see `flotilla_wal::OpenOptions`).
    /// Default 0.
    pub wal_preallocation: u64,
    /// The groups this node hosts. Default `[1]`.
    pub groups: Vec<GroupId>,
    /// Voters of a group that has no state yet. Default `[id]`.
    pub initial_voters: Vec<NodeId>,
    /// Raft settings (id and group are filled in per group). Default
    /// [`runtime_raft_config`].
    pub raft: Config,
    /// When to snapshot and compact a group's log. Default `CompactionPolicy::default()`.
    pub compaction: CompactionPolicy,
    /// Where the group loops run. `Some(handle)`: as tasks on that tokio
    /// runtime (a cluster member passes the runtime that drives QUIC, so
    /// messages reach the core without a thread hand-off; the runtime must
    /// have time enabled and should have a worker to spare for the
    /// bounded RocksDB writes of applying). Default `None`: one OS thread
    /// per group.
    pub runtime: Option<tokio::runtime::Handle>,
    /// Client session bounds. Default `SessionLimits::default()`.
    pub sessions: SessionLimits,
    /// Events a group's inbox holds before callers get `Overloaded`. Default 16,384.
    pub inbox_capacity: usize,
    /// Bytes per stored and transferred snapshot chunk. Default 1 MiB.
    pub snapshot_chunk_bytes: u64,
    /// The store's shard policy, as given to [`new`](Self::new).
    pub shards: ShardSetup,
}

impl NodeOptions {
    /// The defaults for a single node `id` storing in `path`, whose keys go
    /// to shards as `shards` says.
    pub fn new(id: NodeId, path: impl Into<PathBuf>, shards: ShardSetup) -> Self {
        NodeOptions {
            id,
            path: path.into(),
            durability: Durability::Sync,
            wal_preallocation: 0,
            groups: vec![1],
            initial_voters: vec![id],
            raft: runtime_raft_config(id),
            compaction: CompactionPolicy::default(),
            sessions: SessionLimits::default(),
            inbox_capacity: 16_384,
            runtime: None,
            snapshot_chunk_bytes: DEFAULT_CHUNK_BYTES,
            shards,
        }
    }
}

/// The Raft timing a node runs with, on 10 ms ticks: heartbeats every 50 ms,
/// elections after 0.5–1 s of silence, leases of 400 ms. Slower than the
/// core's defaults (which suit the simulator) so that a loaded machine —
/// a stalled thread, a slow fsync — does not look like a dead leader.
pub fn runtime_raft_config(id: NodeId) -> Config {
    let mut config = Config::new(id, 1);
    config.election_timeout_ticks = 50;
    config.heartbeat_ticks = 5;
    config.lease_ticks = 40;
    config
}

/// Messages from peers a group holds before it drops more (Raft retries):
/// as many as the mesh queues for one peer.
pub const PEER_QUEUE_MESSAGES: usize = 4096;

/// A handle on one group of a running node. Cheap to clone. `A` is what a
/// write answers: [`WriteReply`] for a data group.
pub struct GroupHandle<A = WriteReply> {
    group: GroupId,
    tx: Sender<Event<A>>,
    peer_tx: Sender<Message>,
    data: GroupData,
}

impl<A> Clone for GroupHandle<A> {
    fn clone(&self) -> Self {
        GroupHandle {
            group: self.group,
            tx: self.tx.clone(),
            peer_tx: self.peer_tx.clone(),
            data: self.data.clone(),
        }
    }
}

impl<A> std::fmt::Debug for GroupHandle<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupHandle")
            .field("group", &self.group)
            .finish()
    }
}

/// Where a group's peers' Raft messages go, whatever its machine.
#[derive(Clone, Debug)]
pub struct PeerInbox {
    group: GroupId,
    peer_tx: Sender<Message>,
}

impl PeerInbox {
    /// Hands a message from a peer to the group, on a queue of its own:
    /// callers filling the group's inbox cannot crowd out heartbeats and
    /// acknowledgements. Dropped (Raft retries) only if that queue is full.
    pub fn deliver(&self, msg: Message) {
        if self.peer_tx.try_send(msg).is_err() {
            debug!(
                group = self.group,
                "peer queue full: dropped a peer message"
            );
        }
    }
}

/// An answer still on its way from a group thread.
pub type Pending<T> = oneshot::Receiver<Result<T, NodeError>>;

impl<A> GroupHandle<A> {
    /// The group's id.
    pub fn id(&self) -> GroupId {
        self.group
    }

    fn enqueue(&self, event: Event<A>) -> Result<(), NodeError> {
        self.tx.try_send(event).map_err(|e| match e {
            TrySendError::Full(_) => {
                NodeError::Overloaded(format!("group {}'s inbox is full", self.group))
            }
            TrySendError::Closed(_) => NodeError::Closed,
        })
    }

    /// Proposes an encoded command of the group's machine (a
    /// [`crate::kv::Command`] for a data group); the answer arrives once it
    /// is applied.
    pub fn write(&self, command: Vec<u8>) -> Result<Pending<A>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(Event::Write { command, reply })?;
        Ok(rx)
    }

    /// Reads key `key` of the group's machine (an inner key for a data
    /// group) at `consistency`, or with `None` answers once a read at
    /// `consistency` may start (then scan with [`data`](Self::data)).
    pub fn read(
        &self,
        consistency: ReadConsistency,
        key: Option<Vec<u8>>,
    ) -> Result<Pending<Option<Vec<u8>>>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(Event::Read {
            consistency,
            key,
            reply,
        })?;
        Ok(rx)
    }

    /// The group's status.
    pub fn status(&self) -> Result<oneshot::Receiver<GroupStatus>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(Event::Status(reply))?;
        Ok(rx)
    }

    /// Hands a message from a peer to the group (see [`PeerInbox::deliver`]).
    pub fn deliver(&self, msg: Message) {
        self.peer_inbox().deliver(msg);
    }

    /// Where the group's peers' messages go.
    pub fn peer_inbox(&self) -> PeerInbox {
        PeerInbox {
            group: self.group,
            peer_tx: self.peer_tx.clone(),
        }
    }

    /// The group's applied data, for scans after a read barrier.
    pub fn data(&self) -> &GroupData {
        &self.data
    }
}

/// A running node.
pub struct Node {
    id: NodeId,
    /// The data groups (key/value machine).
    groups: BTreeMap<GroupId, GroupHandle>,
    /// Every group's peer queue, data groups and others alike.
    inboxes: BTreeMap<GroupId, PeerInbox>,
    loops: Vec<RunningLoop>,
    shards: Arc<dyn ShardOf>,
    log: Arc<RocksLogStore>,
    transport: Arc<dyn Transport>,
    options: NodeOptions,
}

/// A started group loop, and how to stop it and wait for its end.
struct RunningLoop {
    shutdown: Arc<Notify>,
    /// Disconnects when the loop's future is dropped, finished or not.
    finished: std::sync::mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Node {
    /// Opens the node's store (creating it if new), recovers every data
    /// group and starts their loops.
    pub fn open(options: NodeOptions, transport: Arc<dyn Transport>) -> Result<Node, NodeError> {
        let storage = |e: &dyn std::fmt::Display| NodeError::Storage(e.to_string());
        if options.groups.is_empty() || options.inbox_capacity == 0 {
            return Err(NodeError::Invalid(
                "a node needs at least one group and an inbox of at least one event".into(),
            ));
        }
        let log = Arc::new(
            RocksLogStore::open_with(
                &options.path,
                OpenOptions {
                    durability: options.durability,
                    wal_preallocation: options.wal_preallocation,
                    // The engine's writes never find the writer polling
                    // useful: a member's next write follows a network round
                    // trip, so the poll only spun, taking CPU from QUIC and
                    // the other members (measured on two cores: without it,
                    // 5% lower 1-client put p50, 8% less member CPU per put,
                    // 3–27% more puts/s at 64 clients); loops on threads of
                    // their own write inline under `Sync` and `None`, and
                    // under `Buffered` the writer waits for its delayed sync
                    // rather than polling.
                    writer_poll: std::time::Duration::ZERO,
                    shard_count: Some(options.shards.create_with),
                },
            )
            .map_err(|e| storage(&e))?,
        );
        let stored = log.stored_shard_count().map_err(|e| storage(&e))?;
        let shards = (options.shards.policy)(stored).map_err(NodeError::Invalid)?;
        let initial = Membership::with_voters(options.initial_voters.iter().copied());
        let mut node = Node {
            id: options.id,
            groups: BTreeMap::new(),
            inboxes: BTreeMap::new(),
            loops: Vec::new(),
            shards: shards.clone(),
            log,
            transport,
            options,
        };
        for group in node.options.groups.clone() {
            let (limits, shards) = (node.options.sessions, shards.clone());
            let handle = node.start_group(group, &initial, move |data, initial| {
                KvApplier::load(data, limits, shards, initial)
            })?;
            node.groups.insert(group, handle);
        }
        Ok(node)
    }

    /// Starts group `group` over machine `M`, built by `make` from the
    /// group's stored data (and `initial`, the voters of a group with no
    /// state yet), with this node's settings; `A` is what its writes
    /// answer. A group already running here is refused.
    pub fn start_group<M, A>(
        &mut self,
        group: GroupId,
        initial: &Membership,
        make: impl FnOnce(GroupData, &Membership) -> Result<M, SnapshotError>,
    ) -> Result<GroupHandle<A>, NodeError>
    where
        M: StoredMachine + Send + 'static,
        A: Send + 'static,
        Reply<A>: Replier<M::Reply>,
    {
        let storage = |e: &dyn std::fmt::Display| NodeError::Storage(e.to_string());
        if self.inboxes.contains_key(&group) {
            return Err(NodeError::Invalid(format!(
                "group {group} already runs on node {}",
                self.id
            )));
        }
        let log = &self.log;
        let options = &self.options;
        let data = GroupData::new(log.clone(), group);
        let machine = make(data.clone(), initial).map_err(|e| storage(&e))?;
        let restore = restore_state(log, group, initial, machine.applied_state().index)
            .map_err(|e| storage(&e))?;
        let mut cfg = options.raft.clone();
        cfg.id = options.id;
        cfg.group = group;
        let core = RaftCore::new(cfg, restore).map_err(|e| NodeError::Invalid(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(options.inbox_capacity);
        let (peer_tx, peer_rx) = tokio::sync::mpsc::channel(PEER_QUEUE_MESSAGES);
        let group_loop = GroupLoop::new(
            core,
            log.clone(),
            machine,
            GroupQueues {
                inbox: rx,
                peer_messages: peer_rx,
            },
            self.transport.clone(),
            options.compaction,
            options.snapshot_chunk_bytes,
        );
        // A loop with a thread of its own may wait for its fsyncs; one
        // on a shared runtime must not.
        let group_loop = if options.runtime.is_none() {
            group_loop.write_log_inline()
        } else {
            group_loop
        };
        let shutdown = group_loop.shutdown_signal();
        let (finished_tx, finished) = std::sync::mpsc::channel::<()>();
        let run = async move {
            let _finished = finished_tx;
            group_loop.run().await;
        };
        let thread = match &options.runtime {
            Some(runtime) => {
                runtime.spawn(run);
                None
            }
            None => Some(spawn_loop_thread(group, run)?),
        };
        self.loops.push(RunningLoop {
            shutdown,
            finished,
            thread,
        });
        let handle = GroupHandle {
            group,
            tx,
            peer_tx,
            data,
        };
        self.inboxes.insert(group, handle.peer_inbox());
        Ok(handle)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The store's shard policy (the count stored when it was created).
    pub fn shards(&self) -> &Arc<dyn ShardOf> {
        &self.shards
    }

    /// A group this node hosts.
    pub fn group(&self, group: GroupId) -> Option<&GroupHandle> {
        self.groups.get(&group)
    }

    /// Every group this node hosts.
    pub fn groups(&self) -> impl Iterator<Item = &GroupHandle> {
        self.groups.values()
    }

    /// Where every group's peers' messages go, by group.
    pub fn peer_inboxes(&self) -> BTreeMap<GroupId, PeerInbox> {
        self.inboxes.clone()
    }

    /// Hands a message from a peer to its group; dropped (Raft retries) if
    /// the group is unknown or its inbox is full.
    pub fn deliver(&self, msg: Message) {
        match self.inboxes.get(&msg.group) {
            Some(handle) => handle.deliver(msg),
            None => debug!(
                group = msg.group,
                "message for a group this node does not host"
            ),
        }
    }

    /// Stops every group thread, then the writer, syncing what is queued.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for running in &self.loops {
            running.shutdown.notify_one();
        }
        for running in self.loops.drain(..) {
            // Returns once the loop's future is gone (its sender dropped).
            let _ = running.finished.recv();
            if let Some(thread) = running.thread {
                let _ = thread.join();
            }
        }
        self.groups.clear();
        self.inboxes.clear();
    }
}

/// Runs a group loop on a thread of its own, on a one-thread runtime.
fn spawn_loop_thread(
    group: GroupId,
    run: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<JoinHandle<()>, NodeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| NodeError::Storage(format!("cannot start a group runtime: {e}")))?;
    std::thread::Builder::new()
        .name(format!("flotilla-group-{group}"))
        .spawn(move || runtime.block_on(run))
        .map_err(|e| NodeError::Storage(format!("cannot start a group thread: {e}")))
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

fn restore_state(
    log: &Arc<RocksLogStore>,
    group: GroupId,
    initial: &Membership,
    applied: u64,
) -> Result<RestoreState, flotilla_wal::StorageError> {
    let mut snapshot = log.snapshot_meta(group)?;
    if snapshot.index == 0 && snapshot.membership.voters.is_empty() {
        snapshot.membership = initial.clone();
    }
    let last = log.last_index(group)?;
    let entries = if last > snapshot.index {
        log.entries(group, snapshot.index + 1, last, u64::MAX)?
    } else {
        Vec::new()
    };
    let staged = RocksSnapshotStore::new(log.clone(), group, DEFAULT_CHUNK_BYTES).staged();
    Ok(RestoreState {
        hard_state: log.hard_state(group)?,
        snapshot,
        entries,
        applied,
        staged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::message::MessageBody;

    #[test]
    fn a_full_inbox_does_not_crowd_out_peer_messages() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = Arc::new(
            RocksLogStore::open_with(dir.path(), OpenOptions::new(Durability::Sync)).expect("open"),
        );
        // No loop drains the queues, so they stay as filled here.
        let (tx, _inbox) = tokio::sync::mpsc::channel(1);
        let (peer_tx, mut peers) = tokio::sync::mpsc::channel(PEER_QUEUE_MESSAGES);
        let handle: GroupHandle = GroupHandle {
            group: 1,
            tx,
            peer_tx,
            data: GroupData::new(log, 1),
        };
        let _first = handle.status().expect("the first request fills the inbox");
        assert!(
            matches!(handle.status(), Err(NodeError::Overloaded(_))),
            "callers are answered Overloaded"
        );
        let heartbeat = Message {
            group: 1,
            from: 2,
            to: 1,
            term: 3,
            body: MessageBody::Heartbeat {
                commit: 0,
                round: 1,
            },
        };
        handle.deliver(heartbeat.clone());
        assert_eq!(
            peers.try_recv().ok(),
            Some(heartbeat),
            "the peer's message still got in"
        );
    }
}
