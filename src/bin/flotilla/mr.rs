//! `flotilla import` and `flotilla mr run|status`: load files into the
//! store, run MapReduce jobs over what it holds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use flotilla::{Db, MapReduceSpec, ReadConsistency, RemoteClient, ScanRange, JOB_STATUS_PREFIX};
use indicatif::{ProgressBar, ProgressStyle};

use crate::Target;

/// A file larger than this is stored in parts `NAME/part-00000`, ...,
/// split at whitespace so no word is cut in two.
const IMPORT_PART_BYTES: usize = 1_000_000;
/// Pairs written at once by `import`.
const IMPORT_BATCH: usize = 64;

/// Settings of `flotilla import`.
#[derive(Args)]
pub(crate) struct ImportArgs {
    /// Files to store, each under PREFIX followed by its file name.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Key prefix for the files.
    #[arg(long, default_value = "")]
    prefix: String,
    #[command(flatten)]
    target: Target,
}

/// `flotilla mr ...`.
#[derive(Subcommand)]
pub(crate) enum MrCommand {
    /// Run a job and print its report.
    Run(RunArgs),
    /// Continue a job whose process died (see `mr status` for its id).
    Resume {
        /// The job's id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// List the jobs and their status.
    Status {
        #[command(flatten)]
        target: Target,
    },
}

/// Settings of `flotilla mr run`.
#[derive(Args)]
pub(crate) struct RunArgs {
    /// The job: wc, index, grep (give the pattern with --arg) or sort.
    job: String,
    /// Input key prefix.
    #[arg(long)]
    input: String,
    /// Output key prefix.
    #[arg(long)]
    output: String,
    /// Reduce tasks.
    #[arg(long = "reduce", default_value_t = 10)]
    reduce_tasks: u32,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Give a task to another worker after this many seconds.
    #[arg(long, default_value_t = 10)]
    task_timeout_secs: u64,
    /// Input bytes per map task, about.
    #[arg(long, default_value_t = 64 << 20)]
    split_bytes: u64,
    /// The job's argument (grep's pattern).
    #[arg(long, default_value = "")]
    arg: String,
    /// Clear a non-empty output prefix first instead of refusing.
    #[arg(long)]
    replace: bool,
    /// After a `wc` job, count the same input's words again on one thread
    /// with no MapReduce, check both agree, and print the speed ratio.
    #[arg(long)]
    compare_sequential: bool,
    #[command(flatten)]
    target: Target,
}

/// The store a command works on: an embedded one or a running cluster.
enum Place {
    Local(Db),
    Cluster(Box<RemoteClient>),
}

impl Place {
    fn open(target: &Target) -> Result<Place, String> {
        let timeout = Duration::from_secs(target.timeout_secs.max(1));
        if let Some(dir) = &target.cluster {
            return RemoteClient::open(dir, timeout)
                .map(|c| Place::Cluster(Box::new(c)))
                .map_err(|e| format!("cannot use cluster {}: {e}", dir.display()));
        }
        let Some(data) = &target.data else {
            return Err("give --data PATH or --cluster DIR".into());
        };
        Db::builder(data)
            .request_timeout(timeout)
            .open()
            .map(Place::Local)
            .map_err(|e| format!("cannot open {}: {e}", data.display()))
    }

    fn put_all(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), String> {
        match self {
            Place::Local(db) => db.put_all(pairs),
            Place::Cluster(client) => pairs
                .iter()
                .try_for_each(|(key, value)| client.put(key, value)),
        }
        .map_err(|e| format!("import failed: {e}"))
    }

    fn close(self) -> Result<(), String> {
        match self {
            Place::Local(db) => db.close().map_err(|e| e.to_string()),
            Place::Cluster(_) => Ok(()),
        }
    }
}

fn bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {what} {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Splits `text` into parts of at most `max` bytes, each ending after
/// whitespace where there is any (else at a character boundary).
fn parts(text: &[u8], max: usize) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let window = &rest[..max];
        let mut cut = window
            .iter()
            .rposition(|b| b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        if cut == 0 {
            // No whitespace: cut before a UTF-8 continuation byte run.
            cut = max;
            while cut > 1 && (rest[cut] & 0xC0) == 0x80 {
                cut -= 1;
            }
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out.push(rest);
    out
}

pub(crate) fn import(args: ImportArgs) -> Result<(), String> {
    let db = Place::open(&args.target)?;
    let total: u64 = args
        .files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let progress = bar(total, "bytes");
    let mut batch = Vec::new();
    let (mut keys, mut bytes) = (0u64, 0u64);
    for file in &args.files {
        let text =
            std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let name = file_name(file)?;
        let pieces = parts(&text, IMPORT_PART_BYTES);
        for (i, piece) in pieces.iter().enumerate() {
            let key = if pieces.len() == 1 {
                format!("{}{name}", args.prefix)
            } else {
                format!("{}{name}/part-{i:05}", args.prefix)
            };
            batch.push((key.into_bytes(), piece.to_vec()));
            keys += 1;
            bytes += piece.len() as u64;
            if batch.len() == IMPORT_BATCH {
                db.put_all(std::mem::take(&mut batch))?;
            }
        }
        progress.inc(text.len() as u64);
    }
    db.put_all(batch)?;
    progress.finish_and_clear();
    db.close()?;
    println!(
        "imported {} files as {keys} keys, {bytes} bytes",
        args.files.len()
    );
    Ok(())
}

fn file_name(file: &Path) -> Result<String, String> {
    file.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| format!("{} names no file", file.display()))
}

pub(crate) fn run(command: MrCommand) -> Result<(), String> {
    match command {
        MrCommand::Status { target } => match Place::open(&target)? {
            Place::Local(db) => {
                for (id, status) in db.jobs().map_err(|e| e.to_string())? {
                    println!("{id}\t{status}");
                }
                db.close().map_err(|e| e.to_string())
            }
            Place::Cluster(client) => {
                let (start, end) = ScanRange::prefix(JOB_STATUS_PREFIX)
                    .bounds()
                    .map_err(|e| e.to_string())?;
                let jobs = client
                    .scan(start, end, usize::MAX, ReadConsistency::Linearizable)
                    .map_err(|e| e.to_string())?;
                for (id, status) in jobs {
                    println!(
                        "{}\t{}",
                        String::from_utf8_lossy(&id[JOB_STATUS_PREFIX.len()..]),
                        String::from_utf8_lossy(&status)
                    );
                }
                Ok(())
            }
        },
        MrCommand::Run(args) => {
            let mut spec = MapReduceSpec::new(
                args.job.clone(),
                ScanRange::prefix(args.input.as_bytes()),
                args.output.as_bytes(),
            );
            spec.arg = args.arg;
            spec.reduce_tasks = args.reduce_tasks;
            spec.workers = args.workers;
            spec.task_timeout = Duration::from_secs(args.task_timeout_secs.max(1));
            spec.replace = args.replace;
            spec.split_bytes = args.split_bytes;
            match Place::open(&args.target)? {
                Place::Local(db) => {
                    let handle = db.mapreduce(spec).map_err(|e| e.to_string())?;
                    let (bytes_in, seconds) = follow(handle)?;
                    if args.compare_sequential {
                        compare_sequential(&db, &args.input, &args.output, bytes_in, seconds)?;
                    }
                    db.close().map_err(|e| e.to_string())
                }
                Place::Cluster(_) if args.compare_sequential => {
                    Err("--compare-sequential reads an embedded store (--data)".into())
                }
                Place::Cluster(client) => follow_remote(&client, &spec),
            }
        }
        MrCommand::Resume { id, target } => match Place::open(&target)? {
            Place::Local(db) => {
                let handle = db.resume_job(&id).map_err(|e| e.to_string())?;
                follow(handle)?;
                db.close().map_err(|e| e.to_string())
            }
            Place::Cluster(_) => Err(
                "in a cluster another member resumes a job by itself when its coordinator stops; follow it with `mr status`".into(),
            ),
        },
    }
}

/// Starts a job on a cluster and follows it to its end, through whichever
/// member answers (the coordinator may change on the way).
fn follow_remote(client: &RemoteClient, spec: &MapReduceSpec) -> Result<(), String> {
    let id = format!(
        "{}-{}-{}",
        spec.job.replace(|c: char| !c.is_ascii_alphanumeric(), "-"),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0),
        std::process::id()
    );
    let id = client
        .mapreduce(&id, spec)
        .map_err(|e| format!("cannot start the job: {e}"))?;
    let progress = bar(0, "tasks");
    let mut failures = 0u32;
    let view = loop {
        std::thread::sleep(Duration::from_millis(200));
        let view = match client.job(&id) {
            Ok(view) => {
                failures = 0;
                view
            }
            // The coordinator's node may have died: another member takes
            // the job over within seconds; keep asking for a while.
            Err(e) if failures < 150 => {
                failures += 1;
                progress.set_message(format!("({e}; asking again)"));
                continue;
            }
            Err(e) => return Err(format!("job {id}: {e}")),
        };
        if let Some(p) = view.progress() {
            show(&progress, &p);
        }
        // Empty or "starting": the member that answered has not applied
        // the start yet.
        let ended = view.status.starts_with("committed") || view.status.starts_with("failed");
        if ended {
            break view;
        }
    };
    progress.finish_and_clear();
    let report = view
        .report()
        .ok_or_else(|| format!("job {id}: {}", view.status))?;
    println!(
        "{} coordinator={}",
        report_line(&id, &report),
        view.coordinator
    );
    Ok(())
}

/// Moves the bar to `p`.
fn show(progress: &ProgressBar, p: &flotilla::Progress) {
    progress.set_length(p.maps_total + p.reduces_total);
    progress.set_position(p.maps_done + p.reduces_done);
    progress.set_message(format!(
        "maps {}/{} reduces {}/{} in {} MB",
        p.maps_done,
        p.maps_total,
        p.reduces_done,
        p.reduces_total,
        p.bytes_in >> 20
    ));
}

/// A committed job's report as `name=value` fields.
fn report_line(id: &str, report: &flotilla::Report) -> String {
    let p = report.progress;
    let seconds = report.elapsed.as_secs_f64().max(1e-9);
    format!(
        "job={id} committed_pairs={} maps={} reduces={} task_runs={} crashed_workers={} records_in={} bytes_in={} records_out={} seconds={:.2} commit_seconds={:.2} mb_per_sec={:.1}",
        report.committed_pairs,
        p.maps_total,
        p.reduces_total,
        report.task_runs,
        report.crashed_workers,
        p.records_in,
        p.bytes_in,
        p.records_out,
        seconds,
        report.commit_elapsed.as_secs_f64(),
        p.bytes_in as f64 / 1e6 / seconds
    )
}

/// Shows a job's progress, then prints its report; returns the input bytes
/// and the seconds it took.
fn follow(mut handle: flotilla::JobHandle) -> Result<(u64, f64), String> {
    let progress = bar(0, "tasks");
    while let Some(p) = handle.next_progress(Duration::from_millis(200)) {
        show(&progress, &p);
    }
    progress.finish_and_clear();
    let id = handle.id().to_string();
    let report = handle.wait().map_err(|e| format!("job {id} failed: {e}"))?;
    println!("{}", report_line(&id, &report));
    Ok((
        report.progress.bytes_in,
        report.elapsed.as_secs_f64().max(1e-9),
    ))
}

/// Word count on one thread over the same input, checked against the job's
/// committed output, with both speeds.
fn compare_sequential(
    db: &Db,
    input: &str,
    output: &str,
    bytes: u64,
    job_seconds: f64,
) -> Result<(), String> {
    let started = std::time::Instant::now();
    let mut counts: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    db.visit_unordered(&ScanRange::prefix(input.as_bytes()), &mut |_, value| {
        for word in flotilla::mr::builtin::words(&String::from_utf8_lossy(value)) {
            match counts.get_mut(word) {
                Some(n) => *n += 1,
                None => {
                    counts.insert(word.to_string(), 1);
                }
            }
        }
    })
    .map_err(|e| e.to_string())?;
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let committed = db
        .scan(&ScanRange::prefix(output.as_bytes()), usize::MAX)
        .map_err(|e| e.to_string())?;
    let agree = committed.len() == counts.len()
        && committed.iter().all(|(k, v)| {
            let word = String::from_utf8_lossy(&k[output.len()..]);
            counts.get(word.as_ref()).map(u64::to_string).as_deref() == std::str::from_utf8(v).ok()
        });
    println!(
        "sequential_seconds={seconds:.2} sequential_mb_per_sec={:.1} job_to_sequential_ratio={:.2} outputs_agree={agree}",
        bytes as f64 / 1e6 / seconds,
        seconds / job_seconds.max(1e-9)
    );
    if agree {
        Ok(())
    } else {
        Err("the job's output differs from the sequential count".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_end_after_whitespace_and_keep_every_byte() {
        let text = "alpha beta gamma delta".as_bytes();
        let got = parts(text, 12);
        assert_eq!(got.concat(), text);
        assert!(got.iter().all(|p| p.len() <= 12));
        assert_eq!(got[0], b"alpha beta ");
        // No whitespace: cut at a character boundary.
        let word = "ééééé".as_bytes();
        let got = parts(word, 3);
        assert_eq!(got.concat(), word);
        assert!(got.iter().all(|p| std::str::from_utf8(p).is_ok()));
    }
}
