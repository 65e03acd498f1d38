//! The lab tester's vocabulary (check one leader, `one`, `n_committed`,
//! disconnect, crash...), so the classic Raft scenarios read as they did.
//! One simulated second is [`SECOND`] ticks.

use flotilla_wal::{Index, NodeId, Term};

use crate::raft::core::Role;
use crate::sim::cluster::Cluster;
use crate::sim::network::LinkFaults;

/// Ticks in one simulated second (a tick stands for 10 ms).
pub const SECOND: u64 = 100;

/// The command payload for an integer, as the lab's tests use integers.
pub fn cmd(value: u64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

impl Cluster {
    /// True if the node is up and not disconnected.
    pub fn connected(&self, id: NodeId) -> bool {
        self.node(id).is_up() && !self.is_isolated(id)
    }

    /// Lab `disconnect`: cut the node off both ways.
    pub fn disconnect(&mut self, id: NodeId) {
        self.isolate(id);
    }

    /// Lab `connect`: bring the node back into the network.
    pub fn connect(&mut self, id: NodeId) {
        self.reconnect(id);
    }

    /// Lab `crash1`: disconnect and kill the node, keeping only what it had synced.
    pub fn crash1(&mut self, id: NodeId) {
        self.disconnect(id);
        self.crash(id);
    }

    /// Lab `start1` followed by `connect`: restart from disk and rejoin.
    pub fn revive(&mut self, id: NodeId) {
        self.restart(id);
        self.connect(id);
    }

    /// Lab `checkOneLeader`: waits for exactly one leader among connected nodes
    /// in the newest term and returns it. Panics on two leaders in one term or on none.
    pub fn check_one_leader(&mut self) -> NodeId {
        for _ in 0..10 {
            self.run_ticks(SECOND / 2);
            let mut by_term: std::collections::BTreeMap<Term, Vec<NodeId>> = Default::default();
            for id in 1..=self.size() as u64 {
                if !self.connected(id) {
                    continue;
                }
                if let Some(core) = self.core(id).filter(|c| c.role() == Role::Leader) {
                    by_term.entry(core.term()).or_default().push(id);
                }
            }
            for (term, leaders) in &by_term {
                assert!(
                    leaders.len() <= 1,
                    "term {term} has {} leaders: {leaders:?}",
                    leaders.len()
                );
            }
            if let Some((_, leaders)) = by_term.iter().next_back() {
                return leaders[0];
            }
        }
        panic!("expected one leader, got none");
    }

    /// Lab `checkTerms`: every connected node agrees on the term; returns it.
    pub fn check_terms(&self) -> Term {
        let mut term = None;
        for id in 1..=self.size() as u64 {
            if !self.connected(id) {
                continue;
            }
            let Some(core) = self.core(id) else { continue };
            match term {
                None => term = Some(core.term()),
                Some(t) => assert_eq!(t, core.term(), "servers disagree on term"),
            }
        }
        term.unwrap_or(0)
    }

    /// Lab `checkNoLeader`: no connected node believes it leads.
    pub fn check_no_leader(&self) {
        for id in 1..=self.size() as u64 {
            if self.connected(id) {
                let leading = self.core(id).is_some_and(|c| c.role() == Role::Leader);
                assert!(
                    !leading,
                    "expected no leader among connected servers, but {id} claims to be leader"
                );
            }
        }
    }

    /// Lab `nCommitted`: how many nodes applied `index`, and the command there.
    pub fn n_committed(&mut self, index: Index) -> (usize, Option<Vec<u8>>) {
        self.applied_at(index)
    }

    /// Lab `rf.Start` on node `id`: `Some((index, term))` if it leads and accepted.
    pub fn start_on(&mut self, id: NodeId, command: Vec<u8>) -> Option<(Index, Term)> {
        self.propose(id, command).ok()
    }

    /// Lab `one`: submits `command` until some leader gets it committed on at
    /// least `expected` nodes; returns its index. Panics after 10 simulated seconds.
    pub fn one(&mut self, command: Vec<u8>, expected: usize, retry: bool) -> Index {
        let deadline = self.now + 10 * SECOND * crate::sim::STEPS_PER_TICK;
        let mut starts = 0u64;
        while self.now < deadline {
            let mut index = None;
            for _ in 0..self.size() {
                starts = starts % self.size() as u64 + 1;
                if self.connected(starts) {
                    if let Some((i, _)) = self.start_on(starts, command.clone()) {
                        index = Some(i);
                        break;
                    }
                }
            }
            if let Some(index) = index {
                let agreed_by = self.now + 2 * SECOND * crate::sim::STEPS_PER_TICK;
                while self.now < agreed_by {
                    let (count, value) = self.n_committed(index);
                    if count > 0 && count >= expected && value.as_deref() == Some(&command[..]) {
                        return index;
                    }
                    self.run_ticks(2);
                }
                assert!(retry, "one({command:?}) failed to reach agreement");
            } else {
                self.run_ticks(5);
            }
        }
        panic!("one({command:?}) failed to reach agreement in 10 seconds");
    }

    /// Lab `wait`: waits for `n` nodes to apply `index`. Gives up (None) if a
    /// node moved past `start_term`, since the entry may then never commit.
    pub fn wait(&mut self, index: Index, n: usize, start_term: Option<Term>) -> Option<Vec<u8>> {
        let mut pause = 1;
        for _ in 0..30 {
            let (count, _) = self.n_committed(index);
            if count >= n {
                break;
            }
            self.run_ticks(pause);
            pause = (pause * 2).min(SECOND);
            if let Some(term) = start_term {
                if self
                    .nodes
                    .iter()
                    .filter_map(|n| n.core())
                    .any(|c| c.term() > term)
                {
                    return None;
                }
            }
        }
        let (count, value) = self.n_committed(index);
        assert!(
            count >= n,
            "only {count} decided for index {index}; wanted {n}"
        );
        value
    }

    /// Lab `setunreliable`.
    pub fn set_unreliable(&mut self, unreliable: bool) {
        let long = self.net.faults.long_delay;
        self.net.faults = if unreliable {
            LinkFaults::unreliable()
        } else {
            LinkFaults::reliable()
        };
        self.net.faults.long_delay = long;
        self.net.faults.long_delay_max = if long > 0.0 {
            2 * SECOND * crate::sim::STEPS_PER_TICK / 3
        } else {
            0
        };
    }

    /// Lab `setlongreordering`: some messages arrive up to ~2/3 s late.
    pub fn set_long_reordering(&mut self, on: bool) {
        self.net.faults.long_delay = if on { 0.1 } else { 0.0 };
        self.net.faults.long_delay_max = if on {
            2 * SECOND * crate::sim::STEPS_PER_TICK / 3
        } else {
            0
        };
    }

    /// Lab `rpcTotal`: RPCs (requests; their answers are part of the same RPC) sent so far.
    pub fn rpc_total(&self) -> u64 {
        self.net.requests_sent
    }

    /// Lab `bytesTotal`: encoded bytes sent so far.
    pub fn bytes_total(&self) -> u64 {
        self.net.bytes_sent
    }
}
