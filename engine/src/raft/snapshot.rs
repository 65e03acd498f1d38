//! Log compaction and chunked snapshot transfer. The core decides what to send
//! and tracks progress; the runtime reads chunks from its snapshot store
//! (`Ready::snapshot_reads`) and stages received ones (`PersistRequest`).

use flotilla_snapshot::{SnapshotError, SnapshotStore};
use flotilla_wal::{Index, NodeId};

use crate::raft::core::{RaftCore, Role};
use crate::raft::error::CompactError;
use crate::raft::message::{MessageBody, SnapshotMeta};
use crate::raft::progress::ReplicationState;
use crate::raft::ready::{SnapshotChunk, SnapshotChunkRequest, StagedChunk};

impl RaftCore {
    /// The application has durably saved a snapshot of its state at `index`:
    /// drop the log up to it. Returns the snapshot's metadata, which the
    /// application keeps with the snapshot data.
    pub fn compact(&mut self, index: Index) -> Result<SnapshotMeta, CompactError> {
        let safe = self.applied.min(self.persisted_index);
        if index > safe {
            return Err(CompactError::NotApplied {
                index,
                applied: safe,
            });
        }
        if index <= self.log.snapshot().index {
            return Ok(self.log.snapshot().clone());
        }
        let meta = self.log.compact(index);
        self.unstable.compact = Some(meta.clone());
        Ok(meta)
    }

    pub(crate) fn start_snapshot_transfer(&mut self, to: NodeId) {
        let meta = self.log.snapshot().clone();
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.become_snapshot(meta);
        }
        self.request_chunk(to);
    }

    fn request_chunk(&mut self, to: NodeId) {
        let Some(pr) = self.progress.get_mut(&to) else {
            return;
        };
        let ReplicationState::Snapshot {
            acked_offset,
            chunk_outstanding,
            idle_ticks,
            ..
        } = &mut pr.state
        else {
            return;
        };
        let Some(meta) = pr.sending_snapshot.clone() else {
            return;
        };
        *chunk_outstanding = true;
        *idle_ticks = 0;
        let offset = *acked_offset;
        self.snapshot_reads.push(SnapshotChunkRequest {
            to,
            meta,
            offset,
            max_bytes: self.cfg.snapshot_chunk_bytes,
        });
    }

    /// Reads the chunk `request` asks for from `store` and hands it over
    /// (`on_snapshot_chunk`), or reports the snapshot unavailable (and
    /// returns why) so the transfer restarts from a newer one.
    pub fn answer_snapshot_read<S: SnapshotStore + ?Sized>(
        &mut self,
        request: &SnapshotChunkRequest,
        store: &S,
    ) -> Result<(), SnapshotError> {
        match store.read_chunk(&request.meta, request.offset, request.max_bytes) {
            Ok(chunk) => {
                self.on_snapshot_chunk(
                    request.to,
                    SnapshotChunk {
                        snapshot_index: request.meta.index,
                        snapshot_term: request.meta.term,
                        offset: request.offset,
                        data: chunk.data,
                        done: chunk.done,
                    },
                );
                Ok(())
            }
            Err(e) => {
                self.on_snapshot_unavailable(request.to);
                Err(e)
            }
        }
    }

    /// Hands over a chunk the runtime read for `to`; it goes out if the transfer still wants it.
    pub fn on_snapshot_chunk(&mut self, to: NodeId, chunk: SnapshotChunk) {
        if self.role != Role::Leader {
            return;
        }
        let Some(pr) = self.progress.get(&to) else {
            return;
        };
        let wanted = matches!(pr.state, ReplicationState::Snapshot { index, acked_offset, .. }
            if index == chunk.snapshot_index && acked_offset == chunk.offset);
        let Some(meta) = pr
            .sending_snapshot
            .clone()
            .filter(|m| m.term == chunk.snapshot_term)
        else {
            return;
        };
        if wanted {
            let body = MessageBody::InstallSnapshot {
                meta,
                offset: chunk.offset,
                data: chunk.data,
                done: chunk.done,
            };
            self.send(to, body);
        }
    }

    /// The runtime no longer has the snapshot a transfer to `to` was reading:
    /// restart it from the current snapshot.
    pub fn on_snapshot_unavailable(&mut self, to: NodeId) {
        if self.role == Role::Leader && self.progress.contains_key(&to) {
            self.start_snapshot_transfer(to);
        }
    }

    pub(crate) fn handle_snapshot_chunk(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        data: Vec<u8>,
        done: bool,
    ) {
        let snapshot_index = meta.index;
        let already_covered = meta.index <= self.log.committed;
        if already_covered || self.log.matches(meta.index, meta.term) {
            // We hold everything the snapshot covers. Installing it would throw
            // away entries after it that we may already have acknowledged, so
            // only learn that its index is committed.
            if !already_covered {
                self.log.committed = meta.index;
            }
            self.staging = None;
            let body = MessageBody::InstallSnapshotResponse {
                snapshot_index,
                next_offset: 0,
                done: true,
            };
            let reply = self.message(from, body);
            self.respond(reply);
            return;
        }
        let expected = match &self.staging {
            Some((staged, next)) if *staged == meta => *next,
            _ => 0,
        };
        if offset != expected {
            let body = MessageBody::InstallSnapshotResponse {
                snapshot_index,
                next_offset: expected,
                done: false,
            };
            let reply = self.message(from, body);
            self.respond(reply);
            return;
        }
        let next_offset = offset + data.len() as u64;
        self.unstable.stage_chunks.push(StagedChunk {
            meta: meta.clone(),
            offset,
            data,
        });
        if done {
            self.staging = None;
            self.restore_snapshot(meta);
        } else {
            self.staging = Some((meta, next_offset));
        }
        let body = MessageBody::InstallSnapshotResponse {
            snapshot_index,
            next_offset,
            done,
        };
        let reply = self.message(from, body);
        self.respond(reply);
    }

    pub(crate) fn handle_snapshot_response(
        &mut self,
        from: NodeId,
        snapshot_index: Index,
        next_offset: u64,
        done: bool,
    ) {
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        let in_transfer =
            matches!(pr.state, ReplicationState::Snapshot { index, .. } if index == snapshot_index);
        if done {
            pr.update_match(snapshot_index);
            if in_transfer || pr.state == ReplicationState::Probe {
                pr.become_probe();
            }
            while self.send_append(from) {}
            return;
        }
        if !in_transfer {
            return;
        }
        if let ReplicationState::Snapshot {
            acked_offset,
            chunk_outstanding,
            ..
        } = &mut pr.state
        {
            if !*chunk_outstanding {
                return;
            }
            *acked_offset = next_offset;
            *chunk_outstanding = false;
        }
        self.request_chunk(from);
    }

    /// Resumes transfers whose follower has gone quiet for an election timeout.
    pub(crate) fn tick_snapshot_transfers(&mut self) {
        let timeout = self.cfg.election_timeout_ticks;
        let mut stalled = Vec::new();
        for (id, pr) in self.progress.iter_mut() {
            if let ReplicationState::Snapshot {
                chunk_outstanding,
                idle_ticks,
                ..
            } = &mut pr.state
            {
                *idle_ticks += 1;
                if *idle_ticks >= timeout {
                    *chunk_outstanding = false;
                    stalled.push(*id);
                }
            }
        }
        for id in stalled {
            self.request_chunk(id);
        }
    }
}
