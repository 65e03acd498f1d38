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
/// Keep-alive interval on every connection: a peer that stops answering
/// (killed, partitioned) is noticed within [`IDLE_TIMEOUT`].
pub const KEEP_ALIVE: Duration = Duration::from_millis(500);
/// A connection with nothing heard for this long is closed, and its link
/// reconnects.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

fn transport() -> Arc<quinn::TransportConfig> {
    let mut config = quinn::TransportConfig::default();
    config.keep_alive_interval(Some(KEEP_ALIVE));
    // Every request is a stream of its own: with quinn's default of 100
    // open at once, a client with more requests in flight queues behind
    // stream credit. Memory stays bounded by the connection's receive window.
    config.max_concurrent_bidi_streams(MAX_CONCURRENT_REQUESTS.into());
    // The conversion only fails for durations beyond 2^62 microseconds.
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        config.max_idle_timeout(Some(idle));
    }
    Arc::new(config)
}

/// Requests one connection may have in flight at once.
pub const MAX_CONCURRENT_REQUESTS: u32 = 4096;

/// Close code for a refused peer.
const REFUSED: u32 = 1;

/// Whether a connection ended because one side refused the other's
/// certificate: a TLS alert during the handshake (the crypto error codes,
/// 0x100–0x1ff), or our server's `REFUSED` close after it.
fn is_certificate_refusal(error: &quinn::ConnectionError) -> bool {
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match error {
        quinn::ConnectionError::TransportError(e) => crypto(e.code),
        quinn::ConnectionError::ConnectionClosed(close) => crypto(close.error_code),
        quinn::ConnectionError::ApplicationClosed(close) => {
            close.error_code == quinn::VarInt::from_u32(REFUSED)
        }
        _ => false,
    }
}

/// A node's endpoint.
pub struct Node {
    id: u64,
    incarnation: u64,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
}

/// An authenticated connection to a peer.
#[derive(Debug)]
pub struct PeerConnection {
    /// The peer's node id, as its certificate proves.
    pub peer: u64,
    /// The peer process's incarnation (random per start), from its hello;
    /// 0 for our own outgoing connections.
    pub incarnation: u64,
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
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
        server.transport_config(transport());
        let endpoint = quinn::Endpoint::server(server, addr)
            .map_err(|e| NetError::Io(format!("cannot listen on {addr}: {e}")))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client));
        client.transport_config(transport());
        // Distinguishes this process from an earlier one with the same id.
        let incarnation = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(id);
            h.finish().max(1)
        };
        Ok(Node {
            id,
            incarnation,
            endpoint,
            client,
        })
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
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
        let rejected = |why: String| NetError::Rejected {
            node: peer,
            addr,
            why,
        };
        let conn = tokio::time::timeout(HELLO_TIMEOUT, connecting)
            .await
            .map_err(|_| fail("handshake timed out".into()))?
            .map_err(|e| {
                if is_certificate_refusal(&e) {
                    rejected(e.to_string())
                } else {
                    fail(e.to_string())
                }
            })?;
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| fail(e.to_string()))?;
            let mut payload = self.id.to_be_bytes().to_vec();
            payload.extend_from_slice(&self.incarnation.to_be_bytes());
            let hello = Frame {
                kind: FrameKind::Hello,
                payload,
            };
            write_frame(&mut send, &hello).await?;
            let _ = send.finish();
            match read_frame(&mut recv).await {
                Ok(Some(frame)) if frame.kind == FrameKind::Hello => Ok(()),
                Ok(other) => Err(fail(format!("unexpected answer to hello: {other:?}"))),
                Err(e) => Err(fail(format!("refused by the peer: {e}"))),
            }
        };
        let answered = tokio::time::timeout(HELLO_TIMEOUT, exchange)
            .await
            .map_err(|_| fail("no answer to hello".into()))
            .and_then(|r| r);
        if let Err(e) = answered {
            // The server closes a connection it refuses with REFUSED, saying why.
            return Err(match conn.close_reason() {
                Some(reason) if is_certificate_refusal(&reason) => rejected(reason.to_string()),
                _ => e,
            });
        }
        Ok(PeerConnection {
            peer,
            incarnation: 0,
            conn,
        })
    }

    /// Waits for the next peer. `None` once the endpoint is closed; an
    /// `Err` for a peer that was refused (already logged and closed).
    /// Admits one peer at a time; a server that must not let a stalled
    /// peer hold up others uses [`next_incoming`](Self::next_incoming) and
    /// [`admit_in_time`](Self::admit_in_time) in tasks of their own.
    pub async fn accept(&self) -> Option<Result<PeerConnection, NetError>> {
        let incoming = self.next_incoming().await?;
        Some(self.admit_in_time(incoming).await)
    }

    /// The next connection attempt, not yet admitted.
    pub async fn next_incoming(&self) -> Option<quinn::Incoming> {
        self.endpoint.accept().await
    }

    /// Admits a connection attempt: TLS handshake, client certificate and
    /// hello checks, within [`HELLO_TIMEOUT`]; a refusal is logged.
    pub async fn admit_in_time(
        &self,
        incoming: quinn::Incoming,
    ) -> Result<PeerConnection, NetError> {
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
        result
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
        // The hello: the claimed id, then (since the mesh) the incarnation.
        let (claimed, incarnation) = match read_frame(&mut recv).await {
            Ok(Some(Frame {
                kind: FrameKind::Hello,
                payload,
            })) if payload.len() == 8 || payload.len() == 16 => {
                let word = |at: usize| {
                    payload
                        .get(at..at + 8)
                        .and_then(|b| b.try_into().ok())
                        .map_or(0, u64::from_be_bytes)
                };
                (word(0), word(8))
            }
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
            incarnation,
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

    /// Opens a long-lived one-way stream to write frames on.
    pub async fn open_stream(&self) -> Result<quinn::SendStream, NetError> {
        self.conn
            .open_uni()
            .await
            .map_err(|e| NetError::Closed(e.to_string()))
    }

    /// Waits for the next one-way stream the peer opens.
    pub async fn accept_stream(&self) -> Result<quinn::RecvStream, NetError> {
        self.conn
            .accept_uni()
            .await
            .map_err(|e| NetError::Closed(e.to_string()))
    }

    /// Waits for the next request stream the peer opens.
    pub async fn accept_request(&self) -> Result<(quinn::SendStream, quinn::RecvStream), NetError> {
        self.conn
            .accept_bi()
            .await
            .map_err(|e| NetError::Closed(e.to_string()))
    }

    /// Sends one request on a stream of its own and waits for the answer.
    pub async fn request(&self, payload: Vec<u8>) -> Result<Vec<u8>, NetError> {
        let (mut send, mut recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| NetError::Closed(e.to_string()))?;
        write_frame(
            &mut send,
            &Frame {
                kind: FrameKind::Request,
                payload,
            },
        )
        .await?;
        let _ = send.finish();
        match read_frame(&mut recv).await? {
            Some(Frame {
                kind: FrameKind::Response,
                payload,
            }) => Ok(payload),
            other => Err(NetError::Malformed(format!(
                "expected a response frame, got {other:?}"
            ))),
        }
    }

    /// True once the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
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
