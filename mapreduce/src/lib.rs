//! MapReduce job registry, coordinator, workers, shuffle and commit (not yet implemented).
//!
//! This crate is a placeholder in the flotilla workspace: its capability arrives with a
//! later issue and it exports nothing yet.
