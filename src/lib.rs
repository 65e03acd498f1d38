//! flotilla: an embedded, Raft-replicated, sharded key/value store with a
//! bundled MapReduce runner.
//!
//! [`Db::open`] gives a durable single-node store on RocksDB: every write
//! goes through the Raft log of the node's group, is fsynced before it is
//! acknowledged ([`Durability::Sync`], the default) and applied exactly once;
//! reopening the same path recovers everything acknowledged.
//!
//! ```
//! use flotilla::{Db, ScanRange};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let db = Db::open(dir.path().join("db")).unwrap();
//! db.put("fruit/apple", "red").unwrap();
//! db.append("fruit/apple", ", green").unwrap();
//! db.put("fruit/kiwi", "brown").unwrap();
//! let fruit = db.scan(&ScanRange::prefix("fruit/"), 10).unwrap();
//! assert_eq!(fruit[0], (b"fruit/apple".to_vec(), b"red, green".to_vec()));
//! assert_eq!(fruit.len(), 2);
//! ```

mod builder;
mod cluster;
mod db;
mod error;
mod limits;
mod mapreduce;
mod scan;

pub use builder::{ClusterTls, DbBuilder, MAX_KEY_BYTES, MAX_VALUE_BYTES};
pub use cluster::async_client::AsyncRemoteClient;
pub use cluster::client::RemoteClient;
pub use cluster::files::{
    init_cluster, init_cluster_with, load_client, load_node, ClientConfig, ClientFiles,
    ClusterInit, NodeConfig,
};
pub use cluster::proto::{JobView, RemoteStatus};
pub use db::{AsyncDb, CasOutcome, Db, Status};
pub use error::{Error, Result};
pub use flotilla_engine::kv::BatchOp;
pub use flotilla_engine::node::{GroupStatus, ReadConsistency};
pub use flotilla_wal::{CompactionPolicy, Durability, MAX_WAL_PREALLOCATION};
pub use mapreduce::{
    Job, JobFactory, JobHandle, MapReduceSpec, Progress, Report, JOB_STATUS_PREFIX,
};
pub use scan::{Pair, ScanRange};

/// The MapReduce runner, its built-in jobs and building blocks.
pub use flotilla_mapreduce as mr;

pub use flotilla_engine as engine;
pub use flotilla_shard as shard;
pub use flotilla_snapshot as snapshot;
pub use flotilla_wal as wal;
