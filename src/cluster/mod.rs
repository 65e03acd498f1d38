//! Cluster mode: the member that wires a node's groups to the QUIC mesh,
//! the request protocol, and the files `flotilla cluster init` writes.

pub(crate) mod async_client;
pub(crate) mod client;
pub(crate) mod files;
pub(crate) mod member;
pub(crate) mod proto;
pub(crate) mod sessions;
