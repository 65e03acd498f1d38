//! The RocksDB log store on a real disk: conformance, recovery, refusal of
//! foreign directories and newer formats, corruption detection, group commit
//! under concurrency, and poisoning on a full disk.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::sync::Arc;
use std::time::Duration;

use flotilla_wal::keys::{log_key, RAFT_LOG_CF};
use flotilla_wal::{
    conformance, Durability, Entry, EntryPayload, HardState, LogStore, LogWrite, OpenOptions,
    RocksLogStore, StorageError, DEFAULT_WRITER_POLL, MAX_WRITER_POLL,
};

fn entry(index: u64, term: u64, len: usize) -> Entry {
    Entry {
        index,
        term,
        payload: EntryPayload::Normal(vec![index as u8; len]),
    }
}

/// The durabilities that do not sync every write.
fn unsynced() -> [Durability; 2] {
    [
        Durability::Buffered {
            max_delay: std::time::Duration::from_millis(2),
        },
        Durability::None,
    ]
}

fn append(group: u64, entries: Vec<Entry>) -> Vec<LogWrite> {
    vec![LogWrite {
        group,
        entries,
        ..LogWrite::default()
    }]
}

/// Writer polls to try: none (what the engine uses), the default, the most.
fn writer_polls() -> [Duration; 3] {
    [Duration::ZERO, DEFAULT_WRITER_POLL, MAX_WRITER_POLL]
}

fn open_polling(dir: &std::path::Path, writer_poll: Duration) -> RocksLogStore {
    let options = OpenOptions {
        writer_poll,
        ..OpenOptions::new(Durability::Sync)
    };
    RocksLogStore::open_with(dir, options).unwrap()
}

#[test]
fn passes_the_conformance_suite() {
    let root = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicU32::new(0);
    for poll in writer_polls() {
        conformance::run_all(|| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            open_polling(&root.path().join(format!("s{n}")), poll)
        });
    }
}

#[test]
fn a_writer_poll_above_the_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = OpenOptions {
        writer_poll: MAX_WRITER_POLL + Duration::from_nanos(1),
        ..OpenOptions::new(Durability::Sync)
    };
    let refused = RocksLogStore::open_with(dir.path(), options)
        .err()
        .expect("a poll over the limit must be refused");
    assert!(
        refused.to_string().contains("writer poll"),
        "unclear error: {refused}"
    );
}

#[test]
fn everything_written_is_there_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let hs = HardState {
        term: 4,
        vote: 2,
        commit: 3,
    };
    {
        let store = RocksLogStore::open(dir.path(), Durability::Sync).unwrap();
        store
            .write(append(1, (1..=5).map(|i| entry(i, 4, 100)).collect()))
            .unwrap();
        store
            .write(vec![LogWrite {
                group: 1,
                hard_state: Some(hs),
                ..LogWrite::default()
            }])
            .unwrap();
        store.close();
    }
    let store = RocksLogStore::open(dir.path(), Durability::Sync).unwrap();
    assert_eq!(store.hard_state(1).unwrap(), hs);
    assert_eq!(
        store.entries(1, 1, 5, u64::MAX).unwrap(),
        (1..=5).map(|i| entry(i, 4, 100)).collect::<Vec<_>>()
    );
}

/// The store's WAL files: (number, bytes), the live one last.
fn wal_files(dir: &std::path::Path) -> Vec<(u64, u64)> {
    let mut files: Vec<(u64, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let number = name.strip_suffix(".log")?.parse().ok()?;
            Some((number, e.metadata().unwrap().len()))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_preallocated_wal_is_written_over_and_loses_nothing_across_reopens() {
    const PREALLOCATION: u64 = 4 << 20;
    let dir = tempfile::tempdir().unwrap();
    let options = OpenOptions {
        wal_preallocation: PREALLOCATION,
        ..OpenOptions::new(Durability::Sync)
    };
    let mut expected = Vec::new();
    for round in 0..3u64 {
        let store = RocksLogStore::open_with(dir.path(), options).unwrap();
        // The live WAL is the filled file, reused: writes overwrite it.
        let (_, live_bytes) = *wal_files(dir.path()).last().unwrap();
        assert!(
            live_bytes >= PREALLOCATION,
            "round {round}: the live WAL holds {live_bytes} bytes"
        );
        assert_eq!(store.entries(1, 1, u64::MAX, u64::MAX).unwrap(), expected);
        let first = round * 200 + 1;
        let entries: Vec<Entry> = (first..first + 200).map(|i| entry(i, 1, 300)).collect();
        for chunk in entries.chunks(10) {
            store.write(append(1, chunk.to_vec())).unwrap();
        }
        expected.extend(entries);
        store.close();
    }
    // Opens without preallocation, and without WAL reuse, read it the same way.
    for durability in [Durability::Sync, Durability::None] {
        let store = RocksLogStore::open(dir.path(), durability).unwrap();
        assert_eq!(
            store.entries(1, 1, u64::MAX, u64::MAX).unwrap(),
            expected,
            "{durability:?}"
        );
        store.close();
    }

    // Over the limit is refused; without a WAL there is nothing to preallocate.
    let oversized = OpenOptions {
        wal_preallocation: flotilla_wal::MAX_WAL_PREALLOCATION + 1,
        ..options
    };
    let other = tempfile::tempdir().unwrap();
    assert!(RocksLogStore::open_with(other.path(), oversized).is_err());
    let unlogged = OpenOptions {
        durability: Durability::None,
        ..options
    };
    let store = RocksLogStore::open_with(other.path(), unlogged).unwrap();
    store.write(append(1, vec![entry(1, 1, 10)])).unwrap();
    assert_eq!(store.last_index(1).unwrap(), 1);
    assert!(wal_files(other.path())
        .iter()
        .all(|&(_, bytes)| bytes < PREALLOCATION));
}

#[test]
fn buffered_and_none_durability_still_read_back() {
    for durability in unsynced() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksLogStore::open(dir.path(), durability).unwrap();
        store
            .write(append(3, vec![entry(1, 1, 10), entry(2, 1, 10)]))
            .unwrap();
        assert_eq!(store.last_index(3).unwrap(), 2, "{durability:?}");
    }
}

#[test]
fn writes_made_on_the_calling_thread_are_checked_and_durable_like_submitted_ones() {
    for durability in [Durability::Sync].into_iter().chain(unsynced()) {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksLogStore::open(dir.path(), durability).unwrap();
        store
            .write_now(append(1, (1..=3).map(|i| entry(i, 2, 50)).collect()))
            .unwrap();
        // Inline and queued writes of one group stay in step.
        store.write(append(1, vec![entry(4, 2, 50)])).unwrap();
        store.write_now(append(1, vec![entry(5, 2, 50)])).unwrap();
        // A gap is refused before a byte is written, as through the writer.
        assert!(
            matches!(
                store.write_now(append(1, vec![entry(9, 2, 50)])),
                Err(StorageError::NonContiguous {
                    first: 9,
                    last: 5,
                    ..
                })
            ),
            "{durability:?}"
        );
        assert_eq!(store.last_index(1).unwrap(), 5, "{durability:?}");
        store.close();
        if durability == Durability::Sync {
            let store = RocksLogStore::open(dir.path(), durability).unwrap();
            assert_eq!(
                store.entries(1, 1, 5, u64::MAX).unwrap(),
                (1..=5).map(|i| entry(i, 2, 50)).collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn refuses_a_directory_that_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let err = RocksLogStore::open(dir.path(), Durability::Sync)
        .err()
        .expect("must refuse");
    assert!(
        matches!(err, StorageError::NotAFlotillaStore { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("not a flotilla store"), "{err}");
    assert!(
        dir.path().join("notes.txt").exists(),
        "the user's file was touched"
    );

    let file = dir.path().join("notes.txt");
    let err = RocksLogStore::open(&file, Durability::Sync)
        .err()
        .expect("must refuse a file");
    assert!(
        matches!(err, StorageError::NotAFlotillaStore { .. }),
        "{err}"
    );
}

#[test]
fn refuses_a_plain_rocksdb_and_a_newer_format() {
    let plain = tempfile::tempdir().unwrap();
    {
        let db = rocksdb::DB::open_default(plain.path()).unwrap();
        db.put(b"k", b"v").unwrap();
    }
    let err = RocksLogStore::open(plain.path(), Durability::Sync)
        .err()
        .expect("must refuse");
    assert!(
        matches!(err, StorageError::NotAFlotillaStore { .. }),
        "{err}"
    );

    let newer = tempfile::tempdir().unwrap();
    RocksLogStore::open(newer.path(), Durability::Sync)
        .unwrap()
        .close();
    {
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), newer.path()).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), newer.path(), cfs).unwrap();
        let mut marker = b"FLOT".to_vec();
        marker.extend_from_slice(&99u32.to_be_bytes());
        db.put(flotilla_wal::keys::FORMAT_KEY, marker).unwrap();
    }
    let err = RocksLogStore::open(newer.path(), Durability::Sync)
        .err()
        .expect("must refuse");
    assert!(
        matches!(err, StorageError::NewerFormat { found: 99, .. }),
        "{err}"
    );
}

#[test]
fn a_flipped_byte_is_reported_with_column_family_and_key() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RocksLogStore::open(dir.path(), Durability::Sync).unwrap();
        store
            .write(append(7, (1..=3).map(|i| entry(i, 1, 50)).collect()))
            .unwrap();
    }
    {
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), cfs).unwrap();
        let cf = db.cf_handle(RAFT_LOG_CF).unwrap();
        let key = log_key(7, 2);
        let mut value = db.get_cf(cf, key).unwrap().unwrap();
        let last = value.len() - 1;
        value[last] ^= 0x01;
        db.put_cf(cf, key, value).unwrap();
    }
    let store = RocksLogStore::open(dir.path(), Durability::Sync).unwrap();
    let err = store
        .entries(7, 1, 3, u64::MAX)
        .expect_err("corruption must be detected");
    match &err {
        StorageError::Corruption { cf, key, .. } => {
            assert_eq!(*cf, RAFT_LOG_CF);
            assert_eq!(key, &flotilla_wal::keys::display_key(&log_key(7, 2)));
        }
        other => panic!("expected corruption, got {other}"),
    }
    assert!(err.is_fatal());
}

#[test]
fn concurrent_writers_of_many_groups_all_complete_in_order() {
    for poll in writer_polls() {
        concurrent_writers_complete_in_order(poll);
    }
}

fn concurrent_writers_complete_in_order(writer_poll: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open_polling(dir.path(), writer_poll));
    let threads: Vec<_> = (1..=8u64)
        .map(|group| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 1..=200 {
                    store.write(append(group, vec![entry(i, 1, 256)])).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for group in 1..=8 {
        assert_eq!(store.last_index(group).unwrap(), 200);
        assert_eq!(store.entries(group, 1, 200, u64::MAX).unwrap().len(), 200);
    }
    let groups = store.groups().unwrap();
    assert_eq!(groups, (1..=8).collect::<Vec<_>>());
}

/// A write the OS refuses makes the store poisoned: it refuses every later
/// write with a clear error instead of carrying on. The refusal comes from a
/// file-size limit (RLIMIT_FSIZE, so `write` fails with EFBIG exactly as it
/// would fail with ENOSPC on a full disk), set in a child process running
/// [`full_disk_child`] so the limit touches nothing else, and needs no root.
/// The child also checks that a WAL preallocation the disk cannot hold
/// fails the open with a clear error.
#[test]
fn full_disk_poisons_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "full_disk_child", "--nocapture"])
        .env("FLOTILLA_FULL_DISK_DIR", dir.path())
        .output()
        .expect("running the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("poisoned as expected"),
        "the child did not see the store poisoned:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The child half of [`full_disk_poisons_the_store`]; run alone it does nothing useful.
#[test]
#[ignore = "run by full_disk_poisons_the_store in a child process"]
fn full_disk_child() {
    let dir = std::path::PathBuf::from(
        std::env::var("FLOTILLA_FULL_DISK_DIR").expect("started by full_disk_poisons_the_store"),
    );
    // From here on no file of this process may grow past 2 MiB; the WAL will.
    // SAFETY: setrlimit and signal with valid arguments have no memory-safety
    // preconditions; ignoring SIGXFSZ turns the over-limit write into EFBIG.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let limit = libc::rlimit {
            rlim_cur: 2 << 20,
            rlim_max: libc::RLIM_INFINITY,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
    // A WAL preallocation the disk cannot hold refuses the open, naming the
    // store and the way out; the store then opens without one.
    let preallocating = OpenOptions {
        wal_preallocation: 8 << 20,
        ..OpenOptions::new(Durability::Sync)
    };
    let refused = RocksLogStore::open_with(dir.join("db"), preallocating)
        .err()
        .expect("an 8 MiB preallocation must cross a 2 MiB file limit")
        .to_string();
    assert!(
        refused.contains("cannot preallocate")
            && refused.contains(&dir.join("db").display().to_string())
            && refused.contains("preallocation of 0"),
        "{refused}"
    );
    let store = RocksLogStore::open(dir.join("db"), Durability::Sync).unwrap();
    let mut first_error = None;
    for i in 1..=2000u64 {
        if let Err(e) = store.write(append(1, vec![entry(i, 1, 16 * 1024)])) {
            first_error = Some(e);
            break;
        }
    }
    let err = first_error.expect("32 MB of writes must cross a 2 MiB file limit");
    assert!(matches!(err, StorageError::Poisoned { .. }), "{err}");
    let again = store.write(vec![LogWrite {
        group: 2,
        hard_state: Some(HardState {
            term: 1,
            vote: 1,
            commit: 0,
        }),
        ..LogWrite::default()
    }]);
    assert!(
        matches!(again, Err(StorageError::Poisoned { .. })),
        "a poisoned store accepted a write: {again:?}"
    );
    assert!(again.unwrap_err().to_string().contains("restart the node"));
    println!("poisoned as expected");
}

/// A crash while a new store was being created leaves only its staging
/// directory; the next open clears it and creates the store, instead of
/// refusing a half-made directory forever.
#[test]
fn a_creation_cut_short_by_a_crash_is_redone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let staging = dir.path().join("store.creating");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("LOG"), b"half-made").unwrap();
    {
        let store = RocksLogStore::open(&path, Durability::Sync).unwrap();
        store.write(append(1, vec![entry(1, 1, 8)])).unwrap();
    }
    assert!(!staging.exists(), "the staging directory was left behind");
    let store = RocksLogStore::open(&path, Durability::Sync).unwrap();
    assert_eq!(store.last_index(1).unwrap(), 1);
}
