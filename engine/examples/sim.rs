//! Runs the randomized Raft simulation over many seeds.
//!
//! ```text
//! cargo run --release -p flotilla-engine --example sim -- --seeds 300
//! cargo run --release -p flotilla-engine --example sim -- --seed 42 --trace
//! ```
//! The last line reads `seeds=N violations=V ...`; the exit status is 1 when V > 0.

use std::process::ExitCode;

use flotilla_engine::sim::scenario::{run_seed, ScenarioOptions};
use flotilla_engine::sim::Fnv64;

fn main() -> ExitCode {
    let mut seeds = 100u64;
    let mut single = None;
    let mut trace = false;
    let mut first = 0u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> u64 {
            match args.next().and_then(|v| v.parse().ok()) {
                Some(v) => v,
                None => {
                    eprintln!("sim: {name} needs a number");
                    std::process::exit(2);
                }
            }
        };
        match arg.as_str() {
            "--seeds" => seeds = value("--seeds"),
            "--first" => first = value("--first"),
            "--seed" => single = Some(value("--seed")),
            "--trace" => trace = true,
            other => {
                eprintln!("sim: unknown argument {other}\nusage: sim [--seeds N] [--first S] [--seed S] [--trace]");
                return ExitCode::from(2);
            }
        }
    }
    let list: Vec<u64> = match single {
        Some(s) => vec![s],
        None => (first..first + seeds).collect(),
    };
    let mut options = ScenarioOptions::default();
    if trace {
        options.trace_events = Some(400);
    }
    let (mut violations, mut commits, mut elections, mut changes) = (0usize, 0u64, 0usize, 0usize);
    let mut failing = Vec::new();
    let mut all = Fnv64::default();
    for &seed in &list {
        let report = run_seed(seed, &options);
        all.write_u64(report.trace_hash);
        if trace || !report.violations.is_empty() {
            println!(
                "seed={} nodes={} committed={} elections={} membership_changes={} trace={:016x}",
                seed,
                report.nodes,
                report.committed,
                report.elections,
                report.membership_changes,
                report.trace_hash
            );
        }
        for v in &report.violations {
            println!("  seed={seed} violation: {v}");
        }
        if trace {
            for event in &report.events {
                println!("    {event}");
            }
            for line in &report.final_state {
                println!("    {line}");
            }
        }
        if !report.violations.is_empty() {
            failing.push(seed);
        }
        violations += report.violations.len();
        commits += report.committed;
        elections += report.elections;
        changes += report.membership_changes;
    }
    if !failing.is_empty() {
        println!("failing seeds: {failing:?}");
    }
    println!(
        "seeds={} violations={} commits={} elections={} membership_changes={} trace={:016x}",
        list.len(),
        violations,
        commits,
        elections,
        changes,
        all.finish()
    );
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
