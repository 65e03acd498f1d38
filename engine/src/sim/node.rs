//! One simulated node: a core, its disk and a small state machine.

use std::collections::BTreeMap;

use flotilla_wal::{Entry, EntryPayload, Index};
use serde::{Deserialize, Serialize};

use crate::raft::config::Config;
use crate::raft::core::RaftCore;
use crate::raft::ready::ReadState;
use crate::sim::disk::SimDisk;

/// The simulated application: remembers every command applied, by index,
/// which is what the lab tester's applier does. Its image is its snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachine {
    /// Last applied index.
    pub applied: Index,
    /// Application commands by log index.
    pub commands: BTreeMap<Index, Vec<u8>>,
}

impl StateMachine {
    /// Applies one committed entry; it must be the next index.
    pub(crate) fn apply(&mut self, entry: &Entry) -> Result<(), String> {
        if entry.index != self.applied + 1 {
            return Err(format!(
                "applied index {} after {}: out of order",
                entry.index, self.applied
            ));
        }
        self.applied = entry.index;
        if let EntryPayload::Normal(data) = &entry.payload {
            self.commands.insert(entry.index, data.clone());
        }
        Ok(())
    }

    /// Serialises the state machine (the snapshot image).
    pub fn image(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Loads an image written by [`image`](Self::image).
    pub fn from_image(image: &[u8]) -> Result<Self, String> {
        postcard::from_bytes(image).map_err(|e| format!("snapshot image does not decode: {e}"))
    }
}

/// A simulated node.
pub struct SimNode {
    /// Node id.
    pub id: u64,
    /// The core; `None` while crashed.
    pub core: Option<RaftCore>,
    /// The node's disk (survives crashes, minus unsynced writes).
    pub disk: SimDisk,
    /// The application state (lost on crash, rebuilt from the snapshot and log).
    pub sm: StateMachine,
    /// Core configuration used at every (re)start.
    pub config: Config,
    /// Reads confirmed by the core, in order.
    pub read_states: Vec<ReadState>,
}

impl SimNode {
    pub(crate) fn start(&mut self) -> Result<(), String> {
        let restore = self.disk.restore_state()?;
        self.sm = StateMachine::from_image(self.disk.snapshots.image().unwrap_or_default())?;
        if self.sm.applied != restore.snapshot.index {
            return Err(format!(
                "node {}: snapshot image at {} but metadata says {}",
                self.id, self.sm.applied, restore.snapshot.index
            ));
        }
        let core = RaftCore::new(self.config.clone(), restore).map_err(|e| e.to_string())?;
        self.core = Some(core);
        Ok(())
    }

    /// True if the node is running.
    pub fn is_up(&self) -> bool {
        self.core.is_some()
    }
}
