//! The crash test's snapshot workload, on its own group: a state machine
//! applying commands (data and applied index in one batch), local snapshot
//! builds, and snapshots received from a "leader" staged in pieces and
//! installed. Every operation is synchronous and acknowledged once durable,
//! except the unsynced applies (as the node runtime writes them), which the
//! next synced write must make durable with it; after a crash the group's
//! whole durable state must equal the state after some prefix of the
//! operations no shorter than the acknowledged ones.

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_snapshot::image::{encode_image, Pair};
use flotilla_snapshot::{
    AppliedState, DataOp, GroupData, RocksSnapshotStore, SnapshotError, SnapshotStore,
};
use flotilla_wal::{LogStore, Membership, RocksLogStore, SnapshotMeta};

use crate::Rng;

/// The group the snapshot workload runs on (the log workload uses 1..=4).
pub(crate) const GROUP: u64 = 100;
const STORED_CHUNK_BYTES: u64 = 512;
const APPEND_ENTRIES: u64 = 3;

/// One operation of the workload.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// Apply the next command.
    Apply,
    /// Apply the next command without a sync (never acknowledged by itself).
    ApplyUnsynced,
    /// Build a local snapshot.
    Build,
    /// Append a few entries to the group's log (an install must drop them).
    Append,
    /// Stage bytes `offset..offset + len` of a received image.
    Stage { image: usize, offset: u64, len: u64 },
    /// Install a fully staged image.
    Install { image: usize },
}

/// A snapshot "received from the leader".
pub(crate) struct Remote {
    meta: SnapshotMeta,
    applied: AppliedState,
    pairs: Vec<Pair>,
    bytes: Vec<u8>,
}

/// What the group's durable state should be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct State {
    applied: AppliedState,
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The current snapshot and what its image holds.
    current: Option<(SnapshotMeta, AppliedState, Vec<Pair>)>,
    staged: Option<(SnapshotMeta, u64)>,
    log_snapshot: SnapshotMeta,
    log_last: u64,
}

fn membership() -> Membership {
    Membership::with_voters([1, 2, 3])
}

fn applied_after(state: &State) -> AppliedState {
    let index = state.applied.index + 1;
    AppliedState {
        index,
        term: state.applied.term.max(1),
        membership: membership(),
        sessions: index.to_be_bytes().to_vec(),
    }
}

fn command_key(index: u64) -> Vec<u8> {
    format!("k{:02}", index % 37).into_bytes()
}

impl State {
    /// The state after `op`.
    pub(crate) fn apply_op(&mut self, op: &Op, remotes: &[Remote]) {
        match op {
            Op::Apply | Op::ApplyUnsynced => {
                let applied = applied_after(self);
                self.data.insert(
                    command_key(applied.index),
                    applied.index.to_be_bytes().to_vec(),
                );
                self.applied = applied;
            }
            Op::Build => {
                let meta = SnapshotMeta {
                    index: self.applied.index,
                    term: self.applied.term,
                    membership: self.applied.membership.clone(),
                };
                let pairs = self.data.clone().into_iter().collect();
                self.current = Some((meta, self.applied.clone(), pairs));
            }
            Op::Append => self.log_last += APPEND_ENTRIES,
            Op::Stage { image, offset, len } => {
                let meta = remotes[*image].meta.clone();
                self.staged = Some((meta, offset + len));
            }
            Op::Install { image } => {
                let remote = &remotes[*image];
                self.applied = remote.applied.clone();
                self.data = remote.pairs.iter().cloned().collect();
                self.current = Some((
                    remote.meta.clone(),
                    remote.applied.clone(),
                    remote.pairs.clone(),
                ));
                self.staged = None;
                self.log_snapshot = remote.meta.clone();
                self.log_last = remote.meta.index;
            }
        }
    }
}

/// The seeded operations and the images they receive.
pub(crate) fn plan(seed: u64, count: usize) -> (Vec<Op>, Vec<Remote>) {
    let mut rng = Rng(seed ^ 0x5eed_5a95);
    let mut state = State::default();
    let (mut ops, mut remotes) = (Vec::new(), Vec::<Remote>::new());
    // The transfer in progress: (image, bytes staged so far).
    let mut receiving: Option<(usize, u64)> = None;
    while ops.len() < count {
        let op = match receiving {
            Some((image, staged)) if rng.below(5) != 0 => {
                let total = remotes[image].bytes.len() as u64;
                if staged == total {
                    receiving = None;
                    Op::Install { image }
                } else {
                    let len = (1 + rng.below(700)).min(total - staged);
                    receiving = Some((image, staged + len));
                    Op::Stage {
                        image,
                        offset: staged,
                        len,
                    }
                }
            }
            Some(_) => match rng.below(3) {
                0 => Op::Build,
                1 => Op::Append,
                _ => Op::Apply,
            },
            None => match rng.below(20) {
                0..=4 => Op::Apply,
                5..=10 => Op::ApplyUnsynced,
                11..=12 => Op::Append,
                13..=15 => Op::Build,
                _ => {
                    let index = state.applied.index + 20 + rng.below(50);
                    let image = remotes.len();
                    let applied = AppliedState {
                        index,
                        term: 2 + image as u64,
                        membership: membership(),
                        sessions: format!("remote {image}").into_bytes(),
                    };
                    let pairs: Vec<Pair> = (0..30 + rng.below(50))
                        .map(|i| {
                            // Half the keys are ones local applies also write,
                            // half are new: an install must drop the rest.
                            let key = if i % 2 == 0 {
                                command_key(i)
                            } else {
                                format!("r{image}-{i}").into_bytes()
                            };
                            (key, vec![image as u8; 1 + (i as usize % 90)])
                        })
                        .collect::<BTreeMap<_, _>>()
                        .into_iter()
                        .collect();
                    let bytes = encode_image(&applied, &pairs).unwrap_or_default();
                    remotes.push(Remote {
                        meta: SnapshotMeta {
                            index,
                            term: applied.term,
                            membership: membership(),
                        },
                        applied,
                        pairs,
                        bytes,
                    });
                    let len = (1 + rng.below(700)).min(remotes[image].bytes.len() as u64);
                    receiving = Some((image, len));
                    Op::Stage {
                        image,
                        offset: 0,
                        len,
                    }
                }
            },
        };
        state.apply_op(&op, &remotes);
        ops.push(op);
    }
    (ops, remotes)
}

/// Carries out one operation against the store.
pub(crate) fn run(
    log: &Arc<RocksLogStore>,
    store: &mut RocksSnapshotStore,
    state: &State,
    op: &Op,
    remotes: &[Remote],
) -> Result<(), SnapshotError> {
    match op {
        Op::Apply | Op::ApplyUnsynced => {
            let applied = applied_after(state);
            let key = command_key(applied.index);
            let value = applied.index.to_be_bytes().to_vec();
            let data = GroupData::new(Arc::clone(log), GROUP);
            let ops = vec![DataOp::Put(key, value)];
            match op {
                Op::Apply => data.apply(&applied, ops),
                _ => data.apply_unsynced(&applied, ops),
            }
        }
        Op::Build => store.build().map(|_| ()),
        Op::Append => {
            let entries = (state.log_last + 1..=state.log_last + APPEND_ENTRIES)
                .map(|index| flotilla_wal::Entry {
                    index,
                    term: 1,
                    payload: flotilla_wal::EntryPayload::Normal(vec![index as u8; 40]),
                })
                .collect();
            let write = flotilla_wal::LogWrite {
                group: GROUP,
                entries,
                ..flotilla_wal::LogWrite::default()
            };
            Ok(log.write(vec![write])?)
        }
        Op::Stage { image, offset, len } => {
            let remote = &remotes[*image];
            let bytes = &remote.bytes[*offset as usize..(offset + len) as usize];
            store.stage_chunk(&remote.meta, *offset, bytes)
        }
        Op::Install { image } => store.install_staged(&remotes[*image].meta),
    }
}

/// The store for the workload's group.
pub(crate) fn open_store(log: &Arc<RocksLogStore>) -> RocksSnapshotStore {
    RocksSnapshotStore::new(Arc::clone(log), GROUP, STORED_CHUNK_BYTES)
}

/// The state after the first `n` operations.
pub(crate) fn state_after(ops: &[Op], remotes: &[Remote], n: usize) -> State {
    let mut state = State::default();
    for op in &ops[..n] {
        state.apply_op(op, remotes);
    }
    state
}

/// Reads the group's durable state back, including the current snapshot's
/// whole image: it must read back completely and decode.
pub(crate) fn read(log: &Arc<RocksLogStore>) -> Result<State, String> {
    let data = GroupData::new(Arc::clone(log), GROUP);
    let store = open_store(log);
    let current = match store.current() {
        None => None,
        Some(meta) => {
            let mut image = Vec::new();
            loop {
                let chunk = store
                    .read_chunk(&meta, image.len() as u64, 4096)
                    .map_err(|e| format!("current snapshot unreadable: {e}"))?;
                image.extend(chunk.data);
                if chunk.done {
                    break;
                }
            }
            let mut reader = flotilla_snapshot::image::ImageReader::new();
            let frames = reader
                .feed(&image)
                .and_then(|f| reader.finish().map(|_| f))
                .map_err(|e| format!("torn snapshot: {e}"))?;
            let mut header = None;
            let mut pairs = Vec::new();
            for frame in frames {
                match frame {
                    flotilla_snapshot::image::Frame::Header(h) => header = Some(h),
                    flotilla_snapshot::image::Frame::Pair(k, v) => pairs.push((k, v)),
                }
            }
            let header = header.ok_or("snapshot image without a header")?;
            Some((meta, header, pairs))
        }
    };
    Ok(State {
        applied: data.applied().map_err(|e| e.to_string())?,
        data: data
            .pairs()
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect(),
        current,
        staged: store.staged(),
        log_snapshot: log.snapshot_meta(GROUP).map_err(|e| e.to_string())?,
        log_last: log.last_index(GROUP).map_err(|e| e.to_string())?,
    })
}
