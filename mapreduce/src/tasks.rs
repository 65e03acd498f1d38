//! One map or reduce task, wherever it runs: the local runner's threads and
//! a cluster member's workers call these with the task's inputs in hand.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::MapReduceError;
use crate::job::Job;
use crate::map_buffer::{Groups, MapBuffer};
use crate::merge::Merge;
use crate::run_file::{map_run_name, reduce_output_name, RunReader, RunWriter};
use crate::store::{Split, Store};

/// A map task spills its sorted buffers to disk past this many bytes.
const MAP_BUFFER_BYTES: usize = 32 << 20;

/// Records and bytes a job's tasks read and wrote (every attempt counts).
#[derive(Debug, Default)]
pub struct Counters {
    /// Input pairs read.
    pub records_in: AtomicU64,
    /// Input bytes read (keys and values).
    pub bytes_in: AtomicU64,
    /// Output pairs written by reduce attempts.
    pub records_out: AtomicU64,
    /// Output bytes written by reduce attempts.
    pub bytes_out: AtomicU64,
}

impl Counters {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The four counters as plain numbers: in, bytes in, out, bytes out.
    pub fn read(&self) -> [u64; 4] {
        [
            self.records_in.load(Ordering::Relaxed),
            self.bytes_in.load(Ordering::Relaxed),
            self.records_out.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
        ]
    }
}

/// What every task of one job shares.
pub struct TaskContext<'a> {
    /// The job's id: names its files.
    pub job_id: &'a str,
    /// The job's code.
    pub job: &'a dyn Job,
    /// The job's directory on this node.
    pub dir: &'a Path,
    /// Partitions.
    pub reduce_tasks: u32,
    /// Prefix of every output key.
    pub output_prefix: &'a [u8],
    /// Where the task adds what it read and wrote.
    pub counters: &'a Counters,
    /// Set to stop the task at its next record.
    pub cancel: &'a AtomicBool,
}

impl TaskContext<'_> {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Where map `map`'s run for partition `reduce` is written.
    pub fn map_run_path(&self, map: u32, reduce: u32) -> PathBuf {
        self.dir.join(map_run_name(self.job_id, map, reduce))
    }

    /// Where reduce `reduce`'s output is written.
    pub fn reduce_output_path(&self, reduce: u32) -> PathBuf {
        self.dir.join(reduce_output_name(self.job_id, reduce))
    }
}

/// Map task `map`: reads `split` from `store`, maps, partitions, and leaves
/// one sorted (and combined) run per partition in the job directory.
/// `attempt` keeps two attempts' spill files apart.
pub fn run_map(
    cx: &TaskContext,
    store: &dyn Store,
    map: u32,
    split: &Split,
    attempt: u64,
) -> Result<(), MapReduceError> {
    let job = cx.job;
    let partitions = cx.reduce_tasks;
    let mut buffer = MapBuffer::new(partitions);
    let mut spills: Vec<Vec<PathBuf>> = vec![Vec::new(); partitions as usize];
    let mut spill_error = None;
    store
        .read_split(split, &mut |key, value| {
            if spill_error.is_some() {
                return;
            }
            if cx.cancelled() {
                spill_error = Some(MapReduceError::Cancelled);
                return;
            }
            Counters::add(&cx.counters.records_in, 1);
            Counters::add(&cx.counters.bytes_in, (key.len() + value.len()) as u64);
            job.map(key, value, &mut |k, v| {
                let p = job.partition(k, partitions).min(partitions - 1) as usize;
                buffer.push(job, p, k, v);
            });
            if buffer.bytes() > MAP_BUFFER_BYTES {
                if let Err(e) = spill(cx, attempt, map, &mut buffer, &mut spills) {
                    spill_error = Some(e);
                }
            }
        })
        .map_err(MapReduceError::Store)?;
    if let Some(e) = spill_error {
        return Err(e);
    }
    if spills.iter().any(|s| !s.is_empty()) {
        // Spilled before: what is left is one more run to merge.
        spill(cx, attempt, map, &mut buffer, &mut spills)?;
    }
    for (reduce, runs) in spills.iter().enumerate() {
        let mut out = RunWriter::create(&cx.map_run_path(map, reduce as u32))?;
        if runs.is_empty() {
            write_groups(job, buffer.take_sorted(reduce), &mut out)?;
        } else {
            let readers = runs
                .iter()
                .map(|p| RunReader::open(p))
                .collect::<Result<Vec<_>, _>>()?;
            let mut merge = Merge::new(readers)?;
            let mut result = Ok(());
            merge.for_each_group(|key, values| {
                if result.is_ok() {
                    result = combine_group(job, key, values, &mut out);
                }
            })?;
            result?;
            for p in runs {
                let _ = std::fs::remove_file(p);
            }
        }
        out.finish()?;
    }
    Ok(())
}

/// Writes every partition of `buffer` as one more sorted spill run.
fn spill(
    cx: &TaskContext,
    attempt: u64,
    map: u32,
    buffer: &mut MapBuffer,
    spills: &mut [Vec<PathBuf>],
) -> Result<(), MapReduceError> {
    for (reduce, runs) in spills.iter_mut().enumerate() {
        let name = map_run_name(cx.job_id, map, reduce as u32);
        let path = cx
            .dir
            .join(format!("{name}.spill-a{attempt}-{}", runs.len()));
        let mut w = RunWriter::create(&path)?;
        write_groups(cx.job, buffer.take_sorted(reduce), &mut w)?;
        w.finish()?;
        runs.push(path);
    }
    Ok(())
}

/// Writes sorted groups, each through the combiner if the job has one.
fn write_groups(job: &dyn Job, groups: Groups, out: &mut RunWriter) -> Result<(), MapReduceError> {
    for (key, values) in groups {
        combine_group(job, &key, &mut values.into_iter(), out)?;
    }
    Ok(())
}

fn combine_group(
    job: &dyn Job,
    key: &[u8],
    values: &mut dyn Iterator<Item = Vec<u8>>,
    out: &mut RunWriter,
) -> Result<(), MapReduceError> {
    if !job.has_combiner() {
        for v in values {
            out.push(key, &v)?;
        }
        return Ok(());
    }
    let mut result = Ok(());
    job.combine(key, values, &mut |k, v| {
        if result.is_ok() {
            result = out.push(k, v);
        }
    });
    result
}

/// Reduce task `reduce`: merges `runs` (this partition's run of every map),
/// applies `reduce`, and leaves the output file in the job directory with
/// the output prefix already on every key.
pub fn run_reduce(cx: &TaskContext, reduce: u32, runs: &[PathBuf]) -> Result<(), MapReduceError> {
    let readers = runs
        .iter()
        .map(|path| RunReader::open(path))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = RunWriter::create(&cx.reduce_output_path(reduce))?;
    let mut merge = Merge::new(readers)?;
    let mut result = Ok(());
    merge.for_each_group(|key, values| {
        if result.is_ok() && cx.cancelled() {
            result = Err(MapReduceError::Cancelled);
        }
        cx.job.reduce(key, values, &mut |k, v| {
            if result.is_ok() {
                let mut full = cx.output_prefix.to_vec();
                full.extend_from_slice(k);
                Counters::add(&cx.counters.records_out, 1);
                Counters::add(&cx.counters.bytes_out, (full.len() + v.len()) as u64);
                result = out.push(&full, v);
            }
        });
    })?;
    result?;
    out.finish()
}

/// Writes the run at `path` into `store` in batches of `batch_pairs`;
/// returns the pairs written.
pub fn commit_file(
    store: &dyn Store,
    path: &Path,
    batch_pairs: usize,
) -> Result<u64, MapReduceError> {
    let mut reader = RunReader::open(path)?;
    let mut batch = Vec::with_capacity(batch_pairs);
    let mut count = 0u64;
    while let Some(pair) = reader.next_record()? {
        batch.push(pair);
        if batch.len() == batch_pairs {
            store.put_all(&batch).map_err(MapReduceError::Store)?;
            count += batch.len() as u64;
            batch.clear();
        }
    }
    store.put_all(&batch).map_err(MapReduceError::Store)?;
    Ok(count + batch.len() as u64)
}
