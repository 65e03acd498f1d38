//! Scans over the hash-sharded keyspace: every shard holds its keys in
//! order, so a scan reads the same range in each shard and merges.

use flotilla_engine::node::GroupHandle;
use flotilla_wal::keys;

use crate::error::{Error, Result};

/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// Which keys a scan visits, in key order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanRange {
    /// Every key starting with these bytes (empty: every key).
    Prefix(Vec<u8>),
    /// Keys from `start` (included) to `end` (excluded; empty: no end).
    Range {
        /// First key included.
        start: Vec<u8>,
        /// First key excluded; empty for no upper bound.
        end: Vec<u8>,
    },
}

impl ScanRange {
    /// Every key starting with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        ScanRange::Prefix(prefix.into())
    }

    /// Keys in `start..end` (empty `end`: no upper bound).
    pub fn range(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        ScanRange::Range {
            start: start.into(),
            end: end.into(),
        }
    }

    /// `(start, end)` with an empty `end` meaning unbounded; an error for a
    /// range that ends before it starts.
    pub fn bounds(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        match self {
            ScanRange::Prefix(prefix) => Ok((prefix.clone(), prefix_end(prefix))),
            ScanRange::Range { start, end } => {
                if !end.is_empty() && end < start {
                    return Err(Error::InvalidArgument(
                        "scan range ends before it starts".into(),
                    ));
                }
                Ok((start.clone(), end.clone()))
            }
        }
    }
}

/// The first key after every key starting with `prefix` (empty: none).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// The inner keys of `shard`'s part of user keys `start..end` (an empty
/// `end`: to the end of the shard).
pub(crate) fn shard_bounds(shard: u16, start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let to = if end.is_empty() {
        keys::shard_key(shard + 1, b"")
    } else {
        keys::shard_key(shard, end)
    };
    (keys::shard_key(shard, start), to)
}

/// Reads up to `limit` pairs of `range` from `group`'s applied data.
pub(crate) fn scan_group(
    group: &GroupHandle,
    range: &ScanRange,
    limit: usize,
) -> Result<Vec<Pair>> {
    let (start, end) = range.bounds()?;
    let mut merged = Vec::new();
    for shard in 0..keys::SHARDS {
        let (from, to) = shard_bounds(shard, &start, &end);
        let pairs = group
            .data()
            .scan(&from, &to, limit)
            .map_err(|e| Error::Storage(e.to_string()))?;
        for (inner, value) in pairs {
            if let Some((_, key)) = keys::parse_user_key(&inner) {
                merged.push((key.to_vec(), value));
            }
        }
    }
    merged.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    merged.truncate(limit);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_skip_trailing_ff_bytes() {
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), Vec::<u8>::new());
        assert_eq!(prefix_end(b""), Vec::<u8>::new());
        assert!(ScanRange::range("b", "a").bounds().is_err());
    }
}
