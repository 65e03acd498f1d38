//! The `flotilla` command: talk to a store, run benchmarks.
//!
//! Output is fit for scripts: `get` prints the value alone, `scan` one
//! `key<TAB>value` line per pair (bytes that are not printable UTF-8, tabs,
//! newlines and backslashes escaped); a missing key prints nothing and exits
//! 1; any failure exits 2 with a message on stderr.

mod bench;
mod escape;

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use flotilla::{Db, ReadConsistency, ScanRange};

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
struct Target {
    /// An embedded single-node store in this directory (created if absent).
    #[arg(long, value_name = "PATH")]
    data: PathBuf,
    /// Read consistency for get and scan.
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    consistency: Consistency,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Consistency {
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
}

fn open(target: &Target) -> Result<Db, String> {
    Db::builder(&target.data)
        .read_consistency(target.consistency.into())
        .open()
        .map_err(|e| format!("cannot open {}: {e}", target.data.display()))
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
            open(&target)?.put(bytes(&key), bytes(&value)).map_err(failed)?;
        }
        Command::Append { key, value, target } => {
            open(&target)?.append(bytes(&key), bytes(&value)).map_err(failed)?;
        }
        Command::Get { key, target } => match open(&target)?.get(bytes(&key)).map_err(failed)? {
            Some(value) => print(&value)?,
            None => return Ok(ExitCode::from(1)),
        },
        Command::Delete { key, target } => {
            if !open(&target)?.delete(bytes(&key)).map_err(failed)? {
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
            for (key, value) in open(&target)?.scan(&range, limit).map_err(failed)? {
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
            let status = open(&target)?.status().map_err(failed)?;
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
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("flotilla: {message}");
            ExitCode::from(2)
        }
    }
}
