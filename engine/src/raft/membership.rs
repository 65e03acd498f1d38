//! Membership change by joint consensus, learners, and leadership transfer.

use std::collections::BTreeSet;

use flotilla_wal::{Entry, EntryPayload, Index, Membership, NodeId};

use crate::raft::core::{RaftCore, Role};
use crate::raft::error::ProposeError;
use crate::raft::message::MessageBody;

/// A membership change a leader can be asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a non-voting member that receives the log.
    AddLearner(NodeId),
    /// Make a caught-up learner a voter (through joint consensus).
    PromoteLearner(NodeId),
    /// Remove a learner, or a voter (through joint consensus); may remove the leader.
    Remove(NodeId),
    /// Replace the voter set wholesale (through joint consensus).
    ReplaceVoters(BTreeSet<NodeId>),
}

impl RaftCore {
    /// Proposes a membership change. Voter changes enter joint consensus; the
    /// leader leaves it by itself once the joint configuration commits.
    /// Returns the index of the configuration entry.
    pub fn change_membership(&mut self, change: MembershipChange) -> Result<Index, ProposeError> {
        self.check_can_propose()?;
        let (config_index, current) = self.log.membership();
        if config_index > self.log.committed || current.is_joint() {
            return Err(ProposeError::MembershipChangePending);
        }
        let mut next = current.clone();
        match change {
            MembershipChange::AddLearner(id) => {
                if id == 0 || current.is_voter(id) {
                    return Err(ProposeError::Invalid(format!(
                        "node {id} is already a voter or is 0"
                    )));
                }
                next.learners.insert(id);
            }
            MembershipChange::PromoteLearner(id) => {
                if !current.is_learner(id) {
                    return Err(ProposeError::Invalid(format!("node {id} is not a learner")));
                }
                let matched = self.progress.get(&id).map_or(0, |p| p.match_index);
                let behind = self.log.last_index().saturating_sub(matched);
                if behind > self.cfg.learner_catch_up_entries {
                    return Err(ProposeError::LearnerBehind { node: id, behind });
                }
                next.learners.remove(&id);
                next.voters.insert(id);
                next.outgoing = current.voters.clone();
            }
            MembershipChange::Remove(id) => {
                if current.is_learner(id) {
                    next.learners.remove(&id);
                } else if current.voters.contains(&id) {
                    if current.voters.len() == 1 {
                        return Err(ProposeError::Invalid("cannot remove the last voter".into()));
                    }
                    next.voters.remove(&id);
                    next.outgoing = current.voters.clone();
                } else {
                    return Err(ProposeError::Invalid(format!("node {id} is not a member")));
                }
            }
            MembershipChange::ReplaceVoters(voters) => {
                if voters.is_empty() || voters.contains(&0) {
                    return Err(ProposeError::Invalid(
                        "the voter set must be non-empty and not name node 0".into(),
                    ));
                }
                next.learners.retain(|id| !voters.contains(id));
                next.outgoing = current.voters.clone();
                next.voters = voters;
            }
        }
        if next.voters == next.outgoing {
            next.outgoing.clear();
        }
        Ok(self.append_membership(next))
    }

    fn append_membership(&mut self, membership: Membership) -> Index {
        let index = self.log.last_index() + 1;
        let entry = Entry {
            term: self.term,
            index,
            payload: EntryPayload::Membership(membership),
        };
        self.append_leader_entry(entry);
        self.broadcast_append();
        index
    }

    /// Leader bookkeeping after the commit index moved.
    pub(crate) fn on_commit_advanced(&mut self) {
        self.release_reads_awaiting_commit();
        let (config_index, current) = self.log.membership();
        if config_index > self.log.committed {
            return;
        }
        if current.is_joint() {
            let mut leave = current.clone();
            leave.outgoing.clear();
            self.append_membership(leave);
        } else if !current.is_voter(self.cfg.id) {
            // We were removed and the removal is committed: stop leading. The
            // remaining voters elect a leader among themselves.
            self.become_follower(self.term, 0);
        }
    }

    /// Asks the leader to hand leadership to `target`: proposals are refused
    /// until it completes or an election timeout passes.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if target == self.cfg.id {
            return Ok(());
        }
        if !self.membership().is_voter(target) {
            return Err(ProposeError::Invalid(format!(
                "node {target} is not a voter"
            )));
        }
        self.transfer = Some((target, 0));
        if !self.maybe_finish_transfer(target) {
            self.send_append(target);
        }
        Ok(())
    }

    /// Sends TimeoutNow once the transfer target has our whole log.
    pub(crate) fn maybe_finish_transfer(&mut self, from: NodeId) -> bool {
        let Some((target, _)) = self.transfer else {
            return false;
        };
        if target != from
            || self.progress.get(&from).map_or(0, |p| p.match_index) != self.log.last_index()
        {
            return false;
        }
        self.send(target, MessageBody::TimeoutNow);
        true
    }
}
