//! Log appends per second with `Durability::Sync`, next to raw RocksDB synced
//! WriteBatches of the same size and concurrency, in the same run.
//!
//! `cargo bench -p flotilla-wal --features rocksdb --bench log_append`
//!
//! Each of `groups` threads appends one entry per write to its own group and
//! waits for it to be durable (flotilla), or writes one synced WriteBatch with
//! one put (raw RocksDB). Throughput is entries per second across all threads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flotilla_wal::{Durability, Entry, EntryPayload, LogStore, LogWrite, RocksLogStore};

const WRITES_PER_THREAD: u64 = 200;

fn flotilla_run(store: &Arc<RocksLogStore>, groups: u64, size: usize, base: u64) -> Duration {
    let start = Instant::now();
    let threads: Vec<_> = (1..=groups)
        .map(|group| {
            let store = Arc::clone(store);
            std::thread::spawn(move || {
                for i in 0..WRITES_PER_THREAD {
                    let index = base + i + 1;
                    let entry = Entry {
                        term: 1,
                        index,
                        payload: EntryPayload::Normal(vec![7; size]),
                    };
                    let write = LogWrite {
                        group,
                        entries: vec![entry],
                        ..LogWrite::default()
                    };
                    if let Err(e) = store.write(vec![write]) {
                        panic!("bench write failed: {e}");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    start.elapsed()
}

fn raw_run(db: &Arc<flotilla_wal::rocksdb::DB>, groups: u64, size: usize, base: u64) -> Duration {
    let start = Instant::now();
    let threads: Vec<_> = (1..=groups)
        .map(|group| {
            let db = Arc::clone(db);
            std::thread::spawn(move || {
                let mut opts = flotilla_wal::rocksdb::WriteOptions::default();
                opts.set_sync(true);
                for i in 0..WRITES_PER_THREAD {
                    let mut key = group.to_be_bytes().to_vec();
                    key.extend_from_slice(&(base + i).to_be_bytes());
                    let mut batch = flotilla_wal::rocksdb::WriteBatch::default();
                    batch.put(key, vec![7u8; size]);
                    if let Err(e) = db.write_opt(batch, &opts) {
                        panic!("raw write failed: {e}");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_append_sync");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(4));
    for size in [256usize, 4096] {
        for groups in [1u64, 8, 64] {
            let writes = groups * WRITES_PER_THREAD;
            group.throughput(Throughput::Elements(writes));
            let label = format!("{groups}g_{size}B");
            let dir = tempfile::tempdir().expect("temp dir");
            let store = Arc::new(
                RocksLogStore::open(dir.path().join("flotilla"), Durability::Sync).expect("open"),
            );
            let mut base = 0;
            group.bench_function(BenchmarkId::new("flotilla", &label), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += flotilla_run(&store, groups, size, base);
                        base += WRITES_PER_THREAD;
                    }
                    total
                })
            });
            let db = Arc::new(
                flotilla_wal::rocksdb::DB::open_default(dir.path().join("raw")).expect("open raw"),
            );
            let mut base = 0;
            group.bench_function(BenchmarkId::new("raw_rocksdb", &label), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += raw_run(&db, groups, size, base);
                        base += WRITES_PER_THREAD;
                    }
                    total
                })
            });
        }
    }
    group.finish();
}

#[allow(missing_docs)] // criterion's macro generates an undocumented function
mod harness {
    use super::*;
    criterion_group!(benches, bench);
}
criterion_main!(harness::benches);
