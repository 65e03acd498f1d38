//! Behaviour every [`LogStore`] must show. Each implementation's tests call
//! [`run_all`] with a factory returning a fresh, empty store.

use std::collections::BTreeSet;

use crate::store::{LogStore, LogWrite};
use crate::StorageError;
use crate::{Entry, EntryPayload, HardState, Membership, SnapshotMeta};

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        payload: EntryPayload::Normal(vec![index as u8; 10]),
    }
}

fn append(group: u64, entries: Vec<Entry>) -> LogWrite {
    LogWrite {
        group,
        entries,
        ..LogWrite::default()
    }
}

/// Runs every check; panics naming the first that fails.
pub fn run_all<S: LogStore>(make: impl Fn() -> S) {
    empty_group_has_defaults(&make());
    appended_entries_read_back_within_a_byte_limit(&make());
    conflicting_append_truncates_the_suffix(&make());
    hard_state_round_trips(&make());
    compaction_moves_the_first_index(&make());
    install_replaces_the_log(&make());
    groups_are_isolated(&make());
    membership_follows_the_log(&make());
    one_submit_applies_in_order(&make());
    an_older_compaction_is_ignored(&make());
    log_bytes_follow_appends_truncations_and_compactions(&make());
    appends_that_do_not_fit_are_refused_whole(&make());
}

fn empty_group_has_defaults<S: LogStore>(s: &S) {
    assert_eq!(s.hard_state(9).expect("hard state"), HardState::default());
    assert_eq!(s.last_index(9).expect("last"), 0);
    assert_eq!(s.first_index(9).expect("first"), 1);
    assert_eq!(s.term(9, 0).expect("term"), Some(0));
    assert!(s.entries(9, 1, 10, u64::MAX).expect("entries").is_empty());
}

fn appended_entries_read_back_within_a_byte_limit<S: LogStore>(s: &S) {
    s.write(vec![append(1, (1..=5).map(|i| entry(i, 1)).collect())])
        .expect("write");
    assert_eq!(
        s.entries(1, 1, 5, u64::MAX).expect("read"),
        (1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>()
    );
    assert_eq!(s.entries(1, 2, 3, u64::MAX).expect("read").len(), 2);
    let one = entry(1, 1).size_bytes();
    assert_eq!(
        s.entries(1, 1, 5, 2 * one).expect("read").len(),
        2,
        "byte limit"
    );
    assert_eq!(
        s.entries(1, 1, 5, 1).expect("read").len(),
        1,
        "at least one entry"
    );
    assert_eq!(s.last_index(1).expect("last"), 5);
    assert_eq!(s.term(1, 4).expect("term"), Some(1));
    assert_eq!(s.term(1, 6).expect("term"), None);
}

fn conflicting_append_truncates_the_suffix<S: LogStore>(s: &S) {
    s.write(vec![append(1, (1..=5).map(|i| entry(i, 1)).collect())])
        .expect("write");
    s.write(vec![append(1, vec![entry(3, 2), entry(4, 2)])])
        .expect("overwrite");
    assert_eq!(
        s.last_index(1).expect("last"),
        4,
        "entry 5 survived a truncation at 3"
    );
    assert_eq!(s.term(1, 3).expect("term"), Some(2));
    assert_eq!(s.term(1, 2).expect("term"), Some(1));
}

fn hard_state_round_trips<S: LogStore>(s: &S) {
    let hs = HardState {
        term: 7,
        vote: 3,
        commit: 12,
    };
    s.write(vec![LogWrite {
        group: 1,
        hard_state: Some(hs),
        ..LogWrite::default()
    }])
    .expect("write");
    assert_eq!(s.hard_state(1).expect("read"), hs);
}

fn compaction_moves_the_first_index<S: LogStore>(s: &S) {
    s.write(vec![append(1, (1..=6).map(|i| entry(i, 1)).collect())])
        .expect("write");
    let meta = SnapshotMeta {
        index: 3,
        term: 1,
        membership: Membership::with_voters([1, 2, 3]),
    };
    s.write(vec![LogWrite {
        group: 1,
        compact: Some(meta.clone()),
        ..LogWrite::default()
    }])
    .expect("compact");
    assert_eq!(s.first_index(1).expect("first"), 4);
    assert_eq!(s.snapshot_meta(1).expect("meta"), meta);
    assert_eq!(
        s.term(1, 3).expect("term"),
        Some(1),
        "term at the snapshot index"
    );
    assert_eq!(s.term(1, 2).expect("term"), None, "compacted");
    assert!(s.entries(1, 1, 3, u64::MAX).expect("read").is_empty());
    assert_eq!(s.entries(1, 4, 6, u64::MAX).expect("read").len(), 3);
    assert_eq!(s.last_index(1).expect("last"), 6);
}

fn install_replaces_the_log<S: LogStore>(s: &S) {
    s.write(vec![append(1, (1..=6).map(|i| entry(i, 1)).collect())])
        .expect("write");
    let meta = SnapshotMeta {
        index: 20,
        term: 4,
        membership: Membership::with_voters([1]),
    };
    s.write(vec![LogWrite {
        group: 1,
        install: Some(meta.clone()),
        ..LogWrite::default()
    }])
    .expect("install");
    assert_eq!(s.last_index(1).expect("last"), 20);
    assert_eq!(s.first_index(1).expect("first"), 21);
    assert!(s.entries(1, 1, 30, u64::MAX).expect("read").is_empty());
    s.write(vec![append(1, vec![entry(21, 4)])])
        .expect("append after install");
    assert_eq!(s.last_index(1).expect("last"), 21);
}

fn groups_are_isolated<S: LogStore>(s: &S) {
    s.write(vec![
        append(1, vec![entry(1, 1)]),
        append(2, vec![entry(1, 5), entry(2, 5)]),
    ])
    .expect("write");
    s.write(vec![append(1, vec![entry(1, 2)])])
        .expect("overwrite group 1");
    assert_eq!(
        s.last_index(2).expect("last"),
        2,
        "a truncation in group 1 touched group 2"
    );
    assert_eq!(s.term(2, 1).expect("term"), Some(5));
    let groups: BTreeSet<u64> = s.groups().expect("groups").into_iter().collect();
    assert_eq!(groups, [1, 2].into());
}

fn membership_follows_the_log<S: LogStore>(s: &S) {
    let base = Membership::with_voters([1, 2, 3]);
    let snapshot = SnapshotMeta {
        index: 2,
        term: 1,
        membership: base.clone(),
    };
    s.write(vec![LogWrite {
        group: 1,
        install: Some(snapshot),
        ..LogWrite::default()
    }])
    .expect("install");
    assert_eq!(s.membership(1).expect("membership"), base);
    let next = Membership::with_voters([1, 2, 3, 4]);
    let config = Entry {
        index: 3,
        term: 1,
        payload: EntryPayload::Membership(next.clone()),
    };
    s.write(vec![append(1, vec![config, entry(4, 1)])])
        .expect("write");
    assert_eq!(s.membership(1).expect("membership"), next);
    s.write(vec![append(1, vec![entry(3, 2)])])
        .expect("truncate the config entry");
    assert_eq!(
        s.membership(1).expect("membership"),
        base,
        "a truncated configuration is undone"
    );
}

fn one_submit_applies_in_order<S: LogStore>(s: &S) {
    let first = append(1, (1..=3).map(|i| entry(i, 1)).collect());
    let second = append(1, vec![entry(2, 2)]);
    s.write(vec![first, second]).expect("write");
    assert_eq!(s.last_index(1).expect("last"), 2);
    assert_eq!(s.term(1, 2).expect("term"), Some(2));
}

fn an_older_compaction_is_ignored<S: LogStore>(s: &S) {
    s.write(vec![append(1, (1..=6).map(|i| entry(i, 1)).collect())])
        .expect("write");
    let at = |index| SnapshotMeta {
        index,
        term: 1,
        membership: Membership::with_voters([1]),
    };
    let compact = |index| LogWrite {
        group: 1,
        compact: Some(at(index)),
        ..LogWrite::default()
    };
    s.write(vec![compact(4)]).expect("compact to 4");
    s.write(vec![compact(2)]).expect("compact to 2");
    assert_eq!(
        s.snapshot_meta(1).expect("meta"),
        at(4),
        "a compaction behind the snapshot moved it back"
    );
    assert_eq!(s.first_index(1).expect("first"), 5);
}

fn log_bytes_follow_appends_truncations_and_compactions<S: LogStore>(s: &S) {
    let one = entry(1, 1).size_bytes();
    assert_eq!(s.log_bytes(1).expect("bytes"), 0);
    s.write(vec![append(1, (1..=6).map(|i| entry(i, 1)).collect())])
        .expect("write");
    assert_eq!(s.log_bytes(1).expect("bytes"), 6 * one);
    s.write(vec![append(1, vec![entry(5, 2)])])
        .expect("truncate at 5");
    assert_eq!(s.log_bytes(1).expect("bytes"), 5 * one);
    s.write(vec![LogWrite {
        group: 1,
        compact: Some(SnapshotMeta {
            index: 3,
            term: 1,
            membership: Membership::with_voters([1]),
        }),
        ..LogWrite::default()
    }])
    .expect("compact");
    assert_eq!(s.log_bytes(1).expect("bytes"), 2 * one);
    assert_eq!(s.log_bytes(2).expect("bytes"), 0, "another group");
}

fn appends_that_do_not_fit_are_refused_whole<S: LogStore>(s: &S) {
    s.write(vec![append(1, (1..=3).map(|i| entry(i, 1)).collect())])
        .expect("write");
    let hole = s.write(vec![
        append(1, vec![entry(4, 1)]),
        append(1, vec![entry(9, 1)]),
    ]);
    assert!(
        matches!(
            hole,
            Err(StorageError::NonContiguous {
                group: 1,
                last: 4,
                first: 9,
                ..
            })
        ),
        "an append leaving a hole: {hole:?}"
    );
    assert_eq!(
        s.last_index(1).expect("last"),
        3,
        "part of a refused request was written"
    );
    s.write(vec![LogWrite {
        group: 1,
        compact: Some(SnapshotMeta {
            index: 2,
            term: 1,
            membership: Membership::with_voters([1]),
        }),
        ..LogWrite::default()
    }])
    .expect("compact");
    let below = s.write(vec![append(1, vec![entry(2, 3)])]);
    assert!(
        matches!(below, Err(StorageError::NonContiguous { .. })),
        "an append at the snapshot index: {below:?}"
    );
    s.write(vec![append(1, vec![entry(3, 2), entry(4, 2)])])
        .expect("an append right after the snapshot fits");
    assert_eq!(s.last_index(1).expect("last"), 4);
}
