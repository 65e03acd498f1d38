//! The blocking client of a running cluster (what the `flotilla` commands
//! use with `--cluster D`): [`AsyncRemoteClient`] on a runtime of its own.

use std::path::Path;
use std::time::Duration;

use crate::cluster::async_client::AsyncRemoteClient;
use crate::cluster::proto::{JobView, RemoteStatus};
use crate::db::CasOutcome;
use crate::error::{Error, Result};
use crate::mapreduce::MapReduceSpec;
use crate::scan::Pair;
use crate::ReadConsistency;

/// A connection to a cluster; each call blocks the calling thread. In async
/// code use [`AsyncRemoteClient`].
pub struct RemoteClient {
    runtime: tokio::runtime::Runtime,
    inner: AsyncRemoteClient,
}

impl RemoteClient {
    /// Reads the cluster directory `dir` (as `flotilla cluster init` wrote it).
    pub fn open(dir: &Path, timeout: Duration) -> Result<RemoteClient> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| Error::Config(format!("cannot start the async runtime: {e}")))?;
        let inner = runtime.block_on(AsyncRemoteClient::open(dir, timeout))?;
        Ok(RemoteClient { runtime, inner })
    }

    /// Starts a MapReduce job; see [`AsyncRemoteClient::mapreduce`].
    pub fn mapreduce(&self, id: &str, spec: &MapReduceSpec) -> Result<String> {
        self.runtime.block_on(self.inner.mapreduce(id, spec))
    }

    /// Job `id`'s status line and counters.
    pub fn job(&self, id: &str) -> Result<JobView> {
        self.runtime.block_on(self.inner.job(id))
    }

    /// The member this client sends its next request to first (see
    /// [`AsyncRemoteClient::leader_hint`]).
    pub fn leader_hint(&self) -> Option<u64> {
        self.inner.leader_hint()
    }

    /// Sets `key` to `value`.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.runtime.block_on(self.inner.put(key, value))
    }

    /// Appends `value` to `key`'s value.
    pub fn append(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.runtime.block_on(self.inner.append(key, value))
    }

    /// Removes `key`; true if it existed.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        self.runtime.block_on(self.inner.delete(key))
    }

    /// Compare-and-swap, as [`crate::Db::compare_and_swap`].
    pub fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<CasOutcome> {
        self.runtime
            .block_on(self.inner.compare_and_swap(key, expected, new))
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8], consistency: ReadConsistency) -> Result<Option<Vec<u8>>> {
        self.runtime.block_on(self.inner.get(key, consistency))
    }

    /// Up to `limit` pairs in `start..end` (empty end: unbounded).
    pub fn scan(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
        consistency: ReadConsistency,
    ) -> Result<Vec<Pair>> {
        self.runtime
            .block_on(self.inner.scan(start, end, limit, consistency))
    }

    /// Test only: replaces member `node`'s fault rules (drop share in
    /// millionths, delivery delay, partition sides) and returns how many
    /// frames the rules it replaced dropped, so a test can tell its faults
    /// took effect. The member must run with `FLOTILLA_TEST_FAULTS=1`.
    pub fn inject_faults(
        &self,
        node: u64,
        drop_ppm: u32,
        delay: Duration,
        partition: Vec<Vec<u64>>,
    ) -> Result<u64> {
        self.runtime
            .block_on(self.inner.inject_faults(node, drop_ppm, delay, partition))
    }

    /// Sends a request to one member only, with no retry (tests use it to
    /// talk to a member on the minority side of a partition).
    pub fn get_from(&self, node: u64, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.runtime.block_on(self.inner.get_from(node, key))
    }

    /// Every member's status; a member that does not answer is reported as
    /// an error beside its id.
    pub fn status(&self) -> Vec<(u64, Result<Vec<RemoteStatus>>)> {
        self.runtime.block_on(self.inner.status())
    }
}
