//! Helpers shared by the cluster tests.

#![allow(dead_code)]

pub(crate) mod cluster;
pub(crate) mod linearizability;
