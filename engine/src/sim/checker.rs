//! Raft's safety properties, checked after every simulator step.

use std::collections::{BTreeMap, HashMap};

use flotilla_wal::{Entry, EntryPayload, Index, NodeId, Term};

use crate::raft::core::RaftCore;
use crate::sim::fnv::Fnv64;

/// Watches a run and records every safety violation it sees.
#[derive(Default)]
pub struct Checker {
    /// The leader seen for each term.
    leaders: BTreeMap<Term, NodeId>,
    /// Every entry ever written to any log: (index, term) → (payload hash, previous term).
    written: HashMap<(Index, Term), (u64, Term)>,
    /// Entries known committed: index → (entry term, payload hash, earliest
    /// term in which some node was seen to know it committed). It was
    /// committed in that term or earlier.
    committed: BTreeMap<Index, (Term, u64, Term)>,
    /// Human-readable descriptions of what went wrong.
    pub violations: Vec<String>,
    /// Panic at the first violation (tests) instead of only recording it (the fuzzer).
    pub strict: bool,
}

/// A stable fingerprint of an entry's payload.
pub fn payload_hash(entry: &Entry) -> u64 {
    let mut h = Fnv64::default();
    match &entry.payload {
        EntryPayload::Blank => h.write(b"blank"),
        EntryPayload::Normal(data) => {
            h.write(b"normal");
            h.write(data);
        }
        EntryPayload::Membership(m) => {
            h.write(b"membership");
            h.write(&postcard::to_allocvec(m).unwrap_or_default());
        }
    }
    h.finish()
}

impl Checker {
    /// Records a violation (or panics, when strict).
    pub fn violation(&mut self, what: String) {
        if self.strict {
            panic!("raft safety violation: {what}");
        }
        self.violations.push(what);
    }

    /// Election safety: at most one leader per term.
    pub fn observe_leader(&mut self, term: Term, id: NodeId) {
        match self.leaders.get(&term) {
            Some(other) if *other != id => {
                let other = *other;
                self.violation(format!(
                    "two leaders in term {term}: nodes {other} and {id}"
                ));
            }
            Some(_) => {}
            None => {
                self.leaders.insert(term, id);
            }
        }
    }

    /// Log matching: an (index, term) pair names one entry with one predecessor,
    /// so two logs agreeing on it agree on everything before it.
    pub fn observe_written(&mut self, node: NodeId, prev_term: Option<Term>, entries: &[Entry]) {
        let mut prev = prev_term;
        for entry in entries {
            let hash = payload_hash(entry);
            let key = (entry.index, entry.term);
            if let Some(p) = prev {
                if p > entry.term {
                    self.violation(format!(
                        "node {node}: term decreases at index {} ({p} then {})",
                        entry.index, entry.term
                    ));
                }
                match self.written.get(&key) {
                    Some(&(h, pt)) if h != hash || pt != p => self.violation(format!(
                        "log matching: node {node} wrote a different entry at index {} term {}",
                        entry.index, entry.term
                    )),
                    Some(_) => {}
                    None => {
                        self.written.insert(key, (hash, p));
                    }
                }
            }
            prev = Some(entry.term);
        }
    }

    /// State machine safety: one entry per committed index, ever. `seen_in_term`
    /// is the current term of the node that knows the entry is committed.
    pub fn observe_committed(&mut self, node: NodeId, entry: &Entry, seen_in_term: Term) {
        let hash = payload_hash(entry);
        match self.committed.get_mut(&entry.index) {
            Some((term, h, _)) if *term != entry.term || *h != hash => {
                let term = *term;
                self.violation(format!(
                    "node {node} committed/applied index {} term {} but term {term} was committed there before",
                    entry.index, entry.term
                ))
            }
            Some((_, _, seen)) => *seen = (*seen).min(seen_in_term),
            None => {
                self.committed
                    .insert(entry.index, (entry.term, hash, seen_in_term));
            }
        }
    }

    /// Leader completeness: the leader of a term holds every entry committed
    /// in earlier terms. (A stale leader may lack entries committed in later
    /// terms; it cannot commit anything, so that is no violation.)
    pub fn check_leader_completeness(&mut self, core: &RaftCore) {
        let snapshot_index = core.snapshot_meta().index;
        let mut missing = None;
        for (&index, &(term, hash, seen)) in self.committed.range(snapshot_index + 1..) {
            if seen >= core.term() {
                continue;
            }
            let ok = core
                .entry_at(index)
                .is_some_and(|e| e.term == term && payload_hash(e) == hash);
            if !ok {
                missing = Some((index, term));
                break;
            }
        }
        if let Some((index, term)) = missing {
            self.violation(format!(
                "leader completeness: node {} leads term {} without committed entry {index} (term {term})",
                core.id(),
                core.term()
            ));
        }
    }

    /// The highest index known committed.
    pub fn max_committed(&self) -> Index {
        self.committed.keys().next_back().copied().unwrap_or(0)
    }

    /// How many leaders were elected.
    pub fn leaders_elected(&self) -> usize {
        self.leaders.len()
    }
}
