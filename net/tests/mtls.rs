//! Mutual TLS over real QUIC sockets on loopback: a cluster member gets in;
//! a stranger certificate, no certificate, an expired certificate and a
//! correct certificate claiming another node id are each refused, and the
//! node keeps accepting its real peers. A malformed frame ends its stream
//! only.

use std::net::SocketAddr;
use std::sync::Arc;

use flotilla_net::tls::{self, ClusterCa, Identity};
use flotilla_net::{Frame, FrameKind, NetError, Node};
use quinn::crypto::rustls::QuicClientConfig;
use rustls_pki_types::CertificateDer;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

struct Cluster {
    ca: ClusterCa,
    server: Arc<Node>,
    addr: SocketAddr,
}

fn cluster() -> Cluster {
    let ca = ClusterCa::generate("test").expect("ca");
    let server = Node::bind(1, loopback(), &ca.issue(1).expect("cert"), &ca.cert()).expect("bind");
    let addr = server.local_addr().expect("addr");
    Cluster {
        ca,
        server: Arc::new(server),
        addr,
    }
}

/// Starts accepting on the server; returns the outcome of the next accept
/// (an admitted connection stays open as long as the caller holds it).
fn accept_one(
    server: &Arc<Node>,
) -> tokio::task::JoinHandle<Result<flotilla_net::PeerConnection, NetError>> {
    let server = Arc::clone(server);
    tokio::spawn(async move {
        server
            .accept()
            .await
            .unwrap_or_else(|| Err(NetError::Closed("endpoint closed".into())))
    })
}

/// Connects as node `claimed` with `identity`, verified against `trust`.
async fn connect_as(
    claimed: u64,
    identity: &Identity,
    trust: &CertificateDer<'static>,
    to: SocketAddr,
) -> Result<flotilla_net::PeerConnection, NetError> {
    let node = Node::bind(claimed, loopback(), identity, trust)?;
    node.connect(1, to).await
}

#[tokio::test]
async fn a_member_is_admitted_and_frames_flow_both_ways() {
    let c = cluster();
    let accepted = accept_one(&c.server);
    let client = connect_as(2, &c.ca.issue(2).expect("cert"), &c.ca.cert(), c.addr)
        .await
        .expect("a member connects");
    assert_eq!(client.peer, 1);
    let server_side = accepted.await.expect("task").expect("admitted");
    assert_eq!(server_side.peer, 2, "the server knows who connected");
    let ping = Frame {
        kind: FrameKind::Raft,
        payload: b"append entries".to_vec(),
    };
    client.send(&ping).await.expect("send");
    assert_eq!(server_side.recv().await.expect("recv"), ping);
    server_side.send(&ping).await.expect("send back");
    assert_eq!(client.recv().await.expect("recv back"), ping);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let c = cluster();
    let stranger = ClusterCa::generate("other").expect("ca");
    let outcome = accept_one(&c.server);
    // The stranger trusts our CA (so it can check us) but holds its own cert.
    let result = connect_as(2, &stranger.issue(2).expect("cert"), &c.ca.cert(), c.addr).await;
    assert!(result.is_err(), "a stranger got in");
    assert!(
        matches!(outcome.await.expect("task"), Err(NetError::Refused { .. })),
        "the server did not refuse the stranger"
    );
}

#[tokio::test]
async fn a_correct_certificate_claiming_another_node_is_refused() {
    let c = cluster();
    let outcome = accept_one(&c.server);
    // Node 3's genuine certificate, claiming to be node 2.
    let result = connect_as(2, &c.ca.issue(3).expect("cert"), &c.ca.cert(), c.addr).await;
    assert!(result.is_err(), "an impostor got in");
    match outcome.await.expect("task") {
        Err(NetError::Refused { why, .. }) => assert!(why.contains("node 2"), "{why}"),
        other => panic!("the impostor was not refused: {other:?}"),
    }
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let c = cluster();
    let outcome = accept_one(&c.server);
    let expired =
        c.ca.issue_valid(2, (2020, 1, 1), (2021, 1, 1))
            .expect("cert");
    let result = connect_as(2, &expired, &c.ca.cert(), c.addr).await;
    assert!(result.is_err(), "an expired certificate got in");
    assert!(matches!(
        outcome.await.expect("task"),
        Err(NetError::Refused { .. })
    ));
}

#[tokio::test]
async fn no_client_certificate_is_refused_and_members_still_get_in() {
    let c = cluster();
    let outcome = accept_one(&c.server);
    // A client that trusts the CA but offers no certificate at all.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(c.ca.cert()).expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![tls::ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(config).expect("quic config");
    let endpoint = quinn::Endpoint::client(loopback()).expect("client endpoint");
    let attempt = async {
        let conn = endpoint
            .connect_with(
                quinn::ClientConfig::new(Arc::new(quic)),
                c.addr,
                &tls::node_name(1),
            )
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        flotilla_net::frame::write_frame(
            &mut send,
            &Frame {
                kind: FrameKind::Hello,
                payload: 2u64.to_be_bytes().to_vec(),
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        match flotilla_net::frame::read_frame(&mut recv).await {
            Ok(Some(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    };
    assert!(
        attempt.await.is_err(),
        "a client without a certificate got in"
    );
    assert!(matches!(
        outcome.await.expect("task"),
        Err(NetError::Refused { .. })
    ));
    // The node keeps serving its members.
    let next = accept_one(&c.server);
    let member = connect_as(2, &c.ca.issue(2).expect("cert"), &c.ca.cert(), c.addr)
        .await
        .expect("a member still connects");
    assert_eq!(next.await.expect("task").expect("admitted").peer, 2);
    assert_eq!(member.peer, 1);
}

#[tokio::test]
async fn a_malformed_frame_ends_its_stream_not_the_connection() {
    let c = cluster();
    let accepted = accept_one(&c.server);
    let client = connect_as(2, &c.ca.issue(2).expect("cert"), &c.ca.cert(), c.addr)
        .await
        .expect("connect");
    let server_side = accepted.await.expect("task").expect("admitted");
    // Version 9, then a length far past the limit.
    client
        .send_raw(&[9, 2, 0, 0, 0, 1, 0])
        .await
        .expect("send raw");
    assert!(matches!(
        server_side.recv().await,
        Err(NetError::Malformed(_))
    ));
    client
        .send_raw(&[1, 2, 0xff, 0xff, 0xff, 0xff])
        .await
        .expect("send raw");
    assert!(matches!(
        server_side.recv().await,
        Err(NetError::FrameTooLarge { .. })
    ));
    let ok = Frame {
        kind: FrameKind::Raft,
        payload: b"still here".to_vec(),
    };
    client.send(&ok).await.expect("send after garbage");
    assert_eq!(server_side.recv().await.expect("recv"), ok);
}
