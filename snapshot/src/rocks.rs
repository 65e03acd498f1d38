//! Snapshots of a group's RocksDB state, and the group's data itself.
//!
//! A group's state machine keeps its data in the `data` column family under
//! `group ‖ key` and its [`AppliedState`] in `raft_state`; [`GroupData::apply`]
//! writes both in one batch through the log writer, so the applied index
//! always matches the data.
//!
//! [`RocksSnapshotStore::build`] reads the data and applied state through one
//! RocksDB snapshot (applies continue meanwhile) and writes the image as
//! checksummed chunks of at most `chunk_bytes` into the `snapshot` column
//! family under a fresh generation; the descriptor naming that generation is
//! written last, so a crash mid-build leaves the previous snapshot current.
//! Received chunks are staged the same way under the *staged* descriptor, each
//! synced, so a cut transfer resumes from the last staged byte. Install
//! verifies the whole image (every chunk's record checksum, the image's end
//! checksum, the header against the metadata), then — in one WriteBatch,
//! through the log writer, together with the log's own install — removes the
//! group's old data, writes the new pairs and applied state, and makes the
//! staged generation current. A crash leaves the old state or the new.

use std::sync::Arc;

use flotilla_wal::failpoint;
use flotilla_wal::keys::{self, SnapshotKind, StateKind, DATA_CF, RAFT_STATE_CF, SNAPSHOT_CF};
use flotilla_wal::record;
use flotilla_wal::rocksdb::{ColumnFamily, Direction, IteratorMode, ReadOptions, WriteBatch, DB};
use flotilla_wal::{Extra, GroupId, LogWrite, RawOp, RawOpKind, RocksLogStore, StorageError};
use serde::{Deserialize, Serialize};

use crate::image::{AppliedState, Frame, ImageReader, ImageWriter, Pair};
use crate::{Chunk, DataOp, GroupStore, SnapshotError, SnapshotMeta, SnapshotStore};

/// Default size of a stored (and sent) chunk: 1 MiB.
pub const DEFAULT_CHUNK_BYTES: u64 = 1 << 20;

/// Where a snapshot's chunks are and how far they go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Descriptor {
    meta: SnapshotMeta,
    generation: u64,
    /// Bytes of the image stored under `generation`.
    bytes: u64,
}

/// One group's state-machine data in the shared RocksDB.
#[derive(Clone)]
pub struct GroupData {
    log: Arc<RocksLogStore>,
    group: GroupId,
}

impl GroupData {
    /// The data of `group` in `log`'s database.
    pub fn new(log: Arc<RocksLogStore>, group: GroupId) -> Self {
        GroupData { log, group }
    }

    /// Applies `ops` and records `applied`, atomically and durably (as the
    /// log store's durability promises).
    pub fn apply(&self, applied: &AppliedState, ops: Vec<DataOp>) -> Result<(), SnapshotError> {
        let mut raw: Vec<RawOp> = ops
            .into_iter()
            .map(|op| RawOp {
                cf: DATA_CF,
                kind: match op {
                    DataOp::Put(key, value) => RawOpKind::Put {
                        key: keys::data_key(self.group, &key),
                        value,
                    },
                    DataOp::Delete(key) => RawOpKind::Delete {
                        key: keys::data_key(self.group, &key),
                    },
                },
            })
            .collect();
        raw.push(RawOp {
            cf: RAFT_STATE_CF,
            kind: RawOpKind::Put {
                key: keys::state_key(self.group, StateKind::Applied).to_vec(),
                value: record::encode(applied),
            },
        });
        Ok(self.log.write_with(Vec::new(), Extra::Ops(raw))?)
    }

    /// Applies `ops` and records `applied` in one batch written to RocksDB's
    /// WAL without a sync (under `Sync`, into RocksDB's WAL buffer): the Raft
    /// log already holds these entries durably, and the next synced write
    /// (any log append, a snapshot build) makes this one durable too. After a crash the group re-applies from
    /// whatever applied index survived, which always matches its data.
    pub fn apply_unsynced(
        &self,
        applied: &AppliedState,
        ops: Vec<DataOp>,
    ) -> Result<(), SnapshotError> {
        let db = self.log.db();
        let data_cf = cf(db, DATA_CF)?;
        let mut batch = WriteBatch::default();
        for op in ops {
            match op {
                DataOp::Put(key, value) => {
                    batch.put_cf(data_cf, keys::data_key(self.group, &key), value)
                }
                DataOp::Delete(key) => batch.delete_cf(data_cf, keys::data_key(self.group, &key)),
            }
        }
        batch.put_cf(
            cf(db, RAFT_STATE_CF)?,
            keys::state_key(self.group, StateKind::Applied),
            record::encode(applied),
        );
        db.write_opt(batch, &self.log.direct_write_options(false))
            .map_err(engine)
    }

    /// Pairs with keys in `start..end` (group-data keys without the group
    /// prefix; an empty `end` means no upper bound), at most `limit` of them.
    pub fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Pair>, SnapshotError> {
        let mut out = Vec::new();
        self.visit(start, end, &mut |key, value| {
            if out.len() >= limit {
                return false;
            }
            out.push((key.to_vec(), value.to_vec()));
            true
        })?;
        Ok(out)
    }

    /// Calls `visit` on the pairs with keys in `start..end` (as
    /// [`scan`](Self::scan)) in key order, all read by one iterator, so at
    /// one consistent point, without holding them in memory; stops when
    /// `visit` returns false.
    pub fn visit(
        &self,
        start: &[u8],
        end: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), SnapshotError> {
        let db = self.log.db();
        let from = keys::data_key(self.group, start);
        let (_, group_end) = keys::data_range(self.group);
        let to = if end.is_empty() {
            group_end
        } else {
            keys::data_key(self.group, end)
        };
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(to);
        for item in db.iterator_cf_opt(
            cf(db, DATA_CF)?,
            options,
            IteratorMode::From(&from, Direction::Forward),
        ) {
            let (key, value) = item.map_err(engine)?;
            if !visit(&key[8..], &value) {
                break;
            }
        }
        Ok(())
    }

    /// What the group has applied (default if nothing yet).
    pub fn applied(&self) -> Result<AppliedState, SnapshotError> {
        read_applied(self.log.db(), self.group, None)
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SnapshotError> {
        let db = self.log.db();
        db.get_cf(cf(db, DATA_CF)?, keys::data_key(self.group, key))
            .map_err(engine)
    }

    /// Every pair of the group, in key order (for tests and small groups).
    pub fn pairs(&self) -> Result<Vec<Pair>, SnapshotError> {
        let db = self.log.db();
        let (start, end) = keys::data_range(self.group);
        let mut out = Vec::new();
        for item in db.iterator_cf(
            cf(db, DATA_CF)?,
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (key, value) = item.map_err(engine)?;
            if *key >= *end {
                break;
            }
            out.push((key[8..].to_vec(), value.to_vec()));
        }
        Ok(out)
    }
}

impl GroupStore for GroupData {
    fn applied(&self) -> Result<AppliedState, SnapshotError> {
        GroupData::applied(self)
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SnapshotError> {
        GroupData::get(self, key)
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Pair>, SnapshotError> {
        GroupData::scan(self, start, end, limit)
    }

    fn apply_unsynced(
        &mut self,
        applied: &AppliedState,
        ops: Vec<DataOp>,
    ) -> Result<(), SnapshotError> {
        GroupData::apply_unsynced(self, applied, ops)
    }
}

/// The RocksDB [`SnapshotStore`] of one group.
pub struct RocksSnapshotStore {
    log: Arc<RocksLogStore>,
    group: GroupId,
    chunk_bytes: u64,
}

impl RocksSnapshotStore {
    /// The snapshot store of `group`, building chunks of `chunk_bytes` (at least 1).
    pub fn new(log: Arc<RocksLogStore>, group: GroupId, chunk_bytes: u64) -> Self {
        RocksSnapshotStore {
            log,
            group,
            chunk_bytes: chunk_bytes.max(1),
        }
    }

    fn db(&self) -> &DB {
        self.log.db()
    }

    /// Writes a batch durably (without a WAL under `Durability::None`, like
    /// everything else then).
    fn write_synced(&self, batch: WriteBatch) -> Result<(), SnapshotError> {
        self.db()
            .write_opt(batch, &self.log.direct_write_options(true))
            .map_err(engine)?;
        Ok(())
    }

    fn descriptor(&self, kind: SnapshotKind) -> Result<Option<Descriptor>, SnapshotError> {
        let db = self.db();
        let key = keys::snapshot_descriptor_key(self.group, kind);
        match db.get_cf(cf(db, SNAPSHOT_CF)?, key).map_err(engine)? {
            Some(bytes) => Ok(Some(record::decode(SNAPSHOT_CF, &key, &bytes)?)),
            None => Ok(None),
        }
    }

    fn next_generation(&self) -> Result<u64, SnapshotError> {
        let current = self.descriptor(SnapshotKind::Current)?;
        let staged = self.descriptor(SnapshotKind::Staged)?;
        Ok(current
            .iter()
            .chain(staged.iter())
            .map(|d| d.generation)
            .max()
            .unwrap_or(0)
            + 1)
    }

    /// Takes a snapshot of the group's current data and applied state, read
    /// through one RocksDB snapshot, and makes it current. Returns its metadata.
    pub fn build(&mut self) -> Result<SnapshotMeta, SnapshotError> {
        let db = self.db();
        let generation = self.next_generation()?;
        let snapshot_cf = cf(db, SNAPSHOT_CF)?;
        // A build cut by a crash may have left chunks under this generation.
        let mut clear = WriteBatch::default();
        delete_generation(&mut clear, snapshot_cf, self.group, generation);
        db.write_opt(clear, &self.log.direct_write_options(false))
            .map_err(engine)?;
        let view = db.snapshot();
        let applied = read_applied(db, self.group, Some(&view))?;
        let meta = SnapshotMeta {
            index: applied.index,
            term: applied.term,
            membership: applied.membership.clone(),
        };
        let mut writer = ImageWriter::new(&applied)?;
        let mut offset = 0u64;
        let unsynced = self.log.direct_write_options(false);
        let mut store_chunks = |bytes: &mut Vec<u8>, all: bool| -> Result<(), SnapshotError> {
            while bytes.len() as u64 >= self.chunk_bytes || (all && !bytes.is_empty()) {
                let take = bytes.len().min(self.chunk_bytes as usize);
                let rest = bytes.split_off(take);
                let key = keys::snapshot_chunk_key(self.group, generation, offset);
                db.put_cf_opt(snapshot_cf, key, record::encode(bytes), &unsynced)
                    .map_err(engine)?;
                offset += take as u64;
                *bytes = rest;
            }
            Ok(())
        };
        let mut pending = Vec::new();
        let mut options = ReadOptions::default();
        options.set_snapshot(&view);
        let (start, end) = keys::data_range(self.group);
        options.set_iterate_upper_bound(end);
        for item in db.iterator_cf_opt(
            cf(db, DATA_CF)?,
            options,
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (key, value) = item.map_err(engine)?;
            writer.pair(&key[8..], &value)?;
            if writer.ready() as u64 >= self.chunk_bytes {
                pending.extend(writer.take());
                store_chunks(&mut pending, false)?;
            }
        }
        pending.extend(writer.take());
        pending.extend(writer.finish());
        store_chunks(&mut pending, true)?;
        let bytes = offset;
        drop(view);
        // The descriptor last, synced (which makes the chunks before it durable
        // too): until then the previous snapshot stays current.
        let old = self.descriptor(SnapshotKind::Current)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(
            snapshot_cf,
            keys::snapshot_descriptor_key(self.group, SnapshotKind::Current),
            record::encode(&Descriptor {
                meta: meta.clone(),
                generation,
                bytes,
            }),
        );
        if let Some(old) = old {
            delete_generation(&mut batch, snapshot_cf, self.group, old.generation);
        }
        self.write_synced(batch)?;
        Ok(meta)
    }

    /// Reads and checks the whole staged image, returning its header.
    fn verify_staged(&self, staged: &Descriptor) -> Result<AppliedState, SnapshotError> {
        let mut reader = ImageReader::new();
        let mut header = None;
        for_each_chunk(self.db(), self.group, staged.generation, |_, data| {
            for frame in reader.feed(&data)? {
                if let Frame::Header(applied) = frame {
                    header = Some(applied);
                }
            }
            Ok(())
        })?;
        reader.finish()?;
        let applied = header.ok_or_else(|| SnapshotError::Corrupt {
            detail: "the staged image has no header".into(),
        })?;
        let meta = &staged.meta;
        if applied.index != meta.index
            || applied.term != meta.term
            || applied.membership != meta.membership
        {
            return Err(SnapshotError::Corrupt {
                detail: format!(
                    "the staged image was taken at index {} term {}, not the announced index {} term {}",
                    applied.index, applied.term, meta.index, meta.term
                ),
            });
        }
        Ok(applied)
    }
}

impl SnapshotStore for RocksSnapshotStore {
    fn current(&self) -> Option<SnapshotMeta> {
        self.descriptor(SnapshotKind::Current)
            .ok()
            .flatten()
            .map(|d| d.meta)
    }

    fn read_chunk(
        &self,
        meta: &SnapshotMeta,
        offset: u64,
        max_bytes: u64,
    ) -> Result<Chunk, SnapshotError> {
        let unavailable = SnapshotError::Unavailable {
            index: meta.index,
            term: meta.term,
        };
        let db = self.db();
        let snapshot_cf = cf(db, SNAPSHOT_CF)?;
        // Descriptor and chunks through one view: a build or install that
        // replaces this snapshot meanwhile makes it unavailable, not torn.
        let view = db.snapshot();
        let key = keys::snapshot_descriptor_key(self.group, SnapshotKind::Current);
        let current: Descriptor = match view.get_cf(snapshot_cf, key).map_err(engine)? {
            Some(bytes) => record::decode(SNAPSHOT_CF, &key, &bytes)?,
            None => return Err(unavailable),
        };
        if current.meta != *meta {
            return Err(unavailable);
        }
        let want = max_bytes.min(current.bytes.saturating_sub(offset));
        let mut data = Vec::with_capacity(want as usize);
        // The chunk holding `offset` is the last one starting at or before it.
        let seek = keys::snapshot_chunk_key(self.group, current.generation, offset);
        let mut start = 0;
        let mut back = view.iterator_cf(snapshot_cf, IteratorMode::From(&seek, Direction::Reverse));
        if let Some(item) = back.next() {
            let (key, _) = item.map_err(engine)?;
            if let Some((g, generation, at)) = keys::parse_snapshot_chunk_key(&key) {
                if g == self.group && generation == current.generation {
                    start = at;
                }
            }
        }
        let from = keys::snapshot_chunk_key(self.group, current.generation, start);
        let mut expected = start;
        for item in view.iterator_cf(snapshot_cf, IteratorMode::From(&from, Direction::Forward)) {
            if data.len() as u64 >= want {
                break;
            }
            let (key, value) = item.map_err(engine)?;
            let Some((g, generation, at)) = keys::parse_snapshot_chunk_key(&key) else {
                break;
            };
            if g != self.group || generation != current.generation || at != expected {
                break;
            }
            let chunk: Vec<u8> = record::decode(SNAPSHOT_CF, &key, &value)?;
            expected = at + chunk.len() as u64;
            let skip = offset.saturating_sub(at) as usize;
            let rest = chunk.get(skip..).unwrap_or_default();
            let take = rest.len().min((want - data.len() as u64) as usize);
            data.extend_from_slice(&rest[..take]);
        }
        if (data.len() as u64) < want {
            return Err(SnapshotError::Corrupt {
                detail: format!(
                    "snapshot at index {} is missing bytes from {}",
                    meta.index,
                    offset + data.len() as u64
                ),
            });
        }
        let done = offset + data.len() as u64 >= current.bytes;
        Ok(Chunk { data, done })
    }

    fn stage_chunk(
        &mut self,
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
    ) -> Result<(), SnapshotError> {
        let staged = self
            .descriptor(SnapshotKind::Staged)?
            .filter(|d| d.meta == *meta);
        let db = self.db();
        let snapshot_cf = cf(db, SNAPSHOT_CF)?;
        let mut batch = WriteBatch::default();
        let descriptor = match staged {
            Some(staged) if offset != 0 => {
                if offset != staged.bytes {
                    return Err(SnapshotError::OutOfOrder {
                        offset,
                        staged: staged.bytes,
                    });
                }
                staged
            }
            other => {
                if offset != 0 {
                    return Err(SnapshotError::OutOfOrder { offset, staged: 0 });
                }
                // Restart: drop whatever was staged before.
                let previous = other.or(self.descriptor(SnapshotKind::Staged)?);
                if let Some(previous) = previous {
                    delete_generation(&mut batch, snapshot_cf, self.group, previous.generation);
                }
                let generation = self.next_generation()?;
                // Chunks a crashed build may have left under this generation.
                delete_generation(&mut batch, snapshot_cf, self.group, generation);
                Descriptor {
                    meta: meta.clone(),
                    generation,
                    bytes: 0,
                }
            }
        };
        if !data.is_empty() {
            batch.put_cf(
                snapshot_cf,
                keys::snapshot_chunk_key(self.group, descriptor.generation, offset),
                record::encode(&data.to_vec()),
            );
        }
        batch.put_cf(
            snapshot_cf,
            keys::snapshot_descriptor_key(self.group, SnapshotKind::Staged),
            record::encode(&Descriptor {
                bytes: offset + data.len() as u64,
                ..descriptor
            }),
        );
        failpoint::hit(failpoint::BEFORE_SNAPSHOT_STAGE);
        self.write_synced(batch)?;
        failpoint::hit(failpoint::AFTER_SNAPSHOT_STAGE);
        Ok(())
    }

    fn staged(&self) -> Option<(SnapshotMeta, u64)> {
        self.descriptor(SnapshotKind::Staged)
            .ok()
            .flatten()
            .map(|d| (d.meta, d.bytes))
    }

    fn install_staged(&mut self, meta: &SnapshotMeta) -> Result<(), SnapshotError> {
        let staged = self
            .descriptor(SnapshotKind::Staged)?
            .filter(|d| d.meta == *meta)
            .ok_or(SnapshotError::NotStaged { index: meta.index })?;
        let applied = self.verify_staged(&staged)?;
        let old = self.descriptor(SnapshotKind::Current)?;
        let group = self.group;
        let fill = move |db: &DB, batch: &mut WriteBatch| -> Result<(), StorageError> {
            let as_storage = |e: SnapshotError| match e {
                SnapshotError::Storage(e) => e,
                other => StorageError::Engine(other.to_string()),
            };
            let data_cf = cf(db, DATA_CF).map_err(as_storage)?;
            let snapshot_cf = cf(db, SNAPSHOT_CF).map_err(as_storage)?;
            let state_cf = cf(db, RAFT_STATE_CF).map_err(as_storage)?;
            let (start, end) = keys::data_range(group);
            batch.delete_range_cf(data_cf, start, end);
            let mut reader = ImageReader::new();
            for_each_chunk(db, group, staged.generation, |_, data| {
                for frame in reader.feed(&data)? {
                    if let Frame::Pair(key, value) = frame {
                        batch.put_cf(data_cf, keys::data_key(group, &key), value);
                    }
                }
                Ok(())
            })
            .map_err(as_storage)?;
            reader.finish().map_err(as_storage)?;
            batch.put_cf(
                state_cf,
                keys::state_key(group, StateKind::Applied),
                record::encode(&applied),
            );
            batch.put_cf(
                snapshot_cf,
                keys::snapshot_descriptor_key(group, SnapshotKind::Current),
                record::encode(&staged),
            );
            batch.delete_cf(
                snapshot_cf,
                keys::snapshot_descriptor_key(group, SnapshotKind::Staged),
            );
            if let Some(old) = old {
                delete_generation(batch, snapshot_cf, group, old.generation);
            }
            failpoint::hit(failpoint::BEFORE_SNAPSHOT_INSTALL);
            Ok(())
        };
        let install = LogWrite {
            group,
            install: Some(meta.clone()),
            ..LogWrite::default()
        };
        self.log
            .write_with(vec![install], Extra::Filler(Box::new(fill)))?;
        failpoint::hit(failpoint::AFTER_SNAPSHOT_INSTALL);
        Ok(())
    }
}

fn read_applied(
    db: &DB,
    group: GroupId,
    view: Option<&flotilla_wal::rocksdb::Snapshot<'_>>,
) -> Result<AppliedState, SnapshotError> {
    let key = keys::state_key(group, StateKind::Applied);
    let state_cf = cf(db, RAFT_STATE_CF)?;
    let bytes = match view {
        Some(view) => view.get_cf(state_cf, key),
        None => db.get_cf(state_cf, key),
    }
    .map_err(engine)?;
    match bytes {
        Some(bytes) => Ok(record::decode(RAFT_STATE_CF, &key, &bytes)?),
        None => Ok(AppliedState::default()),
    }
}

/// Calls `f(offset, bytes)` for every stored chunk of a generation, in order,
/// checking each chunk's checksum and that each starts where the last ended.
fn for_each_chunk(
    db: &DB,
    group: GroupId,
    generation: u64,
    mut f: impl FnMut(u64, Vec<u8>) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    let snapshot_cf = cf(db, SNAPSHOT_CF)?;
    let from = keys::snapshot_chunk_key(group, generation, 0);
    let mut expected = 0u64;
    for item in db.iterator_cf(snapshot_cf, IteratorMode::From(&from, Direction::Forward)) {
        let (key, value) = item.map_err(engine)?;
        let Some((g, gen, offset)) = keys::parse_snapshot_chunk_key(&key) else {
            break;
        };
        if g != group || gen != generation {
            break;
        }
        if offset != expected {
            return Err(SnapshotError::Corrupt {
                detail: format!("staged chunks jump from byte {expected} to {offset}"),
            });
        }
        let data: Vec<u8> = record::decode(SNAPSHOT_CF, &key, &value)?;
        expected += data.len() as u64;
        f(offset, data)?;
    }
    Ok(())
}

fn delete_generation(
    batch: &mut WriteBatch,
    snapshot_cf: &ColumnFamily,
    group: GroupId,
    generation: u64,
) {
    batch.delete_range_cf(
        snapshot_cf,
        keys::snapshot_chunk_key(group, generation, 0),
        keys::snapshot_chunk_key(group, generation + 1, 0),
    );
}

fn cf<'a>(db: &'a DB, name: &'static str) -> Result<&'a ColumnFamily, SnapshotError> {
    db.cf_handle(name).ok_or_else(|| {
        SnapshotError::Storage(StorageError::Engine(format!(
            "column family {name} is missing"
        )))
    })
}

fn engine(e: flotilla_wal::rocksdb::Error) -> SnapshotError {
    SnapshotError::Storage(StorageError::Engine(e.to_string()))
}
