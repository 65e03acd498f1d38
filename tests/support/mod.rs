//! Helpers shared by the integration tests.

#![allow(dead_code)]

pub(crate) mod cluster;
pub(crate) mod corpus;
pub(crate) mod linearizability;
