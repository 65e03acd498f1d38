//! A cluster member: the node's groups wired to the QUIC mesh, serving
//! requests from clients and other members, forwarding what needs the
//! leader to the leader.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use flotilla_engine::kv::ShardOf;
use flotilla_engine::node::{GroupHandle, NodeError, ReadConsistency, Transport};
use flotilla_engine::{decode_message, encode_message, kv, Message, MessageBody};
use flotilla_net::{FrameKind, Mesh, PeerConnection};
use flotilla_shard::ShardPolicy;
use tracing::{debug, warn};

use crate::cluster::proto::{self, RemoteStatus, Request, Response, WireError};
use crate::db::now_ms;
use crate::error::{Error, Result};
use crate::limits::WriteLimits;
use crate::mapreduce::cluster::ClusterJobs;
use crate::scan::{scan_group, ScanRange, MAX_SCAN_PAGE_BYTES};

/// Sends a group's Raft messages over the mesh: snapshot chunks on the
/// snapshot stream, everything else on the Raft stream.
pub(crate) struct MeshTransport {
    pub(crate) mesh: Arc<OnceLock<Mesh>>,
}

impl Transport for MeshTransport {
    fn send(&self, msg: Message) {
        let Some(mesh) = self.mesh.get() else {
            return; // not started yet: dropped, Raft retries
        };
        let kind = match msg.body {
            MessageBody::InstallSnapshot { .. } => FrameKind::Snapshot,
            _ => FrameKind::Raft,
        };
        mesh.send(msg.to, kind, encode_message(&msg));
    }
}

/// Hands a frame from an authenticated peer to its group, after checking
/// that the message claims to come from that peer.
pub(crate) fn deliver(groups: &BTreeMap<u64, GroupHandle>, peer: u64, payload: &[u8]) {
    let msg = match decode_message(payload) {
        Ok(msg) => msg,
        Err(e) => {
            warn!(peer, "dropped an undecodable Raft message: {e}");
            return;
        }
    };
    if msg.from != peer || peer == 0 {
        warn!(
            peer,
            claimed = msg.from,
            "dropped a message whose sender is not the connected peer"
        );
        return;
    }
    match groups.get(&msg.group) {
        Some(group) => group.deliver(msg),
        None => debug!(
            group = msg.group,
            "message for a group this node does not host"
        ),
    }
}

/// The request-serving half of a member.
pub(crate) struct Member {
    pub(crate) id: u64,
    pub(crate) group: GroupHandle,
    pub(crate) mesh: Arc<OnceLock<Mesh>>,
    pub(crate) peers: BTreeMap<u64, SocketAddr>,
    pub(crate) request_timeout: Duration,
    /// What a client's write may carry: checked here, as a remote client's
    /// own process checked nothing this member can rely on.
    limits: WriteLimits,
    /// The store's shard policy.
    shards: ShardPolicy,
    faults_allowed: bool,
    /// MapReduce on this member; set once the store is open.
    pub(crate) jobs: OnceLock<Arc<ClusterJobs>>,
    conns: tokio::sync::Mutex<BTreeMap<u64, Arc<PeerConnection>>>,
}

impl Member {
    pub(crate) fn new(
        id: u64,
        group: GroupHandle,
        mesh: Arc<OnceLock<Mesh>>,
        peers: BTreeMap<u64, SocketAddr>,
        request_timeout: Duration,
        limits: WriteLimits,
        shards: ShardPolicy,
    ) -> Self {
        Member {
            id,
            group,
            mesh,
            peers,
            request_timeout,
            limits,
            shards,
            faults_allowed: std::env::var("FLOTILLA_TEST_FAULTS").as_deref() == Ok("1"),
            jobs: OnceLock::new(),
            conns: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Serves a request; one from a client (`from_client`) that needs the
    /// leader is forwarded to it, one from a member is not (no loops).
    #[tracing::instrument(level = "debug", skip_all, fields(node = self.id, from_client))]
    pub(crate) async fn execute(&self, request: Request, from_client: bool) -> Response {
        self.execute_routed(request, from_client).await.0
    }

    /// Serves a request from a remote client: as [`execute`](Self::execute),
    /// but an answer the leader gave is wrapped in [`Response::Forwarded`]
    /// so the client learns where to go next time.
    pub(crate) async fn serve_client(&self, request: Request) -> Response {
        match self.execute_routed(request, true).await {
            (response, Some(leader)) => Response::Forwarded {
                leader,
                response: Box::new(response),
            },
            (response, None) => response,
        }
    }

    /// The response, and the leader it came from if it was forwarded there.
    async fn execute_routed(&self, request: Request, from_client: bool) -> (Response, Option<u64>) {
        let response = self.execute_local(request.clone()).await;
        // A client asking a member that does not coordinate a running job
        // for its progress is sent on to the coordinator.
        if let Response::MrView(Ok(view)) = &response {
            if from_client
                && view.counters.is_none()
                && view.coordinator != 0
                && view.coordinator != self.id
                && view.status.starts_with("running")
            {
                if let Ok(forwarded @ Response::MrView(Ok(_))) =
                    self.forward(view.coordinator, &request).await
                {
                    return (forwarded, None);
                }
            }
            return (response, None);
        }
        let leader = match &response {
            Response::Write(Err(WireError::NotLeader(Some(l))))
            | Response::Get(Err(WireError::NotLeader(Some(l))))
            | Response::Scan(Err(WireError::NotLeader(Some(l)))) => *l,
            _ => return (response, None),
        };
        if !from_client || leader == self.id {
            return (response, None);
        }
        match self.forward(leader, &request).await {
            Ok(forwarded) => (forwarded, Some(leader)),
            Err(e) => {
                debug!(leader, "forwarding failed: {e}");
                (response, None)
            }
        }
    }

    async fn wait<T>(
        &self,
        pending: std::result::Result<flotilla_engine::node::Pending<T>, NodeError>,
    ) -> std::result::Result<T, WireError> {
        let timeout = self.request_timeout;
        match tokio::time::timeout(timeout, pending.map_err(Error::from)?).await {
            Err(_) => Err(WireError::Timeout(timeout.as_millis() as u64)),
            Ok(Err(_)) => Err(WireError::Closed),
            Ok(Ok(answer)) => answer.map_err(|e| Error::from(e).into()),
        }
    }

    async fn execute_local(&self, request: Request) -> Response {
        match request {
            Request::Write { command } => match prepare_write(&command, &self.limits) {
                Ok(command) => Response::Write(self.wait(self.group.write(command)).await),
                Err(e) => Response::Write(Err(e)),
            },
            Request::Get { key, consistency } => {
                let inner = self.shards.inner_key(&key);
                let consistency: ReadConsistency = consistency.into();
                if consistency == ReadConsistency::Stale {
                    return Response::Get(
                        self.group
                            .data()
                            .get(&inner)
                            .map_err(|e| WireError::Storage(e.to_string())),
                    );
                }
                Response::Get(self.wait(self.group.read(consistency, Some(inner))).await)
            }
            Request::Scan {
                start,
                end,
                limit,
                consistency,
            } => {
                let consistency: ReadConsistency = consistency.into();
                if consistency != ReadConsistency::Stale {
                    if let Err(e) = self.wait(self.group.read(consistency, None)).await {
                        return Response::Scan(Err(e));
                    }
                }
                let group = self.group.clone();
                let shards = self.shards;
                let range = ScanRange::range(start, end);
                let scanned = tokio::task::spawn_blocking(move || {
                    scan_group(&group, shards, &range, limit as usize, MAX_SCAN_PAGE_BYTES)
                })
                .await;
                Response::Scan(match scanned {
                    Ok(result) => result.map_err(WireError::from),
                    Err(e) => Err(WireError::Storage(format!("scan task failed: {e}"))),
                })
            }
            Request::InjectFaults {
                drop_ppm,
                delay_ms,
                partition,
            } => Response::Faults(match (self.faults_allowed, self.mesh.get()) {
                (true, Some(mesh)) => {
                    let faults = mesh.faults();
                    faults.heal();
                    faults.partition(&partition);
                    faults.set_drop(f64::from(drop_ppm) / 1e6);
                    faults.set_delay(Duration::from_millis(delay_ms));
                    Ok(faults.take_dropped())
                }
                _ => Err(WireError::InvalidArgument(
                    "fault injection is off (start the member with FLOTILLA_TEST_FAULTS=1)".into(),
                )),
            }),
            request @ (Request::MrStart(_)
            | Request::MrView { .. }
            | Request::MrPull { .. }
            | Request::MrDone { .. }
            | Request::MrFetch { .. }) => {
                let served = match self.jobs.get() {
                    Some(jobs) => jobs.serve(request).await,
                    None => None,
                };
                served.unwrap_or(Response::MrAck(Err(WireError::Unavailable(
                    "this member is still opening".into(),
                ))))
            }
            Request::Status => {
                let status = match self.group.status() {
                    Ok(rx) => rx.await.map_err(|_| WireError::Closed),
                    Err(e) => Err(Error::from(e).into()),
                };
                Response::Status(status.map(|s| {
                    vec![RemoteStatus {
                        node: self.id,
                        group: s.raft.group,
                        role: format!("{:?}", s.raft.role),
                        term: s.raft.term,
                        leader: s.raft.leader,
                        commit_index: s.raft.commit_index,
                        applied_index: s.applied_index,
                        log_bytes: s.log_bytes,
                        sessions: s.sessions as u64,
                        snapshot_index: s.raft.snapshot_index,
                        voters: s.raft.membership.voters.iter().copied().collect(),
                    }]
                }))
            }
        }
    }

    /// Sends `request` to member `to` over a cached connection (the
    /// member serves it itself: requests between members are never
    /// forwarded on).
    pub(crate) async fn forward(&self, to: u64, request: &Request) -> Result<Response> {
        if let Some(mesh) = self.mesh.get() {
            if !mesh.faults().allows(self.id, to) {
                return Err(Error::Unavailable(format!("the link to node {to} is cut")));
            }
        }
        let conn = self.connection(to).await?;
        let answer =
            tokio::time::timeout(self.request_timeout, conn.request(proto::encode(request)))
                .await
                .map_err(|_| Error::Timeout(self.request_timeout))?;
        match answer {
            Ok(bytes) => proto::decode(&bytes),
            Err(e) => {
                self.conns.lock().await.remove(&to);
                Err(Error::Unavailable(format!(
                    "forwarding to node {to} failed: {e}"
                )))
            }
        }
    }

    async fn connection(&self, to: u64) -> Result<Arc<PeerConnection>> {
        let mut conns = self.conns.lock().await;
        if let Some(conn) = conns.get(&to).filter(|c| !c.is_closed()) {
            return Ok(conn.clone());
        }
        let addr = *self
            .peers
            .get(&to)
            .ok_or_else(|| Error::Unavailable(format!("node {to} is not a known peer")))?;
        let mesh = self
            .mesh
            .get()
            .ok_or_else(|| Error::Unavailable("the network is not started".into()))?;
        let conn = Arc::new(
            mesh.node()
                .connect(to, addr)
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?,
        );
        conns.insert(to, conn.clone());
        Ok(conn)
    }
}

/// Checks a client's write against this member's limits, then stamps the
/// member's clock on it. Session expiry runs on the clock stamped into each
/// command, so the member that proposes a write stamps its own: a client's
/// clock, however wrong, can then neither expire other clients' sessions
/// nor keep its own alive. (Only the leader's proposal succeeds, so the
/// stamp is the leader's.)
fn prepare_write(command: &[u8], limits: &WriteLimits) -> std::result::Result<Vec<u8>, WireError> {
    let mut decoded: kv::Command = kv::command::decode(command)
        .map_err(|e| WireError::InvalidArgument(format!("malformed write command: {e}")))?;
    limits.check(&decoded.op)?;
    decoded.now_ms = now_ms();
    Ok(kv::command::encode(&decoded))
}

#[cfg(test)]
mod tests {
    use flotilla_engine::node::{NoNetwork, Node, NodeOptions};

    use super::*;

    #[test]
    fn a_message_reaches_its_group_only_from_the_peer_it_names() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut options =
            NodeOptions::new(1, dir.path().join("node"), ShardPolicy::default().setup());
        options.initial_voters = vec![1, 2, 3];
        let node = Node::open(options, Arc::new(NoNetwork)).expect("open");
        let groups: BTreeMap<u64, GroupHandle> =
            node.groups().map(|g| (g.id(), g.clone())).collect();
        let heartbeat_from_3 = encode_message(&Message {
            group: 1,
            from: 3,
            to: 1,
            term: 7,
            body: MessageBody::Heartbeat {
                commit: 0,
                round: 1,
            },
        });
        let term = || {
            groups[&1]
                .status()
                .expect("status")
                .blocking_recv()
                .expect("answer")
                .raft
                .term
        };
        // Peer 2's connection carrying a message that claims to be node 3's.
        deliver(&groups, 2, &heartbeat_from_3);
        assert!(term() < 7, "an impostor's message moved the term");
        // The client id 0 may not send Raft messages at all, even in its own name.
        let heartbeat_from_0 = encode_message(&Message {
            group: 1,
            from: 0,
            to: 1,
            term: 7,
            body: MessageBody::Heartbeat {
                commit: 0,
                round: 1,
            },
        });
        deliver(&groups, 0, &heartbeat_from_0);
        assert!(term() < 7, "a client's Raft message moved the term");
        deliver(&groups, 3, &heartbeat_from_3);
        assert_eq!(term(), 7, "node 3's own heartbeat is delivered");
        node.shutdown();
    }
}
