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

mod coordinator;
mod worker;

#[cfg(test)]
use coordinator::superseded;
use coordinator::{parse_report, Coordinating};

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

/// A worker's id across the cluster: its node and its number there.
fn worker_id(node: u64, n: u64) -> u64 {
    node.saturating_mul(1_000).saturating_add(n)
}

/// The name of a job file: map `map`'s run for reduce `reduce`, or (no
/// map) reduce `reduce`'s output.
fn job_file_name(id: &str, map: Option<u32>, reduce: u32) -> String {
    match map {
        Some(map) => map_run_name(id, map, reduce),
        None => reduce_output_name(id, reduce),
    }
}

/// The job directory on this member.
fn job_dir(db: &Db, id: &str) -> PathBuf {
    db.path().join("mapreduce").join(format!("mr-{id}"))
}

/// A job id names files and keys: letters, digits and '-' only.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
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

    /// True if workers of job `id` still run on this member (or the table
    /// cannot be read, which counts as busy).
    fn is_working(&self, id: &str) -> bool {
        self.working
            .lock()
            .map(|w| w.contains_key(id))
            .unwrap_or(true)
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
            if !self.is_working(id) {
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
                if !running.contains(id) && !self.is_working(id) && self.coordinating(id).is_none()
                {
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
        db.block(async move { member.forward(to, &request).await })
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
