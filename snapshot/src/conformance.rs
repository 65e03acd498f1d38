//! Behaviour every [`SnapshotStore`] must show. Each implementation runs
//! [`run_all`] with a factory that returns a store whose current snapshot is
//! [`sample_snapshot`].

use flotilla_wal::Membership;

use crate::{SnapshotError, SnapshotMeta, SnapshotStore};

/// The snapshot a fresh store under test must hold as current.
pub fn sample_snapshot() -> (SnapshotMeta, Vec<u8>) {
    let meta = SnapshotMeta {
        index: 10,
        term: 2,
        membership: Membership::with_voters([1, 2, 3]),
    };
    (meta, (0..=250u8).collect())
}

/// Runs every check; panics with the name of the first that fails.
pub fn run_all<S: SnapshotStore>(make: impl Fn() -> S) {
    reads_in_bounded_chunks_until_done(make());
    refuses_reads_of_a_replaced_snapshot(make());
    staging_resumes_and_installs(make());
    staging_refuses_gaps_and_restarts_for_another_snapshot(make());
    install_requires_the_staged_snapshot(make());
}

fn reads_in_bounded_chunks_until_done<S: SnapshotStore>(store: S) {
    let (meta, image) = sample_snapshot();
    assert_eq!(store.current(), Some(meta.clone()));
    let mut read = Vec::new();
    let mut offset = 0;
    loop {
        let chunk = store
            .read_chunk(&meta, offset, 64)
            .expect("current snapshot is readable");
        assert!(chunk.data.len() <= 64, "chunk larger than asked for");
        offset += chunk.data.len() as u64;
        read.extend(chunk.data);
        if chunk.done {
            break;
        }
    }
    assert_eq!(read, image, "chunks reassemble the snapshot");
}

fn refuses_reads_of_a_replaced_snapshot<S: SnapshotStore>(store: S) {
    let (mut meta, _) = sample_snapshot();
    meta.index += 1;
    assert_eq!(
        store.read_chunk(&meta, 0, 64),
        Err(SnapshotError::Unavailable { index: 11, term: 2 })
    );
}

fn staging_resumes_and_installs<S: SnapshotStore>(mut store: S) {
    let meta = SnapshotMeta {
        index: 20,
        term: 3,
        membership: Membership::with_voters([1, 2]),
    };
    store.stage_chunk(&meta, 0, b"abc").expect("first chunk");
    store.stage_chunk(&meta, 3, b"de").expect("second chunk");
    assert_eq!(store.staged(), Some((meta.clone(), 5)));
    store.install_staged(&meta).expect("install");
    assert_eq!(store.current(), Some(meta.clone()));
    assert_eq!(store.staged(), None);
    let chunk = store
        .read_chunk(&meta, 0, 100)
        .expect("installed snapshot readable");
    assert_eq!(chunk.data, b"abcde");
    assert!(chunk.done);
}

fn staging_refuses_gaps_and_restarts_for_another_snapshot<S: SnapshotStore>(mut store: S) {
    let a = SnapshotMeta {
        index: 20,
        term: 3,
        membership: Membership::with_voters([1]),
    };
    let b = SnapshotMeta {
        index: 30,
        term: 4,
        membership: Membership::with_voters([1]),
    };
    store.stage_chunk(&a, 0, b"xyz").expect("first chunk");
    assert_eq!(
        store.stage_chunk(&a, 5, b"!"),
        Err(SnapshotError::OutOfOrder {
            offset: 5,
            staged: 3
        })
    );
    assert_eq!(
        store.staged(),
        Some((a.clone(), 3)),
        "a refused chunk changes nothing"
    );
    store
        .stage_chunk(&b, 0, b"q")
        .expect("another snapshot restarts staging");
    assert_eq!(store.staged(), Some((b, 1)));
}

fn install_requires_the_staged_snapshot<S: SnapshotStore>(mut store: S) {
    let (current, _) = sample_snapshot();
    let a = SnapshotMeta {
        index: 20,
        term: 3,
        membership: Membership::with_voters([1]),
    };
    let other = SnapshotMeta {
        index: 21,
        ..a.clone()
    };
    store.stage_chunk(&a, 0, b"xyz").expect("chunk");
    assert_eq!(
        store.install_staged(&other),
        Err(SnapshotError::NotStaged { index: 21 })
    );
    assert_eq!(
        store.current(),
        Some(current),
        "a refused install leaves the current snapshot"
    );
    assert_eq!(store.staged(), Some((a, 3)));
}
