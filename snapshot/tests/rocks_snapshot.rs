//! The RocksDB snapshot store on real RocksDB: conformance, consistent builds
//! under concurrent applies, atomic install, resumed staging after a restart,
//! and corruption caught before anything is installed.

use std::sync::Arc;

use flotilla_snapshot::conformance::{self, Harness};
use flotilla_snapshot::image::{encode_image, Frame, ImageReader, Pair};
use flotilla_snapshot::{
    AppliedState, DataOp, GroupData, RocksSnapshotStore, SnapshotError, SnapshotMeta,
    SnapshotStore, StorageError,
};
use flotilla_wal::keys::{self, SNAPSHOT_CF};
use flotilla_wal::{Durability, LogStore, LogWrite, Membership, RocksLogStore};
use tempfile::TempDir;

const GROUP: u64 = 3;

fn open(dir: &TempDir) -> Arc<RocksLogStore> {
    Arc::new(RocksLogStore::open(dir.path().join("db"), Durability::Sync).expect("open"))
}

fn applied(meta: &SnapshotMeta) -> AppliedState {
    AppliedState {
        index: meta.index,
        term: meta.term,
        membership: meta.membership.clone(),
        sessions: b"client 7 seq 3".to_vec(),
    }
}

fn pairs(variant: u8, n: usize) -> Vec<Pair> {
    (0..n)
        .map(|i| {
            (
                format!("key{i:05}").into_bytes(),
                vec![variant.wrapping_add(i as u8); 1 + i % 40],
            )
        })
        .collect()
}

/// Reads a whole snapshot through `read_chunk` in chunks of `max` bytes.
fn read_all(store: &RocksSnapshotStore, meta: &SnapshotMeta, max: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let chunk = store
            .read_chunk(meta, out.len() as u64, max)
            .expect("read chunk");
        assert!(chunk.data.len() as u64 <= max, "chunk over the limit");
        out.extend(chunk.data);
        if chunk.done {
            return out;
        }
    }
}

fn decode(image: &[u8]) -> (AppliedState, Vec<Pair>) {
    let mut reader = ImageReader::new();
    let mut header = None;
    let mut out = Vec::new();
    for frame in reader.feed(image).expect("decode") {
        match frame {
            Frame::Header(h) => header = Some(h),
            Frame::Pair(k, v) => out.push((k, v)),
        }
    }
    reader.finish().expect("complete image");
    (header.expect("header"), out)
}

struct RocksHarness {
    dirs: std::sync::Mutex<Vec<TempDir>>,
}

impl Harness for RocksHarness {
    type Store = RocksSnapshotStore;

    fn fresh(&self) -> (RocksSnapshotStore, Vec<u8>) {
        let dir = TempDir::new().expect("tempdir");
        let log = open(&dir);
        let meta = conformance::sample_snapshot();
        let data = GroupData::new(Arc::clone(&log), GROUP);
        let ops = pairs(0, 20)
            .into_iter()
            .map(|(k, v)| DataOp::Put(k, v))
            .collect();
        data.apply(&applied(&meta), ops).expect("apply");
        let mut store = RocksSnapshotStore::new(log, GROUP, 64);
        assert_eq!(store.build().expect("build"), meta);
        let image = read_all(&store, &meta, 1000);
        self.dirs.lock().expect("dirs").push(dir);
        (store, image)
    }

    fn image(&self, meta: &SnapshotMeta, variant: u8) -> Vec<u8> {
        encode_image(&applied(meta), &pairs(variant, 5)).expect("encode")
    }
}

#[test]
fn passes_the_conformance_suite() {
    conformance::run_all(&RocksHarness {
        dirs: std::sync::Mutex::new(Vec::new()),
    });
}

#[test]
fn a_build_is_one_consistent_image_while_applies_go_on() {
    let dir = TempDir::new().expect("tempdir");
    let log = open(&dir);
    let data = GroupData::new(Arc::clone(&log), GROUP);
    let membership = Membership::with_voters([1, 2, 3]);
    // Apply k sets key k%50 to k and records applied index k.
    let apply = |k: u64| {
        let state = AppliedState {
            index: k,
            term: 1,
            membership: membership.clone(),
            sessions: Vec::new(),
        };
        let key = format!("k{:02}", k % 50).into_bytes();
        data.apply(&state, vec![DataOp::Put(key, k.to_be_bytes().to_vec())])
            .expect("apply");
    };
    for k in 1..=100 {
        apply(k);
    }
    let mut store = RocksSnapshotStore::new(Arc::clone(&log), GROUP, 128);
    let (meta, image) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            for k in 101..=3000 {
                apply(k);
            }
        });
        let mut taken = Vec::new();
        for _ in 0..5 {
            let meta = store.build().expect("build");
            taken.push((meta.clone(), read_all(&store, &meta, 100)));
        }
        writer.join().expect("writer");
        taken.pop().expect("one build")
    });
    let (header, pairs) = decode(&image);
    assert_eq!(header.index, meta.index);
    // The model after `index` applies: key k%50 holds the last k that set it.
    let mut expected = std::collections::BTreeMap::new();
    for k in 1..=header.index {
        expected.insert(
            format!("k{:02}", k % 50).into_bytes(),
            k.to_be_bytes().to_vec(),
        );
    }
    let got: std::collections::BTreeMap<_, _> = pairs.into_iter().collect();
    assert_eq!(
        got, expected,
        "the image at index {} mixes data from other indexes",
        header.index
    );
}

#[test]
fn install_replaces_data_applied_state_and_log_at_once() {
    let (src_dir, dst_dir) = (TempDir::new().expect("t"), TempDir::new().expect("t"));
    let (src_log, dst_log) = (open(&src_dir), open(&dst_dir));
    let meta = SnapshotMeta {
        index: 500,
        term: 7,
        membership: Membership::with_voters([1, 2, 3]),
    };
    let src_data = GroupData::new(Arc::clone(&src_log), GROUP);
    let new_pairs = pairs(9, 3000);
    src_data
        .apply(
            &applied(&meta),
            new_pairs
                .iter()
                .cloned()
                .map(|(k, v)| DataOp::Put(k, v))
                .collect(),
        )
        .expect("apply");
    let mut src = RocksSnapshotStore::new(src_log, GROUP, 4096);
    assert_eq!(src.build().expect("build"), meta);

    // The receiver has older data, another group's data, and a log.
    let dst_data = GroupData::new(Arc::clone(&dst_log), GROUP);
    let other = GroupData::new(Arc::clone(&dst_log), GROUP + 1);
    let old_meta = SnapshotMeta {
        index: 20,
        term: 2,
        membership: Membership::with_voters([1, 2, 3]),
    };
    dst_data
        .apply(
            &applied(&old_meta),
            vec![DataOp::Put(b"stale".to_vec(), b"x".to_vec())],
        )
        .expect("apply");
    other
        .apply(
            &applied(&old_meta),
            vec![DataOp::Put(b"keep".to_vec(), b"y".to_vec())],
        )
        .expect("apply");
    let entries = (1..=30)
        .map(|i| flotilla_wal::Entry {
            index: i,
            term: 2,
            payload: flotilla_wal::EntryPayload::Blank,
        })
        .collect();
    dst_log
        .write(vec![LogWrite {
            group: GROUP,
            entries,
            ..LogWrite::default()
        }])
        .expect("log");

    let mut dst = RocksSnapshotStore::new(Arc::clone(&dst_log), GROUP, 4096);
    let mut offset = 0u64;
    loop {
        let chunk = src.read_chunk(&meta, offset, 1000).expect("read");
        dst.stage_chunk(&meta, offset, &chunk.data).expect("stage");
        offset += chunk.data.len() as u64;
        if chunk.done {
            break;
        }
    }
    dst.install_staged(&meta).expect("install");

    assert_eq!(
        dst_data.pairs().expect("pairs"),
        new_pairs,
        "data after install"
    );
    assert_eq!(dst_data.applied().expect("applied"), applied(&meta));
    assert_eq!(
        dst_data.get(b"stale").expect("get"),
        None,
        "old data survived"
    );
    assert_eq!(
        other.get(b"keep").expect("get"),
        Some(b"y".to_vec()),
        "another group's data was touched"
    );
    assert_eq!(dst_log.snapshot_meta(GROUP).expect("meta"), meta);
    assert_eq!(dst_log.last_index(GROUP).expect("last"), 500);
    assert!(dst_log
        .entries(GROUP, 1, 30, u64::MAX)
        .expect("e")
        .is_empty());
    assert_eq!(dst.current(), Some(meta.clone()));
    assert_eq!(dst.staged(), None);
    // The installed snapshot can be forwarded as it came.
    assert_eq!(read_all(&dst, &meta, 777), read_all(&src, &meta, 5000));
}

#[test]
fn staging_survives_a_restart_and_resumes() {
    let dir = TempDir::new().expect("tempdir");
    let meta = SnapshotMeta {
        index: 40,
        term: 3,
        membership: Membership::with_voters([1]),
    };
    let image = encode_image(&applied(&meta), &pairs(1, 400)).expect("encode");
    let half = image.len() / 2;
    {
        let log = open(&dir);
        let mut store = RocksSnapshotStore::new(log, GROUP, 1024);
        store.stage_chunk(&meta, 0, &image[..100]).expect("stage");
        store
            .stage_chunk(&meta, 100, &image[100..half])
            .expect("stage");
    }
    let log = open(&dir);
    let mut store = RocksSnapshotStore::new(Arc::clone(&log), GROUP, 1024);
    assert_eq!(store.staged(), Some((meta.clone(), half as u64)));
    store
        .stage_chunk(&meta, half as u64, &image[half..])
        .expect("resume");
    store.install_staged(&meta).expect("install");
    let data = GroupData::new(log, GROUP);
    assert_eq!(data.pairs().expect("pairs"), pairs(1, 400));
}

fn staged_store_with_old_data(
    dir: &TempDir,
) -> (
    Arc<RocksLogStore>,
    RocksSnapshotStore,
    SnapshotMeta,
    Vec<u8>,
) {
    let log = open(dir);
    let old = SnapshotMeta {
        index: 5,
        term: 1,
        membership: Membership::with_voters([1]),
    };
    GroupData::new(Arc::clone(&log), GROUP)
        .apply(
            &applied(&old),
            vec![DataOp::Put(b"old".to_vec(), b"1".to_vec())],
        )
        .expect("apply");
    let meta = SnapshotMeta {
        index: 60,
        term: 4,
        membership: Membership::with_voters([1]),
    };
    let image = encode_image(&applied(&meta), &pairs(2, 50)).expect("encode");
    let store = RocksSnapshotStore::new(Arc::clone(&log), GROUP, 1024);
    (log, store, meta, image)
}

fn assert_old_state_kept(log: &Arc<RocksLogStore>) {
    let data = GroupData::new(Arc::clone(log), GROUP);
    assert_eq!(
        data.applied().expect("applied").index,
        5,
        "applied index moved"
    );
    assert_eq!(
        data.pairs().expect("pairs"),
        vec![(b"old".to_vec(), b"1".to_vec())]
    );
    assert_eq!(log.snapshot_meta(GROUP).expect("meta").index, 0);
}

#[test]
fn a_flipped_byte_in_a_staged_chunk_is_reported_with_its_key() {
    let dir = TempDir::new().expect("tempdir");
    let (log, mut store, meta, image) = staged_store_with_old_data(&dir);
    store.stage_chunk(&meta, 0, &image[..50]).expect("stage");
    store.stage_chunk(&meta, 50, &image[50..]).expect("stage");
    // Flip one byte of the second stored chunk, behind the store's back.
    let db = log.db();
    let cf = db.cf_handle(SNAPSHOT_CF).expect("cf");
    let generation = 1;
    let key = keys::snapshot_chunk_key(GROUP, generation, 50);
    let mut value = db
        .get_cf(cf, key)
        .expect("get")
        .expect("the chunk is stored");
    let last = value.len() - 1;
    value[last] ^= 0x01;
    db.put_cf(cf, key, value).expect("put");

    match store.install_staged(&meta) {
        Err(SnapshotError::Storage(StorageError::Corruption { cf, key: k, .. })) => {
            assert_eq!(cf, SNAPSHOT_CF);
            assert_eq!(k, keys::display_key(&key));
        }
        other => panic!("a corrupt chunk was not reported: {other:?}"),
    }
    assert_old_state_kept(&log);
}

#[test]
fn an_image_failing_its_checksum_is_not_installed() {
    let dir = TempDir::new().expect("tempdir");
    let (log, mut store, meta, mut image) = staged_store_with_old_data(&dir);
    let middle = image.len() / 2;
    image[middle] ^= 0x10; // damaged in transit, stored faithfully
    store.stage_chunk(&meta, 0, &image).expect("stage");
    assert!(
        matches!(
            store.install_staged(&meta),
            Err(SnapshotError::Corrupt { .. })
        ),
        "a damaged image was installed"
    );
    assert_old_state_kept(&log);
}

#[test]
fn an_incomplete_image_is_not_installed() {
    let dir = TempDir::new().expect("tempdir");
    let (log, mut store, meta, image) = staged_store_with_old_data(&dir);
    store
        .stage_chunk(&meta, 0, &image[..image.len() - 3])
        .expect("stage");
    assert!(matches!(
        store.install_staged(&meta),
        Err(SnapshotError::Corrupt { .. })
    ));
    assert_old_state_kept(&log);
}

#[test]
fn built_chunks_are_bounded_by_the_default_size() {
    let dir = TempDir::new().expect("tempdir");
    let log = open(&dir);
    let meta = SnapshotMeta {
        index: 9,
        term: 1,
        membership: Membership::with_voters([1]),
    };
    let big: Vec<DataOp> = (0..40u32)
        .map(|i| DataOp::Put(i.to_be_bytes().to_vec(), vec![i as u8; 100_000]))
        .collect();
    GroupData::new(Arc::clone(&log), GROUP)
        .apply(&applied(&meta), big)
        .expect("apply");
    let mut store = RocksSnapshotStore::new(
        Arc::clone(&log),
        GROUP,
        flotilla_snapshot::DEFAULT_CHUNK_BYTES,
    );
    store.build().expect("build");
    let db = log.db();
    let cf = db.cf_handle(SNAPSHOT_CF).expect("cf");
    let mut chunks = 0;
    for item in db.iterator_cf(cf, flotilla_wal::rocksdb::IteratorMode::Start) {
        let (key, value) = item.expect("item");
        if keys::parse_snapshot_chunk_key(&key).is_some() {
            chunks += 1;
            let data: Vec<u8> =
                flotilla_wal::record::decode(SNAPSHOT_CF, &key, &value).expect("chunk");
            assert!(data.len() as u64 <= flotilla_snapshot::DEFAULT_CHUNK_BYTES);
        }
    }
    assert_eq!(chunks, 4, "4 MB of data in 1 MiB chunks");
}
