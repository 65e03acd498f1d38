//! Message dispatch: the term rules every message passes first (§5.1), then
//! the handler for the receiver's role.

use crate::raft::core::{RaftCore, Role};
use crate::raft::message::{AppendResponse, Message, MessageBody};
use crate::raft::validate;
use thiserror::Error;

/// Why the core refused a message without acting on it.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusedMessage {
    /// The message cannot be for this core: another group or node, or sent
    /// "from" this node itself or from node 0.
    #[error("message for group {group} node {to} delivered to group {my_group} node {me}")]
    Misdirected {
        /// The message's group.
        group: u64,
        /// The message's recipient.
        to: u64,
        /// This core's group.
        my_group: u64,
        /// This core's node.
        me: u64,
    },
    /// No correct member sends this (see [`MAX_TERM_OR_INDEX`](crate::MAX_TERM_OR_INDEX)
    /// and the rules in the `validate` module): the sender has a bug, runs
    /// an incompatible build, or the frame was damaged.
    #[error("malformed message from node {from}: {reason}; check that node's build and logs")]
    Malformed {
        /// The sender.
        from: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl RaftCore {
    /// Feeds a message from a peer. A message that is not for this core, or
    /// that no correct peer would send, is refused whole and changes nothing.
    pub fn step(&mut self, msg: Message) -> Result<(), RefusedMessage> {
        // Node ids start at 1: a message "from" 0 (a client's id on the
        // wire) is never Raft traffic, and must not move our term.
        if msg.group != self.cfg.group
            || msg.to != self.cfg.id
            || msg.from == self.cfg.id
            || msg.from == 0
        {
            return Err(RefusedMessage::Misdirected {
                group: msg.group,
                to: msg.to,
                my_group: self.cfg.group,
                me: self.cfg.id,
            });
        }
        validate::check(&msg).map_err(|reason| RefusedMessage::Malformed {
            from: msg.from,
            reason,
        })?;
        self.step_local(msg);
        Ok(())
    }

    pub(crate) fn step_local(&mut self, msg: Message) {
        if matches!(
            msg.body,
            MessageBody::PreVote { .. } | MessageBody::RequestVote { .. }
        ) && self.ignores_candidate(msg.from)
        {
            return;
        }
        if msg.term > self.term {
            match &msg.body {
                MessageBody::PreVote { .. }
                | MessageBody::RequestVote {
                    transfer: false, ..
                } if self.in_leader_lease() => {
                    // We heard from a live leader within the election timeout: a
                    // rejoining node must not disrupt it (§9.6 of the Raft thesis).
                    return;
                }
                MessageBody::PreVote { .. } => {}
                MessageBody::PreVoteResponse { granted: true } => {}
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => {
                    self.become_follower(msg.term, msg.from);
                }
                _ => self.become_follower(msg.term, 0),
            }
        } else if msg.term < self.term {
            match msg.body {
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => {
                    // A deposed leader: tell it our term so it steps down, which
                    // PreVote/CheckQuorum would otherwise keep it from learning.
                    self.send(
                        msg.from,
                        MessageBody::AppendResponse(AppendResponse::Success { match_index: 0 }),
                    );
                }
                MessageBody::PreVote { .. } => {
                    self.send(msg.from, MessageBody::PreVoteResponse { granted: false });
                }
                MessageBody::RequestVote { .. } => {
                    // Refuse with our term (Raft Figure 2): a candidate behind in
                    // terms learns it at once instead of climbing one election at
                    // a time to a term the others will accept.
                    let reply = self.message(
                        msg.from,
                        MessageBody::RequestVoteResponse { granted: false },
                    );
                    self.respond(reply);
                }
                _ => {}
            }
            return;
        }

        match msg.body {
            MessageBody::PreVote {
                last_index,
                last_term,
            } => {
                let granted = msg.term > self.term && self.log.is_up_to_date(last_index, last_term);
                let mut reply = self.message(msg.from, MessageBody::PreVoteResponse { granted });
                if granted {
                    reply.term = msg.term;
                }
                self.outbox.push(reply);
            }
            MessageBody::RequestVote {
                last_index,
                last_term,
                ..
            } => {
                let can_vote = self.vote == msg.from || (self.vote == 0 && self.leader == 0);
                let granted = can_vote && self.log.is_up_to_date(last_index, last_term);
                if granted {
                    self.set_hard_state(self.term, msg.from);
                    // Restart the timer with a fresh random timeout, as a
                    // campaign does. Keeping the old one made a voter that
                    // grants every round (failed elections, PreVote off) time
                    // out after the same long draw each round, so it kept
                    // losing the race to the same candidates however often
                    // they lost their elections (simulator seed 9,075,098:
                    // the only voters able to win held 17 and 19 ticks for
                    // ten timeouts while doomed candidates drew again).
                    self.reset_election_timer();
                }
                let reply = self.message(msg.from, MessageBody::RequestVoteResponse { granted });
                self.respond(reply);
            }
            MessageBody::PreVoteResponse { granted } => {
                if self.role == Role::PreCandidate {
                    self.poll(msg.from, granted);
                }
            }
            MessageBody::RequestVoteResponse { granted } => {
                if self.role == Role::Candidate {
                    self.poll(msg.from, granted);
                }
            }
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.follow(msg.from);
                self.handle_append(msg.from, prev_index, prev_term, entries, commit);
            }
            MessageBody::Heartbeat { commit, round } => {
                self.follow(msg.from);
                self.handle_heartbeat(msg.from, commit, round);
            }
            MessageBody::InstallSnapshot {
                meta,
                offset,
                data,
                done,
            } => {
                self.follow(msg.from);
                self.handle_snapshot_chunk(msg.from, meta, offset, data, done);
            }
            MessageBody::AppendResponse(resp) => {
                if self.role == Role::Leader {
                    self.handle_append_response(msg.from, resp);
                }
            }
            MessageBody::HeartbeatResponse { round } => {
                if self.role == Role::Leader {
                    self.handle_heartbeat_response(msg.from, round);
                }
            }
            MessageBody::InstallSnapshotResponse {
                snapshot_index,
                next_offset,
                done,
            } => {
                if self.role == Role::Leader {
                    self.handle_snapshot_response(msg.from, snapshot_index, next_offset, done);
                }
            }
            MessageBody::TimeoutNow => {
                if self.role != Role::Leader && self.membership().is_voter(self.cfg.id) {
                    self.campaign(true);
                }
            }
        }
    }

    /// A message from the leader of our term: make sure we follow it.
    fn follow(&mut self, leader: u64) {
        if self.role != Role::Follower || self.leader != leader {
            self.become_follower(self.term, leader);
        }
        self.election_elapsed = 0;
    }
}
