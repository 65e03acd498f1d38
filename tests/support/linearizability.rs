//! The linearizability checker the simulator also uses.

// Not every test binary that brings `support` checks a history.
#[allow(unused_imports)]
pub(crate) use flotilla_engine::sim::linearizability::{check, Event, Op};
