//! A per-key linearizability checker for Put/Append/Get histories, in the
//! style of Wing & Gong's search with Porcupine's memoisation: find an
//! order of the operations that respects real time (an operation that
//! returned before another was called comes first) and in which every Get
//! returns the value the previous writes built. Writes that never returned
//! (timed out) may take effect at any point after their call, or never.
//!
//! The simulator's client scenarios (`sim::kv`) check every seed's history
//! with it, and the multi-process cluster tests (`tests/cluster_lab.rs`)
//! theirs.

use std::collections::{BTreeMap, HashSet};

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set the value.
    Put(String),
    /// Append to the value.
    Append(String),
    /// Read the value; `None` if the read never returned.
    Get(Option<String>),
}

/// One operation of the history.
#[derive(Clone, Debug)]
pub struct Event {
    /// The key.
    pub key: String,
    /// What it did.
    pub op: Op,
    /// When it was called (any clock that only goes forward: ns since a
    /// test started, simulator steps).
    pub call: u64,
    /// When it returned; `None` if it never did.
    pub ret: Option<u64>,
}

/// Checks every key's history; `Err` names the first key that has no
/// linearization.
pub fn check(history: &[Event]) -> Result<(), String> {
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for event in history {
        // A read that never returned says nothing.
        if matches!(event.op, Op::Get(None))
            || (matches!(event.op, Op::Get(_)) && event.ret.is_none())
        {
            continue;
        }
        by_key.entry(&event.key).or_default().push(event);
    }
    for (key, events) in by_key {
        if let Some(stale) = stale_read(&events) {
            return Err(format!("key {key:?}: {stale}"));
        }
        let mut seen = HashSet::new();
        let found = check_key(&events, &mut seen);
        if seen.len() > MAX_STATES {
            return Err(format!(
                "key {key:?}: gave up after {MAX_STATES} states of {} operations (too many overlap to decide)",
                events.len()
            ));
        }
        if !found {
            return Err(format!(
                "key {key:?}: no linearization of {} operations",
                events.len()
            ));
        }
    }
    Ok(())
}

/// States the search of one key may visit before it gives up (an error:
/// a history too concurrent to decide fails as surely as a wrong one, and
/// a search that cannot end must not eat the machine's memory).
/// A state is remembered as its done-set and a 64-bit hash of the value
/// (not the value itself, which grows with every append), so two million
/// states take a few hundred MB at most.
const MAX_STATES: usize = 2_000_000;

/// A read that missed an append acknowledged before the read was called,
/// found without searching (for keys that are only appended to). The
/// search would find it too, but only after trying every order.
fn stale_read(events: &[&Event]) -> Option<String> {
    if events.iter().any(|e| matches!(e.op, Op::Put(_))) {
        return None;
    }
    for read in events {
        let (Op::Get(Some(value)), Some(_)) = (&read.op, read.ret) else {
            continue;
        };
        for append in events {
            let Op::Append(token) = &append.op else {
                continue;
            };
            if append.ret.is_some_and(|ret| ret < read.call) && !value.contains(token.as_str()) {
                return Some(format!(
                    "a read called at {} returned {value:?}, without {token:?} acknowledged at {}",
                    read.call,
                    append.ret.unwrap_or_default()
                ));
            }
        }
    }
    None
}

fn check_key(events: &[&Event], seen: &mut HashSet<(Vec<u64>, u64)>) -> bool {
    let n = events.len();
    let words = n.div_ceil(64);
    let mut done = vec![0u64; words];
    search(events, &mut done, String::new(), seen)
}

fn hash_of(state: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    state.hash(&mut hasher);
    hasher.finish()
}

fn is_done(done: &[u64], i: usize) -> bool {
    done[i / 64] & (1 << (i % 64)) != 0
}

fn search(
    events: &[&Event],
    done: &mut Vec<u64>,
    state: String,
    seen: &mut HashSet<(Vec<u64>, u64)>,
) -> bool {
    // Finished when every operation that returned is linearized.
    let pending: Vec<usize> = (0..events.len()).filter(|&i| !is_done(done, i)).collect();
    if pending.iter().all(|&i| events[i].ret.is_none()) {
        return true;
    }
    if seen.len() > MAX_STATES || !seen.insert((done.clone(), hash_of(&state))) {
        return false;
    }
    // An operation may go next only if no pending one returned before it was called.
    let first_return = pending
        .iter()
        .filter_map(|&i| events[i].ret)
        .min()
        .unwrap_or(u64::MAX);
    for &i in &pending {
        let event = events[i];
        if event.call > first_return {
            continue;
        }
        let next = match &event.op {
            Op::Put(v) => Some(v.clone()),
            Op::Append(v) => Some(format!("{state}{v}")),
            Op::Get(Some(v)) => (*v == state).then(|| state.clone()),
            Op::Get(None) => None,
        };
        if let Some(next) = next {
            done[i / 64] |= 1 << (i % 64);
            if search(events, done, next, seen) {
                return true;
            }
            done[i / 64] &= !(1 << (i % 64));
        }
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ev(op: Op, call: u64, ret: Option<u64>) -> Event {
        Event {
            key: "k".into(),
            op,
            call,
            ret,
        }
    }

    #[test]
    fn accepts_concurrent_orders_and_refuses_stale_reads() {
        // Append a and b concurrently; a read after both sees either order.
        let ok = vec![
            ev(Op::Append("a".into()), 0, Some(10)),
            ev(Op::Append("b".into()), 1, Some(11)),
            ev(Op::Get(Some("ba".into())), 12, Some(13)),
        ];
        assert!(check(&ok).is_ok());
        // A read after a completed put must see it.
        let stale = vec![
            ev(Op::Put("x".into()), 0, Some(5)),
            ev(Op::Get(Some(String::new())), 6, Some(7)),
        ];
        assert!(check(&stale).is_err());
        // A timed-out append may have happened...
        let maybe = vec![
            ev(Op::Append("a".into()), 0, None),
            ev(Op::Get(Some("a".into())), 10, Some(11)),
        ];
        assert!(check(&maybe).is_ok());
        // ...but not twice.
        let twice = vec![
            ev(Op::Append("a".into()), 0, None),
            ev(Op::Get(Some("aa".into())), 10, Some(11)),
        ];
        assert!(check(&twice).is_err());
        // A read that misses an acknowledged append is named at once.
        let missed = vec![
            ev(Op::Append("a".into()), 0, Some(1)),
            ev(Op::Get(Some(String::new())), 2, Some(3)),
        ];
        let error = check(&missed).unwrap_err();
        assert!(error.contains("without \"a\" acknowledged at 1"), "{error}");
        // Reads may not go back in time.
        let back = vec![
            ev(Op::Append("a".into()), 0, Some(1)),
            ev(Op::Append("b".into()), 2, None),
            ev(Op::Get(Some("ab".into())), 3, Some(4)),
            ev(Op::Get(Some("a".into())), 5, Some(6)),
        ];
        assert!(check(&back).is_err());
    }
}
