//! flotilla-net: QUIC with mutual TLS between flotilla nodes.
//!
//! Every node holds a certificate from the cluster CA naming its node id
//! ([`tls`]). A connection is accepted only if the client presents a valid
//! certificate from that CA (checked in the TLS handshake: no certificate,
//! another CA or an expired one fail there) *and* its first frame claims the
//! node id that certificate names ([`endpoint`]); anything else is refused and
//! logged before a single message is handed on. Frames ([`frame`]) are
//! versioned and length-checked.
//!
//! [`Mesh`] keeps long-lived links to every peer (separate Raft and snapshot
//! streams, bounded queues, reconnect with back-off) and serves request
//! streams; [`Faults`] injects drops, cuts and delays for tests.

pub mod endpoint;
pub mod fault;
pub mod frame;
pub mod mesh;
pub mod tls;

pub use endpoint::{Node, PeerConnection};
pub use fault::Faults;
pub use frame::{Frame, FrameKind, FRAME_VERSION, MAX_FRAME_BYTES};
pub use mesh::{Deliver, Mesh, Serve, DEFAULT_QUEUE_FRAMES};
use thiserror::Error;
pub use tls::{ClusterCa, Identity};

/// What went wrong in the transport.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetError {
    /// Certificates or keys could not be made or used.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// A peer was refused: bad or missing certificate, wrong node id, wrong protocol.
    #[error("connection from {peer} refused: {why}")]
    Refused {
        /// The peer's address.
        peer: std::net::SocketAddr,
        /// Why.
        why: String,
    },
    /// The peer answered and refused us, or we refused its certificate: a
    /// certificate from another cluster, one that names another node, an
    /// expired one. Retrying cannot help; the certificates must be fixed.
    #[error("node {node} at {addr} and this node do not accept each other's certificates: {why}")]
    Rejected {
        /// The node.
        node: u64,
        /// Its address.
        addr: std::net::SocketAddr,
        /// Why.
        why: String,
    },
    /// Connecting to a peer failed.
    #[error("cannot connect to node {node} at {addr}: {why}")]
    Connect {
        /// The node.
        node: u64,
        /// Its address.
        addr: std::net::SocketAddr,
        /// Why.
        why: String,
    },
    /// A frame broke the format; the stream it came on is closed.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A frame longer than allowed; the stream it came on is closed.
    #[error("frame of {bytes} bytes is over the {max}-byte limit")]
    FrameTooLarge {
        /// Claimed or attempted size.
        bytes: u64,
        /// The limit.
        max: u32,
    },
    /// Socket or stream IO failed.
    #[error("network IO failed: {0}")]
    Io(String),
    /// The connection is closed.
    #[error("connection closed: {0}")]
    Closed(String),
}
