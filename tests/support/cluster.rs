//! A cluster of `flotilla serve` processes on loopback, one test's worth.

// Each test binary uses a different part.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flotilla::RemoteClient;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

/// Clusters run one at a time: several 3- and 5-process clusters at once
/// on a 2-core machine would turn into a test of the scheduler.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

pub(crate) struct Cluster {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) nodes: u64,
    pub(crate) procs: BTreeMap<u64, Child>,
    /// Processes started per node (its log holds one "opening" line each).
    pub(crate) starts: BTreeMap<u64, usize>,
    pub(crate) _turn: std::sync::MutexGuard<'static, ()>,
}

pub(crate) fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Cluster {
    pub(crate) fn start(nodes: u64) -> Cluster {
        Cluster::start_configured(nodes, "")
    }

    /// Starts a cluster whose members' config files begin with `settings`
    /// (top-level TOML keys, such as `max_sessions = 1`).
    pub(crate) fn start_configured(nodes: u64, settings: &str) -> Cluster {
        let turn = take_turn();
        let dir = tempfile::tempdir().expect("temp dir");
        let init = Command::new(BIN)
            .args(["cluster", "init", "--nodes", &nodes.to_string(), "--dir"])
            .arg(dir.path())
            .output()
            .expect("cluster init");
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
        for id in 1..=nodes {
            let file = dir.path().join(format!("node{id}.toml"));
            let text = std::fs::read_to_string(&file).expect("node config");
            std::fs::write(&file, format!("{settings}{text}")).expect("node config");
        }
        let mut cluster = Cluster {
            dir,
            nodes,
            procs: BTreeMap::new(),
            starts: BTreeMap::new(),
            _turn: turn,
        };
        for id in 1..=nodes {
            cluster.restart(id);
        }
        cluster
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn restart(&mut self, id: u64) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join(format!("node{id}.log")))
            .expect("log file");
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(self.path().join(format!("node{id}.toml")))
            // Lets tests change the member's link faults over the wire.
            .env("FLOTILLA_TEST_FAULTS", "1")
            // MapReduce coordination (start, takeover, end) is logged at info.
            .env("FLOTILLA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn serve");
        self.procs.insert(id, child);
        *self.starts.entry(id).or_default() += 1;
    }

    /// Waits until node `id`'s latest process has its signal handlers (it
    /// logs "opening" right after installing them): a SIGTERM before that
    /// would find the default action, as it would for any process.
    pub(crate) fn wait_until_opening(&self, id: u64) {
        let log = self.path().join(format!("node{id}.log"));
        let want = self.starts.get(&id).copied().unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.matches("flotilla: opening").count() >= want {
                return;
            }
            assert!(Instant::now() < deadline, "node {id} never started");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The last `lines` lines of every member's log, for a failure message.
    pub(crate) fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for id in 1..=self.nodes {
            let text = std::fs::read_to_string(self.path().join(format!("node{id}.log")))
                .unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- node {id}\n"));
            for line in &all[all.len().saturating_sub(lines)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Panics, with the member's log, if a member exited without the test
    /// stopping it (a panic, an abort, an OOM kill): a follower that dies
    /// mid-test would otherwise go unseen while a quorum survives. Members
    /// the test stops (`kill`, `terminate`) leave `procs` first.
    pub(crate) fn check_members(&mut self) {
        if let Some(why) = self.member_that_exited() {
            panic!("{why}");
        }
    }

    fn member_that_exited(&mut self) -> Option<String> {
        for (&id, child) in self.procs.iter_mut() {
            let status = match child.try_wait() {
                Ok(None) => continue,
                Ok(Some(status)) => status.to_string(),
                Err(e) => format!("unknown ({e})"),
            };
            let log = std::fs::read_to_string(self.dir.path().join(format!("node{id}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            return Some(format!(
                "node {id} exited on its own ({status}); the test did not stop it. Its log's end:\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            ));
        }
        None
    }

    /// Replaces every member's fault rules (drop share in millionths,
    /// delivery delay, partition sides), retrying a member that does not
    /// listen yet (just restarted) for up to 20 s; any other refusal fails
    /// the test. Returns the frames the replaced rules dropped on all
    /// members together, for the test to assert its faults took effect.
    pub(crate) fn set_faults(
        &mut self,
        client: &RemoteClient,
        drop_ppm: u32,
        delay: Duration,
        partition: &[Vec<u64>],
    ) -> u64 {
        self.check_members();
        let mut dropped = 0;
        for id in 1..=self.nodes {
            dropped += inject_faults(client, id, drop_ppm, delay, partition);
        }
        dropped
    }

    pub(crate) fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.procs.remove(&id) {
            child.kill().expect("SIGKILL");
            let _ = child.wait();
        }
    }

    pub(crate) fn terminate(&mut self, id: u64) -> bool {
        self.wait_until_opening(id);
        let Some(mut child) = self.procs.remove(&id) else {
            return false;
        };
        // SAFETY: plain kill(2) on a child we spawned.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        child.wait().map(|s| s.success()).unwrap_or(false)
    }

    pub(crate) fn client(&self) -> RemoteClient {
        RemoteClient::open(self.path(), Duration::from_secs(20)).expect("client")
    }

    /// A client that knows member `node` only (a cluster directory of its
    /// own lists no other), so it sends everything there, as a client
    /// connected to one side of a partition does. The directory lives as
    /// long as the returned guard.
    pub(crate) fn client_of(
        &self,
        node: u64,
        timeout: Duration,
    ) -> (tempfile::TempDir, RemoteClient) {
        let dir = tempfile::tempdir().expect("temp dir");
        for file in ["ca.der", "client.der", "client.key.der"] {
            std::fs::copy(self.path().join(file), dir.path().join(file)).expect("copy");
        }
        let text = std::fs::read_to_string(self.path().join("cluster.toml")).expect("cluster.toml");
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| match line.split_once(" = ") {
                Some((id, _)) => id.parse::<u64>().map_or(true, |id| id == node),
                None => true,
            })
            .collect();
        std::fs::write(dir.path().join("cluster.toml"), kept.join("\n")).expect("write");
        let client = RemoteClient::open(dir.path(), timeout).expect("client");
        (dir, client)
    }

    /// The highest term any answering member reports.
    pub(crate) fn max_term(&self, client: &RemoteClient) -> u64 {
        client
            .status()
            .into_iter()
            .filter_map(|(_, s)| s.ok())
            .flatten()
            .map(|g| g.term)
            .max()
            .unwrap_or(0)
    }

    /// The leader all answering members agree on, waiting for one.
    pub(crate) fn leader(&self, client: &RemoteClient) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let leaders: Vec<u64> = client
                .status()
                .into_iter()
                .filter_map(|(_, s)| s.ok())
                .flatten()
                .filter(|g| g.role == "Leader")
                .map(|g| g.node)
                .collect();
            if leaders.len() == 1 {
                return leaders[0];
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no single leader within 20 s");
    }
}

/// Replaces member `id`'s fault rules as [`Cluster::set_faults`] does, for
/// callers without the cluster (a partitioner thread). Returns the frames
/// the replaced rules dropped.
pub(crate) fn inject_faults(
    client: &RemoteClient,
    id: u64,
    drop_ppm: u32,
    delay: Duration,
    partition: &[Vec<u64>],
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.inject_faults(id, drop_ppm, delay, partition.to_vec()) {
            Ok(dropped) => return dropped,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("injecting faults into node {id} failed: {e}"),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A member that died on its own fails the test, unless it is
        // already failing (a second panic would abort the process).
        let exited = if std::thread::panicking() {
            None
        } else {
            self.member_that_exited()
        };
        for id in 1..=self.nodes {
            self.kill(id);
        }
        if let Some(why) = exited {
            panic!("{why}");
        }
    }
}
