//! One simulated node: a [`GroupDriver`] (the core and a state machine, as
//! a node runs them), its disk, and where its callers' answers go.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use flotilla_snapshot::{MemGroupData, SnapshotMeta};
use flotilla_wal::{Entry, EntryPayload, Index};
use serde::{Deserialize, Serialize};

use crate::group::{GroupDriver, KvApplier, NodeError, Replier, StateMachine as MachineTrait};
use crate::kv::{SessionLimits, SingleShard};
use crate::raft::config::Config;
use crate::raft::core::RaftCore;
use crate::raft::ready::ReadState;
use crate::sim::disk::SimDisk;

/// A state machine the simulator can snapshot and restore: its image is
/// what a snapshot carries.
pub trait SimMachine: MachineTrait + Sized {
    /// The machine's state as a snapshot image.
    fn image(&self) -> Result<Vec<u8>, String>;
}

/// Builds a node's machine from a snapshot image (start, restart, install).
pub type MachineLoader<M> = Rc<dyn Fn(&[u8], &SnapshotMeta) -> Result<M, String>>;

/// The simulated application of the Raft-level scenarios: remembers every
/// command applied, by index, which is what the lab tester's applier does.
/// Its image is its snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachine {
    /// Last applied index.
    pub applied: Index,
    /// Application commands by log index.
    pub commands: BTreeMap<Index, Vec<u8>>,
}

impl StateMachine {
    /// Serialises the state machine (the snapshot image).
    pub fn image(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Loads an image written by [`image`](Self::image).
    pub fn from_image(image: &[u8]) -> Result<Self, String> {
        postcard::from_bytes(image).map_err(|e| format!("snapshot image does not decode: {e}"))
    }

    /// The loader for the Raft-level scenarios.
    pub fn loader() -> MachineLoader<StateMachine> {
        Rc::new(|image, _| StateMachine::from_image(image))
    }
}

impl MachineTrait for StateMachine {
    type Reply = ();

    fn applied_index(&self) -> Index {
        self.applied
    }

    /// Records each entry; they must follow the last applied index.
    fn apply(&mut self, entries: &[Entry]) -> Result<Vec<(Index, ())>, String> {
        let mut replies = Vec::new();
        for entry in entries {
            if entry.index != self.applied + 1 {
                return Err(format!(
                    "applied index {} after {}: out of order",
                    entry.index, self.applied
                ));
            }
            self.applied = entry.index;
            if let EntryPayload::Normal(data) = &entry.payload {
                self.commands.insert(entry.index, data.clone());
                replies.push((entry.index, ()));
            }
        }
        Ok(replies)
    }

    fn read(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
}

impl SimMachine for StateMachine {
    fn image(&self) -> Result<Vec<u8>, String> {
        Ok(StateMachine::image(self))
    }
}

/// The key/value machine with sessions over in-memory data: what a node's
/// data group applies, with [`MemGroupData`] in place of RocksDB.
pub type KvMachineOverMemory = KvApplier<MemGroupData>;

impl SimMachine for KvMachineOverMemory {
    fn image(&self) -> Result<Vec<u8>, String> {
        self.data().image().map_err(|e| e.to_string())
    }
}

/// The loader for key/value nodes with session bounds `limits`.
pub fn kv_loader(limits: SessionLimits) -> MachineLoader<KvMachineOverMemory> {
    Rc::new(move |image, meta| {
        let data = MemGroupData::from_image(image).map_err(|e| e.to_string())?;
        KvApplier::load(data, limits, Arc::new(SingleShard), &meta.membership)
            .map_err(|e| e.to_string())
    })
}

/// The answers a node's driver gave, in the order given: (request id,
/// answer). The simulator's clients collect theirs from here.
pub type Answers<T> = Rc<RefCell<Vec<(u64, Result<T, NodeError>)>>>;

/// Where one simulated request's answer goes.
pub struct SimReply<T> {
    request: u64,
    answers: Answers<T>,
}

impl<T> SimReply<T> {
    /// The answer to `request` goes to `answers`.
    pub fn new(request: u64, answers: &Answers<T>) -> Self {
        SimReply {
            request,
            answers: answers.clone(),
        }
    }
}

impl<T> Replier<T> for SimReply<T> {
    fn send(self, result: Result<T, NodeError>) {
        self.answers.borrow_mut().push((self.request, result));
    }
}

/// The driver of a simulated node.
pub type SimDriver<M> =
    GroupDriver<M, SimReply<<M as MachineTrait>::Reply>, SimReply<Option<Vec<u8>>>>;

/// A simulated node.
pub struct SimNode<M: SimMachine = StateMachine> {
    /// Node id.
    pub id: u64,
    /// The core and machine; `None` while crashed.
    pub driver: Option<SimDriver<M>>,
    /// The machine as it was when the node crashed (the lab counts what a
    /// crashed node had applied); replaced at restart.
    pub crashed_machine: Option<M>,
    /// The node's disk (survives crashes, minus unsynced writes).
    pub disk: SimDisk,
    /// Core configuration used at every (re)start.
    pub config: Config,
    /// Reads confirmed by the core that were asked of the core directly
    /// (not through the driver), in order.
    pub read_states: Vec<ReadState>,
}

impl<M: SimMachine> SimNode<M> {
    pub(crate) fn start(&mut self, load: &MachineLoader<M>) -> Result<(), String> {
        let mut restore = self.disk.restore_state()?;
        let image = self.disk.snapshots.image().unwrap_or_default();
        let machine = load(image, &restore.snapshot)?;
        if machine.applied_index() != restore.snapshot.index {
            return Err(format!(
                "node {}: snapshot image at {} but metadata says {}",
                self.id,
                machine.applied_index(),
                restore.snapshot.index
            ));
        }
        // The machine's data is not durable on its own here: it restarts
        // from the snapshot and re-applies the log after it.
        restore.applied = machine.applied_index();
        let core = RaftCore::new(self.config.clone(), restore).map_err(|e| e.to_string())?;
        self.driver = Some(GroupDriver::new(core, machine));
        self.crashed_machine = None;
        Ok(())
    }

    /// True if the node is running.
    pub fn is_up(&self) -> bool {
        self.driver.is_some()
    }

    /// The running core.
    pub fn core(&self) -> Option<&RaftCore> {
        self.driver.as_ref().map(|d| d.core())
    }

    /// The state machine: the running one, or what a crashed node had.
    pub fn machine(&self) -> Option<&M> {
        match &self.driver {
            Some(driver) => Some(driver.machine()),
            None => self.crashed_machine.as_ref(),
        }
    }
}
