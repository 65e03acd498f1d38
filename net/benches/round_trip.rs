//! What one hop between two members costs: the round trip of a 300-byte
//! message between two runtimes shaped like a member's (one worker each),
//! over loopback, with the receiver idle before every message as at one
//! client. Five ways, from the floor up: blocking UDP sockets on plain
//! threads, UDP on tokio, one QUIC stream each way read and written by one
//! task per side (quinn alone), a Raft frame over the mesh and back (what an
//! append and its answer take: quinn plus the mesh's queues and tasks), and
//! a request stream (what a client's request and its response take).
//!
//! `cargo bench -p flotilla-net --bench round_trip`

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use flotilla_net::frame::{read_frame, write_frame};
use flotilla_net::{
    ClusterCa, Deliver, Frame, FrameKind, Identity, Mesh, Node, PeerConnection, Serve,
};
use rustls_pki_types::CertificateDer;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

const MESSAGE_BYTES: usize = 300;
/// Pause after each round trip, so both sides are asleep when the next
/// message comes (as between one client's puts).
const IDLE: Duration = Duration::from_micros(500);

fn member_runtime() -> Arc<Runtime> {
    Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime"),
    )
}

/// Runs `work` as a task on `runtime`'s worker and waits for its result.
fn on_worker<T: Send + 'static>(
    runtime: &Runtime,
    work: impl Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = tx.send(work.await);
    });
    rx.recv().expect("the task finished")
}

fn free_addr() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("udp");
    socket.local_addr().expect("addr")
}

/// Times `$iters` round trips of `$one` (an expression that awaits), each
/// after an idle pause. A macro: async closures borrowing the caller's
/// state are not `Send` here.
macro_rules! timed {
    ($iters:expr, $one:expr) => {{
        let mut total = Duration::ZERO;
        for _ in 0..$iters {
            std::thread::sleep(IDLE);
            let start = Instant::now();
            $one;
            total += start.elapsed();
        }
        total
    }};
}

fn std_udp(c: &mut Criterion) {
    let (client, server) = (
        UdpSocket::bind("127.0.0.1:0").expect("bind"),
        UdpSocket::bind("127.0.0.1:0").expect("bind"),
    );
    let echo_addr = server.local_addr().expect("addr");
    // The echo thread lives as long as the process: the bench ends it.
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((len, from)) = server.recv_from(&mut buf) {
            let _ = server.send_to(&buf[..len], from);
        }
    });
    c.bench_function("std_udp_round_trip", |b| {
        b.iter_custom(|iters| {
            let mut buf = [0u8; 2048];
            timed!(iters, {
                client
                    .send_to(&[1; MESSAGE_BYTES], echo_addr)
                    .expect("send");
                client.recv_from(&mut buf).expect("recv");
            })
        })
    });
}

fn udp(c: &mut Criterion, client: &Arc<Runtime>, server: &Arc<Runtime>) {
    let echo_addr = free_addr();
    server.spawn(async move {
        let socket = tokio::net::UdpSocket::bind(echo_addr).await.expect("bind");
        let mut buf = [0u8; 2048];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..len], from).await;
        }
    });
    let socket = Arc::new(on_worker(client, async {
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind")
    }));
    c.bench_function("tokio_udp_round_trip", |b| {
        b.iter_custom(|iters| {
            let socket = socket.clone();
            on_worker(client, async move {
                let mut buf = [0u8; 2048];
                timed!(iters, {
                    socket
                        .send_to(&[1; MESSAGE_BYTES], echo_addr)
                        .await
                        .expect("send");
                    socket.recv_from(&mut buf).await.expect("recv");
                })
            })
        })
    });
}

/// The CA's certificate, nodes 1 and 2's identities and a free loopback
/// address for each.
type TwoNodes = (
    CertificateDer<'static>,
    Identity,
    Identity,
    SocketAddr,
    SocketAddr,
);

/// Nodes 1 and 2 of a fresh cluster CA.
fn two_nodes() -> TwoNodes {
    let ca = ClusterCa::generate("bench").expect("ca");
    (
        ca.cert(),
        ca.issue(1).expect("certificate"),
        ca.issue(2).expect("certificate"),
        free_addr(),
        free_addr(),
    )
}

/// A mesh member whose every frame arrives on the returned channel, and
/// which answers every request with the request itself.
fn member(
    identity: &Identity,
    ca: &CertificateDer<'static>,
    id: u64,
    addr: SocketAddr,
    peer: (u64, SocketAddr),
) -> (Mesh, mpsc::UnboundedReceiver<Vec<u8>>) {
    let node = Node::bind(id, addr, identity, ca).expect("bind");
    let (tx, rx) = mpsc::unbounded_channel();
    let deliver: Deliver = Arc::new(move |_, _, payload| {
        let _ = tx.send(payload);
    });
    let serve: Serve = Arc::new(|_, request| Box::pin(async move { request }));
    let mesh = Mesh::start(node, &BTreeMap::from([peer]), 64, deliver, serve);
    (mesh, rx)
}

fn mesh(c: &mut Criterion, client: &Arc<Runtime>, server: &Arc<Runtime>) {
    let (cert, one, two, a, b) = two_nodes();
    // The echoing member sends every frame it receives back.
    let echo_cert = cert.clone();
    let _echo = on_worker(server, async move {
        let (mesh, mut rx) = member(&two, &echo_cert, 2, b, (1, a));
        let mesh = Arc::new(mesh);
        let sender = mesh.clone();
        tokio::spawn(async move {
            while let Some(payload) = rx.recv().await {
                sender.send(1, FrameKind::Raft, payload);
            }
        });
        mesh
    });
    let (mesh, rx, conn) = on_worker(client, async move {
        let (mesh, mut rx) = member(&one, &cert, 1, a, (2, b));
        // Links connect lazily: send until the first echo comes back.
        loop {
            mesh.send(2, FrameKind::Raft, vec![0; MESSAGE_BYTES]);
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        while rx.try_recv().is_ok() {}
        let conn: PeerConnection = mesh.node().connect(2, b).await.expect("connect");
        (
            Arc::new(mesh),
            Arc::new(tokio::sync::Mutex::new(rx)),
            Arc::new(conn),
        )
    });
    c.bench_function("mesh_frame_round_trip", |bencher| {
        bencher.iter_custom(|iters| {
            let (mesh, rx) = (mesh.clone(), rx.clone());
            on_worker(client, async move {
                let mut rx = rx.lock().await;
                timed!(iters, {
                    mesh.send(2, FrameKind::Raft, vec![1; MESSAGE_BYTES]);
                    rx.recv().await.expect("echo");
                })
            })
        })
    });
    c.bench_function("request_round_trip", |bencher| {
        bencher.iter_custom(|iters| {
            let conn = conn.clone();
            on_worker(client, async move {
                timed!(iters, {
                    conn.request(vec![1; MESSAGE_BYTES])
                        .await
                        .expect("response");
                })
            })
        })
    });
}

/// One stream each way on one authenticated connection, read and written
/// directly by one task per side: what quinn costs without the mesh.
fn quinn_streams(c: &mut Criterion, client: &Arc<Runtime>, server: &Arc<Runtime>) {
    let (cert, one, two, a, b) = two_nodes();
    let echo_cert = cert.clone();
    server.spawn(async move {
        let node = Node::bind(2, b, &two, &echo_cert).expect("bind");
        let Some(Ok(conn)) = node.accept().await else {
            return;
        };
        let (Ok(mut recv), Ok(mut send)) = (conn.accept_stream().await, conn.open_stream().await)
        else {
            return;
        };
        while let Ok(Some(frame)) = read_frame(&mut recv).await {
            if write_frame(&mut send, &frame).await.is_err() {
                return;
            }
        }
        drop(node);
    });
    let streams = on_worker(client, async move {
        let node = Node::bind(1, a, &one, &cert).expect("bind");
        let conn = node.connect(2, b).await.expect("connect");
        let mut send = conn.open_stream().await.expect("stream");
        // The echo side's stream opens once our first frame reached it.
        write_frame(&mut send, &raft_frame()).await.expect("write");
        let mut recv = conn.accept_stream().await.expect("stream");
        read_frame(&mut recv).await.expect("echo");
        Arc::new(tokio::sync::Mutex::new((node, conn, send, recv)))
    });
    c.bench_function("quinn_stream_round_trip", |bencher| {
        bencher.iter_custom(|iters| {
            let streams = streams.clone();
            on_worker(client, async move {
                let mut streams = streams.lock().await;
                let (_, _, send, recv) = &mut *streams;
                timed!(iters, {
                    write_frame(send, &raft_frame()).await.expect("write");
                    read_frame(recv).await.expect("echo");
                })
            })
        })
    });
}

fn raft_frame() -> Frame {
    Frame {
        kind: FrameKind::Raft,
        payload: vec![1; MESSAGE_BYTES],
    }
}

fn round_trips(c: &mut Criterion) {
    let (client, server) = (member_runtime(), member_runtime());
    std_udp(c);
    udp(c, &client, &server);
    quinn_streams(c, &client, &server);
    mesh(c, &client, &server);
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(3))
}

#[allow(missing_docs)] // criterion's macro generates an undocumented function
mod harness {
    use super::*;
    criterion_group! {
        name = benches;
        config = config();
        targets = round_trips
    }
}
use harness::benches;
criterion_main!(benches);
