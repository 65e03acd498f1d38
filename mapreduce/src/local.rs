//! Running a job with worker threads in this process: a supervisor thread
//! owns the [`Coordinator`], workers pull tasks from it, a worker whose job
//! code panics is gone (as a crashed process would be) and a fresh one
//! takes its place, and the output is committed only once every task is
//! done.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::coordinator::{Assignment, Coordinator, TaskId, TaskKind};
use crate::error::{io, MapReduceError};
use crate::job::Job;
use crate::run_file::{map_run_name, reduce_output_name};
use crate::store::{Split, Store};
use crate::tasks::{commit_file, run_map, run_reduce, Counters, TaskContext};

/// Output pairs per store write at commit.
const COMMIT_BATCH_PAIRS: usize = 512;
/// How often the supervisor reports progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// What to run.
#[derive(Clone)]
pub struct JobSpec {
    /// The job's unique id: names its files and its status record.
    pub id: String,
    /// The job's code.
    pub job: Arc<dyn Job>,
    /// Input user keys `input_start..input_end` (empty end: no bound).
    pub input_start: Vec<u8>,
    /// See `input_start`.
    pub input_end: Vec<u8>,
    /// Every output key is this prefix followed by the key reduce emitted.
    pub output_prefix: Vec<u8>,
    /// Reduce tasks (partitions), at least 1.
    pub reduce_tasks: u32,
    /// Worker threads, at least 1.
    pub workers: usize,
    /// A task not completed within this is handed to another worker.
    pub task_timeout: Duration,
    /// Directory for intermediate files (a job directory is made inside).
    pub work_dir: PathBuf,
    /// Clear a non-empty output prefix instead of refusing the job.
    pub replace: bool,
    /// The splits to map, as an earlier run chose them (resuming must map
    /// the same ones); `None`: ask the store for splits of `split_bytes`.
    pub splits: Option<Vec<Split>>,
    /// Input bytes per map task, about.
    pub split_bytes: u64,
    /// Set to stop the job: workers stop at their next record or task, and
    /// the job ends with [`MapReduceError::Cancelled`], leaving no output.
    pub cancel: Arc<AtomicBool>,
    /// Continue a job that was interrupted (its process died): tasks whose
    /// output files are in its directory count as completed, and the
    /// output prefix is not checked (it holds at most this job's output).
    pub resume: bool,
}

/// How far a job got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Map tasks completed.
    pub maps_done: u64,
    /// Map tasks in all.
    pub maps_total: u64,
    /// Reduce tasks completed.
    pub reduces_done: u64,
    /// Reduce tasks in all.
    pub reduces_total: u64,
    /// Input pairs read (by every attempt).
    pub records_in: u64,
    /// Input bytes read (keys and values).
    pub bytes_in: u64,
    /// Output pairs written by reduce attempts.
    pub records_out: u64,
    /// Output bytes written by reduce attempts.
    pub bytes_out: u64,
}

/// The end of a committed job.
#[derive(Clone, Debug)]
pub struct Report {
    /// The final counters.
    pub progress: Progress,
    /// Output pairs committed to the store.
    pub committed_pairs: u64,
    /// Tasks handed out, re-issues included (equals maps + reduces when
    /// nothing failed).
    pub task_runs: u64,
    /// Workers that crashed and were replaced.
    pub crashed_workers: u64,
    /// Wall time from start to commit.
    pub elapsed: Duration,
    /// Of which writing the output into the store.
    pub commit_elapsed: Duration,
}

struct Shared {
    spec: JobSpec,
    store: Arc<dyn Store>,
    splits: Vec<Split>,
    dir: PathBuf,
    coordinator: Mutex<Coordinator>,
    wake: Condvar,
    started: Instant,
    counters: Counters,
    fatal: Mutex<Option<MapReduceError>>,
}

enum WorkerEnd {
    /// Every task is done.
    Finished,
    /// The job code panicked: this worker is gone.
    Crashed,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn coordinator(&self) -> std::sync::MutexGuard<'_, Coordinator> {
        self.coordinator.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failed(&self) -> bool {
        if self.cancelled() {
            self.fail(MapReduceError::Cancelled);
            return true;
        }
        self.fatal.lock().map(|f| f.is_some()).unwrap_or(true)
    }

    fn cancelled(&self) -> bool {
        self.spec.cancel.load(Ordering::Relaxed)
    }

    fn fail(&self, e: MapReduceError) {
        if let Ok(mut fatal) = self.fatal.lock() {
            fatal.get_or_insert(e);
        }
        self.wake.notify_all();
    }

    fn progress(&self) -> Progress {
        let c = self.coordinator();
        let [records_in, bytes_in, records_out, bytes_out] = self.counters.read();
        Progress {
            maps_done: c.maps_done() as u64,
            maps_total: c.map_count() as u64,
            reduces_done: c.reduces_done() as u64,
            reduces_total: c.reduce_count() as u64,
            records_in,
            bytes_in,
            records_out,
            bytes_out,
        }
    }
}

/// Runs `spec` over `store` and commits its output; `progress` is called
/// now and then with the counters. Returns once the output is committed
/// and every worker has exited; on failure the output prefix is cleared.
pub fn run_local(
    store: Arc<dyn Store>,
    spec: JobSpec,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Report, MapReduceError> {
    validate(&spec)?;
    if !spec.resume
        && !store
            .is_prefix_empty(&spec.output_prefix)
            .map_err(MapReduceError::Store)?
    {
        if !spec.replace {
            return Err(MapReduceError::OutputNotEmpty {
                prefix: String::from_utf8_lossy(&spec.output_prefix).into_owned(),
            });
        }
        store
            .delete_prefix(&spec.output_prefix)
            .map_err(MapReduceError::Store)?;
    }
    let mut spec = spec;
    let splits = match spec.splits.take() {
        Some(splits) => splits,
        None => store
            .splits(&spec.input_start, &spec.input_end, spec.split_bytes)
            .map_err(MapReduceError::Store)?,
    };
    let dir = spec.work_dir.join(format!("mr-{}", spec.id));
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mut coordinator = Coordinator::new(
        splits.len() as u32,
        spec.reduce_tasks,
        spec.task_timeout.as_millis() as u64,
    );
    if spec.resume {
        for task in completed_on_disk(&dir, &spec.id, splits.len() as u32, spec.reduce_tasks) {
            coordinator.complete(task);
        }
    }
    let shared = Arc::new(Shared {
        coordinator: Mutex::new(coordinator),
        splits,
        store: store.clone(),
        dir: dir.clone(),
        wake: Condvar::new(),
        started: Instant::now(),
        counters: Counters::default(),
        fatal: Mutex::new(None),
        spec,
    });
    let result = supervise(&shared, progress).and_then(|crashed| {
        if shared.cancelled() {
            return Err(MapReduceError::Cancelled);
        }
        commit(&shared, crashed)
    });
    // Every worker has exited: nothing writes in the job directory any more.
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        warn!(dir = %dir.display(), "cannot remove a job's intermediate files: {e}");
    }
    if result.is_err() {
        if let Err(e) = store.delete_prefix(&shared.spec.output_prefix) {
            warn!("cannot clear the output of a failed job: {e}");
        }
    }
    result
}

/// The tasks an earlier run of the job finished: a map whose run files for
/// every partition exist (each was renamed into place whole, after an
/// fsync), a reduce whose output file exists.
fn completed_on_disk(dir: &Path, job: &str, maps: u32, reduces: u32) -> Vec<TaskId> {
    let mut done = Vec::new();
    for map in 0..maps {
        if (0..reduces).all(|r| dir.join(map_run_name(job, map, r)).is_file()) {
            done.push(TaskId {
                kind: TaskKind::Map,
                index: map,
            });
        }
    }
    // A reduce output only counts once every map is done: it was produced
    // from all of them.
    if done.len() == maps as usize {
        for reduce in 0..reduces {
            if dir.join(reduce_output_name(job, reduce)).is_file() {
                done.push(TaskId {
                    kind: TaskKind::Reduce,
                    index: reduce,
                });
            }
        }
    }
    done
}

fn validate(spec: &JobSpec) -> Result<(), MapReduceError> {
    if spec.reduce_tasks == 0
        || spec.workers == 0
        || spec.task_timeout.is_zero()
        || spec.split_bytes == 0
    {
        return Err(MapReduceError::Invalid(
            "a job needs at least one reduce task and one worker, and a task timeout and split size above zero".into(),
        ));
    }
    if spec.id.is_empty()
        || !spec
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(MapReduceError::Invalid(format!(
            "job id {:?}: use letters, digits and '-'",
            spec.id
        )));
    }
    if spec.output_prefix.is_empty() {
        return Err(MapReduceError::Invalid(
            "an empty output prefix would overwrite the whole store".into(),
        ));
    }
    Ok(())
}

/// Starts the workers, replaces crashed ones, reports progress, and returns
/// the number of crashes once every worker has exited.
fn supervise(
    shared: &Arc<Shared>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<u64, MapReduceError> {
    let (ended_tx, ended_rx) = mpsc::channel();
    let mut next_worker = 0u64;
    let mut start = |threads: &mut Vec<std::thread::JoinHandle<()>>| {
        next_worker += 1;
        let (shared, ended) = (shared.clone(), ended_tx.clone());
        let worker = next_worker;
        let spawned = std::thread::Builder::new()
            .name(format!("flotilla-mr-worker-{worker}"))
            .spawn(move || {
                let end = work(&shared, worker);
                let _ = ended.send(end);
            });
        match spawned {
            Ok(handle) => {
                threads.push(handle);
                Ok(())
            }
            Err(e) => Err(MapReduceError::Invalid(format!(
                "cannot start a worker thread: {e}"
            ))),
        }
    };
    let mut threads = Vec::new();
    for _ in 0..shared.spec.workers {
        start(&mut threads)?;
    }
    let mut live = shared.spec.workers;
    let mut crashed = 0u64;
    while live > 0 {
        match ended_rx.recv_timeout(PROGRESS_EVERY) {
            Ok(WorkerEnd::Finished) => live -= 1,
            Ok(WorkerEnd::Crashed) => {
                crashed += 1;
                if shared.failed() {
                    live -= 1;
                } else {
                    start(&mut threads)?;
                }
            }
            Err(_) => {}
        }
        progress(&shared.progress());
    }
    for thread in threads {
        let _ = thread.join();
    }
    progress(&shared.progress());
    match shared.fatal.lock().ok().and_then(|mut f| f.take()) {
        Some(e) => Err(e),
        None => Ok(crashed),
    }
}

/// One worker: ask, run, report, until the job is done or failed.
fn work(shared: &Shared, worker: u64) -> WorkerEnd {
    loop {
        if shared.failed() {
            return WorkerEnd::Finished;
        }
        let assignment = shared.coordinator().request(worker, shared.now_ms());
        let task = match assignment {
            Assignment::Done => {
                shared.wake.notify_all();
                return WorkerEnd::Finished;
            }
            Assignment::Wait => {
                // Woken when a task completes; the timeout re-checks for
                // tasks whose worker went silent.
                let guard = shared.coordinator();
                let _ = shared.wake.wait_timeout(guard, Duration::from_millis(50));
                continue;
            }
            Assignment::Run(task) => task,
        };
        debug!(job = shared.spec.id, worker, ?task, "running");
        match catch_unwind(AssertUnwindSafe(|| run_task(shared, worker, task))) {
            Ok(Ok(())) => {
                shared.coordinator().complete(task);
                shared.wake.notify_all();
            }
            Ok(Err(e)) => {
                warn!(job = shared.spec.id, ?task, "task failed: {e}");
                shared.fail(e);
                return WorkerEnd::Finished;
            }
            Err(_) => {
                // As a crashed process: the coordinator is not told, and
                // hands the task out again once it times out.
                warn!(job = shared.spec.id, worker, ?task, "worker crashed");
                return WorkerEnd::Crashed;
            }
        }
    }
}

fn run_task(shared: &Shared, worker: u64, task: TaskId) -> Result<(), MapReduceError> {
    let spec = &shared.spec;
    let cx = TaskContext {
        job_id: &spec.id,
        job: spec.job.as_ref(),
        dir: &shared.dir,
        reduce_tasks: spec.reduce_tasks,
        output_prefix: &spec.output_prefix,
        counters: &shared.counters,
        cancel: &spec.cancel,
    };
    match task.kind {
        TaskKind::Map => run_map(
            &cx,
            shared.store.as_ref(),
            task.index,
            &shared.splits[task.index as usize],
            worker,
        ),
        TaskKind::Reduce => {
            let runs: Vec<PathBuf> = (0..shared.splits.len() as u32)
                .map(|map| cx.map_run_path(map, task.index))
                .collect();
            run_reduce(&cx, task.index, &runs)
        }
    }
}

/// Writes every reduce output into the store.
fn commit(shared: &Shared, crashed_workers: u64) -> Result<Report, MapReduceError> {
    let spec = &shared.spec;
    let started = Instant::now();
    let mut committed = 0u64;
    for reduce in 0..spec.reduce_tasks {
        let path = shared.dir.join(reduce_output_name(&spec.id, reduce));
        committed += commit_file(shared.store.as_ref(), &path, COMMIT_BATCH_PAIRS)?;
    }
    // Each takes the coordinator's lock: one after the other.
    let task_runs = shared.coordinator().assignments();
    Ok(Report {
        progress: shared.progress(),
        committed_pairs: committed,
        task_runs,
        crashed_workers,
        elapsed: shared.started.elapsed(),
        commit_elapsed: started.elapsed(),
    })
}
