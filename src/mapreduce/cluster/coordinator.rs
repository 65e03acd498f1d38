//! The coordinating side of a cluster job: starting and resuming it, the
//! task table behind `MrPull`/`MrDone`, the lease, and the commit.

use super::worker::obtain;
use super::*;

/// The status line of a job run under lease `generation`.
pub(super) fn running_line(generation: u64, stored: &StoredJob) -> String {
    format!("running g{generation} {}", stored.summary())
}

/// True if `status` says the job ended, or runs under a generation newer
/// than `generation` (a stale local read may still show an older one).
pub(super) fn superseded(status: &str, generation: u64) -> bool {
    if status.starts_with("committed") || status.starts_with("failed") {
        return true;
    }
    status
        .strip_prefix("running g")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|g| g.parse::<u64>().ok())
        .is_some_and(|g| g > generation)
}

/// One job this member coordinates.
pub(super) struct Coordinating {
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
    pub(super) fn running_line(&self) -> String {
        running_line(self.generation, &self.stored)
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(super) fn table(&self) -> std::sync::MutexGuard<'_, Coordinator> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn owners(&self) -> std::sync::MutexGuard<'_, BTreeMap<TaskId, u64>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets that `task` completed (its output is gone): its record, its
    /// owner, and its place in the table, so it runs again.
    pub(super) fn lose(&self, db: &Db, task: TaskId) -> Result<()> {
        db.delete(task_key(&self.id, task))?;
        self.owners().remove(&task);
        self.table().lose(task);
        Ok(())
    }

    pub(super) fn counters(&self, commit_ms: u64, committed: u64) -> [u64; 12] {
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

impl ClusterJobs {
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
        db.build_job(&request.job, &request.arg)?;
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
    pub(super) fn register(
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
    pub(super) fn unregister(&self, job: &Arc<Coordinating>) {
        job.deposed.store(true, Ordering::Relaxed);
        if let Ok(mut all) = self.coordinating.lock() {
            if all.get(&job.id).is_some_and(|j| Arc::ptr_eq(j, job)) {
                all.remove(&job.id);
            }
        }
    }

    /// Starts `job`'s lease renewal and its run to the end.
    pub(super) fn launch(&self, db: &Db, job: &Arc<Coordinating>) {
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

    /// A task for worker `worker` of node `node`.
    pub(super) fn pull(&self, id: &str, node: u64, worker: u64) -> Result<WireAssignment> {
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
        let assignment = job
            .table()
            .request_preferring(worker_id(node, worker), now, &is_local);
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
    pub(super) fn done(
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
                job.lose(&db, lost)?;
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

    /// Rebuilds a job's coordinator from the store: its settings and the
    /// recorded completed tasks.
    pub(super) fn resume(&self, db: &Db, id: &str, generation: u64) -> Result<()> {
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
}

/// Renews `job`'s lease every second until the job ends here; a failed
/// renewal (someone took the lease) deposes this coordinator.
pub(super) fn renew_lease(db: &WeakDb, job: &Coordinating, node: u64) {
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
pub(super) fn finish(db: &Db, job: &Arc<Coordinating>) {
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
        if let Err(e) = db.put(key(REPORT_PREFIX, &job.id), report_text(counters)) {
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
pub(super) fn forget(db: &Db, job: &Arc<Coordinating>) {
    match db.cluster_jobs() {
        Some(jobs) => jobs.unregister(job),
        None => job.deposed.store(true, Ordering::Relaxed),
    }
}

/// Writes every reduce output into the store; `None` if one could not be
/// fetched (that reduce is idle again).
pub(super) fn commit(db: &Db, job: &Arc<Coordinating>) -> Result<Option<[u64; 12]>> {
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
                job.lose(db, task)?;
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

/// A report as stored under [`REPORT_PREFIX`]: the counters in decimal,
/// space-separated ([`parse_report`] reads it back).
fn report_text(counters: &[u64; 12]) -> String {
    counters
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn parse_report(text: &[u8]) -> Option<[u64; 12]> {
    let numbers: Vec<u64> = std::str::from_utf8(text)
        .ok()?
        .split(' ')
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    numbers.try_into().ok()
}
