//! MapReduce over a [`Db`]: the job registry, the store adapter and the
//! handle of a running job. The runner itself is `flotilla-mapreduce`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use flotilla_mapreduce::{builtin, run_local, JobSpec, Split, Store};
use flotilla_wal::keys;

use crate::cluster::proto::JobRequest;
use crate::db::{now_ms, Db};
use crate::error::{Error, Result};
use crate::scan::{shard_bounds, ScanRange};

pub(crate) mod cluster;

pub use flotilla_mapreduce::{Job, Progress, Report};

/// Builds a job from the argument given when it is run (grep's pattern;
/// ignored by jobs that take none).
pub type JobFactory = Arc<dyn Fn(&str) -> std::result::Result<Arc<dyn Job>, String> + Send + Sync>;

/// Where job status records live: reserved keys, not to be written by hand.
pub const JOB_STATUS_PREFIX: &[u8] = b"\xff\xffflotilla/mr/";

/// Where each job's settings live, for [`Db::resume_job`].
pub(crate) const JOB_SPEC_PREFIX: &[u8] = b"\xff\xffflotilla/mr-spec/";
/// Version byte of a stored job's settings.
const STORED_JOB_VERSION: u8 = 1;

/// A job's settings as stored with it.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct StoredJob {
    job: String,
    arg: String,
    #[serde(with = "serde_bytes")]
    input_start: Vec<u8>,
    #[serde(with = "serde_bytes")]
    input_end: Vec<u8>,
    #[serde(with = "serde_bytes")]
    output: Vec<u8>,
    reduce_tasks: u32,
    workers: u64,
    task_timeout_ms: u64,
    /// Chosen when the job started, so a resumed job maps the same ones.
    splits: Vec<StoredSplit>,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct StoredSplit {
    shard: u16,
    #[serde(with = "serde_bytes")]
    start: Vec<u8>,
    #[serde(with = "serde_bytes")]
    end: Vec<u8>,
}

impl JobRequest {
    /// The request that starts `spec` as job `id`.
    pub(crate) fn new(id: String, spec: &MapReduceSpec) -> Result<JobRequest> {
        let (input_start, input_end) = spec.input.bounds()?;
        Ok(JobRequest {
            id,
            job: spec.job.clone(),
            arg: spec.arg.clone(),
            input_start,
            input_end,
            output: spec.output.clone(),
            reduce_tasks: spec.reduce_tasks,
            workers: spec.workers as u64,
            task_timeout_ms: spec.task_timeout.as_millis() as u64,
            split_bytes: spec.split_bytes,
            replace: spec.replace,
        })
    }
}

impl StoredJob {
    /// The settings stored for `request`, mapping `splits`.
    pub(crate) fn new(request: JobRequest, splits: Vec<Split>) -> StoredJob {
        StoredJob {
            job: request.job,
            arg: request.arg,
            input_start: request.input_start,
            input_end: request.input_end,
            output: request.output,
            reduce_tasks: request.reduce_tasks,
            workers: request.workers,
            task_timeout_ms: request.task_timeout_ms,
            splits: splits.into_iter().map(Into::into).collect(),
        }
    }

    /// The record stored under [`JOB_SPEC_PREFIX`].
    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        let mut record = vec![STORED_JOB_VERSION];
        record.extend(
            postcard::to_stdvec(self)
                .map_err(|e| Error::InvalidArgument(format!("job settings: {e}")))?,
        );
        Ok(record)
    }

    /// Job `id`'s settings from their record.
    pub(crate) fn decode(id: &str, record: &[u8]) -> Result<StoredJob> {
        match record.split_first() {
            Some((&STORED_JOB_VERSION, body)) => postcard::from_bytes(body)
                .map_err(|e| Error::Storage(format!("job {id}'s settings: {e}"))),
            _ => Err(Error::Storage(format!(
                "job {id}'s settings: unknown version"
            ))),
        }
    }

    /// What the status line says of the job.
    pub(crate) fn summary(&self) -> String {
        format!(
            "job {} input {:?}..{:?} output {:?}",
            self.job,
            String::from_utf8_lossy(&self.input_start),
            String::from_utf8_lossy(&self.input_end),
            String::from_utf8_lossy(&self.output)
        )
    }
}

impl From<Split> for StoredSplit {
    fn from(s: Split) -> Self {
        StoredSplit {
            shard: s.shard,
            start: s.start,
            end: s.end,
        }
    }
}

impl From<&StoredSplit> for Split {
    fn from(s: &StoredSplit) -> Self {
        Split {
            shard: s.shard,
            start: s.start.clone(),
            end: s.end.clone(),
        }
    }
}

/// Jobs by name.
#[derive(Clone)]
pub(crate) struct JobRegistry(pub(crate) BTreeMap<String, JobFactory>);

impl std::fmt::Debug for JobRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl Default for JobRegistry {
    /// The built-in jobs: `wc`, `index`, `grep` (argument: the pattern) and
    /// `sort`.
    fn default() -> Self {
        let mut jobs: BTreeMap<String, JobFactory> = BTreeMap::new();
        jobs.insert("wc".into(), fixed(builtin::WordCount));
        jobs.insert("index".into(), fixed(builtin::InvertedIndex));
        jobs.insert("sort".into(), fixed(builtin::Sort));
        jobs.insert(
            "grep".into(),
            Arc::new(|pattern: &str| {
                if pattern.is_empty() {
                    return Err("grep needs a pattern (its argument)".to_string());
                }
                Ok(Arc::new(builtin::Grep::new(pattern)) as Arc<dyn Job>)
            }),
        );
        JobRegistry(jobs)
    }
}

/// A factory that always gives `job`.
pub(crate) fn fixed(job: impl Job + 'static) -> JobFactory {
    let job: Arc<dyn Job> = Arc::new(job);
    Arc::new(move |_| Ok(job.clone()))
}

/// A job to run: which one, over what, into where.
#[derive(Clone, Debug)]
pub struct MapReduceSpec {
    /// A registered job's name (`wc`, `index`, `grep`, `sort`, or one given
    /// to [`crate::DbBuilder::job`]).
    pub job: String,
    /// The job's argument (grep's pattern). Default empty.
    pub arg: String,
    /// The input keys.
    pub input: ScanRange,
    /// Output keys are this prefix followed by what reduce emits.
    pub output: Vec<u8>,
    /// Reduce tasks. Default 10.
    pub reduce_tasks: u32,
    /// Worker threads. Default 2.
    pub workers: usize,
    /// A task not done within this is given to another worker. Default 10 s.
    pub task_timeout: Duration,
    /// Clear a non-empty output prefix first instead of refusing. Default false.
    pub replace: bool,
    /// Input bytes per map task, about (a split never spans shards).
    /// Default 64 MiB.
    pub split_bytes: u64,
}

impl MapReduceSpec {
    /// Runs `job` over `input` into `output`, with the defaults above.
    pub fn new(job: impl Into<String>, input: ScanRange, output: impl Into<Vec<u8>>) -> Self {
        MapReduceSpec {
            job: job.into(),
            arg: String::new(),
            input,
            output: output.into(),
            reduce_tasks: 10,
            workers: 2,
            task_timeout: Duration::from_secs(10),
            replace: false,
            split_bytes: 64 << 20,
        }
    }
}

/// A running job: its progress, then its report.
pub struct JobHandle {
    id: String,
    progress: mpsc::Receiver<Progress>,
    latest: Progress,
    cancel: Arc<AtomicBool>,
    /// Time spent choosing the splits before the runner started.
    planning: Duration,
    thread: std::thread::JoinHandle<Result<Report>>,
}

impl JobHandle {
    fn new(
        id: String,
        progress: mpsc::Receiver<Progress>,
        cancel: Arc<AtomicBool>,
        thread: std::thread::JoinHandle<Result<Report>>,
    ) -> JobHandle {
        JobHandle {
            id,
            progress,
            latest: Progress::default(),
            cancel,
            planning: Duration::ZERO,
            thread,
        }
    }

    /// The job's id (its status record's key after [`JOB_STATUS_PREFIX`]).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The latest counters, without waiting.
    pub fn progress(&mut self) -> Progress {
        if let Some(p) = self.progress.try_iter().last() {
            self.latest = p;
        }
        self.latest
    }

    /// Waits up to `timeout` for new counters; `None` once the job ended.
    pub fn next_progress(&mut self, timeout: Duration) -> Option<Progress> {
        match self.progress.recv_timeout(timeout) {
            Ok(p) => {
                self.latest = p;
                Some(p)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Some(self.latest),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Stops the job: workers stop at their next record or task, and
    /// [`wait`](Self::wait) returns [`Error::Cancelled`] with nothing left
    /// under the output prefix. Too late once the commit has begun.
    pub fn cancel(&self) {
        self.cancel
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits for the end: the report of a committed job, or why it failed
    /// (its output prefix is then empty).
    pub fn wait(self) -> Result<Report> {
        let planning = self.planning;
        self.thread
            .join()
            .unwrap_or_else(|_| Err(Error::Storage("the job's runner panicked".into())))
            .map(|mut report| {
                // The report covers the whole job, choosing the splits too.
                report.elapsed += planning;
                report
            })
    }
}

/// The store as a job sees it: splits are slices of one shard each.
pub(crate) struct DbStore(pub(crate) Db);

impl Store for DbStore {
    fn splits(
        &self,
        start: &[u8],
        end: &[u8],
        max_bytes: u64,
    ) -> std::result::Result<Vec<Split>, String> {
        let mut splits = Vec::new();
        for shard in 0..self.0.shards().count() {
            let (from, to) = shard_bounds(shard, start, end);
            let mut split_start = start.to_vec();
            let (mut bytes, mut seen) = (0u64, false);
            self.0
                .group_data()
                .visit(&from, &to, &mut |inner, value| {
                    let Some((_, key)) = keys::parse_user_key(inner) else {
                        return true;
                    };
                    let size = (key.len() + value.len()) as u64;
                    if bytes > 0 && bytes + size > max_bytes {
                        let next = key.to_vec();
                        splits.push(Split {
                            shard,
                            start: std::mem::replace(&mut split_start, next.clone()),
                            end: next,
                        });
                        bytes = 0;
                    }
                    bytes += size;
                    seen = true;
                    true
                })
                .map_err(|e| e.to_string())?;
            if seen {
                splits.push(Split {
                    shard,
                    start: split_start,
                    end: end.to_vec(),
                });
            }
        }
        Ok(splits)
    }

    fn read_split(
        &self,
        split: &Split,
        visit: &mut dyn FnMut(&[u8], &[u8]),
    ) -> std::result::Result<(), String> {
        let (from, to) = shard_bounds(split.shard, &split.start, &split.end);
        self.0
            .group_data()
            .visit(&from, &to, &mut |inner, value| {
                if let Some((_, key)) = keys::parse_user_key(inner) {
                    visit(key, value);
                }
                true
            })
            .map_err(|e| e.to_string())
    }

    fn is_prefix_empty(&self, prefix: &[u8]) -> std::result::Result<bool, String> {
        self.0
            .scan(&ScanRange::prefix(prefix), 1)
            .map(|pairs| pairs.is_empty())
            .map_err(|e| e.to_string())
    }

    fn delete_prefix(&self, prefix: &[u8]) -> std::result::Result<(), String> {
        let (_, end) = ScanRange::prefix(prefix)
            .bounds()
            .map_err(|e| e.to_string())?;
        // Each scan starts after the last key deleted: starting over at the
        // prefix would walk every tombstone left so far.
        let mut from = prefix.to_vec();
        loop {
            let pairs = self
                .0
                .scan(&ScanRange::range(from.clone(), end.clone()), 512)
                .map_err(|e| e.to_string())?;
            let Some((last, _)) = pairs.last() else {
                return Ok(());
            };
            from = [last.as_slice(), &[0]].concat();
            // Small batches: far below any value limit a store is set to.
            let mut deletes = Vec::new();
            let mut bytes = 0;
            for (key, _) in pairs {
                bytes += key.len();
                deletes.push(flotilla_engine::kv::BatchOp::Delete { key });
                if bytes >= 16 << 10 {
                    self.0
                        .write_batch(std::mem::take(&mut deletes))
                        .map_err(|e| e.to_string())?;
                    bytes = 0;
                }
            }
            self.0.write_batch(deletes).map_err(|e| e.to_string())?;
        }
    }

    fn put_all(&self, pairs: &[(Vec<u8>, Vec<u8>)]) -> std::result::Result<(), String> {
        self.0.put_all(pairs.to_vec()).map_err(|e| e.to_string())
    }
}

impl Db {
    /// Starts `spec` on this store's worker threads. The job reads its input
    /// and writes its output under `spec.output` only when every task is
    /// done; its status record (see [`Db::jobs`]) says running, committed or
    /// failed. A job whose process died can be continued with
    /// [`Db::resume_job`]. On a cluster member this member coordinates the
    /// job and every member runs workers; if this member stops, another one
    /// takes the job over.
    pub fn mapreduce(&self, spec: MapReduceSpec) -> Result<JobHandle> {
        let id = format!(
            "{}-{}-{}",
            sanitize(&spec.job),
            now_ms(),
            std::process::id()
        );
        // Checks the input range first.
        let request = JobRequest::new(id, &spec)?;
        if spec.split_bytes == 0 {
            return Err(Error::InvalidArgument(
                "split_bytes must be above zero".into(),
            ));
        }
        if let Some(jobs) = self.cluster_jobs() {
            let id = jobs.start_job(request)?;
            return follow_cluster_job(self, jobs, id);
        }
        let planning = std::time::Instant::now();
        let splits = DbStore(self.clone())
            .splits(&request.input_start, &request.input_end, spec.split_bytes)
            .map_err(Error::Storage)?;
        let (id, replace) = (request.id.clone(), request.replace);
        let stored = StoredJob::new(request, splits);
        let mut handle = self.start_job(id, stored, replace, false)?;
        handle.planning = planning.elapsed();
        Ok(handle)
    }

    /// Continues job `id` (see [`Db::jobs`]) that was running when its
    /// process died: tasks whose output files survived are not run again.
    /// The job must be registered under the same name as before.
    pub fn resume_job(&self, id: &str) -> Result<JobHandle> {
        if self.is_cluster_member() {
            return Err(Error::InvalidArgument(
                "in a cluster, another member resumes a job by itself when its coordinator stops"
                    .into(),
            ));
        }
        let status = self
            .get([JOB_STATUS_PREFIX, id.as_bytes()].concat())?
            .ok_or_else(|| Error::InvalidArgument(format!("no job {id:?}")))?;
        if !status.starts_with(b"running") {
            return Err(Error::InvalidArgument(format!(
                "job {id} is not running: {}",
                String::from_utf8_lossy(&status)
            )));
        }
        let record = self
            .get([JOB_SPEC_PREFIX, id.as_bytes()].concat())?
            .ok_or_else(|| Error::Storage(format!("job {id} has no stored settings")))?;
        let stored = StoredJob::decode(id, &record)?;
        self.start_job(id.to_string(), stored, false, true)
    }

    fn start_job(
        &self,
        id: String,
        stored: StoredJob,
        replace: bool,
        resume: bool,
    ) -> Result<JobHandle> {
        let job = self.build_job(&stored.job, &stored.arg)?;
        let job_spec = JobSpec {
            id: id.clone(),
            job,
            input_start: stored.input_start.clone(),
            input_end: stored.input_end.clone(),
            output_prefix: stored.output.clone(),
            reduce_tasks: stored.reduce_tasks,
            workers: stored.workers as usize,
            task_timeout: Duration::from_millis(stored.task_timeout_ms),
            work_dir: self.path().join("mapreduce"),
            replace,
            resume,
            splits: Some(stored.splits.iter().map(Into::into).collect()),
            split_bytes: u64::MAX,
            cancel: Arc::new(AtomicBool::new(false)),
        };
        let cancel = job_spec.cancel.clone();
        let status_key = [JOB_STATUS_PREFIX, id.as_bytes()].concat();
        let summary = stored.summary();
        if !resume {
            self.put([JOB_SPEC_PREFIX, id.as_bytes()].concat(), stored.encode()?)?;
            self.put(&status_key, format!("running {summary}"))?;
        }
        let (tx, progress) = mpsc::channel();
        let db = self.clone();
        let thread = std::thread::Builder::new()
            .name(format!("flotilla-mr-{id}"))
            .spawn(move || {
                let store: Arc<dyn Store> = Arc::new(DbStore(db.clone()));
                let result = run_local(store, job_spec, &mut |p| {
                    let _ = tx.send(*p);
                });
                let status = match &result {
                    Ok(report) => format!(
                        "committed {summary} pairs {} in {:.1}s",
                        report.committed_pairs,
                        report.elapsed.as_secs_f64()
                    ),
                    Err(e) => format!("failed {summary}: {e}"),
                };
                db.put(&status_key, status)?;
                result.map_err(|e| match e {
                    flotilla_mapreduce::MapReduceError::Invalid(why) => Error::InvalidArgument(why),
                    flotilla_mapreduce::MapReduceError::OutputNotEmpty { .. } => {
                        Error::InvalidArgument(e.to_string())
                    }
                    flotilla_mapreduce::MapReduceError::Cancelled => Error::Cancelled,
                    other => Error::Storage(other.to_string()),
                })
            })
            .map_err(|e| Error::Storage(format!("cannot start the job's runner: {e}")))?;
        Ok(JobHandle::new(id, progress, cancel, thread))
    }

    /// Calls `visit` on every pair in `range`, shard by shard: key order
    /// within a shard, none across shards. Nothing is held in memory; each
    /// shard is read at one consistent point. Embedded stores only.
    pub fn visit_unordered(
        &self,
        range: &ScanRange,
        visit: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<()> {
        if self.is_cluster_member() {
            return Err(Error::InvalidArgument(
                "visit_unordered reads the local store; use scan on a cluster member".into(),
            ));
        }
        let (start, end) = range.bounds()?;
        let store = DbStore(self.clone());
        // Each shard's whole part as one split: no sizing pass over the data.
        for shard in 0..self.shards().count() {
            let split = Split {
                shard,
                start: start.clone(),
                end: end.clone(),
            };
            store.read_split(&split, visit).map_err(Error::Storage)?;
        }
        Ok(())
    }

    /// Every job's id and status line, oldest id first.
    pub fn jobs(&self) -> Result<Vec<(String, String)>> {
        Ok(self
            .scan(&ScanRange::prefix(JOB_STATUS_PREFIX), usize::MAX)?
            .into_iter()
            .map(|(key, value)| {
                (
                    String::from_utf8_lossy(&key[JOB_STATUS_PREFIX.len()..]).into_owned(),
                    String::from_utf8_lossy(&value).into_owned(),
                )
            })
            .collect())
    }
}

/// A handle on a cluster job this member coordinates: progress from the
/// coordinator, the report once the status record says committed.
fn follow_cluster_job(db: &Db, jobs: Arc<cluster::ClusterJobs>, id: String) -> Result<JobHandle> {
    let cancel = jobs.cancel_flag(&id).unwrap_or_default();
    let (tx, progress) = mpsc::channel();
    let weak = db.downgrade();
    let job_id = id.clone();
    let thread = std::thread::Builder::new()
        .name(format!("flotilla-mr-follow-{id}"))
        .spawn(move || loop {
            if weak.upgrade().is_none_or(|db| db.is_closed()) {
                return Err(Error::Closed);
            }
            let view = jobs.view(&job_id);
            if let Some(p) = view.progress() {
                let _ = tx.send(p);
            }
            if let Some(report) = view.report() {
                return Ok(report);
            }
            if view.status.starts_with("failed") {
                return Err(if view.status.ends_with(&Error::Cancelled.to_string()) {
                    Error::Cancelled
                } else {
                    Error::Storage(view.status)
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        })
        .map_err(|e| Error::Storage(format!("cannot follow the job: {e}")))?;
    Ok(JobHandle::new(id, progress, cancel, thread))
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}
