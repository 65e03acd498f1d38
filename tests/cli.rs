//! The `flotilla` binary against an embedded store and a running cluster:
//! output fit for scripts, exit codes, clear errors.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::cluster::Cluster;

fn flotilla(args: &[&str], data: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .expect("run flotilla")
}

/// The same script against any store: `run(args)` runs the binary on it.
fn commands_print_values_alone_and_exit_one_on_a_missing_key(run: impl Fn(&[&str]) -> Output) {
    assert!(run(&["put", "fruit/apple", "red"]).status.success());
    assert!(run(&["append", "fruit/apple", "dish"]).status.success());
    assert!(run(&["put", "fruit/odd\tkey", "line\nbreak"])
        .status
        .success());

    let get = run(&["get", "fruit/apple"]);
    assert!(get.status.success());
    assert_eq!(get.stdout, b"reddish\n");

    let missing = run(&["get", "fruit/pear"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(missing.stdout.is_empty());

    let scan = run(&["scan", "fruit/"]);
    assert!(scan.status.success());
    assert_eq!(
        String::from_utf8_lossy(&scan.stdout),
        "fruit/apple\treddish\nfruit/odd\\tkey\tline\\nbreak\n"
    );

    let swapped = run(&[
        "cas",
        "fruit/apple",
        "--expected",
        "reddish",
        "--new",
        "green",
    ]);
    assert!(swapped.status.success());
    assert_eq!(swapped.stdout, b"green\n");
    let refused = run(&[
        "cas",
        "fruit/apple",
        "--expected",
        "reddish",
        "--new",
        "blue",
    ]);
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(refused.stdout, b"green\n");

    assert!(run(&["delete", "fruit/apple"]).status.success());
    assert_eq!(run(&["delete", "fruit/apple"]).status.code(), Some(1));

    let status = run(&["status"]);
    assert!(status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).contains("role Leader"));
}

#[test]
fn commands_on_an_embedded_store_print_values_alone_and_exit_one_on_a_missing_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("store");
    commands_print_values_alone_and_exit_one_on_a_missing_key(|args| flotilla(args, &data));
}

#[test]
fn commands_on_a_cluster_print_values_alone_and_exit_one_on_a_missing_key() {
    let mut cluster = Cluster::start(3);
    commands_print_values_alone_and_exit_one_on_a_missing_key(|args| {
        flotilla_cluster(args, cluster.path())
    });
    // Bytes that are not UTF-8 (written through the library) are escaped.
    cluster
        .client()
        .put(b"raw/\xff\x01", b"\xfe ok")
        .expect("put");
    let scan = flotilla_cluster(&["scan", "raw/"], cluster.path());
    assert!(scan.status.success());
    assert_eq!(
        String::from_utf8_lossy(&scan.stdout),
        "raw/\\xff\\x01\t\\xfe ok\n"
    );
    // A member down: status still prints the others, names the missing
    // one on stderr and fails (2), unlike a missing key (1).
    cluster.kill(2);
    let status = flotilla_cluster(&["status", "--timeout-secs", "2"], cluster.path());
    assert_eq!(status.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        stdout.contains("node 1 ") && stdout.contains("node 3 "),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(stderr.contains("node 2 unreachable"), "{stderr}");
}

#[test]
fn a_path_that_is_not_a_store_fails_with_a_message_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"hello").expect("write");
    let out = flotilla(&["get", "k"], &file);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("plain-file"), "{stderr}");
    assert!(stderr.contains("not a flotilla store"), "{stderr}");
    // A path with nothing there is not taken for an empty store by the
    // commands that only read or remove what exists; put creates one.
    let typo = dir.path().join("typo");
    for args in [
        &["get", "k"][..],
        &["scan", "k"],
        &["delete", "k"],
        &["status"],
    ] {
        let out = flotilla(args, &typo);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("no store at") && stderr.contains("typo"),
            "{args:?}: {stderr}"
        );
        assert!(!typo.exists(), "{args:?} created a store");
    }
    assert!(flotilla(&["put", "k", "v"], &typo).status.success());
    assert_eq!(flotilla(&["get", "k"], &typo).stdout, b"v\n");
}

#[test]
fn bench_reports_throughput_and_latency_for_both_engines() {
    let dir = tempfile::tempdir().expect("temp dir");
    for engine in ["flotilla", "rocksdb"] {
        let out = flotilla(
            &[
                "bench",
                "--engine",
                engine,
                "--clients",
                "4",
                "--ops",
                "200",
            ],
            &dir.path().join(engine),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("ops=200"), "{stdout}");
        assert!(
            stdout.contains("ops_per_sec=") && stdout.contains("p999_ms="),
            "{stdout}"
        );
    }
    let get = flotilla(
        &["bench", "--workload", "get", "--ops", "100"],
        &dir.path().join("g"),
    );
    assert!(
        get.status.success(),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    // Every operation's latency, one line each, on request.
    let log = dir.path().join("latencies.txt");
    let logged = flotilla(
        &[
            "bench",
            "--clients",
            "3",
            "--ops",
            "50",
            "--latency-log",
            log.to_str().expect("utf-8 path"),
        ],
        &dir.path().join("l"),
    );
    assert!(
        logged.status.success(),
        "{}",
        String::from_utf8_lossy(&logged.stderr)
    );
    let text = std::fs::read_to_string(&log).expect("latency log");
    let micros: Vec<u64> = text
        .lines()
        .map(|l| l.parse().unwrap_or_else(|_| panic!("not a number: {l:?}")))
        .collect();
    assert_eq!(micros.len(), 50);
    assert!(micros.iter().all(|&m| m > 0), "{micros:?}");
    let nowhere = dir.path().join("no such dir").join("latencies.txt");
    let refused = flotilla(
        &[
            "bench",
            "--ops",
            "5",
            "--latency-log",
            nowhere.to_str().expect("utf-8 path"),
        ],
        &dir.path().join("n"),
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("no such dir"), "{stderr}");
}

#[test]
fn bad_cluster_files_and_unreachable_members_get_messages_naming_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = dir.path().join("cl");
    let init = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["cluster", "init", "--nodes", "3", "--dir"])
        .arg(&cluster)
        .output()
        .expect("init");
    assert!(init.status.success());
    // Private keys are readable by their owner only; certificates by all.
    use std::os::unix::fs::PermissionsExt;
    let mode = |name: &str| {
        std::fs::metadata(cluster.join(name))
            .expect("file")
            .permissions()
            .mode()
            & 0o777
    };
    for key in ["node1.key.der", "node3.key.der", "client.key.der"] {
        assert_eq!(mode(key), 0o600, "{key}");
    }
    assert_eq!(mode("node1.der"), 0o644);
    // Initialising over an existing cluster is refused.
    let again = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["cluster", "init", "--nodes", "3", "--dir"])
        .arg(&cluster)
        .output()
        .expect("init again");
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a cluster"));
    // The shard count is written into every member's config; a count out
    // of range is refused before anything is written.
    let config = std::fs::read_to_string(cluster.join("node2.toml")).expect("config");
    assert!(config.contains("shards = 64"), "{config}");
    let other = dir.path().join("other");
    let refused = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "cluster", "init", "--nodes", "3", "--shards", "5000", "--dir",
        ])
        .arg(&other)
        .output()
        .expect("init with too many shards");
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("1 to 4096 shards, not 5000"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!other.exists());

    let serve = |config: &Path| {
        Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .output()
            .expect("serve")
    };
    // A malformed config names the file.
    let broken = cluster.join("broken.toml");
    std::fs::write(&broken, "node_id = \"one\"\n").expect("write");
    let out = serve(&broken);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.toml"));
    // cluster init preallocates every member's WAL; a preallocation above
    // the limit names the file and the limit.
    let node1 = std::fs::read_to_string(cluster.join("node1.toml")).expect("read config");
    assert!(node1.contains("wal_preallocation_mib = 64"), "{node1}");
    let oversized = cluster.join("oversized.toml");
    std::fs::write(
        &oversized,
        node1.replace("wal_preallocation_mib = 64", "wal_preallocation_mib = 4096"),
    )
    .expect("write");
    let out = serve(&oversized);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("oversized.toml") && stderr.contains("wal_preallocation_mib"),
        "{stderr}"
    );
    // Certificates that cannot serve as the node are refused before the
    // store opens, naming the files: another node's certificate and key, and
    // a certificate from another cluster's CA.
    let as_node2 = cluster.join("as-node2.toml");
    std::fs::write(
        &as_node2,
        node1
            .replace("cert = \"node1.der\"", "cert = \"node2.der\"")
            .replace("key = \"node1.key.der\"", "key = \"node2.key.der\""),
    )
    .expect("write");
    let out = serve(&as_node2);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("as-node2.toml")
            && stderr.contains("node2.der")
            && stderr.contains("node-1.flotilla"),
        "{stderr}"
    );
    let other = dir.path().join("other");
    let init_other = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["cluster", "init", "--nodes", "1", "--dir"])
        .arg(&other)
        .output()
        .expect("init");
    assert!(init_other.status.success());
    let foreign = cluster.join("foreign.toml");
    let foreign_cert = other.join("node1.der");
    let foreign_key = other.join("node1.key.der");
    std::fs::write(
        &foreign,
        node1
            .replace(
                "cert = \"node1.der\"",
                &format!("cert = {:?}", foreign_cert.display().to_string()),
            )
            .replace(
                "key = \"node1.key.der\"",
                &format!("key = {:?}", foreign_key.display().to_string()),
            ),
    )
    .expect("write");
    let out = serve(&foreign);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("foreign.toml") && stderr.contains("not valid under this cluster's CA"),
        "{stderr}"
    );
    assert!(
        !cluster.join("node1").exists(),
        "nothing was opened or created for a refused configuration"
    );
    // A missing certificate names the certificate file.
    std::fs::remove_file(cluster.join("node1.der")).expect("remove");
    let out = serve(&cluster.join("node1.toml"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("node1.der"));
    // A client of a cluster directory that does not exist.
    let out = flotilla_cluster(&["get", "k"], &dir.path().join("nowhere"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere"));
    // Members that are not running: a clear error, not a hang.
    let out = flotilla_cluster(&["put", "k", "v", "--timeout-secs", "1"], &cluster);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node"), "{stderr}");
    // A cluster file that lists no member names the file and the table.
    let client_file = cluster.join("cluster.toml");
    let listed = std::fs::read_to_string(&client_file).expect("read cluster.toml");
    let header = listed.find("[nodes]").expect("a [nodes] table");
    std::fs::write(&client_file, &listed[..header + "[nodes]\n".len()]).expect("write");
    let out = flotilla_cluster(&["get", "k"], &cluster);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cluster.toml") && stderr.contains("[nodes]"),
        "{stderr}"
    );
}

fn flotilla_cluster(args: &[&str], cluster: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .arg("--cluster")
        .arg(cluster)
        .output()
        .expect("run flotilla")
}

#[test]
fn import_then_word_count_then_scan_the_result() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("store");
    let a = dir.path().join("a.txt");
    let b = dir.path().join("b.txt");
    std::fs::write(&a, "the cat, the hat\n").expect("write");
    std::fs::write(&b, "The café 42 cat").expect("write");
    let (a, b) = (a.to_string_lossy(), b.to_string_lossy());
    let import = flotilla(&["import", &a, &b, "--prefix", "docs/"], &data);
    assert!(import.status.success(), "{import:?}");
    assert_eq!(
        flotilla(&["get", "docs/b.txt"], &data).stdout,
        b"The caf\xc3\xa9 42 cat\n"
    );
    let run = &[
        "mr", "run", "wc", "--input", "docs/", "--output", "wc/", "--reduce", "3",
    ];
    let ran = flotilla(run, &data);
    assert!(ran.status.success(), "{ran:?}");
    assert!(String::from_utf8_lossy(&ran.stdout).contains("committed_pairs=5"));
    let scan = flotilla(&["scan", "wc/"], &data);
    assert_eq!(
        String::from_utf8_lossy(&scan.stdout),
        "wc/The\t1\nwc/caf\u{e9}\t1\nwc/cat\t2\nwc/hat\t1\nwc/the\t2\n"
    );
    let status = flotilla(&["mr", "status"], &data);
    assert!(String::from_utf8_lossy(&status.stdout).contains("\tcommitted job wc"));
    // The output prefix now holds data: a second run is refused.
    let again = flotilla(run, &data);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
}
