//! Group commit: one thread takes write requests from every group, writes
//! them as one WriteBatch, syncs once and completes them all. No other thread
//! writes the log, so no RocksDB write ever runs on a tokio worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rocksdb::{ColumnFamily, WriteBatch, WriteOptions, DB};

use super::cache::{GroupCaches, LogCache};
use super::{cf_handle, Extra, RawOpKind, MAX_BATCH_REQUESTS};
use crate::error::StorageError;
use crate::failpoint;
use crate::keys::{self, StateKind, RAFT_LOG_CF, RAFT_STATE_CF};
use crate::record;
use crate::store::{Completion, Durability, LogWrite};
use crate::GroupId;

pub(crate) struct WriteRequest {
    pub(crate) writes: Vec<LogWrite>,
    pub(crate) extra: Extra,
    pub(crate) done: Completion,
}

/// State shared between the store handle and its writer.
#[derive(Default)]
pub(crate) struct Shared {
    poison: Mutex<Option<String>>,
    /// Per-group log shape; the writer holds the lock from encoding a batch
    /// until it is durable, so readers never see bytes of a failed write.
    pub(crate) caches: Mutex<GroupCaches>,
    /// Each group's log bytes as of its last durable write, copied out of
    /// `caches` so the group loops can ask for it every round without
    /// waiting behind a write and its fsync.
    durable_bytes: Mutex<HashMap<GroupId, u64>>,
}

impl Shared {
    pub(crate) fn poisoned(&self) -> Option<String> {
        self.poison
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn poison(&self, cause: String) {
        let mut slot = self.poison.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(cause);
    }

    pub(crate) fn caches(&self) -> MutexGuard<'_, GroupCaches> {
        self.caches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The group's log bytes as of its last durable write, if known yet.
    pub(crate) fn durable_bytes(&self, group: GroupId) -> Option<u64> {
        self.durable_map().get(&group).copied()
    }

    /// Records the current sizes of `groups` from `caches` as durable.
    pub(crate) fn publish_bytes(
        &self,
        caches: &GroupCaches,
        groups: impl IntoIterator<Item = GroupId>,
    ) {
        let mut durable = self.durable_map();
        for group in groups {
            if let Some(cache) = caches.get(group) {
                durable.insert(group, cache.bytes());
            }
        }
    }

    fn durable_map(&self) -> MutexGuard<'_, HashMap<GroupId, u64>> {
        self.durable_bytes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) fn spawn(
    db: Arc<DB>,
    rx: Receiver<WriteRequest>,
    durability: Durability,
    poll: Duration,
    shared: Arc<Shared>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("flotilla-log-writer".into())
        .spawn(move || {
            Writer {
                db,
                durability,
                shared,
                sync_after_write: true,
            }
            .run(rx, poll)
        })
}

struct Writer {
    db: Arc<DB>,
    durability: Durability,
    shared: Arc<Shared>,
    /// Under `Sync`, write the batch unsynced and then sync the WAL, rather
    /// than one synced write (see [`Writer::write`]).
    sync_after_write: bool,
}

/// Commits `writes` on the calling thread, exactly as the writer thread
/// would commit a batch holding them alone; returns once they are durable.
pub(crate) fn commit_now(
    db: &Arc<DB>,
    durability: Durability,
    shared: &Arc<Shared>,
    writes: Vec<LogWrite>,
) -> Result<(), StorageError> {
    // One synced write: RocksDB merges concurrent synced writes of several
    // callers into one fsync, and the caller applies only after it anyway.
    let writer = Writer {
        db: Arc::clone(db),
        durability,
        shared: Arc::clone(shared),
        sync_after_write: false,
    };
    crate::store::wait_for(|done| {
        let mut batch = vec![WriteRequest {
            writes,
            extra: Extra::None,
            done,
        }];
        let result = writer.commit(&mut batch);
        for request in batch {
            (request.done)(result.clone());
        }
    })
}

impl Writer {
    fn run(self, rx: Receiver<WriteRequest>, poll: Duration) {
        let mut last_sync = Instant::now();
        let mut unsynced = false;
        let mut pending: Option<WriteRequest> = None;
        loop {
            let first = match pending.take() {
                Some(request) => request,
                None => match self.durability {
                    Durability::Buffered { max_delay } if unsynced => {
                        match rx.recv_timeout(max_delay.saturating_sub(last_sync.elapsed())) {
                            Ok(request) => request,
                            Err(RecvTimeoutError::Timeout) => {
                                self.sync_wal();
                                last_sync = Instant::now();
                                unsynced = false;
                                continue;
                            }
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                    }
                    _ => match next_request(&rx, poll) {
                        Ok(request) => request,
                        Err(_) => break,
                    },
                },
            };
            // A request that fills the batch itself (a snapshot install) is
            // committed alone, so its failure cannot fail anyone else's writes.
            let mut batch = vec![first];
            if !matches!(batch[0].extra, Extra::Filler(_)) {
                while batch.len() < MAX_BATCH_REQUESTS {
                    match rx.try_recv() {
                        Ok(request) if matches!(request.extra, Extra::Filler(_)) => {
                            pending = Some(request);
                            break;
                        }
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
            }
            let result = self.commit(&mut batch);
            if result.is_ok() {
                if let Durability::Buffered { max_delay } = self.durability {
                    unsynced = true;
                    if last_sync.elapsed() >= max_delay {
                        self.sync_wal();
                        last_sync = Instant::now();
                        unsynced = false;
                    }
                }
            }
            for request in batch {
                (request.done)(result.clone());
            }
        }
        if unsynced {
            self.sync_wal();
        }
    }

    fn sync_wal(&self) {
        if let Err(e) = self.db.flush_wal(true) {
            self.shared.poison(format!("WAL sync failed: {e}"));
        }
    }

    /// Writes every request of the batch in one WriteBatch and syncs it.
    /// A request refused before writing (a gap in a log, a filler's error) is
    /// completed with its error and left out; the others go ahead.
    fn commit(&self, batch: &mut Vec<WriteRequest>) -> Result<(), StorageError> {
        if let Some(cause) = self.shared.poisoned() {
            return Err(StorageError::Poisoned { cause });
        }
        let mut caches = self.shared.caches();
        let mut wb = WriteBatch::default();
        let (mut hard_state, mut compaction) = (false, false);
        let mut groups = Vec::new();
        let mut accepted = Vec::with_capacity(batch.len());
        let mut refused = Vec::new();
        for mut request in batch.drain(..) {
            if let Err(e) = self.add_request(&mut caches, &mut wb, &mut request) {
                refused.push((request, e));
                continue;
            }
            for write in &request.writes {
                hard_state |= write.hard_state.is_some();
                compaction |= write.compact.is_some();
                if !groups.contains(&write.group) {
                    groups.push(write.group);
                }
            }
            accepted.push(request);
        }
        *batch = accepted;
        let result = if batch.is_empty() {
            drop(caches);
            Ok(())
        } else {
            self.write(caches, wb, hard_state, compaction, &groups)
        };
        // Completions run without the cache lock: one may read the store.
        for (request, e) in refused {
            (request.done)(Err(e));
        }
        result
    }

    fn write(
        &self,
        mut caches: std::sync::MutexGuard<'_, GroupCaches>,
        wb: WriteBatch,
        hard_state: bool,
        compaction: bool,
        groups: &[GroupId],
    ) -> Result<(), StorageError> {
        failpoint::hit(failpoint::BEFORE_LOG_WRITE);
        if hard_state {
            failpoint::hit(failpoint::BEFORE_HARD_STATE_WRITE);
        }
        if compaction {
            failpoint::hit(failpoint::BEFORE_COMPACTION);
        }
        // The writer thread writes unsynced and then syncs the WAL: RocksDB
        // queues every write behind a synced one until its fsync ends, while
        // a separate WAL sync lets the state machine's unsynced applies (on
        // the group loops) go ahead during the fsync. Everything written
        // before the sync is durable once it returns, and the completions
        // run only after it.
        let sync_after = self.sync_after_write && self.durability == Durability::Sync;
        let mut opts = WriteOptions::default();
        match self.durability {
            Durability::Sync => opts.set_sync(!sync_after),
            Durability::Buffered { .. } => {}
            Durability::None => opts.disable_wal(true),
        }
        let written = self.db.write_opt(wb, &opts).and_then(|()| {
            if sync_after {
                self.db.flush_wal(true)
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            let cause = format!("log write failed: {e}");
            self.shared.poison(cause.clone());
            // What is on disk is unknown now; reload from it if ever asked.
            caches.clear();
            return Err(StorageError::Poisoned { cause });
        }
        self.shared.publish_bytes(&caches, groups.iter().copied());
        drop(caches);
        failpoint::hit(failpoint::AFTER_LOG_SYNC);
        if hard_state {
            failpoint::hit(failpoint::AFTER_HARD_STATE_WRITE);
        }
        if compaction {
            failpoint::hit(failpoint::AFTER_COMPACTION);
        }
        Ok(())
    }

    /// Checks one request and adds it to the batch. Everything that can fail
    /// is checked before the first byte goes in, so a refused request adds
    /// nothing — except a filler's, which is committed alone (see `run`) and
    /// whose batch is dropped with it.
    fn add_request(
        &self,
        caches: &mut GroupCaches,
        wb: &mut WriteBatch,
        request: &mut WriteRequest,
    ) -> Result<(), StorageError> {
        check_contiguous(&self.db, caches, &request.writes)?;
        let log = cf_handle(&self.db, RAFT_LOG_CF)?;
        let state = cf_handle(&self.db, RAFT_STATE_CF)?;
        match std::mem::replace(&mut request.extra, Extra::None) {
            Extra::None => {}
            Extra::Ops(ops) => {
                let resolved = ops
                    .into_iter()
                    .map(|op| Ok((cf_handle(&self.db, op.cf)?, op.kind)))
                    .collect::<Result<Vec<_>, StorageError>>()?;
                for (cf, kind) in resolved {
                    match kind {
                        RawOpKind::Put { key, value } => wb.put_cf(cf, key, value),
                        RawOpKind::Delete { key } => wb.delete_cf(cf, key),
                        RawOpKind::DeleteRange { from, to } => wb.delete_range_cf(cf, from, to),
                    }
                }
            }
            Extra::Filler(fill) => fill(&self.db, wb)?,
        }
        for write in &request.writes {
            // Loaded by `check_contiguous`, so this does not fail.
            let cache = caches.get_or_load(&self.db, write.group)?;
            encode(wb, log, state, cache, write);
        }
        Ok(())
    }
}

/// How long the writer polls for the next request before it sleeps, by
/// default. A client that waits for its write and then sends the next one
/// comes back within this window, and finding its request here saves the
/// writer a wake-up (about 60 µs per write on a two-core VM).
pub const DEFAULT_WRITER_POLL: Duration = Duration::from_micros(50);

/// The longest poll a store accepts: polling is spinning, and a longer
/// spin costs more CPU than the wake-up it may save.
pub const MAX_WRITER_POLL: Duration = Duration::from_millis(1);

/// The next request: polled for `poll`, then waited for.
fn next_request(
    rx: &Receiver<WriteRequest>,
    poll: Duration,
) -> Result<WriteRequest, crossbeam_channel::RecvError> {
    let start = Instant::now();
    while start.elapsed() < poll {
        match rx.try_recv() {
            Ok(request) => return Ok(request),
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                return Err(crossbeam_channel::RecvError)
            }
            Err(crossbeam_channel::TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
    rx.recv()
}

/// Refuses writes that would not fit their logs, given the writes before
/// them in the same request.
fn check_contiguous(
    db: &DB,
    caches: &mut GroupCaches,
    writes: &[LogWrite],
) -> Result<(), StorageError> {
    crate::store::check_writes(writes, |group| {
        let cache = caches.get_or_load(db, group)?;
        Ok((cache.snapshot_index(), cache.last_index()))
    })
}

/// Adds one group's write to the batch, keeping its cache in step.
fn encode(
    wb: &mut WriteBatch,
    log: &ColumnFamily,
    state: &ColumnFamily,
    cache: &mut LogCache,
    write: &LogWrite,
) {
    let group = write.group;
    let meta_key = keys::state_key(group, StateKind::SnapshotMeta);
    if let Some(meta) = &write.install {
        wb.delete_range_cf(log, keys::log_key(group, 0), keys::log_key(group, u64::MAX));
        wb.put_cf(state, meta_key, record::encode(meta));
        cache.install(meta.index);
    }
    if let Some(meta) = &write.compact {
        // A compaction behind the current snapshot would move it back.
        if meta.index > cache.snapshot_index() {
            wb.delete_range_cf(
                log,
                keys::log_key(group, 0),
                keys::log_key(group, meta.index + 1),
            );
            wb.put_cf(state, meta_key, record::encode(meta));
            cache.compact(meta.index);
        }
    }
    if let Some(first) = write.entries.first().map(|e| e.index) {
        if first <= cache.last_index() {
            wb.delete_range_cf(
                log,
                keys::log_key(group, first),
                keys::log_key(group, u64::MAX),
            );
            cache.truncate_from(first);
        }
        for entry in &write.entries {
            wb.put_cf(
                log,
                keys::log_key(group, entry.index),
                record::encode(entry),
            );
            cache.push(entry.size_bytes());
        }
    }
    if let Some(hs) = &write.hard_state {
        wb.put_cf(
            state,
            keys::state_key(group, StateKind::HardState),
            record::encode(hs),
        );
    }
}
