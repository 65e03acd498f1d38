//! Merging sorted runs: a k-way heap over streaming readers, so memory is
//! one record and one read buffer per run, whatever the number of keys.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::error::MapReduceError;
use crate::job::Values;
use crate::run_file::{Record, RunReader};

/// The records of several sorted runs, in key order (equal keys in run
/// order).
pub struct Merge {
    readers: Vec<RunReader>,
    heap: BinaryHeap<Reverse<Head>>,
}

/// The next record of one run: key, run, value (ordered by key, then run).
type Head = (Vec<u8>, usize, Vec<u8>);

impl Merge {
    /// Starts merging `readers`.
    pub fn new(mut readers: Vec<RunReader>) -> Result<Merge, MapReduceError> {
        let mut heap = BinaryHeap::with_capacity(readers.len());
        for (source, reader) in readers.iter_mut().enumerate() {
            if let Some((key, value)) = reader.next_record()? {
                heap.push(Reverse((key, source, value)));
            }
        }
        Ok(Merge { readers, heap })
    }

    /// The next record in key order.
    pub fn next_record(&mut self) -> Result<Option<Record>, MapReduceError> {
        let Some(Reverse((key, source, value))) = self.heap.pop() else {
            return Ok(None);
        };
        if let Some((k, v)) = self.readers[source].next_record()? {
            self.heap.push(Reverse((k, source, v)));
        }
        Ok(Some((key, value)))
    }

    fn peek_key(&self) -> Option<&[u8]> {
        self.heap.peek().map(|Reverse((k, _, _))| k.as_slice())
    }

    /// Calls `f(key, values)` once per distinct key, in key order, with the
    /// key's values streamed from the runs.
    pub fn for_each_group(
        &mut self,
        mut f: impl FnMut(&[u8], &mut Values<'_>),
    ) -> Result<(), MapReduceError> {
        while let Some((key, first)) = self.next_record()? {
            let mut error = None;
            {
                let mut values = GroupValues {
                    merge: self,
                    key: &key,
                    first: Some(first),
                    error: &mut error,
                };
                f(&key, &mut values);
                // Values the callback left unread still belong to this key.
                for _ in values.by_ref() {}
            }
            if let Some(e) = error {
                return Err(e);
            }
        }
        Ok(())
    }
}

struct GroupValues<'a> {
    merge: &'a mut Merge,
    key: &'a [u8],
    first: Option<Vec<u8>>,
    error: &'a mut Option<MapReduceError>,
}

impl Iterator for GroupValues<'_> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if self.error.is_some() || self.merge.peek_key() != Some(self.key) {
            return None;
        }
        match self.merge.next_record() {
            Ok(Some((_, value))) => Some(value),
            Ok(None) => None,
            Err(e) => {
                *self.error = Some(e);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run_file::RunWriter;

    #[test]
    fn groups_come_out_in_key_order_with_every_value() {
        let dir = tempfile::tempdir().expect("dir");
        let runs: [&[(&str, &str)]; 3] = [
            &[("a", "1"), ("c", "2"), ("c", "3")],
            &[("b", "4"), ("c", "5")],
            &[],
        ];
        let mut readers = Vec::new();
        for (i, run) in runs.iter().enumerate() {
            let path = dir.path().join(format!("r{i}"));
            let mut w = RunWriter::create(&path).expect("create");
            for (k, v) in *run {
                w.push(k.as_bytes(), v.as_bytes()).expect("push");
            }
            w.finish().expect("finish");
            readers.push(RunReader::open(&path).expect("open"));
        }
        let mut merge = Merge::new(readers).expect("merge");
        let mut groups = Vec::new();
        let mut first_only = true;
        merge
            .for_each_group(|key, values| {
                let mut got: Vec<Vec<u8>> = Vec::new();
                // Read only the first value of "c": the rest must not leak
                // into the next group.
                if key == b"c" && first_only {
                    first_only = false;
                    got.extend(values.next());
                } else {
                    got.extend(values);
                }
                groups.push((String::from_utf8_lossy(key).into_owned(), got.len()));
            })
            .expect("groups");
        assert_eq!(
            groups,
            [("a".into(), 1), ("b".into(), 1), ("c".to_string(), 1)]
        );
    }
}
