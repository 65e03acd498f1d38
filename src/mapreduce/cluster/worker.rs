//! The working side of a cluster job on every member: worker threads that
//! pull tasks, run them and report, and the fetching and serving of job
//! files between members.

use super::*;

impl ClusterJobs {
    // ---- workers ----------------------------------------------------------

    pub(super) fn start_workers(self: &Arc<Self>, db: &Db, id: &str) -> Result<()> {
        let record = db
            .get_with(key(JOB_SPEC_PREFIX, id), ReadConsistency::Stale)?
            .ok_or_else(|| Error::Storage(format!("job {id} has no stored settings yet")))?;
        let stored = Arc::new(StoredJob::decode(id, &record)?);
        let job = db.build_job(&stored.job, &stored.arg)?;
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

    pub(super) fn worker_exited(&self, id: &str) {
        if let Ok(mut working) = self.working.lock() {
            if let Some(n) = working.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    working.remove(id);
                }
            }
        }
    }

    /// Part of a job file on this member.
    pub(super) fn read_chunk(
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
        let path = job_dir(&db, id).join(job_file_name(id, map, reduce));
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
}

/// The path of a job file on this member: its own, or fetched from
/// `owner` into the job directory.
/// `fetcher` names the copy, so two fetchers on one node never share one.
#[allow(clippy::too_many_arguments)]
pub(super) fn obtain(
    jobs: &Arc<ClusterJobs>,
    db: &Db,
    id: &str,
    owner: u64,
    map: Option<u32>,
    reduce: u32,
    dir: &Path,
    fetcher: &str,
) -> Result<PathBuf> {
    let name = job_file_name(id, map, reduce);
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
pub(super) fn fetch(
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
pub(super) struct Worker {
    jobs: Arc<ClusterJobs>,
    id: String,
    n: u64,
    stored: Arc<StoredJob>,
    job: Arc<dyn Job>,
    input_index: u64,
    dir: PathBuf,
}

impl Worker {
    pub(super) fn run(self) {
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
    pub(super) fn step(&self, db: &Db) -> Result<bool> {
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
    pub(super) fn run_task(
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
                let attempt = worker_id(self.jobs.node, self.n);
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
