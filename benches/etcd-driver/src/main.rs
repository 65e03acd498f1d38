//! `etcd-driver`: the put and get workloads of `flotilla bench --cluster`
//! against etcd, with the same keys, values, client tasks and output line,
//! so the two can be compared side by side on one machine.
//!
//! Every client is a task on one thread (as in `flotilla bench`), sharing
//! `--conns` gRPC connections to the given endpoints.

use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
// `flotilla bench`'s own key schedule, so both stores see the same keys.
#[path = "../../../src/bin/flotilla/bench_keys.rs"]
mod bench_keys;
use bench_keys::{get_index, key, load_index, loaded_keys, per_client, put_index};
use etcd_client::{Client, GetOptions};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Workload {
    Put,
    Get,
}

#[derive(Parser)]
struct Args {
    /// Comma-separated client URLs (give the leader's alone to measure
    /// without follower forwarding, as `flotilla bench` does).
    #[arg(long)]
    endpoints: String,
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    workload: Workload,
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// gRPC connections the clients share.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    #[arg(long, default_value_t = 10_000)]
    ops: usize,
    #[arg(long, default_value_t = 8)]
    key_bytes: usize,
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
}

async fn connect(args: &Args) -> Result<Vec<Client>, String> {
    let endpoints: Vec<&str> = args.endpoints.split(',').collect();
    let mut conns = Vec::new();
    for _ in 0..args.conns.max(1) {
        conns.push(
            Client::connect(&endpoints, None)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", args.endpoints))?,
        );
    }
    Ok(conns)
}

/// Runs every client's share of `ops` as a task; returns the wall time
/// and each operation's latency.
async fn drive(
    args: &Args,
    conns: &[Client],
    workload: Workload,
    ops: usize,
) -> Result<(Duration, Vec<Duration>), String> {
    let clients = args.clients.max(1);
    let value = vec![b'v'; args.value_bytes];
    let stride = ops as u64;
    let loaded = loaded_keys(args.ops);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let mut kv = conns[client % conns.len()].kv_client();
        let (value, key_bytes) = (value.clone(), args.key_bytes);
        let count = per_client(ops, clients, client);
        tasks.spawn_local(async move {
            let mut latencies = Vec::with_capacity(count);
            for op in 0..count as u64 {
                let at = Instant::now();
                match workload {
                    Workload::Put => {
                        let k = key(put_index(client, op, stride), key_bytes);
                        kv.put(k, value.clone(), None)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    Workload::Get => {
                        let i = get_index(client, op, loaded);
                        let got = kv
                            .get(key(i, key_bytes), Some(GetOptions::new()))
                            .await
                            .map_err(|e| e.to_string())?;
                        if got.kvs().is_empty() {
                            return Err(format!("key {i} is missing"));
                        }
                    }
                }
                latencies.push(at.elapsed());
            }
            Ok::<_, String>(latencies)
        });
    }
    let mut all = Vec::with_capacity(ops);
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.map_err(|e| format!("a client task failed: {e}"))??);
    }
    Ok((started.elapsed(), all))
}

/// The get workload reads keys loaded first, by every client at once.
async fn load(args: &Args, conns: &[Client]) -> Result<(), String> {
    let loaded = loaded_keys(args.ops) as usize;
    let clients = args.clients.max(1);
    let value = vec![b'v'; args.value_bytes];
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let mut kv = conns[client % conns.len()].kv_client();
        let (value, key_bytes) = (value.clone(), args.key_bytes);
        let count = per_client(loaded, clients, client);
        tasks.spawn_local(async move {
            for op in 0..count as u64 {
                let i = load_index(client, op, clients);
                kv.put(key(i, key_bytes), value.clone(), None)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| format!("a loading task failed: {e}"))??;
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at].as_secs_f64() * 1e3
}

async fn run(args: Args) -> Result<(), String> {
    let conns = connect(&args).await?;
    if let Workload::Get = args.workload {
        load(&args, &conns).await?;
    }
    let (elapsed, mut latencies) = drive(&args, &conns, args.workload, args.ops).await?;
    latencies.sort();
    println!(
        "engine=Etcd workload={:?} clients={} ops={} key_bytes={} value_bytes={} ops_per_sec={:.0} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3}",
        args.workload,
        args.clients,
        latencies.len(),
        args.key_bytes,
        args.value_bytes,
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
    );
    Ok(())
}

fn main() {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("etcd-driver: cannot start a runtime: {e}");
            std::process::exit(1);
        }
    };
    let local = tokio::task::LocalSet::new();
    if let Err(e) = local.block_on(&runtime, run(args)) {
        eprintln!("etcd-driver: {e}");
        std::process::exit(1);
    }
}
