//! MapReduce over a 3-node cluster of `flotilla serve` processes on real
//! QUIC and RocksDB: a job whose input lies in several shards and whose
//! tasks run on several nodes, a coordinator killed with SIGKILL mid-job
//! and resumed by another member, and a node killed as reduces fetch its
//! map output. Each output is compared with a sequential reference.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla::{JobView, MapReduceSpec, ReadConsistency, RemoteClient, ScanRange};

// Not `mod support`, which would bring the linearizability checker's own
// test into this binary as well.
#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/corpus.rs"]
mod corpus;
use cluster::{Cluster, BIN};
use corpus::{corpus, reference_word_count};

/// Where the coordinator records which node holds each completed task's
/// output (see ARCHITECTURE.md, "MapReduce over a cluster").
const TASK_RECORDS: &[u8] = b"\xff\xffflotilla/mr-task/";

fn load(client: &RemoteClient, docs: &[(String, String)]) {
    for (key, text) in docs {
        client.put(key.as_bytes(), text.as_bytes()).unwrap();
    }
}

fn output(client: &RemoteClient, prefix: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let (start, end) = ScanRange::prefix(prefix).bounds().unwrap();
    client
        .scan(start, end, usize::MAX, ReadConsistency::Linearizable)
        .unwrap()
        .into_iter()
        .collect()
}

/// Task name (`m3`, `r0`) → the node recorded as holding its output.
fn task_owners(client: &RemoteClient, id: &str) -> BTreeMap<String, u64> {
    let prefix = [TASK_RECORDS, format!("{id}/").as_bytes()].concat();
    let (start, end) = ScanRange::prefix(prefix.clone()).bounds().unwrap();
    client
        .scan(start, end, usize::MAX, ReadConsistency::Linearizable)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k[prefix.len()..].to_vec()).unwrap(),
                String::from_utf8(v).unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// A slow word count (see `test-slow-wc` in the binary): `map_ms` per
/// input pair, `reduce_ms` per key.
fn slow_spec(map_ms: u64, reduce_ms: u64, reduce_tasks: u32) -> MapReduceSpec {
    let mut spec = MapReduceSpec::new("test-slow-wc", ScanRange::prefix("docs/"), "wc/");
    spec.arg = format!("{map_ms},{reduce_ms}");
    spec.reduce_tasks = reduce_tasks;
    spec.workers = 2;
    spec.task_timeout = Duration::from_secs(5);
    // One pair per split: one map task per document.
    spec.split_bytes = 1;
    spec
}

/// Polls job `id` until `done` holds for its view, through any member.
fn wait_for(
    cluster: &Cluster,
    client: &RemoteClient,
    id: &str,
    what: &str,
    done: impl Fn(&JobView) -> bool,
) -> JobView {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // A member may be down or the coordinator changing hands: ask again.
        if let Ok(view) = client.job(id) {
            if done(&view) {
                return view;
            }
            assert!(
                !view.status.starts_with("failed"),
                "job {id} failed: {}",
                view.status
            );
        }
        assert!(
            Instant::now() < deadline,
            "job {id}: no {what} within 120 s; {:?}\n{}",
            client.job(id),
            cluster.log_tails(40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn committed(view: &JobView) -> bool {
    view.status.starts_with("committed")
}

#[test]
fn a_word_count_over_a_3_node_cluster_with_input_in_several_shards() {
    let cluster = Cluster::start(3);
    let client = cluster.client();
    let docs = corpus(30, 1_500);
    let files = tempfile::tempdir().unwrap();
    for (key, text) in &docs {
        let name = key.strip_prefix("docs/").unwrap();
        std::fs::write(files.path().join(name), text).unwrap();
    }
    // As a user would: import the files, run the job, read the output.
    let import = Command::new(BIN)
        .arg("import")
        .args(docs.iter().map(|(k, _)| {
            files
                .path()
                .join(k.strip_prefix("docs/").unwrap())
                .into_os_string()
        }))
        .args(["--prefix", "docs/", "--cluster"])
        .arg(cluster.path())
        .output()
        .unwrap();
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    // Maps sleep 100 ms per document so that every member's workers (which
    // start within a watcher tick of 500 ms) find maps left to run.
    let run = Command::new(BIN)
        .args([
            "mr",
            "run",
            "test-slow-wc",
            "--arg",
            "100,0",
            "--input",
            "docs/",
            "--output",
            "wc/",
            "--reduce",
            "5",
            "--cluster",
        ])
        .arg(cluster.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let field = |name: &str| -> u64 {
        stdout
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
            .parse()
            .unwrap()
    };
    // One split per shard holding input (splits are 64 MiB): the input
    // lies in several shards.
    assert!(field("maps") >= 2, "input in one shard only: {stdout}");
    assert_eq!(field("reduces"), 5);
    let reference = reference_word_count(&docs);
    assert_eq!(field("committed_pairs"), reference.len() as u64);
    assert_eq!(output(&client, "wc/"), reference);
    let id = stdout
        .split_whitespace()
        .find_map(|f| f.strip_prefix("job="))
        .unwrap();
    let owners = task_owners(&client, id);
    let map_nodes: BTreeSet<u64> = owners
        .iter()
        .filter(|(task, _)| task.starts_with('m'))
        .map(|(_, node)| *node)
        .collect();
    assert!(
        map_nodes.len() >= 2,
        "every map ran on one node: {owners:?}"
    );
    // `mr status` lists it as committed.
    let status = Command::new(BIN)
        .args(["mr", "status", "--cluster"])
        .arg(cluster.path())
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&status.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(id) && l.contains("\tcommitted")),
        "{listed}"
    );
    // Every member removes the job's intermediate files once it ended.
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in 1..=3 {
        let dir = cluster
            .path()
            .join(format!("node{node}"))
            .join("mapreduce")
            .join(format!("mr-{id}"));
        while dir.exists() {
            assert!(
                Instant::now() < deadline,
                "{} is still there\n{}",
                dir.display(),
                cluster.log_tails(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_coordinator_killed_mid_job_is_resumed_by_another_member() {
    let mut cluster = Cluster::start(3);
    let client = cluster.client();
    let docs = corpus(40, 400);
    load(&client, &docs);
    let spec = slow_spec(150, 0, 4);
    let id = client.mapreduce("killed-coordinator", &spec).unwrap();
    let view = wait_for(&cluster, &client, &id, "three maps done", |v| {
        v.coordinator != 0 && v.counters.is_some_and(|c| c[0] >= 3)
    });
    let first = view.coordinator;
    let done_before = task_owners(&client, &id);
    cluster.kill(first);
    let end = wait_for(&cluster, &client, &id, "commit", committed);
    assert_ne!(
        end.coordinator, first,
        "the dead node cannot have committed it"
    );
    assert_eq!(output(&client, "wc/"), reference_word_count(&docs));
    // The maps recorded before the kill on the surviving nodes were not
    // run again: their records still name the same nodes.
    let done_after = task_owners(&client, &id);
    for (task, node) in done_before.iter().filter(|(_, n)| **n != first) {
        assert_eq!(done_after.get(task), Some(node), "task {task} ran again");
    }
}

#[test]
fn a_node_killed_as_reduces_fetch_has_its_maps_run_again() {
    let mut cluster = Cluster::start(3);
    let client = cluster.client();
    let docs = corpus(24, 400);
    load(&client, &docs);
    // Maps slow enough that every node runs some, reduces slow enough
    // (a second per key) that most fetch after the kill.
    let spec = slow_spec(100, 1_000, 8);
    let id = client.mapreduce("killed-mapper", &spec).unwrap();
    let view = wait_for(&cluster, &client, &id, "every map done", |v| {
        v.counters.is_some_and(|c| c[1] > 0 && c[0] == c[1])
    });
    let coordinator = view.coordinator;
    let owners = task_owners(&client, &id);
    let victim = (1..=3)
        .filter(|n| *n != coordinator)
        .max_by_key(|n| {
            owners
                .iter()
                .filter(|(t, o)| t.starts_with('m') && *o == n)
                .count()
        })
        .unwrap();
    let victim_maps: Vec<String> = owners
        .iter()
        .filter(|(t, o)| t.starts_with('m') && **o == victim)
        .map(|(t, _)| t.clone())
        .collect();
    assert!(
        !victim_maps.is_empty(),
        "node {victim} ran no map: {owners:?}"
    );
    cluster.kill(victim);
    let end = wait_for(&cluster, &client, &id, "commit", committed);
    assert_eq!(output(&client, "wc/"), reference_word_count(&docs));
    // At most six reduces (two workers a node) had started when the node
    // died, so later ones could not fetch its runs: its maps ran again
    // elsewhere, and the records name the new nodes.
    let after = task_owners(&client, &id);
    for task in &victim_maps {
        let node = after.get(task).copied();
        assert!(
            node.is_some_and(|n| n != victim),
            "map {task} still recorded on the dead node {victim}: {node:?}"
        );
    }
    assert!(committed(&end));
}
