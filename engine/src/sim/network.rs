//! The simulated network: per-link faults, partitions, delays.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use flotilla_wal::NodeId;

use crate::raft::message::{Message, MessageBody};
use crate::raft::rng::SplitMix64;

/// Fault settings applied to every link.
#[derive(Clone, Debug)]
pub struct LinkFaults {
    /// Probability a message is lost.
    pub drop: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// Delivery delay range in steps, inclusive.
    pub delay: (u64, u64),
    /// Probability of a long delay (reordering far behind later messages).
    pub long_delay: f64,
    /// Upper bound of a long delay, in steps.
    pub long_delay_max: u64,
}

impl LinkFaults {
    /// Every message arrives once, quickly, in order.
    pub fn reliable() -> Self {
        LinkFaults {
            drop: 0.0,
            duplicate: 0.0,
            delay: (1, 3),
            long_delay: 0.0,
            long_delay_max: 0,
        }
    }

    /// The lab's unreliable network: 10% loss, some duplicates, jittered delays.
    pub fn unreliable() -> Self {
        LinkFaults {
            drop: 0.1,
            duplicate: 0.05,
            delay: (1, 25),
            long_delay: 0.0,
            long_delay_max: 0,
        }
    }
}

struct InFlight {
    deliver_at: u64,
    seq: u64,
    msg: Message,
}

/// Ordered by delivery time, then by send order; the message itself never decides.
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deliver_at, self.seq).cmp(&(other.deliver_at, other.seq))
    }
}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for InFlight {}

/// Messages in flight between simulated nodes.
pub struct SimNetwork {
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    /// Current fault settings.
    pub faults: LinkFaults,
    /// Directed links that drop everything: (from, to).
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Messages handed to the network, per sender.
    pub sent_by: Vec<u64>,
    /// Encoded bytes handed to the network.
    pub bytes_sent: u64,
    /// Requests handed to the network (an RPC is a request and its answer; answers are not counted here).
    pub requests_sent: u64,
}

impl SimNetwork {
    pub(crate) fn new(nodes: usize) -> Self {
        SimNetwork {
            queue: BinaryHeap::new(),
            seq: 0,
            faults: LinkFaults::reliable(),
            blocked: BTreeSet::new(),
            sent_by: vec![0; nodes + 1],
            bytes_sent: 0,
            requests_sent: 0,
        }
    }

    pub(crate) fn send(
        &mut self,
        now: u64,
        msg: Message,
        encoded_len: usize,
        rng: &mut SplitMix64,
    ) {
        if let Some(count) = self.sent_by.get_mut(msg.from as usize) {
            *count += 1;
        }
        self.bytes_sent += encoded_len as u64;
        if !msg.is_response() && !matches!(msg.body, MessageBody::PreVoteResponse { .. }) {
            self.requests_sent += 1;
        }
        if self.is_blocked(msg.from, msg.to) || rng.chance(self.faults.drop) {
            return;
        }
        let copies = if rng.chance(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = rng.range(self.faults.delay.0, self.faults.delay.1 + 1);
            if rng.chance(self.faults.long_delay) {
                delay += rng.range(0, self.faults.long_delay_max + 1);
            }
            self.seq += 1;
            self.queue.push(Reverse(InFlight {
                deliver_at: now + delay,
                seq: self.seq,
                msg: msg.clone(),
            }));
        }
    }

    /// Removes and returns the messages due by `now`, in delivery order. A message
    /// over a link cut while it was in flight is lost.
    pub(crate) fn due(&mut self, now: u64) -> Vec<Message> {
        let mut out = Vec::new();
        while self
            .queue
            .peek()
            .is_some_and(|Reverse(m)| m.deliver_at <= now)
        {
            let Some(Reverse(m)) = self.queue.pop() else {
                break;
            };
            if !self.is_blocked(m.msg.from, m.msg.to) {
                out.push(m.msg);
            }
        }
        out
    }

    /// True if messages from `from` to `to` are dropped.
    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked.contains(&(from, to))
    }

    /// Cuts or restores the directed link `from` → `to`.
    pub fn set_link(&mut self, from: NodeId, to: NodeId, up: bool) {
        if up {
            self.blocked.remove(&(from, to));
        } else {
            self.blocked.insert((from, to));
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Messages currently in flight.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Total messages sent by everyone.
    pub fn total_sent(&self) -> u64 {
        self.sent_by.iter().sum()
    }
}
