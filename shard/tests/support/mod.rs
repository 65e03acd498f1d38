//! Controller clients in the simulator: each sends its operations in turn
//! through a node's group driver (as a member serves a client's request),
//! keeps its session number across retries, follows a leader hint or tries
//! the next node on an error, a down node or a timeout.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use flotilla_engine::group::{NodeError, ReadConsistency};
use flotilla_engine::sim::{Answers, Cluster, ClusterOptions, SimReply};
use flotilla_engine::NodeId;
use flotilla_shard::{
    sim_loader, ControllerCommand, ControllerOp, ControllerReply, Query, ShardConfig,
    SimController, NO_GROUP,
};
use flotilla_snapshot::MemGroupData;

/// The lab's shard count.
pub const NSHARDS: usize = 10;

/// Ticks a client waits for an answer before it tries another node.
const PATIENCE_TICKS: u64 = 30;

/// Ticks every operation of a batch must be answered within.
const DEADLINE_TICKS: u64 = 20_000;

/// A controller group of `nodes` nodes under `opts`' faults.
pub fn controller_cluster(opts: ClusterOptions) -> Cluster<SimController> {
    let image = MemGroupData::new().image().expect("empty image");
    Cluster::with_machines(opts, image, sim_loader(NSHARDS))
}

/// One request in flight.
struct InFlight {
    answers_read: Option<Answers<Option<Vec<u8>>>>,
    answers_write: Option<Answers<ControllerReply>>,
    sent_at: u64,
}

/// What a client does next.
#[derive(Clone, Debug)]
pub enum Step {
    /// A change.
    Op(ControllerOp),
    /// A linearizable query.
    Query(Query),
}

/// What a client got.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A change's reply.
    Reply(ControllerReply),
    /// A query's configuration.
    Config(ShardConfig),
}

impl Outcome {
    /// The configuration number a change made; panics on a refusal or a query.
    pub fn num(&self) -> u64 {
        match self {
            Outcome::Reply(Ok(num)) => *num,
            other => panic!("expected an applied change, got {other:?}"),
        }
    }

    /// The configuration a query answered.
    pub fn config(self) -> ShardConfig {
        match self {
            Outcome::Config(config) => config,
            other => panic!("expected a configuration, got {other:?}"),
        }
    }
}

/// A client with its session.
pub struct Clerk {
    client: u64,
    seq: u64,
    target: NodeId,
}

impl Clerk {
    /// Client `client` (non-zero), starting at node 1.
    pub fn new(client: u64) -> Self {
        Clerk {
            client,
            seq: 0,
            target: 1,
        }
    }

    /// Runs one step to its answer.
    pub fn run(&mut self, cluster: &mut Cluster<SimController>, step: Step) -> Outcome {
        run_concurrently(cluster, vec![(self, vec![step])])
            .pop()
            .and_then(|mut o| o.pop())
            .expect("one outcome")
    }

    /// A change.
    pub fn op(
        &mut self,
        cluster: &mut Cluster<SimController>,
        op: ControllerOp,
    ) -> ControllerReply {
        match self.run(cluster, Step::Op(op)) {
            Outcome::Reply(reply) => reply,
            other => panic!("a change answered {other:?}"),
        }
    }

    /// Join of groups with their nodes; panics if refused.
    pub fn join(&mut self, cluster: &mut Cluster<SimController>, groups: &[(u64, &[u64])]) -> u64 {
        let groups: BTreeMap<u64, Vec<u64>> = groups
            .iter()
            .map(|(g, nodes)| (*g, nodes.to_vec()))
            .collect();
        self.op(cluster, ControllerOp::Join(groups))
            .expect("join applied")
    }

    /// Leave of groups; panics if refused.
    pub fn leave(&mut self, cluster: &mut Cluster<SimController>, groups: &[u64]) -> u64 {
        self.op(cluster, ControllerOp::Leave(groups.to_vec()))
            .expect("leave applied")
    }

    /// Move; panics if refused.
    pub fn move_shard(
        &mut self,
        cluster: &mut Cluster<SimController>,
        shard: u16,
        group: u64,
    ) -> u64 {
        self.op(cluster, ControllerOp::Move { shard, group })
            .expect("move applied")
    }

    /// A linearizable query.
    pub fn query(&mut self, cluster: &mut Cluster<SimController>, query: Query) -> ShardConfig {
        self.run(cluster, Step::Query(query)).config()
    }

    fn send(&mut self, cluster: &mut Cluster<SimController>, step: &Step) -> Option<InFlight> {
        let now = cluster.now;
        match step {
            Step::Op(op) => {
                let command = ControllerCommand {
                    client: self.client,
                    seq: self.seq,
                    op: op.clone(),
                }
                .encode();
                let answers: Answers<ControllerReply> = Answers::default();
                let reply = SimReply::new(self.seq, &answers);
                cluster.with_driver(self.target, |d| d.write(command, reply))?;
                Some(InFlight {
                    answers_read: None,
                    answers_write: Some(answers),
                    sent_at: now,
                })
            }
            Step::Query(query) => {
                let answers: Answers<Option<Vec<u8>>> = Answers::default();
                let reply = SimReply::new(0, &answers);
                let key = query.key();
                cluster.with_driver(self.target, |d| {
                    d.read(ReadConsistency::Linearizable, Some(key), reply)
                })?;
                Some(InFlight {
                    answers_read: Some(answers),
                    answers_write: None,
                    sent_at: now,
                })
            }
        }
    }

    /// Reads the answer of `flight`: `Some(outcome)` when done; otherwise
    /// whether to try another node now.
    fn poll(
        &mut self,
        cluster: &Cluster<SimController>,
        flight: &InFlight,
    ) -> Result<Outcome, bool> {
        let error = if let Some(answers) = &flight.answers_write {
            match answers.borrow().first() {
                Some((_, Ok(reply))) => return Ok(Outcome::Reply(reply.clone())),
                Some((_, Err(e))) => Some(e.clone()),
                None => None,
            }
        } else if let Some(answers) = &flight.answers_read {
            match answers.borrow().first() {
                Some((_, Ok(Some(bytes)))) => {
                    let config =
                        ShardConfig::decode(bytes).expect("a query answers a configuration");
                    return Ok(Outcome::Config(config));
                }
                Some((_, Ok(None))) => panic!("a query answered nothing"),
                Some((_, Err(e))) => Some(e.clone()),
                None => None,
            }
        } else {
            None
        };
        match error {
            Some(NodeError::NotLeader {
                leader: Some(leader),
            }) if leader != self.target => {
                self.target = leader;
                Err(true)
            }
            Some(NodeError::Storage(why)) => panic!("node {}: storage failed: {why}", self.target),
            Some(_) => {
                self.rotate(cluster);
                Err(true)
            }
            None if cluster.now
                >= flight.sent_at + PATIENCE_TICKS * flotilla_engine::sim::STEPS_PER_TICK =>
            {
                self.rotate(cluster);
                Err(true)
            }
            None => Err(false),
        }
    }

    fn rotate(&mut self, cluster: &Cluster<SimController>) {
        self.target = self.target % cluster.size() as u64 + 1;
    }
}

/// Runs every clerk's steps, in order per clerk and concurrently between
/// clerks, to their answers; the outcomes by clerk.
pub fn run_concurrently(
    cluster: &mut Cluster<SimController>,
    clerks: Vec<(&mut Clerk, Vec<Step>)>,
) -> Vec<Vec<Outcome>> {
    run_concurrently_with(cluster, clerks, |_| {})
}

/// [`run_concurrently`], calling `between` on the cluster before every
/// step (to crash and restart nodes while requests are in flight).
pub fn run_concurrently_with(
    cluster: &mut Cluster<SimController>,
    mut clerks: Vec<(&mut Clerk, Vec<Step>)>,
    mut between: impl FnMut(&mut Cluster<SimController>),
) -> Vec<Vec<Outcome>> {
    let mut outcomes: Vec<Vec<Outcome>> = vec![Vec::new(); clerks.len()];
    let mut flights: Vec<Option<InFlight>> = (0..clerks.len()).map(|_| None).collect();
    let deadline = cluster.now + DEADLINE_TICKS * flotilla_engine::sim::STEPS_PER_TICK;
    loop {
        let mut busy = false;
        for (i, (clerk, steps)) in clerks.iter_mut().enumerate() {
            let Some(step) = steps.get(outcomes[i].len()) else {
                continue;
            };
            busy = true;
            let resend = match &flights[i] {
                None => {
                    if matches!(step, Step::Op(_)) {
                        clerk.seq += 1;
                    }
                    true
                }
                Some(flight) => match clerk.poll(cluster, flight) {
                    Ok(outcome) => {
                        outcomes[i].push(outcome);
                        flights[i] = None;
                        false
                    }
                    Err(resend) => resend,
                },
            };
            if resend {
                let step = step.clone();
                flights[i] = clerk.send(cluster, &step);
                if flights[i].is_none() {
                    // The node is down: an answer that never comes, so the
                    // next poll tries the next node.
                    flights[i] = Some(InFlight {
                        answers_read: None,
                        answers_write: None,
                        sent_at: 0,
                    });
                }
            }
        }
        if !busy {
            return outcomes;
        }
        assert!(
            cluster.now < deadline,
            "clients still waiting after {DEADLINE_TICKS} ticks"
        );
        between(cluster);
        cluster.step();
    }
}

/// The lab's `check`: the newest configuration has exactly `groups`, every
/// shard on one of them (when there are any), and the groups' shard
/// counts within one of each other.
pub fn check(config: &ShardConfig, groups: &[u64]) {
    let mut named: Vec<u64> = config.groups.keys().copied().collect();
    let mut expected = groups.to_vec();
    named.sort_unstable();
    expected.sort_unstable();
    assert_eq!(named, expected, "wanted groups {expected:?} in {config:?}");
    if !groups.is_empty() {
        for (shard, group) in config.shards.iter().enumerate() {
            assert!(
                config.groups.contains_key(group),
                "shard {shard} -> invalid group {group} in {config:?}"
            );
        }
    } else {
        assert!(config.shards.iter().all(|g| *g == NO_GROUP), "{config:?}");
    }
    let counts = config.shard_counts();
    if let (Some(min), Some(max)) = (counts.values().min(), counts.values().max()) {
        assert!(
            max <= &(min + 1),
            "max {max} too much larger than min {min}: {config:?}"
        );
    }
}

/// Runs until every running node has applied the same index, then checks
/// that all of them hold the same configurations, every one of them.
pub fn check_same_config_on_servers(cluster: &mut Cluster<SimController>) {
    let caught_up = cluster.run_until(5_000, |c| {
        let applied: Vec<u64> = c
            .nodes
            .iter()
            .filter_map(|n| n.driver.as_ref())
            .map(|d| d.core().applied_index())
            .collect();
        let commits: Vec<u64> = c
            .nodes
            .iter()
            .filter_map(|n| n.driver.as_ref())
            .map(|d| d.core().commit_index())
            .collect();
        applied.windows(2).all(|w| w[0] == w[1]) && applied == commits
    });
    assert!(caught_up, "the replicas never caught up with each other");
    let mut reference: Option<(NodeId, Vec<ShardConfig>)> = None;
    for node in &cluster.nodes {
        let Some(driver) = node.driver.as_ref() else {
            continue;
        };
        let machine = driver.machine();
        let configs: Vec<ShardConfig> = (0..=machine.latest().num)
            .map(|n| {
                machine
                    .query(Query::Number(n))
                    .expect("stored configuration")
            })
            .collect();
        match &reference {
            None => reference = Some((node.id, configs)),
            Some((id, first)) => assert_eq!(
                &configs, first,
                "node {} and node {id} hold different configurations",
                node.id
            ),
        }
    }
}
