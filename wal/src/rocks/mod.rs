//! The RocksDB log store: one RocksDB instance per node, shared by every
//! group, with one writer thread doing group commit.

mod cache;
mod prealloc;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, DB};

use crate::error::StorageError;
use crate::keys::{
    self, StateKind, DATA_CF, FORMAT_KEY, RAFT_LOG_CF, RAFT_STATE_CF, SHARD_COUNT_KEY, SNAPSHOT_CF,
};
use crate::record;
use crate::store::{Completion, Durability, LogStore, LogWrite};
use crate::{Entry, GroupId, HardState, Index, SnapshotMeta};
pub use prealloc::MAX_WAL_PREALLOCATION;
use writer::{Shared, WriteRequest};
pub use writer::{DEFAULT_WRITER_POLL, MAX_WRITER_POLL};

/// The store format this build writes; a store with a higher one is refused.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_MAGIC: &[u8; 4] = b"FLOT";
/// Most write requests one group commit takes from the queue.
pub const MAX_BATCH_REQUESTS: usize = 4096;
/// Most pending write requests; `submit` blocks beyond it (back-pressure).
pub const MAX_QUEUED_REQUESTS: usize = 16_384;
/// Every column family of a store.
const COLUMN_FAMILIES: [&str; 5] = ["default", RAFT_LOG_CF, RAFT_STATE_CF, SNAPSHOT_CF, DATA_CF];

/// How a [`RocksLogStore`] is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenOptions {
    /// How durable an acknowledged write is.
    pub durability: Durability,
    /// Bytes of WAL file written at open so that the writes after it
    /// overwrite a file instead of appending (cheaper fsyncs; see
    /// `docs/ARCHITECTURE.md`). 0 (the default) writes nothing; at most
    /// [`MAX_WAL_PREALLOCATION`]. Ignored under `Durability::None`.
    pub wal_preallocation: u64,
    /// How long the writer thread polls for the next write before it
    /// sleeps (except while a `Buffered` sync is pending, when it waits for
    /// that instead). Polling saves a wake-up when the next write comes from
    /// a thread that submits it as soon as the last one returns (one thread
    /// calling [`LogStore::write`] in a loop); it only burns CPU when the
    /// next write waits on a network round trip first, so the engine passes
    /// zero. Default [`DEFAULT_WRITER_POLL`]; at most [`MAX_WRITER_POLL`].
    pub writer_poll: Duration,
    /// The shard count stored in the store if this open creates it (the
    /// store never interprets it; see [`RocksLogStore::stored_shard_count`]).
    /// `None` stores none.
    pub shard_count: Option<u16>,
}

impl OpenOptions {
    /// `durability`, with no WAL preallocation, the default writer poll,
    /// and no shard count stored.
    pub fn new(durability: Durability) -> Self {
        OpenOptions {
            durability,
            wal_preallocation: 0,
            writer_poll: DEFAULT_WRITER_POLL,
            shard_count: None,
        }
    }
}

/// One raw write to another column family, committed atomically with the log
/// writes of the same request (the state machine's data and applied index).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawOp {
    /// Column family (one of [`keys`]' names).
    pub cf: &'static str,
    /// What to do.
    pub kind: RawOpKind,
}

/// A [`RawOp`]'s action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawOpKind {
    /// Set a key.
    Put {
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
    },
    /// Remove a key.
    Delete {
        /// Key.
        key: Vec<u8>,
    },
    /// Remove every key in `from..to`.
    DeleteRange {
        /// First key removed.
        from: Vec<u8>,
        /// First key kept.
        to: Vec<u8>,
    },
}

/// Fills a WriteBatch on the writer thread; an error refuses the request.
pub type BatchFiller = Box<dyn FnOnce(&DB, &mut WriteBatch) -> Result<(), StorageError> + Send>;

/// What a request writes besides its log writes.
pub enum Extra {
    /// Nothing.
    None,
    /// Raw writes, group-committed with everything else.
    Ops(Vec<RawOp>),
    /// A batch built on the writer thread (a snapshot install reading its
    /// staged chunks); committed in a batch of its own.
    Filler(BatchFiller),
}

/// The RocksDB-backed [`LogStore`].
pub struct RocksLogStore {
    db: Arc<DB>,
    durability: Durability,
    tx: Option<Sender<WriteRequest>>,
    writer: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    path: PathBuf,
}

impl RocksLogStore {
    /// Opens (or creates) the store in `path`. Refuses a directory that holds
    /// something else, or a store written by a newer format.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StorageError> {
        Self::open_with(path, OpenOptions::new(durability))
    }

    /// [`open`](Self::open) with every option.
    pub fn open_with(path: impl AsRef<Path>, options: OpenOptions) -> Result<Self, StorageError> {
        let OpenOptions {
            durability,
            wal_preallocation,
            writer_poll,
            shard_count,
        } = options;
        if wal_preallocation > MAX_WAL_PREALLOCATION {
            return Err(StorageError::Engine(format!(
                "a WAL preallocation of {wal_preallocation} bytes is above the limit of {MAX_WAL_PREALLOCATION}"
            )));
        }
        if writer_poll > MAX_WRITER_POLL {
            return Err(StorageError::Engine(format!(
                "a writer poll of {writer_poll:?} is above the limit of {MAX_WRITER_POLL:?}"
            )));
        }
        let path = path.as_ref().to_path_buf();
        if !check_directory(&path)? {
            create(&path, durability, shard_count)?;
        }
        let db = Arc::new(open_db(&path, durability)?);
        check_format(&db, &path)?;
        prealloc::preallocate(&db, &path, durability, wal_preallocation)?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = crossbeam_channel::bounded(MAX_QUEUED_REQUESTS);
        let writer = writer::spawn(
            Arc::clone(&db),
            rx,
            durability,
            writer_poll,
            Arc::clone(&shared),
        )
        .map_err(|e| StorageError::Engine(format!("cannot start the log writer thread: {e}")))?;
        Ok(RocksLogStore {
            db,
            durability,
            tx: Some(tx),
            writer: Some(writer),
            shared,
            path,
        })
    }

    /// The shard count stored when the store was created; `None` for a
    /// store created without one (before counts were stored).
    pub fn stored_shard_count(&self) -> Result<Option<u16>, StorageError> {
        match self.db.get(SHARD_COUNT_KEY).map_err(|e| engine(&e))? {
            None => Ok(None),
            Some(bytes) => match <[u8; 2]>::try_from(bytes.as_slice()) {
                Ok(raw) => Ok(Some(u16::from_be_bytes(raw))),
                Err(_) => Err(StorageError::Corruption {
                    cf: "default",
                    key: keys::display_key(SHARD_COUNT_KEY),
                    detail: format!("the shard count is {} bytes, not 2", bytes.len()),
                }),
            },
        }
    }

    /// How durable acknowledged writes are.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Write options for writes made outside the writer (applies, snapshot
    /// chunks): synced or not as asked, or without a WAL under
    /// `Durability::None` so that they cannot outlive the writes they belong
    /// with. Under `Sync` an unsynced write waits in RocksDB's WAL buffer
    /// until the next synced write or WAL sync writes and syncs it, in order.
    pub fn direct_write_options(&self, sync: bool) -> rocksdb::WriteOptions {
        let mut options = rocksdb::WriteOptions::default();
        match self.durability {
            Durability::None => options.disable_wal(true),
            _ => options.set_sync(sync),
        }
        options
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying database, for the other column families' owners.
    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    /// Like [`LogStore::submit`], with writes to other column families
    /// committed in the same atomic batch.
    pub fn submit_with(&self, writes: Vec<LogWrite>, extra: Extra, done: Completion) {
        if let Some(cause) = self.shared.poisoned() {
            return done(Err(StorageError::Poisoned { cause }));
        }
        let Some(tx) = self.tx.as_ref() else {
            return done(Err(StorageError::Closed));
        };
        if let Err(crossbeam_channel::SendError(request)) = tx.send(WriteRequest {
            writes,
            extra,
            done,
        }) {
            (request.done)(Err(StorageError::Closed));
        }
    }

    /// Writes `writes` on the calling thread and returns once they are as
    /// durable as the store's durability makes them, with no hand-off to the
    /// writer thread (two thread wake-ups saved per write). Concurrent
    /// callers still share fsyncs: RocksDB merges concurrent synced writes
    /// into one WAL sync. Under `Durability::Buffered`, whose delayed sync
    /// the writer thread keeps, this submits to the writer and waits.
    pub fn write_now(&self, writes: Vec<LogWrite>) -> Result<(), StorageError> {
        if matches!(self.durability, Durability::Buffered { .. }) {
            return self.write_with(writes, Extra::None);
        }
        if self.tx.is_none() {
            return Err(StorageError::Closed);
        }
        writer::commit_now(&self.db, self.durability, &self.shared, writes)
    }

    /// [`submit_with`](Self::submit_with), waiting for durability.
    pub fn write_with(&self, writes: Vec<LogWrite>, extra: Extra) -> Result<(), StorageError> {
        crate::store::wait_for(|done| self.submit_with(writes, extra, done))
    }

    /// Stops the writer after it finishes the queued writes.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.tx.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
            // Applies written after the last synced write still sit in
            // RocksDB's WAL buffer (`manual_wal_flush`): a clean close makes
            // them durable, so a reopen need not re-apply. Nothing is lost
            // if this fails: the log holds their entries.
            if self.durability == Durability::Sync {
                let _ = self.db.flush_wal(true);
            }
        }
    }

    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily, StorageError> {
        cf_handle(&self.db, name)
    }

    fn state<T: serde::de::DeserializeOwned + Default>(
        &self,
        group: GroupId,
        kind: StateKind,
    ) -> Result<T, StorageError> {
        let key = keys::state_key(group, kind);
        match self
            .db
            .get_cf(self.cf(RAFT_STATE_CF)?, key)
            .map_err(|e| engine(&e))?
        {
            Some(bytes) => record::decode(RAFT_STATE_CF, &key, &bytes),
            None => Ok(T::default()),
        }
    }
}

impl Drop for RocksLogStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl LogStore for RocksLogStore {
    fn submit(&self, writes: Vec<LogWrite>, done: Completion) {
        self.submit_with(writes, Extra::None, done);
    }

    fn membership(&self, group: GroupId) -> Result<crate::Membership, StorageError> {
        // The snapshot metadata and the entries after it must come from the
        // same moment: hold the writer's lock so no compaction lands between.
        let _writer_paused = self.shared.caches();
        let snapshot = self.snapshot_meta(group)?;
        let last = self.last_index(group)?;
        let entries = self.entries(group, snapshot.index + 1, last, u64::MAX)?;
        Ok(crate::store::last_membership(&entries).unwrap_or(snapshot.membership))
    }

    fn log_bytes(&self, group: GroupId) -> Result<u64, StorageError> {
        if let Some(bytes) = self.shared.durable_bytes(group) {
            return Ok(bytes);
        }
        // First ask for this group: load its shape (waiting for the writer).
        let mut caches = self.shared.caches();
        let bytes = caches.get_or_load(&self.db, group)?.bytes();
        self.shared.publish_bytes(&caches, [group]);
        Ok(bytes)
    }

    fn entries(
        &self,
        group: GroupId,
        lo: Index,
        hi: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut out = Vec::new();
        if lo > hi {
            return Ok(out);
        }
        let start = keys::log_key(group, lo);
        let iter = self.db.iterator_cf(
            self.cf(RAFT_LOG_CF)?,
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut expected = lo;
        let mut bytes = 0;
        for item in iter {
            let (key, value) = item.map_err(|e| engine(&e))?;
            match keys::parse_log_key(&key) {
                Some((g, index)) if g == group && index == expected && index <= hi => {
                    let entry: Entry = record::decode(RAFT_LOG_CF, &key, &value)?;
                    if entry.index != index {
                        return Err(StorageError::Corruption {
                            cf: RAFT_LOG_CF,
                            key: keys::display_key(&key),
                            detail: format!("entry says index {}", entry.index),
                        });
                    }
                    bytes += entry.size_bytes();
                    if !out.is_empty() && bytes > max_bytes {
                        break;
                    }
                    out.push(entry);
                    expected += 1;
                }
                _ => break,
            }
        }
        Ok(out)
    }

    fn hard_state(&self, group: GroupId) -> Result<HardState, StorageError> {
        self.state(group, StateKind::HardState)
    }

    fn snapshot_meta(&self, group: GroupId) -> Result<SnapshotMeta, StorageError> {
        self.state(group, StateKind::SnapshotMeta)
    }

    fn last_index(&self, group: GroupId) -> Result<Index, StorageError> {
        last_log_index(&self.db, group)?.map_or_else(|| Ok(self.snapshot_meta(group)?.index), Ok)
    }

    fn groups(&self) -> Result<Vec<GroupId>, StorageError> {
        let mut groups = std::collections::BTreeSet::new();
        for item in self
            .db
            .iterator_cf(self.cf(RAFT_STATE_CF)?, IteratorMode::Start)
        {
            let (key, _) = item.map_err(|e| engine(&e))?;
            groups.extend(keys::parse_state_group(&key));
        }
        // Skip from group to group through the log instead of reading every entry.
        let log = self.cf(RAFT_LOG_CF)?;
        let mut next = 0u64;
        loop {
            let start = keys::log_key(next, 0);
            let mut iter = self
                .db
                .iterator_cf(log, IteratorMode::From(&start, Direction::Forward));
            let Some(item) = iter.next() else { break };
            let (key, _) = item.map_err(|e| engine(&e))?;
            let Some((group, _)) = keys::parse_log_key(&key) else {
                break;
            };
            groups.insert(group);
            match group.checked_add(1) {
                Some(n) => next = n,
                None => break,
            }
        }
        Ok(groups.into_iter().collect())
    }
}

/// The last log index of `group` present in the log column family.
pub(crate) fn last_log_index(db: &DB, group: GroupId) -> Result<Option<Index>, StorageError> {
    let cf = cf_handle(db, RAFT_LOG_CF)?;
    let end = keys::log_key(group, u64::MAX);
    let mut iter = db.iterator_cf(cf, IteratorMode::From(&end, Direction::Reverse));
    match iter.next() {
        Some(item) => {
            let (key, _) = item.map_err(|e| engine(&e))?;
            Ok(keys::parse_log_key(&key)
                .filter(|(g, _)| *g == group)
                .map(|(_, index)| index))
        }
        None => Ok(None),
    }
}

/// A column family's handle, or an error naming the missing one.
pub(crate) fn cf_handle<'a>(
    db: &'a DB,
    name: &str,
) -> Result<&'a rocksdb::ColumnFamily, StorageError> {
    db.cf_handle(name)
        .ok_or_else(|| StorageError::Engine(format!("column family {name} is missing")))
}

pub(crate) fn engine(e: &rocksdb::Error) -> StorageError {
    StorageError::Engine(e.to_string())
}

fn not_a_store(path: &Path, why: &str) -> StorageError {
    StorageError::NotAFlotillaStore {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// Returns whether a RocksDB store already exists in `path`; refuses a
/// non-empty directory without one, or a path that is a file.
fn check_directory(path: &Path) -> Result<bool, StorageError> {
    if !path.exists() {
        return Ok(false);
    }
    if !path.is_dir() {
        return Err(not_a_store(path, "it is not a directory"));
    }
    if path.join("CURRENT").is_file() {
        return Ok(true);
    }
    let mut contents = std::fs::read_dir(path)
        .map_err(|e| StorageError::Engine(format!("cannot read {}: {e}", path.display())))?;
    if contents.next().is_some() {
        return Err(not_a_store(
            path,
            "the directory is not empty and holds no store",
        ));
    }
    Ok(false)
}

fn db_options(durability: Durability) -> Options {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    // Without a WAL (Durability::None) column families flush separately;
    // atomic flush keeps the log, its state and the data in step.
    options.set_atomic_flush(true);
    // Under `Sync`, unsynced writes (the state machine's applies) wait in
    // RocksDB's WAL buffer for the next synced write instead of costing a
    // write(2) each. Not under `Buffered`: its acknowledged writes must
    // reach the OS at once to survive a kill -9.
    if durability == Durability::Sync {
        options.set_manual_wal_flush(true);
    }
    prealloc::configure(&mut options, durability);
    options
}

fn open_db(path: &Path, durability: Durability) -> Result<DB, StorageError> {
    let options = db_options(durability);
    let mut cfs: Vec<String> = if path.join("CURRENT").is_file() {
        DB::list_cf(&options, path).map_err(|e| not_a_store(path, e.as_ref()))?
    } else {
        Vec::new()
    };
    for name in COLUMN_FAMILIES {
        if !cfs.iter().any(|c| c == name) {
            cfs.push(name.to_string());
        }
    }
    let descriptors = cfs
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    DB::open_cf_descriptors(&options, path, descriptors).map_err(|e| engine(&e))
}

/// Creates a new store in a sibling directory and renames it into place once
/// its format marker is durable, so a crash during creation leaves either no
/// store or a whole one — never a directory every later open refuses.
fn create(
    path: &Path,
    durability: Durability,
    shard_count: Option<u16>,
) -> Result<(), StorageError> {
    let io = |what: &str, e: std::io::Error| {
        StorageError::Engine(format!("cannot {what} {}: {e}", path.display()))
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| io("create the parent of", e))?;
    let name = path
        .file_name()
        .ok_or_else(|| not_a_store(path, "it names no directory"))?;
    let mut staging_name = name.to_os_string();
    staging_name.push(".creating");
    let staging = parent.join(staging_name);
    // Left by a creation that crashed: it never held anything acknowledged.
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| io("clear the staging directory of", e))?;
    }
    {
        let db = open_db(&staging, durability)?;
        let mut marker = FORMAT_MAGIC.to_vec();
        marker.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        let mut batch = WriteBatch::default();
        batch.put(FORMAT_KEY, marker);
        if let Some(count) = shard_count {
            batch.put(SHARD_COUNT_KEY, count.to_be_bytes());
        }
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        db.write_opt(batch, &opts).map_err(|e| engine(&e))?;
    }
    // rename(2) replaces an empty directory atomically.
    std::fs::rename(&staging, path).map_err(|e| io("move the new store into", e))?;
    std::fs::File::open(&parent)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| io("sync the directory holding", e))?;
    Ok(())
}

fn check_format(db: &DB, path: &Path) -> Result<(), StorageError> {
    match db.get(FORMAT_KEY).map_err(|e| engine(&e))? {
        Some(marker) => {
            if marker.len() != 8 || &marker[..4] != FORMAT_MAGIC {
                return Err(not_a_store(path, "its format marker is not flotilla's"));
            }
            let found = u32::from_be_bytes([marker[4], marker[5], marker[6], marker[7]]);
            if found > FORMAT_VERSION {
                return Err(StorageError::NewerFormat {
                    path: path.to_path_buf(),
                    found,
                    supported: FORMAT_VERSION,
                });
            }
            Ok(())
        }
        None => Err(not_a_store(
            path,
            "a RocksDB database without flotilla's format marker",
        )),
    }
}
