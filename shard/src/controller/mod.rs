//! The shard controller: its commands ([`command`]) and its state machine
//! ([`machine`]), which a Raft group of its own applies.

mod command;
mod machine;
mod sim;

pub use command::{ControllerCommand, ControllerError, ControllerOp, ControllerReply, Query};
pub use machine::Controller;
pub use sim::{sim_loader, SimController};
