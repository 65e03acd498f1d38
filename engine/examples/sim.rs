//! Runs the randomized simulation over many seeds: for each seed the Raft
//! scenario (safety invariants, liveness after healing) and the client
//! scenario (clients of a key/value group through the node's group driver;
//! a linearizable, exactly-once history).
//!
//! ```text
//! cargo run --release -p flotilla-engine --example sim -- --seeds 300
//! cargo run --release -p flotilla-engine --example sim -- --seed 42 --trace
//! cargo run --release -p flotilla-engine --example sim -- --first 81985529216 --seeds 1000 --regression
//! cargo run --release -p flotilla-engine --example sim -- --seeds 50 --sabotage double-apply
//! ```
//! `--regression` adds the seeds that once failed (`sim::regression`);
//! `--sabotage double-apply|stale-read` breaks a rule on purpose in the
//! client scenario, to watch the seeds it gets reported on. The last line
//! reads `seeds=N violations=V commits=C elections=E ... kv_appends=A
//! kv_reads=R ...`; the exit status is 1 when V > 0.

use std::process::ExitCode;

use flotilla_engine::sim::kv::{run_kv_seed, KvScenarioOptions, Sabotage};
use flotilla_engine::sim::regression::REGRESSION_SEEDS;
use flotilla_engine::sim::scenario::{run_seed, ScenarioOptions};
use flotilla_engine::sim::Fnv64;

const USAGE: &str = "usage: sim [--seeds N] [--first S] [--seed S] [--regression] [--trace] [--sabotage double-apply|stale-read]";

/// What the command line asked for.
struct Args {
    seeds: Vec<u64>,
    trace: bool,
    sabotage: Option<Sabotage>,
}

fn parse_args() -> Result<Args, String> {
    let (mut count, mut first, mut single) = (100u64, 0u64, None);
    let (mut trace, mut regression, mut sabotage) = (false, false, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--seeds" => count = number("--seeds")?,
            "--first" => first = number("--first")?,
            "--seed" => single = Some(number("--seed")?),
            "--trace" => trace = true,
            "--regression" => regression = true,
            "--sabotage" => {
                sabotage = Some(match args.next().as_deref() {
                    Some("double-apply") => Sabotage::ApplyRetriesTwice,
                    Some("stale-read") => Sabotage::ReadBeforeReadIndex,
                    other => return Err(format!("unknown sabotage {other:?}")),
                })
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let mut seeds: Vec<u64> = match single {
        Some(s) => vec![s],
        None => (first..first.saturating_add(count)).collect(),
    };
    if regression {
        seeds.extend(REGRESSION_SEEDS.iter().map(|&(seed, _)| seed));
    }
    Ok(Args {
        seeds,
        trace,
        sabotage,
    })
}

/// Sums over the seeds run.
#[derive(Default)]
struct Totals {
    violations: usize,
    commits: u64,
    elections: usize,
    changes: usize,
    kv_appends: u64,
    kv_reads: u64,
    kv_retries: u64,
    failing: Vec<u64>,
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("sim: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut options = ScenarioOptions::default();
    if args.trace {
        options.trace_events = Some(400);
    }
    let kv_options = KvScenarioOptions {
        sabotage: args.sabotage,
        ..KvScenarioOptions::default()
    };
    let mut totals = Totals::default();
    let mut all = Fnv64::default();
    for &seed in &args.seeds {
        let report = run_seed(seed, &options);
        let kv = run_kv_seed(seed, &kv_options);
        all.write_u64(report.trace_hash);
        all.write_u64(kv.trace_hash);
        if args.trace || !report.violations.is_empty() || !kv.violations.is_empty() {
            println!(
                "seed={} nodes={} committed={} elections={} membership_changes={} trace={:016x} kv_appends={} kv_reads={} kv_retries={} kv_trace={:016x}",
                seed,
                report.nodes,
                report.committed,
                report.elections,
                report.membership_changes,
                report.trace_hash,
                kv.appends_acked,
                kv.reads,
                kv.retries,
                kv.trace_hash
            );
        }
        for v in &report.violations {
            println!("  seed={seed} violation: {v}");
        }
        for v in &kv.violations {
            println!("  seed={seed} client violation: {v}");
        }
        if args.trace {
            for event in &report.events {
                println!("    {event}");
            }
            for line in &report.final_state {
                println!("    {line}");
            }
        }
        if !report.violations.is_empty() || !kv.violations.is_empty() {
            totals.failing.push(seed);
        }
        totals.violations += report.violations.len() + kv.violations.len();
        totals.commits += report.committed;
        totals.elections += report.elections;
        totals.changes += report.membership_changes;
        totals.kv_appends += kv.appends_acked;
        totals.kv_reads += kv.reads;
        totals.kv_retries += kv.retries;
    }
    if !totals.failing.is_empty() {
        println!(
            "failing seeds: {:?} (rerun one with --seed S --trace)",
            totals.failing
        );
    }
    println!(
        "seeds={} violations={} commits={} elections={} membership_changes={} kv_appends={} kv_reads={} kv_retries={} trace={:016x}",
        args.seeds.len(),
        totals.violations,
        totals.commits,
        totals.elections,
        totals.changes,
        totals.kv_appends,
        totals.kv_reads,
        totals.kv_retries,
        all.finish()
    );
    if totals.violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
