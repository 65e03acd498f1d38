//! A per-key linearizability checker for Put/Append/Get histories, in the
//! style of Wing & Gong's search with Porcupine's memoisation: find an
//! order of the operations that respects real time (an operation that
//! returned before another was called comes first) and in which every Get
//! returns the value the previous writes built. Writes that never returned
//! (timed out) may take effect at any point after their call, or never.
//!
//! A key that is only appended to is decided first without searching
//! ([`append_only`]): its reads fix the order of its appends, which makes
//! the check linear. Leader kills leave histories of 1,500 operations per
//! key with a few dozen writes that timed out, which the search alone gave
//! up on.
//!
//! The simulator's client scenarios (`sim::kv`) check every seed's history
//! with it, and the multi-process cluster tests (`tests/cluster_lab.rs`)
//! theirs.

use std::collections::{BTreeMap, HashSet};

mod append_only;

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
    for (key, mut events) in by_key {
        match append_only::check(&events) {
            Some(Ok(())) => continue,
            Some(Err(e)) => return Err(format!("key {key:?}: {e}")),
            None => {}
        }
        if let Some(stale) = stale_read(&events) {
            return Err(format!("key {key:?}: {stale}"));
        }
        drop_unseen_timed_out_appends(&mut events);
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

/// Removes the appends that never returned and whose value no read shows.
///
/// Such an append either never happened or happened where no read could
/// see it (after the last read before the next Put), so the history with
/// it is linearizable exactly when the history without it is. Kept, each
/// one could go at any point after its call, doubling the orders to try:
/// twenty of them (a few leader kills' worth of timed-out clients) are
/// a million states.
fn drop_unseen_timed_out_appends(events: &mut Vec<&Event>) {
    let reads: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.op {
            Op::Get(Some(value)) if e.ret.is_some() => Some(value.as_str()),
            _ => None,
        })
        .collect();
    events.retain(|e| match &e.op {
        Op::Append(token) if e.ret.is_none() => reads.iter().any(|r| r.contains(token.as_str())),
        _ => true,
    });
}

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
        assert!(
            error.contains("the append of \"a\" returned at 1, before a read called at 2"),
            "{error}"
        );
        // Reads may not go back in time.
        let back = vec![
            ev(Op::Append("a".into()), 0, Some(1)),
            ev(Op::Append("b".into()), 2, None),
            ev(Op::Get(Some("ab".into())), 3, Some(4)),
            ev(Op::Get(Some("a".into())), 5, Some(6)),
        ];
        assert!(check(&back).is_err());
        // An append that timed out unseen may have happened after every
        // read, but not before one.
        let unseen = vec![
            ev(Op::Append("a".into()), 0, Some(1)),
            ev(Op::Append("x".into()), 2, None),
            ev(Op::Get(Some("a".into())), 3, Some(4)),
            ev(Op::Append("b".into()), 5, Some(6)),
            ev(Op::Get(Some("ab".into())), 7, Some(8)),
        ];
        assert!(check(&unseen).is_ok());
        let seen_once = vec![
            ev(Op::Append("a".into()), 0, Some(1)),
            ev(Op::Append("x".into()), 2, None),
            ev(Op::Get(Some("ax".into())), 3, Some(4)),
            ev(Op::Get(Some("a".into())), 5, Some(6)),
        ];
        assert!(check(&seen_once).is_err());
    }

    #[test]
    fn a_long_history_of_overlapping_clients_is_decided_at_once() {
        // Three clients, 3,000 operations, each overlapping the others',
        // one append in ten timing out (some applied, some not): far past
        // what the search decides, decided by the append-only check.
        let mut rng = crate::SplitMix64::new(11);
        let mut history = Vec::new();
        let mut value = String::new();
        for i in 0..3_000u64 {
            let point = i * 100;
            let call = point - rng.range(0, 250).min(point);
            let ret = point + rng.range(0, 250);
            if i % 3 == 0 {
                history.push(ev(Op::Get(Some(value.clone())), call, Some(ret)));
            } else {
                let token = format!("[{i}]");
                let timed_out = i % 10 == 1;
                if !(timed_out && i % 20 == 1) {
                    value.push_str(&token);
                }
                history.push(ev(Op::Append(token), call, (!timed_out).then_some(ret)));
            }
        }
        assert_eq!(check(&history), Ok(()));
        // A read that misses the appends since one acknowledged well before
        // it was called fails.
        let last_read = history
            .iter()
            .rposition(|e| matches!(e.op, Op::Get(_)))
            .unwrap();
        let Op::Get(Some(seen)) = &history[last_read].op else {
            panic!("not a read");
        };
        let cut = seen.find("[2900]").unwrap();
        let missing = "[2900]";
        history[last_read].op = Op::Get(Some(seen[..cut].to_string()));
        let error = check(&history).unwrap_err();
        assert!(error.contains(missing), "{error}");
    }

    #[test]
    fn appends_that_timed_out_unseen_do_not_multiply_the_search() {
        // One client appends and reads in turn; every fourth append times
        // out and no read shows it. Each such append could go anywhere
        // after its call, so searched as they are the orders double with
        // every one (2^60 here); a few leader kills give this shape.
        // A Put first keeps the key off the append-only check: this is the search.
        let mut history = vec![ev(Op::Put(String::new()), 0, Some(1))];
        let mut value = String::new();
        let mut clock = 0;
        for i in 0..240 {
            clock += 10;
            let token = format!("[{i}]");
            if i % 4 == 3 {
                history.push(ev(Op::Append(token), clock, None));
            } else {
                value.push_str(&token);
                history.push(ev(Op::Append(token), clock, Some(clock + 1)));
            }
            clock += 10;
            history.push(ev(Op::Get(Some(value.clone())), clock, Some(clock + 1)));
        }
        assert_eq!(check(&history), Ok(()));
        // The same history with one read missing an acknowledged append
        // still fails.
        let Some(Event { op, .. }) = history.get_mut(402) else {
            panic!("history too short");
        };
        *op = Op::Get(Some(String::new()));
        assert!(check(&history).is_err());
    }
}
