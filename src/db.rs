//! `Db`: the embedded store, with a blocking API ([`Db`]) and an async one
//! ([`AsyncDb`]) over the same node.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_engine::kv::{self, BatchOp, Command, ShardOf, WriteOp, WriteReply};
use flotilla_engine::node::{
    GroupHandle, GroupStatus, NoNetwork, Node, NodeError, NodeOptions, Pending, ReadConsistency,
    Transport,
};
use flotilla_net::{
    Deliver, FrameKind, Identity, Mesh, Node as NetNode, Serve, DEFAULT_QUEUE_FRAMES,
};
use flotilla_shard::ShardPolicy;
use rustls_pki_types::CertificateDer;
use tracing::{debug_span, Instrument};

use crate::builder::DbBuilder;
use crate::cluster::member::{deliver as member_deliver, Member, MeshTransport};
use crate::cluster::proto::{self, Request, Response, WireError};
use crate::cluster::sessions::{write_outcome, SessionPool};
use crate::error::{Error, Result};
use crate::limits::WriteLimits;
use crate::scan::{scan_group, scan_pages, Pair, ScanRange};

/// Worker threads of a cluster member's runtime (QUIC and the group loops).
/// One: every hop between QUIC and a loop then stays on one thread, where a
/// second worker cost a cross-thread wake-up on most hops (measured against
/// two side by side: 1-client put p50 0.81–0.85 ms against 0.87–1.0, and
/// 8–15% more puts and linearizable gets per second at 64 clients).
const MEMBER_WORKERS: usize = 1;

/// The outcome of a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasOutcome {
    /// True if the value matched and was replaced.
    pub swapped: bool,
    /// The key's value after the operation.
    pub current: Option<Vec<u8>>,
}

/// What `Db::status` reports.
#[derive(Clone, Debug)]
pub struct Status {
    /// Where the store lives.
    pub path: PathBuf,
    /// One entry per Raft group this node hosts.
    pub groups: Vec<GroupStatus>,
}

/// How long closing a `Db` waits for its runtime's tasks to be dropped.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

struct Inner {
    node: Mutex<Option<Node>>,
    group: GroupHandle,
    /// The store's shard policy (its count fixed when it was created).
    shards: ShardPolicy,
    settings: DbBuilder,
    /// Set for a cluster member: requests go through it (and the leader).
    member: Option<Arc<Member>>,
    mesh: Arc<OnceLock<Mesh>>,
    /// Client sessions for exactly-once retries.
    sessions: SessionPool,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(mesh) = self.mesh.get() {
            mesh.close();
        }
        if let Ok(mut node) = self.node.lock() {
            if let Some(node) = node.take() {
                node.shutdown();
            }
        }
        if let Some(runtime) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                // Dropping a runtime may not block inside another runtime.
                runtime.shutdown_background();
            } else {
                // Wait for the workers to drop their tasks: those hold the
                // store, and a process that exits while RocksDB is still
                // open under a worker aborts ("pthread lock: Invalid
                // argument") when its statics are torn down.
                runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
            }
        }
    }
}

/// An open flotilla store. The methods block the calling thread; for async
/// code use [`Db::asynchronous`]. Cheap to clone; the store closes when the
/// last clone is dropped or [`close`](Db::close)d.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let db = flotilla::Db::open(dir.path().join("db")).unwrap();
/// db.put("greeting", "hello").unwrap();
/// assert_eq!(db.get("greeting").unwrap(), Some(b"hello".to_vec()));
/// db.close().unwrap();
/// ```
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

/// A [`Db`] that does not keep the store open (for the store's own
/// background threads).
#[derive(Clone)]
pub(crate) struct WeakDb(std::sync::Weak<Inner>);

impl WeakDb {
    /// The store, unless every [`Db`] is gone.
    pub(crate) fn upgrade(&self) -> Option<Db> {
        self.0.upgrade().map(|inner| Db { inner })
    }
}

/// The async API of a [`Db`]. Cheap to clone. Its futures need a tokio
/// runtime with time enabled.
#[derive(Clone)]
pub struct AsyncDb {
    inner: Arc<Inner>,
}

impl Db {
    /// Opens (or creates) a single-node store at `path` with every default:
    /// no network, [`flotilla_wal::Durability::Sync`], linearizable reads.
    pub fn open(path: impl Into<PathBuf>) -> Result<Db> {
        Db::builder(path).open()
    }

    /// Settings for a store at `path`; finish with [`DbBuilder::open`].
    pub fn builder(path: impl Into<PathBuf>) -> DbBuilder {
        DbBuilder::new(path)
    }

    pub(crate) fn start(settings: DbBuilder, mut options: NodeOptions) -> Result<Db> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(if settings.is_member() {
                MEMBER_WORKERS
            } else {
                1
            })
            .thread_name("flotilla-runtime")
            .enable_all()
            .build()
            .map_err(|e| Error::Config(format!("cannot start the async runtime: {e}")))?;
        if settings.is_member() {
            // The group loops share the runtime that drives QUIC: a message
            // then reaches the core without a thread hand-off.
            options.runtime = Some(runtime.handle().clone());
        }
        let mesh = Arc::new(OnceLock::new());
        let transport: Arc<dyn Transport> = if settings.is_member() {
            Arc::new(MeshTransport { mesh: mesh.clone() })
        } else {
            Arc::new(NoNetwork)
        };
        let node = Node::open(options, transport).map_err(|e| match e {
            NodeError::Storage(why) => {
                Error::Storage(format!("{}: {why}", settings.path.display()))
            }
            other => Error::from(other),
        })?;
        let shards = ShardPolicy::new(u64::from(node.shards().count()))
            .map_err(|e| Error::Storage(format!("{}: {e}", settings.path.display())))?;
        if let Some(asked) = settings.shards.filter(|&n| n != u64::from(shards.count())) {
            node.shutdown();
            return Err(Error::Config(format!(
                "{} holds a store of {} shards, opened with {asked}: the shard count is fixed \
                 when a store is created (leave it out to open the store with its own)",
                settings.path.display(),
                shards.count()
            )));
        }
        let group = node
            .groups()
            .next()
            .cloned()
            .ok_or_else(|| Error::Config("the node hosts no group".into()))?;
        let member = if !settings.is_member() {
            None
        } else {
            let groups: BTreeMap<u64, GroupHandle> =
                node.groups().map(|g| (g.id(), g.clone())).collect();
            let member = Arc::new(Member::new(
                settings.node_id,
                group.clone(),
                mesh.clone(),
                settings.peers.clone(),
                settings.request_timeout,
                settings.write_limits(),
                shards,
            ));
            let _entered = runtime.enter();
            let started = start_mesh(&settings, groups, member.clone())?;
            let _ = mesh.set(started);
            Some(member)
        };
        let db = Db {
            inner: Arc::new(Inner {
                node: Mutex::new(Some(node)),
                group,
                shards,
                settings,
                member,
                mesh,
                sessions: SessionPool::default(),
                runtime: Some(runtime),
            }),
        };
        match &db.inner.member {
            None => db.block(db.asynchronous().wait_for_leader())?,
            Some(member) => {
                let jobs =
                    crate::mapreduce::cluster::ClusterJobs::start(&db, db.inner.settings.node_id);
                let _ = member.jobs.set(jobs);
            }
        }
        Ok(db)
    }

    /// The async API over the same store.
    pub fn asynchronous(&self) -> AsyncDb {
        AsyncDb {
            inner: self.inner.clone(),
        }
    }

    pub(crate) fn downgrade(&self) -> WeakDb {
        WeakDb(Arc::downgrade(&self.inner))
    }

    /// True once [`close`](Db::close)d.
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.node.lock().map(|n| n.is_none()).unwrap_or(true)
    }

    /// The member serving requests, for a cluster member.
    pub(crate) fn member(&self) -> Option<&Arc<Member>> {
        self.inner.member.as_ref()
    }

    /// The MapReduce side of a cluster member.
    pub(crate) fn cluster_jobs(&self) -> Option<Arc<crate::mapreduce::cluster::ClusterJobs>> {
        self.inner.member.as_ref()?.jobs.get().cloned()
    }

    /// This node's applied index of its group.
    pub(crate) fn applied_index(&self) -> Result<u64> {
        Ok(self
            .status()?
            .groups
            .iter()
            .map(|g| g.applied_index)
            .min()
            .unwrap_or(0))
    }

    /// Waits until this node has applied `index`, up to `timeout`.
    pub(crate) fn wait_applied(&self, index: u64, timeout: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.applied_index()? >= index {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::Timeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub(crate) fn block<T>(&self, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match &self.inner.runtime {
            Some(runtime) => runtime.block_on(work),
            None => Err(Error::Closed),
        }
    }

    /// Sets `key` to `value`.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.block(self.asynchronous().put(key, value))
    }

    /// Puts every pair, in atomic batches as large as one value
    /// (`max_value_bytes`), all in flight at once so the log writes them
    /// with shared fsyncs. Not atomic as a whole: the first error is
    /// returned once every batch has ended.
    pub fn put_all(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        let max = self.inner.settings.max_value_bytes;
        let mut batches: Vec<Vec<BatchOp>> = Vec::new();
        let mut bytes = 0usize;
        for (key, value) in pairs {
            let size = key.len() + value.len();
            if batches.is_empty() || bytes + size > max {
                batches.push(Vec::new());
                bytes = 0;
            }
            bytes += size;
            if let Some(batch) = batches.last_mut() {
                batch.push(BatchOp::Put { key, value });
            }
        }
        let db = self.asynchronous();
        self.block(async move {
            let mut writes = tokio::task::JoinSet::new();
            for ops in batches {
                let db = db.clone();
                writes.spawn(async move { db.write_batch(ops).await });
            }
            let mut first_error = None;
            while let Some(done) = writes.join_next().await {
                let outcome = done.unwrap_or_else(|e| Err(Error::Storage(e.to_string())));
                if let Err(e) = outcome {
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    }

    /// The applied data of the store's group (streaming reads for jobs).
    /// The store's shard policy.
    pub(crate) fn shards(&self) -> ShardPolicy {
        self.inner.shards
    }

    pub(crate) fn group_data(&self) -> &flotilla_snapshot::GroupData {
        self.inner.group.data()
    }

    /// True for a member of a cluster.
    pub(crate) fn is_cluster_member(&self) -> bool {
        self.inner.member.is_some()
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &std::path::Path {
        &self.inner.settings.path
    }

    /// The registered job `name`, built with its argument `arg`.
    pub(crate) fn build_job(
        &self,
        name: &str,
        arg: &str,
    ) -> Result<Arc<dyn crate::mapreduce::Job>> {
        let jobs = &self.inner.settings.jobs.0;
        let factory = jobs.get(name).ok_or_else(|| {
            let known: Vec<&str> = jobs.keys().map(String::as_str).collect();
            Error::InvalidArgument(format!(
                "no job named {name:?} on this node (known: {})",
                known.join(", ")
            ))
        })?;
        factory(arg).map_err(Error::InvalidArgument)
    }

    /// Applies `ops` together, atomically; see [`AsyncDb::write_batch`].
    pub fn write_batch(&self, ops: Vec<BatchOp>) -> Result<()> {
        self.block(self.asynchronous().write_batch(ops))
    }

    /// Appends `value` to `key`'s value (an absent key counts as empty).
    pub fn append(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.block(self.asynchronous().append(key, value))
    }

    /// Removes `key`; true if it existed.
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        self.block(self.asynchronous().delete(key))
    }

    /// Sets `key` to `new` (removes it for `None`) if its value is
    /// `expected` (`None`: absent).
    pub fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<CasOutcome> {
        self.block(self.asynchronous().compare_and_swap(key, expected, new))
    }

    /// The value of `key`, read at the configured consistency.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.block(self.asynchronous().get(key))
    }

    /// The value of `key`, read at `consistency`.
    pub fn get_with(
        &self,
        key: impl AsRef<[u8]>,
        consistency: ReadConsistency,
    ) -> Result<Option<Vec<u8>>> {
        self.block(self.asynchronous().get_with(key, consistency))
    }

    /// Up to `limit` pairs of `range` in key order, at the configured consistency.
    pub fn scan(&self, range: &ScanRange, limit: usize) -> Result<Vec<Pair>> {
        self.block(self.asynchronous().scan(range, limit))
    }

    /// Per group: role, term, leader, commit and applied index, log size...
    pub fn status(&self) -> Result<Status> {
        self.block(self.asynchronous().status())
    }

    /// Stops the node, syncing everything acknowledged, and closes the
    /// store. Other clones of this `Db` get [`Error::Closed`] afterwards.
    pub fn close(self) -> Result<()> {
        let node = self
            .inner
            .node
            .lock()
            .map_err(|_| Error::Storage("the node lock is poisoned".into()))?
            .take();
        if let Some(mesh) = self.inner.mesh.get() {
            mesh.close();
        }
        if let Some(node) = node {
            node.shutdown();
        }
        Ok(())
    }
}

/// Binds the member's endpoint and starts its links and request service.
fn start_mesh(
    settings: &DbBuilder,
    groups: BTreeMap<u64, GroupHandle>,
    member: Arc<Member>,
) -> Result<Mesh> {
    let (Some(listen), Some(tls)) = (settings.listen, settings.tls.as_ref()) else {
        return Err(Error::Config(
            "a cluster member needs listen and tls".into(),
        ));
    };
    let identity = Identity {
        certs: vec![CertificateDer::from(tls.cert.clone())],
        key: tls.key.clone(),
    };
    let ca = CertificateDer::from(tls.ca_cert.clone());
    let endpoint = NetNode::bind(settings.node_id, listen, &identity, &ca)
        .map_err(|e| Error::Config(format!("cannot listen on {listen}: {e}")))?;
    let deliver: Deliver = Arc::new(move |peer, kind, payload| match kind {
        FrameKind::Raft | FrameKind::Snapshot => member_deliver(&groups, peer, &payload),
        _ => {}
    });
    let serve: Serve = Arc::new(move |peer, payload| {
        let member = member.clone();
        Box::pin(async move {
            let response = match proto::decode::<Request>(&payload) {
                Ok(request) if peer == 0 => member.serve_client(request).await,
                Ok(request) => member.execute(request, false).await,
                Err(e) => Response::Write(Err(WireError::from(e))),
            };
            proto::encode(&response)
        })
    });
    Ok(Mesh::start(
        endpoint,
        &settings.peers,
        DEFAULT_QUEUE_FRAMES,
        deliver,
        serve,
    ))
}

/// One try of a request: finished, or refused in a way worth retrying.
enum Attempt<T> {
    Done(Result<T>),
    Again(Error),
}

impl<T> From<Result<T>> for Attempt<T> {
    fn from(result: Result<T>) -> Self {
        match result {
            Err(e) if e.is_retryable() => Attempt::Again(e),
            other => Attempt::Done(other),
        }
    }
}

fn unexpected(response: Response) -> WireError {
    WireError::Other(format!("unexpected response: {response:?}"))
}

/// Wall-clock milliseconds: the clock session expiry runs on.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl AsyncDb {
    fn limits(&self) -> WriteLimits {
        self.inner.settings.write_limits()
    }

    /// Runs `attempt` until it is done or the request timeout passes,
    /// sleeping between retryable failures (`first_backoff`, doubling up to
    /// 100 ms). The one retry policy of both the local and the cluster path.
    async fn retry<T, Fut>(&self, first_backoff: Duration, attempt: impl Fn() -> Fut) -> Result<T>
    where
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let timeout = self.inner.settings.request_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut backoff = first_backoff;
        loop {
            match tokio::time::timeout_at(deadline, attempt()).await {
                Err(_) => return Err(Error::Timeout(timeout)),
                Ok(Attempt::Done(result)) => return result,
                Ok(Attempt::Again(e)) if tokio::time::Instant::now() + backoff < deadline => {
                    tracing::debug!("retrying after: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(100));
                }
                Ok(Attempt::Again(e)) => return Err(e),
            }
        }
    }

    /// Sends a request made by `send` and waits for its answer, sending it
    /// again after a retryable refusal (no leader yet, leader not ready,
    /// overloaded) until the request timeout. Only refusals are retried: on
    /// a single node a write is refused before it is proposed, never after.
    async fn request<T>(
        &self,
        send: impl Fn() -> std::result::Result<Pending<T>, NodeError>,
    ) -> Result<T> {
        self.retry(Duration::from_millis(1), || {
            let pending = send();
            async move {
                let pending = match pending {
                    Ok(pending) => pending,
                    // Not queued (full inbox, closed): answered at once.
                    Err(e) => return Attempt::Done(Err(Error::from(e))),
                };
                match pending.await {
                    Err(_) => Attempt::Done(Err(Error::Closed)),
                    Ok(answer) => Attempt::from(answer.map_err(Error::from)),
                }
            }
        })
        .await
    }

    async fn write(&self, op: WriteOp) -> Result<WriteReply> {
        self.limits().check(&op)?;
        let reply = match &self.inner.member {
            None => {
                let command = Command {
                    // The single-node store never retries a write, so it needs no session.
                    client: 0,
                    seq: 0,
                    now_ms: now_ms(),
                    op,
                };
                let span = debug_span!("write", group = self.inner.group.id());
                self.request(|| self.inner.group.write(kv::command::encode(&command)))
                    .instrument(span)
                    .await?
            }
            Some(member) => {
                self.inner
                    .sessions
                    .write(op, |client, seq, op| {
                        self.send_write(member, client, seq, op)
                    })
                    .await?
            }
        };
        write_outcome(reply)
    }

    /// Sends one write of session `client` with number `seq` through the
    /// member, retrying as `call` does.
    async fn send_write(
        &self,
        member: &Member,
        client: u64,
        seq: u64,
        op: WriteOp,
    ) -> Result<WriteReply> {
        let command = kv::command::encode(&Command {
            client,
            seq,
            now_ms: now_ms(),
            op,
        });
        self.call(member, Request::Write { command }, |r| match r {
            Response::Write(r) => r,
            other => Err(unexpected(other)),
        })
        .instrument(debug_span!("write", client, seq))
        .await
        // Retried until the timeout: an attempt may sit in a leader's log
        // (one that stepped down answers NotLeader for it), so the write
        // may still be applied, whatever the last refusal said.
        .map_err(|e| {
            if e.is_retryable() {
                Error::Timeout(self.inner.settings.request_timeout)
            } else {
                e
            }
        })
    }

    /// Sends `request` through the member (which forwards it to the leader),
    /// again after each retryable error, with the same session sequence
    /// number for a write, until the request timeout.
    async fn call<T>(
        &self,
        member: &Member,
        request: Request,
        pick: fn(Response) -> std::result::Result<T, WireError>,
    ) -> Result<T> {
        self.retry(Duration::from_millis(2), || {
            let response = member.execute(request.clone(), true);
            async move { Attempt::from(pick(response.await).map_err(Error::from)) }
        })
        .await
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.write(WriteOp::Put {
            key: key.as_ref().to_vec(),
            value: value.as_ref().to_vec(),
        })
        .await
        .map(|_| ())
    }

    /// Applies `ops` together, atomically: one log entry, all or nothing.
    /// Later operations on a key win. The keys and values together may be
    /// as large as one value (`max_value_bytes`).
    pub async fn write_batch(&self, ops: Vec<BatchOp>) -> Result<()> {
        self.write(WriteOp::Batch { ops }).await.map(|_| ())
    }

    /// Appends `value` to `key`'s value (an absent key counts as empty).
    pub async fn append(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.write(WriteOp::Append {
            key: key.as_ref().to_vec(),
            value: value.as_ref().to_vec(),
        })
        .await
        .map(|_| ())
    }

    /// Removes `key`; true if it existed.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        let reply = self
            .write(WriteOp::Delete {
                key: key.as_ref().to_vec(),
            })
            .await?;
        Ok(matches!(reply, WriteReply::Deleted { existed: true }))
    }

    /// Sets `key` to `new` (removes it for `None`) if its value is
    /// `expected` (`None`: absent).
    pub async fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<CasOutcome> {
        let reply = self
            .write(WriteOp::CompareAndSwap {
                key: key.as_ref().to_vec(),
                expected: expected.map(<[u8]>::to_vec),
                new: new.map(<[u8]>::to_vec),
            })
            .await?;
        match reply {
            WriteReply::Swapped { swapped, current } => Ok(CasOutcome { swapped, current }),
            other => Err(Error::Storage(format!(
                "compare-and-swap got an unexpected reply: {other:?}"
            ))),
        }
    }

    /// The value of `key`, read at the configured consistency.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.get_with(key, self.inner.settings.read_consistency)
            .await
    }

    /// The value of `key`, read at `consistency`.
    pub async fn get_with(
        &self,
        key: impl AsRef<[u8]>,
        consistency: ReadConsistency,
    ) -> Result<Option<Vec<u8>>> {
        let key = key.as_ref();
        self.limits().check_key(key)?;
        if let Some(member) = &self.inner.member {
            let request = Request::Get {
                key: key.to_vec(),
                consistency: consistency.into(),
            };
            return self
                .call(member, request, |r| match r {
                    Response::Get(r) => r,
                    other => Err(unexpected(other)),
                })
                .await;
        }
        let inner_key = self.inner.shards.inner_key(key);
        if consistency == ReadConsistency::Stale {
            return self
                .inner
                .group
                .data()
                .get(&inner_key)
                .map_err(|e| Error::Storage(e.to_string()));
        }
        let span = debug_span!("get", group = self.inner.group.id());
        self.request(|| self.inner.group.read(consistency, Some(inner_key.clone())))
            .instrument(span)
            .await
    }

    /// Up to `limit` pairs of `range` in key order, at the configured consistency.
    pub async fn scan(&self, range: &ScanRange, limit: usize) -> Result<Vec<Pair>> {
        self.scan_with(range, limit, self.inner.settings.read_consistency)
            .await
    }

    /// Up to `limit` pairs of `range` in key order, at `consistency`.
    pub async fn scan_with(
        &self,
        range: &ScanRange,
        limit: usize,
        consistency: ReadConsistency,
    ) -> Result<Vec<Pair>> {
        if let Some(member) = &self.inner.member {
            let (start, end) = range.bounds()?;
            return scan_pages(start, limit, |start, limit| {
                let request = Request::Scan {
                    start,
                    end: end.clone(),
                    limit: limit as u64,
                    consistency: consistency.into(),
                };
                self.call(member, request, |r| match r {
                    Response::Scan(r) => r,
                    other => Err(unexpected(other)),
                })
            })
            .await;
        }
        if consistency != ReadConsistency::Stale {
            self.request(|| self.inner.group.read(consistency, None))
                .await?;
        }
        let group = self.inner.group.clone();
        let shards = self.inner.shards;
        let range = range.clone();
        // A long scan must not hold up a tokio worker.
        // One page: nothing travels, so no byte budget.
        tokio::task::spawn_blocking(move || scan_group(&group, shards, &range, limit, usize::MAX))
            .await
            .map_err(|e| Error::Storage(format!("scan task failed: {e}")))?
            .map(|page| page.pairs)
    }

    /// Waits (up to the request timeout) until the group has elected a
    /// leader, so the first request after `open` is not refused.
    async fn wait_for_leader(&self) -> Result<()> {
        let timeout = self.inner.settings.request_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.status().await?;
            if status.groups.iter().all(|g| g.raft.leader != 0) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "no leader elected within {timeout:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Per group: role, term, leader, commit and applied index, log size...
    pub async fn status(&self) -> Result<Status> {
        let group = &self.inner.group;
        let rx = group.status().map_err(Error::from)?;
        let timeout = self.inner.settings.request_timeout;
        let status = tokio::time::timeout(timeout, rx)
            .await
            .map_err(|_| Error::Timeout(timeout))?
            .map_err(|_| Error::Closed)?;
        Ok(Status {
            path: self.inner.settings.path.clone(),
            groups: vec![status],
        })
    }
}
