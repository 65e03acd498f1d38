//! The shard controller's machine on a real node: the same group loop as a
//! data group runs it over RocksDB, beside a data group, through
//! snapshots, compaction and restarts.

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla::engine::node::{NoNetwork, Node, NodeOptions, Pending, ReadConsistency};
use flotilla::engine::Membership;
use flotilla::shard::{
    Controller, ControllerCommand, ControllerError, ControllerOp, ControllerReply, Query,
    ShardConfig, ShardPolicy,
};
use flotilla::CompactionPolicy;

/// The controller's group on this test's node.
const CONTROLLER: u64 = 1000;

fn wait<T>(pending: Pending<T>) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime
        .block_on(pending)
        .expect("the group loop answered")
        .expect("the group loop served the request")
}

fn open(path: &std::path::Path) -> (Node, flotilla::engine::node::GroupHandle<ControllerReply>) {
    let mut options = NodeOptions::new(1, path, ShardPolicy::default().setup());
    // Snapshot and compact every 10 entries: the controller must come back
    // from its snapshots as well as from its log.
    options.compaction = CompactionPolicy {
        max_log_entries: 10,
        ..CompactionPolicy::default()
    };
    let mut node = Node::open(options, Arc::new(NoNetwork)).expect("open");
    let controller = node
        .start_group(
            CONTROLLER,
            &Membership::with_voters([1]),
            |data, initial| Controller::load(data, 64, initial),
        )
        .expect("start the controller group");
    (node, controller)
}

fn query(
    controller: &flotilla::engine::node::GroupHandle<ControllerReply>,
    query: Query,
) -> ShardConfig {
    let bytes = wait(
        controller
            .read(ReadConsistency::Linearizable, Some(query.key()))
            .expect("read"),
    )
    .expect("a configuration");
    ShardConfig::decode(&bytes).expect("decodes")
}

#[test]
fn the_controller_runs_in_a_node_group_loop_and_keeps_every_configuration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("node");
    let mut seen = Vec::new();
    {
        let (node, controller) = open(&path);
        let change = |seq: u64, op: ControllerOp| -> ControllerReply {
            let command = ControllerCommand { client: 7, seq, op }.encode();
            wait(controller.write(command).expect("write"))
        };
        let mut seq = 0;
        for group in 1..=20u64 {
            seq += 1;
            let num = change(
                seq,
                ControllerOp::Join(BTreeMap::from([(group, vec![group])])),
            )
            .expect("join applied");
            assert_eq!(num, group);
        }
        seq += 1;
        assert_eq!(change(seq, ControllerOp::Leave(vec![3, 4])), Ok(21));
        // A retry is answered from the session; a bad change is refused.
        assert_eq!(change(seq, ControllerOp::Leave(vec![5])), Ok(21));
        seq += 1;
        assert_eq!(
            change(seq, ControllerOp::Leave(vec![3])),
            Err(ControllerError::UnknownGroup(3))
        );
        for num in 0..=21 {
            seen.push(query(&controller, Query::Number(num)));
        }
        assert_eq!(query(&controller, Query::Latest), seen[21]);
        assert_eq!(seen[21].groups.len(), 18);
        // The data group beside it is untouched by all this.
        let data = node.group(1).expect("the data group");
        assert_eq!(
            wait(
                data.read(ReadConsistency::Linearizable, Some(b"x".to_vec()))
                    .expect("read")
            ),
            None
        );
        // Snapshots are built on a helper thread after the rounds that
        // pass the threshold: wait for one to be taken.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while wait_status(&controller).raft.snapshot_index == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the controller never compacted its log"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        node.shutdown();
    }
    // Reopened, the controller has every configuration it made.
    let (node, controller) = open(&path);
    for (num, config) in seen.iter().enumerate() {
        assert_eq!(&query(&controller, Query::Number(num as u64)), config);
    }
    node.shutdown();
}

fn wait_status(
    controller: &flotilla::engine::node::GroupHandle<ControllerReply>,
) -> flotilla::GroupStatus {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime
        .block_on(controller.status().expect("status"))
        .expect("status answered")
}
