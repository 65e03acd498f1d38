//! The `flotilla` command: talk to a store, run benchmarks.
//!
//! Output is fit for scripts: `get` prints the value alone, `scan` one
//! `key<TAB>value` line per pair (bytes that are not printable UTF-8, tabs,
//! newlines and backslashes escaped); a missing key prints nothing and exits
//! 1; any failure exits 2 with a message on stderr.

// Fewer cycles per allocation than glibc's malloc on the request paths
// (see the `mimalloc` feature in Cargo.toml).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod bench_keys;
mod escape;
mod mr;

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use flotilla::{Db, Pair, ReadConsistency, RemoteClient, ScanRange};

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "An embedded, Raft-replicated key/value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the store is.
#[derive(Args, Clone, Debug)]
pub(crate) struct Target {
    /// An embedded single-node store in this directory (put, append, cas
    /// and import create it; get, scan, delete and status need it to exist).
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "cluster",
        conflicts_with = "cluster"
    )]
    pub(crate) data: Option<PathBuf>,
    /// A running cluster, as `flotilla cluster init` wrote its directory.
    #[arg(long, value_name = "DIR")]
    pub(crate) cluster: Option<PathBuf>,
    /// Give up on a request after this many seconds.
    #[arg(long, default_value_t = 10)]
    pub(crate) timeout_secs: u64,
    /// Read consistency for get and scan.
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    pub(crate) consistency: Consistency,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Consistency {
    Linearizable,
    Lease,
    Stale,
}

impl From<Consistency> for ReadConsistency {
    fn from(c: Consistency) -> Self {
        match c {
            Consistency::Linearizable => ReadConsistency::Linearizable,
            Consistency::Lease => ReadConsistency::Lease,
            Consistency::Stale => ReadConsistency::Stale,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Set KEY to VALUE.
    Put {
        key: OsString,
        value: OsString,
        #[command(flatten)]
        target: Target,
    },
    /// Print KEY's value; exit 1 (printing nothing) if it is absent.
    Get {
        key: OsString,
        #[command(flatten)]
        target: Target,
    },
    /// Append VALUE to KEY's value.
    Append {
        key: OsString,
        value: OsString,
        #[command(flatten)]
        target: Target,
    },
    /// Remove KEY; exit 1 if it was absent.
    Delete {
        key: OsString,
        #[command(flatten)]
        target: Target,
    },
    /// Print `key<TAB>value` for every key with PREFIX (or in --start..--end).
    Scan {
        /// Key prefix (omit with --start/--end).
        prefix: Option<OsString>,
        /// First key of a range.
        #[arg(long, conflicts_with = "prefix")]
        start: Option<OsString>,
        /// First key after a range (omit for no end).
        #[arg(long, conflicts_with = "prefix")]
        end: Option<OsString>,
        /// Most pairs printed.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[command(flatten)]
        target: Target,
    },
    /// Set KEY to --new (or remove it with --remove) if its value is
    /// --expected (or it is absent with --absent). Prints the value after;
    /// exits 1 if the value did not match.
    Cas {
        key: OsString,
        #[arg(long, required_unless_present = "absent")]
        expected: Option<OsString>,
        #[arg(long, conflicts_with = "expected")]
        absent: bool,
        #[arg(long, required_unless_present = "remove")]
        new: Option<OsString>,
        #[arg(long, conflicts_with = "new")]
        remove: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Print each group's role, term, leader, commit and applied index.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Measure put or get throughput and latency.
    Bench(bench::BenchArgs),
    /// Store files, each under a prefix followed by its name.
    Import(mr::ImportArgs),
    /// Run MapReduce jobs over the store.
    #[command(subcommand)]
    Mr(mr::MrCommand),
    /// Set up a local cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Run a cluster member until SIGTERM or SIGINT.
    Serve {
        /// The member's config file (`flotilla cluster init` writes one per node).
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Write a CA, node and client certificates and one config per node
    /// for a cluster on loopback.
    Init {
        /// Number of members.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Directory to write into (must not hold a cluster yet).
        #[arg(long)]
        dir: PathBuf,
        /// Shards keys hash to, 1 to 4096; fixed for the cluster's life.
        #[arg(long, default_value_t = 64)]
        shards: u64,
    },
}

/// An embedded store or a cluster, behind the same commands.
enum Store {
    Local(Db),
    Remote(Box<RemoteClient>, ReadConsistency),
}

impl Store {
    fn put(&self, key: &[u8], value: &[u8]) -> flotilla::Result<()> {
        match self {
            Store::Local(db) => db.put(key, value),
            Store::Remote(c, _) => c.put(key, value),
        }
    }
    fn append(&self, key: &[u8], value: &[u8]) -> flotilla::Result<()> {
        match self {
            Store::Local(db) => db.append(key, value),
            Store::Remote(c, _) => c.append(key, value),
        }
    }
    fn get(&self, key: &[u8]) -> flotilla::Result<Option<Vec<u8>>> {
        match self {
            Store::Local(db) => db.get(key),
            Store::Remote(c, consistency) => c.get(key, *consistency),
        }
    }
    fn delete(&self, key: &[u8]) -> flotilla::Result<bool> {
        match self {
            Store::Local(db) => db.delete(key),
            Store::Remote(c, _) => c.delete(key),
        }
    }
    fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> flotilla::Result<flotilla::CasOutcome> {
        match self {
            Store::Local(db) => db.compare_and_swap(key, expected, new),
            Store::Remote(c, _) => c.compare_and_swap(key, expected, new),
        }
    }
    fn scan(&self, range: &ScanRange, limit: usize) -> flotilla::Result<Vec<Pair>> {
        match self {
            Store::Local(db) => db.scan(range, limit),
            Store::Remote(c, consistency) => {
                let (start, end) = range.bounds()?;
                c.scan(start, end, limit, *consistency)
            }
        }
    }
}

/// Opens the store of a command that only reads or removes what exists
/// (get, scan, delete, status): a `--data` path with no store is an error,
/// not a new empty store (a mistyped path would answer "missing").
fn open_existing(target: &Target) -> Result<Store, String> {
    if let Some(data) = &target.data {
        if !data.exists() {
            return Err(format!(
                "no store at {}; put, append or import creates one",
                data.display()
            ));
        }
    }
    open(target)
}

fn open(target: &Target) -> Result<Store, String> {
    let timeout = std::time::Duration::from_secs(target.timeout_secs.max(1));
    if let Some(dir) = &target.cluster {
        let client = RemoteClient::open(dir, timeout)
            .map_err(|e| format!("cannot use cluster {}: {e}", dir.display()))?;
        return Ok(Store::Remote(Box::new(client), target.consistency.into()));
    }
    let Some(data) = &target.data else {
        return Err("give --data PATH or --cluster DIR".into());
    };
    Db::builder(data)
        .read_consistency(target.consistency.into())
        .request_timeout(timeout)
        .open()
        .map(Store::Local)
        .map_err(|e| format!("cannot open {}: {e}", data.display()))
}

/// Test only: word count whose map sleeps `map_ms` per input pair and
/// whose reduce sleeps `reduce_ms` per key, so a test can act while a job
/// is in a given phase. Registered as `test-slow-wc` (argument
/// `MAP_MS,REDUCE_MS`) on members started with `FLOTILLA_TEST_FAULTS=1`.
struct SlowWordCount {
    map_ms: u64,
    reduce_ms: u64,
}

impl flotilla::Job for SlowWordCount {
    fn map(&self, key: &[u8], value: &[u8], emit: &mut flotilla::mr::Emit<'_>) {
        std::thread::sleep(std::time::Duration::from_millis(self.map_ms));
        flotilla::mr::builtin::WordCount.map(key, value, emit);
    }

    fn reduce(
        &self,
        key: &[u8],
        values: &mut flotilla::mr::Values<'_>,
        emit: &mut flotilla::mr::Emit<'_>,
    ) {
        std::thread::sleep(std::time::Duration::from_millis(self.reduce_ms));
        flotilla::mr::builtin::WordCount.reduce(key, values, emit);
    }
}

fn slow_word_count(arg: &str) -> Result<std::sync::Arc<dyn flotilla::Job>, String> {
    let parsed = arg
        .split_once(',')
        .and_then(|(m, r)| Some((m.parse().ok()?, r.parse().ok()?)));
    let (map_ms, reduce_ms) =
        parsed.ok_or_else(|| format!("test-slow-wc takes MAP_MS,REDUCE_MS, not {arg:?}"))?;
    Ok(std::sync::Arc::new(SlowWordCount { map_ms, reduce_ms }))
}

fn serve(config: &std::path::Path) -> Result<(), String> {
    let mut builder = flotilla::load_node(config).map_err(|e| e.to_string())?;
    if std::env::var("FLOTILLA_TEST_FAULTS").as_deref() == Ok("1") {
        builder = builder.job_factory("test-slow-wc", std::sync::Arc::new(slow_word_count));
    }
    // Signal handlers first: a SIGTERM that arrives while the store is
    // still opening is then a graceful stop once it is open, not a kill.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let (mut term, mut int) = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        Ok::<_, String>((
            signal(SignalKind::terminate()).map_err(|e| e.to_string())?,
            signal(SignalKind::interrupt()).map_err(|e| e.to_string())?,
        ))
    })?;
    eprintln!("flotilla: opening {}", config.display());
    let db = builder
        .open()
        .map_err(|e| format!("{}: {e}", config.display()))?;
    eprintln!("flotilla: serving {}", config.display());
    runtime.block_on(async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    });
    db.close().map_err(|e| e.to_string())?;
    eprintln!("flotilla: stopped cleanly");
    Ok(())
}

fn bytes(arg: &OsString) -> &[u8] {
    arg.as_bytes()
}

fn run(command: Command) -> Result<ExitCode, String> {
    let mut out = std::io::stdout().lock();
    let mut print = |bytes: &[u8]| -> Result<(), String> {
        out.write_all(bytes)
            .and_then(|_| out.write_all(b"\n"))
            .map_err(|e| format!("cannot write output: {e}"))
    };
    let failed = |e: flotilla::Error| e.to_string();
    match command {
        Command::Put { key, value, target } => {
            open(&target)?
                .put(bytes(&key), bytes(&value))
                .map_err(failed)?;
        }
        Command::Append { key, value, target } => {
            open(&target)?
                .append(bytes(&key), bytes(&value))
                .map_err(failed)?;
        }
        Command::Get { key, target } => {
            match open_existing(&target)?.get(bytes(&key)).map_err(failed)? {
                Some(value) => print(&value)?,
                None => return Ok(ExitCode::from(1)),
            }
        }
        Command::Delete { key, target } => {
            if !open_existing(&target)?
                .delete(bytes(&key))
                .map_err(failed)?
            {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Scan {
            prefix,
            start,
            end,
            limit,
            target,
        } => {
            let end = end.map(|e| bytes(&e).to_vec()).unwrap_or_default();
            let range = match (prefix, start) {
                (Some(prefix), _) => ScanRange::prefix(bytes(&prefix)),
                (None, Some(start)) => ScanRange::range(bytes(&start), end),
                (None, None) => ScanRange::range(Vec::new(), end),
            };
            for (key, value) in open_existing(&target)?
                .scan(&range, limit)
                .map_err(failed)?
            {
                let line = format!("{}\t{}", escape::escape(&key), escape::escape(&value));
                print(line.as_bytes())?;
            }
        }
        Command::Cas {
            key,
            expected,
            new,
            target,
            ..
        } => {
            let outcome = open(&target)?
                .compare_and_swap(
                    bytes(&key),
                    expected.as_ref().map(bytes),
                    new.as_ref().map(bytes),
                )
                .map_err(failed)?;
            if let Some(current) = &outcome.current {
                print(current)?;
            }
            if !outcome.swapped {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Status { target } => {
            let store = open_existing(&target)?;
            let status = match store {
                Store::Local(db) => db.status().map_err(failed)?,
                Store::Remote(client, _) => {
                    let mut all_answered = true;
                    for (node, answer) in client.status() {
                        match answer {
                            Ok(groups) => {
                                for g in groups {
                                    println!(
                                        "node {} group {} role {} term {} leader {} commit {} applied {} log_bytes {} snapshot {} sessions {} voters {:?}",
                                        g.node, g.group, g.role, g.term, g.leader, g.commit_index,
                                        g.applied_index, g.log_bytes, g.snapshot_index, g.sessions, g.voters
                                    );
                                }
                            }
                            Err(e) => {
                                all_answered = false;
                                eprintln!("flotilla: node {node} unreachable: {e}");
                            }
                        }
                    }
                    // A member down is a failure (2), not an answer such as
                    // "missing" (1); the others' lines are printed still.
                    return Ok(if all_answered {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(2)
                    });
                }
            };
            println!("store {}", status.path.display());
            for group in status.groups {
                let raft = &group.raft;
                println!(
                    "group {} node {} role {:?} term {} leader {} commit {} applied {} log_bytes {} snapshot {} sessions {} inflight {}",
                    raft.group,
                    raft.id,
                    raft.role,
                    raft.term,
                    raft.leader,
                    raft.commit_index,
                    group.applied_index,
                    group.log_bytes,
                    raft.snapshot_index,
                    group.sessions,
                    group.inflight_writes
                );
            }
        }
        Command::Bench(args) => bench::run(args)?,
        Command::Import(args) => mr::import(args)?,
        Command::Mr(command) => mr::run(command)?,
        Command::Cluster(ClusterCommand::Init { nodes, dir, shards }) => {
            flotilla::init_cluster_with(flotilla::ClusterInit { nodes, shards }, &dir)
                .map_err(failed)?;
            println!(
                "wrote a {nodes}-node cluster of {shards} shards to {}",
                dir.display()
            );
            for id in 1..=nodes {
                println!(
                    "  flotilla serve --config {}",
                    dir.join(format!("node{id}.toml")).display()
                );
            }
        }
        Command::Serve { config } => serve(&config)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Logs to stderr at the level `FLOTILLA_LOG` names (error, warn, info,
/// debug, trace; default warn).
fn init_logging() {
    let level = match std::env::var("FLOTILLA_LOG").as_deref() {
        Ok("error") => tracing::Level::ERROR,
        Ok("info") => tracing::Level::INFO,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        _ => tracing::Level::WARN,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("flotilla: {message}");
            ExitCode::from(2)
        }
    }
}
