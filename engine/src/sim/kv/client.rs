//! A simulated client of a key/value group, as the real one behaves: it
//! opens an exactly-once session, appends unique tokens and reads
//! (linearizable or lease), sends to the leader it last heard of, and on a
//! timeout, a lost node or `NotLeader` sends the same command (same
//! session number) elsewhere. Every operation goes into the history the
//! scenario checks.

use flotilla_wal::NodeId;

use crate::group::{NodeError, ReadConsistency};
use crate::kv::{command, Command, CommandError, ShardOf, SingleShard, WriteOp, WriteReply};
use crate::sim::cluster::Cluster;
use crate::sim::kv::machine::KvSimMachine;
use crate::sim::linearizability::{Event, Op};
use crate::sim::node::{Answers, SimReply};

/// Where every client's answers arrive, and the request numbers.
pub(crate) struct Outbox {
    pub(crate) writes: Answers<Result<WriteReply, CommandError>>,
    pub(crate) reads: Answers<Option<Vec<u8>>>,
    next_request: u64,
}

impl Outbox {
    pub(crate) fn new() -> Self {
        Outbox {
            writes: Default::default(),
            reads: Default::default(),
            next_request: 1,
        }
    }

    fn request(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }
}

/// What a client is waiting for.
enum Work {
    /// Opening session `session`.
    Open,
    /// Appending `token` to `key` with session number `seq`; the history's
    /// event `event`.
    Append {
        key: String,
        token: String,
        seq: u64,
        event: usize,
    },
    /// Reading `key`; the history's event `event`.
    Read {
        key: String,
        consistency: ReadConsistency,
        event: usize,
    },
}

/// One attempt of the current work.
struct Attempt {
    request: u64,
    /// Tick after which the client gives up on this attempt and resends.
    deadline: u64,
}

/// What a client saw that no correct node may answer.
pub(crate) type Violation = String;

/// One simulated client.
pub(crate) struct SimClient {
    index: usize,
    session: u64,
    next_seq: u64,
    next_token: u64,
    target: NodeId,
    work: Option<Work>,
    attempt: Option<Attempt>,
    /// Attempts sent (the first included), for the report.
    pub(crate) sends: u64,
    /// Sessions opened, for new session ids.
    sessions_opened: u64,
    /// Leader hints followed since the client last moved on by itself.
    hints_followed: u32,
    /// The node the client moves on from when it has no hint to follow:
    /// a rotation through every node that hints do not move.
    cursor: NodeId,
}

impl SimClient {
    pub(crate) fn new(index: usize, first_target: NodeId) -> Self {
        let mut client = SimClient {
            index,
            session: 0,
            next_seq: 1,
            next_token: 0,
            target: first_target,
            work: None,
            attempt: None,
            sends: 0,
            sessions_opened: 0,
            hints_followed: 0,
            cursor: first_target,
        };
        client.new_session();
        client
    }

    fn new_session(&mut self) {
        self.sessions_opened += 1;
        // Distinct per client and per session, never 0 (no session).
        self.session = (self.index as u64 + 1) << 32 | self.sessions_opened;
        self.next_seq = 1;
        self.work = Some(Work::Open);
        self.attempt = None;
    }

    /// What the client is doing, for a liveness report.
    pub(crate) fn describe(&self) -> String {
        let work = match &self.work {
            None => "idle".to_string(),
            Some(Work::Open) => format!("opening session {:#x}", self.session),
            Some(Work::Append {
                key, token, seq, ..
            }) => {
                format!(
                    "appending {token} to {key} (session {:#x} seq {seq})",
                    self.session
                )
            }
            Some(Work::Read {
                key, consistency, ..
            }) => format!("reading {key} ({consistency:?})"),
        };
        format!(
            "client {}: {work}, at node {}, {} attempts sent",
            self.index, self.target, self.sends
        )
    }

    /// True if the client has nothing in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.work.is_none()
    }

    /// Starts an append of a fresh token to `key` at tick `now`.
    pub(crate) fn start_append(&mut self, key: String, now: u64, history: &mut Vec<Event>) {
        self.next_token += 1;
        let token = format!("[{}.{}]", self.index, self.next_token);
        let event = record_call(history, &key, Op::Append(token.clone()), now);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.work = Some(Work::Append {
            key,
            token,
            seq,
            event,
        });
        self.attempt = None;
    }

    /// Starts a read of `key` at tick `now`.
    pub(crate) fn start_read(
        &mut self,
        key: String,
        consistency: ReadConsistency,
        now: u64,
        history: &mut Vec<Event>,
    ) {
        let event = record_call(history, &key, Op::Get(None), now);
        self.work = Some(Work::Read {
            key,
            consistency,
            event,
        });
        self.attempt = None;
    }

    /// Sends the current work if no attempt is outstanding or the last one
    /// timed out. `stale_reads` breaks reads on purpose: they are served
    /// from whatever the node applied, without waiting for a read index.
    pub(crate) fn send_if_due(
        &mut self,
        cluster: &mut Cluster<KvSimMachine>,
        outbox: &mut Outbox,
        now: u64,
        timeout_ticks: u64,
        stale_reads: bool,
    ) {
        if self.work.is_none() {
            return;
        }
        if let Some(attempt) = &self.attempt {
            if now < attempt.deadline {
                return;
            }
            // Timed out: the node may be down or cut off; try the next.
            self.rotate(cluster.size() as u64);
        }
        let Some(work) = &self.work else {
            return;
        };
        let request = outbox.request();
        self.attempt = Some(Attempt {
            request,
            deadline: now + timeout_ticks,
        });
        self.sends += 1;
        match work {
            Work::Open | Work::Append { .. } => {
                let (seq, op) = match work {
                    Work::Append {
                        key, token, seq, ..
                    } => (
                        *seq,
                        WriteOp::Append {
                            key: key.clone().into_bytes(),
                            value: token.clone().into_bytes(),
                        },
                    ),
                    _ => (0, WriteOp::OpenSession),
                };
                // The proposing member stamps its clock; here, the tick.
                let bytes = command::encode(&Command {
                    client: self.session,
                    seq,
                    now_ms: now * 10,
                    op,
                });
                let reply = SimReply::new(request, &outbox.writes);
                let sent = cluster.with_driver(self.target, |d| d.write(bytes, reply));
                self.after_send(sent.is_some(), cluster.size() as u64);
            }
            Work::Read {
                key, consistency, ..
            } => {
                let consistency = if stale_reads {
                    ReadConsistency::Stale
                } else {
                    *consistency
                };
                let inner = SingleShard.inner_key(key.as_bytes());
                let reply = SimReply::new(request, &outbox.reads);
                let sent =
                    cluster.with_driver(self.target, |d| d.read(consistency, Some(inner), reply));
                self.after_send(sent.is_some(), cluster.size() as u64);
            }
        }
    }

    /// Moves to the next node of the rotation.
    fn rotate(&mut self, nodes: u64) {
        self.cursor = self.cursor % nodes + 1;
        self.target = self.cursor;
        self.hints_followed = 0;
    }

    /// A node that is down takes nothing (a refused connection): try the
    /// next one at the next tick instead of waiting out the timeout.
    fn after_send(&mut self, reached: bool, nodes: u64) {
        if reached {
            return;
        }
        self.rotate(nodes);
        // Sent again at the next tick, to that node.
        self.attempt = None;
    }

    fn is_current(&self, request: u64) -> bool {
        self.attempt.as_ref().is_some_and(|a| a.request == request)
    }

    /// After a refused attempt: follow the leader hint, or try the next
    /// node, at the next tick.
    fn retry(&mut self, error: &NodeError, nodes: u64) -> Result<(), Violation> {
        if !error.is_retryable() {
            return Err(format!("client {} got a fatal error: {error}", self.index));
        }
        // Follow one leader hint, then go on with the rotation: nodes
        // outside the group can name each other (or one names another
        // that knows no leader), and a client that followed every hint, or
        // rotated on from where a hint took it, bounced between them while
        // the group had a leader elsewhere (seeds 9,000,381, 9,005,490 and
        // 9,146,348 before this rule).
        match error {
            NodeError::NotLeader {
                leader: Some(leader),
            } if *leader != self.target && self.hints_followed == 0 => {
                self.hints_followed += 1;
                self.target = *leader;
            }
            _ => self.rotate(nodes),
        }
        // Sent again at the next tick, to that node.
        self.attempt = None;
        Ok(())
    }

    /// Handles the answer to write request `request`, if it is this
    /// client's current attempt (an old attempt's late answer is ignored:
    /// its retry will be answered from the session).
    pub(crate) fn on_write_answer(
        &mut self,
        request: u64,
        answer: &Result<Result<WriteReply, CommandError>, NodeError>,
        now: u64,
        nodes: u64,
        history: &mut [Event],
    ) -> Result<(), Violation> {
        if !self.is_current(request) {
            return Ok(());
        }
        let reply = match answer {
            Err(e) => return self.retry(e, nodes),
            Ok(Err(e)) => return Err(format!("client {}: command refused: {e}", self.index)),
            Ok(Ok(reply)) => reply,
        };
        match (reply, &self.work) {
            (WriteReply::Done, Some(Work::Open)) => {
                self.work = None;
                self.attempt = None;
            }
            (WriteReply::Done, Some(Work::Append { event, .. })) => {
                history[*event].ret = Some(now);
                self.work = None;
                self.attempt = None;
            }
            (WriteReply::SessionExpired, Some(Work::Append { .. })) => {
                // Whether an earlier attempt was applied is unknown: the
                // append stays pending in the history, as the real client
                // reports it "maybe applied"; a new session follows.
                self.new_session();
            }
            (other, _) => {
                return Err(format!(
                    "client {} (session {:#x}) got {other:?}, which no retry of its own can cause",
                    self.index, self.session
                ))
            }
        }
        Ok(())
    }

    /// Handles the answer to read request `request`, if current.
    pub(crate) fn on_read_answer(
        &mut self,
        request: u64,
        answer: &Result<Option<Vec<u8>>, NodeError>,
        now: u64,
        nodes: u64,
        history: &mut [Event],
    ) -> Result<(), Violation> {
        if !self.is_current(request) {
            return Ok(());
        }
        match answer {
            Err(e) => self.retry(e, nodes),
            Ok(value) => {
                if let Some(Work::Read { event, .. }) = &self.work {
                    let text = String::from_utf8_lossy(value.as_deref().unwrap_or_default());
                    history[*event].op = Op::Get(Some(text.into_owned()));
                    history[*event].ret = Some(now);
                }
                self.work = None;
                self.attempt = None;
                Ok(())
            }
        }
    }
}

/// Records the call of `op` on `key` at tick `now` in `history`, not yet
/// returned; its position, where the return is filled in.
fn record_call(history: &mut Vec<Event>, key: &str, op: Op, now: u64) -> usize {
    history.push(Event {
        key: key.to_string(),
        op,
        call: now,
        ret: None,
    });
    history.len() - 1
}
