//! Log replication: proposals, appends with flow control, fast conflict
//! backtracking, commit (Figure 8 rule) and heartbeats.

use flotilla_wal::{Entry, EntryPayload, Index, NodeId, Term};

use crate::raft::core::{RaftCore, Role};
use crate::raft::error::ProposeError;
use crate::raft::message::{AppendResponse, MessageBody};
use crate::raft::progress::ReplicationState;

impl RaftCore {
    /// Proposes an application command. On success returns the (index, term) it
    /// was appended at: it is committed once an entry with that index and term is
    /// applied; a different term there means it was lost.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(Index, Term), ProposeError> {
        self.check_can_propose()?;
        let entry = Entry {
            term: self.term,
            index: self.log.last_index() + 1,
            payload: EntryPayload::Normal(data),
        };
        let size = entry.size_bytes();
        if self.uncommitted_bytes > 0
            && self.uncommitted_bytes + size > self.cfg.max_uncommitted_bytes
        {
            return Err(ProposeError::Overloaded {
                uncommitted_bytes: self.uncommitted_bytes,
                limit: self.cfg.max_uncommitted_bytes,
            });
        }
        let at = (entry.index, entry.term);
        self.append_leader_entry(entry);
        // Sent at the next take_ready: proposals made in between travel in
        // one append per follower instead of one each.
        self.append_wanted = true;
        Ok(at)
    }

    pub(crate) fn check_can_propose(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if let Some((target, _)) = self.transfer {
            return Err(ProposeError::TransferInProgress(target));
        }
        Ok(())
    }

    pub(crate) fn append_leader_entry(&mut self, entry: Entry) {
        self.uncommitted_bytes += entry.size_bytes();
        let is_config = matches!(entry.payload, EntryPayload::Membership(_));
        self.append_entries(vec![entry]);
        if is_config {
            self.sync_progress();
        }
    }

    /// Every node the leader replicates to.
    fn followers(&self) -> Vec<NodeId> {
        self.progress
            .keys()
            .copied()
            .filter(|id| *id != self.cfg.id)
            .collect()
    }

    pub(crate) fn broadcast_append(&mut self) {
        for id in self.followers() {
            self.send_append(id);
        }
    }

    /// After new proposals: every follower in replicate state gets as many
    /// appends as its window allows; the others one message, as on any
    /// broadcast.
    pub(crate) fn broadcast_new_entries(&mut self) {
        for id in self.followers() {
            while self.send_append(id) {
                let replicating = self
                    .progress
                    .get(&id)
                    .is_some_and(|pr| pr.state == ReplicationState::Replicate);
                if !replicating {
                    break;
                }
            }
        }
    }

    /// Sends `to` whatever it lacks, as far as flow control allows. Returns
    /// whether a message went out.
    pub(crate) fn send_append(&mut self, to: NodeId) -> bool {
        self.send_append_inner(to, false)
    }

    /// Like `send_append`, but in replicate state with everything already sent
    /// optimistically, sends an empty append at `next - 1`: if earlier appends
    /// were lost, the follower rejects it and the leader falls back to probing.
    fn send_append_or_empty(&mut self, to: NodeId) -> bool {
        self.send_append_inner(to, true)
    }

    fn send_append_inner(&mut self, to: NodeId, allow_empty: bool) -> bool {
        let (max_msgs, max_bytes) = (self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes);
        let Some(pr) = self.progress.get(&to) else {
            return false;
        };
        if pr.is_paused(max_msgs, max_bytes) {
            return false;
        }
        let next = pr.next_index;
        let prev_index = next - 1;
        let Some(prev_term) = self.log.term(prev_index) else {
            self.start_snapshot_transfer(to);
            return true;
        };
        let entries = self
            .log
            .slice(next, self.log.last_index(), self.cfg.max_append_bytes);
        let is_probe = pr.state == ReplicationState::Probe;
        if !is_probe && entries.is_empty() && !allow_empty {
            return false;
        }
        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        let last = prev_index + entries.len() as u64;
        let commit = self.log.committed;
        if let Some(pr) = self.progress.get_mut(&to) {
            if is_probe {
                pr.probe_sent = true;
            } else if !entries.is_empty() {
                pr.next_index = last + 1;
                pr.inflight.add(last, bytes);
            }
        }
        self.send(
            to,
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            },
        );
        true
    }

    /// Follower side of an append (§5.3) with the conflict hint of the
    /// "accelerated log backtracking" optimisation.
    pub(crate) fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    ) {
        if prev_index < self.log.committed {
            // Everything up to our commit index matches any leader's log.
            let match_index = self.log.committed;
            let reply = self.message(
                from,
                MessageBody::AppendResponse(AppendResponse::Success { match_index }),
            );
            self.respond(reply);
            return;
        }
        if !self.log.matches(prev_index, prev_term) {
            let (conflict_term, conflict_index) = match self.log.term(prev_index) {
                Some(term) if prev_index <= self.log.last_index() => {
                    (term, self.log.first_index_of_term(prev_index, term))
                }
                _ => (0, self.log.last_index() + 1),
            };
            let resp = AppendResponse::Reject {
                rejected_index: prev_index,
                conflict_term,
                conflict_index,
            };
            let reply = self.message(from, MessageBody::AppendResponse(resp));
            self.respond(reply);
            return;
        }
        let last_new = prev_index + entries.len() as u64;
        if let Some(conflict) = self.log.find_conflict(&entries) {
            let skip = (conflict - prev_index - 1) as usize;
            self.append_entries(entries.into_iter().skip(skip).collect());
        }
        let new_commit = commit.min(last_new);
        if new_commit > self.log.committed {
            self.log.committed = new_commit;
        }
        let reply = self.message(
            from,
            MessageBody::AppendResponse(AppendResponse::Success {
                match_index: last_new,
            }),
        );
        self.respond(reply);
    }

    pub(crate) fn handle_append_response(&mut self, from: NodeId, resp: AppendResponse) {
        let last_index = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        match resp {
            AppendResponse::Success { match_index } => {
                let advanced = pr.update_match(match_index.min(last_index));
                if pr.state == ReplicationState::Probe {
                    pr.become_replicate();
                }
                if advanced && self.maybe_commit() {
                    self.broadcast_append();
                }
                while self.send_append(from) {}
                self.maybe_finish_transfer(from);
            }
            AppendResponse::Reject {
                rejected_index,
                conflict_term,
                conflict_index,
            } => {
                let stale = match pr.state {
                    ReplicationState::Replicate => rejected_index <= pr.match_index,
                    ReplicationState::Probe => rejected_index + 1 != pr.next_index,
                    ReplicationState::Snapshot { .. } => true,
                };
                if stale {
                    return;
                }
                let hinted = if conflict_term > 0 {
                    match self.log.last_index_of_term(conflict_term) {
                        Some(index) if index < rejected_index => index + 1,
                        _ => conflict_index,
                    }
                } else {
                    conflict_index
                };
                let Some(pr) = self.progress.get_mut(&from) else {
                    return;
                };
                pr.become_probe();
                // Never past the rejected index; normally not below match + 1 either,
                // unless the follower says it lacks entries it once acknowledged.
                pr.next_index = hinted.clamp(1, rejected_index.max(1));
                self.send_append(from);
            }
        }
    }

    /// Advances the commit index to what a quorum holds, counting only entries of
    /// the current term (§5.4.2, Figure 8). Returns whether it moved.
    pub(crate) fn maybe_commit(&mut self) -> bool {
        let progress = &self.progress;
        let quorum_index = self
            .membership()
            .committed_index(|id| progress.get(&id).map_or(0, |p| p.match_index));
        if quorum_index == u64::MAX || quorum_index <= self.log.committed {
            return false;
        }
        if self.log.term(quorum_index) != Some(self.term) {
            return false;
        }
        let before = self.log.committed;
        self.log.committed = quorum_index;
        let released: u64 = self
            .log
            .slice(before + 1, quorum_index, u64::MAX)
            .iter()
            .map(Entry::size_bytes)
            .sum();
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(released);
        self.on_commit_advanced();
        true
    }

    pub(crate) fn broadcast_heartbeat(&mut self) {
        let round = self.reads.start_round(self.ticks);
        let me = self.cfg.id;
        if let Some(pr) = self.progress.get_mut(&me) {
            pr.acked_round = round;
        }
        let targets: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(id, pr)| (*id, pr.match_index.min(self.log.committed)))
            .collect();
        for (id, commit) in targets {
            self.send(id, MessageBody::Heartbeat { commit, round });
        }
        self.release_confirmed_reads();
    }

    pub(crate) fn handle_heartbeat(&mut self, from: NodeId, commit: Index, round: u64) {
        if commit > self.log.committed && commit <= self.log.last_index() {
            self.log.committed = commit;
        }
        let reply = self.message(from, MessageBody::HeartbeatResponse { round });
        self.respond(reply);
    }

    pub(crate) fn handle_heartbeat_response(&mut self, from: NodeId, round: u64) {
        let last_index = self.log.last_index();
        // A round we never sent (a confused or malicious peer) must not confirm future reads.
        let round = round.min(self.reads.current_round());
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.probe_sent = false;
        pr.acked_round = pr.acked_round.max(round);
        if pr.state == ReplicationState::Replicate
            && pr
                .inflight
                .is_full(self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes)
        {
            pr.inflight.free_first();
        }
        if pr.match_index < last_index {
            self.send_append_or_empty(from);
        }
        self.release_confirmed_reads();
    }
}
