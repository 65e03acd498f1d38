//! Transport trait and QUIC with mutual TLS between nodes (not yet implemented).
//!
//! This crate is a placeholder in the flotilla workspace: its capability arrives with a
//! later issue and it exports nothing yet.
