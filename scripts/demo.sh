#!/usr/bin/env bash
# The main job: build flotilla, start a 3-node cluster on loopback over QUIC
# with mutual TLS, write and read through it, kill -9 the leader and keep
# going, benchmark, then stop every node gracefully; then run a MapReduce
# word count on an embedded store.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin flotilla
bin="${CARGO_TARGET_DIR:-target}/release/flotilla"
dir=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

"$bin" cluster init --nodes 3 --dir "$dir/cluster"
for id in 1 2 3; do
  "$bin" serve --config "$dir/cluster/node$id.toml" 2>>"$dir/node$id.log" &
  pids[$id]=$!
done

c=(--cluster "$dir/cluster")
"$bin" put greeting "hello, flotilla" "${c[@]}"
"$bin" append greeting "!" "${c[@]}"
echo "get greeting -> $("$bin" get greeting "${c[@]}")"
for i in 1 2 3; do "$bin" put "fruit/$i" "value $i" "${c[@]}"; done
echo "scan fruit/:"; "$bin" scan fruit/ "${c[@]}"
"$bin" status "${c[@]}"

leader=$("$bin" status "${c[@]}" | awk '/role Leader/ {print $2}')
echo "kill -9 the leader, node $leader"
kill -9 "${pids[$leader]}"; unset "pids[$leader]"
"$bin" put after-kill "still here" "${c[@]}"
echo "get after-kill -> $("$bin" get after-kill "${c[@]}")"
"$bin" serve --config "$dir/cluster/node$leader.toml" 2>>"$dir/node$leader.log" &
pids[$leader]=$!

echo "benchmark: 3-node cluster, 64 clients, 256-byte values"
"$bin" bench "${c[@]}" --clients 64 --ops 20000
"$bin" bench "${c[@]}" --clients 64 --ops 20000 --workload get

echo "MapReduce on the cluster: word count of this repository's docs, workers on every node"
"$bin" import README.md docs/ARCHITECTURE.md --prefix docs/ "${c[@]}"
"$bin" mr run wc --input docs/ --output wc/ --reduce 4 "${c[@]}"
echo "count of 'Raft' -> $("$bin" get wc/Raft "${c[@]}")"
"$bin" mr status "${c[@]}"

for id in "${!pids[@]}"; do kill -TERM "${pids[$id]}"; done
for id in "${!pids[@]}"; do wait "${pids[$id]}"; done
pids=()
echo "all nodes stopped cleanly"

echo "MapReduce on an embedded store: the same word count, checked against a sequential count"
"$bin" import README.md docs/ARCHITECTURE.md --prefix docs/ --data "$dir/mr"
"$bin" mr run wc --input docs/ --output wc/ --reduce 4 --compare-sequential --data "$dir/mr"
echo "count of 'Raft' -> $("$bin" get wc/Raft --data "$dir/mr")"
"$bin" mr status --data "$dir/mr"
