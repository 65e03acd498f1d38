//! Crash-consistency test of the RocksDB log store with real SIGKILLs.
//!
//! ```text
//! cargo run --release -p flotilla-wal --features rocksdb --example crashtest -- --cycles 100
//! ```
//!
//! Each cycle starts a child process that replays a seeded sequence of log
//! writes (appends, suffix overwrites, hard-state changes, compactions) across
//! four groups against a `RocksLogStore` with `Durability::Sync` and a 1 MiB
//! WAL preallocation (so its writes overwrite a reused WAL file, whose stale
//! records follow the last one written when it dies), printing the
//! number of each write once it is acknowledged. Interleaved with them it runs
//! a snapshot workload on a fifth group (`snapshots.rs`): applies (some
//! unsynced, as the node runtime writes them), snapshot builds, received
//! snapshots staged in pieces and installed. The child dies
//! by SIGKILL — from the parent at a random moment, or by itself at a named
//! fail point (around the log write and its sync, around a hard-state write,
//! around a compaction, around staging a snapshot chunk and around a
//! snapshot install). The parent then reopens the store and compares it with
//! the models: the logs must equal the state after exactly `j` writes for some
//! `j` no smaller than the last acknowledged write, and the snapshot group's
//! data, applied state, snapshots and log start the state after some prefix of
//! its operations no shorter than the acknowledged ones (its current snapshot
//! must read back whole). Otherwise an acknowledged write was lost (`lost`) or
//! the store holds a state no prefix produces (`torn`). The last line reads
//! `cycles=N lost=L torn=T ...`; the exit status is non-zero unless both are 0.

mod snapshots;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_wal::{
    failpoint, Durability, Entry, EntryPayload, GroupId, HardState, Index, LogStore, LogWrite,
    Membership, OpenOptions, RocksLogStore, SnapshotMeta, StorageError,
};

const GROUPS: u64 = 4;
const WRITES_PER_CHILD: u64 = 20_000;
/// WAL bytes each child preallocates at open.
const CHILD_WAL_PREALLOCATION: u64 = 1 << 20;
/// Most submitted-but-unacknowledged writes in the child.
const MAX_IN_FLIGHT: u64 = 8;
const SNAPSHOT_OPS_PER_CHILD: usize = 5_000;

/// SplitMix64, so the parent can regenerate the child's writes from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the store should hold for one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct GroupModel {
    hard_state: HardState,
    snapshot: SnapshotMeta,
    entries: BTreeMap<Index, Entry>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    groups: BTreeMap<GroupId, GroupModel>,
}

impl Model {
    fn last_index(&self, group: GroupId) -> Index {
        let g = self.groups.get(&group);
        g.and_then(|g| g.entries.keys().next_back().copied())
            .unwrap_or_else(|| g.map_or(0, |g| g.snapshot.index))
    }

    fn apply(&mut self, write: &LogWrite) {
        let g = self.groups.entry(write.group).or_default();
        if let Some(meta) = &write.compact {
            if meta.index > g.snapshot.index {
                g.entries = g.entries.split_off(&(meta.index + 1));
                g.snapshot = meta.clone();
            }
        }
        if let Some(first) = write.entries.first() {
            g.entries.split_off(&first.index);
            for e in &write.entries {
                g.entries.insert(e.index, e.clone());
            }
        }
        if let Some(hs) = write.hard_state {
            g.hard_state = hs;
        }
    }

    /// The next write of the seeded sequence, given the state so far.
    fn next_write(&self, rng: &mut Rng) -> LogWrite {
        let group = 1 + rng.below(GROUPS);
        let empty = GroupModel::default();
        let g = self.groups.get(&group).unwrap_or(&empty);
        let last = self.last_index(group);
        let term = g.hard_state.term.max(1);
        let mut write = LogWrite {
            group,
            ..LogWrite::default()
        };
        match rng.below(10) {
            0 => {
                // A new term: hard state first, as a candidate or follower would.
                write.hard_state = Some(HardState {
                    term: term + 1,
                    vote: rng.below(3) + 1,
                    commit: g.hard_state.commit,
                });
            }
            1 if last > g.snapshot.index + 3 => {
                // A follower overwrites a conflicting suffix with entries of the current term.
                let from = last - rng.below(3);
                write.entries = (from..from + 1 + rng.below(3))
                    .map(|i| entry(group, i, term, rng))
                    .collect();
            }
            2 if last > g.snapshot.index + 20 => {
                let index = last - 10;
                let term_at = g.entries.get(&index).map_or(g.snapshot.term, |e| e.term);
                write.compact = Some(SnapshotMeta {
                    index,
                    term: term_at,
                    membership: Membership::with_voters([1, 2, 3]),
                });
            }
            _ => {
                write.entries = (last + 1..=last + 1 + rng.below(8))
                    .map(|i| entry(group, i, term, rng))
                    .collect();
                let commit = g.hard_state.commit.max(last.saturating_sub(2));
                write.hard_state = Some(HardState {
                    commit,
                    ..g.hard_state
                });
            }
        }
        write
    }
}

fn entry(group: GroupId, index: Index, term: u64, rng: &mut Rng) -> Entry {
    let len = 16 + rng.below(300) as usize;
    let fill = (group ^ index ^ term) as u8;
    Entry {
        index,
        term,
        payload: EntryPayload::Normal(vec![fill; len]),
    }
}

/// The seeded sequence of writes.
fn replay(seed: u64) -> Vec<LogWrite> {
    let mut rng = Rng(seed);
    let mut model = Model::default();
    let mut writes = Vec::new();
    for _ in 0..WRITES_PER_CHILD {
        let write = model.next_write(&mut rng);
        model.apply(&write);
        writes.push(write);
    }
    writes
}

/// The first `j` in `from..=to` whose state (after writes `1..=j`) equals `disk`.
fn matching_prefix(writes: &[LogWrite], disk: &Model, from: usize, to: usize) -> Option<usize> {
    let mut model = Model::default();
    for (k, write) in writes.iter().enumerate().take(to) {
        if k >= from && model == *disk {
            return Some(k);
        }
        model.apply(write);
    }
    (to >= from && model == *disk).then_some(to)
}

fn read_number(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn child(dir: &str, seed: u64) -> ExitCode {
    let options = OpenOptions {
        wal_preallocation: CHILD_WAL_PREALLOCATION,
        ..OpenOptions::new(Durability::Sync)
    };
    let store = match RocksLogStore::open_with(dir, options) {
        Ok(store) => Arc::new(store),
        Err(e) => {
            eprintln!("child: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Resume the sequences where the durable state says the last run stopped.
    let start = read_number(&format!("{dir}.next"));
    let snap_start = read_number(&format!("{dir}.snext")) as usize;
    let writes = replay(seed);
    let (ops, remotes) = snapshots::plan(seed, SNAPSHOT_OPS_PER_CHILD);
    let mut snap_state = snapshots::state_after(&ops, &remotes, snap_start);
    let mut snap_next = snap_start;
    let mut snap_store = snapshots::open_store(&store);
    {
        // The parent times its kill from here, so slow start-up is not
        // mistaken for a crash window.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    let (ack_tx, ack_rx) = crossbeam_channel::unbounded::<(u64, Result<(), StorageError>)>();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut in_flight = 0;
    let mut next = start as usize;
    loop {
        while in_flight < MAX_IN_FLIGHT && next < writes.len() {
            let k = next as u64 + 1;
            let tx = ack_tx.clone();
            store.submit(
                vec![writes[next].clone()],
                Box::new(move |r| {
                    let _ = tx.send((k, r));
                }),
            );
            in_flight += 1;
            next += 1;
        }
        // One snapshot operation per round, synchronous, acknowledged once
        // durable; an unsynced apply is not, until a later operation is.
        if let Some(op) = ops.get(snap_next) {
            if let Err(e) = snapshots::run(&store, &mut snap_store, &snap_state, op, &remotes) {
                eprintln!("child: snapshot operation {} failed: {e}", snap_next + 1);
                return ExitCode::FAILURE;
            }
            snap_state.apply_op(op, &remotes);
            snap_next += 1;
            if !matches!(op, snapshots::Op::ApplyUnsynced) {
                let _ = writeln!(out, "sack {snap_next}");
                let _ = out.flush();
            }
        }
        if in_flight == 0 {
            if snap_next < ops.len() {
                continue;
            }
            return ExitCode::SUCCESS;
        }
        match ack_rx.recv() {
            Ok((k, Ok(()))) => {
                in_flight -= 1;
                let _ = writeln!(out, "ack {k}");
                let _ = out.flush();
            }
            Ok((k, Err(e))) => {
                eprintln!("child: write {k} failed: {e}");
                return ExitCode::FAILURE;
            }
            Err(_) => return ExitCode::FAILURE,
        }
    }
}

/// Reads the whole store into a model, checking that the raw log holds no
/// entry the model cannot see (left behind by a truncation or compaction)
/// and that the store's byte count matches what it holds.
fn read_store(store: &RocksLogStore) -> Result<Model, String> {
    let mut model = Model::default();
    let groups = store.groups().map_err(|e| e.to_string())?;
    for group in groups {
        if group == snapshots::GROUP {
            continue;
        }
        let snapshot = store.snapshot_meta(group).map_err(|e| e.to_string())?;
        let last = store.last_index(group).map_err(|e| e.to_string())?;
        let entries = store
            .entries(group, snapshot.index + 1, last, u64::MAX)
            .map_err(|e| e.to_string())?;
        let raw = raw_log_indexes(store, group)?;
        let seen: Vec<Index> = entries.iter().map(|e| e.index).collect();
        if raw != seen {
            return Err(format!(
                "group {group}: the log holds entries {:?}..{:?} ({} of them), readable are {} after snapshot {}",
                raw.first(),
                raw.last(),
                raw.len(),
                seen.len(),
                snapshot.index
            ));
        }
        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        let counted = store.log_bytes(group).map_err(|e| e.to_string())?;
        if counted != bytes {
            return Err(format!(
                "group {group}: log_bytes says {counted}, the entries count {bytes}"
            ));
        }
        let g = GroupModel {
            hard_state: store.hard_state(group).map_err(|e| e.to_string())?,
            entries: entries.into_iter().map(|e| (e.index, e)).collect(),
            snapshot,
        };
        if g != GroupModel::default() {
            model.groups.insert(group, g);
        }
    }
    Ok(model)
}

/// Every index stored under `group` in the raw log column family.
fn raw_log_indexes(store: &RocksLogStore, group: GroupId) -> Result<Vec<Index>, String> {
    use flotilla_wal::rocksdb::{Direction, IteratorMode};
    let db = store.db();
    let cf = db
        .cf_handle(flotilla_wal::keys::RAFT_LOG_CF)
        .ok_or("no raft_log column family")?;
    let start = flotilla_wal::keys::log_key(group, 0);
    let mut out = Vec::new();
    for item in db.iterator_cf(cf, IteratorMode::From(&start, Direction::Forward)) {
        let (key, _) = item.map_err(|e| e.to_string())?;
        match flotilla_wal::keys::parse_log_key(&key) {
            Some((g, index)) if g == group => out.push(index),
            _ => break,
        }
    }
    Ok(out)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let (Some(dir), Some(seed)) = (args.get(2), args.get(3).and_then(|s| s.parse().ok()))
        else {
            eprintln!("usage: crashtest --child DIR SEED");
            return ExitCode::from(2);
        };
        return child(dir, seed);
    }
    let mut cycles = 20u64;
    let mut seed = 1u64;
    let mut i = 1;
    while i < args.len() {
        match (
            args[i].as_str(),
            args.get(i + 1).and_then(|v| v.parse().ok()),
        ) {
            ("--cycles", Some(v)) => cycles = v,
            ("--seed", Some(v)) => seed = v,
            _ => {
                eprintln!("usage: crashtest [--cycles N] [--seed S]");
                return ExitCode::from(2);
            }
        }
        i += 2;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("crashtest: cannot find own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let root = std::env::temp_dir().join(format!("flotilla-crashtest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = root.join("store");
    let dir_str = dir.to_string_lossy().to_string();
    let mut rng = Rng(seed ^ 0xC0FFEE);
    let writes = replay(seed);
    let (ops, remotes) = snapshots::plan(seed, SNAPSHOT_OPS_PER_CHILD);
    let (mut lost, mut torn, mut killed_at_failpoint, mut acked_total) = (0u64, 0u64, 0u64, 0u64);
    let mut durable = 0u64; // writes the store is known to contain
    let mut snap_durable = 0usize; // snapshot operations the store is known to reflect
    let mut snap_acked_total = 0usize;
    let mut failpoint_hits: BTreeMap<&str, u32> = BTreeMap::new();
    let started = Instant::now();
    for cycle in 0..cycles {
        if let Err(e) = std::fs::create_dir_all(&root) {
            eprintln!("crashtest: {e}");
            return ExitCode::FAILURE;
        }
        let _ = std::fs::write(format!("{dir_str}.next"), durable.to_string());
        let _ = std::fs::write(format!("{dir_str}.snext"), snap_durable.to_string());
        let mut command = Command::new(&exe);
        command
            .args(["--child", &dir_str, &seed.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let failpoint = (rng.below(2) == 0)
            .then(|| failpoint::ALL[rng.below(failpoint::ALL.len() as u64) as usize]);
        if let Some(fp) = failpoint {
            command.env("FLOTILLA_FAILPOINT", fp);
        }
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("crashtest: cannot start child: {e}");
                return ExitCode::FAILURE;
            }
        };
        // Read acknowledgements on a thread; kill after a random delay.
        let Some(stdout) = child.stdout.take() else {
            return ExitCode::FAILURE;
        };
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<()>(1);
        let reader = std::thread::spawn(move || {
            let (mut last, mut snap_last) = (0u64, 0usize);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "ready" {
                    let _ = ready_tx.try_send(());
                }
                if let Some(k) = line.strip_prefix("ack ").and_then(|k| k.parse().ok()) {
                    last = last.max(k);
                }
                if let Some(k) = line.strip_prefix("sack ").and_then(|k| k.parse().ok()) {
                    snap_last = snap_last.max(k);
                }
            }
            (last, snap_last)
        });
        // Until the child is ready, or it gave up (its stdout closed).
        let _ = ready_rx.recv_timeout(Duration::from_secs(120));
        let delay = Duration::from_millis(1 + rng.below(300));
        let deadline = Instant::now() + delay;
        let mut exited = None;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        match exited {
            None => {
                // SIGKILL: no destructors, no flush, exactly like a crash.
                let _ = child.kill();
                let _ = child.wait();
            }
            Some(status) if status.signal() == Some(libc::SIGKILL) => {
                killed_at_failpoint += 1;
                if let Some(fp) = failpoint {
                    *failpoint_hits.entry(fp).or_insert(0u32) += 1;
                }
            }
            Some(status) if status.success() => {}
            Some(status) => {
                println!("cycle {cycle}: the child failed ({status})");
                torn += 1;
                break;
            }
        }
        let (acked, snap_acked) = reader.join().unwrap_or((0, 0));
        acked_total += acked.saturating_sub(durable);
        snap_acked_total += snap_acked.saturating_sub(snap_durable);
        let store = match RocksLogStore::open(&dir, Durability::Sync) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                println!("cycle {cycle}: store does not reopen: {e}");
                torn += 1;
                break;
            }
        };
        let on_disk = match read_store(&store) {
            Ok(m) => m,
            Err(e) => {
                println!("cycle {cycle}: reading the store failed: {e}");
                torn += 1;
                break;
            }
        };
        let snap_on_disk = snapshots::read(&store);
        drop(store);
        // Snapshot operations run one at a time: the store reflects the last
        // acknowledged one, or any later one up to the next that would have
        // been acknowledged (unsynced applies are not, and another group's
        // synced write may have made them durable).
        let snap_floor = snap_acked.max(snap_durable);
        match snap_on_disk {
            Err(e) => {
                println!("cycle {cycle}: snapshot group: {e}");
                torn += 1;
                break;
            }
            Ok(actual) => {
                let unacknowledged = ops[snap_floor.min(ops.len())..]
                    .iter()
                    .take_while(|op| matches!(op, snapshots::Op::ApplyUnsynced))
                    .count();
                let ceiling = (snap_floor + unacknowledged + 1).min(ops.len());
                let found = (snap_floor..=ceiling)
                    .find(|&j| snapshots::state_after(&ops, &remotes, j) == actual);
                match found {
                    Some(j) => snap_durable = j,
                    None => match (0..snap_floor)
                        .rev()
                        .find(|&j| snapshots::state_after(&ops, &remotes, j) == actual)
                    {
                        Some(j) => {
                            println!("cycle {cycle}: snapshot group holds the state after operation {j}, but {snap_floor} was acknowledged");
                            lost += 1;
                            snap_durable = j;
                        }
                        None => {
                            println!("cycle {cycle}: snapshot group matches no prefix of its operations (last acknowledged {snap_floor})");
                            torn += 1;
                            break;
                        }
                    },
                }
            }
        }
        let floor = acked.max(durable) as usize;
        // Writes are submitted in order with at most MAX_IN_FLIGHT outstanding,
        // and each is one atomic batch: the store must hold a prefix that ends
        // at or after the last acknowledged write.
        let ceiling = (floor + MAX_IN_FLIGHT as usize).min(writes.len());
        match matching_prefix(&writes, &on_disk, floor, ceiling) {
            Some(j) => durable = j as u64,
            None => match matching_prefix(&writes, &on_disk, 0, floor) {
                Some(j) => {
                    println!("cycle {cycle}: store holds the state after write {j}, but write {floor} was acknowledged");
                    lost += 1;
                    durable = j as u64;
                }
                None => {
                    println!("cycle {cycle}: store matches no prefix of the writes (last acknowledged {floor})");
                    torn += 1;
                    break;
                }
            },
        }
        if durable as usize >= writes.len() && snap_durable >= ops.len() {
            // Both sequences are exhausted: start over with a fresh store.
            let _ = std::fs::remove_dir_all(&root);
            durable = 0;
            snap_durable = 0;
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    for (fp, hits) in &failpoint_hits {
        println!("killed at {fp}: {hits}");
    }
    println!(
        "cycles={cycles} lost={lost} torn={torn} acked_writes={acked_total} acked_snapshot_ops={snap_acked_total} failpoint_kills={killed_at_failpoint} seconds={:.1}",
        started.elapsed().as_secs_f64()
    );
    if lost == 0 && torn == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
