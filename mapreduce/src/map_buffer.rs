//! A map task's output before it is written: per partition, each key once
//! with its values, folded by the job's combiner as they arrive, so a word
//! seen a million times costs one entry rather than a million to sort.

use std::collections::HashMap;

use crate::job::Job;

/// Bookkeeping bytes counted per key and per value beyond their contents
/// (allocation headers, vectors, hash table slots), so the spill limit
/// tracks memory rather than payload.
const KEY_OVERHEAD: usize = 64;
const VALUE_OVERHEAD: usize = 32;
/// A key's values are combined once this many have gathered.
const COMBINE_EVERY: usize = 32;

/// One partition's keys, each with its values in emit order.
pub(crate) type Groups = Vec<(Vec<u8>, Vec<Vec<u8>>)>;

pub(crate) struct MapBuffer {
    buckets: Vec<HashMap<Vec<u8>, Vec<Vec<u8>>>>,
    bytes: usize,
}

impl MapBuffer {
    pub(crate) fn new(partitions: u32) -> MapBuffer {
        MapBuffer {
            buckets: (0..partitions).map(|_| HashMap::new()).collect(),
            bytes: 0,
        }
    }

    /// Memory held, approximately.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds one emitted pair to `partition`.
    pub(crate) fn push(&mut self, job: &dyn Job, partition: usize, key: &[u8], value: &[u8]) {
        let bucket = &mut self.buckets[partition];
        let Some(values) = bucket.get_mut(key) else {
            bucket.insert(key.to_vec(), vec![value.to_vec()]);
            self.bytes += key.len() + KEY_OVERHEAD + value.len() + VALUE_OVERHEAD;
            return;
        };
        values.push(value.to_vec());
        self.bytes += value.len() + VALUE_OVERHEAD;
        if !job.has_combiner() || values.len() < COMBINE_EVERY {
            return;
        }
        let before: usize = values.iter().map(|v| v.len() + VALUE_OVERHEAD).sum();
        let mut kept = Vec::new();
        let mut strays = Vec::new();
        job.combine(key, &mut values.drain(..), &mut |k, v| {
            if k == key {
                kept.push(v.to_vec());
            } else {
                strays.push((k.to_vec(), v.to_vec()));
            }
        });
        let after: usize = kept.iter().map(|v| v.len() + VALUE_OVERHEAD).sum();
        *values = kept;
        self.bytes = (self.bytes + after).saturating_sub(before);
        // A combiner that emits other keys: keep those too, uncombined.
        for (k, v) in strays {
            self.bytes += k.len() + KEY_OVERHEAD + v.len() + VALUE_OVERHEAD;
            bucket.entry(k).or_default().push(v);
        }
    }

    /// Empties `partition`, its keys in order.
    pub(crate) fn take_sorted(&mut self, partition: usize) -> Groups {
        let bucket = std::mem::take(&mut self.buckets[partition]);
        let taken: usize = bucket
            .iter()
            .map(|(k, vs)| {
                k.len() + KEY_OVERHEAD + vs.iter().map(|v| v.len() + VALUE_OVERHEAD).sum::<usize>()
            })
            .sum();
        self.bytes = self.bytes.saturating_sub(taken);
        let mut groups: Groups = bucket.into_iter().collect();
        groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::{Sort, WordCount};

    #[test]
    fn a_combining_job_folds_values_as_they_arrive() {
        let mut buffer = MapBuffer::new(2);
        for _ in 0..1000 {
            buffer.push(&WordCount, 1, b"the", b"1");
        }
        buffer.push(&WordCount, 1, b"cat", b"1");
        let groups = buffer.take_sorted(1);
        assert_eq!(groups[0].0, b"cat");
        assert_eq!(groups[1].0, b"the");
        // Folded down to far fewer than 1000 values that still sum to 1000.
        assert!(groups[1].1.len() < COMBINE_EVERY);
        let total: u64 = groups[1]
            .1
            .iter()
            .map(|v| {
                std::str::from_utf8(v)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
            .sum();
        assert_eq!(total, 1000);
        assert_eq!(buffer.bytes(), 0);
        assert!(buffer.take_sorted(0).is_empty());
    }

    #[test]
    fn a_job_without_a_combiner_keeps_every_value_in_order() {
        let mut buffer = MapBuffer::new(1);
        for i in 0..100u8 {
            buffer.push(&Sort, 0, b"k", &[i]);
        }
        let groups = buffer.take_sorted(0);
        assert_eq!(groups[0].1, (0..100u8).map(|i| vec![i]).collect::<Vec<_>>());
    }
}
