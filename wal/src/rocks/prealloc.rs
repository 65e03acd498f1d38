//! WAL reuse: RocksDB overwrites retired WAL files instead of appending to
//! new ones, and a store can preallocate the first one at open.
//!
//! An fdatasync after an append must commit the file's new size through the
//! file system's journal, shared by every writer on the disk; one after an
//! overwrite only flushes the data. RocksDB reuses only WAL files retired
//! during the current open, so [`preallocate`] makes one: it fills the open's
//! first WAL with WAL-only filler and retires it with two flushes.

use std::path::Path;

use rocksdb::{FlushOptions, Options, WriteBatch, WriteOptions, DB};

use super::{cf_handle, engine, COLUMN_FAMILIES};
use crate::error::StorageError;
use crate::keys::FORMAT_KEY;
use crate::store::Durability;

/// Retired WAL files kept for reuse. Each is as large as a WAL grows between
/// memtable flushes (tens of MiB), and with atomic flush a WAL retires
/// before the one after the next is needed, so two are enough.
const REUSED_WAL_FILES: usize = 2;
/// Filler written per WriteBatch while preallocating.
const FILLER_CHUNK: usize = 1 << 20;
/// Largest preallocation accepted: 1 GiB.
pub const MAX_WAL_PREALLOCATION: u64 = 1 << 30;

/// Turns WAL reuse on where the durability writes a WAL at all: RocksDB
/// refuses unlogged writes (`Durability::None`) while it reuses WAL files.
pub(crate) fn configure(options: &mut Options, durability: Durability) {
    if durability != Durability::None {
        options.set_recycle_log_file_num(REUSED_WAL_FILES);
    }
}

/// Writes `bytes` of filler to the WAL and retires that WAL, so the next
/// one reuses its file. Runs at open, before anything else writes.
pub(crate) fn preallocate(
    db: &DB,
    path: &Path,
    durability: Durability,
    bytes: u64,
) -> Result<(), StorageError> {
    if bytes == 0 || durability == Durability::None {
        return Ok(());
    }
    // Only filler is at stake, so a full disk loses nothing; say what to do.
    fill_and_retire(db, bytes).map_err(|e| {
        StorageError::Engine(format!(
            "cannot preallocate {bytes} bytes of WAL in {}: {e}; open with a WAL preallocation of 0 to skip it",
            path.display()
        ))
    })
}

fn fill_and_retire(db: &DB, bytes: u64) -> Result<(), StorageError> {
    let unsynced = WriteOptions::default();
    let filler = vec![0u8; FILLER_CHUNK];
    let mut written = 0u64;
    while written < bytes {
        let take = (bytes - written).min(FILLER_CHUNK as u64) as usize;
        // Log data goes to the WAL only; recovery skips it.
        let mut batch = WriteBatch::default();
        batch.put_log_data(&filler[..take]);
        db.write_opt(batch, &unsynced).map_err(|e| engine(&e))?;
        written += take as u64;
    }
    // A flush switches to a new WAL only if a memtable holds something, and
    // the WAL it leaves is retired (kept for reuse) only once every column
    // family has flushed past it. Rewriting the format marker with its own
    // value gives the memtable something without changing any data. The
    // first flush retires the filled WAL while its successor is already
    // created; the second makes a new successor, which reuses the filled file.
    let marker = db
        .get(FORMAT_KEY)
        .map_err(|e| engine(&e))?
        .ok_or_else(|| StorageError::Engine("the store lost its format marker".into()))?;
    let cfs = COLUMN_FAMILIES
        .iter()
        .map(|name| cf_handle(db, name))
        .collect::<Result<Vec<_>, _>>()?;
    for _ in 0..2 {
        db.put_opt(FORMAT_KEY, &marker, &unsynced)
            .map_err(|e| engine(&e))?;
        db.flush_cfs_opt(&cfs, &FlushOptions::default())
            .map_err(|e| engine(&e))?;
    }
    Ok(())
}
