//! A deterministic multi-document corpus and the sequential reference
//! word count the MapReduce tests compare against.

// Each test binary uses a different part.
#![allow(dead_code)]

use std::collections::BTreeMap;

/// Words for the corpus, some outside ASCII, mixed with digits and
/// punctuation that must split words.
const VOCABULARY: &[&str] = &[
    "the",
    "The",
    "raft",
    "log",
    "naïve",
    "café",
    "über",
    "Ωmega",
    "σοφία",
    "data",
    "node",
    "leader",
    "x",
    "MapReduce",
    "straße",
    "zebra",
    "año",
    "déjà",
    "vu",
    "and",
];

/// A deterministic corpus: `docs` documents of `words` words each.
pub(crate) fn corpus(docs: usize, words: usize) -> Vec<(String, String)> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..docs)
        .map(|d| {
            let mut text = String::new();
            for w in 0..words {
                text.push_str(VOCABULARY[(next() % VOCABULARY.len() as u64) as usize]);
                text.push_str(match next() % 7 {
                    0 => ", ",
                    1 => "42",
                    2 => "\n",
                    3 => "—",
                    4 if w % 5 == 0 => "'s ",
                    _ => " ",
                });
            }
            (format!("docs/d{d:03}"), text)
        })
        .collect()
}

/// Words as the lab defines them, written out independently of the
/// implementation: maximal runs of letters.
pub(crate) fn reference_words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if c.is_alphabetic() {
            word.push(c);
        } else if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

pub(crate) fn reference_word_count(docs: &[(String, String)]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (_, text) in docs {
        for w in reference_words(text) {
            *counts.entry(w).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|(w, n)| (format!("wc/{w}").into_bytes(), n.to_string().into_bytes()))
        .collect()
}
