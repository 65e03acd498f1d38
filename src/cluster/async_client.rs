//! The async client of a running cluster: connects with the client
//! certificate, follows leader hints, retries retryable errors with the same
//! session sequence number. [`crate::RemoteClient`] is its blocking face.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_engine::kv::{self, Command, WriteOp, WriteReply};
use flotilla_net::{Identity, NetError, Node as NetNode, PeerConnection};
use rustls_pki_types::CertificateDer;

use crate::cluster::files::load_client;
use crate::cluster::proto::{
    self, Consistency, JobRequest, JobView, RemoteStatus, Request, Response, WireError,
};
use crate::cluster::sessions::{write_outcome, SessionPool};
use crate::db::CasOutcome;
use crate::error::{Error, Result};
use crate::mapreduce::MapReduceSpec;
use crate::scan::{scan_pages, Pair};
use crate::ReadConsistency;

/// How long to wait for a member to accept a connection before trying another.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection to a cluster, for async code. Cheap to share behind an
/// `Arc`: concurrent requests go out on the same QUIC connections, one
/// stream each.
pub struct AsyncRemoteClient {
    endpoint: NetNode,
    nodes: BTreeMap<u64, SocketAddr>,
    conns: Mutex<BTreeMap<u64, Arc<PeerConnection>>>,
    /// Held while connecting, so concurrent requests open one connection.
    connecting: tokio::sync::Mutex<()>,
    leader: Mutex<Option<u64>>,
    sessions: SessionPool,
    timeout: Duration,
}

impl AsyncRemoteClient {
    /// Reads the cluster directory `dir` (as `flotilla cluster init` wrote
    /// it). Must run on a tokio runtime with IO and time enabled, which then
    /// drives the client's connections.
    pub async fn open(dir: &Path, timeout: Duration) -> Result<AsyncRemoteClient> {
        let files = load_client(dir)?;
        let identity = Identity {
            certs: vec![CertificateDer::from(files.tls.cert.clone())],
            key: files.tls.key.clone(),
        };
        let ca = CertificateDer::from(files.tls.ca_cert.clone());
        let endpoint = NetNode::bind(0, SocketAddr::from(([127, 0, 0, 1], 0)), &identity, &ca)
            .map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?;
        Ok(AsyncRemoteClient {
            endpoint,
            nodes: files.nodes,
            conns: Mutex::new(BTreeMap::new()),
            connecting: tokio::sync::Mutex::new(()),
            leader: Mutex::new(None),
            sessions: SessionPool::default(),
            timeout,
        })
    }

    /// The member this client sends its next request to first: the leader
    /// it last learned of (from an answer, a `NotLeader` hint or a member
    /// that forwarded to the leader), or `None` before any answer.
    pub fn leader_hint(&self) -> Option<u64> {
        self.leader.lock().ok().and_then(|l| *l)
    }

    fn cached(&self, node: u64) -> Option<Arc<PeerConnection>> {
        let conns = self.conns.lock().ok()?;
        conns.get(&node).filter(|c| !c.is_closed()).cloned()
    }

    fn forget(&self, node: u64) {
        if let Ok(mut conns) = self.conns.lock() {
            conns.remove(&node);
        }
    }

    /// Where member `node` listens. A node that the cluster file does not
    /// list (asked for by id, or named leader by a member whose cluster has
    /// changed) is an error, not a panic.
    fn address(&self, node: u64) -> Result<SocketAddr> {
        self.nodes.get(&node).copied().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "node {node} is not in this client's cluster file (members: {:?})",
                self.nodes.keys().collect::<Vec<_>>()
            ))
        })
    }

    async fn connection(&self, node: u64) -> Result<Arc<PeerConnection>> {
        if let Some(conn) = self.cached(node) {
            return Ok(conn);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(conn) = self.cached(node) {
            return Ok(conn);
        }
        let addr = self.address(node)?;
        let conn = Arc::new(
            self.endpoint
                .connect(node, addr)
                .await
                .map_err(|e| match e {
                    // Retrying cannot fix certificates: say so at once.
                    NetError::Rejected { .. } => Error::Config(format!(
                        "{e}; check the certificates in this client's cluster directory"
                    )),
                    other => Error::Unavailable(other.to_string()),
                })?,
        );
        if let Ok(mut conns) = self.conns.lock() {
            conns.insert(node, conn.clone());
        }
        Ok(conn)
    }

    async fn send_to(&self, node: u64, request: &Request) -> Result<Response> {
        self.send_noting(node, request, &AtomicBool::new(false))
            .await
    }

    /// As `send_to`, setting `sent` once the request goes out on a
    /// connection: from then on, a write may be applied even if no answer
    /// comes back.
    async fn send_noting(
        &self,
        node: u64,
        request: &Request,
        sent: &AtomicBool,
    ) -> Result<Response> {
        // A member that is down must not hold the client for the whole
        // handshake timeout: try the next one soon.
        let addr = self.address(node)?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, self.connection(node))
            .await
            .map_err(|_| {
                Error::Unavailable(format!(
                    "node {node} at {addr} did not answer within {CONNECT_TIMEOUT:?}"
                ))
            })??;
        sent.store(true, Ordering::Relaxed);
        match conn.request(proto::encode(request)).await {
            Ok(bytes) => proto::decode(&bytes),
            Err(e) => {
                self.forget(node);
                Err(Error::Unavailable(format!("node {node}: {e}")))
            }
        }
    }

    /// Sends `request` to the leader (or whoever answers), following hints
    /// and retrying retryable errors until the timeout.
    async fn call<T>(
        &self,
        request: Request,
        pick: fn(Response) -> std::result::Result<T, WireError>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let mut next = 0usize;
        let mut backoff = Duration::from_millis(5);
        let mut last_error = Error::Unavailable("no member answered".into());
        // Until some member answered, and while no write went out on a
        // connection, a timeout means nothing was done: report the members
        // as unreachable rather than "may complete".
        let mut answered = false;
        let write_sent = AtomicBool::new(false);
        let is_write = matches!(request, Request::Write { .. });
        while tokio::time::Instant::now() < deadline {
            let target = self
                .leader
                .lock()
                .ok()
                .and_then(|l| *l)
                .unwrap_or_else(|| ids[next % ids.len()]);
            let attempt =
                tokio::time::timeout_at(deadline, self.send_noting(target, &request, &write_sent))
                    .await;
            let mut served_by = None;
            let result = match attempt {
                Err(_) if !answered => {
                    Err(Error::Unavailable(format!("node {target} did not answer")))
                }
                Err(_) => Err(Error::Timeout(self.timeout)),
                Ok(Err(e)) => Err(e),
                Ok(Ok(response)) => {
                    answered = true;
                    // A member that forwarded to the leader names it: go
                    // there directly from now on, saving two hops.
                    let (response, leader) = response.unwrap_forwarded();
                    served_by = leader.filter(|l| self.nodes.contains_key(l));
                    pick(response).map_err(Error::from)
                }
            };
            match result {
                Ok(value) => {
                    if let Ok(mut leader) = self.leader.lock() {
                        *leader = Some(served_by.unwrap_or(target));
                    }
                    return Ok(value);
                }
                Err(e) if e.is_retryable() => {
                    let hint = match &e {
                        Error::NotLeader { leader: Some(l) } if self.nodes.contains_key(l) => {
                            Some(*l)
                        }
                        _ => None,
                    };
                    if let Ok(mut leader) = self.leader.lock() {
                        *leader = hint;
                    }
                    if hint.is_none() {
                        next += 1;
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(200));
                    }
                    last_error = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(match last_error {
            // A write that went out may sit in a leader's log (one that
            // stepped down answers NotLeader for it): it may still be
            // applied, whatever the last refusal said.
            e if e.is_retryable() && is_write && write_sent.load(Ordering::Relaxed) => {
                Error::Timeout(self.timeout)
            }
            Error::Unavailable(why) if !answered => Error::Unavailable(format!(
                "no member answered within {:?} (last: {why}); are the members running?",
                self.timeout
            )),
            Error::Unavailable(why) => Error::Unavailable(format!(
                "no leader answered within {:?}: {why}",
                self.timeout
            )),
            other => other,
        })
    }

    async fn write(&self, op: WriteOp) -> Result<WriteReply> {
        let reply = self
            .sessions
            .write(op, |client, seq, op| self.send_write(client, seq, op))
            .await?;
        write_outcome(reply)
    }

    /// Sends one write of session `client` with number `seq`, retrying as
    /// `call` does.
    async fn send_write(&self, client: u64, seq: u64, op: WriteOp) -> Result<WriteReply> {
        let command = kv::command::encode(&Command {
            client,
            seq,
            // The leader stamps its own clock over this (Member::stamp).
            now_ms: 0,
            op,
        });
        self.call(Request::Write { command }, |r| match r {
            Response::Write(r) => r,
            other => Err(WireError::Other(format!("unexpected response {other:?}"))),
        })
        .await
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.write(WriteOp::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        })
        .await
        .map(|_| ())
    }

    /// Appends `value` to `key`'s value.
    pub async fn append(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.write(WriteOp::Append {
            key: key.to_vec(),
            value: value.to_vec(),
        })
        .await
        .map(|_| ())
    }

    /// Removes `key`; true if it existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool> {
        Ok(matches!(
            self.write(WriteOp::Delete { key: key.to_vec() }).await?,
            WriteReply::Deleted { existed: true }
        ))
    }

    /// Compare-and-swap, as [`crate::Db::compare_and_swap`].
    pub async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<CasOutcome> {
        match self
            .write(WriteOp::CompareAndSwap {
                key: key.to_vec(),
                expected: expected.map(<[u8]>::to_vec),
                new: new.map(<[u8]>::to_vec),
            })
            .await?
        {
            WriteReply::Swapped { swapped, current } => Ok(CasOutcome { swapped, current }),
            other => Err(Error::Unavailable(format!("unexpected reply {other:?}"))),
        }
    }

    /// The value of `key`.
    pub async fn get(&self, key: &[u8], consistency: ReadConsistency) -> Result<Option<Vec<u8>>> {
        let request = Request::Get {
            key: key.to_vec(),
            consistency: Consistency::from(consistency),
        };
        self.call(request, |r| match r {
            Response::Get(r) => r,
            other => Err(WireError::Other(format!("unexpected response {other:?}"))),
        })
        .await
    }

    /// Up to `limit` pairs in `start..end` (empty end: unbounded).
    pub async fn scan(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
        consistency: ReadConsistency,
    ) -> Result<Vec<Pair>> {
        scan_pages(start, limit, |start, limit| {
            let request = Request::Scan {
                start,
                end: end.clone(),
                limit: limit as u64,
                consistency: Consistency::from(consistency),
            };
            self.call(request, |r| match r {
                Response::Scan(r) => r,
                other => Err(WireError::Other(format!("unexpected response {other:?}"))),
            })
        })
        .await
    }

    /// Starts a MapReduce job with id `id` on whichever member answers
    /// (that member coordinates it); returns the id. Retrying a start with
    /// the same id starts nothing more.
    pub async fn mapreduce(&self, id: &str, spec: &MapReduceSpec) -> Result<String> {
        let request = Request::MrStart(JobRequest::new(id.to_string(), spec)?);
        self.call(request, |r| match r {
            Response::MrStarted(r) => r,
            other => Err(WireError::Other(format!("unexpected response {other:?}"))),
        })
        .await
    }

    /// Job `id`'s status line and counters (see [`JobView`]).
    pub async fn job(&self, id: &str) -> Result<JobView> {
        let request = Request::MrView { id: id.to_string() };
        self.call(request, |r| match r {
            Response::MrView(r) => r,
            other => Err(WireError::Other(format!("unexpected response {other:?}"))),
        })
        .await
    }

    /// Test only: replaces member `node`'s fault rules (drop share in
    /// millionths, delivery delay, partition sides) and returns how many
    /// frames the rules it replaced dropped, so a test can tell its faults
    /// took effect. The member must run with `FLOTILLA_TEST_FAULTS=1`.
    pub async fn inject_faults(
        &self,
        node: u64,
        drop_ppm: u32,
        delay: Duration,
        partition: Vec<Vec<u64>>,
    ) -> Result<u64> {
        let request = Request::InjectFaults {
            drop_ppm,
            delay_ms: delay.as_millis() as u64,
            partition,
        };
        match self.send_to(node, &request).await? {
            Response::Faults(r) => r.map_err(Error::from),
            other => Err(Error::Unavailable(format!("unexpected response {other:?}"))),
        }
    }

    /// Sends a request to one member only, with no retry (tests use it to
    /// talk to a member on the minority side of a partition).
    pub async fn get_from(&self, node: u64, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let request = Request::Get {
            key: key.to_vec(),
            consistency: Consistency::Linearizable,
        };
        match tokio::time::timeout(self.timeout, self.send_to(node, &request)).await {
            Err(_) => Err(Error::Timeout(self.timeout)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(response)) => match response.unwrap_forwarded().0 {
                Response::Get(r) => r.map_err(Error::from),
                other => Err(Error::Unavailable(format!("unexpected response {other:?}"))),
            },
        }
    }

    /// Every member's status; a member that does not answer is reported as
    /// an error beside its id.
    pub async fn status(&self) -> Vec<(u64, Result<Vec<RemoteStatus>>)> {
        let mut all = Vec::new();
        for &id in self.nodes.keys() {
            let answer = match tokio::time::timeout(
                self.timeout,
                self.send_to(id, &Request::Status),
            )
            .await
            {
                Err(_) => Err(Error::Timeout(self.timeout)),
                Ok(Err(e)) => Err(e),
                Ok(Ok(Response::Status(r))) => r.map_err(Error::from),
                Ok(Ok(other)) => Err(Error::Unavailable(format!("unexpected response {other:?}"))),
            };
            all.push((id, answer));
        }
        all
    }
}
