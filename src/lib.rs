//! flotilla: an embedded, Raft-replicated, sharded key/value store with a
//! bundled MapReduce runner.
//!
//! Today the crate exposes the Raft core (from `flotilla-engine`); `Db`, the
//! builder and the CLI arrive with the replicated-Db issue.

pub use flotilla_engine as engine;
pub use flotilla_snapshot as snapshot;
pub use flotilla_wal as wal;
