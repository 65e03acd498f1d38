//! `Db::builder`: every setting with its default, validated before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use flotilla_engine::kv::SessionLimits;
use flotilla_engine::node::{NodeOptions, ReadConsistency};
use flotilla_shard::ShardPolicy;
use flotilla_wal::{CompactionPolicy, Durability, MAX_WAL_PREALLOCATION};

use rustls_pki_types::CertificateDer;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::limits::WriteLimits;
use crate::mapreduce::{fixed, Job, JobFactory, JobRegistry};

/// Largest key any setting allows: 64 KiB.
pub const MAX_KEY_BYTES: usize = 64 << 10;
/// Largest value any setting allows, and the largest an append may grow a
/// value to: 2 MiB (a value must fit one 4 MiB frame).
pub const MAX_VALUE_BYTES: usize = flotilla_engine::kv::MAX_VALUE_BYTES;

/// A cluster member's certificate material, DER-encoded (as
/// `flotilla cluster init` writes it).
#[derive(Clone)]
pub struct ClusterTls {
    /// The cluster CA's certificate.
    pub ca_cert: Vec<u8>,
    /// This node's certificate, issued by the CA for its node id.
    pub cert: Vec<u8>,
    /// This node's private key (PKCS#8).
    pub key: Vec<u8>,
}

impl ClusterTls {
    /// Whether this material can serve as node `node`: the certificate is
    /// the node's, under the CA, valid now, and the key is its key.
    pub(crate) fn check(&self, node: u64) -> std::result::Result<(), flotilla_net::NetError> {
        let identity = flotilla_net::Identity {
            certs: vec![CertificateDer::from(self.cert.clone())],
            key: self.key.clone(),
        };
        flotilla_net::tls::check_identity(
            node,
            &identity,
            &CertificateDer::from(self.ca_cert.clone()),
        )
    }
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterTls { .. }")
    }
}

/// Settings of a [`Db`]; finish with [`open`](Self::open).
#[derive(Clone, Debug)]
pub struct DbBuilder {
    pub(crate) path: PathBuf,
    pub(crate) durability: Durability,
    pub(crate) wal_preallocation: u64,
    pub(crate) read_consistency: ReadConsistency,
    pub(crate) request_timeout: Duration,
    pub(crate) max_key_bytes: usize,
    pub(crate) max_value_bytes: usize,
    pub(crate) compaction: CompactionPolicy,
    pub(crate) sessions: SessionLimits,
    pub(crate) inbox_capacity: usize,
    pub(crate) node_id: u64,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) peers: BTreeMap<u64, SocketAddr>,
    pub(crate) tls: Option<ClusterTls>,
    pub(crate) jobs: JobRegistry,
    /// The shard count asked for; `None`: the store's, or the default for
    /// a new store.
    pub(crate) shards: Option<u64>,
}

impl DbBuilder {
    /// Whether the store is a cluster member, serving over QUIC: it has
    /// peers, or a listen address (a one-member cluster has no peers but
    /// still serves its clients).
    pub(crate) fn is_member(&self) -> bool {
        self.listen.is_some() || !self.peers.is_empty()
    }

    /// The key and value limits writes are checked against.
    pub(crate) fn write_limits(&self) -> WriteLimits {
        WriteLimits {
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
        }
    }

    pub(crate) fn new(path: impl Into<PathBuf>) -> Self {
        DbBuilder {
            path: path.into(),
            durability: Durability::Sync,
            wal_preallocation: 0,
            read_consistency: ReadConsistency::Linearizable,
            request_timeout: Duration::from_secs(10),
            max_key_bytes: 4 << 10,
            max_value_bytes: 1 << 20,
            compaction: CompactionPolicy::default(),
            sessions: SessionLimits::default(),
            inbox_capacity: 16_384,
            node_id: 1,
            listen: None,
            peers: BTreeMap::new(),
            tls: None,
            jobs: JobRegistry::default(),
            shards: None,
        }
    }

    /// Registers a MapReduce job under `name` (every member of a cluster
    /// runs the same binary and registers the same jobs). The built-ins
    /// `wc`, `index`, `grep` and `sort` are always there; a name given
    /// again replaces the earlier job.
    pub fn job(mut self, name: impl Into<String>, job: impl Job + 'static) -> Self {
        self.jobs.0.insert(name.into(), fixed(job));
        self
    }

    /// Registers a MapReduce job built from the argument it is run with.
    pub fn job_factory(mut self, name: impl Into<String>, factory: JobFactory) -> Self {
        self.jobs.0.insert(name.into(), factory);
        self
    }

    /// How many shards keys hash to: fixed when the store is created
    /// (default 64), any count from 1 to 4,096, and the
    /// same on every member of a cluster. Opening an existing store with
    /// another count is an [`Error::Config`]; without this setting a store
    /// opens with the count it was created with (16 for a store created
    /// before counts were stored).
    pub fn shards(mut self, count: u64) -> Self {
        self.shards = Some(count);
        self
    }

    /// This node's id in its cluster (1 or more). Default 1.
    pub fn node_id(mut self, id: u64) -> Self {
        self.node_id = id;
        self
    }

    /// The UDP address this member listens on for QUIC. Required with peers;
    /// without peers it makes a one-member cluster that serves remote
    /// clients (TLS material is then required too). Default: none, an
    /// embedded store with no network.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Adds another member of the cluster. With no peers (the default) the
    /// store is a single node with no network.
    pub fn peer(mut self, id: u64, addr: SocketAddr) -> Self {
        self.peers.insert(id, addr);
        self
    }

    /// Certificates for mutual TLS with the other members. Required with peers.
    pub fn tls(mut self, tls: ClusterTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How durable an acknowledged write is. Default [`Durability::Sync`]:
    /// fsynced before it is acknowledged.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Bytes of WAL file written when the store opens, so that the first
    /// writes after it overwrite a file rather than append to one: an
    /// fsync after an overwrite need not commit a new file size through
    /// the file system's journal, which makes synced writes cheaper. Costs
    /// one sequential write of this size at every open (64 MiB took about
    /// 0.1 s on our test VM); worth it for a long-running store, not for a
    /// short-lived one. Default 0; at most [`MAX_WAL_PREALLOCATION`]
    /// (1 GiB); ignored under [`Durability::None`]. Later WAL files are
    /// reused either way once their contents are flushed.
    pub fn wal_preallocation(mut self, bytes: u64) -> Self {
        self.wal_preallocation = bytes;
        self
    }

    /// Consistency of `get` and `scan`. Default [`ReadConsistency::Linearizable`].
    pub fn read_consistency(mut self, consistency: ReadConsistency) -> Self {
        self.read_consistency = consistency;
        self
    }

    /// How long a request waits for its answer before [`Error::Timeout`].
    /// Default 10 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Largest key accepted. Default 4 KiB, at most [`MAX_KEY_BYTES`].
    pub fn max_key_bytes(mut self, bytes: usize) -> Self {
        self.max_key_bytes = bytes;
        self
    }

    /// Largest value accepted. Default 1 MiB, at most [`MAX_VALUE_BYTES`].
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// When to snapshot and compact the Raft log. Default 64 MiB or 100,000 entries.
    pub fn compaction(mut self, policy: CompactionPolicy) -> Self {
        self.compaction = policy;
        self
    }

    /// Most client sessions kept for exactly-once retries. Default 10,000.
    /// Every member of a cluster must use the same value: it decides which
    /// sessions the state machine evicts, and replicas must agree on that.
    pub fn max_sessions(mut self, sessions: usize) -> Self {
        self.sessions.max_sessions = sessions;
        self
    }

    /// Requests queued per group before new ones get [`Error::Overloaded`].
    /// Default 16,384.
    pub fn max_queued_requests(mut self, requests: usize) -> Self {
        self.inbox_capacity = requests;
        self
    }

    fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::Config(why));
        if self.path.as_os_str().is_empty() {
            return bad("the database path is empty".into());
        }
        if let Durability::Buffered { max_delay } = self.durability {
            if max_delay.is_zero() {
                return bad("Durability::Buffered needs a max_delay above zero; use Durability::Sync for immediate syncs".into());
            }
        }
        if self.wal_preallocation > MAX_WAL_PREALLOCATION {
            return bad(format!(
                "wal_preallocation is {} bytes; it must be at most {MAX_WAL_PREALLOCATION}",
                self.wal_preallocation
            ));
        }
        if self.request_timeout.is_zero() {
            return bad("request_timeout must be above zero".into());
        }
        if self.max_key_bytes == 0 || self.max_key_bytes > MAX_KEY_BYTES {
            return bad(format!(
                "max_key_bytes is {}; it must be 1 to {MAX_KEY_BYTES}",
                self.max_key_bytes
            ));
        }
        if self.max_value_bytes > MAX_VALUE_BYTES {
            return bad(format!(
                "max_value_bytes is {}; it must be at most {MAX_VALUE_BYTES}",
                self.max_value_bytes
            ));
        }
        if self.sessions.max_sessions == 0 {
            return bad("max_sessions must be at least 1".into());
        }
        if self.inbox_capacity == 0 {
            return bad("max_queued_requests must be at least 1".into());
        }
        if self.node_id == 0 {
            return bad("node_id 0 is reserved for clients; use 1 or more".into());
        }
        if self.is_member() {
            if self.listen.is_none() {
                return bad("a cluster member needs a listen address".into());
            }
            let Some(tls) = &self.tls else {
                return bad("a cluster member needs TLS material (CA certificate, node certificate and key)".into());
            };
            tls.check(self.node_id).map_err(|e| {
                Error::Config(format!(
                    "the TLS material cannot serve as node {}: {e}",
                    self.node_id
                ))
            })?;
            if self.peers.contains_key(&self.node_id) || self.peers.contains_key(&0) {
                return bad(format!(
                    "peer ids must be above 0 and differ from this node's id {}",
                    self.node_id
                ));
            }
        }
        if let Some(count) = self.shards {
            ShardPolicy::new(count).map_err(|e| Error::Config(e.to_string()))?;
        }
        if self.compaction.max_log_entries == 0 || self.compaction.max_raft_state_bytes == 0 {
            return bad("the compaction thresholds must be above zero".into());
        }
        Ok(())
    }

    /// Validates every setting, then opens (or creates) the store and
    /// recovers everything it holds.
    pub fn open(self) -> Result<Db> {
        self.validate()?;
        let policy = match self.shards {
            Some(count) => ShardPolicy::new(count).map_err(|e| Error::Config(e.to_string()))?,
            None => ShardPolicy::default(),
        };
        let mut node = NodeOptions::new(self.node_id, self.path.clone(), policy.setup());
        node.initial_voters = std::iter::once(self.node_id)
            .chain(self.peers.keys().copied())
            .collect();
        node.durability = self.durability;
        node.wal_preallocation = self.wal_preallocation;
        node.compaction = self.compaction;
        node.sessions = self.sessions;
        node.inbox_capacity = self.inbox_capacity;
        Db::start(self, node)
    }
}
