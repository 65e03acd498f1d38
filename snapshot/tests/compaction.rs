//! The `max_raft_state` compaction policy under sustained writes, on real
//! RocksDB: the persisted Raft state stays within 8× the threshold, and the
//! log is never compacted past what the state machine has made durable.

use std::sync::Arc;

use flotilla_snapshot::{AppliedState, DataOp, GroupData, RocksSnapshotStore};
use flotilla_wal::{
    CompactionPolicy, Durability, Entry, EntryPayload, HardState, LogSize, LogStore, LogWrite,
    Membership, RocksLogStore,
};

const GROUP: u64 = 1;
const THRESHOLD: u64 = 64 << 10;
/// Entries appended but not yet applied, like a follower's apply lag.
const APPLY_LAG: u64 = 64;

#[test]
fn raft_state_stays_within_eight_times_the_threshold_under_sustained_writes() {
    let dir = tempfile::TempDir::new().expect("tempdir");
    let log = Arc::new(RocksLogStore::open(dir.path(), Durability::Sync).expect("open"));
    let data = GroupData::new(Arc::clone(&log), GROUP);
    let mut snapshots = RocksSnapshotStore::new(Arc::clone(&log), GROUP, 1 << 20);
    let policy = CompactionPolicy {
        max_raft_state_bytes: THRESHOLD,
        max_log_entries: u64::MAX,
    };
    let membership = Membership::with_voters([1, 2, 3]);
    let hard_state_bytes = std::mem::size_of::<HardState>() as u64;
    let (mut last, mut applied, mut peak, mut compactions) = (0u64, 0u64, 0u64, 0);
    for round in 0..2_000u64 {
        // A batch of eight 256-byte commands, committed as they are written.
        let entries: Vec<Entry> = (last + 1..=last + 8)
            .map(|index| Entry {
                index,
                term: 1,
                payload: EntryPayload::Normal(vec![round as u8; 256]),
            })
            .collect();
        last += 8;
        log.write(vec![LogWrite {
            group: GROUP,
            entries,
            hard_state: Some(HardState {
                term: 1,
                vote: 1,
                commit: last,
            }),
            ..LogWrite::default()
        }])
        .expect("append");
        // Apply up to the lag; each apply is durable when `apply` returns.
        while applied + APPLY_LAG < last {
            applied += 1;
            let key = format!("k{}", applied % 100).into_bytes();
            data.apply(
                &AppliedState {
                    index: applied,
                    term: 1,
                    membership: membership.clone(),
                    sessions: Vec::new(),
                },
                vec![DataOp::Put(key, applied.to_be_bytes().to_vec())],
            )
            .expect("apply");
        }
        let size = LogSize {
            bytes: log.log_bytes(GROUP).expect("bytes"),
            snapshot_index: log.snapshot_meta(GROUP).expect("meta").index,
            last_index: log.last_index(GROUP).expect("last"),
        };
        peak = peak.max(size.bytes + hard_state_bytes);
        let durable_applied = data.applied().expect("applied").index;
        if let Some(to) = policy.compact_to(size, durable_applied) {
            let meta = snapshots.build().expect("snapshot");
            assert_eq!(
                meta.index, to,
                "the snapshot is taken at the durable applied index"
            );
            assert!(
                meta.index <= durable_applied,
                "compacting past what is durable"
            );
            log.write(vec![LogWrite {
                group: GROUP,
                compact: Some(meta),
                ..LogWrite::default()
            }])
            .expect("compact");
            compactions += 1;
        }
    }
    assert!(
        compactions > 10,
        "only {compactions} compactions over the run"
    );
    assert!(
        peak <= 8 * THRESHOLD,
        "persisted raft state reached {peak} bytes, over 8 × {THRESHOLD}"
    );
    // Nothing unapplied was dropped: every entry after the snapshot is still there.
    let first = log.first_index(GROUP).expect("first");
    assert!(first <= applied + 1);
    assert_eq!(
        log.entries(GROUP, first, last, u64::MAX)
            .expect("entries")
            .len() as u64,
        last - first + 1
    );
}
