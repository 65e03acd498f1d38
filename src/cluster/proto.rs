//! Requests between clients and members (and from a member to the leader it
//! forwards to): one version byte, then postcard. Encoded and decoded here only.

use flotilla_engine::kv::WriteReply;
use flotilla_engine::node::ReadConsistency;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::scan::ScanPage;

// 3: scans answer in pages (`ScanPage`), clients ask for the next one.
// 4: fault injection answers how many frames the replaced rules dropped.
const PROTO_VERSION: u8 = 4;

/// How fresh a remote read must be (the wire form of [`ReadConsistency`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Consistency {
    Linearizable,
    Lease,
    Stale,
}

impl From<ReadConsistency> for Consistency {
    fn from(c: ReadConsistency) -> Self {
        match c {
            ReadConsistency::Linearizable => Consistency::Linearizable,
            ReadConsistency::Lease => Consistency::Lease,
            ReadConsistency::Stale => Consistency::Stale,
        }
    }
}

impl From<Consistency> for ReadConsistency {
    fn from(c: Consistency) -> Self {
        match c {
            Consistency::Linearizable => ReadConsistency::Linearizable,
            Consistency::Lease => ReadConsistency::Lease,
            Consistency::Stale => ReadConsistency::Stale,
        }
    }
}

/// What a client asks a member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Request {
    /// An encoded `kv::Command`.
    Write {
        #[serde(with = "serde_bytes")]
        command: Vec<u8>,
    },
    /// A user key's value.
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        consistency: Consistency,
    },
    /// Pairs in `start..end` (empty end: unbounded), at most `limit`, in
    /// one page of at most `MAX_SCAN_PAGE_BYTES` (but at least one pair).
    Scan {
        start: Vec<u8>,
        end: Vec<u8>,
        limit: u64,
        consistency: Consistency,
    },
    /// The member's view of its groups.
    Status,
    /// Start a MapReduce job; the member asked becomes its coordinator.
    /// Starting an id that exists again changes nothing (a retried start).
    MrStart(JobRequest),
    /// A job's status line, and its progress (from its coordinator) or
    /// report (once committed).
    MrView { id: String },
    /// A worker on `node` asks the job's coordinator for a task.
    MrPull { id: String, node: u64, worker: u64 },
    /// A worker on `node` tells the coordinator how a task ended:
    /// `lost_maps` empty means completed; else the reduce could not fetch
    /// those maps' runs, each from the node named beside it.
    MrDone {
        id: String,
        task: WireTask,
        node: u64,
        lost_maps: Vec<(u32, u64)>,
        counters: [u64; 4],
    },
    /// Up to 1 MiB of a job file on this member from `offset`: map `map`'s
    /// run for partition `reduce`, or (no map) reduce `reduce`'s output.
    MrFetch {
        id: String,
        map: Option<u32>,
        reduce: u32,
        offset: u64,
    },
    /// Test only (refused unless the member runs with
    /// `FLOTILLA_TEST_FAULTS=1`): replace the fault rules of the member's links.
    InjectFaults {
        drop_ppm: u32,
        delay_ms: u64,
        partition: Vec<Vec<u64>>,
    },
}

/// A job to start over a cluster (the wire form of `MapReduceSpec`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JobRequest {
    pub id: String,
    pub job: String,
    pub arg: String,
    pub input_start: Vec<u8>,
    pub input_end: Vec<u8>,
    pub output: Vec<u8>,
    pub reduce_tasks: u32,
    pub workers: u64,
    pub task_timeout_ms: u64,
    pub split_bytes: u64,
    pub replace: bool,
}

/// A task as workers and the coordinator name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireTask {
    pub reduce: bool,
    pub index: u32,
}

/// What a worker asking for work gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WireAssignment {
    /// Run this task; for a reduce, `sources[m]` is the node holding map
    /// `m`'s runs.
    Run {
        task: WireTask,
        sources: Vec<u64>,
    },
    Wait,
    Done,
}

/// Part of a job file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Chunk {
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
    /// True if the file ends with these bytes.
    pub eof: bool,
}

/// A job as `MrView` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    /// The status record: "running ...", "committed ..." or "failed ...".
    pub status: String,
    /// The node coordinating it (0: unknown).
    pub coordinator: u64,
    /// Maps done, maps, reduces done, reduces, records in, bytes in,
    /// records out, bytes out, task runs, elapsed ms, commit ms, pairs
    /// committed: from the coordinator while it runs, from the stored
    /// report once committed.
    pub counters: Option<[u64; 12]>,
}

impl JobView {
    /// The job's counters as progress, if the view has them.
    pub fn progress(&self) -> Option<flotilla_mapreduce::Progress> {
        let c = self.counters?;
        Some(flotilla_mapreduce::Progress {
            maps_done: c[0],
            maps_total: c[1],
            reduces_done: c[2],
            reduces_total: c[3],
            records_in: c[4],
            bytes_in: c[5],
            records_out: c[6],
            bytes_out: c[7],
        })
    }

    /// The report of a committed job (none before the commit).
    pub fn report(&self) -> Option<flotilla_mapreduce::Report> {
        if !self.status.starts_with("committed") {
            return None;
        }
        let c = self.counters.unwrap_or_default();
        Some(flotilla_mapreduce::Report {
            progress: self.progress().unwrap_or_default(),
            committed_pairs: c[11],
            task_runs: c[8],
            crashed_workers: 0,
            elapsed: std::time::Duration::from_millis(c[9]),
            commit_elapsed: std::time::Duration::from_millis(c[10]),
        })
    }
}

/// One group's state as a member reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteStatus {
    /// The reporting node.
    pub node: u64,
    /// The group.
    pub group: u64,
    /// Follower, PreCandidate, Candidate or Leader.
    pub role: String,
    /// Current term.
    pub term: u64,
    /// Known leader (0: none).
    pub leader: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Log bytes in storage.
    pub log_bytes: u64,
    /// Client sessions the state machine holds.
    pub sessions: u64,
    /// Latest snapshot index.
    pub snapshot_index: u64,
    /// Voters.
    pub voters: Vec<u64>,
}

/// A member's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Response {
    Write(Result<WriteReply, WireError>),
    Get(Result<Option<Vec<u8>>, WireError>),
    Scan(Result<ScanPage, WireError>),
    Status(Result<Vec<RemoteStatus>, WireError>),
    /// The frames the member's old fault rules dropped (version 4).
    Faults(Result<u64, WireError>),
    MrStarted(Result<String, WireError>),
    MrView(Result<JobView, WireError>),
    MrTask(Result<WireAssignment, WireError>),
    MrAck(Result<(), WireError>),
    MrChunk(Result<Chunk, WireError>),
    /// A client's request that the member asked sent on to the leader:
    /// the leader's answer, and who the leader is, so that the client
    /// sends its next requests there itself.
    Forwarded {
        leader: u64,
        response: Box<Response>,
    },
}

impl Response {
    /// The answer itself, and the leader that gave it if a member
    /// forwarded the request there ([`Response::Forwarded`]).
    pub(crate) fn unwrap_forwarded(self) -> (Response, Option<u64>) {
        match self {
            Response::Forwarded { leader, response } => (*response, Some(leader)),
            other => (other, None),
        }
    }
}

/// An [`Error`] on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WireError {
    NotLeader(Option<u64>),
    Timeout(u64),
    Overloaded(String),
    Unavailable(String),
    Storage(String),
    InvalidArgument(String),
    SessionExpired,
    Closed,
    Other(String),
}

impl From<Error> for WireError {
    fn from(e: Error) -> Self {
        match e {
            Error::NotLeader { leader } => WireError::NotLeader(leader),
            Error::Timeout(d) => WireError::Timeout(d.as_millis() as u64),
            Error::Overloaded(s) => WireError::Overloaded(s),
            Error::Unavailable(s) => WireError::Unavailable(s),
            Error::Storage(s) => WireError::Storage(s),
            Error::InvalidArgument(s) => WireError::InvalidArgument(s),
            Error::SessionExpired => WireError::SessionExpired,
            Error::Closed => WireError::Closed,
            other => WireError::Other(other.to_string()),
        }
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        match e {
            WireError::NotLeader(leader) => Error::NotLeader { leader },
            WireError::Timeout(ms) => Error::Timeout(std::time::Duration::from_millis(ms)),
            WireError::Overloaded(s) => Error::Overloaded(s),
            WireError::Unavailable(s) => Error::Unavailable(s),
            WireError::Storage(s) => Error::Storage(s),
            WireError::InvalidArgument(s) => Error::InvalidArgument(s),
            WireError::SessionExpired => Error::SessionExpired,
            WireError::Closed => Error::Closed,
            WireError::Other(s) => Error::Unavailable(s),
        }
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_extend(value, vec![PROTO_VERSION]).unwrap_or_else(|_| vec![PROTO_VERSION])
}

/// Decodes a request or response. What does not decode is refused as
/// `InvalidArgument`, which is not retried: sending the same bytes to the
/// same peer again cannot help (before, a client of another protocol
/// version retried until its timeout and blamed the members).
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, Error> {
    match bytes.split_first() {
        Some((&PROTO_VERSION, body)) => postcard::from_bytes(body)
            .map_err(|e| Error::InvalidArgument(format!("malformed message from a peer: {e}"))),
        Some((v, _)) => Err(Error::InvalidArgument(format!(
            "a peer speaks request protocol {v}, this node {PROTO_VERSION}; upgrade the older one"
        ))),
        None => Err(Error::InvalidArgument(
            "an empty message from a peer".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_version_or_broken_bytes_are_refused_for_good() {
        let request = Request::Get {
            key: b"k".to_vec(),
            consistency: Consistency::Linearizable,
        };
        let mut bytes = encode(&request);
        assert_eq!(decode::<Request>(&bytes).ok(), Some(request));
        bytes[0] = PROTO_VERSION - 1;
        let old = decode::<Request>(&bytes).expect_err("another version");
        assert!(!old.is_retryable(), "{old}");
        assert!(old.to_string().contains("upgrade the older one"), "{old}");
        // The member answers a request it cannot decode with the error,
        // and the client sees the same, still not retryable.
        let answered = Error::from(WireError::from(old));
        assert!(!answered.is_retryable(), "{answered}");
        for broken in [&[][..], &[PROTO_VERSION, 0xff, 0xff, 0xff][..]] {
            let e = decode::<Request>(broken).expect_err("broken bytes");
            assert!(!e.is_retryable(), "{e}");
        }
    }
}
