//! MapReduce across a cluster's members: the coordinator of a job runs on
//! the member that started it (or took it over), workers run on every
//! member and pull tasks over QUIC, reduces fetch map runs from the node
//! that wrote them, and every fact a new coordinator needs is in the
//! replicated store. See "MapReduce over a cluster" in ARCHITECTURE.md.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_mapreduce::run_file::{map_run_name, reduce_output_name, RunReader};
use flotilla_mapreduce::tasks::{run_map, run_reduce};
use flotilla_mapreduce::{Coordinator, Counters, Job, Split, Store, TaskContext, TaskId, TaskKind};
use tracing::{debug, info, warn};

use super::{DbStore, StoredJob, JOB_SPEC_PREFIX, JOB_STATUS_PREFIX};
use crate::cluster::proto::{
    Chunk, JobRequest, JobView, Request, Response, WireAssignment, WireError, WireTask,
};
use crate::db::{Db, WeakDb};
use crate::error::{Error, Result};
use crate::scan::ScanRange;
use crate::ReadConsistency;

/// `node:generation` of the member coordinating a job.
const LEASE_PREFIX: &[u8] = b"\xff\xffflotilla/mr-lease/";
/// `<id>/m<index>` or `<id>/r<index>`: the node holding a completed task's output.
const TASK_PREFIX: &[u8] = b"\xff\xffflotilla/mr-task/";
/// The applied index a map's replica must reach before it reads its split.
const INPUT_INDEX_PREFIX: &[u8] = b"\xff\xffflotilla/mr-input/";
/// A committed job's report: `JobView::counters` as decimal, space-separated.
const REPORT_PREFIX: &[u8] = b"\xff\xffflotilla/mr-report/";

/// How often each member looks for jobs to work on or take over.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How often a coordinator renews its lease.
const LEASE_RENEW_EVERY: Duration = Duration::from_secs(1);
/// A lease unchanged this long (by the watcher's own clock) is taken over.
const LEASE_EXPIRY: Duration = Duration::from_secs(4);
/// Bytes per fetch request.
const FETCH_CHUNK: u64 = 1 << 20;
/// Tries of one fetch before its map counts as lost.
const FETCH_TRIES: u32 = 2;
/// Output pairs per store write at commit.
const COMMIT_BATCH_PAIRS: usize = 512;
/// Bounds on what a job may ask of every member.
const MAX_REDUCE_TASKS: u32 = 10_000;
const MAX_WORKERS: u64 = 64;
/// A worker with nothing to do asks again after this.
const IDLE_POLL: Duration = Duration::from_millis(50);

fn key(prefix: &[u8], id: &str) -> Vec<u8> {
    [prefix, id.as_bytes()].concat()
}

fn task_key(id: &str, task: TaskId) -> Vec<u8> {
    let kind = match task.kind {
        TaskKind::Map => 'm',
        TaskKind::Reduce => 'r',
    };
    [TASK_PREFIX, format!("{id}/{kind}{}", task.index).as_bytes()].concat()
}

fn to_wire(task: TaskId) -> WireTask {
    WireTask {
        reduce: task.kind == TaskKind::Reduce,
        index: task.index,
    }
}

fn from_wire(task: WireTask) -> TaskId {
    TaskId {
        kind: if task.reduce {
            TaskKind::Reduce
        } else {
            TaskKind::Map
        },
        index: task.index,
    }
}

/// `node:generation`.
fn parse_lease(value: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (node, generation) = text.split_once(':')?;
    Some((node.parse().ok()?, generation.parse().ok()?))
}

fn lease_value(node: u64, generation: u64) -> Vec<u8> {
    format!("{node}:{generation}").into_bytes()
}

fn running_line(generation: u64, stored: &StoredJob) -> String {
    format!("running g{generation} {}", stored.summary())
}

/// True if `status` says the job ended, or runs under a generation newer
/// than `generation` (a stale local read may still show an older one).
fn superseded(status: &str, generation: u64) -> bool {
    if status.starts_with("committed") || status.starts_with("failed") {
        return true;
    }
    status
        .strip_prefix("running g")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|g| g.parse::<u64>().ok())
        .is_some_and(|g| g > generation)
}

/// The job directory on this member.
fn job_dir(db: &Db, id: &str) -> PathBuf {
    db.path().join("mapreduce").join(format!("mr-{id}"))
}

/// A job id names files and keys: letters, digits and '-' only.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// One job this member coordinates.
struct Coordinating {
    id: String,
    stored: StoredJob,
    table: Mutex<Coordinator>,
    /// The node holding each completed task's output.
    owners: Mutex<BTreeMap<TaskId, u64>>,
    counters: Counters,
    started: Instant,
    /// The lease generation this coordinator holds.
    generation: u64,
    /// Set when another member took the lease, or this one could not renew
    /// it in time: stop, touch nothing.
    deposed: AtomicBool,
    /// Set by the job's handle: fail the job.
    cancel: Arc<AtomicBool>,
}

impl Coordinating {
    /// The status line while this coordinator runs the job: the generation
    /// in it makes every end a compare-and-swap only this coordinator can
    /// win.
    fn running_line(&self) -> String {
        running_line(self.generation, &self.stored)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Coordinator> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, BTreeMap<TaskId, u64>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn counters(&self, commit_ms: u64, committed: u64) -> [u64; 12] {
        let t = self.table();
        let [records_in, bytes_in, records_out, bytes_out] = self.counters.read();
        [
            t.maps_done() as u64,
            t.map_count() as u64,
            t.reduces_done() as u64,
            t.reduce_count() as u64,
            records_in,
            bytes_in,
            records_out,
            bytes_out,
            t.assignments(),
            self.started.elapsed().as_millis() as u64,
            commit_ms,
            committed,
        ]
    }
}

/// The MapReduce side of one cluster member.
pub(crate) struct ClusterJobs {
    db: WeakDb,
    node: u64,
    coordinating: Mutex<BTreeMap<String, Arc<Coordinating>>>,
    /// Jobs with live workers on this member, and how many.
    working: Mutex<BTreeMap<String, usize>>,
    /// Each job's lease as last seen, and since when unchanged.
    leases_seen: Mutex<BTreeMap<String, (Vec<u8>, Instant)>>,
}

impl ClusterJobs {
    /// Starts the member's job watcher.
    pub(crate) fn start(db: &Db, node: u64) -> Arc<ClusterJobs> {
        let jobs = Arc::new(ClusterJobs {
            db: db.downgrade(),
            node,
            coordinating: Mutex::new(BTreeMap::new()),
            working: Mutex::new(BTreeMap::new()),
            leases_seen: Mutex::new(BTreeMap::new()),
        });
        let watcher = jobs.clone();
        let spawned = std::thread::Builder::new()
            .name("flotilla-mr-watch".into())
            .spawn(move || watcher.watch());
        if let Err(e) = spawned {
            warn!("cannot start the MapReduce job watcher: {e}");
        }
        jobs
    }

    fn coordinating(&self, id: &str) -> Option<Arc<Coordinating>> {
        self.coordinating
            .lock()
            .ok()
            .and_then(|c| c.get(id).cloned())
    }

    // ---- requests from clients and members -------------------------------

    /// Serves a MapReduce request; `None` if `request` is not one.
    pub(crate) async fn serve(self: &Arc<Self>, request: Request) -> Option<Response> {
        let jobs = self.clone();
        // Work that blocks on the store runs on a thread of its own: the
        // blocking API may not be called from any thread of the runtime,
        // its blocking pool included.
        let blocking = move |f: Box<dyn FnOnce(&ClusterJobs) -> Response + Send>| async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let spawned = std::thread::Builder::new()
                .name("flotilla-mr-request".into())
                .spawn(move || {
                    let _ = tx.send(f(&jobs));
                });
            match spawned {
                Ok(_) => rx.await.unwrap_or_else(|_| {
                    Response::MrAck(Err(WireError::Other("a MapReduce request panicked".into())))
                }),
                Err(e) => Response::MrAck(Err(WireError::Overloaded(format!(
                    "cannot start a thread: {e}"
                )))),
            }
        };
        Some(match request {
            Request::MrStart(job) => {
                blocking(Box::new(move |jobs| {
                    Response::MrStarted(jobs.start_job(job).map_err(WireError::from))
                }))
                .await
            }
            Request::MrView { id } => {
                blocking(Box::new(move |jobs| Response::MrView(Ok(jobs.view(&id))))).await
            }
            Request::MrPull { id, node, worker } => {
                Response::MrTask(self.pull(&id, node, worker).map_err(WireError::from))
            }
            Request::MrDone {
                id,
                task,
                node,
                lost_maps,
                counters,
            } => {
                blocking(Box::new(move |jobs| {
                    Response::MrAck(
                        jobs.done(&id, from_wire(task), node, &lost_maps, counters)
                            .map_err(WireError::from),
                    )
                }))
                .await
            }
            Request::MrFetch {
                id,
                map,
                reduce,
                offset,
            } => {
                blocking(Box::new(move |jobs| {
                    Response::MrChunk(jobs.read_chunk(&id, map, reduce, offset))
                }))
                .await
            }
            _ => return None,
        })
    }

    fn db(&self) -> Result<Db> {
        self.db.upgrade().ok_or(Error::Closed)
    }

    /// Starts a job with this member as its coordinator.
    pub(crate) fn start_job(&self, request: JobRequest) -> Result<String> {
        let db = self.db()?;
        let id = request.id.clone();
        if !valid_id(&id) {
            return Err(Error::InvalidArgument(format!(
                "job id {id:?}: use letters, digits and '-'"
            )));
        }
        let status_key = key(JOB_STATUS_PREFIX, &id);
        if db.get(&status_key)?.is_some() {
            return Ok(id); // a retried start
        }
        if request.reduce_tasks == 0
            || request.workers == 0
            || request.task_timeout_ms == 0
            || request.split_bytes == 0
        {
            return Err(Error::InvalidArgument(
                "a job needs at least one reduce task and one worker, and a task timeout and split size above zero".into(),
            ));
        }
        if request.reduce_tasks > MAX_REDUCE_TASKS || request.workers > MAX_WORKERS {
            return Err(Error::InvalidArgument(format!(
                "at most {MAX_REDUCE_TASKS} reduce tasks and {MAX_WORKERS} workers per member"
            )));
        }
        if request.output.is_empty() {
            return Err(Error::InvalidArgument(
                "an empty output prefix would overwrite the whole store".into(),
            ));
        }
        let factory = db.job_factory(&request.job).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "no job named {:?} (known: {})",
                request.job,
                db.job_names().join(", ")
            ))
        })?;
        factory(&request.arg).map_err(Error::InvalidArgument)?;
        let store = DbStore(db.clone());
        if !store
            .is_prefix_empty(&request.output)
            .map_err(Error::Storage)?
        {
            if !request.replace {
                return Err(Error::InvalidArgument(format!(
                    "the output prefix {:?} is not empty; pass replace to overwrite it",
                    String::from_utf8_lossy(&request.output)
                )));
            }
            store
                .delete_prefix(&request.output)
                .map_err(Error::Storage)?;
        }
        // A linearizable read first: this member's applied index then
        // covers every write acknowledged before the job started, and every
        // map waits for its own replica to reach it.
        db.get_with(&status_key, ReadConsistency::Linearizable)?;
        let input_index = db.applied_index()?;
        let splits = store
            .splits(
                &request.input_start,
                &request.input_end,
                request.split_bytes,
            )
            .map_err(Error::Storage)?;
        let stored = StoredJob::new(request, splits);
        // Claiming the id first: of two starts of one id (a client's retry
        // reaching another member), one goes on and the other answers Ok.
        let starting = format!("starting {}", stored.summary());
        if !db
            .compare_and_swap(&status_key, None, Some(starting.as_bytes()))?
            .swapped
        {
            return Ok(id);
        }
        db.put(key(JOB_SPEC_PREFIX, &id), stored.encode()?)?;
        db.put(key(INPUT_INDEX_PREFIX, &id), input_index.to_string())?;
        db.put(key(LEASE_PREFIX, &id), lease_value(self.node, 1))?;
        // Registered before the job shows as running, so this member's
        // watcher never takes a lease its own coordinator holds.
        let job = self.register(id.clone(), stored, 1, BTreeMap::new());
        let running = job.running_line();
        if !db
            .compare_and_swap(
                &status_key,
                Some(starting.as_bytes()),
                Some(running.as_bytes()),
            )?
            .swapped
        {
            self.unregister(&job);
            return Err(Error::Storage(format!(
                "job {id}'s status changed while it started"
            )));
        }
        info!(job = id, input_index, "coordinating a new job");
        self.launch(&db, &job);
        Ok(id)
    }

    /// Registers a coordinator for `id` whose table holds `completed`;
    /// [`launch`](Self::launch) starts its threads.
    fn register(
        &self,
        id: String,
        stored: StoredJob,
        generation: u64,
        completed: BTreeMap<TaskId, u64>,
    ) -> Arc<Coordinating> {
        let maps = stored.splits.len() as u32;
        // The table is whole before any worker can ask it for a task.
        let mut table = Coordinator::new(maps, stored.reduce_tasks, stored.task_timeout_ms);
        for task in completed.keys() {
            table.complete(*task);
        }
        let job = Arc::new(Coordinating {
            table: Mutex::new(table),
            id: id.clone(),
            stored,
            owners: Mutex::new(completed),
            counters: Counters::default(),
            started: Instant::now(),
            generation,
            deposed: AtomicBool::new(false),
            cancel: Arc::default(),
        });
        if let Ok(mut all) = self.coordinating.lock() {
            all.insert(id, job.clone());
        }
        job
    }

    /// Drops `job` from this member's coordinators (if it is still the one
    /// registered under its id).
    fn unregister(&self, job: &Arc<Coordinating>) {
        job.deposed.store(true, Ordering::Relaxed);
        if let Ok(mut all) = self.coordinating.lock() {
            if all.get(&job.id).is_some_and(|j| Arc::ptr_eq(j, job)) {
                all.remove(&job.id);
            }
        }
    }

    /// Starts `job`'s lease renewal and its run to the end.
    fn launch(&self, db: &Db, job: &Arc<Coordinating>) {
        let (lease_db, lease_job, node) = (db.downgrade(), job.clone(), self.node);
        let lease = std::thread::Builder::new()
            .name(format!("flotilla-mr-lease-{}", job.id))
            .spawn(move || renew_lease(&lease_db, &lease_job, node));
        let (run_db, run_job) = (db.downgrade(), job.clone());
        let run = std::thread::Builder::new()
            .name(format!("flotilla-mr-coord-{}", job.id))
            .spawn(move || {
                if let Some(db) = run_db.upgrade() {
                    finish(&db, &run_job);
                }
            });
        if let Err(e) = lease.and(run) {
            // Without its threads the job would stall: leave it to be taken
            // over (by this member's own watcher, too).
            warn!(job = job.id, "cannot start the coordinator's threads: {e}");
            self.unregister(job);
        }
    }

    /// The handle's cancel flag of a job this member coordinates.
    pub(crate) fn cancel_flag(&self, id: &str) -> Option<Arc<AtomicBool>> {
        self.coordinating(id).map(|c| c.cancel.clone())
    }

    /// A job's status line and counters: live from its coordinator here,
    /// from the stored report once committed, or none.
    pub(crate) fn view(&self, id: &str) -> JobView {
        let Ok(db) = self.db() else {
            return JobView::default();
        };
        let stale = |prefix: &[u8]| {
            db.get_with(key(prefix, id), ReadConsistency::Stale)
                .ok()
                .flatten()
        };
        let status = stale(JOB_STATUS_PREFIX)
            .map(|s| String::from_utf8_lossy(&s).into_owned())
            .unwrap_or_default();
        let coordinator = stale(LEASE_PREFIX)
            .and_then(|l| parse_lease(&l))
            .map_or(0, |(node, _)| node);
        let counters = match self.coordinating(id) {
            Some(job) if status.starts_with("running") => Some(job.counters(0, 0)),
            _ => stale(REPORT_PREFIX).and_then(|r| parse_report(&r)),
        };
        JobView {
            status,
            coordinator,
            counters,
        }
    }

    /// A task for worker `worker` of node `node`.
    fn pull(&self, id: &str, node: u64, worker: u64) -> Result<WireAssignment> {
        let job = self.coordinating(id).ok_or_else(|| {
            Error::Unavailable(format!("node {} does not coordinate job {id}", self.node))
        })?;
        if job.deposed.load(Ordering::Relaxed) {
            return Err(Error::Unavailable(format!(
                "job {id} has a new coordinator"
            )));
        }
        // Every member holds a replica of every shard today, so every map
        // is local to every worker; with sharding, `is_local` asks whether
        // `node` hosts the split's shard.
        let is_local = |_task: TaskId| node != 0;
        let now = job.now_ms();
        let assignment = job.table().request_preferring(
            node.saturating_mul(1_000).saturating_add(worker),
            now,
            &is_local,
        );
        Ok(match assignment {
            flotilla_mapreduce::Assignment::Run(task) => {
                let owners = job.owners();
                let sources = (0..job.stored.splits.len() as u32)
                    .map(|m| {
                        owners
                            .get(&TaskId {
                                kind: TaskKind::Map,
                                index: m,
                            })
                            .copied()
                            .unwrap_or(0)
                    })
                    .collect();
                debug!(job = id, node, worker, ?task, "assigned");
                WireAssignment::Run {
                    task: to_wire(task),
                    sources,
                }
            }
            flotilla_mapreduce::Assignment::Wait => WireAssignment::Wait,
            flotilla_mapreduce::Assignment::Done => WireAssignment::Done,
        })
    }

    /// A worker's report: a completed task is recorded in the store before
    /// it counts; lost maps are forgotten and run again.
    fn done(
        &self,
        id: &str,
        task: TaskId,
        node: u64,
        lost_maps: &[(u32, u64)],
        counters: [u64; 4],
    ) -> Result<()> {
        let db = self.db()?;
        let job = self.coordinating(id).ok_or_else(|| {
            Error::Unavailable(format!("node {} does not coordinate job {id}", self.node))
        })?;
        let c = &job.counters;
        Counters::add(&c.records_in, counters[0]);
        Counters::add(&c.bytes_in, counters[1]);
        Counters::add(&c.records_out, counters[2]);
        Counters::add(&c.bytes_out, counters[3]);
        if !lost_maps.is_empty() {
            for &(map, from) in lost_maps {
                let lost = TaskId {
                    kind: TaskKind::Map,
                    index: map,
                };
                // A reduce handed out before the map was redone elsewhere
                // reports the old node: the new output is not lost.
                if job.owners().get(&lost) != Some(&from) {
                    continue;
                }
                warn!(
                    job = id,
                    map,
                    node = from,
                    "map output lost; running the map again"
                );
                db.delete(task_key(id, lost))?;
                job.owners().remove(&lost);
                job.table().lose(lost);
            }
            job.table().reset(task);
            return Ok(());
        }
        if job.table().is_completed(task) {
            return Ok(()); // a late finisher of a re-issued task
        }
        db.put(task_key(id, task), node.to_string())?;
        job.owners().insert(task, node);
        job.table().complete(task);
        Ok(())
    }

    /// Part of a job file on this member.
    fn read_chunk(
        &self,
        id: &str,
        map: Option<u32>,
        reduce: u32,
        offset: u64,
    ) -> std::result::Result<Chunk, WireError> {
        if !valid_id(id) {
            return Err(WireError::InvalidArgument(format!("job id {id:?}")));
        }
        let db = self.db().map_err(WireError::from)?;
        let name = match map {
            Some(map) => map_run_name(id, map, reduce),
            None => reduce_output_name(id, reduce),
        };
        let path = job_dir(&db, id).join(name);
        let read = || -> std::io::Result<Chunk> {
            let mut file = std::fs::File::open(&path)?;
            let len = file.metadata()?.len();
            file.seek(SeekFrom::Start(offset.min(len)))?;
            let mut bytes = Vec::new();
            file.take(FETCH_CHUNK).read_to_end(&mut bytes)?;
            Ok(Chunk {
                eof: offset + bytes.len() as u64 >= len,
                bytes,
            })
        };
        read().map_err(|e| WireError::Storage(format!("{}: {e}", path.display())))
    }

    // ---- the watcher ------------------------------------------------------

    fn watch(self: Arc<Self>) {
        loop {
            std::thread::sleep(WATCH_EVERY);
            let Some(db) = self.db.upgrade() else {
                return;
            };
            if db.is_closed() {
                return;
            }
            if let Err(e) = self.watch_once(&db) {
                debug!("job watcher: {e}");
            }
        }
    }

    fn watch_once(self: &Arc<Self>, db: &Db) -> Result<()> {
        let range = ScanRange::prefix(JOB_STATUS_PREFIX);
        let statuses = db.block(db.asynchronous().scan_with(
            &range,
            usize::MAX,
            ReadConsistency::Stale,
        ))?;
        let mut running = BTreeSet::new();
        for (k, status) in statuses {
            let id = String::from_utf8_lossy(&k[JOB_STATUS_PREFIX.len()..]).into_owned();
            if status.starts_with(b"running") {
                running.insert(id);
            }
        }
        if let Ok(mut seen) = self.leases_seen.lock() {
            seen.retain(|id, _| running.contains(id));
        }
        for id in &running {
            // One job's trouble must not hold up the others, nor cleanup.
            if let Err(e) = self.watch_lease(db, id) {
                debug!(job = id, "lease check: {e}");
            }
            let busy = self
                .working
                .lock()
                .map(|w| w.contains_key(id))
                .unwrap_or(true);
            if !busy {
                if let Err(e) = self.start_workers(db, id) {
                    warn!(job = id, "cannot start workers: {e}");
                }
            }
        }
        // Job directories of jobs no longer running (and with no workers).
        let root = db.path().join("mapreduce");
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(id) = name.strip_prefix("mr-") else {
                    continue;
                };
                let busy = self
                    .working
                    .lock()
                    .map(|w| w.contains_key(id))
                    .unwrap_or(true);
                if !running.contains(id) && !busy && self.coordinating(id).is_none() {
                    info!(job = id, "removing a finished job's files");
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Takes over a job whose coordinator stopped renewing its lease, or
    /// whose lease names this member but no coordinator runs here (it was
    /// restarted).
    fn watch_lease(self: &Arc<Self>, db: &Db, id: &str) -> Result<()> {
        if self.coordinating(id).is_some() {
            return Ok(());
        }
        let lease_key = key(LEASE_PREFIX, id);
        let Some(lease) = db.get_with(&lease_key, ReadConsistency::Stale)? else {
            return Ok(());
        };
        let Some((holder, generation)) = parse_lease(&lease) else {
            return Ok(());
        };
        let expired = {
            let mut seen = self
                .leases_seen
                .lock()
                .map_err(|_| Error::Storage("lease table poisoned".into()))?;
            let now = Instant::now();
            let entry = seen.entry(id.to_string()).or_insert((lease.clone(), now));
            if entry.0 != lease {
                *entry = (lease.clone(), now);
            }
            now.duration_since(entry.1) >= LEASE_EXPIRY
        };
        if holder != self.node && !expired {
            return Ok(());
        }
        if holder != self.node && self.still_coordinating(db, holder, id) {
            // Renewals stall while the group elects a leader; a holder that
            // still answers keeps its job.
            if let Ok(mut seen) = self.leases_seen.lock() {
                seen.insert(id.to_string(), (lease.clone(), Instant::now()));
            }
            return Ok(());
        }
        let next = generation + 1;
        let outcome = db.compare_and_swap(
            &lease_key,
            Some(&lease),
            Some(&lease_value(self.node, next)),
        )?;
        if !outcome.swapped {
            return Ok(());
        }
        info!(
            job = id,
            from = holder,
            "taking over the job's coordination"
        );
        self.resume(db, id, next)
    }

    /// True if member `holder` answers that it coordinates job `id`.
    fn still_coordinating(self: &Arc<Self>, db: &Db, holder: u64, id: &str) -> bool {
        let asked = self.ask(db, holder, Request::MrView { id: id.to_string() });
        matches!(asked, Ok(Response::MrView(Ok(view))) if view.counters.is_some() && view.coordinator == holder)
    }

    /// Rebuilds a job's coordinator from the store: its settings and the
    /// recorded completed tasks.
    fn resume(&self, db: &Db, id: &str, generation: u64) -> Result<()> {
        let record = db
            .get(key(JOB_SPEC_PREFIX, id))?
            .ok_or_else(|| Error::Storage(format!("job {id} has no stored settings")))?;
        let stored = StoredJob::decode(id, &record)?;
        let prefix = [TASK_PREFIX, format!("{id}/").as_bytes()].concat();
        let records = db.scan(&ScanRange::prefix(prefix.clone()), usize::MAX)?;
        let mut completed = BTreeMap::new();
        for (k, v) in records {
            let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let kind = match name.chars().next() {
                Some('m') => TaskKind::Map,
                Some('r') => TaskKind::Reduce,
                _ => continue,
            };
            let (Ok(index), Some(node)) = (
                name[1..].parse::<u32>(),
                std::str::from_utf8(&v).ok().and_then(|n| n.parse().ok()),
            ) else {
                continue;
            };
            completed.insert(TaskId { kind, index }, node);
        }
        let status_key = key(JOB_STATUS_PREFIX, id);
        let Some(status) = db.get(&status_key)? else {
            return Ok(());
        };
        if !status.starts_with(b"running") {
            return Ok(()); // it ended meanwhile
        }
        let job = self.register(id.to_string(), stored, generation, completed);
        let running = job.running_line();
        if !db
            .compare_and_swap(&status_key, Some(&status), Some(running.as_bytes()))?
            .swapped
        {
            self.unregister(&job);
            return Ok(());
        }
        {
            let table = job.table();
            info!(
                job = id,
                generation,
                maps_done = table.maps_done(),
                reduces_done = table.reduces_done(),
                "resumed"
            );
        }
        self.launch(db, &job);
        Ok(())
    }

    // ---- workers ----------------------------------------------------------

    fn start_workers(self: &Arc<Self>, db: &Db, id: &str) -> Result<()> {
        let record = db
            .get_with(key(JOB_SPEC_PREFIX, id), ReadConsistency::Stale)?
            .ok_or_else(|| Error::Storage(format!("job {id} has no stored settings yet")))?;
        let stored = Arc::new(StoredJob::decode(id, &record)?);
        let factory = db.job_factory(&stored.job).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "job {:?} is not registered on this node",
                stored.job
            ))
        })?;
        let job = factory(&stored.arg).map_err(Error::InvalidArgument)?;
        let input_index: u64 = db
            .get_with(key(INPUT_INDEX_PREFIX, id), ReadConsistency::Stale)?
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
            .unwrap_or(0);
        let dir = job_dir(db, id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Storage(format!("{}: {e}", dir.display())))?;
        let workers = stored.workers.max(1) as usize;
        if let Ok(mut working) = self.working.lock() {
            working.insert(id.to_string(), workers);
        }
        for n in 0..workers as u64 {
            let worker = Worker {
                jobs: self.clone(),
                id: id.to_string(),
                n,
                stored: stored.clone(),
                job: job.clone(),
                input_index,
                dir: dir.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("flotilla-mr-{id}-w{n}"))
                .spawn(move || worker.run());
            if let Err(e) = spawned {
                warn!("cannot start a worker thread: {e}");
                self.worker_exited(id);
            }
        }
        Ok(())
    }

    fn worker_exited(&self, id: &str) {
        if let Ok(mut working) = self.working.lock() {
            if let Some(n) = working.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    working.remove(id);
                }
            }
        }
    }

    /// Sends `request` to member `to` (or serves it here if `to` is this
    /// member).
    fn ask(self: &Arc<Self>, db: &Db, to: u64, request: Request) -> Result<Response> {
        if to == self.node {
            let jobs = self.clone();
            return db.block(async move {
                jobs.serve(request)
                    .await
                    .ok_or_else(|| Error::InvalidArgument("not a MapReduce request".into()))
            });
        }
        let member = db
            .member()
            .ok_or_else(|| Error::InvalidArgument("not a cluster member".into()))?
            .clone();
        db.block(async move { member.ask(to, &request).await })
    }
}

/// Renews `job`'s lease every second until the job ends here; a failed
/// renewal (someone took the lease) deposes this coordinator.
fn renew_lease(db: &WeakDb, job: &Coordinating, node: u64) {
    let lease_key = key(LEASE_PREFIX, &job.id);
    let mut generation = job.generation;
    let mut renewed = Instant::now();
    loop {
        std::thread::sleep(LEASE_RENEW_EVERY);
        if job.deposed.load(Ordering::Relaxed) {
            return;
        }
        let Some(db) = db.upgrade() else {
            return;
        };
        let current = lease_value(node, generation);
        let next = lease_value(node, generation + 1);
        match db.compare_and_swap(&lease_key, Some(&current), Some(&next)) {
            Ok(outcome) if outcome.swapped => {
                generation += 1;
                renewed = Instant::now();
            }
            Ok(outcome) => {
                if outcome.current.is_some() {
                    warn!(job = job.id, "another member took the job over");
                }
                job.deposed.store(true, Ordering::Relaxed);
                return;
            }
            // Not sure it was written: the next try compares again. But a
            // coordinator that cannot renew in time steps down, as others
            // may take the job over from then on.
            Err(e) => {
                debug!(job = job.id, "lease renewal: {e}");
                if renewed.elapsed() >= LEASE_EXPIRY {
                    warn!(job = job.id, "cannot renew the lease; stepping down");
                    job.deposed.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

/// Waits for every task, then commits; or fails the job when cancelled.
fn finish(db: &Db, job: &Arc<Coordinating>) {
    let status_key = key(JOB_STATUS_PREFIX, &job.id);
    let summary = job.stored.summary();
    let outcome = loop {
        if job.deposed.load(Ordering::Relaxed) || db.is_closed() {
            forget(db, job);
            return;
        }
        let status = db
            .get_with(&status_key, ReadConsistency::Stale)
            .ok()
            .flatten()
            .map(|s| String::from_utf8_lossy(&s).into_owned())
            .unwrap_or_default();
        if superseded(&status, job.generation) {
            info!(
                job = job.id,
                status, "the job moved on without this coordinator"
            );
            forget(db, job);
            return;
        }
        if job.cancel.load(Ordering::Relaxed) {
            break Err(Error::Cancelled);
        }
        if !job.table().is_done() {
            std::thread::sleep(IDLE_POLL);
            continue;
        }
        match commit(db, job) {
            Ok(Some(report)) => break Ok(report),
            Ok(None) => continue, // a reduce output was lost: it runs again
            // No leader for a moment, say: the commit is repeated whole
            // (the same pairs again change nothing).
            Err(e) if e.is_retryable() => {
                warn!(job = job.id, "commit interrupted, trying again: {e}");
                std::thread::sleep(WATCH_EVERY);
            }
            Err(e) => break Err(e),
        }
    };
    let running = job.running_line();
    let (status, report) = match &outcome {
        Ok(counters) => (
            format!(
                "committed {summary} pairs {} in {:.1}s",
                counters[11],
                counters[9] as f64 / 1e3
            ),
            Some(counters),
        ),
        Err(e) => (format!("failed {summary}: {e}"), None),
    };
    if let Some(counters) = report {
        let text = counters
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        if let Err(e) = db.put(key(REPORT_PREFIX, &job.id), text) {
            warn!(job = job.id, "cannot store the report: {e}");
        }
    }
    if job.deposed.load(Ordering::Relaxed) {
        forget(db, job);
        return;
    }
    match db.compare_and_swap(
        &status_key,
        Some(running.as_bytes()),
        Some(status.as_bytes()),
    ) {
        Ok(swap) if swap.swapped => {
            if outcome.is_err() {
                if let Err(e) = DbStore(db.clone()).delete_prefix(&job.stored.output) {
                    warn!(job = job.id, "cannot clear a failed job's output: {e}");
                }
            }
            info!(job = job.id, status, "job ended");
        }
        Ok(_) => warn!(
            job = job.id,
            "the job's status changed under its coordinator"
        ),
        Err(e) => warn!(job = job.id, "cannot record the job's end: {e}"),
    }
    forget(db, job);
}

/// This member no longer coordinates `job`.
fn forget(db: &Db, job: &Arc<Coordinating>) {
    match db.cluster_jobs() {
        Some(jobs) => jobs.unregister(job),
        None => job.deposed.store(true, Ordering::Relaxed),
    }
}

/// Progress from `JobView::counters`.
pub(crate) fn progress_of(c: [u64; 12]) -> flotilla_mapreduce::Progress {
    flotilla_mapreduce::Progress {
        maps_done: c[0],
        maps_total: c[1],
        reduces_done: c[2],
        reduces_total: c[3],
        records_in: c[4],
        bytes_in: c[5],
        records_out: c[6],
        bytes_out: c[7],
    }
}

/// Writes every reduce output into the store; `None` if one could not be
/// fetched (that reduce is idle again).
fn commit(db: &Db, job: &Arc<Coordinating>) -> Result<Option<[u64; 12]>> {
    let started = Instant::now();
    let jobs = db
        .cluster_jobs()
        .ok_or_else(|| Error::InvalidArgument("not a cluster member".into()))?;
    let dir = job_dir(db, &job.id);
    std::fs::create_dir_all(&dir).map_err(|e| Error::Storage(format!("{}: {e}", dir.display())))?;
    let mut committed = 0u64;
    for reduce in 0..job.stored.reduce_tasks {
        let task = TaskId {
            kind: TaskKind::Reduce,
            index: reduce,
        };
        let owner = job.owners().get(&task).copied().unwrap_or(0);
        let path = match obtain(&jobs, db, &job.id, owner, None, reduce, &dir, "commit") {
            Ok(path) => path,
            Err(e) => {
                warn!(
                    job = job.id,
                    reduce, owner, "reduce output lost ({e}); running it again"
                );
                db.delete(task_key(&job.id, task))?;
                job.owners().remove(&task);
                job.table().lose(task);
                return Ok(None);
            }
        };
        // Written here rather than through the `Store` adapter, whose
        // errors are strings: a retryable one must stay retryable.
        let damaged = |e: flotilla_mapreduce::MapReduceError| Error::Storage(e.to_string());
        let mut reader = RunReader::open(&path).map_err(damaged)?;
        let mut batch = Vec::with_capacity(COMMIT_BATCH_PAIRS);
        while let Some(pair) = reader.next_record().map_err(damaged)? {
            batch.push(pair);
            if batch.len() == COMMIT_BATCH_PAIRS {
                committed += batch.len() as u64;
                db.put_all(std::mem::take(&mut batch))?;
            }
        }
        committed += batch.len() as u64;
        db.put_all(batch)?;
        if owner != jobs.node {
            let _ = std::fs::remove_file(&path); // a fetched copy
        }
    }
    Ok(Some(
        job.counters(started.elapsed().as_millis() as u64, committed),
    ))
}

fn parse_report(text: &[u8]) -> Option<[u64; 12]> {
    let numbers: Vec<u64> = std::str::from_utf8(text)
        .ok()?
        .split(' ')
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    numbers.try_into().ok()
}

/// The path of a job file on this member: its own, or fetched from
/// `owner` into the job directory.
/// `fetcher` names the copy, so two fetchers on one node never share one.
#[allow(clippy::too_many_arguments)]
fn obtain(
    jobs: &Arc<ClusterJobs>,
    db: &Db,
    id: &str,
    owner: u64,
    map: Option<u32>,
    reduce: u32,
    dir: &Path,
    fetcher: &str,
) -> Result<PathBuf> {
    let name = match map {
        Some(map) => map_run_name(id, map, reduce),
        None => reduce_output_name(id, reduce),
    };
    let own = dir.join(&name);
    if owner == jobs.node {
        return if own.is_file() {
            Ok(own)
        } else {
            Err(Error::Storage(format!("{} is gone", own.display())))
        };
    }
    if owner == 0 {
        return Err(Error::Storage(format!("no node holds {name}")));
    }
    let fetched = dir.join(format!("fetched-{fetcher}-{name}"));
    let partial = dir.join(format!("fetched-{fetcher}-{name}.partial"));
    let mut last = Error::Unavailable(String::new());
    for attempt in 0..FETCH_TRIES {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        match fetch(jobs, db, owner, id, map, reduce, &partial) {
            Ok(()) => {
                std::fs::rename(&partial, &fetched)
                    .map_err(|e| Error::Storage(format!("{}: {e}", fetched.display())))?;
                return Ok(fetched);
            }
            Err(e) => last = e,
        }
    }
    let _ = std::fs::remove_file(&partial);
    Err(last)
}

/// Copies a job file from member `owner` into `into`, chunk by chunk.
fn fetch(
    jobs: &Arc<ClusterJobs>,
    db: &Db,
    owner: u64,
    id: &str,
    map: Option<u32>,
    reduce: u32,
    into: &Path,
) -> Result<()> {
    let mut file = std::fs::File::create(into)
        .map_err(|e| Error::Storage(format!("{}: {e}", into.display())))?;
    let mut offset = 0u64;
    loop {
        let response = jobs.ask(
            db,
            owner,
            Request::MrFetch {
                id: id.to_string(),
                map,
                reduce,
                offset,
            },
        )?;
        let chunk = match response {
            Response::MrChunk(chunk) => chunk.map_err(Error::from)?,
            other => return Err(Error::Unavailable(format!("unexpected response {other:?}"))),
        };
        file.write_all(&chunk.bytes)
            .map_err(|e| Error::Storage(format!("{}: {e}", into.display())))?;
        offset += chunk.bytes.len() as u64;
        if chunk.eof {
            // The run's own footer and CRC are checked when it is read.
            return file
                .sync_all()
                .map_err(|e| Error::Storage(format!("{}: {e}", into.display())));
        }
    }
}

/// One worker thread of one job on this member.
struct Worker {
    jobs: Arc<ClusterJobs>,
    id: String,
    n: u64,
    stored: Arc<StoredJob>,
    job: Arc<dyn Job>,
    input_index: u64,
    dir: PathBuf,
}

impl Worker {
    fn run(self) {
        debug!(job = self.id, worker = self.n, "worker started");
        loop {
            let Some(db) = self.jobs.db.upgrade() else {
                break;
            };
            match self.step(&db) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    debug!(job = self.id, worker = self.n, "worker: {e}");
                    if db.is_closed() {
                        break;
                    }
                    std::thread::sleep(WATCH_EVERY);
                }
            }
        }
        self.jobs.worker_exited(&self.id);
    }

    /// One ask-and-run; false once the job is no longer running.
    fn step(&self, db: &Db) -> Result<bool> {
        let status = db.get_with(key(JOB_STATUS_PREFIX, &self.id), ReadConsistency::Stale)?;
        if !status.is_some_and(|s| s.starts_with(b"running")) {
            return Ok(false);
        }
        let coordinator = db
            .get_with(key(LEASE_PREFIX, &self.id), ReadConsistency::Stale)?
            .and_then(|l| parse_lease(&l))
            .map_or(0, |(node, _)| node);
        let node = self.jobs.node;
        let response = self.jobs.ask(
            db,
            coordinator,
            Request::MrPull {
                id: self.id.clone(),
                node,
                worker: self.n,
            },
        )?;
        let (task, sources) = match response {
            Response::MrTask(Ok(WireAssignment::Run { task, sources })) => {
                (from_wire(task), sources)
            }
            Response::MrTask(Ok(WireAssignment::Wait | WireAssignment::Done)) => {
                std::thread::sleep(IDLE_POLL);
                return Ok(true);
            }
            Response::MrTask(Err(e)) => return Err(e.into()),
            other => return Err(Error::Unavailable(format!("unexpected response {other:?}"))),
        };
        let counters = Counters::default();
        let cancel = AtomicBool::new(false);
        let cx = TaskContext {
            job_id: &self.id,
            job: self.job.as_ref(),
            dir: &self.dir,
            reduce_tasks: self.stored.reduce_tasks,
            output_prefix: &self.stored.output,
            counters: &counters,
            cancel: &cancel,
        };
        let ran = catch_unwind(AssertUnwindSafe(|| self.run_task(db, &cx, task, &sources)));
        let lost_maps = match ran {
            Ok(Ok(lost)) => lost,
            Ok(Err(e)) => {
                // The coordinator hands the task out again after its timeout.
                warn!(job = self.id, ?task, "task failed: {e}");
                return Ok(true);
            }
            Err(_) => {
                warn!(job = self.id, ?task, "the job's code panicked");
                return Ok(true);
            }
        };
        let response = self.jobs.ask(
            db,
            coordinator,
            Request::MrDone {
                id: self.id.clone(),
                task: to_wire(task),
                node,
                lost_maps,
                counters: counters.read(),
            },
        )?;
        match response {
            Response::MrAck(result) => result.map_err(Error::from)?,
            other => return Err(Error::Unavailable(format!("unexpected response {other:?}"))),
        }
        Ok(true)
    }

    /// Runs `task`; for a reduce, returns the maps whose runs could not be
    /// fetched, with the node tried (the reduce then did not run).
    fn run_task(
        &self,
        db: &Db,
        cx: &TaskContext,
        task: TaskId,
        sources: &[u64],
    ) -> Result<Vec<(u32, u64)>> {
        let failed = |e: flotilla_mapreduce::MapReduceError| Error::Storage(e.to_string());
        match task.kind {
            TaskKind::Map => {
                let split: Split = self
                    .stored
                    .splits
                    .get(task.index as usize)
                    .ok_or_else(|| Error::Storage(format!("no split {}", task.index)))?
                    .into();
                db.wait_applied(
                    self.input_index,
                    Duration::from_millis(self.stored.task_timeout_ms),
                )?;
                let attempt = self.jobs.node * 1_000 + self.n;
                run_map(cx, &DbStore(db.clone()), task.index, &split, attempt).map_err(failed)?;
                Ok(Vec::new())
            }
            TaskKind::Reduce => {
                let mut runs = Vec::new();
                let mut lost = Vec::new();
                // A node that could not be reached for one run is not
                // tried again for the others: each try costs a connect
                // timeout, and the coordinator needs to hear soon.
                let mut unreachable = BTreeSet::new();
                let fetcher = format!("w{}", self.n);
                for (map, &owner) in sources.iter().enumerate() {
                    let map = map as u32;
                    if unreachable.contains(&owner) {
                        lost.push((map, owner));
                        continue;
                    }
                    match obtain(
                        &self.jobs,
                        db,
                        &self.id,
                        owner,
                        Some(map),
                        task.index,
                        &self.dir,
                        &fetcher,
                    ) {
                        Ok(path) => runs.push(path),
                        Err(e) => {
                            warn!(job = self.id, map, owner, "cannot fetch a map's run: {e}");
                            if matches!(e, Error::Unavailable(_) | Error::Timeout(_)) {
                                unreachable.insert(owner);
                            }
                            lost.push((map, owner));
                        }
                    }
                }
                if lost.is_empty() {
                    match run_reduce(cx, task.index, &runs) {
                        Ok(()) => {}
                        // A damaged run is as good as lost: its map runs again.
                        Err(flotilla_mapreduce::MapReduceError::DamagedRun { path, detail }) => {
                            let map = runs.iter().position(|p| *p == path).ok_or_else(|| {
                                Error::Storage(format!("{} is damaged: {detail}", path.display()))
                            })?;
                            warn!(job = self.id, map, "a map's run is damaged: {detail}");
                            lost.push((map as u32, sources[map]));
                        }
                        Err(e) => return Err(failed(e)),
                    }
                }
                for path in runs.iter().filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("fetched-"))
                }) {
                    let _ = std::fs::remove_file(path);
                }
                Ok(lost)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coordinator_is_superseded_by_an_end_or_a_newer_generation_only() {
        assert!(superseded("committed job wc ...", 3));
        assert!(superseded("failed job wc ...: cancelled", 3));
        assert!(superseded("running g4 job wc ...", 3));
        // Its own line, an older one a lagging replica still shows, and
        // the start before any generation: not superseded.
        assert!(!superseded("running g3 job wc ...", 3));
        assert!(!superseded("running g2 job wc ...", 3));
        assert!(!superseded("starting job wc ...", 3));
        assert!(!superseded("", 3));
    }

    #[test]
    fn leases_read_back_and_junk_is_no_lease() {
        assert_eq!(parse_lease(&lease_value(2, 17)), Some((2, 17)));
        assert_eq!(parse_lease(b"2"), None);
        assert_eq!(parse_lease(b"x:1"), None);
        assert_eq!(parse_lease(b"\xff:1"), None);
    }

    #[test]
    fn job_ids_that_could_leave_the_job_directory_are_refused() {
        assert!(valid_id("wc-1795675765047-25401"));
        assert!(!valid_id(""));
        assert!(!valid_id("../etc"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"x".repeat(129)));
    }
}
