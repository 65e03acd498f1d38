//! Every RocksDB key flotilla writes, built in one place. Big-endian integers
//! so that byte order is numeric order: a group's entries are contiguous and
//! sorted by index.

use crate::{GroupId, Index};

/// Column family holding log entries: `group ‖ index` → entry record.
pub const RAFT_LOG_CF: &str = "raft_log";
/// Column family holding per-group state: `group ‖ kind` → record.
pub const RAFT_STATE_CF: &str = "raft_state";
/// Column family for snapshot chunks, outgoing and staged (used by flotilla-snapshot).
pub const SNAPSHOT_CF: &str = "snapshot";
/// Column family for the state machines' data: `group ‖ key` → value.
pub const DATA_CF: &str = "data";
/// Key, in the default column family, of the store's format marker.
pub const FORMAT_KEY: &[u8] = b"flotilla-format";
/// Key, in the default column family, of the store's shard count (a
/// big-endian `u16`, written when the store is created; stores created
/// before it have none).
pub const SHARD_COUNT_KEY: &[u8] = b"flotilla-shards";

/// Kinds of per-group state records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StateKind {
    /// Term, vote, commit.
    HardState = 1,
    /// The snapshot the log starts after (compaction point and its membership).
    SnapshotMeta = 2,
    /// What the state machine has applied (written with its data).
    Applied = 3,
}

/// Kinds of keys in the snapshot column family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SnapshotKind {
    /// The descriptor of the group's current (outgoing) snapshot.
    Current = 1,
    /// The descriptor of the snapshot being received.
    Staged = 2,
    /// A chunk: followed by generation and byte offset.
    Chunk = 3,
}

/// Key of entry `index` of `group`.
pub fn log_key(group: GroupId, index: Index) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// Decodes a log key into (group, index).
pub fn parse_log_key(key: &[u8]) -> Option<(GroupId, Index)> {
    let group = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let index = u64::from_be_bytes(key.get(8..16)?.try_into().ok()?);
    (key.len() == 16).then_some((group, index))
}

/// Key of a per-group state record.
pub fn state_key(group: GroupId, kind: StateKind) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8] = kind as u8;
    key
}

/// Decodes the group of a state key.
pub fn parse_state_group(key: &[u8]) -> Option<GroupId> {
    (key.len() == 9).then(|| u64::from_be_bytes(key[..8].try_into().unwrap_or_default()))
}

/// Key of `key` in `group`'s data.
pub fn data_key(group: GroupId, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&group.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The keys of all of `group`'s data: `start..end`.
pub fn data_range(group: GroupId) -> (Vec<u8>, Vec<u8>) {
    let start = group.to_be_bytes().to_vec();
    let end = match group.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        // The last group: everything after its prefix.
        None => vec![0xff; 9],
    };
    (start, end)
}

/// Shard prefix reserved for the state machine's own records (client sessions).
const INTERNAL_SHARD: u16 = u16::MAX;

/// `key` under `shard` (which must be the key's own shard for user data).
pub fn shard_key(shard: u16, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + key.len());
    out.extend_from_slice(&shard.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// Splits a group-data key (without the group prefix) into shard and user
/// key; `None` for the internal records.
pub fn parse_user_key(inner: &[u8]) -> Option<(u16, &[u8])> {
    if inner.len() < 2 {
        return None;
    }
    let shard = u16::from_be_bytes([inner[0], inner[1]]);
    (shard != INTERNAL_SHARD).then(|| (shard, &inner[2..]))
}

/// Key of client `client`'s session record inside a group's data.
pub fn session_key(client: u64) -> Vec<u8> {
    shard_key(INTERNAL_SHARD, &client.to_be_bytes())
}

/// Key of the state machine's clock inside a group's data (the internal
/// shard's prefix alone, so it sorts first in [`session_range`]). Stored
/// with the data so every replica, and a replica after a restart, expires
/// sessions on the same clock.
pub fn machine_clock_key() -> Vec<u8> {
    INTERNAL_SHARD.to_be_bytes().to_vec()
}

/// Range (inner keys) holding every session record and the machine clock.
pub fn session_range() -> (Vec<u8>, Vec<u8>) {
    (
        INTERNAL_SHARD.to_be_bytes().to_vec(),
        vec![
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ],
    )
}

/// Decodes the client id of a session key.
pub fn parse_session_key(inner: &[u8]) -> Option<u64> {
    if inner.len() != 10 || inner[..2] != INTERNAL_SHARD.to_be_bytes() {
        return None;
    }
    Some(u64::from_be_bytes(inner[2..].try_into().ok()?))
}

/// Key of a snapshot descriptor of `group`.
pub fn snapshot_descriptor_key(group: GroupId, kind: SnapshotKind) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8] = kind as u8;
    key
}

/// Key of the chunk of snapshot generation `generation` starting at byte `offset`.
pub fn snapshot_chunk_key(group: GroupId, generation: u64, offset: u64) -> [u8; 25] {
    let mut key = [0u8; 25];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8] = SnapshotKind::Chunk as u8;
    key[9..17].copy_from_slice(&generation.to_be_bytes());
    key[17..].copy_from_slice(&offset.to_be_bytes());
    key
}

/// Decodes (group, generation, offset) from a chunk key.
pub fn parse_snapshot_chunk_key(key: &[u8]) -> Option<(GroupId, u64, u64)> {
    if key.len() != 25 || key[8] != SnapshotKind::Chunk as u8 {
        return None;
    }
    let group = u64::from_be_bytes(key[..8].try_into().ok()?);
    let generation = u64::from_be_bytes(key[9..17].try_into().ok()?);
    let offset = u64::from_be_bytes(key[17..].try_into().ok()?);
    Some((group, generation, offset))
}

/// Hex rendering of a key for error messages.
pub fn display_key(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_keys_stay_apart_from_sessions_and_round_trip() {
        for key in [&b""[..], b"a", b"\xff\xff\xff", b"some longer key"] {
            let inner = shard_key(7, key);
            assert_eq!(parse_user_key(&inner), Some((7, key)));
            assert_eq!(parse_session_key(&inner), None);
        }
        let (start, end) = session_range();
        let session = session_key(u64::MAX);
        assert!(session >= start && session < end);
        assert_eq!(parse_session_key(&session), Some(u64::MAX));
        assert_eq!(parse_user_key(&session), None);
    }

    #[test]
    fn log_keys_sort_by_group_then_index() {
        let mut keys = vec![
            log_key(2, 1),
            log_key(1, 256),
            log_key(1, 2),
            log_key(1, u64::MAX),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                log_key(1, 2),
                log_key(1, 256),
                log_key(1, u64::MAX),
                log_key(2, 1)
            ]
        );
        assert_eq!(parse_log_key(&log_key(7, 9)), Some((7, 9)));
        assert_eq!(parse_log_key(&[1, 2, 3]), None);
        assert_eq!(
            parse_state_group(&state_key(5, StateKind::HardState)),
            Some(5)
        );
    }
}
