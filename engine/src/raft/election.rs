//! Timers, elections (with PreVote), role changes and CheckQuorum.

use std::collections::BTreeMap;

use flotilla_wal::{Entry, EntryPayload, NodeId, Term};

use crate::raft::core::{RaftCore, Role};
use crate::raft::message::MessageBody;
use crate::raft::progress::Progress;
use crate::raft::read::LeaderReads;

impl RaftCore {
    /// Restarts the election timer with a fresh timeout from `[T, 2T)`. Every
    /// restart draws anew, except on repeated contact from the leader we
    /// follow (`follow` zeroes the count and keeps the draw made when we began
    /// to follow it): a kept draw would give a node the same place in every
    /// race after a failed election.
    pub(crate) fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let base = self.cfg.election_timeout_ticks;
        self.randomized_election_timeout = self.rng.range(base, 2 * base);
    }

    /// True while this node leads, or has heard from its leader within the
    /// election timeout.
    fn hears_from_leader(&self) -> bool {
        self.leader != 0 && self.election_elapsed < self.cfg.election_timeout_ticks
    }

    /// True while this node has heard from a leader within the election
    /// timeout and CheckQuorum makes such a leader step down once it loses
    /// its quorum, so that holding on to it cannot block a needed election.
    pub(crate) fn in_leader_lease(&self) -> bool {
        self.cfg.check_quorum && self.hears_from_leader()
    }

    /// Whether a vote request from `candidate` is ignored outright, term
    /// and all: we hear from a live leader and the candidate is no voter in
    /// our latest configuration. That is a removed node that missed its
    /// removal and campaigns on, term after term; without PreVote and
    /// CheckQuorum nothing else stops it deposing every leader (simulator
    /// seed 7000282). Ignoring it is safe (a vote not given never breaks
    /// safety). Membership alone is not enough: a node that missed a
    /// configuration cannot tell a removed candidate from one added, or
    /// re-added, after its information (seeds 7002648, 7002193); while a
    /// leader reaches it, that leader brings the configuration, and once none
    /// does the request is answered as any other.
    pub(crate) fn ignores_candidate(&self, candidate: NodeId) -> bool {
        self.hears_from_leader() && !self.membership().is_voter(candidate)
    }

    pub(crate) fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.randomized_election_timeout
            && self.membership().is_voter(self.cfg.id)
        {
            self.election_elapsed = 0;
            self.start_election();
        }
    }

    /// Starts an election now, as after an election timeout (PreVote first if enabled).
    pub fn start_election(&mut self) {
        if self.role == Role::Leader || !self.membership().is_voter(self.cfg.id) {
            return;
        }
        if self.cfg.pre_vote {
            self.pre_campaign();
        } else {
            self.campaign(false);
        }
    }

    fn pre_campaign(&mut self) {
        self.role = Role::PreCandidate;
        self.leader = 0;
        self.votes.clear();
        self.reset_election_timer();
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for id in self.voters_except_me() {
            let mut msg = self.message(
                id,
                MessageBody::PreVote {
                    last_index,
                    last_term,
                },
            );
            msg.term = self.term + 1;
            self.outbox.push(msg);
        }
        self.poll(self.cfg.id, true);
    }

    pub(crate) fn campaign(&mut self, transfer: bool) {
        self.role = Role::Candidate;
        self.leader = 0;
        self.votes.clear();
        self.set_hard_state(self.term + 1, self.cfg.id);
        self.reset_election_timer();
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for id in self.voters_except_me() {
            self.send(
                id,
                MessageBody::RequestVote {
                    last_index,
                    last_term,
                    transfer,
                },
            );
        }
        // Our own vote counts only once it is durable: a vote forgotten in a
        // crash could be cast again for someone else in the same term.
        let own_vote = self.message(
            self.cfg.id,
            MessageBody::RequestVoteResponse { granted: true },
        );
        self.respond(own_vote);
    }

    fn voters_except_me(&self) -> Vec<NodeId> {
        let m = self.membership();
        m.voters
            .iter()
            .chain(&m.outgoing)
            .copied()
            .filter(|id| *id != self.cfg.id)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Records a (pre-)vote and acts once the outcome is decided.
    pub(crate) fn poll(&mut self, from: NodeId, granted: bool) {
        self.votes.entry(from).or_insert(granted);
        let votes = &self.votes;
        let membership = self.log.membership().1;
        if membership.has_quorum(|id| votes.get(&id) == Some(&true)) {
            if self.role == Role::PreCandidate {
                self.campaign(false);
            } else {
                self.become_leader();
            }
        } else if membership.quorum_impossible(|id| votes.get(&id) == Some(&false)) {
            self.become_follower(self.term, 0);
        }
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: NodeId) {
        if term > self.term {
            self.set_hard_state(term, 0);
        }
        // Only hearing from a leader, granting a vote or ceasing to lead restarts
        // the election timer (Raft §5.2). Merely learning a higher term from a
        // candidate we refuse must not: a node with a stale log that keeps
        // campaigning would otherwise hold back every node able to win.
        if self.role == Role::Leader || leader != 0 {
            self.reset_election_timer();
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.progress.clear();
        self.transfer = None;
        self.reads = LeaderReads::default();
        self.uncommitted_bytes = 0;
    }

    fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.leader = self.cfg.id;
        self.votes.clear();
        self.transfer = None;
        self.reads = LeaderReads::default();
        self.uncommitted_bytes = 0;
        self.heartbeat_elapsed = 0;
        self.election_elapsed = 0;
        self.progress = BTreeMap::new();
        self.sync_progress();
        let entry = Entry {
            term: self.term,
            index: self.log.last_index() + 1,
            payload: EntryPayload::Blank,
        };
        self.append_leader_entry(entry);
        self.broadcast_append();
    }

    /// Makes the progress map match the membership: new members start probing
    /// from our last index, departed ones are forgotten.
    pub(crate) fn sync_progress(&mut self) {
        let members = self.membership().members();
        let next = self.log.last_index() + 1;
        self.progress.retain(|id, _| members.contains(id));
        for id in members {
            self.progress
                .entry(id)
                .or_insert_with(|| Progress::new(next));
        }
        let me = self.cfg.id;
        let persisted = self.persisted_index;
        if let Some(pr) = self.progress.get_mut(&me) {
            pr.update_match(persisted);
            pr.become_replicate();
        }
    }

    pub(crate) fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_timeout_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum {
                let me = self.cfg.id;
                let progress = &self.progress;
                let active = self.membership().has_quorum(|id| {
                    id == me || progress.get(&id).is_some_and(|p| p.recent_active)
                });
                if !active {
                    self.become_follower(self.term, 0);
                    return;
                }
                for pr in self.progress.values_mut() {
                    pr.recent_active = false;
                }
            }
        }
        if let Some((target, elapsed)) = self.transfer {
            if elapsed + 1 >= self.cfg.election_timeout_ticks {
                self.transfer = None;
            } else {
                self.transfer = Some((target, elapsed + 1));
            }
        }
        self.tick_snapshot_transfers();
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }
}
