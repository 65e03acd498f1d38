//! The controller's state machine over its group's stored data.
//!
//! Stored (in the controller group's data, written with the applied state
//! in one atomic step, like a data group's): every configuration under
//! `c ‖ num` (big-endian, so they sort by number), the newest number under
//! `n`, and each client's session under `s ‖ client`. In memory: the newest
//! configuration and the sessions.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_engine::group::{
    applied_after, check_reloaded, stored_applied, StateMachine, StoredMachine,
};
use flotilla_snapshot::{AppliedState, DataOp, GroupStore, SnapshotError};
use flotilla_wal::{Entry, EntryPayload, GroupId, Index, Membership, SnapshotMeta};
use serde::{Deserialize, Serialize};

use crate::config::{ShardConfig, MAX_SHARDS, NO_GROUP};
use crate::controller::command::{
    decode, encode, ControllerCommand, ControllerError, ControllerOp, ControllerReply, Query,
};
use crate::rebalance::rebalance;

/// Sessions kept; beyond it the least recently used go. Controller clients
/// are administrators and nodes, a few dozen at most.
const MAX_SESSIONS: usize = 1024;

/// Groups a configuration may hold.
const MAX_GROUPS: usize = MAX_SHARDS;

const LATEST_KEY: &[u8] = b"n";

fn config_key(num: u64) -> Vec<u8> {
    let mut key = vec![b'c'];
    key.extend_from_slice(&num.to_be_bytes());
    key
}

fn session_key(client: u64) -> Vec<u8> {
    let mut key = vec![b's'];
    key.extend_from_slice(&client.to_be_bytes());
    key
}

/// A client's last operation and its answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    seq: u64,
    reply: ControllerReply,
    /// The log index of its last use (which session goes first).
    used_at: Index,
}

/// The shard controller's machine: applies Join, Leave and Move, keeps
/// every configuration, answers queries.
pub struct Controller<D> {
    data: D,
    applied: AppliedState,
    latest: ShardConfig,
    sessions: BTreeMap<u64, Session>,
    shards: usize,
}

impl<D: GroupStore + Clone> Controller<D> {
    /// Loads the stored state of a controller over `shards` shards. A group
    /// that has applied nothing starts from `initial` membership and
    /// configuration 0. A stored configuration with another shard count is
    /// refused.
    pub fn load(data: D, shards: usize, initial: &Membership) -> Result<Self, SnapshotError> {
        if !(1..=MAX_SHARDS).contains(&shards) {
            return Err(corrupt(format!(
                "a store has 1 to {MAX_SHARDS} shards, not {shards}"
            )));
        }
        let applied = stored_applied(&data, initial)?;
        let latest = match data.get(LATEST_KEY)? {
            None => ShardConfig::initial(shards),
            Some(bytes) => {
                let num = u64::from_be_bytes(
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| corrupt("the newest configuration number".into()))?,
                );
                stored_config(&data, num)?
            }
        };
        if latest.shards.len() != shards {
            return Err(corrupt(format!(
                "the controller's configurations have {} shards, opened with {shards}",
                latest.shards.len()
            )));
        }
        let mut sessions = BTreeMap::new();
        for (key, value) in data.scan(b"s", b"t", usize::MAX)? {
            let client = key
                .get(1..)
                .and_then(|k| k.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt(format!("session key {key:?}")))?;
            let session: Session =
                decode(&value).map_err(|e| corrupt(format!("session {client}: {e}")))?;
            sessions.insert(client, session);
        }
        Ok(Controller {
            data,
            applied,
            latest,
            sessions,
            shards,
        })
    }

    /// After a snapshot install replaced the data in the store: start from
    /// what it holds.
    pub fn reload(&mut self, meta: &SnapshotMeta) -> Result<(), SnapshotError> {
        let loaded = Controller::load(self.data.clone(), self.shards, &meta.membership)?;
        check_reloaded(&loaded.applied, meta)?;
        *self = loaded;
        Ok(())
    }
}

impl<D: GroupStore> Controller<D> {
    /// The newest configuration.
    pub fn latest(&self) -> &ShardConfig {
        &self.latest
    }

    /// Configuration `num` (the newest if `num` is past it).
    pub fn query(&self, query: Query) -> Result<ShardConfig, SnapshotError> {
        match query {
            Query::Number(num) if num < self.latest.num => stored_config(&self.data, num),
            _ => Ok(self.latest.clone()),
        }
    }

    /// What has been applied.
    pub fn applied(&self) -> &AppliedState {
        &self.applied
    }

    /// The data this machine writes.
    pub fn data(&self) -> &D {
        &self.data
    }

    /// Applies one command, adding what it writes to `ops`.
    fn apply_command(
        &mut self,
        index: Index,
        bytes: &[u8],
        ops: &mut Vec<DataOp>,
    ) -> ControllerReply {
        let command = ControllerCommand::decode(bytes)?;
        if command.client != 0 {
            if let Some(session) = self.sessions.get(&command.client) {
                if command.seq == session.seq {
                    return session.reply.clone();
                }
                if command.seq < session.seq {
                    return Err(ControllerError::StaleSequence {
                        client: command.client,
                        seq: command.seq,
                        last: session.seq,
                    });
                }
            }
        }
        let reply = self.change(&command.op).map(|next| {
            if next.num == 1 {
                // Configuration 0 was implicit until now.
                ops.push(DataOp::Put(config_key(0), self.latest.encode()));
            }
            ops.push(DataOp::Put(config_key(next.num), next.encode()));
            ops.push(DataOp::Put(
                LATEST_KEY.to_vec(),
                next.num.to_be_bytes().to_vec(),
            ));
            let num = next.num;
            self.latest = next;
            num
        });
        if command.client != 0 {
            let session = Session {
                seq: command.seq,
                reply: reply.clone(),
                used_at: index,
            };
            ops.push(DataOp::Put(session_key(command.client), encode(&session)));
            self.sessions.insert(command.client, session);
            while self.sessions.len() > MAX_SESSIONS {
                let oldest = self
                    .sessions
                    .iter()
                    .min_by_key(|(client, s)| (s.used_at, **client))
                    .map(|(client, _)| *client);
                if let Some(client) = oldest {
                    self.sessions.remove(&client);
                    ops.push(DataOp::Delete(session_key(client)));
                }
            }
        }
        reply
    }

    /// The configuration `op` makes from the newest, or why it cannot.
    fn change(&self, op: &ControllerOp) -> Result<ShardConfig, ControllerError> {
        let mut next = self.latest.clone();
        next.num += 1;
        match op {
            ControllerOp::Join(groups) => {
                if groups.is_empty() {
                    return Err(ControllerError::NoGroups);
                }
                for (&group, nodes) in groups {
                    check_new_group(&next, group, nodes)?;
                    next.groups.insert(group, nodes.clone());
                }
                if next.groups.len() > MAX_GROUPS {
                    return Err(ControllerError::TooManyGroups(MAX_GROUPS));
                }
                rebalance_all(&mut next);
            }
            ControllerOp::Leave(groups) => {
                if groups.is_empty() {
                    return Err(ControllerError::NoGroups);
                }
                for group in groups.iter().collect::<BTreeSet<_>>() {
                    if next.groups.remove(group).is_none() {
                        return Err(ControllerError::UnknownGroup(*group));
                    }
                }
                rebalance_all(&mut next);
            }
            ControllerOp::Move { shard, group } => {
                if !next.groups.contains_key(group) {
                    return Err(ControllerError::UnknownGroup(*group));
                }
                let shards = next.shards.len();
                let slot = next.shards.get_mut(usize::from(*shard)).ok_or(
                    ControllerError::NoSuchShard {
                        shard: *shard,
                        shards,
                    },
                )?;
                *slot = *group;
            }
        }
        Ok(next)
    }
}

fn check_new_group(
    config: &ShardConfig,
    group: GroupId,
    nodes: &[u64],
) -> Result<(), ControllerError> {
    if group == NO_GROUP {
        return Err(ControllerError::ReservedGroup);
    }
    if config.groups.contains_key(&group) {
        return Err(ControllerError::AlreadyJoined(group));
    }
    let bad = |why: &str| ControllerError::BadNodes {
        group,
        why: why.to_string(),
    };
    if nodes.is_empty() {
        return Err(bad("no nodes"));
    }
    if nodes.contains(&0) {
        return Err(bad("node id 0 is a client's"));
    }
    if nodes.iter().collect::<BTreeSet<_>>().len() != nodes.len() {
        return Err(bad("a node named twice"));
    }
    Ok(())
}

fn rebalance_all(config: &mut ShardConfig) {
    let groups: Vec<GroupId> = config.groups.keys().copied().collect();
    rebalance(&mut config.shards, &groups);
}

fn stored_config<D: GroupStore>(data: &D, num: u64) -> Result<ShardConfig, SnapshotError> {
    let bytes = data
        .get(&config_key(num))?
        .ok_or_else(|| corrupt(format!("configuration {num} is missing")))?;
    ShardConfig::decode(&bytes).map_err(|e| corrupt(format!("configuration {num}: {e}")))
}

fn corrupt(detail: String) -> SnapshotError {
    SnapshotError::Corrupt { detail }
}

impl<D: GroupStore> StateMachine for Controller<D> {
    type Reply = ControllerReply;

    fn applied_index(&self) -> Index {
        self.applied.index
    }

    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<(Index, ControllerReply)>, String> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut ops = Vec::new();
        let mut replies = Vec::new();
        for entry in entries {
            if let EntryPayload::Normal(bytes) = &entry.payload {
                let reply = self.apply_command(entry.index, bytes, &mut ops);
                replies.push((entry.index, reply));
            }
        }
        let next = applied_after(&self.applied, entries);
        self.data
            .apply_unsynced(&next, ops)
            .map_err(|e| e.to_string())?;
        self.applied = next;
        Ok(replies)
    }

    /// `key` is a [`Query::key`]; the answer is the encoded configuration.
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let Some(query) = Query::from_key(key) else {
            return Ok(None);
        };
        self.query(query)
            .map(|config| Some(config.encode()))
            .map_err(|e| e.to_string())
    }
}

impl<D: GroupStore + Clone> StoredMachine for Controller<D> {
    fn applied_state(&self) -> &AppliedState {
        &self.applied
    }

    fn reload(&mut self, meta: &SnapshotMeta) -> Result<(), SnapshotError> {
        Controller::reload(self, meta)
    }

    fn session_count(&self) -> usize {
        self.sessions.len()
    }
}
