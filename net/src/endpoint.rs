//! A node's QUIC endpoint: accepts authenticated peers and connects to them.
//!
//! The client opens a stream and sends a hello frame with the node id it
//! claims; the server answers with its own hello only if the client's
//! certificate (already verified against the cluster CA by TLS) names that
//! id. The client verifies the server by name: it connects to
//! `node-<peer>.flotilla`, which only the right node's certificate is valid for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls_pki_types::CertificateDer;

use crate::frame::{read_frame, write_frame, Frame, FrameKind};
use crate::tls::{self, Identity};
use crate::NetError;

/// How long a connecting peer has to finish its handshake and hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Close code for a refused peer.
const REFUSED: u32 = 1;

/// A node's endpoint.
pub struct Node {
    id: u64,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
}

/// An authenticated connection to a peer.
#[derive(Debug)]
pub struct PeerConnection {
    /// The peer's node id, as its certificate proves.
    pub peer: u64,
    conn: quinn::Connection,
}

impl Node {
    /// Listens on `addr` as node `id`. Must be called inside a tokio runtime.
    pub fn bind(
        id: u64,
        addr: SocketAddr,
        identity: &Identity,
        ca: &CertificateDer<'static>,
    ) -> Result<Self, NetError> {
        let server = QuicServerConfig::try_from(tls::server_config(identity, ca)?)
            .map_err(|e| NetError::Tls(format!("server config: {e}")))?;
        let client = QuicClientConfig::try_from(tls::client_config(identity, ca)?)
            .map_err(|e| NetError::Tls(format!("client config: {e}")))?;
        let endpoint =
            quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(server)), addr)
                .map_err(|e| NetError::Io(format!("cannot listen on {addr}: {e}")))?;
        Ok(Node {
            id,
            endpoint,
            client: quinn::ClientConfig::new(Arc::new(client)),
        })
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        self.endpoint
            .local_addr()
            .map_err(|e| NetError::Io(e.to_string()))
    }

    /// Connects to node `peer` at `addr` and introduces ourselves.
    pub async fn connect(&self, peer: u64, addr: SocketAddr) -> Result<PeerConnection, NetError> {
        let fail = |why: String| NetError::Connect {
            node: peer,
            addr,
            why,
        };
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), addr, &tls::node_name(peer))
            .map_err(|e| fail(e.to_string()))?;
        let conn = tokio::time::timeout(HELLO_TIMEOUT, connecting)
            .await
            .map_err(|_| fail("handshake timed out".into()))?
            .map_err(|e| fail(e.to_string()))?;
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| fail(e.to_string()))?;
            let hello = Frame {
                kind: FrameKind::Hello,
                payload: self.id.to_be_bytes().to_vec(),
            };
            write_frame(&mut send, &hello).await?;
            let _ = send.finish();
            match read_frame(&mut recv).await {
                Ok(Some(frame)) if frame.kind == FrameKind::Hello => Ok(()),
                Ok(other) => Err(fail(format!("unexpected answer to hello: {other:?}"))),
                Err(e) => Err(fail(format!("refused by the peer: {e}"))),
            }
        };
        tokio::time::timeout(HELLO_TIMEOUT, exchange)
            .await
            .map_err(|_| fail("no answer to hello".into()))??;
        Ok(PeerConnection { peer, conn })
    }

    /// Waits for the next peer. `None` once the endpoint is closed; an
    /// `Err` for a peer that was refused (already logged and closed).
    pub async fn accept(&self) -> Option<Result<PeerConnection, NetError>> {
        let incoming = self.endpoint.accept().await?;
        let peer_addr = incoming.remote_address();
        let result = tokio::time::timeout(HELLO_TIMEOUT, self.admit(incoming))
            .await
            .unwrap_or_else(|_| {
                Err(NetError::Refused {
                    peer: peer_addr,
                    why: "no hello in time".into(),
                })
            });
        if let Err(e) = &result {
            tracing::warn!(%peer_addr, error = %e, "refused a connection");
        }
        Some(result)
    }

    async fn admit(&self, incoming: quinn::Incoming) -> Result<PeerConnection, NetError> {
        let peer = incoming.remote_address();
        let refuse = |why: String| NetError::Refused { peer, why };
        // The handshake fails here for no certificate, another CA, an
        // expired certificate or another protocol.
        let conn = incoming
            .await
            .map_err(|e| refuse(format!("TLS handshake failed: {e}")))?;
        let leaf = conn
            .peer_identity()
            .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|certs| certs.first().cloned());
        let Some(leaf) = leaf else {
            conn.close(REFUSED.into(), b"no client certificate");
            return Err(refuse("no client certificate".into()));
        };
        let (mut send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| refuse(format!("no hello stream: {e}")))?;
        let claimed = match read_frame(&mut recv).await {
            Ok(Some(Frame {
                kind: FrameKind::Hello,
                payload,
            })) if payload.len() == 8 => u64::from_be_bytes(payload.try_into().unwrap_or_default()),
            other => {
                conn.close(REFUSED.into(), b"expected a hello");
                return Err(refuse(format!("expected a hello frame, got {other:?}")));
            }
        };
        if !tls::names_node(&leaf, claimed) {
            conn.close(
                REFUSED.into(),
                b"certificate does not name the claimed node",
            );
            return Err(refuse(format!(
                "claims to be node {claimed} but its certificate does not name it"
            )));
        }
        let hello = Frame {
            kind: FrameKind::Hello,
            payload: self.id.to_be_bytes().to_vec(),
        };
        write_frame(&mut send, &hello).await?;
        let _ = send.finish();
        Ok(PeerConnection {
            peer: claimed,
            conn,
        })
    }

    /// Stops accepting and closes every connection.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutting down");
    }
}

impl PeerConnection {
    /// Sends one frame on a stream of its own.
    pub async fn send(&self, frame: &Frame) -> Result<(), NetError> {
        let mut stream = self
            .conn
            .open_uni()
            .await
            .map_err(|e| NetError::Closed(e.to_string()))?;
        write_frame(&mut stream, frame).await?;
        stream
            .finish()
            .map_err(|e| NetError::Closed(e.to_string()))?;
        Ok(())
    }

    /// Receives the frame of the next stream the peer opens. A malformed
    /// frame stops that stream with an error; the connection stays up.
    pub async fn recv(&self) -> Result<Frame, NetError> {
        let mut stream = self
            .conn
            .accept_uni()
            .await
            .map_err(|e| NetError::Closed(e.to_string()))?;
        match read_frame(&mut stream).await {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => Err(NetError::Malformed("an empty stream".into())),
            Err(e) => {
                let _ = stream.stop(REFUSED.into());
                Err(e)
            }
        }
    }

    /// Sends raw bytes on a new stream (for tests of malformed input).
    pub async fn send_raw(&self, bytes: &[u8]) -> Result<(), NetError> {
        let mut stream = self
            .conn
            .open_uni()
            .await
            .map_err(|e| NetError::Closed(e.to_string()))?;
        stream
            .write_all(bytes)
            .await
            .map_err(|e| NetError::Io(e.to_string()))?;
        stream
            .finish()
            .map_err(|e| NetError::Closed(e.to_string()))?;
        Ok(())
    }
}
