//! Behaviour every [`SnapshotStore`] must show. Each implementation runs
//! [`run_all`] with a [`Harness`] that makes fresh stores holding
//! [`sample_snapshot`] as current, and images the store will accept.

use flotilla_wal::Membership;

use crate::{SnapshotError, SnapshotMeta, SnapshotStore};

/// The metadata of the snapshot a fresh store under test holds as current.
pub fn sample_snapshot() -> SnapshotMeta {
    SnapshotMeta {
        index: 10,
        term: 2,
        membership: Membership::with_voters([1, 2, 3]),
    }
}

/// Makes stores and images for the suite.
pub trait Harness {
    /// The store under test.
    type Store: SnapshotStore;
    /// A fresh store whose current snapshot is [`sample_snapshot`], and that
    /// snapshot's image (at least 200 bytes).
    fn fresh(&self) -> (Self::Store, Vec<u8>);
    /// An image of a snapshot taken at `meta`, as a sender would stream it;
    /// `variant` changes the content (at least 5 bytes long).
    fn image(&self, meta: &SnapshotMeta, variant: u8) -> Vec<u8>;
}

/// Runs every check; panics with the name of the first that fails.
pub fn run_all<H: Harness>(h: &H) {
    reads_in_bounded_chunks_until_done(h);
    refuses_reads_of_a_replaced_snapshot(h);
    staging_resumes_and_installs(h);
    staging_refuses_gaps_and_restarts_for_another_snapshot(h);
    install_requires_the_staged_snapshot(h);
}

fn reads_in_bounded_chunks_until_done<H: Harness>(h: &H) {
    let (store, image) = h.fresh();
    let meta = sample_snapshot();
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

fn refuses_reads_of_a_replaced_snapshot<H: Harness>(h: &H) {
    let (store, _) = h.fresh();
    let mut meta = sample_snapshot();
    meta.index += 1;
    assert_eq!(
        store.read_chunk(&meta, 0, 64),
        Err(SnapshotError::Unavailable { index: 11, term: 2 })
    );
}

fn staging_resumes_and_installs<H: Harness>(h: &H) {
    let (mut store, _) = h.fresh();
    let meta = SnapshotMeta {
        index: 20,
        term: 3,
        membership: Membership::with_voters([1, 2]),
    };
    let image = h.image(&meta, 1);
    let (head, tail) = image.split_at(3);
    store.stage_chunk(&meta, 0, head).expect("first chunk");
    store.stage_chunk(&meta, 3, tail).expect("second chunk");
    assert_eq!(store.staged(), Some((meta.clone(), image.len() as u64)));
    store.install_staged(&meta).expect("install");
    assert_eq!(store.current(), Some(meta.clone()));
    assert_eq!(store.staged(), None);
    let chunk = store
        .read_chunk(&meta, 0, image.len() as u64 + 100)
        .expect("installed snapshot readable");
    assert_eq!(chunk.data, image);
    assert!(chunk.done);
}

fn staging_refuses_gaps_and_restarts_for_another_snapshot<H: Harness>(h: &H) {
    let (mut store, _) = h.fresh();
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

fn install_requires_the_staged_snapshot<H: Harness>(h: &H) {
    let (mut store, _) = h.fresh();
    let current = sample_snapshot();
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
