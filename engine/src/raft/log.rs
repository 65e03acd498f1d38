//! The core's in-memory view of its log: the entries after the last snapshot,
//! the commit index, and the membership history needed to undo a truncated
//! configuration entry. The runtime's log store holds the durable copy.

use flotilla_wal::{Entry, EntryPayload, Index, Membership, Term};

use crate::raft::message::SnapshotMeta;

pub(crate) struct RaftLog {
    snapshot: SnapshotMeta,
    /// `entries[i].index == snapshot.index + 1 + i`.
    entries: Vec<Entry>,
    pub(crate) committed: Index,
    /// Membership entries in the log, ascending; the snapshot's membership applies before them.
    configs: Vec<(Index, Membership)>,
}

impl RaftLog {
    pub(crate) fn new(snapshot: SnapshotMeta, entries: Vec<Entry>, committed: Index) -> Self {
        let mut log = RaftLog {
            committed: committed.max(snapshot.index),
            snapshot,
            entries: Vec::new(),
            configs: Vec::new(),
        };
        log.append(entries);
        log.committed = log.committed.min(log.last_index());
        log
    }

    pub(crate) fn snapshot(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    pub(crate) fn first_index(&self) -> Index {
        self.snapshot.index + 1
    }

    pub(crate) fn last_index(&self) -> Index {
        self.snapshot.index + self.entries.len() as u64
    }

    pub(crate) fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot.term, |e| e.term)
    }

    /// The term at `index`, or None if it was compacted away or is not written yet.
    pub(crate) fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub(crate) fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.snapshot.index {
            return None;
        }
        self.entries.get((index - self.snapshot.index - 1) as usize)
    }

    pub(crate) fn matches(&self, index: Index, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Entries from `lo` to `hi` inclusive, stopping once `max_bytes` is reached
    /// (at least one entry is returned when the range is not empty).
    pub(crate) fn slice(&self, lo: Index, hi: Index, max_bytes: u64) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut index = lo;
        while index <= hi {
            let Some(entry) = self.entry(index) else {
                break;
            };
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
            index += 1;
        }
        out
    }

    /// Is a log ending at (`last_index`, `last_term`) at least as up to date as ours (§5.4.1)?
    pub(crate) fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Appends entries, truncating whatever follows `entries[0].index - 1` first.
    pub(crate) fn append(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first() else { return };
        let keep = first.index.saturating_sub(self.snapshot.index + 1) as usize;
        self.entries.truncate(keep);
        self.configs.retain(|(index, _)| *index < first.index);
        for entry in entries {
            if let EntryPayload::Membership(m) = &entry.payload {
                self.configs.push((entry.index, m.clone()));
            }
            self.entries.push(entry);
        }
    }

    /// The first index at which `entries` disagree with the log, if any.
    pub(crate) fn find_conflict(&self, entries: &[Entry]) -> Option<Index> {
        entries
            .iter()
            .find(|e| !self.matches(e.index, e.term))
            .map(|e| e.index)
    }

    /// First index of the run of `term` that contains `index` (bounded by the snapshot).
    pub(crate) fn first_index_of_term(&self, index: Index, term: Term) -> Index {
        let mut i = index;
        while i > self.first_index() && self.term(i - 1) == Some(term) {
            i -= 1;
        }
        i
    }

    /// Last index holding an entry of `term`, if the uncompacted log has one.
    pub(crate) fn last_index_of_term(&self, term: Term) -> Option<Index> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.term == term)
            .map(|e| e.index)
    }

    /// The latest membership, and the index of the entry that set it (0 for the snapshot's).
    pub(crate) fn membership(&self) -> (Index, &Membership) {
        match self.configs.last() {
            Some((index, m)) => (*index, m),
            None => (self.snapshot.index, &self.snapshot.membership),
        }
    }

    /// The membership in force at `index`.
    pub(crate) fn membership_at(&self, index: Index) -> Membership {
        self.configs
            .iter()
            .rev()
            .find(|(at, _)| *at <= index)
            .map_or_else(|| self.snapshot.membership.clone(), |(_, m)| m.clone())
    }

    /// Drops entries up to `index`, recording it as the snapshot point.
    pub(crate) fn compact(&mut self, index: Index) -> SnapshotMeta {
        let meta = SnapshotMeta {
            index,
            term: self.term(index).unwrap_or(self.snapshot.term),
            membership: self.membership_at(index),
        };
        let drop = (index - self.snapshot.index) as usize;
        self.entries.drain(..drop.min(self.entries.len()));
        self.configs.retain(|(at, _)| *at > index);
        self.snapshot = meta.clone();
        meta
    }

    /// Replaces everything with an installed snapshot.
    pub(crate) fn restore(&mut self, meta: SnapshotMeta) {
        self.entries.clear();
        self.configs.clear();
        self.committed = meta.index;
        self.snapshot = meta;
    }

    pub(crate) fn entry_count(&self) -> usize {
        self.entries.len()
    }
}
