//! The kvraft lab's scenarios over multi-process clusters (real QUIC and
//! RocksDB on loopback): concurrent clients, an unreliable network, one and
//! many partitions, crashes of every member between rounds, snapshot
//! catch-up, leader kills. Each records its clients' history (appends,
//! linearizable and lease reads) and checks every acknowledged append is
//! there once and the history is linearizable. A test with faults also
//! asserts they took effect (frames dropped, a new term), so a fault
//! injection that silently stopped working fails it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla::{ReadConsistency, RemoteClient};

mod support;

use support::cluster::{inject_faults, Cluster};

use support::linearizability::{self, Event, Op};

/// Runs `clients` clients for `duration`, each appending unique tokens to
/// and reading `keys` keys, and returns the recorded history.
fn run_history(dir: &Path, clients: usize, keys: usize, duration: Duration) -> Vec<Event> {
    run_history_tagged(dir, clients, keys, duration, "")
}

/// As [`run_history`], with `tag` in every appended token (unique per round).
fn run_history_tagged(
    dir: &Path,
    clients: usize,
    keys: usize,
    duration: Duration,
    tag: &str,
) -> Vec<Event> {
    let never = Arc::new(AtomicBool::new(false));
    record_history(dir, clients, keys, duration, tag, never)
}

/// Records a history as [`run_history_tagged`] does, ending after
/// `duration` or once `stop` is set, whichever comes first.
fn record_history(
    dir: &Path,
    clients: usize,
    keys: usize,
    duration: Duration,
    tag: &str,
    stop: Arc<AtomicBool>,
) -> Vec<Event> {
    let history: Arc<Mutex<Vec<Event>>> = Arc::default();
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let dir = dir.to_path_buf();
            let history = history.clone();
            let tag = tag.to_string();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let client = RemoteClient::open(&dir, Duration::from_secs(5)).expect("client");
                let mut i = 0u64;
                while start.elapsed() < duration && !stop.load(Ordering::Relaxed) {
                    let key = format!("key{}", (c as u64 + i) % keys as u64);
                    let call = start.elapsed().as_nanos() as u64;
                    let event = if i % 3 == 2 {
                        // Every other read is a lease read: a lease served
                        // past its safety window shows as a stale read.
                        let consistency = if i % 6 == 2 {
                            ReadConsistency::Linearizable
                        } else {
                            ReadConsistency::Lease
                        };
                        match client.get(key.as_bytes(), consistency) {
                            Ok(value) => Some(Event {
                                key,
                                op: Op::Get(Some(
                                    String::from_utf8_lossy(&value.unwrap_or_default())
                                        .into_owned(),
                                )),
                                call,
                                ret: Some(start.elapsed().as_nanos() as u64),
                            }),
                            Err(e) if e.is_retryable() => None,
                            Err(e) => panic!("client {c}: {e}"),
                        }
                    } else {
                        let token = format!("[{tag}{c}.{i}]");
                        let result = client.append(key.as_bytes(), token.as_bytes());
                        let ret = match result {
                            Ok(()) => Some(start.elapsed().as_nanos() as u64),
                            Err(e) if e.is_retryable() => None,
                            Err(e) => panic!("client {c}: {e}"),
                        };
                        Some(Event {
                            key,
                            op: Op::Append(token),
                            call,
                            ret,
                        })
                    };
                    if let Some(event) = event {
                        history.lock().expect("history").push(event);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("client thread");
    }
    let history = history.lock().expect("history").clone();
    history
}

/// Checks the history is linearizable and that each key's final value holds
/// every acknowledged append exactly once.
fn check_history(client: &RemoteClient, history: &[Event], keys: usize) {
    assert!(
        history.iter().filter(|e| e.ret.is_some()).count() > 20,
        "too few operations completed to check anything"
    );
    let mut with_final = history.to_vec();
    let end = u64::MAX / 2;
    for k in 0..keys {
        let key = format!("key{k}");
        let value = client
            .get(key.as_bytes(), ReadConsistency::Linearizable)
            .expect("final read")
            .unwrap_or_default();
        let acked: Vec<String> = history
            .iter()
            .filter(|e| e.key == key && e.ret.is_some())
            .filter_map(|e| match &e.op {
                Op::Append(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        let text = String::from_utf8_lossy(&value).into_owned();
        for token in &acked {
            assert_eq!(
                text.matches(token.as_str()).count(),
                1,
                "{key}: {token} in {text}"
            );
        }
        with_final.push(Event {
            key,
            op: Op::Get(Some(text)),
            call: end,
            ret: Some(end + 1),
        });
    }
    linearizability::check(&with_final).unwrap_or_else(|e| panic!("{e}"));
}

fn start_with_faults(nodes: u64) -> Cluster {
    Cluster::start(nodes)
}

/// Heals every member's links and asserts the faults just lifted dropped
/// frames: injected faults that took no effect fail the test.
fn heal_after_faults(cluster: &mut Cluster, client: &RemoteClient, what: &str) {
    let dropped = cluster.set_faults(client, 0, Duration::ZERO, &[]);
    assert!(
        dropped > 0,
        "{what}: the members dropped no frames; the faults never took effect"
    );
}

#[test]
fn basic_one_client_sees_its_appends_once_in_order() {
    // The lab's basic test: one client, no faults. Its appends to a key
    // follow each other, so a linearizable history also fixes their order.
    let cluster = Cluster::start(3);
    let client = cluster.client();
    let history = run_history(cluster.path(), 1, 3, Duration::from_secs(3));
    check_history(&client, &history, 3);
}

#[test]
fn concurrent_clients_see_a_linearizable_history() {
    let cluster = Cluster::start(3);
    let client = cluster.client();
    let history = run_history(cluster.path(), 5, 3, Duration::from_secs(3));
    check_history(&client, &history, 3);
}

#[test]
fn unreliable_network_keeps_the_history_linearizable() {
    let mut cluster = start_with_faults(3);
    let client = cluster.client();
    client.put(b"warmup", b"1").expect("warm-up");
    cluster.set_faults(&client, 100_000, Duration::from_millis(2), &[]);
    let history = run_history(cluster.path(), 5, 3, Duration::from_secs(4));
    heal_after_faults(&mut cluster, &client, "10% of frames lost");
    check_history(&client, &history, 3);
}

#[test]
fn one_partition_minority_waits_majority_continues() {
    // As the kvraft lab's one-partition test: the leader keeps a majority,
    // clients of the minority member can complete neither a put nor a get
    // while the partition lasts, the majority goes on, and the minority's
    // requests complete once it heals, the put applied once.
    let mut cluster = start_with_faults(3);
    let client = cluster.client();
    client.put(b"k", b"14").expect("put");
    let leader = cluster.leader(&client);
    let minority = (1..=3).find(|&id| id != leader).expect("a follower");
    let majority: Vec<u64> = (1..=3).filter(|&id| id != minority).collect();
    cluster.set_faults(
        &client,
        0,
        Duration::ZERO,
        &[majority.clone(), vec![minority]],
    );
    let (_put_dir, put_client) = cluster.client_of(minority, Duration::from_secs(30));
    let (_get_dir, get_client) = cluster.client_of(minority, Duration::from_secs(30));
    let put_done = Arc::new(AtomicBool::new(false));
    let get_done = Arc::new(AtomicBool::new(false));
    let put = {
        let done = put_done.clone();
        std::thread::spawn(move || {
            let result = put_client.put(b"k", b"15");
            done.store(true, Ordering::SeqCst);
            result
        })
    };
    let get = {
        let done = get_done.clone();
        std::thread::spawn(move || {
            let result = get_client.get(b"k", ReadConsistency::Linearizable);
            done.store(true, Ordering::SeqCst);
            result
        })
    };
    // The majority keeps going meanwhile.
    client.put(b"k", b"16").expect("majority put");
    assert_eq!(
        client
            .get(b"k", ReadConsistency::Linearizable)
            .expect("get"),
        Some(b"16".to_vec())
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !put_done.load(Ordering::SeqCst),
        "a put completed in the minority: {:?}",
        put.join()
    );
    assert!(
        !get_done.load(Ordering::SeqCst),
        "a get completed in the minority: {:?}",
        get.join()
    );
    heal_after_faults(&mut cluster, &client, "the minority cut off");
    put.join()
        .expect("put thread")
        .expect("the minority's put completes after healing");
    let seen = get
        .join()
        .expect("get thread")
        .expect("the minority's get completes after healing");
    assert!(
        seen == Some(b"16".to_vec()) || seen == Some(b"15".to_vec()),
        "{seen:?}"
    );
    assert_eq!(
        client
            .get(b"k", ReadConsistency::Linearizable)
            .expect("get"),
        Some(b"15".to_vec()),
        "the minority's put was applied after the majority's"
    );
}

#[test]
fn a_leader_cut_off_alone_completes_nothing_until_the_partition_heals() {
    // The one-partition case with the leader on the minority side: it is
    // cut off alone; the majority elects another and writes. Its clients'
    // append waits for the partition to heal and is applied once. Asked
    // for a lease or a linearizable read, the old leader must not answer
    // the old value. Its lease ends (400 ms) before the others can elect (500 ms)
    // and CheckQuorum makes it step down at 500 ms, usually before this
    // read arrives, so this checks the whole path; the lease rule alone is
    // tested on the core (`core_reads.rs`).
    let mut cluster = start_with_faults(3);
    let client = cluster.client();
    client.put(b"k", b"old").expect("put");
    let leader = cluster.leader(&client);
    let term_before = cluster.max_term(&client);
    let others: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    cluster.set_faults(&client, 0, Duration::ZERO, &[vec![leader], others]);
    // A client of the cut-off leader appends: that cannot complete until
    // the partition heals, and then it is applied once.
    let (_append_dir, appender) = cluster.client_of(leader, Duration::from_secs(30));
    let append_done = Arc::new(AtomicBool::new(false));
    let append = {
        let done = append_done.clone();
        std::thread::spawn(move || {
            let result = appender.append(b"m", b"[minority]");
            done.store(true, Ordering::SeqCst);
            result
        })
    };
    client
        .put(b"k", b"new")
        .expect("the majority elects a new leader and writes");
    assert!(
        !append_done.load(Ordering::SeqCst),
        "an append completed on the cut-off leader: {:?}",
        append.join()
    );
    let (_dir, isolated) = cluster.client_of(leader, Duration::from_secs(2));
    for consistency in [ReadConsistency::Lease, ReadConsistency::Linearizable] {
        let read = isolated.get(b"k", consistency);
        assert!(
            read.is_err(),
            "the isolated old leader answered a {consistency:?} read: {read:?}"
        );
    }
    assert!(
        cluster.max_term(&client) > term_before,
        "the majority wrote without electing a new leader: the cut never took effect"
    );
    heal_after_faults(&mut cluster, &client, "the leader cut off");
    assert_eq!(
        isolated
            .get(b"k", ReadConsistency::Lease)
            .expect("after healing"),
        Some(b"new".to_vec())
    );
    append
        .join()
        .expect("append thread")
        .expect("the append completes after healing");
    assert_eq!(
        client
            .get(b"m", ReadConsistency::Linearizable)
            .expect("get"),
        Some(b"[minority]".to_vec()),
        "applied exactly once"
    );
}

/// How a partitioner splits the members in a round, given the leader the
/// members report (if any): the sides to inject.
type Splitter = fn(nodes: u64, round: u64, leader: Option<u64>) -> Vec<Vec<u64>>;

/// The lab's changing partitions, made to bite: the leader goes to the
/// minority side (alone or with one other member) every round, so every
/// round with working faults makes the majority elect a new leader.
fn leader_to_minority(nodes: u64, round: u64, leader: Option<u64>) -> Vec<Vec<u64>> {
    let mut all: Vec<u64> = (1..=nodes).collect();
    all.rotate_left((round * 2 % nodes) as usize);
    if let Some(leader) = leader {
        all.retain(|&id| id != leader);
        all.insert(0, leader);
    }
    let cut = 1 + (round % 2) as usize;
    vec![all[..cut].to_vec(), all[cut..].to_vec()]
}

/// What a partitioner thread did.
struct PartitionerReport {
    rounds: u64,
    /// Frames the members' fault rules dropped, over every round.
    dropped: u64,
}

/// A thread that splits the cluster with `split` anew every `period`, with
/// `drop_ppm` of the frames lost on every link, until the flag it returns
/// is set; then it heals nothing, and must be joined for its report. A
/// member refusing the faults fails the test.
fn spawn_partitioner(
    cluster: &Cluster,
    drop_ppm: u32,
    period: Duration,
    split: Splitter,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<PartitionerReport>) {
    let dir = cluster.path().to_path_buf();
    let nodes = cluster.nodes;
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let client = RemoteClient::open(&dir, Duration::from_secs(2)).expect("client");
            let mut report = PartitionerReport {
                rounds: 0,
                dropped: 0,
            };
            while !stop.load(Ordering::Relaxed) {
                let leader = client
                    .status()
                    .into_iter()
                    .filter_map(|(_, s)| s.ok())
                    .flatten()
                    .find(|g| g.role == "Leader")
                    .map(|g| g.node);
                let sides = split(nodes, report.rounds, leader);
                for id in 1..=nodes {
                    report.dropped += inject_faults(&client, id, drop_ppm, Duration::ZERO, &sides);
                }
                std::thread::sleep(period);
                report.rounds += 1;
            }
            report
        })
    };
    (stop, handle)
}

/// Asserts a partitioner's faults took effect: frames were dropped, and
/// the term rose (a leader sent to the minority was replaced).
fn assert_partitions_took_effect(report: &PartitionerReport, term_before: u64, term_after: u64) {
    assert!(report.rounds > 0, "the partitioner never ran");
    assert!(
        report.dropped > 0,
        "{} rounds of partitions dropped no frames: the faults never took effect",
        report.rounds
    );
    assert!(
        term_after > term_before,
        "{} rounds cut the leader off, yet the term stayed {term_before}: the partitions never took effect",
        report.rounds
    );
}

/// While `clients` clients run, a new two-way split of the five members
/// every 1.2 s (longer than an election timeout, so a majority side can
/// elect and make progress); then heal and check.
fn many_partitions(clients: usize, split: Splitter) {
    let mut cluster = start_with_faults(5);
    let client = cluster.client();
    client.put(b"warmup", b"1").expect("warm-up");
    let term_before = cluster.max_term(&client);
    let (stop, partitioner) = spawn_partitioner(&cluster, 0, Duration::from_millis(1200), split);
    let history = run_history(cluster.path(), clients, 3, Duration::from_secs(6));
    stop.store(true, Ordering::Relaxed);
    let mut report = partitioner.join().expect("partitioner");
    report.dropped += cluster.set_faults(&client, 0, Duration::ZERO, &[]);
    assert_partitions_took_effect(&report, term_before, cluster.max_term(&client));
    check_history(&client, &history, 3);
}

#[test]
fn many_partitions_with_one_client_stay_linearizable() {
    many_partitions(1, leader_to_minority);
}

#[test]
fn many_partitions_with_many_clients_stay_linearizable() {
    many_partitions(5, leader_to_minority);
}

#[test]
fn partitions_that_cut_nothing_fail_the_partition_check() {
    // The check above, shown to fire: a partitioner whose injected
    // "partitions" keep every member on one side (as a fault injection
    // that silently stopped working would) must fail the test.
    fn nothing_cut(nodes: u64, _round: u64, _leader: Option<u64>) -> Vec<Vec<u64>> {
        vec![(1..=nodes).collect()]
    }
    let failed = std::panic::catch_unwind(|| many_partitions(1, nothing_cut));
    let message = failed
        .err()
        .and_then(|e| e.downcast::<String>().ok())
        .expect("partitions that cut nothing passed the check");
    assert!(
        message.contains("never took effect"),
        "failed for another reason: {message}"
    );
}

#[test]
fn persist_with_partitions_and_an_unreliable_network() {
    // As the kvraft lab's persist-partition-unreliable test: five members,
    // each round under changing partitions with 5% of frames lost, then
    // every member killed with SIGKILL and restarted.
    let mut cluster = start_with_faults(5);
    let mut all = Vec::new();
    for round in 0..3 {
        let client = cluster.client();
        let term_before = cluster.max_term(&client);
        cluster.set_faults(&client, 50_000, Duration::from_millis(1), &[]);
        let (stop, partitioner) = spawn_partitioner(
            &cluster,
            50_000,
            Duration::from_millis(700),
            leader_to_minority,
        );
        let mut history = run_history_tagged(
            cluster.path(),
            3,
            2,
            Duration::from_secs(3),
            &format!("r{round}."),
        );
        stop.store(true, Ordering::Relaxed);
        let mut report = partitioner.join().expect("partitioner");
        report.dropped += cluster.set_faults(&client, 0, Duration::ZERO, &[]);
        assert_partitions_took_effect(&report, term_before, cluster.max_term(&client));
        // Shift this round's times after the previous rounds'.
        let offset = round as u64 * 1_000_000_000_000;
        for e in &mut history {
            e.call += offset;
            e.ret = e.ret.map(|r| r + offset);
        }
        all.extend(history);
        for id in 1..=5 {
            cluster.kill(id);
        }
        for id in 1..=5 {
            cluster.restart(id);
        }
    }
    let client = cluster.client();
    check_history(&client, &all, 2);
}

#[test]
fn leader_kills_keep_the_history_linearizable() {
    // Lease and linearizable reads beside appends while the leader is
    // killed with SIGKILL twice: a lease the old leader held must not let
    // anyone read stale data, and writes must go on after each kill.
    let mut cluster = Cluster::start(3);
    let client = cluster.client();
    client.put(b"warmup", b"1").expect("warm-up");
    let stop = Arc::new(AtomicBool::new(false));
    let recorder = {
        let dir = cluster.path().to_path_buf();
        let stop = stop.clone();
        std::thread::spawn(move || record_history(&dir, 3, 3, Duration::MAX, "", stop))
    };
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(700));
        let leader = cluster.leader(&client);
        let term = cluster.max_term(&client);
        cluster.kill(leader);
        let successor = cluster.leader(&client);
        assert_ne!(successor, leader, "the killed leader still leads");
        assert!(
            cluster.max_term(&client) > term,
            "no new term after the kill"
        );
        client
            .append(b"after-kill", b"[x]")
            .expect("a write after the leader's kill");
        cluster.restart(leader);
    }
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let history = recorder.join().expect("history clients");
    // Half the reads are lease reads (`record_history` alternates them).
    let reads = history
        .iter()
        .filter(|e| e.ret.is_some() && matches!(e.op, Op::Get(_)))
        .count();
    assert!(reads >= 4, "only {reads} reads completed");
    check_history(&client, &history, 3);
    cluster.check_members();
}

#[test]
fn a_node_left_behind_catches_up_by_snapshot_and_logs_stay_bounded() {
    // Members snapshot and compact past 100 entries or 64 KiB of log.
    let mut cluster =
        Cluster::start_configured(3, "max_log_entries = 100\nmax_raft_state_bytes = 65536\n");
    let client = cluster.client();
    client.put(b"first", b"1").expect("put");
    let leader = cluster.leader(&client);
    let behind = (1..=3).find(|&id| id != leader).expect("a follower");
    let behind_applied = member_status(&client, behind).applied_index;
    cluster.kill(behind);
    // Clients append and read the whole time the node is away and while
    // it catches up, as in the lab's snapshot tests.
    let stop_history = Arc::new(AtomicBool::new(false));
    let recorder = {
        let dir = cluster.path().to_path_buf();
        let stop = stop_history.clone();
        std::thread::spawn(move || record_history(&dir, 3, 3, Duration::MAX, "", stop))
    };
    for i in 0..600 {
        client
            .put(format!("k{i}").as_bytes(), &[b'x'; 200])
            .expect("put");
    }
    // The leader compacted its log past what the stopped node has, so only
    // a snapshot can bring that node up to date.
    let leader_snapshot = member_status(&client, leader).snapshot_index;
    assert!(
        leader_snapshot > behind_applied + 1,
        "the leader's log still starts at {leader_snapshot}, the follower applied {behind_applied}"
    );
    cluster.restart(behind);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = client.status();
        let node = status
            .iter()
            .find(|(id, _)| *id == behind)
            .and_then(|(_, s)| s.as_ref().ok())
            .and_then(|g| g.first().cloned());
        if let Some(g) = node {
            if g.applied_index >= 600 && g.snapshot_index > 0 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {behind} did not catch up: {status:?}\nits log:\n{}",
            std::fs::read_to_string(cluster.path().join(format!("node{behind}.log")))
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_history.store(true, Ordering::Relaxed);
    let history = recorder.join().expect("history clients");
    check_history(&client, &history, 3);
    // Its own data has what the snapshot and the log after it carried: a
    // stale read is served by the member asked, from its own store, and
    // once it applied all the leader has, it matches the leader's.
    let leader_applied = member_status(&client, leader).applied_index;
    let deadline = Instant::now() + Duration::from_secs(20);
    while member_status(&client, behind).applied_index < leader_applied {
        assert!(
            Instant::now() < deadline,
            "node {behind} did not apply up to {leader_applied}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_dir, local) = cluster.client_of(behind, Duration::from_secs(10));
    for key in ["first", "k0", "k299", "k599", "key0", "key1", "key2"] {
        assert_eq!(
            local
                .get(key.as_bytes(), ReadConsistency::Stale)
                .expect("stale read"),
            client
                .get(key.as_bytes(), ReadConsistency::Linearizable)
                .expect("read"),
            "node {behind}'s {key}"
        );
    }
    for (id, status) in client.status() {
        let g = &status.expect("status")[0];
        assert!(
            g.log_bytes <= 8 * 65536,
            "node {id} holds {} log bytes, over 8× the 64 KiB bound",
            g.log_bytes
        );
    }
}

/// What member `id` reports of its (only) group.
fn member_status(client: &RemoteClient, id: u64) -> flotilla::RemoteStatus {
    client
        .status()
        .into_iter()
        .find(|(node, _)| *node == id)
        .and_then(|(_, s)| s.ok())
        .and_then(|groups| groups.into_iter().next())
        .unwrap_or_else(|| panic!("node {id} reports no status"))
}
