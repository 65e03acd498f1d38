//! Helpers for driving cores by hand and asserting the exact messages they emit.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use flotilla_engine::{Config, Entry, Message, MessageBody, NodeId, RaftCore, Ready, RestoreState};

/// A core with test timing: election timeout 10 ticks, heartbeat 2, lease 8.
pub fn core(id: NodeId, voters: &[NodeId]) -> RaftCore {
    core_with(id, voters, |_| {})
}

pub fn core_with(id: NodeId, voters: &[NodeId], tweak: impl FnOnce(&mut Config)) -> RaftCore {
    let mut cfg = Config::new(id, 1);
    cfg.seed = 7;
    tweak(&mut cfg);
    RaftCore::new(cfg, RestoreState::bootstrap(voters.iter().copied())).expect("valid config")
}

/// Takes the ready, makes its persist request durable at once and returns it
/// with the messages released by the persistence.
pub fn flush(core: &mut RaftCore) -> (Ready, Vec<Message>) {
    let mut all = core.take_ready();
    let mut msgs = std::mem::take(&mut all.messages);
    let mut pending = all.persist.as_ref().map(|p| p.seq);
    while let Some(seq) = pending.take() {
        core.on_persisted(seq);
        let mut more = core.take_ready();
        pending = more.persist.as_ref().map(|p| p.seq);
        all.committed_entries.append(&mut more.committed_entries);
        all.read_states.append(&mut more.read_states);
        all.snapshot_reads.append(&mut more.snapshot_reads);
        msgs.append(&mut more.messages);
    }
    let mut rest = core.take_ready();
    all.committed_entries.append(&mut rest.committed_entries);
    all.read_states.append(&mut rest.read_states);
    msgs.append(&mut rest.messages);
    (all, msgs)
}

/// A hand-driven network of cores: `cores[i]` has id `i + 1`.
pub struct Net {
    pub cores: Vec<RaftCore>,
    /// Messages sent and not yet delivered.
    pub queue: Vec<Message>,
    /// Committed entries handed out, per node.
    pub applied: Vec<Vec<Entry>>,
    /// Read states handed out, per node.
    pub reads: Vec<Vec<flotilla_engine::ReadState>>,
}

impl Net {
    pub fn new(n: u64) -> Self {
        Net::with(n, |_| {})
    }

    pub fn with(n: u64, tweak: impl Fn(&mut Config)) -> Self {
        let voters: Vec<NodeId> = (1..=n).collect();
        Net {
            cores: (1..=n).map(|id| core_with(id, &voters, &tweak)).collect(),
            queue: Vec::new(),
            applied: vec![Vec::new(); n as usize],
            reads: vec![Vec::new(); n as usize],
        }
    }

    pub fn core(&mut self, id: NodeId) -> &mut RaftCore {
        &mut self.cores[id as usize - 1]
    }

    /// Persists everything immediately on `id` and queues what it sends.
    pub fn flush(&mut self, id: NodeId) -> Vec<Message> {
        let (ready, msgs) = flush(&mut self.cores[id as usize - 1]);
        self.applied[id as usize - 1].extend(ready.committed_entries);
        self.reads[id as usize - 1].extend(ready.read_states);
        self.queue.extend(msgs.iter().cloned());
        msgs
    }

    /// Delivers queued messages (and their consequences) until quiet,
    /// skipping those `filter` rejects.
    pub fn settle_filtered(&mut self, filter: impl Fn(&Message) -> bool) {
        for id in 1..=self.cores.len() as u64 {
            self.flush(id);
        }
        let mut rounds = 0;
        while !self.queue.is_empty() {
            rounds += 1;
            assert!(rounds < 10_000, "network did not settle");
            let batch = std::mem::take(&mut self.queue);
            for msg in batch {
                if !filter(&msg) {
                    continue;
                }
                let to = msg.to;
                self.cores[to as usize - 1]
                    .step(msg)
                    .expect("addressed to this core");
                self.flush(to);
            }
        }
    }

    pub fn settle(&mut self) {
        self.settle_filtered(|_| true);
    }

    /// Delivers only messages between nodes of `group`.
    pub fn settle_within(&mut self, group: &[NodeId]) {
        let g = group.to_vec();
        self.settle_filtered(move |m| g.contains(&m.from) && g.contains(&m.to));
    }

    /// Makes `id` campaign at once and settles.
    pub fn elect(&mut self, id: NodeId) {
        self.core(id).start_election();
        self.settle();
        assert!(self.core(id).is_leader(), "node {id} failed to win");
    }

    pub fn tick_all(&mut self, ticks: u64) {
        for _ in 0..ticks {
            for c in &mut self.cores {
                c.tick();
            }
        }
    }
}

pub fn bodies(msgs: &[Message]) -> Vec<(NodeId, MessageBody)> {
    msgs.iter().map(|m| (m.to, m.body.clone())).collect()
}

pub fn normal(data: &[u8]) -> flotilla_engine::EntryPayload {
    flotilla_engine::EntryPayload::Normal(data.to_vec())
}
