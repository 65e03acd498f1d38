//! `flotilla bench`: put and get workloads against the embedded store, and
//! the same put workload on raw RocksDB (one synced WriteBatch per put) for
//! side-by-side ratios.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use flotilla::wal::rocksdb;
use flotilla::{AsyncRemoteClient, Db, Durability, ReadConsistency};

use crate::bench_keys::{self, get_index, key, load_index, loaded_keys, put_index};
use crate::Target;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    /// The flotilla store.
    Flotilla,
    /// Raw RocksDB: one WriteBatch with one put per operation.
    Rocksdb,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    Put,
    Get,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DurabilityArg {
    Sync,
    Buffered,
    None,
}

/// Settings of a benchmark run.
#[derive(Args, Clone, Debug)]
pub(crate) struct BenchArgs {
    /// The store to measure (`--data` for an embedded one, or `--cluster`).
    #[command(flatten)]
    target: Target,
    #[arg(long, value_enum, default_value_t = Engine::Flotilla)]
    engine: Engine,
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    workload: Workload,
    /// Concurrent clients (threads; tasks against a cluster).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Total operations over all clients.
    #[arg(long, default_value_t = 10_000)]
    ops: usize,
    #[arg(long, default_value_t = 8)]
    key_bytes: usize,
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    #[arg(long, value_enum, default_value_t = DurabilityArg::Sync)]
    durability: DurabilityArg,
    /// MiB of WAL preallocated when an embedded store opens (see
    /// `DbBuilder::wal_preallocation`); a cluster's members take theirs
    /// from their config files.
    #[arg(long, default_value_t = 0)]
    wal_preallocation_mib: u64,
    /// Also write every operation's latency, in microseconds, one per line
    /// to this file: each client's operations in the order it ran them,
    /// client after client. For finding stalls the percentiles hide.
    #[arg(long)]
    latency_log: Option<std::path::PathBuf>,
}

/// Runs `per_client(client, op)` on `clients` threads, `ops` in all, and
/// returns each operation's latency.
fn drive(
    clients: usize,
    ops: usize,
    per_client: Work,
) -> Result<(Duration, Vec<Duration>), String> {
    let clients = clients.max(1);
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let work = per_client.clone();
            let done = done.clone();
            let count = bench_keys::per_client(ops, clients, client);
            std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                let mut latencies = Vec::with_capacity(count);
                for op in 0..count as u64 {
                    let at = Instant::now();
                    work(client, op)?;
                    latencies.push(at.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(latencies)
            })
        })
        .collect();
    let progress = show_progress(done, ops);
    let mut all = Vec::with_capacity(ops);
    let mut failure = None;
    for thread in threads {
        match thread.join() {
            Ok(Ok(latencies)) => all.extend(latencies),
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(_) => failure = failure.or(Some("a client thread panicked".to_string())),
        }
    }
    progress.finish();
    match failure {
        Some(e) => Err(e),
        None => Ok((started.elapsed(), all)),
    }
}

/// The workload against a cluster: each client is a task on one thread
/// (the load generator shares the machine with the members, so it should
/// cost as little CPU as it can), all sharing one client's connections.
fn drive_cluster(
    args: &BenchArgs,
    dir: &std::path::Path,
) -> Result<(Duration, Vec<Duration>), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        let timeout = Duration::from_secs(args.target.timeout_secs.max(1));
        let client = Arc::new(
            AsyncRemoteClient::open(dir, timeout)
                .await
                .map_err(|e| format!("cannot use cluster {}: {e}", dir.display()))?,
        );
        let value: Arc<[u8]> = vec![b'v'; args.value_bytes].into();
        let (key_bytes, clients) = (args.key_bytes, args.clients);
        let put = |index: fn(usize, u64, u64) -> u64, param: u64| {
            let (client, value) = (client.clone(), value.clone());
            move |c: usize, op: u64| {
                let (client, value) = (client.clone(), value.clone());
                async move {
                    let k = key(index(c, op, param), key_bytes);
                    client.put(&k, &value).await.map_err(|e| e.to_string())
                }
            }
        };
        match args.workload {
            Workload::Put => {
                let stride = args.ops as u64 + 1;
                drive_tasks(clients, args.ops, put(put_index, stride)).await
            }
            Workload::Get => {
                let loaded = loaded_keys(args.ops);
                let load = |c: usize, op: u64, clients: u64| load_index(c, op, clients as usize);
                drive_tasks(clients, loaded as usize, put(load, clients as u64)).await?;
                let consistency: ReadConsistency = args.target.consistency.into();
                let get = move |c: usize, op: u64| {
                    let client = client.clone();
                    async move {
                        let i = get_index(c, op, loaded);
                        match client.get(&key(i, key_bytes), consistency).await {
                            Ok(Some(_)) => Ok(()),
                            Ok(None) => Err(format!("key {i} is missing")),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                };
                drive_tasks(clients, args.ops, get).await
            }
        }
    })
}

/// Runs `work(client, op)` as `clients` tasks, `ops` in all, and returns
/// each operation's latency.
async fn drive_tasks<W, F>(
    clients: usize,
    ops: usize,
    work: W,
) -> Result<(Duration, Vec<Duration>), String>
where
    W: Fn(usize, u64) -> F + Clone + Send + 'static,
    F: std::future::Future<Output = Result<(), String>> + Send,
{
    let clients = clients.max(1);
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (work, done) = (work.clone(), done.clone());
        let count = bench_keys::per_client(ops, clients, client);
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            for op in 0..count as u64 {
                let at = Instant::now();
                work(client, op).await?;
                latencies.push(at.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, String>(latencies)
        });
    }
    let progress = show_progress(done, ops);
    let mut all = Vec::with_capacity(ops);
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(latencies)) => all.extend(latencies),
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(_) => failure = failure.or(Some("a client task panicked".to_string())),
        }
    }
    progress.finish();
    match failure {
        Some(e) => Err(e),
        None => Ok((started.elapsed(), all)),
    }
}

/// A progress bar on stderr (only when it is a terminal), redrawn five
/// times a second until [`Progress::finish`].
struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn show_progress(done: Arc<AtomicUsize>, total: usize) -> Progress {
    let stop = Arc::new(AtomicBool::new(false));
    let thread = std::io::stderr().is_terminal().then(|| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} ops {per_sec}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            while !stop.load(Ordering::Relaxed) {
                bar.set_position(done.load(Ordering::Relaxed) as u64);
                std::thread::sleep(Duration::from_millis(200));
            }
            bar.finish_and_clear();
        })
    });
    Progress { stop, thread }
}

impl Progress {
    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread {
            let _ = thread.join();
        }
    }
}

/// One client operation against whichever store is measured.
type Work = Arc<dyn Fn(usize, u64) -> Result<(), String> + Send + Sync>;
/// A put against the measured store.
type PutFn = Arc<dyn Fn(&[u8], &[u8]) -> flotilla::Result<()> + Send + Sync>;
/// A get against the measured store.
type GetFn = Arc<dyn Fn(&[u8]) -> flotilla::Result<Option<Vec<u8>>> + Send + Sync>;

/// The put or get workload over `put` and `get`, after loading the keys a
/// get workload reads.
fn workload(args: &BenchArgs, put: PutFn, get: GetFn) -> Result<Work, String> {
    let value = vec![b'v'; args.value_bytes];
    let key_bytes = args.key_bytes;
    let stride = args.ops as u64 + 1;
    Ok(match args.workload {
        Workload::Put => Arc::new(move |client, op| {
            put(&key(put_index(client, op, stride), key_bytes), &value).map_err(|e| e.to_string())
        }),
        Workload::Get => {
            // Load the keys read, with every client at once.
            let loaded = loaded_keys(args.ops);
            let clients = args.clients;
            let load: Work = {
                let (put, value) = (put.clone(), value.clone());
                Arc::new(move |client, op| {
                    put(&key(load_index(client, op, clients), key_bytes), &value)
                        .map_err(|e| e.to_string())
                })
            };
            drive(args.clients, loaded as usize, load)?;
            Arc::new(move |client, op| {
                let i = get_index(client, op, loaded);
                match get(&key(i, key_bytes)) {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err(format!("key {i} is missing")),
                    Err(e) => Err(e.to_string()),
                }
            })
        }
    })
}

pub(crate) fn run(args: BenchArgs) -> Result<(), String> {
    let value = vec![b'v'; args.value_bytes];
    let key_bytes = args.key_bytes;
    let stride = args.ops as u64 + 1;
    let data = args.target.data.clone().unwrap_or_default();
    let (elapsed, mut latencies) = match (args.engine, &args.target.cluster) {
        (Engine::Flotilla, Some(dir)) => drive_cluster(&args, dir)?,
        (Engine::Rocksdb, Some(_)) => {
            return Err("the rocksdb baseline runs on a local directory (--data)".into())
        }
        (Engine::Flotilla, None) => {
            let durability = match args.durability {
                DurabilityArg::Sync => Durability::Sync,
                DurabilityArg::Buffered => Durability::Buffered {
                    max_delay: Duration::from_millis(10),
                },
                DurabilityArg::None => Durability::None,
            };
            let db = Db::builder(&data)
                .durability(durability)
                .wal_preallocation(args.wal_preallocation_mib.saturating_mul(1 << 20))
                .read_consistency(args.target.consistency.into())
                .open()
                .map_err(|e| format!("cannot open {}: {e}", data.display()))?;
            let (d1, d2) = (db.clone(), db.clone());
            let work = workload(
                &args,
                Arc::new(move |k, v| d1.put(k, v)),
                Arc::new(move |k| d2.get(k)),
            )?;
            let result = drive(args.clients, args.ops, work)?;
            db.close().map_err(|e| e.to_string())?;
            result
        }
        (Engine::Rocksdb, None) => {
            if args.workload != Workload::Put {
                return Err("the rocksdb baseline runs the put workload only".into());
            }
            let mut options = rocksdb::Options::default();
            options.create_if_missing(true);
            let db = Arc::new(
                rocksdb::DB::open(&options, &data)
                    .map_err(|e| format!("cannot open {}: {e}", data.display()))?,
            );
            let durability = args.durability;
            drive(
                args.clients,
                args.ops,
                Arc::new(move |client, op| {
                    let mut batch = rocksdb::WriteBatch::default();
                    batch.put(key(put_index(client, op, stride), key_bytes), &value);
                    let mut write = rocksdb::WriteOptions::default();
                    write.set_sync(durability == DurabilityArg::Sync);
                    write.disable_wal(durability == DurabilityArg::None);
                    db.write_opt(batch, &write).map_err(|e| e.to_string())
                }),
            )?
        }
    };
    if let Some(path) = &args.latency_log {
        let text: String = latencies
            .iter()
            .map(|d| format!("{}\n", d.as_micros()))
            .collect();
        std::fs::write(path, text)
            .map_err(|e| format!("cannot write the latency log {}: {e}", path.display()))?;
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        let at = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len().max(1));
        latencies
            .get(at - 1)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "engine={:?} workload={:?} clients={} ops={} key_bytes={} value_bytes={} durability={:?} ops_per_sec={:.0} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3}",
        args.engine,
        args.workload,
        args.clients,
        latencies.len(),
        args.key_bytes,
        args.value_bytes,
        args.durability,
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(0.999)
    );
    Ok(())
}
