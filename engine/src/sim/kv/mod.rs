//! Client scenarios: what clients see of a simulated key/value group.
//!
//! Every node runs the group driver with the key/value machine and
//! exactly-once sessions over in-memory stores: the node runtime's code
//! path, with the simulator's disk and network in place of RocksDB and
//! QUIC. Clients append unique tokens and make linearizable and lease reads
//! through the drivers, retrying across leader changes with their session
//! numbers, while the seed's faults (crashes, partitions, lost, duplicated
//! and reordered messages, membership changes, leadership transfers) play
//! out as in the Raft scenarios. Then everything heals, every client's
//! last operation must complete, and the seed's history must be
//! linearizable with every acknowledged append in the final values exactly
//! once.
//!
//! [`Sabotage`] breaks one rule on purpose, to show the checks fire.

mod client;
mod machine;

use std::collections::BTreeMap;

use flotilla_wal::NodeId;

use crate::group::ReadConsistency;
use crate::kv::SessionLimits;
use crate::raft::rng::SplitMix64;
use crate::sim::cluster::Cluster;
use crate::sim::linearizability::{self, Event, Op};
use crate::sim::scenario::{heal, random_fault, random_options};
use client::{Outbox, SimClient};
pub use machine::KvSimMachine;

/// A rule broken on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    /// Commands are applied as if they had no session: a retried write is
    /// applied again.
    ApplyRetriesTwice,
    /// Linearizable and lease reads are served at once from whatever the
    /// node has applied, before their read index is confirmed and applied.
    ReadBeforeReadIndex,
}

/// Knobs of a client scenario.
#[derive(Clone, Debug)]
pub struct KvScenarioOptions {
    /// Clients issuing operations.
    pub clients: usize,
    /// Keys they spread their operations over.
    pub keys: usize,
    /// Ticks of faults and load before healing.
    pub fault_ticks: u64,
    /// Ticks a client waits for an answer before sending elsewhere.
    pub request_timeout_ticks: u64,
    /// Election timeouts allowed, after healing, for every client's last
    /// operation to complete.
    pub liveness_timeouts: u64,
    /// A rule to break on purpose (tests of the checks).
    pub sabotage: Option<Sabotage>,
}

impl Default for KvScenarioOptions {
    fn default() -> Self {
        KvScenarioOptions {
            clients: 4,
            keys: 3,
            fault_ticks: 1000,
            request_timeout_ticks: 30,
            liveness_timeouts: 40,
            sabotage: None,
        }
    }
}

/// What one seed's client scenario found.
#[derive(Clone, Debug, Default)]
pub struct KvSeedReport {
    /// The seed.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Raft invariant violations, client-visible errors, a non-linearizable
    /// history, lost or doubled appends, operations that never completed.
    pub violations: Vec<String>,
    /// Appends acknowledged.
    pub appends_acked: u64,
    /// Reads answered, linearizable and lease.
    pub reads: u64,
    /// Attempts that were retries (a timeout, a lost node, `NotLeader`).
    pub retries: u64,
    /// Fingerprint of the run.
    pub trace_hash: u64,
}

/// One seed's run: the cluster, where answers arrive, and the history.
struct Run<'a> {
    cluster: Cluster<KvSimMachine>,
    outbox: Outbox,
    history: Vec<Event>,
    violations: Vec<String>,
    choices: SplitMix64,
    tick: u64,
    keys: Vec<String>,
    options: &'a KvScenarioOptions,
}

impl Run<'_> {
    /// One tick: idle clients may start an operation (if `new_work`), due
    /// attempts are sent, the cluster runs, answers reach their clients.
    fn tick(&mut self, clients: &mut [SimClient], new_work: bool) {
        self.tick += 1;
        let stale_reads = self.options.sabotage == Some(Sabotage::ReadBeforeReadIndex);
        for client in clients.iter_mut() {
            if new_work && client.is_idle() && self.choices.chance(0.5) {
                let key = self.keys[self.choices.range(0, self.keys.len() as u64) as usize].clone();
                match self.choices.range(0, 4) {
                    0 => client.start_read(
                        key,
                        ReadConsistency::Linearizable,
                        self.tick,
                        &mut self.history,
                    ),
                    1 => {
                        client.start_read(key, ReadConsistency::Lease, self.tick, &mut self.history)
                    }
                    _ => client.start_append(key, self.tick, &mut self.history),
                }
            }
            client.send_if_due(
                &mut self.cluster,
                &mut self.outbox,
                self.tick,
                self.options.request_timeout_ticks,
                stale_reads,
            );
        }
        self.cluster.run_ticks(1);
        let nodes = self.cluster.size() as NodeId;
        deliver_answers(
            &mut self.outbox,
            clients,
            self.tick,
            nodes,
            &mut self.history,
            &mut self.violations,
        );
    }

    /// Ticks until every client in `clients` is idle, at most `bound` ticks;
    /// returns whether they all are.
    fn settle(&mut self, clients: &mut [SimClient], bound: u64) -> bool {
        for _ in 0..bound {
            if clients.iter().all(SimClient::is_idle) {
                return true;
            }
            self.tick(clients, false);
        }
        clients.iter().all(SimClient::is_idle)
    }
}

/// Runs the client scenario of `seed`.
pub fn run_kv_seed(seed: u64, options: &KvScenarioOptions) -> KvSeedReport {
    let forget = options.sabotage == Some(Sabotage::ApplyRetriesTwice);
    let mut opts = random_options(seed);
    // The key/value scenario has its own seed stream for faults, so the
    // Raft scenario of the same seed is not changed by it.
    opts.seed = seed ^ 0x4B56_4B56;
    let empty = flotilla_snapshot::MemGroupData::new()
        .image()
        .unwrap_or_default();
    let loader = KvSimMachine::loader(SessionLimits::default(), forget);
    let cluster = Cluster::with_machines(opts, empty, loader);
    let n = cluster.size() as u64;
    let mut run = Run {
        cluster,
        outbox: Outbox::new(),
        history: Vec::new(),
        violations: Vec::new(),
        choices: SplitMix64::new(seed ^ 0xC11E_4750),
        tick: 0,
        keys: (0..options.keys).map(|k| format!("key{k}")).collect(),
        options,
    };
    let mut clients: Vec<SimClient> = (0..options.clients)
        .map(|i| SimClient::new(i, run.choices.range(1, n + 1)))
        .collect();
    for t in 0..options.fault_ticks {
        run.tick(&mut clients, true);
        if t % 15 == 0 {
            random_fault(&mut run.cluster, &mut run.choices);
        }
    }
    heal(&mut run.cluster);
    let bound = options.liveness_timeouts * run.cluster.options().config.election_timeout_ticks;
    if !run.settle(&mut clients, bound) {
        let stuck: Vec<String> = clients
            .iter()
            .filter(|c| !c.is_idle())
            .map(SimClient::describe)
            .collect();
        let nodes: Vec<String> = run
            .cluster
            .nodes
            .iter()
            .map(|node| match node.core() {
                Some(core) => format!(
                    "node {}: {:?} term {} leader {} commit {} last {} applied {} snapshot {} voters {:?} peers {:?}",
                    node.id,
                    core.role(),
                    core.term(),
                    core.leader(),
                    core.commit_index(),
                    core.last_index(),
                    core.applied_index(),
                    core.snapshot_meta().index,
                    core.membership().voters,
                    core.status().peers.iter().map(|p| (p.id, p.match_index, p.next_index, p.state.clone())).collect::<Vec<_>>()
                ),
                None => format!("node {}: down", node.id),
            })
            .collect();
        run.violations.push(format!(
            "liveness: operations did not complete within {} election timeouts after healing: {stuck:?}; {nodes:?}",
            options.liveness_timeouts
        ));
    }
    // A final linearizable read of every key, after everything else.
    let mut reader = [SimClient::new(options.clients, 1)];
    let mut final_reads = Vec::new();
    for key in run.keys.clone() {
        let now = run.tick;
        reader[0].start_read(
            key,
            ReadConsistency::Linearizable,
            now + 1,
            &mut run.history,
        );
        final_reads.push(run.history.len() - 1);
        run.settle(&mut reader, bound);
    }
    let mut violations = std::mem::take(&mut run.violations);
    violations.extend(std::mem::take(&mut run.cluster.checker.violations));
    check_history(&run.history, &final_reads, &mut violations);
    let history = &run.history;
    let sends: u64 = clients.iter().chain(&reader).map(|c| c.sends).sum();
    KvSeedReport {
        seed,
        nodes: n as usize,
        appends_acked: history
            .iter()
            .filter(|e| e.ret.is_some() && matches!(e.op, Op::Append(_)))
            .count() as u64,
        reads: history
            .iter()
            .filter(|e| e.ret.is_some() && matches!(e.op, Op::Get(Some(_))))
            .count() as u64,
        retries: sends.saturating_sub(history.len() as u64),
        violations,
        trace_hash: run.cluster.trace_hash(),
    }
}

/// Hands every answer the drivers gave to the client it belongs to.
fn deliver_answers(
    outbox: &mut Outbox,
    clients: &mut [SimClient],
    now: u64,
    nodes: NodeId,
    history: &mut [Event],
    violations: &mut Vec<String>,
) {
    let writes = std::mem::take(&mut *outbox.writes.borrow_mut());
    for (request, answer) in &writes {
        for client in clients.iter_mut() {
            if let Err(v) = client.on_write_answer(*request, answer, now, nodes, history) {
                violations.push(v);
            }
        }
    }
    let reads = std::mem::take(&mut *outbox.reads.borrow_mut());
    for (request, answer) in &reads {
        for client in clients.iter_mut() {
            if let Err(v) = client.on_read_answer(*request, answer, now, nodes, history) {
                violations.push(v);
            }
        }
    }
}

/// The history is linearizable, and each key's final value (its read in
/// `final_reads`, made after everything else) holds every acknowledged
/// append exactly once and no append twice.
fn check_history(history: &[Event], final_reads: &[usize], violations: &mut Vec<String>) {
    if let Err(e) = linearizability::check(history) {
        violations.push(format!("history not linearizable: {e}"));
    }
    for &read in final_reads {
        let key = &history[read].key;
        let (Op::Get(Some(final_value)), Some(_)) = (&history[read].op, history[read].ret) else {
            violations.push(format!("{key}: the final read never completed"));
            continue;
        };
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for token in final_value.split_inclusive(']') {
            *seen.entry(token).or_default() += 1;
        }
        for (token, count) in &seen {
            if *count > 1 {
                violations.push(format!("{key}: {token} applied {count} times"));
            }
        }
        for event in history.iter().filter(|e| e.key == *key && e.ret.is_some()) {
            if let Op::Append(token) = &event.op {
                if !seen.contains_key(token.as_str()) {
                    violations.push(format!("{key}: acknowledged {token} is missing"));
                }
            }
        }
    }
}
