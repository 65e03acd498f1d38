//! Throughput of the Raft core alone: three in-process cores, no IO, the
//! runtime loop reduced to handing messages over and acknowledging persistence
//! at once. Clients keep `clients` proposals outstanding; a proposal finishes
//! when the leader hands its entry out as committed.
//!
//! `cargo bench -p flotilla-engine --bench core`

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flotilla_engine::{Config, Message, RaftCore, RestoreState};

const VOTERS: [u64; 3] = [1, 2, 3];

struct InProcessCluster {
    cores: Vec<RaftCore>,
    wire: VecDeque<Message>,
}

impl InProcessCluster {
    fn new() -> Self {
        let cores = VOTERS
            .iter()
            .map(|&id| {
                let mut cfg = Config::new(id, 1);
                cfg.max_inflight_msgs = 1024;
                RaftCore::new(cfg, RestoreState::bootstrap(VOTERS)).expect("valid config")
            })
            .collect();
        let mut cluster = InProcessCluster {
            cores,
            wire: VecDeque::new(),
        };
        cluster.cores[0].start_election();
        while !cluster.cores[0].is_leader() {
            cluster.pump();
        }
        cluster.pump();
        cluster
    }

    /// Runs every core's ready once and delivers the messages; returns entries
    /// the leader handed out as committed.
    fn pump(&mut self) -> usize {
        let mut committed = 0;
        for i in 0..self.cores.len() {
            while self.cores[i].has_ready() {
                let ready = self.cores[i].take_ready();
                if let Some(p) = ready.persist {
                    self.cores[i].on_persisted(p.seq);
                }
                if i == 0 {
                    committed += ready.committed_entries.len();
                }
                self.wire.extend(ready.messages);
            }
        }
        while let Some(msg) = self.wire.pop_front() {
            let to = msg.to as usize - 1;
            let _ = self.cores[to].step(msg);
        }
        committed
    }

    /// Drives `total` proposals with `clients` outstanding at a time.
    fn run(&mut self, clients: usize, total: u64) {
        let payload = vec![7u8; 256];
        let mut outstanding = 0usize;
        let mut proposed = 0u64;
        let mut done = 0u64;
        while done < total {
            while outstanding < clients && proposed < total {
                if self.cores[0].propose(payload.clone()).is_ok() {
                    outstanding += 1;
                    proposed += 1;
                } else {
                    break;
                }
            }
            let committed = self.pump() as u64;
            // Blank and membership entries also commit; count only up to what was proposed.
            let finished = committed.min(outstanding as u64);
            outstanding -= finished as usize;
            done += finished;
        }
    }
}

fn bench_core(c: &mut Criterion) {
    let mut group = c.benchmark_group("raft_core_3_nodes");
    group.measurement_time(Duration::from_secs(5));
    for clients in [1usize, 64, 1024] {
        let per_iter = 10_000u64;
        group.throughput(Throughput::Elements(per_iter));
        group.bench_with_input(
            BenchmarkId::new("clients", clients),
            &clients,
            |b, &clients| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let mut cluster = InProcessCluster::new();
                        let start = Instant::now();
                        cluster.run(clients, per_iter);
                        total += start.elapsed();
                    }
                    total
                });
            },
        );
    }
    group.finish();
}

#[allow(missing_docs)] // criterion's macro generates an undocumented function
mod harness {
    use super::*;
    criterion_group!(benches, bench_core);
}
use harness::benches;
criterion_main!(benches);
