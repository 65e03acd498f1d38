//! Long-lived links between the nodes of a cluster.
//!
//! Each node keeps one outgoing connection per peer, carrying all groups'
//! traffic: one long-lived stream for Raft frames and another for snapshot
//! chunks, each written by its own task, so a large snapshot never queues
//! behind or in front of heartbeats. Every link has a bounded queue per
//! stream; when it is full the frame is dropped (Raft retries) and counted,
//! so memory stays flat while a peer is slow or down. A lost connection is
//! re-established with exponential back-off (10 ms doubling to 1 s).
//!
//! Incoming connections are admitted by [`Node::accept`] (certificate and
//! node-id checks); every stream a peer opens is read frame by frame and
//! handed to the `deliver` callback with the peer's proven id. A malformed
//! frame stops that stream only. Request streams (bidirectional, from
//! clients or forwarding members) go to the `serve` callback.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, info, warn};

use crate::endpoint::{Node, PeerConnection};
use crate::fault::Faults;
use crate::frame::{read_frame, write_frame, Frame, FrameKind};
use crate::NetError;

/// Frames queued per peer and stream before new ones are dropped. Default 4,096.
pub const DEFAULT_QUEUE_FRAMES: usize = 4096;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A peer unreachable this long is reported as a warning (a member that is
/// down, a wrong address or certificate), and again every
/// [`UNREACHABLE_REPEAT`] while it lasts; shorter outages (a restart) are
/// logged at debug only.
const UNREACHABLE_WARN_AFTER: Duration = Duration::from_secs(5);
const UNREACHABLE_REPEAT: Duration = Duration::from_secs(60);

/// Called with (peer id, kind, payload) for every frame a peer sends.
pub type Deliver = Arc<dyn Fn(u64, FrameKind, Vec<u8>) + Send + Sync>;

/// Answers one request: (peer id, request payload) → response payload.
pub type Serve = Arc<
    dyn Fn(u64, Vec<u8>) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>> + Send>>
        + Send
        + Sync,
>;

struct Link {
    raft: mpsc::Sender<Vec<u8>>,
    snapshot: mpsc::Sender<Vec<u8>>,
}

/// Per peer, a signal that it connected to us anew (it restarted): our
/// outgoing connection to its old incarnation is dead, so reconnect now
/// rather than after the idle timeout.
type Reconnects = Arc<BTreeMap<u64, Arc<Notify>>>;

/// The links of one node to all its peers.
pub struct Mesh {
    node: Arc<Node>,
    links: BTreeMap<u64, Link>,
    dropped: Arc<AtomicU64>,
    faults: Faults,
    stop: watch::Sender<bool>,
}

impl Mesh {
    /// Starts the links to `peers` and the accept loop on `node`. Must be
    /// called inside a tokio runtime.
    pub fn start(
        node: Node,
        peers: &BTreeMap<u64, SocketAddr>,
        queue_frames: usize,
        deliver: Deliver,
        serve: Serve,
    ) -> Mesh {
        let node = Arc::new(node);
        let (stop, stopped) = watch::channel(false);
        let faults = Faults::default();
        let mut links = BTreeMap::new();
        let reconnects: Reconnects = Arc::new(
            peers
                .keys()
                .map(|&peer| (peer, Arc::new(Notify::new())))
                .collect(),
        );
        for (&peer, &addr) in peers {
            let (raft, raft_rx) = mpsc::channel(queue_frames.max(1));
            let (snapshot, snapshot_rx) = mpsc::channel(queue_frames.max(1));
            tokio::spawn(run_link(
                node.clone(),
                peer,
                addr,
                raft_rx,
                snapshot_rx,
                stopped.clone(),
                reconnects.get(&peer).cloned().unwrap_or_default(),
            ));
            links.insert(peer, Link { raft, snapshot });
        }
        tokio::spawn(accept_loop(
            node.clone(),
            deliver,
            serve,
            faults.clone(),
            reconnects,
        ));
        Mesh {
            node,
            links,
            dropped: Arc::new(AtomicU64::new(0)),
            faults,
            stop,
        }
    }

    /// Queues a frame for `to`. Never blocks: returns false (and counts the
    /// drop) if the peer is unknown, its queue is full, or a fault rule
    /// drops it.
    pub fn send(&self, to: u64, kind: FrameKind, payload: Vec<u8>) -> bool {
        let Some(link) = self.links.get(&to) else {
            return false;
        };
        if !self.faults.allows(self.node.id(), to) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let queue = match kind {
            FrameKind::Snapshot => &link.snapshot,
            _ => &link.raft,
        };
        if queue.try_send(payload).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Frames dropped so far (full queues, fault rules).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The fault rules applied to this node's traffic (for tests).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The endpoint (to open request streams to peers).
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Stops every link and the endpoint.
    pub fn close(&self) {
        let _ = self.stop.send(true);
        self.node.close();
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.close();
    }
}

/// How long a peer has been unreachable, and when that was last reported.
#[derive(Default)]
struct Outage {
    since: Option<Instant>,
    warned: Option<Instant>,
}

impl Outage {
    /// A connect failed: how long the outage has lasted, if it is time to
    /// warn about it.
    fn failed(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let lasted = now - *self.since.get_or_insert(now);
        let due = lasted >= UNREACHABLE_WARN_AFTER
            && self.warned.is_none_or(|at| now - at >= UNREACHABLE_REPEAT);
        if due {
            self.warned = Some(now);
        }
        due.then_some(lasted)
    }

    /// A connect succeeded: how long the outage lasted, if it was warned about.
    fn ended(&mut self) -> Option<Duration> {
        let since = self.since.take();
        self.warned.take().and(since).map(|since| since.elapsed())
    }
}

/// Keeps one peer connected and drains its two queues into two streams.
async fn run_link(
    node: Arc<Node>,
    peer: u64,
    addr: SocketAddr,
    mut raft: mpsc::Receiver<Vec<u8>>,
    mut snapshot: mpsc::Receiver<Vec<u8>>,
    mut stopped: watch::Receiver<bool>,
    reconnect: Arc<Notify>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut outage = Outage::default();
    while !*stopped.borrow() {
        let conn = match node.connect(peer, addr).await {
            Ok(conn) => {
                if let Some(lasted) = outage.ended() {
                    info!(peer, %addr, "peer reachable again after {lasted:?}");
                }
                conn
            }
            Err(e) => {
                debug!(peer, %addr, "connect failed, retrying in {backoff:?}: {e}");
                if let Some(lasted) = outage.failed() {
                    warn!(peer, %addr, "peer unreachable for {lasted:?}, still retrying: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped.changed() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        let result = tokio::select! {
            r = pump(&conn, FrameKind::Raft, &mut raft) => r,
            r = pump(&conn, FrameKind::Snapshot, &mut snapshot) => r,
            _ = reconnect.notified() => Err(NetError::Closed("the peer restarted".into())),
            _ = stopped.changed() => return,
        };
        match result {
            Ok(()) => return, // the queue closed: the mesh is gone
            Err(e) => debug!(peer, "link lost, reconnecting: {e}"),
        }
    }
}

/// Writes queued frames to one long-lived stream until an error.
async fn pump(
    conn: &PeerConnection,
    kind: FrameKind,
    queue: &mut mpsc::Receiver<Vec<u8>>,
) -> Result<(), NetError> {
    let mut stream = conn.open_stream().await?;
    while let Some(payload) = queue.recv().await {
        write_frame(&mut stream, &Frame { kind, payload }).await?;
    }
    Ok(())
}

async fn accept_loop(
    node: Arc<Node>,
    deliver: Deliver,
    serve: Serve,
    faults: Faults,
    reconnects: Reconnects,
) {
    // Admissions run in tasks of their own, so a peer that stalls its
    // handshake or hello holds up nobody else; admitted connections come
    // back here to be registered in order.
    let (admitted_tx, mut admitted) = mpsc::channel::<PeerConnection>(64);
    let admitter = {
        let node = node.clone();
        tokio::spawn(async move {
            while let Some(incoming) = node.next_incoming().await {
                let node = node.clone();
                let admitted_tx = admitted_tx.clone();
                tokio::spawn(async move {
                    if let Ok(conn) = node.admit_in_time(incoming).await {
                        let _ = admitted_tx.send(conn).await;
                    }
                });
            }
        })
    };
    let mut incarnations: BTreeMap<u64, u64> = BTreeMap::new();
    while let Some(conn) = admitted.recv().await {
        let previous = incarnations.insert(conn.peer, conn.incarnation);
        if previous.is_some_and(|p| p != conn.incarnation) {
            if let Some(reconnect) = reconnects.get(&conn.peer) {
                debug!(peer = conn.peer, "peer restarted: reconnecting to it");
                reconnect.notify_one();
            }
        }
        let conn = Arc::new(conn);
        tokio::spawn(read_streams(
            conn.clone(),
            deliver.clone(),
            faults.clone(),
            node.id(),
        ));
        tokio::spawn(serve_requests(conn, serve.clone()));
    }
    admitter.abort();
}

/// Reads every one-way stream the peer opens.
async fn read_streams(conn: Arc<PeerConnection>, deliver: Deliver, faults: Faults, me: u64) {
    let peer = conn.peer;
    while let Ok(mut stream) = conn.accept_stream().await {
        let deliver = deliver.clone();
        let faults = faults.clone();
        tokio::spawn(async move {
            loop {
                match read_frame(&mut stream).await {
                    Ok(Some(frame)) => {
                        if frame.kind == FrameKind::Hello {
                            continue;
                        }
                        if faults.allows(peer, me) {
                            let delay = faults.delay();
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            deliver(peer, frame.kind, frame.payload);
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        warn!(peer, "closing a stream after a bad frame: {e}");
                        let _ = stream.stop(1u32.into());
                        return;
                    }
                }
            }
        });
    }
}

/// Answers the request streams the peer opens: one request, one response each.
async fn serve_requests(conn: Arc<PeerConnection>, serve: Serve) {
    let peer = conn.peer;
    while let Ok((mut send, mut recv)) = conn.accept_request().await {
        let serve = serve.clone();
        tokio::spawn(async move {
            let request = match read_frame(&mut recv).await {
                Ok(Some(frame)) if frame.kind == FrameKind::Request => frame.payload,
                other => {
                    warn!(
                        peer,
                        "closing a request stream without a request: {other:?}"
                    );
                    let _ = recv.stop(1u32.into());
                    return;
                }
            };
            let response = serve(peer, request).await;
            let frame = Frame {
                kind: FrameKind::Response,
                payload: response,
            };
            if write_frame(&mut send, &frame).await.is_ok() {
                let _ = send.finish();
            }
        });
    }
}
