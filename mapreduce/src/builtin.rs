//! The jobs every node knows: word count, inverted index, grep and sort.

use crate::job::{Emit, Job, Values};

/// Splits text into words: maximal runs of Unicode letters, case kept.
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
}

fn sum(values: &mut Values<'_>) -> u64 {
    values
        .map(|v| {
            std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// Counts words: output key the word, value its count in decimal.
#[derive(Clone, Copy, Debug, Default)]
pub struct WordCount;

impl Job for WordCount {
    fn map(&self, _key: &[u8], value: &[u8], emit: &mut Emit<'_>) {
        for word in words(&String::from_utf8_lossy(value)) {
            emit(word.as_bytes(), b"1");
        }
    }

    fn reduce(&self, key: &[u8], values: &mut Values<'_>, emit: &mut Emit<'_>) {
        emit(key, sum(values).to_string().as_bytes());
    }

    fn has_combiner(&self) -> bool {
        true
    }

    fn combine(&self, key: &[u8], values: &mut Values<'_>, emit: &mut Emit<'_>) {
        emit(key, sum(values).to_string().as_bytes());
    }
}

/// For every word, the input keys it appears in: output key the word,
/// value the distinct keys sorted and joined by commas.
#[derive(Clone, Copy, Debug, Default)]
pub struct InvertedIndex;

impl Job for InvertedIndex {
    fn map(&self, key: &[u8], value: &[u8], emit: &mut Emit<'_>) {
        let text = String::from_utf8_lossy(value);
        let mut seen = std::collections::BTreeSet::new();
        for word in words(&text) {
            if seen.insert(word) {
                emit(word.as_bytes(), key);
            }
        }
    }

    fn reduce(&self, key: &[u8], values: &mut Values<'_>, emit: &mut Emit<'_>) {
        let docs: std::collections::BTreeSet<Vec<u8>> = values.collect();
        let joined: Vec<u8> = docs.into_iter().collect::<Vec<_>>().join(&b","[..]);
        emit(key, &joined);
    }
}

/// The lines that contain a pattern: output key `input-key:line-number`
/// (1-based, zero-padded to 10 digits so they sort), value the line.
#[derive(Clone, Debug)]
pub struct Grep {
    pattern: String,
}

impl Grep {
    /// Matches lines containing `pattern` (a plain substring).
    pub fn new(pattern: impl Into<String>) -> Grep {
        Grep {
            pattern: pattern.into(),
        }
    }
}

impl Job for Grep {
    fn map(&self, key: &[u8], value: &[u8], emit: &mut Emit<'_>) {
        let text = String::from_utf8_lossy(value);
        for (n, line) in text.lines().enumerate() {
            if line.contains(&self.pattern) {
                let mut out = key.to_vec();
                out.extend_from_slice(format!(":{:010}", n + 1).as_bytes());
                emit(&out, line.as_bytes());
            }
        }
    }

    fn reduce(&self, key: &[u8], values: &mut Values<'_>, emit: &mut Emit<'_>) {
        for value in values {
            emit(key, &value);
        }
    }
}

/// Distributed sort: every input pair comes out under the output prefix,
/// partitioned by key range so that partition order is key order.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sort;

impl Job for Sort {
    fn map(&self, key: &[u8], value: &[u8], emit: &mut Emit<'_>) {
        emit(key, value);
    }

    fn reduce(&self, key: &[u8], values: &mut Values<'_>, emit: &mut Emit<'_>) {
        for value in values {
            emit(key, &value);
        }
    }

    /// By the first two bytes of the key: partition `i` holds smaller keys
    /// than partition `i + 1`.
    fn partition(&self, key: &[u8], partitions: u32) -> u32 {
        let head = u32::from(key.first().copied().unwrap_or(0)) << 8
            | u32::from(key.get(1).copied().unwrap_or(0));
        ((u64::from(head) * u64::from(partitions.max(1))) >> 16) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_maximal_runs_of_letters_with_case_kept() {
        let found: Vec<&str> = words("Hello, wörld! it's 42 Ünïcode—yes").collect();
        assert_eq!(found, ["Hello", "wörld", "it", "s", "Ünïcode", "yes"]);
    }

    #[test]
    fn sort_partitions_in_key_order() {
        let p: Vec<u32> = [b"\x00a", b"\x7fz", b"\xff\xff"]
            .iter()
            .map(|k| Sort.partition(&k[..], 4))
            .collect();
        assert_eq!(p, [0, 1, 3]);
    }
}
