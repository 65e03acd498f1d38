//! Multi-process clusters over real QUIC and RocksDB on loopback: each
//! member is a `flotilla serve` process, killed with SIGKILL where the test
//! says so. Client behaviour, sessions, limits, kill -9 and security here;
//! the kvraft lab's history-checked scenarios in `cluster_lab.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla::{Error, ReadConsistency, RemoteClient};

use support::cluster::{Cluster, BIN};

#[test]
fn basic_writes_and_reads_through_any_member() {
    let cluster = Cluster::start(3);
    let client = cluster.client();
    for i in 0..50 {
        client
            .put(format!("k{i:02}").as_bytes(), format!("v{i}").as_bytes())
            .expect("put");
    }
    client.append(b"k00", b"+").expect("append");
    assert_eq!(
        client
            .get(b"k00", ReadConsistency::Linearizable)
            .expect("get"),
        Some(b"v0+".to_vec())
    );
    assert_eq!(
        client.get(b"nope", ReadConsistency::Lease).expect("get"),
        None
    );
    let pairs = client
        .scan(
            b"k".to_vec(),
            b"l".to_vec(),
            100,
            ReadConsistency::Linearizable,
        )
        .expect("scan");
    assert_eq!(pairs.len(), 50);
    let outcome = client
        .compare_and_swap(b"k01", Some(b"v1"), Some(b"swapped"))
        .expect("cas");
    assert!(outcome.swapped);
    assert!(client.delete(b"k02").expect("delete"));
    // Every member names the same leader. Polled: an election (a member
    // stalled past its election timeout on a loaded machine) can leave a
    // member not knowing the new leader for a moment, as CI once showed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leader = cluster.leader(&client);
        let statuses = client.status();
        assert_eq!(statuses.len(), 3);
        let mut named = Vec::new();
        for (node, status) in statuses {
            let groups = status.unwrap_or_else(|e| panic!("node {node}: {e}"));
            assert_eq!(groups[0].voters, vec![1, 2, 3]);
            named.push(groups[0].leader);
        }
        if named.iter().all(|&l| l == leader) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the members name leaders {named:?}, not all {leader}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A follower's data catches up: every member applied the writes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let applied: Vec<u64> = client
            .status()
            .into_iter()
            .filter_map(|(_, s)| s.ok())
            .flatten()
            .map(|g| g.applied_index)
            .collect();
        if applied.len() == 3 && applied.iter().all(|&a| a >= 53) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "followers did not apply: {applied:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A client writing one request at a time reuses one session: a session
    // per write would evict other clients' sessions once the limit is hit.
    for (node, status) in client.status() {
        let groups = status.unwrap_or_else(|e| panic!("node {node}: {e}"));
        assert_eq!(groups[0].sessions, 1, "node {node} holds one session");
    }
    // A member the cluster file does not list is an error, not a panic.
    match client.get_from(9, b"k00") {
        Err(Error::InvalidArgument(why)) => assert!(why.contains("node 9"), "{why}"),
        other => panic!("node 9 is no member: {other:?}"),
    }
}

#[test]
fn a_client_whose_session_was_evicted_goes_on_with_a_new_one() {
    // One session kept: a second client's first write evicts the first's.
    let cluster = Cluster::start_configured(3, "max_sessions = 1\n");
    let first = cluster.client();
    let second = cluster.client();
    first
        .put(b"a", b"1")
        .expect("the first client's first write");
    second
        .put(b"b", b"1")
        .expect("the second client's first write");
    assert_eq!(
        first.put(b"a", b"2"),
        Err(Error::SessionExpired),
        "the evicted session's next number is refused"
    );
    first
        .put(b"a", b"3")
        .expect("the next write starts a new session");
    assert_eq!(
        first.get(b"a", ReadConsistency::Linearizable).expect("get"),
        Some(b"3".to_vec()),
        "the refused write was not applied, the new one was"
    );
}

#[test]
fn a_one_member_cluster_serves_its_clients() {
    // No peers: the member still listens (it used to start without a
    // network, so no client could ever reach it).
    let cluster = Cluster::start(1);
    let client = cluster.client();
    client.put(b"solo", b"1").expect("put");
    client.append(b"solo", b"2").expect("append");
    assert_eq!(
        client
            .get(b"solo", ReadConsistency::Linearizable)
            .expect("get"),
        Some(b"12".to_vec())
    );
    assert_eq!(cluster.leader(&client), 1);
}

#[test]
fn a_member_reports_peers_it_cannot_reach_and_their_return() {
    let mut cluster = Cluster::start(3);
    let client = cluster.client();
    client.put(b"k", b"v").expect("put");
    cluster.kill(2);
    cluster.kill(3);
    let dir = cluster.path().to_path_buf();
    let log =
        |id: u64| std::fs::read_to_string(dir.join(format!("node{id}.log"))).unwrap_or_default();
    let wait_for = |what: &str, peer: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !log(1)
            .lines()
            .any(|line| line.contains(what) && line.contains(peer))
        {
            assert!(
                Instant::now() < deadline,
                "node 1 never logged {what:?} naming {peer}:\n{}",
                log(1)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("peer unreachable", "peer=2");
    wait_for("peer unreachable", "peer=3");
    cluster.restart(2);
    wait_for("peer reachable again", "peer=2");
}

#[test]
fn a_write_the_leader_took_but_could_not_commit_is_reported_as_maybe_applied() {
    let mut cluster = Cluster::start(3);
    let client = cluster.client();
    client.put(b"k", b"1").expect("put");
    let leader = cluster.leader(&client);
    for id in (1..=3).filter(|&id| id != leader) {
        cluster.kill(id);
    }
    // The leader holds the write in its log and cannot commit it: the
    // client must not report "are the members running?" but a timeout,
    // which says the write may still be applied.
    let (_dir, short) = cluster.client_of(leader, Duration::from_secs(2));
    match short.put(b"k", b"2") {
        Err(Error::Timeout(_)) => {}
        other => panic!("expected a timeout: {other:?}"),
    }
}

#[test]
fn a_remote_clients_writes_are_held_to_the_members_limits() {
    // The members run with the default limits: 4 KiB keys, 1 MiB values.
    let cluster = Cluster::start(3);
    let client = cluster.client();
    let refused = |result: Result<(), Error>, what: &str| match result {
        Err(Error::InvalidArgument(why)) => why,
        other => panic!("{what}: {other:?}"),
    };
    let why = refused(client.put(&[b'k'; 5000], b"v"), "a 5,000-byte key");
    assert!(why.contains("max_key_bytes"), "{why}");
    let mib = vec![b'v'; 1 << 20];
    let why = refused(
        client.put(b"k", &[mib.as_slice(), b"+"].concat()),
        "1 MiB + 1",
    );
    assert!(why.contains("max_value_bytes"), "{why}");
    // Appends grow a value up to the 2 MiB a stored value may have.
    client.append(b"k", &mib).expect("first MiB");
    client.append(b"k", &mib).expect("second MiB");
    let why = refused(client.append(b"k", b"+"), "an append past 2 MiB");
    assert!(why.contains("2097153 bytes"), "{why}");
    let value = client
        .get(b"k", ReadConsistency::Linearizable)
        .expect("get")
        .expect("a value");
    assert_eq!(value.len(), 2 << 20, "the refused append changed nothing");
}

#[test]
fn a_scan_larger_than_a_frame_arrives_in_pages() {
    // 40 values of 200 KiB: 8 MB, twice the largest frame. Before pages the
    // member's answer could not be sent and the client retried until its
    // timeout.
    let cluster = Cluster::start(3);
    let client = cluster.client();
    let value = |i: usize| vec![b'a' + (i % 26) as u8; 200 << 10];
    for i in 0..40 {
        client
            .put(format!("big{i:02}").as_bytes(), &value(i))
            .expect("put");
    }
    let pairs = client
        .scan(
            b"big".to_vec(),
            b"bih".to_vec(),
            1000,
            ReadConsistency::Linearizable,
        )
        .expect("scan");
    assert_eq!(pairs.len(), 40);
    for (i, (key, got)) in pairs.iter().enumerate() {
        assert_eq!(key, format!("big{i:02}").as_bytes());
        assert!(
            *got == value(i),
            "value of {}",
            String::from_utf8_lossy(key)
        );
    }
    let limited = client
        .scan(
            b"big".to_vec(),
            Vec::new(),
            25,
            ReadConsistency::Linearizable,
        )
        .expect("scan");
    assert_eq!(limited.len(), 25, "a limit across pages");
    assert_eq!(limited[24].0, b"big24".to_vec());
}

#[test]
fn a_client_that_reaches_a_follower_first_then_goes_to_the_leader() {
    let mut cluster = Cluster::start(3);
    let client = cluster.client();
    // A client with no leader known asks node 1 first: make it a follower.
    if cluster.leader(&client) == 1 {
        cluster.kill(1);
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.put(b"elect", b"another").is_err() {
            assert!(Instant::now() < deadline, "no new leader without node 1");
        }
        cluster.restart(1);
    }
    let leader = cluster.leader(&client);
    assert_ne!(leader, 1);
    // Node 1 must answer as a follower: were it down, the client would
    // move on to another member by itself and prove nothing.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let node1 = client.status().into_iter().find(|(node, _)| *node == 1);
        if let Some((_, Ok(groups))) = node1 {
            if groups[0].role == "Follower" && groups[0].leader == leader {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node 1 did not rejoin as a follower"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let fresh = cluster.client();
    assert_eq!(fresh.leader_hint(), None);
    fresh.put(b"k", b"v").expect("put through a follower");
    // Node 1 forwarded the write and named the leader: the client goes
    // there itself from now on, instead of paying two more hops each time.
    assert_eq!(fresh.leader_hint(), Some(leader));
    assert_eq!(
        fresh.get(b"k", ReadConsistency::Linearizable).expect("get"),
        Some(b"v".to_vec())
    );
    assert_eq!(fresh.leader_hint(), Some(leader));
}

/// Appends unique tokens to one key per client and records which were
/// acknowledged; returns (key, acknowledged tokens in order) per client.
/// `acks[c]` counts client `c`'s acknowledged appends as they happen.
fn append_load(
    dir: &Path,
    clients: usize,
    stop: Arc<AtomicBool>,
    acks: Arc<Vec<AtomicU64>>,
) -> Vec<std::thread::JoinHandle<(String, Vec<String>)>> {
    (0..clients)
        .map(|c| {
            let dir: PathBuf = dir.to_path_buf();
            let stop = stop.clone();
            let acks = acks.clone();
            std::thread::spawn(move || {
                let client = RemoteClient::open(&dir, Duration::from_secs(30)).expect("client");
                let key = format!("client{c}");
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let token = format!("[{c}.{i}]");
                    match client.append(key.as_bytes(), token.as_bytes()) {
                        Ok(()) => {
                            acked.push(token);
                            acks[c].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.is_retryable() => {}
                        Err(e) => panic!("client {c}: fatal error {e}"),
                    }
                    i += 1;
                }
                (key, acked)
            })
        })
        .collect()
}

/// Every acknowledged token is present exactly once, in order; nothing
/// appears twice.
fn check_appends(value: &[u8], acked: &[String], key: &str) {
    let text = String::from_utf8_lossy(value);
    let tokens: Vec<&str> = text
        .split_inclusive(']')
        .filter(|t| !t.is_empty())
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for token in &tokens {
        assert!(seen.insert(*token), "{key}: {token} applied twice");
    }
    let mut at = 0;
    for token in acked {
        let found = tokens[at..].iter().position(|t| t == token);
        let Some(offset) = found else {
            panic!("{key}: acknowledged {token} is missing or out of order");
        };
        at += offset + 1;
    }
}

#[test]
fn a_member_that_dies_on_its_own_fails_the_test() {
    // The harness, shown to fire: a member killed behind its back (as its
    // own panic, abort or an OOM kill would end it) fails the test at the
    // next check, and again when the cluster is dropped at the test's end,
    // although the other two members keep serving.
    let mut cluster = Cluster::start(3);
    let client = cluster.client();
    client.put(b"k", b"v").expect("put");
    let pid = cluster.procs[&2].id();
    // SAFETY: plain kill(2) on a child we spawned.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let message = loop {
        let checked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cluster.check_members()));
        match checked {
            Err(panic) => break panic.downcast::<String>().map(|m| *m).unwrap_or_default(),
            Ok(()) => {
                assert!(Instant::now() < deadline, "the dead member went unseen");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    assert!(
        message.contains("node 2 exited on its own"),
        "unexpected report: {message}"
    );
    client.put(b"k", b"w").expect("the other two keep serving");
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(cluster)));
    let message = dropped
        .err()
        .and_then(|panic| panic.downcast::<String>().ok())
        .expect("dropping a cluster with a dead member passed");
    assert!(message.contains("node 2 exited on its own"), "{message}");
}

/// Waits (up to 20 s) until every client has an acknowledged append beyond
/// the counts it had when `wait_for_progress` was called: after a kill,
/// the cluster must serve every client again, not just some at some time.
fn wait_for_progress(cluster: &mut Cluster, acks: &[AtomicU64], after: &str) {
    let before: Vec<u64> = acks.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stuck: Vec<usize> = (0..acks.len())
            .filter(|&c| acks[c].load(Ordering::Relaxed) <= before[c])
            .collect();
        if stuck.is_empty() {
            return;
        }
        cluster.check_members();
        assert!(
            Instant::now() < deadline,
            "clients {stuck:?} acknowledged nothing within 20 s {after}; logs:\n{}",
            cluster.log_tails(20)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn counters(n: usize) -> Arc<Vec<AtomicU64>> {
    Arc::new((0..n).map(|_| AtomicU64::new(0)).collect())
}

#[test]
fn kill_9_of_the_leader_under_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3);
    let client = cluster.client();
    client.put(b"warmup", b"1").expect("warm-up write");
    let stop = Arc::new(AtomicBool::new(false));
    let acks = counters(4);
    let load = append_load(cluster.path(), 4, stop.clone(), acks.clone());
    wait_for_progress(&mut cluster, &acks, "at the start");
    for round in 0..2 {
        let leader = cluster.leader(&client);
        cluster.kill(leader);
        // The other two elect a leader and serve every client.
        wait_for_progress(
            &mut cluster,
            &acks,
            &format!("after killing leader {leader} (round {round})"),
        );
        cluster.restart(leader);
        wait_for_progress(
            &mut cluster,
            &acks,
            &format!("after restarting node {leader} (round {round})"),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = load
        .into_iter()
        .map(|t| t.join().expect("client"))
        .collect();
    for (key, acked) in &results {
        assert!(!acked.is_empty(), "{key}: nothing acknowledged");
        let value = client
            .get(key.as_bytes(), ReadConsistency::Linearizable)
            .expect("get")
            .unwrap_or_default();
        check_appends(&value, acked, key);
    }
}

#[test]
fn kill_9_of_all_nodes_repeatedly_loses_nothing() {
    // Every member is killed at once, three times, while four clients keep
    // appending: writes are in flight at each kill. Every acknowledged
    // append must be there afterwards, once and in order.
    let mut cluster = Cluster::start(3);
    let client = cluster.client();
    client.put(b"warmup", b"1").expect("warm-up write");
    let stop = Arc::new(AtomicBool::new(false));
    let acks = counters(4);
    let load = append_load(cluster.path(), 4, stop.clone(), acks.clone());
    wait_for_progress(&mut cluster, &acks, "at the start");
    for round in 0..3 {
        // Let writes be in flight at the kill.
        std::thread::sleep(Duration::from_millis(300));
        for id in 1..=3 {
            cluster.kill(id);
        }
        for id in 1..=3 {
            cluster.restart(id);
        }
        wait_for_progress(
            &mut cluster,
            &acks,
            &format!("after killing and restarting every member (round {round})"),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = load
        .into_iter()
        .map(|t| t.join().expect("client"))
        .collect();
    let client = cluster.client();
    for (key, acked) in &results {
        assert!(!acked.is_empty(), "{key}: nothing acknowledged");
        let value = client
            .get(key.as_bytes(), ReadConsistency::Linearizable)
            .expect("get")
            .unwrap_or_default();
        check_appends(&value, acked, key);
    }
    // And a graceful stop exits cleanly.
    for id in 1..=3 {
        assert!(
            cluster.terminate(id),
            "node {id} did not exit cleanly on SIGTERM; logs:\n{}",
            cluster.log_tails(20)
        );
    }
}

#[test]
fn a_sigterm_while_a_member_is_still_opening_stops_it_cleanly() {
    use std::io::{BufRead, BufReader};
    let mut cluster = Cluster::start(3);
    assert!(cluster.terminate(3), "node 3 did not stop cleanly");
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(cluster.path().join("node3.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    loop {
        let line = lines
            .next()
            .expect("the member said something")
            .expect("line");
        if line.starts_with("flotilla: opening") {
            break;
        }
    }
    // SAFETY: plain kill(2) on a child we spawned.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(child.wait().expect("wait").success(), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("stopped cleanly")),
        "{rest:?}"
    );
}

#[test]
fn strangers_and_impostors_are_refused_and_the_cluster_keeps_serving() {
    let cluster = Cluster::start(3);
    let good = cluster.client();
    good.put(b"before", b"1").expect("put");
    // How often the members logged a refusal whose reason contains `why`.
    let refusals = |why: &str| -> usize {
        (1..=3)
            .map(|id| {
                std::fs::read_to_string(cluster.path().join(format!("node{id}.log")))
                    .unwrap_or_default()
                    .lines()
                    .filter(|line| line.contains("refused a connection") && line.contains(why))
                    .count()
            })
            .sum()
    };

    // A stranger: a certificate from another CA. It trusts the cluster's
    // CA, so it accepts the members: the members must refuse it.
    let stranger = tempfile::tempdir().expect("temp dir");
    let init = Command::new(BIN)
        .args(["cluster", "init", "--nodes", "1", "--dir"])
        .arg(stranger.path())
        .output()
        .expect("init");
    assert!(init.status.success());
    for file in ["cluster.toml", "ca.der"] {
        std::fs::copy(cluster.path().join(file), stranger.path().join(file)).expect("copy");
    }
    let before = refusals("TLS handshake failed");
    let refused = RemoteClient::open(stranger.path(), Duration::from_secs(20))
        .expect("client")
        .put(b"stranger", b"x");
    // At once and fatal, not retried until the timeout as for a member down.
    match refused {
        Err(Error::Config(why)) => assert!(why.contains("certificates"), "{why}"),
        other => panic!("the stranger's write: {other:?}"),
    }
    assert!(
        refusals("TLS handshake failed") > before,
        "the members refused the stranger's certificate, and logged it"
    );

    // An impostor: a real member certificate used to claim the client id 0.
    let impostor = tempfile::tempdir().expect("temp dir");
    for file in ["cluster.toml", "ca.der"] {
        std::fs::copy(cluster.path().join(file), impostor.path().join(file)).expect("copy");
    }
    std::fs::copy(
        cluster.path().join("node2.der"),
        impostor.path().join("client.der"),
    )
    .expect("copy");
    std::fs::copy(
        cluster.path().join("node2.key.der"),
        impostor.path().join("client.key.der"),
    )
    .expect("copy");
    let before = refusals("claims to be node 0");
    let refused = RemoteClient::open(impostor.path(), Duration::from_secs(20))
        .expect("client")
        .put(b"impostor", b"x");
    match refused {
        Err(Error::Config(why)) => assert!(why.contains("certificates"), "{why}"),
        other => panic!("the impostor's write: {other:?}"),
    }
    assert!(
        refusals("claims to be node 0") > before,
        "the members refused the impostor, and logged it"
    );

    // No certificate at all is refused by the TLS handshake the same way;
    // `net/tests/mtls.rs` shows it (this client always presents one).
    good.put(b"after", b"2").expect("the cluster keeps serving");
    assert_eq!(
        good.get(b"stranger", ReadConsistency::Linearizable)
            .expect("get"),
        None
    );
    assert_eq!(
        good.get(b"impostor", ReadConsistency::Linearizable)
            .expect("get"),
        None
    );
}

mod support;
