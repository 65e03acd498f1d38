//! A group's applied data as its state machine sees it: the [`GroupStore`]
//! trait, implemented by the RocksDB [`GroupData`](crate::GroupData) (feature
//! `rocksdb`) and by [`MemGroupData`] for the deterministic simulator, so
//! the simulator applies through the same state machine code as a node.

use std::collections::BTreeMap;

use crate::image::{encode_image, AppliedState, Frame, ImageReader, Pair};
use crate::SnapshotError;

/// A change to a group's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataOp {
    /// Set `key` to a value.
    Put(Vec<u8>, Vec<u8>),
    /// Remove `key`.
    Delete(Vec<u8>),
}

/// One group's applied data and the [`AppliedState`] stored with it. Keys
/// are the group's inner keys (no group prefix).
pub trait GroupStore {
    /// What the group has applied (default if nothing yet).
    fn applied(&self) -> Result<AppliedState, SnapshotError>;

    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SnapshotError>;

    /// Pairs with keys in `start..end` (an empty `end` means no upper
    /// bound), at most `limit` of them, in key order.
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Pair>, SnapshotError>;

    /// Applies `ops` and records `applied`, in one atomic step that need not
    /// be durable: the Raft log holds the entries, and a group re-applies
    /// from whatever applied index survived a crash.
    fn apply_unsynced(
        &mut self,
        applied: &AppliedState,
        ops: Vec<DataOp>,
    ) -> Result<(), SnapshotError>;
}

/// A group's data in memory, for the simulator. Nothing in it survives a
/// simulated crash; a restarted node reloads it from its snapshot image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemGroupData {
    applied: AppliedState,
    pairs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemGroupData {
    /// Empty data, nothing applied.
    pub fn new() -> Self {
        MemGroupData::default()
    }

    /// The data and applied state as a snapshot image (the format
    /// [`RocksSnapshotStore`](crate::RocksSnapshotStore) builds).
    pub fn image(&self) -> Result<Vec<u8>, SnapshotError> {
        let pairs: Vec<Pair> = self
            .pairs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        encode_image(&self.applied, &pairs)
    }

    /// The data an image holds, checked whole (its checksum and end frame).
    pub fn from_image(image: &[u8]) -> Result<Self, SnapshotError> {
        let mut reader = ImageReader::new();
        let mut data = MemGroupData::default();
        for frame in reader.feed(image)? {
            match frame {
                Frame::Header(applied) => data.applied = applied,
                Frame::Pair(key, value) => {
                    data.pairs.insert(key, value);
                }
            }
        }
        reader.finish()?;
        Ok(data)
    }

    /// Every pair, in key order.
    pub fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }
}

impl GroupStore for MemGroupData {
    fn applied(&self) -> Result<AppliedState, SnapshotError> {
        Ok(self.applied.clone())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SnapshotError> {
        Ok(self.pairs.get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<Pair>, SnapshotError> {
        Ok(self
            .pairs
            .range(start.to_vec()..)
            .take_while(|(k, _)| end.is_empty() || k.as_slice() < end)
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn apply_unsynced(
        &mut self,
        applied: &AppliedState,
        ops: Vec<DataOp>,
    ) -> Result<(), SnapshotError> {
        for op in ops {
            match op {
                DataOp::Put(key, value) => {
                    self.pairs.insert(key, value);
                }
                DataOp::Delete(key) => {
                    self.pairs.remove(&key);
                }
            }
        }
        self.applied = applied.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn applies_scans_and_round_trips_through_an_image() {
        let mut data = MemGroupData::new();
        let applied = AppliedState {
            index: 3,
            term: 2,
            ..AppliedState::default()
        };
        data.apply_unsynced(
            &applied,
            vec![
                DataOp::Put(b"a".to_vec(), b"1".to_vec()),
                DataOp::Put(b"b".to_vec(), b"2".to_vec()),
                DataOp::Put(b"c".to_vec(), b"3".to_vec()),
                DataOp::Delete(b"b".to_vec()),
            ],
        )
        .unwrap();
        assert_eq!(data.get(b"b").unwrap(), None);
        assert_eq!(
            data.scan(b"a", b"c", 10).unwrap(),
            vec![(b"a".to_vec(), b"1".to_vec())]
        );
        assert_eq!(data.scan(b"", b"", 1).unwrap().len(), 1);
        let copy = MemGroupData::from_image(&data.image().unwrap()).unwrap();
        assert_eq!(copy, data);
        assert_eq!(copy.applied().unwrap().index, 3);
        let mut damaged = data.image().unwrap();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(MemGroupData::from_image(&damaged).is_err());
    }
}
