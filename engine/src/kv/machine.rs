//! The key/value state machine: applies committed commands deterministically,
//! exactly once per client sequence number, and says what to write.
//!
//! Sans-IO like the Raft core: it reads current values through a [`KvView`]
//! and returns the writes ([`KvWrite`]) and replies of a batch; the runtime
//! commits those writes together with the applied index in one batch.

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_wal::{keys, Index};

use crate::kv::command::{self, BatchOp, Command, CommandError, WriteOp, WriteReply};
use crate::kv::sessions::{Session, SessionChange, SessionLimits, Sessions};
use crate::kv::shard_of::ShardOf;

/// Read access to a group's current data, by inner key (`ShardOf::inner_key`).
pub trait KvView {
    /// The stored value of `inner_key`.
    fn get(&self, inner_key: &[u8]) -> Result<Option<Vec<u8>>, String>;
}

/// A write to a group's data, by inner key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvWrite {
    /// Set a key.
    Put(Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Vec<u8>),
}

/// The reply to the command at a log index.
pub type CommandReply = (Index, Result<WriteReply, CommandError>);

/// The result of applying a batch.
#[derive(Debug, Default)]
pub struct AppliedBatch {
    /// Writes to commit with the new applied index, in order.
    pub writes: Vec<KvWrite>,
    /// Reply to each applied command, by log index.
    pub replies: Vec<CommandReply>,
}

/// The state machine of one group.
#[derive(Debug)]
pub struct KvMachine {
    sessions: Sessions,
    clock_ms: u64,
    shards: Arc<dyn ShardOf>,
}

impl KvMachine {
    /// A machine with no sessions, storing keys under the shards `shards`
    /// gives them.
    pub fn new(limits: SessionLimits, shards: Arc<dyn ShardOf>) -> Self {
        KvMachine {
            sessions: Sessions::new(limits),
            clock_ms: 0,
            shards,
        }
    }

    /// Replaces the sessions with stored ones (`(inner key, value)` pairs
    /// from the session range), at start-up or after a snapshot install.
    pub fn load_sessions<'a>(
        &mut self,
        stored: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<(), String> {
        self.sessions.clear();
        let clock_key = keys::machine_clock_key();
        let mut stored_clock = None;
        for (key, value) in stored {
            if key == clock_key.as_slice() {
                let bytes: [u8; 8] = value
                    .try_into()
                    .map_err(|_| format!("the machine clock is {} bytes, not 8", value.len()))?;
                stored_clock = Some(u64::from_be_bytes(bytes));
                continue;
            }
            let client = keys::parse_session_key(key)
                .ok_or_else(|| format!("not a session key: {}", keys::display_key(key)))?;
            let session: Session = command::decode(value)
                .map_err(|e| format!("session of client {client} does not decode: {e}"))?;
            self.sessions.load(client, session);
        }
        // Stores written before the clock was stored: the sessions' newest.
        self.clock_ms = stored_clock.unwrap_or_else(|| self.sessions.latest_ms());
        Ok(())
    }

    /// Number of client sessions held.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Applies the commands of a batch of committed entries, in order.
    /// A command that does not decode gets an error reply and changes nothing
    /// (every replica decodes the same bytes the same way).
    pub fn apply<'a>(
        &mut self,
        view: &dyn KvView,
        commands: impl IntoIterator<Item = (Index, &'a [u8])>,
    ) -> Result<AppliedBatch, String> {
        let mut overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        let mut replies = Vec::new();
        let clock_before = self.clock_ms;
        for (index, bytes) in commands {
            let command: Command = match command::decode(bytes) {
                Ok(command) => command,
                Err(e) => {
                    replies.push((index, Err(e)));
                    continue;
                }
            };
            self.clock_ms = self.clock_ms.max(command.now_ms);
            // Per command, so where a replica's batch ends changes nothing:
            // first what this command's time expires, then what it evicts.
            self.sessions.enforce(self.clock_ms);
            let reply = self.apply_one(view, &mut overlay, command)?;
            self.sessions.enforce(self.clock_ms);
            replies.push((index, Ok(reply)));
        }
        let mut writes: Vec<KvWrite> = overlay
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => KvWrite::Put(key, value),
                None => KvWrite::Delete(key),
            })
            .collect();
        if self.clock_ms != clock_before {
            writes.push(KvWrite::Put(
                keys::machine_clock_key(),
                self.clock_ms.to_be_bytes().to_vec(),
            ));
        }
        for change in self.sessions.take_changes() {
            writes.push(match change {
                SessionChange::Upsert(client, session) => {
                    KvWrite::Put(keys::session_key(client), command::encode(&session))
                }
                SessionChange::Remove(client) => KvWrite::Delete(keys::session_key(client)),
            });
        }
        Ok(AppliedBatch { writes, replies })
    }

    fn apply_one(
        &mut self,
        view: &dyn KvView,
        overlay: &mut BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        command: Command,
    ) -> Result<WriteReply, String> {
        if command.client != 0 {
            let known = self.sessions.get(command.client);
            if command.op == WriteOp::OpenSession {
                return Ok(match known {
                    Some(_) => WriteReply::Done,
                    None => self.record(command.client, 0, WriteReply::Done),
                });
            }
            match known {
                Some(session) if command.seq == session.seq => return Ok(session.reply.clone()),
                Some(session) if command.seq < session.seq => {
                    return Ok(WriteReply::StaleSequence { last: session.seq })
                }
                Some(_) => {}
                // Never opened, or evicted: this may be the retry of a write
                // applied before the eviction, so it must not be applied.
                None => return Ok(WriteReply::SessionExpired),
            }
        }
        let op = match command.op {
            WriteOp::Batch { ops } => {
                for op in ops {
                    match op {
                        BatchOp::Put { key, value } => {
                            overlay.insert(self.shards.inner_key(&key), Some(value))
                        }
                        BatchOp::Delete { key } => {
                            overlay.insert(self.shards.inner_key(&key), None)
                        }
                    };
                }
                return Ok(self.record(command.client, command.seq, WriteReply::Done));
            }
            single => single,
        };
        let inner = self
            .shards
            .inner_key(op.keys().first().copied().unwrap_or_default());
        // A put does not depend on the old value: skip the read.
        let current = match (&op, overlay.get(&inner)) {
            (WriteOp::Put { .. }, _) => None,
            (_, Some(value)) => value.clone(),
            (_, None) => view.get(&inner)?,
        };
        let (new, reply) = match op {
            WriteOp::Put { value, .. } => (Some(Some(value)), WriteReply::Done),
            WriteOp::Append { value, .. } => {
                let mut joined = current.unwrap_or_default();
                let bytes = joined.len() + value.len();
                if bytes > command::MAX_VALUE_BYTES {
                    (
                        None,
                        WriteReply::TooLarge {
                            bytes: bytes as u64,
                        },
                    )
                } else {
                    joined.extend_from_slice(&value);
                    (Some(Some(joined)), WriteReply::Done)
                }
            }
            WriteOp::Delete { .. } => (
                Some(None),
                WriteReply::Deleted {
                    existed: current.is_some(),
                },
            ),
            // Applied above; a session is opened above (client 0 has none).
            WriteOp::Batch { .. } | WriteOp::OpenSession => (None, WriteReply::Done),
            WriteOp::CompareAndSwap { expected, new, .. } => {
                if current == expected {
                    (
                        Some(new.clone()),
                        WriteReply::Swapped {
                            swapped: true,
                            current: new,
                        },
                    )
                } else {
                    (
                        None,
                        WriteReply::Swapped {
                            swapped: false,
                            current,
                        },
                    )
                }
            }
        };
        if let Some(new) = new {
            overlay.insert(inner, new);
        }
        Ok(self.record(command.client, command.seq, reply))
    }

    /// Remembers `reply` in the client's session (none for client 0).
    fn record(&mut self, client: u64, seq: u64, reply: WriteReply) -> WriteReply {
        if client != 0 {
            self.sessions
                .record(client, seq, self.clock_ms, reply.clone());
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys spread over four shards by their first byte.
    #[derive(Debug)]
    struct TestShards;

    impl ShardOf for TestShards {
        fn shard_of(&self, key: &[u8]) -> u16 {
            u16::from(key.first().copied().unwrap_or(0) % 4)
        }

        fn count(&self) -> u16 {
            4
        }
    }

    #[derive(Default)]
    struct Map(BTreeMap<Vec<u8>, Vec<u8>>);

    impl KvView for Map {
        fn get(&self, inner_key: &[u8]) -> Result<Option<Vec<u8>>, String> {
            Ok(self.0.get(inner_key).cloned())
        }
    }

    impl Map {
        fn commit(&mut self, batch: &AppliedBatch) {
            for write in &batch.writes {
                match write {
                    KvWrite::Put(k, v) => self.0.insert(k.clone(), v.clone()),
                    KvWrite::Delete(k) => self.0.remove(k),
                };
            }
        }
        fn user(&self, key: &[u8]) -> Option<&Vec<u8>> {
            self.0.get(&TestShards.inner_key(key))
        }
    }

    fn cmd(client: u64, seq: u64, op: WriteOp) -> Vec<u8> {
        command::encode(&Command {
            client,
            seq,
            now_ms: seq * 10,
            op,
        })
    }

    fn append(key: &str, value: &str) -> WriteOp {
        WriteOp::Append {
            key: key.into(),
            value: value.into(),
        }
    }

    fn run(machine: &mut KvMachine, data: &mut Map, batch: &[Vec<u8>]) -> Vec<WriteReply> {
        let applied = machine
            .apply(
                data,
                batch
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (i as u64 + 1, b.as_slice())),
            )
            .expect("apply");
        data.commit(&applied);
        applied
            .replies
            .into_iter()
            .map(|(_, r)| r.expect("decodes"))
            .collect()
    }

    /// A machine started from what `data` stores (a restart).
    fn reloaded(limits: SessionLimits, data: &Map) -> KvMachine {
        let mut machine = KvMachine::new(limits, Arc::new(TestShards));
        let (start, end) = keys::session_range();
        machine
            .load_sessions(
                data.0
                    .range(start..end)
                    .map(|(k, v)| (k.as_slice(), v.as_slice())),
            )
            .expect("load");
        machine
    }

    /// A seeded mix of session opens, appends, retries and stale numbers
    /// from five clients, with a clock that mostly moves on and sometimes
    /// back (a new leader's clock behind the old one's).
    fn mixed_commands(seed: u64, count: usize) -> Vec<Vec<u8>> {
        let mut state = seed;
        let mut next = move |bound: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % bound
        };
        let mut seqs = [0u64; 6];
        let mut now = 1_000u64;
        (0..count)
            .map(|_| {
                now = match next(10) {
                    0 => now.saturating_sub(next(40)),
                    _ => now + next(30),
                };
                let client = 1 + next(5);
                let c = client as usize;
                let (seq, op) = match next(6) {
                    0 => (0, WriteOp::OpenSession),
                    1 => (seqs[c].max(1), append("k", &format!("r{client}"))),
                    _ => {
                        seqs[c] += 1;
                        let value = format!("{client}.{}", seqs[c]);
                        (seqs[c], append(&format!("k{}", next(3)), &value))
                    }
                };
                command::encode(&Command {
                    client,
                    seq,
                    now_ms: now,
                    op,
                })
            })
            .collect()
    }

    /// Applies `commands` in batches cut at `cuts`, reloading the machine
    /// from the stored data (a restart) after the batches in `restarts`.
    fn apply_in_batches(
        limits: SessionLimits,
        commands: &[Vec<u8>],
        cuts: &[usize],
        restarts: &[usize],
    ) -> (Map, Vec<WriteReply>) {
        let mut machine = KvMachine::new(limits, Arc::new(TestShards));
        let mut data = Map::default();
        let mut replies = Vec::new();
        let mut start = 0;
        for (batch, &end) in cuts.iter().chain([&commands.len()]).enumerate() {
            replies.extend(run(&mut machine, &mut data, &commands[start..end]));
            start = end;
            if restarts.contains(&batch) {
                machine = reloaded(limits, &data);
            }
        }
        (data, replies)
    }

    #[test]
    fn replicas_that_batch_and_restart_differently_reach_the_same_state() {
        // Replicas apply the same log in different batches (each applies
        // what it learned committed) and after restarts, so session expiry
        // and eviction must not depend on either.
        let limits = SessionLimits {
            max_sessions: 2,
            idle_expiry_ms: 60,
        };
        for seed in 0..200 {
            let commands = mixed_commands(seed, 60);
            let one_batch = apply_in_batches(limits, &commands, &[], &[]);
            let singles: Vec<usize> = (1..commands.len()).collect();
            let restarting = (10..commands.len()).step_by(7).collect::<Vec<_>>();
            for (cuts, restarts) in [
                (singles.clone(), vec![]),
                (restarting.clone(), vec![]),
                (restarting.clone(), (0..restarting.len()).collect()),
                (singles, (0..commands.len()).step_by(3).collect()),
            ] {
                let other = apply_in_batches(limits, &commands, &cuts, &restarts);
                assert_eq!(other.1, one_batch.1, "seed {seed}: replies differ");
                assert_eq!(other.0 .0, one_batch.0 .0, "seed {seed}: data differs");
            }
        }
    }

    #[test]
    fn a_retried_write_is_applied_once_even_in_the_same_batch() {
        let mut machine = KvMachine::new(SessionLimits::default(), Arc::new(TestShards));
        let mut data = Map::default();
        let first = cmd(5, 1, append("k", "a"));
        let open = cmd(5, 0, WriteOp::OpenSession);
        run(
            &mut machine,
            &mut data,
            &[open, first.clone(), first.clone()],
        );
        run(
            &mut machine,
            &mut data,
            &[first, cmd(5, 2, append("k", "b"))],
        );
        assert_eq!(data.user(b"k"), Some(&b"ab".to_vec()));
        // Sessions are stored with the data and survive a reload.
        let mut reloaded = reloaded(SessionLimits::default(), &data);
        assert_eq!(reloaded.session_count(), 1);
        run(&mut reloaded, &mut data, &[cmd(5, 2, append("k", "b"))]);
        assert_eq!(data.user(b"k"), Some(&b"ab".to_vec()));
        let replies = run(&mut reloaded, &mut data, &[cmd(5, 1, append("k", "a"))]);
        assert_eq!(replies, vec![WriteReply::StaleSequence { last: 2 }]);
    }

    #[test]
    fn an_append_past_the_largest_value_is_refused_and_changes_nothing() {
        let mut machine = KvMachine::new(SessionLimits::default(), Arc::new(TestShards));
        let mut data = Map::default();
        let half = "x".repeat(command::MAX_VALUE_BYTES / 2);
        let replies = run(
            &mut machine,
            &mut data,
            &[
                cmd(0, 0, append("k", &half)),
                cmd(0, 0, append("k", &half)),
                cmd(0, 0, append("k", "y")),
            ],
        );
        assert_eq!(
            replies,
            vec![
                WriteReply::Done,
                WriteReply::Done,
                WriteReply::TooLarge {
                    bytes: command::MAX_VALUE_BYTES as u64 + 1
                }
            ]
        );
        assert_eq!(
            data.user(b"k").map(Vec::len),
            Some(command::MAX_VALUE_BYTES)
        );
    }

    #[test]
    fn a_batch_applies_all_its_operations_once_and_later_ones_win() {
        let mut machine = KvMachine::new(SessionLimits::default(), Arc::new(TestShards));
        let mut data = Map::default();
        run(&mut machine, &mut data, &[cmd(0, 0, append("gone", "x"))]);
        let put = |k: &str, v: &str| BatchOp::Put {
            key: k.into(),
            value: v.into(),
        };
        let batch = WriteOp::Batch {
            ops: vec![
                put("a", "1"),
                put("b", "2"),
                put("a", "3"),
                BatchOp::Delete {
                    key: b"gone".to_vec(),
                },
            ],
        };
        let replies = run(
            &mut machine,
            &mut data,
            &[cmd(7, 0, WriteOp::OpenSession), cmd(7, 1, batch.clone())],
        );
        assert_eq!(replies, vec![WriteReply::Done, WriteReply::Done]);
        assert_eq!(data.user(b"a"), Some(&b"3".to_vec()));
        assert_eq!(data.user(b"b"), Some(&b"2".to_vec()));
        assert_eq!(data.user(b"gone"), None);
        // A retried batch is answered from the session, not applied again.
        run(&mut machine, &mut data, &[cmd(7, 2, append("b", "+"))]);
        let replies = run(&mut machine, &mut data, &[cmd(7, 2, batch)]);
        assert_eq!(replies, vec![WriteReply::Done]);
        assert_eq!(data.user(b"b"), Some(&b"2+".to_vec()));
        // An empty batch changes nothing and is no error.
        let replies = run(
            &mut machine,
            &mut data,
            &[cmd(0, 0, WriteOp::Batch { ops: vec![] })],
        );
        assert_eq!(replies, vec![WriteReply::Done]);
    }

    #[test]
    fn a_write_of_a_session_never_opened_is_refused_even_the_first() {
        let mut machine = KvMachine::new(SessionLimits::default(), Arc::new(TestShards));
        let mut data = Map::default();
        let replies = run(
            &mut machine,
            &mut data,
            &[cmd(9, 1, append("k", "x")), cmd(9, 4, append("k", "y"))],
        );
        assert_eq!(
            replies,
            vec![WriteReply::SessionExpired, WriteReply::SessionExpired]
        );
        assert_eq!(data.user(b"k"), None);
        assert_eq!(machine.session_count(), 0);
    }

    #[test]
    fn a_retried_first_write_after_its_session_was_evicted_is_not_applied_again() {
        let limits = SessionLimits {
            max_sessions: 1,
            ..SessionLimits::default()
        };
        let mut machine = KvMachine::new(limits, Arc::new(TestShards));
        let mut data = Map::default();
        let open = |client| cmd(client, 0, WriteOp::OpenSession);
        let replies = run(
            &mut machine,
            &mut data,
            &[open(1), cmd(1, 1, append("k", "a"))],
        );
        assert_eq!(replies, vec![WriteReply::Done, WriteReply::Done]);
        // Opening again (a retried open) leaves the session where it is.
        let replies = run(
            &mut machine,
            &mut data,
            &[open(1), cmd(1, 1, append("k", "a"))],
        );
        assert_eq!(replies, vec![WriteReply::Done, WriteReply::Done]);
        assert_eq!(
            data.user(b"k"),
            Some(&b"a".to_vec()),
            "answered from the session"
        );
        // Another client's session evicts it (one session kept); the retry
        // of the first write is refused, not applied a second time.
        run(&mut machine, &mut data, &[open(2)]);
        let replies = run(&mut machine, &mut data, &[cmd(1, 1, append("k", "a"))]);
        assert_eq!(replies, vec![WriteReply::SessionExpired]);
        assert_eq!(data.user(b"k"), Some(&b"a".to_vec()));
    }

    #[test]
    fn delete_and_compare_and_swap_see_earlier_writes_of_the_batch() {
        let mut machine = KvMachine::new(SessionLimits::default(), Arc::new(TestShards));
        let mut data = Map::default();
        let put = |v: &str| WriteOp::Put {
            key: b"k".to_vec(),
            value: v.into(),
        };
        let cas = |expected: Option<&str>, new: Option<&str>| WriteOp::CompareAndSwap {
            key: b"k".to_vec(),
            expected: expected.map(Into::into),
            new: new.map(Into::into),
        };
        let replies = run(
            &mut machine,
            &mut data,
            &[
                cmd(0, 0, cas(None, Some("1"))),
                cmd(0, 0, cas(None, Some("2"))),
                cmd(0, 0, cas(Some("1"), Some("3"))),
                cmd(0, 0, WriteOp::Delete { key: b"k".to_vec() }),
                cmd(0, 0, WriteOp::Delete { key: b"k".to_vec() }),
                cmd(0, 0, put("4")),
            ],
        );
        assert_eq!(
            replies[..6],
            [
                WriteReply::Swapped {
                    swapped: true,
                    current: Some(b"1".to_vec())
                },
                WriteReply::Swapped {
                    swapped: false,
                    current: Some(b"1".to_vec())
                },
                WriteReply::Swapped {
                    swapped: true,
                    current: Some(b"3".to_vec())
                },
                WriteReply::Deleted { existed: true },
                WriteReply::Deleted { existed: false },
                WriteReply::Done,
            ]
        );
        assert_eq!(data.user(b"k"), Some(&b"4".to_vec()));
        assert_eq!(machine.session_count(), 0, "client 0 keeps no session");
        let garbage = machine
            .apply(&data, [(8, &[9u8, 9, 9][..])])
            .expect("apply");
        assert!(matches!(
            garbage.replies[..],
            [(8, Err(CommandError::Version { found: 9 }))]
        ));
        assert!(garbage.writes.is_empty());
    }
}
