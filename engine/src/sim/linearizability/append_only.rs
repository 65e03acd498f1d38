//! The check of a key that is only appended to, in time linear in its
//! history (after a sort), where the search is exponential in the number of
//! operations that overlap.
//!
//! Every state of such a key is a prefix of its later states, so the
//! longest read gives the order of every append it holds. Cut into the
//! appended values (when exactly one value fits at each point, the cut is
//! the only one), it fixes the order of the operations: append 1, the reads
//! that saw one append, append 2, and so on. Whether a history has a
//! linearization in that order is then a matter of placing each operation
//! at a point within its call and return, no earlier than the one before:
//! placing each as early as it can go finds such points whenever they exist.
//! Appends no read shows go last; those that never returned may also never
//! have happened.

use super::{Event, Op};

/// `Some(verdict)` when the key's history can be decided this way; `None`
/// when it must be searched (a Put, an empty appended value, a read that
/// cuts into appended values more than one way).
pub(super) fn check(events: &[&Event]) -> Option<Result<(), String>> {
    let mut appends = Vec::new();
    let mut reads = Vec::new();
    for event in events {
        match &event.op {
            Op::Put(_) => return None,
            Op::Append(token) if token.is_empty() => return None,
            Op::Append(token) => appends.push((token.as_str(), *event)),
            Op::Get(Some(value)) => reads.push((value.as_str(), *event)),
            Op::Get(None) => {}
        }
    }
    let longest = reads.iter().map(|(v, _)| *v).max_by_key(|v| v.len())?;
    for (value, read) in &reads {
        if !longest.starts_with(value) {
            return Some(Err(format!(
                "a read called at {} returned {value:?}, which no later state of an \
                 appended value can have beside {longest:?}",
                read.call
            )));
        }
    }
    let order = match cut(longest, &appends)? {
        Ok(order) => order,
        Err(rest) => {
            return Some(Err(format!(
                "a read returned {longest:?}, whose end {rest:?} is no value appended, \
                 or one applied twice"
            )))
        }
    };
    // The state after each append of the order, by length.
    let mut level_of_length = std::collections::HashMap::new();
    let mut length = 0;
    level_of_length.insert(0, 0);
    for (level, &i) in order.iter().enumerate() {
        length += appends[i].0.len();
        level_of_length.insert(length, level + 1);
    }
    let mut reads_at: Vec<Vec<&Event>> = vec![Vec::new(); order.len() + 1];
    for (value, read) in &reads {
        let Some(&level) = level_of_length.get(&value.len()) else {
            return Some(Err(format!(
                "a read called at {} returned {value:?}, which stops inside an appended value",
                read.call
            )));
        };
        reads_at[level].push(read);
    }
    // Place each operation as early as it can go, in the order fixed above;
    // `by` says which operation set the current point, for the error.
    let mut at = 0u64;
    let mut by = String::from("the start");
    for (level, reads) in reads_at.iter().enumerate() {
        if level > 0 {
            let (token, append) = appends[order[level - 1]];
            if append.call > at {
                at = append.call;
                by = format!("the append of {token:?} called at {}", append.call);
            }
            if append.ret.is_some_and(|ret| ret < at) {
                return Some(Err(format!(
                    "the append of {token:?} returned at {}, before {by}, which the reads put before it",
                    append.ret.unwrap_or_default()
                )));
            }
        }
        let (mut latest, mut latest_by) = (at, by.clone());
        for read in reads {
            if read.ret.is_some_and(|ret| ret < at) {
                return Some(Err(format!(
                    "a read called at {} and returned at {} saw {level} appends, yet comes after {by}",
                    read.call,
                    read.ret.unwrap_or_default()
                )));
            }
            if read.call > latest {
                latest = read.call;
                latest_by = format!("a read called at {} that saw {level} appends", read.call);
            }
        }
        (at, by) = (latest, latest_by);
    }
    // Appends no read shows go after every read, in any order; one that
    // returned before the last read had to be placed fails.
    let mut shown = vec![false; appends.len()];
    for &i in &order {
        shown[i] = true;
    }
    for ((token, append), shown) in appends.iter().zip(shown) {
        if !shown && append.ret.is_some_and(|ret| ret < at) {
            return Some(Err(format!(
                "the append of {token:?} returned at {}, before {by}, and no read shows it",
                append.ret.unwrap_or_default()
            )));
        }
    }
    Some(Ok(()))
}

/// The appends, by index into `appends`, whose values make up `value` in
/// order, if exactly one unused value fits at each point; `Some(Err(rest))`
/// if at some point none does (and none could have before: the cut so far
/// was the only one), `None` if more than one did.
fn cut<'v>(value: &'v str, appends: &[(&str, &Event)]) -> Option<Result<Vec<usize>, &'v str>> {
    let mut used = vec![false; appends.len()];
    let mut order = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let mut fits = (0..appends.len()).filter(|&i| !used[i] && rest.starts_with(appends[i].0));
        let Some(first) = fits.next() else {
            return Some(Err(rest));
        };
        if fits.next().is_some() {
            return None;
        }
        used[first] = true;
        order.push(first);
        rest = &rest[appends[first].0.len()..];
    }
    Some(Ok(order))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashSet;

    use super::*;
    use crate::SplitMix64;

    /// A small random history of appends and reads on one key: run by a
    /// real register with random linearization points, then (sometimes)
    /// damaged, so some are linearizable and some are not.
    fn random_history(rng: &mut SplitMix64) -> Vec<Event> {
        let ops = rng.range(1, 8) as usize;
        let mut value = String::new();
        let mut events = Vec::new();
        for i in 0..ops {
            let point = rng.range(0, 100) * 10 + i as u64;
            let call = point.saturating_sub(rng.range(0, 40));
            let ret = (!rng.chance(0.15)).then(|| point + rng.range(0, 40));
            let op = if rng.chance(0.5) {
                let token = format!("[{i}]");
                value.push_str(&token);
                Op::Append(token)
            } else {
                Op::Get(Some(value.clone()))
            };
            events.push(Event {
                key: "k".into(),
                op,
                call,
                ret,
            });
        }
        if rng.chance(0.5) {
            // Damage: swap two operations' intervals.
            let a = rng.range(0, ops as u64) as usize;
            let b = rng.range(0, ops as u64) as usize;
            let (call, ret) = (events[a].call, events[a].ret);
            events[a].call = events[b].call;
            events[a].ret = events[b].ret;
            events[b].call = call;
            events[b].ret = ret;
        }
        events.retain(|e| !(matches!(e.op, Op::Get(_)) && e.ret.is_none()));
        events
    }

    #[test]
    fn the_fast_check_agrees_with_the_search() {
        let mut rng = SplitMix64::new(7);
        let (mut decided, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let history = random_history(&mut rng);
            let events: Vec<&Event> = history.iter().collect();
            let Some(fast) = check(&events) else {
                continue;
            };
            let searched = super::super::check_key(&events, &mut HashSet::new());
            assert_eq!(fast.is_ok(), searched, "{history:#?}\nfast: {fast:?}");
            decided += 1;
            refused += usize::from(!searched);
        }
        // Both kinds were compared, many times.
        assert!(decided > 5_000 && refused > 1_000, "{decided} {refused}");
    }
}
