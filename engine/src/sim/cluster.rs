//! The simulated cluster: nodes, network, disks and the step loop. Each
//! node runs a [`GroupDriver`](crate::group::GroupDriver), as a node's group
//! loop does, over a state machine: the recording [`StateMachine`] for the
//! Raft-level scenarios, or the key/value machine with sessions for the
//! client scenarios (`sim::kv`).

use flotilla_wal::{Index, Membership, NodeId, Term};

use crate::codec::encode_message;
use crate::raft::config::Config;
use crate::raft::core::{RaftCore, Role};
use crate::raft::error::ProposeError;
use crate::raft::message::SnapshotMeta;
use crate::raft::rng::SplitMix64;
use crate::sim::checker::Checker;
use crate::sim::disk::SimDisk;
use crate::sim::fnv::Fnv64;
use crate::sim::network::{LinkFaults, SimNetwork};
use crate::sim::node::{MachineLoader, SimMachine, SimNode, StateMachine};

/// Simulated steps per core tick: messages and syncs take a few steps.
pub const STEPS_PER_TICK: u64 = 10;

/// How to build a simulated cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Number of nodes (ids 1..=nodes).
    pub nodes: usize,
    /// Initial voters are nodes 1..=voters; the rest start outside the group.
    pub voters: usize,
    /// The seed that decides everything.
    pub seed: u64,
    /// Initial network faults.
    pub faults: LinkFaults,
    /// Each node snapshots its state machine every this many applied entries.
    pub snapshot_every: Option<u64>,
    /// Each node snapshots when its durable log exceeds this many bytes.
    pub max_raft_state: Option<u64>,
    /// Disk sync delay range in steps, inclusive.
    pub sync_delay: (u64, u64),
    /// Panic at the first safety violation.
    pub strict: bool,
    /// Template for every node's core configuration (id and seed are filled in).
    pub config: Config,
}

impl ClusterOptions {
    /// `nodes` voters, reliable network, strict checking.
    pub fn new(nodes: usize, seed: u64) -> Self {
        let mut config = Config::new(1, 1);
        config.snapshot_chunk_bytes = 256;
        ClusterOptions {
            nodes,
            voters: nodes,
            seed,
            faults: LinkFaults::reliable(),
            snapshot_every: None,
            max_raft_state: None,
            sync_delay: (1, 3),
            strict: true,
            config,
        }
    }
}

impl ClusterOptions {
    /// The lab suite's setting: `nodes` voters with lab-like timing: election
    /// timeout 15-30 ticks (150-300 ms), heartbeats every 5 ticks (20 per second,
    /// within the lab's RPC budget), leases of 12 ticks.
    pub fn lab(nodes: usize, seed: u64) -> Self {
        let mut opts = ClusterOptions::new(nodes, seed);
        opts.config.election_timeout_ticks = 15;
        opts.config.heartbeat_ticks = 5;
        opts.config.lease_ticks = 12;
        opts
    }
}

/// A deterministic simulated cluster of Raft groups, one node's driver
/// each, over state machines `M`.
pub struct Cluster<M: SimMachine = StateMachine> {
    /// Nodes, `nodes[i]` has id `i + 1`.
    pub nodes: Vec<SimNode<M>>,
    /// The network.
    pub net: SimNetwork,
    /// The safety checker.
    pub checker: Checker,
    /// Current step.
    pub now: u64,
    rng: SplitMix64,
    trace: Fnv64,
    opts: ClusterOptions,
    was_leader: Vec<bool>,
    checked_commit: Vec<Index>,
    /// Nodes cut off by `isolate`, so `reconnect` restores only links between reachable nodes.
    isolated: std::collections::BTreeSet<NodeId>,
    /// The most recent events, kept when `record_events` was called (for `--trace`).
    events: Option<std::collections::VecDeque<String>>,
    /// Builds a node's machine from a snapshot image.
    load: MachineLoader<M>,
    /// Nodes whose driver stopped on a failed apply, already reported.
    stopped: std::collections::BTreeSet<NodeId>,
}

impl Cluster {
    /// Builds and starts a cluster of recording state machines.
    pub fn new(opts: ClusterOptions) -> Self {
        Cluster::with_machines(
            opts,
            StateMachine::default().image(),
            StateMachine::loader(),
        )
    }
}

impl<M: SimMachine> Cluster<M> {
    /// Builds and starts a cluster whose nodes start from the snapshot
    /// image `initial_image` and build their machines with `load`.
    pub fn with_machines(
        opts: ClusterOptions,
        initial_image: Vec<u8>,
        load: MachineLoader<M>,
    ) -> Self {
        let membership = Membership::with_voters(1..=opts.voters as u64);
        let mut nodes = Vec::new();
        for id in 1..=opts.nodes as u64 {
            let snapshot = SnapshotMeta {
                membership: if id as usize <= opts.voters {
                    membership.clone()
                } else {
                    Membership::default()
                },
                ..SnapshotMeta::default()
            };
            let mut config = opts.config.clone();
            config.id = id;
            config.seed = opts.seed;
            let mut node = SimNode {
                id,
                driver: None,
                crashed_machine: None,
                disk: SimDisk::new(snapshot, initial_image.clone()),
                config,
                read_states: Vec::new(),
            };
            if let Err(e) = node.start(&load) {
                panic!("simulated node {id} failed to start: {e}");
            }
            nodes.push(node);
        }
        let mut net = SimNetwork::new(opts.nodes);
        net.faults = opts.faults.clone();
        let mut checker = Checker::default();
        checker.strict = opts.strict;
        Cluster {
            rng: SplitMix64::new(opts.seed),
            was_leader: vec![false; opts.nodes],
            checked_commit: vec![0; opts.nodes],
            isolated: Default::default(),
            events: None,
            load,
            stopped: Default::default(),
            nodes,
            net,
            checker,
            now: 0,
            trace: Fnv64::default(),
            opts,
        }
    }

    /// Keeps the last `capacity` events (deliveries, persists, crashes...) for debugging.
    pub fn record_events(&mut self, capacity: usize) {
        self.events = Some(std::collections::VecDeque::with_capacity(capacity));
    }

    /// The recorded events, oldest first.
    pub fn events(&self) -> Vec<String> {
        self.events.iter().flatten().cloned().collect()
    }

    fn event(&mut self, what: impl FnOnce() -> String) {
        if let Some(events) = self.events.as_mut() {
            if events.len() == events.capacity() {
                events.pop_front();
            }
            events.push_back(format!("[{}] {}", self.now, what()));
        }
    }

    /// The fingerprint of everything that happened so far.
    pub fn trace_hash(&self) -> u64 {
        self.trace.finish()
    }

    /// The cluster's random number generator (for scenario choices).
    pub fn rng(&mut self) -> &mut SplitMix64 {
        &mut self.rng
    }

    /// Number of nodes.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Node `id`.
    pub fn node(&self, id: NodeId) -> &SimNode<M> {
        &self.nodes[id as usize - 1]
    }

    /// The running core of node `id`, if it is up.
    pub fn core(&self, id: NodeId) -> Option<&RaftCore> {
        self.nodes[id as usize - 1].core()
    }

    /// Runs `f` on node `id`'s core (if up) and processes what it produced.
    pub fn with_core<R>(&mut self, id: NodeId, f: impl FnOnce(&mut RaftCore) -> R) -> Option<R> {
        let result = self.nodes[id as usize - 1]
            .driver
            .as_mut()
            .map(|d| f(d.core_mut()));
        self.drain(id);
        result
    }

    /// Runs `f` on node `id`'s driver (if up), as a caller of the node's
    /// group would, and processes what it produced.
    pub fn with_driver<R>(
        &mut self,
        id: NodeId,
        f: impl FnOnce(&mut crate::sim::node::SimDriver<M>) -> R,
    ) -> Option<R> {
        let result = self.nodes[id as usize - 1].driver.as_mut().map(f);
        self.drain(id);
        result
    }

    /// Proposes `data` on node `id`.
    pub fn propose(&mut self, id: NodeId, data: Vec<u8>) -> Result<(Index, Term), ProposeError> {
        self.with_core(id, |c| c.propose(data))
            .unwrap_or(Err(ProposeError::NotLeader { leader_hint: 0 }))
    }

    /// Advances one step: ticks, deliveries, disk syncs, then the invariant checks.
    pub fn step(&mut self) {
        self.now += 1;
        if self.now % STEPS_PER_TICK == 0 {
            for id in 1..=self.nodes.len() as u64 {
                if let Some(driver) = self.nodes[id as usize - 1].driver.as_mut() {
                    driver.core_mut().tick();
                    self.drain(id);
                }
            }
        }
        for msg in self.net.due(self.now) {
            let to = msg.to;
            let Some(driver) = self
                .nodes
                .get_mut(to as usize - 1)
                .and_then(|n| n.driver.as_mut())
            else {
                continue;
            };
            self.trace.write(&encode_message(&msg));
            if let Some(events) = self.events.as_mut() {
                if events.len() == events.capacity() {
                    events.pop_front();
                }
                events.push_back(format!("[{}] deliver {:?}", self.now, msg));
            }
            if let Err(e) = driver.step(msg) {
                self.checker.violation(format!("refused message: {e}"));
            }
            self.drain(to);
        }
        for id in 1..=self.nodes.len() as u64 {
            let synced = self.nodes[id as usize - 1].disk.sync_due(self.now);
            for done in synced {
                if let Some(e) = done.error {
                    self.checker.violation(format!("node {id}: {e}"));
                }
                if let Some((meta, image)) = done.installed {
                    match (self.load)(&image, &meta) {
                        Ok(machine) => {
                            if let Some(driver) = self.nodes[id as usize - 1].driver.as_mut() {
                                *driver.machine_mut() = machine;
                            }
                        }
                        Err(e) => self.checker.violation(format!("node {id}: {e}")),
                    }
                }
                self.trace.write_u64(done.seq);
                self.event(|| format!("node {id} synced persist seq {}", done.seq));
                if let Some(driver) = self.nodes[id as usize - 1].driver.as_mut() {
                    driver.core_mut().on_persisted(done.seq);
                }
                self.drain(id);
            }
        }
        self.check_invariants();
    }

    /// Runs `ticks` ticks' worth of steps.
    pub fn run_ticks(&mut self, ticks: u64) {
        for _ in 0..ticks * STEPS_PER_TICK {
            self.step();
        }
    }

    /// Steps until `done` holds or `max_ticks` pass; returns whether it held.
    pub fn run_until(&mut self, max_ticks: u64, mut done: impl FnMut(&Self) -> bool) -> bool {
        for _ in 0..max_ticks * STEPS_PER_TICK {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// Carries out everything node `id`'s driver has ready, as a node's
    /// group loop does: persist, send, apply, answer reads, read snapshot
    /// chunks; then the end of the round.
    fn drain(&mut self, id: NodeId) {
        let idx = id as usize - 1;
        loop {
            let Some(driver) = self.nodes[idx].driver.as_mut() else {
                return;
            };
            let Some(ready) = driver.next_ready() else {
                driver.end_round();
                return;
            };
            let core = driver.core();
            let term = core.term();
            if ready.is_empty() {
                self.checker.violation(format!(
                    "node {id}: has_ready() was true but the Ready is empty"
                ));
                return;
            }
            if let Some(request) = ready.persist {
                if let Some(first) = request.entries.first() {
                    let prev_term = core.term_at(first.index - 1);
                    self.checker
                        .observe_written(id, prev_term, &request.entries);
                }
                self.trace.write_u64(request.seq);
                let summary = format!(
                    "node {id} persist seq {} hs={:?} entries={:?} install={:?} compact={:?} chunks={}",
                    request.seq,
                    request.hard_state,
                    request.entries.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
                    request.install_snapshot.as_ref().map(|m| m.index),
                    request.compact.as_ref().map(|m| m.index),
                    request.stage_chunks.len()
                );
                self.event(|| summary);
                let delay = self
                    .rng
                    .range(self.opts.sync_delay.0, self.opts.sync_delay.1 + 1);
                self.nodes[idx].disk.write(self.now + delay, request);
            }
            for msg in ready.messages {
                let encoded = encode_message(&msg);
                self.trace.write(&encoded);
                self.net.send(self.now, msg, encoded.len(), &mut self.rng);
            }
            for entry in &ready.committed_entries {
                self.trace.write_u64(entry.index);
                self.checker.observe_committed(id, entry, term);
            }
            let node = &mut self.nodes[idx];
            let Some(driver) = node.driver.as_mut() else {
                return;
            };
            driver.apply(ready.committed_entries);
            if let Some(why) = driver.fatal() {
                if self.stopped.insert(id) {
                    let why = format!("node {id}: {why}");
                    self.checker.violation(why);
                }
            }
            let foreign = driver.on_read_states(ready.read_states);
            node.read_states.extend(foreign);
            for request in ready.snapshot_reads {
                let _ = driver
                    .core_mut()
                    .answer_snapshot_read(&request, &node.disk.snapshots);
            }
            self.maybe_snapshot(idx);
        }
    }

    /// The application's snapshot policy: every N entries or past a log size.
    fn maybe_snapshot(&mut self, idx: usize) {
        let node = &mut self.nodes[idx];
        let Some(driver) = node.driver.as_mut() else {
            return;
        };
        let snapshot_index = node.disk.snapshot_index();
        let applied = driver.machine().applied_index();
        if applied <= snapshot_index || driver.core().applied_index() != applied {
            return;
        }
        let by_count = self
            .opts
            .snapshot_every
            .is_some_and(|n| applied >= snapshot_index + n);
        let by_size = self
            .opts
            .max_raft_state
            .is_some_and(|max| node.disk.raft_state_bytes() > max);
        if !(by_count || by_size) {
            return;
        }
        let image = match driver.machine().image() {
            Ok(image) => image,
            Err(e) => {
                let why = format!("node {}: snapshot image: {e}", idx + 1);
                self.checker.violation(why);
                return;
            }
        };
        if let Ok(meta) = driver.core_mut().compact(applied) {
            node.disk.snapshots.save(meta, image);
        }
    }

    fn check_invariants(&mut self) {
        for idx in 0..self.nodes.len() {
            let Some(core) = self.nodes[idx].core() else {
                continue;
            };
            let is_leader = core.role() == Role::Leader;
            if is_leader {
                self.checker.observe_leader(core.term(), core.id());
                if !self.was_leader[idx] {
                    self.checker.check_leader_completeness(core);
                }
            }
            self.was_leader[idx] = is_leader;
            let commit = core.commit_index();
            let from = self.checked_commit[idx].max(core.snapshot_meta().index) + 1;
            for index in from..=commit {
                if let Some(entry) = core.entry_at(index) {
                    self.checker
                        .observe_committed(core.id(), entry, core.term());
                }
            }
            self.checked_commit[idx] = self.checked_commit[idx].max(commit);
        }
    }

    /// Kills node `id`: its core and unsynced writes are gone; its disk stays.
    pub fn crash(&mut self, id: NodeId) {
        let node = &mut self.nodes[id as usize - 1];
        if let Some(driver) = node.driver.take() {
            node.crashed_machine = Some(driver.into_machine());
        }
        node.disk.crash();
        node.read_states.clear();
        self.was_leader[id as usize - 1] = false;
        self.trace.write(b"crash");
        self.trace.write_u64(id);
        self.event(|| format!("crash node {id}"));
    }

    /// Restarts a crashed node from its disk.
    pub fn restart(&mut self, id: NodeId) {
        let boot_seed = self.rng.next_u64();
        let node = &mut self.nodes[id as usize - 1];
        if node.driver.is_some() {
            return;
        }
        // A restarted node draws new election timeouts, as a real process would.
        node.config.seed = boot_seed;
        if let Err(e) = node.start(&self.load) {
            self.checker
                .violation(format!("restart of node {id} failed: {e}"));
        }
        self.checked_commit[id as usize - 1] = 0;
        self.stopped.remove(&id);
        self.trace.write(b"restart");
        self.trace.write_u64(id);
        self.event(|| format!("restart node {id}"));
        self.drain(id);
    }

    /// Cuts node `id` off from every other node, both ways.
    pub fn isolate(&mut self, id: NodeId) {
        self.isolated.insert(id);
        for other in 1..=self.nodes.len() as u64 {
            if other != id {
                self.net.set_link(id, other, false);
                self.net.set_link(other, id, false);
            }
        }
    }

    /// Reconnects node `id` with every node that is not itself isolated.
    pub fn reconnect(&mut self, id: NodeId) {
        self.isolated.remove(&id);
        for other in 1..=self.nodes.len() as u64 {
            if other != id && !self.isolated.contains(&other) {
                self.net.set_link(id, other, true);
                self.net.set_link(other, id, true);
            }
        }
    }

    /// Splits the cluster: nodes talk only within their own part.
    pub fn partition(&mut self, parts: &[Vec<NodeId>]) {
        self.net.heal();
        self.isolated.clear();
        for a in 1..=self.nodes.len() as u64 {
            for b in 1..=self.nodes.len() as u64 {
                let same = parts.iter().any(|p| p.contains(&a) && p.contains(&b));
                if a != b && !same {
                    self.net.set_link(a, b, false);
                }
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.net.heal();
        self.isolated.clear();
    }

    /// True if `id` was cut off with `isolate` and not reconnected.
    pub fn is_isolated(&self, id: NodeId) -> bool {
        self.isolated.contains(&id)
    }

    /// Current leaders among running nodes: (id, term).
    pub fn leaders(&self) -> Vec<(NodeId, Term)> {
        self.nodes
            .iter()
            .filter_map(|n| n.core())
            .filter(|c| c.role() == Role::Leader)
            .map(|c| (c.id(), c.term()))
            .collect()
    }

    /// The options the cluster was built with.
    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }
}

impl Cluster {
    /// How many running nodes have applied `index`, and the command they agree on.
    /// Disagreement is a safety violation.
    pub fn applied_at(&mut self, index: Index) -> (usize, Option<Vec<u8>>) {
        let mut count = 0;
        let mut value: Option<Vec<u8>> = None;
        for idx in 0..self.nodes.len() {
            let Some(machine) = self.nodes[idx].machine() else {
                continue;
            };
            if let Some(cmd) = machine.commands.get(&index) {
                if let Some(v) = &value {
                    if v != cmd {
                        let msg = format!("nodes disagree on the command applied at {index}");
                        self.checker.violation(msg);
                    }
                }
                value = Some(cmd.clone());
                count += 1;
            }
        }
        (count, value)
    }
}
