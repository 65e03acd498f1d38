//! Scans over the hash-sharded keyspace: every shard holds its keys in
//! order, so a scan reads the same range in each shard and merges.

use flotilla_engine::node::GroupHandle;
use flotilla_shard::ShardPolicy;
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

/// Most bytes of keys and values a cluster member puts in one scan page:
/// half the 4 MiB frame, leaving room for the encoding. A page always holds
/// at least one pair, so a single pair above this still travels alone.
pub(crate) const MAX_SCAN_PAGE_BYTES: usize = 2 << 20;

/// What a scan's shard cursors buffer together at most, whatever the shard
/// count: each reads `1/count` of it at a time (at most 256 pairs, and
/// always one pair, so a shard whose next pair is larger than its share
/// still moves on).
const SCAN_BUFFER_PAIRS: usize = 4096;
const SCAN_BUFFER_BYTES: usize = 4 << 20;
const SHARD_CHUNK_PAIRS: usize = 256;

/// One shard cursor's chunk, in pairs and bytes, with `shards` cursors.
fn shard_chunk(shards: u16) -> (usize, usize) {
    let shards = usize::from(shards.max(1));
    (
        (SCAN_BUFFER_PAIRS / shards).clamp(1, SHARD_CHUNK_PAIRS),
        (SCAN_BUFFER_BYTES / shards).max(1),
    )
}

/// Part of a scan: the pairs in key order, and whether the range holds more
/// after the last of them (the page stopped at its limit or byte budget).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ScanPage {
    pub(crate) pairs: Vec<Pair>,
    pub(crate) more: bool,
}

/// One shard's part of a scan, read a chunk at a time so that a scan holds
/// a bounded number of pairs whatever its limit.
struct ShardCursor {
    /// Inner key to read from next.
    from: Vec<u8>,
    /// Inner key to stop before.
    to: Vec<u8>,
    buffered: std::collections::VecDeque<Pair>,
    exhausted: bool,
}

impl ShardCursor {
    /// Reads the shard's next chunk, at most `max_pairs` or (past the first
    /// pair) `max_bytes`, if nothing is buffered.
    fn fill(&mut self, group: &GroupHandle, max_pairs: usize, max_bytes: usize) -> Result<()> {
        if self.buffered.is_empty() && !self.exhausted {
            let (mut pairs, mut bytes) = (0, 0);
            let mut last = None;
            let buffered = &mut self.buffered;
            group
                .data()
                .visit(&self.from, &self.to, &mut |inner, value| {
                    if let Some((_, key)) = keys::parse_user_key(inner) {
                        buffered.push_back((key.to_vec(), value.to_vec()));
                    }
                    last = Some(inner.to_vec());
                    pairs += 1;
                    bytes += inner.len() + value.len();
                    pairs < max_pairs && bytes < max_bytes
                })
                .map_err(|e| Error::Storage(e.to_string()))?;
            match last {
                // The chunk stopped early, or reached the end exactly: read
                // on after its last key (the next read finds nothing then).
                Some(mut after) if pairs >= max_pairs || bytes >= max_bytes => {
                    after.push(0);
                    self.from = after;
                }
                _ => self.exhausted = true,
            }
        }
        Ok(())
    }
}

/// Reads up to `limit` pairs of `start..end` (empty `end`: unbounded) page
/// by page, `fetch(start, limit)` reading one page, until the limit or the
/// end of the range. Each page is read at its own point in time, as the
/// shards of one page are.
pub(crate) async fn scan_pages<F, Fut>(
    start: Vec<u8>,
    limit: usize,
    mut fetch: F,
) -> Result<Vec<Pair>>
where
    F: FnMut(Vec<u8>, usize) -> Fut,
    Fut: std::future::Future<Output = Result<ScanPage>>,
{
    let mut pairs: Vec<Pair> = Vec::new();
    let mut from = start;
    loop {
        let page = fetch(from, limit - pairs.len()).await?;
        pairs.extend(page.pairs);
        match pairs.last() {
            Some((last, _)) if page.more && pairs.len() < limit => {
                // The smallest key after `last`.
                from = last.clone();
                from.push(0);
            }
            _ => return Ok(pairs),
        }
    }
}

/// Reads up to `limit` pairs of `range` from `group`'s applied data, in key
/// order, stopping before `max_bytes` of keys and values (but never before
/// the first pair).
pub(crate) fn scan_group(
    group: &GroupHandle,
    shards: ShardPolicy,
    range: &ScanRange,
    limit: usize,
    max_bytes: usize,
) -> Result<ScanPage> {
    let (start, end) = range.bounds()?;
    let mut cursors: Vec<ShardCursor> = (0..shards.count())
        .map(|shard| {
            let (from, to) = shard_bounds(shard, &start, &end);
            ShardCursor {
                from,
                to,
                buffered: Default::default(),
                exhausted: false,
            }
        })
        .collect();
    let mut page = ScanPage::default();
    let mut bytes = 0usize;
    // No shard gives more than the limit, and one more pair tells whether
    // the range goes on: a small scan reads little.
    let (chunk_pairs, chunk_bytes) = shard_chunk(shards.count());
    let chunk_pairs = chunk_pairs.min(limit.saturating_add(1));
    loop {
        for cursor in &mut cursors {
            cursor.fill(group, chunk_pairs, chunk_bytes)?;
        }
        // The shard whose next key is smallest: keys hash to shards, so
        // every shard holds part of any range.
        let next = cursors
            .iter()
            .enumerate()
            .filter_map(|(i, cursor)| cursor.buffered.front().map(|(key, _)| (key, i)))
            .min_by(|a, b| a.0.cmp(b.0))
            .map(|(_, i)| i);
        let Some(i) = next else { break };
        let size = cursors[i]
            .buffered
            .front()
            .map_or(0, |(key, value)| key.len() + value.len());
        if page.pairs.len() >= limit || (!page.pairs.is_empty() && bytes + size > max_bytes) {
            page.more = true;
            break;
        }
        if let Some(pair) = cursors[i].buffered.pop_front() {
            bytes += size;
            page.pairs.push(pair);
        }
    }
    Ok(page)
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

    #[test]
    fn shard_cursors_buffer_about_4_mib_together_whatever_the_count() {
        assert_eq!(shard_chunk(16), (256, 256 << 10));
        assert_eq!(shard_chunk(64), (64, 64 << 10));
        assert_eq!(shard_chunk(4096), (1, 1 << 10));
        assert_eq!(shard_chunk(1), (256, 4 << 20));
    }
}
