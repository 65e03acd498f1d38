//! The mesh over real QUIC on loopback: frames flow on their streams, a
//! restarted peer is reconnected to, a full queue drops instead of growing,
//! a flood of garbage datagrams reaches nobody, and a heartbeat overtakes a
//! large snapshot.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_net::tls::ClusterCa;
use flotilla_net::{Deliver, FrameKind, Mesh, Node, Serve};
use tokio::sync::mpsc;

type Received = mpsc::UnboundedReceiver<(u64, FrameKind, Vec<u8>)>;

fn member(
    ca: &ClusterCa,
    id: u64,
    addr: SocketAddr,
    peers: &BTreeMap<u64, SocketAddr>,
    queue: usize,
) -> (Mesh, Received) {
    let node = Node::bind(id, addr, &ca.issue(id).expect("cert"), &ca.cert()).expect("bind");
    let (tx, rx) = mpsc::unbounded_channel();
    let deliver: Deliver = Arc::new(move |from, kind, payload| {
        let _ = tx.send((from, kind, payload));
    });
    let serve: Serve = Arc::new(|_, request| Box::pin(async move { request }));
    (Mesh::start(node, peers, queue, deliver, serve), rx)
}

fn free_addr() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("udp");
    socket.local_addr().expect("addr")
}

/// Sends `payload` from `mesh` to `to` until one arrives (links connect
/// lazily and may be reconnecting); returns what arrived.
async fn send_until_received(
    mesh: &Mesh,
    to: u64,
    kind: FrameKind,
    payload: &[u8],
    rx: &mut Received,
) -> (u64, FrameKind, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        mesh.send(to, kind, payload.to_vec());
        if let Ok(Some(got)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            return got;
        }
        assert!(Instant::now() < deadline, "nothing arrived within 10 s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_flow_on_their_streams_and_a_restarted_peer_is_reconnected() {
    let ca = ClusterCa::generate("mesh").expect("ca");
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a, _a_rx) = member(&ca, 1, a_addr, &BTreeMap::from([(2, b_addr)]), 64);
    let (b, mut b_rx) = member(&ca, 2, b_addr, &BTreeMap::from([(1, a_addr)]), 64);

    let got = send_until_received(&a, 2, FrameKind::Raft, b"vote for me", &mut b_rx).await;
    assert_eq!(got, (1, FrameKind::Raft, b"vote for me".to_vec()));
    // A 1 MiB snapshot chunk travels on its own stream, whole. (Repeats of
    // the first frame, sent while the link came up, may arrive first.)
    let chunk = vec![7u8; 1 << 20];
    assert!(a.send(2, FrameKind::Snapshot, chunk.clone()));
    let got = loop {
        let got = tokio::time::timeout(Duration::from_secs(10), b_rx.recv())
            .await
            .expect("chunk in time")
            .expect("chunk");
        if got.1 != FrameKind::Raft {
            break got;
        }
    };
    assert_eq!(
        (got.0, got.1, got.2.len()),
        (1, FrameKind::Snapshot, chunk.len())
    );
    assert!(got.2 == chunk, "the chunk arrived changed");

    // B restarts on the same address: A's link notices and reconnects.
    b.close();
    drop(b);
    drop(b_rx);
    // In one process the old endpoint's socket lingers until its tasks
    // end; a restarted process would bind at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while UdpSocket::bind(b_addr).is_err() {
        assert!(Instant::now() < deadline, "the old socket never closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (b, mut b_rx) = member(&ca, 2, b_addr, &BTreeMap::from([(1, a_addr)]), 64);
    let started = Instant::now();
    let got = send_until_received(&a, 2, FrameKind::Raft, b"still there?", &mut b_rx).await;
    assert_eq!(got.2, b"still there?".to_vec());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "reconnecting took {:?}",
        started.elapsed()
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_instead_of_growing() {
    let ca = ClusterCa::generate("mesh").expect("ca");
    // Peer 2 never comes up: its link cannot drain.
    let (a, _rx) = member(&ca, 1, free_addr(), &BTreeMap::from([(2, free_addr())]), 4);
    let accepted = (0..100)
        .filter(|_| a.send(2, FrameKind::Raft, vec![0u8; 1000]))
        .count();
    assert!(
        accepted <= 5,
        "{accepted} frames queued for a dead peer with a queue of 4"
    );
    assert!(a.dropped() >= 95, "dropped {}", a.dropped());
    assert!(
        !a.send(9, FrameKind::Raft, vec![1]),
        "an unknown peer takes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_garbage_datagrams_reaches_nobody() {
    let ca = ClusterCa::generate("mesh").expect("ca");
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a, _a_rx) = member(&ca, 1, a_addr, &BTreeMap::from([(2, b_addr)]), 64);
    let (_b, mut b_rx) = member(&ca, 2, b_addr, &BTreeMap::from([(1, a_addr)]), 64);
    let flood = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in 0..10_000u32 {
        let mut packet = vec![0u8; 1 + (i as usize * 37) % 1200];
        for byte in packet.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        let _ = flood.send_to(&packet, b_addr);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b_rx.recv())
            .await
            .is_err(),
        "garbage was delivered"
    );
    let got = send_until_received(&a, 2, FrameKind::Raft, b"after the flood", &mut b_rx).await;
    assert_eq!(got, (1, FrameKind::Raft, b"after the flood".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_frame_overtakes_a_large_snapshot_in_flight() {
    // Raft frames and snapshot chunks travel on separate streams, so a
    // heartbeat sent behind 32 MiB of snapshot does not wait for it.
    let ca = ClusterCa::generate("mesh").expect("ca");
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a, _a_rx) = member(&ca, 1, a_addr, &BTreeMap::from([(2, b_addr)]), 64);
    let (_b, mut b_rx) = member(&ca, 2, b_addr, &BTreeMap::from([(1, a_addr)]), 64);
    send_until_received(&a, 2, FrameKind::Raft, b"hello", &mut b_rx).await;

    const CHUNKS: usize = 32;
    for i in 0..CHUNKS {
        assert!(a.send(2, FrameKind::Snapshot, vec![i as u8; 1 << 20]));
    }
    assert!(a.send(2, FrameKind::Raft, b"heartbeat".to_vec()));
    let mut chunks_before = None;
    let mut chunks = 0;
    while chunks < CHUNKS {
        let (_, kind, payload) = tokio::time::timeout(Duration::from_secs(30), b_rx.recv())
            .await
            .expect("frames in time")
            .expect("a frame");
        match kind {
            FrameKind::Snapshot => chunks += 1,
            FrameKind::Raft if payload == b"heartbeat" => chunks_before = Some(chunks),
            _ => {} // repeats of the hello
        }
    }
    let chunks_before = chunks_before.expect("the heartbeat arrived");
    assert!(
        chunks_before < CHUNKS / 2,
        "the heartbeat arrived after {chunks_before} of {CHUNKS} snapshot chunks"
    );
}
