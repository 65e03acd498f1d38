//! MapReduce over an embedded store, ported from the lab's MapReduce
//! suite: word count and inverted index against a reference computed
//! sequentially here, map and reduce parallelism, each map exactly once,
//! no early exit, and crashing and stalling workers.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla::mr::builtin::WordCount;
use flotilla::mr::{Emit, Values};
use flotilla::{Db, Job, MapReduceSpec, ScanRange};

// Only the corpus: `mod support` would also bring the linearizability
// checker's own test into this binary.
#[path = "support/corpus.rs"]
mod corpus;
use corpus::{corpus, reference_word_count, reference_words};

fn store_with(docs: &[(String, String)]) -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path().join("db")).unwrap();
    load(&db, docs);
    (dir, db)
}

/// A store with `job` registered as `name`, holding `docs`.
fn store_with_job(
    docs: &[(String, String)],
    name: &str,
    job: impl Job + 'static,
) -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::builder(dir.path().join("db"))
        .job(name, job)
        .open()
        .unwrap();
    load(&db, docs);
    (dir, db)
}

fn load(db: &Db, docs: &[(String, String)]) {
    db.put_all(
        docs.iter()
            .map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes()))
            .collect(),
    )
    .unwrap();
}

fn output(db: &Db, prefix: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    db.scan(&ScanRange::prefix(prefix), usize::MAX)
        .unwrap()
        .into_iter()
        .collect()
}

fn spec(job: &str, output: &str, reduce: u32, workers: usize) -> MapReduceSpec {
    let mut spec = MapReduceSpec::new(job, ScanRange::prefix("docs/"), output);
    spec.reduce_tasks = reduce;
    spec.workers = workers;
    spec
}

#[test]
fn word_count_equals_the_sequential_reference() {
    let docs = corpus(40, 400);
    let (_dir, db) = store_with(&docs);
    let report = db
        .mapreduce(spec("wc", "wc/", 7, 3))
        .unwrap()
        .wait()
        .unwrap();
    let expected = reference_word_count(&docs);
    assert_eq!(output(&db, "wc/"), expected);
    assert_eq!(report.committed_pairs, expected.len() as u64);
    assert_eq!(report.progress.records_in, docs.len() as u64);
    let jobs = db.jobs().unwrap();
    assert_eq!(jobs.len(), 1);
    assert!(jobs[0].1.starts_with("committed"), "{jobs:?}");
    // Intermediate files of the finished job are gone.
    let work = db.path().join("mapreduce");
    let left: Vec<_> = std::fs::read_dir(&work)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", work.display());
}

#[test]
fn small_splits_make_more_map_tasks_and_the_same_output() {
    let docs = corpus(40, 400);
    let (_dir, db) = store_with(&docs);
    let mut small = spec("wc", "wc/", 3, 2);
    small.split_bytes = 4 << 10;
    let report = db.mapreduce(small).unwrap().wait().unwrap();
    assert_eq!(output(&db, "wc/"), reference_word_count(&docs));
    // Documents of about 2.5 KB: splits of 4 KiB hold one or two each.
    let maps = report.progress.maps_total;
    assert!(maps > 16 && maps <= docs.len() as u64, "{maps} map tasks");
    assert_eq!(report.progress.records_in, docs.len() as u64);
}

#[test]
fn inverted_index_equals_the_sequential_reference() {
    let docs = corpus(25, 200);
    let (_dir, db) = store_with(&docs);
    db.mapreduce(spec("index", "ix/", 4, 2))
        .unwrap()
        .wait()
        .unwrap();
    let mut index: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (key, text) in &docs {
        for w in reference_words(text) {
            index.entry(w).or_default().insert(key.clone());
        }
    }
    let expected: BTreeMap<Vec<u8>, Vec<u8>> = index
        .into_iter()
        .map(|(w, keys)| {
            let joined: Vec<String> = keys.into_iter().collect();
            (
                format!("ix/{w}").into_bytes(),
                joined.join(",").into_bytes(),
            )
        })
        .collect();
    assert_eq!(output(&db, "ix/"), expected);
}

/// Counts how many calls run at once, and waits (up to 5 s) inside each
/// call until a second one runs, as the lab's parallelism plugins do.
#[derive(Default)]
struct Concurrency {
    active: AtomicUsize,
    most: AtomicUsize,
}

impl Concurrency {
    fn enter(&self) {
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.most.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

struct ParallelProbe {
    maps: Arc<Concurrency>,
    reduces: Arc<Concurrency>,
}

impl Job for ParallelProbe {
    fn map(&self, key: &[u8], _value: &[u8], emit: &mut Emit<'_>) {
        self.maps.enter();
        emit(key, b"1");
    }

    fn reduce(&self, key: &[u8], values: &mut Values<'_>, emit: &mut Emit<'_>) {
        self.reduces.enter();
        emit(key, values.count().to_string().as_bytes());
    }
}

fn probe(workers: usize) -> (Arc<Concurrency>, Arc<Concurrency>) {
    let docs = corpus(32, 5);
    let (maps, reduces) = (Arc::default(), Arc::default());
    let (_dir, db) = store_with_job(
        &docs,
        "probe",
        ParallelProbe {
            maps: Arc::clone(&maps),
            reduces: Arc::clone(&reduces),
        },
    );
    db.mapreduce(spec("probe", "p/", 4, workers))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(output(&db, "p/").len(), docs.len());
    (maps, reduces)
}

#[test]
fn two_workers_run_maps_and_reduces_in_parallel() {
    let (maps, reduces) = probe(2);
    assert!(
        maps.most.load(Ordering::SeqCst) >= 2,
        "maps ran one at a time"
    );
    assert!(
        reduces.most.load(Ordering::SeqCst) >= 2,
        "reduces ran one at a time"
    );
}

/// Word count that also counts its map calls per input key.
struct CountingWordCount {
    calls: Arc<Mutex<HashMap<Vec<u8>, u64>>>,
}

impl Job for CountingWordCount {
    fn map(&self, key: &[u8], value: &[u8], emit: &mut Emit<'_>) {
        *self.calls.lock().unwrap().entry(key.to_vec()).or_default() += 1;
        WordCount.map(key, value, emit);
    }

    fn reduce(&self, key: &[u8], values: &mut Values<'_>, emit: &mut Emit<'_>) {
        WordCount.reduce(key, values, emit);
    }
}

#[test]
fn without_failures_every_map_runs_exactly_once() {
    let docs = corpus(30, 50);
    let calls = Arc::new(Mutex::new(HashMap::new()));
    let (_dir, db) = store_with_job(
        &docs,
        "counting",
        CountingWordCount {
            calls: Arc::clone(&calls),
        },
    );
    let report = db
        .mapreduce(spec("counting", "wc/", 5, 3))
        .unwrap()
        .wait()
        .unwrap();
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), docs.len());
    assert!(calls.values().all(|&n| n == 1), "{calls:?}");
    let p = report.progress;
    assert_eq!(report.task_runs, p.maps_total + p.reduces_total);
    assert_eq!(report.crashed_workers, 0);
    assert_eq!(output(&db, "wc/"), reference_word_count(&docs));
}

/// Word count whose reduce of one key waits for a gate the test opens.
struct GatedWordCount {
    gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
    reduces_started: Arc<AtomicU64>,
}

impl Job for GatedWordCount {
    fn map(&self, key: &[u8], value: &[u8], emit: &mut Emit<'_>) {
        WordCount.map(key, value, emit);
    }

    fn reduce(&self, key: &[u8], values: &mut Values<'_>, emit: &mut Emit<'_>) {
        self.reduces_started.fetch_add(1, Ordering::SeqCst);
        if key == b"zebra" {
            let (open, opened) = &*self.gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = opened.wait(open).unwrap();
            }
        }
        WordCount.reduce(key, values, emit);
    }
}

/// The handles a test keeps on a [`GatedWordCount`].
struct Gated {
    gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
    reduces_started: Arc<AtomicU64>,
}

impl Gated {
    fn open_gate(&self) {
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }
}

/// A store holding `docs` with a [`GatedWordCount`] registered as "gated".
fn gated_store(docs: &[(String, String)]) -> (tempfile::TempDir, Db, Gated) {
    let gated = Gated {
        gate: Arc::new((Mutex::new(false), std::sync::Condvar::new())),
        reduces_started: Arc::new(AtomicU64::new(0)),
    };
    let (dir, db) = store_with_job(
        docs,
        "gated",
        GatedWordCount {
            gate: Arc::clone(&gated.gate),
            reduces_started: Arc::clone(&gated.reduces_started),
        },
    );
    (dir, db, gated)
}

#[test]
fn no_output_is_visible_and_nothing_ends_before_the_whole_output_is_committed() {
    let docs = corpus(20, 100);
    let (_dir, db, job) = gated_store(&docs);
    let mut handle = db.mapreduce(spec("gated", "wc/", 3, 3)).unwrap();
    // Wait until the other reduces got through everything they could.
    let distinct = reference_word_count(&docs).len() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while job.reduces_started.load(Ordering::SeqCst) < distinct {
        assert!(Instant::now() < deadline, "reduces did not run");
        std::thread::sleep(Duration::from_millis(5));
    }
    let p = handle.progress();
    assert!(p.reduces_done < p.reduces_total, "{p:?}");
    assert!(output(&db, "wc/").is_empty(), "output before the commit");
    assert!(db.jobs().unwrap()[0].1.starts_with("running"));
    job.open_gate();
    let report = handle.wait().unwrap();
    // When the job reports, the whole output is there and marked committed.
    assert_eq!(output(&db, "wc/"), reference_word_count(&docs));
    assert_eq!(report.progress.reduces_done, 3);
    assert!(db.jobs().unwrap()[0].1.starts_with("committed"));
}

#[test]
fn a_cancelled_job_fails_and_leaves_no_output() {
    let docs = corpus(20, 100);
    let (_dir, db, job) = gated_store(&docs);
    let handle = db.mapreduce(spec("gated", "wc/", 3, 3)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while job.reduces_started.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "reduces did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.cancel();
    job.open_gate();
    assert_eq!(handle.wait().unwrap_err(), flotilla::Error::Cancelled);
    assert!(output(&db, "wc/").is_empty());
    let jobs = db.jobs().unwrap();
    assert!(jobs[0].1.starts_with("failed"), "{jobs:?}");
    assert!(jobs[0].1.contains("cancelled"), "{jobs:?}");
}

/// Word count whose calls crash (panic) or stall past the task timeout now
/// and then, decided by a hash of the key and a per-call counter.
struct CrashingWordCount {
    calls: AtomicU64,
}

impl CrashingWordCount {
    fn maybe_fail(&self, key: &[u8]) {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let roll = flotilla::mr::fnv1a(&[key, &n.to_be_bytes()].concat()) % 1000;
        // The first call always crashes, so every run tests a replacement.
        if n == 0 || roll < 60 {
            panic!("crash injected by the test");
        }
        if roll < 90 {
            std::thread::sleep(Duration::from_millis(1_500));
        }
    }
}

impl Job for CrashingWordCount {
    fn map(&self, key: &[u8], value: &[u8], emit: &mut Emit<'_>) {
        self.maybe_fail(key);
        WordCount.map(key, value, emit);
    }

    fn reduce(&self, key: &[u8], values: &mut Values<'_>, emit: &mut Emit<'_>) {
        self.maybe_fail(key);
        WordCount.reduce(key, values, emit);
    }
}

#[test]
fn crashing_and_stalling_workers_still_give_exactly_the_reference_output() {
    let docs = corpus(48, 150);
    let (_dir, db) = store_with_job(
        &docs,
        "crashing",
        CrashingWordCount {
            calls: AtomicU64::new(0),
        },
    );
    let mut spec = spec("crashing", "wc/", 6, 3);
    spec.task_timeout = Duration::from_secs(1);
    let report = db.mapreduce(spec).unwrap().wait().unwrap();
    assert_eq!(output(&db, "wc/"), reference_word_count(&docs));
    assert!(
        report.crashed_workers > 0,
        "the test injected no crash: {report:?}"
    );
    let p = report.progress;
    assert!(report.task_runs > p.maps_total + p.reduces_total);
}

/// Word count whose first call crashes its worker.
struct CrashOnceWordCount {
    calls: AtomicU64,
}

impl Job for CrashOnceWordCount {
    fn map(&self, key: &[u8], value: &[u8], emit: &mut Emit<'_>) {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("crash injected by the test");
        }
        WordCount.map(key, value, emit);
    }

    fn reduce(&self, key: &[u8], values: &mut Values<'_>, emit: &mut Emit<'_>) {
        WordCount.reduce(key, values, emit);
    }
}

#[test]
fn a_crashed_worker_is_replaced_and_its_task_given_out_again() {
    // One worker: the job can only finish if a new worker takes its place.
    let docs = corpus(10, 50);
    let (_dir, db) = store_with_job(
        &docs,
        "crash-once",
        CrashOnceWordCount {
            calls: AtomicU64::new(0),
        },
    );
    let mut spec = spec("crash-once", "wc/", 2, 1);
    spec.task_timeout = Duration::from_secs(1);
    let report = db.mapreduce(spec).unwrap().wait().unwrap();
    assert_eq!(report.crashed_workers, 1);
    let p = report.progress;
    assert_eq!(report.task_runs, p.maps_total + p.reduces_total + 1);
    assert_eq!(output(&db, "wc/"), reference_word_count(&docs));
}

#[test]
fn a_non_empty_output_is_refused_unless_replace_is_asked() {
    let docs = corpus(5, 20);
    let (_dir, db) = store_with(&docs);
    db.put("wc/stale", "1").unwrap();
    let refused = db.mapreduce(spec("wc", "wc/", 2, 1)).unwrap().wait();
    assert!(
        matches!(&refused, Err(flotilla::Error::InvalidArgument(why)) if why.contains("not empty")),
        "{refused:?}"
    );
    assert_eq!(db.get("wc/stale").unwrap(), Some(b"1".to_vec()));
    let mut replace = spec("wc", "wc/", 2, 1);
    replace.replace = true;
    db.mapreduce(replace).unwrap().wait().unwrap();
    assert_eq!(output(&db, "wc/"), reference_word_count(&docs));
    // Unknown jobs and bad settings are refused up front.
    assert!(db.mapreduce(spec("nope", "x/", 1, 1)).is_err());
    assert!(
        db.mapreduce(spec("grep", "g/", 1, 1)).is_err(),
        "grep needs a pattern"
    );
    assert!(db
        .mapreduce(spec("wc", "w2/", 0, 1))
        .unwrap()
        .wait()
        .is_err());
}

/// Word count that takes its time: 100 ms per map call, 20 ms per reduce
/// call, so a test can kill the process in the middle of a job.
struct SlowWordCount;

impl Job for SlowWordCount {
    fn map(&self, key: &[u8], value: &[u8], emit: &mut Emit<'_>) {
        std::thread::sleep(Duration::from_millis(100));
        WordCount.map(key, value, emit);
    }

    fn reduce(&self, key: &[u8], values: &mut Values<'_>, emit: &mut Emit<'_>) {
        std::thread::sleep(Duration::from_millis(20));
        WordCount.reduce(key, values, emit);
    }
}

#[test]
#[ignore = "run by a_job_killed_mid_way_resumes_where_it_was in a child process"]
fn slow_job_child() {
    let Ok(path) = std::env::var("FLOTILLA_MR_KILL_DB") else {
        return;
    };
    let db = Db::builder(path)
        .job("wc-slow", SlowWordCount)
        .open()
        .unwrap();
    let handle = db.mapreduce(spec("wc-slow", "wc/", 4, 2)).unwrap();
    println!("ID {}", handle.id());
    let _ = handle.wait();
}

#[test]
fn a_job_killed_mid_way_resumes_where_it_was() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let docs = corpus(32, 60);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let db = Db::open(&path).unwrap();
        load(&db, &docs);
        db.close().unwrap();
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "slow_job_child", "--nocapture"])
        .env("FLOTILLA_MR_KILL_DB", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let id = loop {
        let line = lines.next().expect("the child printed its job id").unwrap();
        if let Some(id) = line.strip_prefix("ID ") {
            break id.to_string();
        }
    };
    // Kill -9 once a few map tasks are whole on disk, long before the end.
    let job_dir = path.join("mapreduce").join(format!("mr-{id}"));
    let whole_maps = |dir: &std::path::Path| {
        (0..64)
            .filter(|m| (0..4).all(|r| dir.join(format!("mr-{id}-{m}-{r}")).is_file()))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while whole_maps(&job_dir) < 4 {
        assert!(Instant::now() < deadline, "the child made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let done_before = whole_maps(&job_dir);

    let db = Db::builder(&path).job("wc-slow", WordCount).open().unwrap();
    let jobs = db.jobs().unwrap();
    assert!(jobs[0].1.starts_with("running"), "{jobs:?}");
    assert!(output(&db, "wc/").is_empty(), "output of an unfinished job");
    let report = db.resume_job(&id).unwrap().wait().unwrap();
    assert_eq!(output(&db, "wc/"), reference_word_count(&docs));
    let p = report.progress;
    assert!(
        (done_before as u64) < p.maps_total,
        "the maps finished before the kill"
    );
    // The maps finished before the kill were not run again.
    assert_eq!(
        report.task_runs,
        p.maps_total + p.reduces_total - done_before as u64
    );
    assert!(db.jobs().unwrap()[0].1.starts_with("committed"));
    // A committed job cannot be resumed.
    assert!(db.resume_job(&id).is_err());
}
