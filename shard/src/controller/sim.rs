//! The controller in the deterministic simulator: over in-memory data, its
//! snapshot image the same format a node's store builds.

use std::rc::Rc;

use flotilla_engine::sim::{MachineLoader, SimMachine};
use flotilla_snapshot::MemGroupData;

use crate::controller::Controller;

/// The controller as the simulator runs it.
pub type SimController = Controller<MemGroupData>;

impl SimMachine for SimController {
    fn image(&self) -> Result<Vec<u8>, String> {
        self.data().image().map_err(|e| e.to_string())
    }
}

/// Builds simulated controllers of a store with `shards` shards from
/// snapshot images.
pub fn sim_loader(shards: usize) -> MachineLoader<SimController> {
    Rc::new(move |image, meta| {
        let data = MemGroupData::from_image(image).map_err(|e| e.to_string())?;
        Controller::load(data, shards, &meta.membership).map_err(|e| e.to_string())
    })
}
