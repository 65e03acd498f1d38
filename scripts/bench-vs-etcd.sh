#!/usr/bin/env bash
# etcd 3.4 and flotilla side by side on this machine: for each workload a
# fresh 3-member loopback cluster of each (etcd first, then flotilla), the
# same keys, values and client tasks (benches/etcd-driver mirrors `flotilla
# bench --cluster`), then a table of ops/s, p50 and the ratio. Clients talk
# to the leader (etcd's is looked up, flotilla's clients follow its hints).
# Usage: bash scripts/bench-vs-etcd.sh [ROUNDS]   (default 1; the table
# shows the median of the rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-1}"
missing=()
command -v etcd >/dev/null || missing+=(etcd-server etcd-client)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --bin flotilla
CARGO_TARGET_DIR="$target/etcd-driver" cargo build --release \
    --manifest-path benches/etcd-driver/Cargo.toml
flotilla="$target/release/flotilla"
driver="$target/etcd-driver/release/etcd-driver"
dir=$(mktemp -d)
pids=()
stop() {
    kill -9 "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
}
trap 'stop; rm -rf "$dir"' EXIT

# Sets `leader` (not through $(...): the members must be this shell's
# children for `stop` to kill them).
start_etcd() {
    rm -rf "$dir/etcd"
    mkdir -p "$dir/etcd"
    local cluster="" i
    for i in 1 2 3; do cluster+="e$i=http://127.0.0.1:$((23800 + i)),"; done
    for i in 1 2 3; do
        etcd --name "e$i" --data-dir "$dir/etcd/e$i" \
            --listen-client-urls "http://127.0.0.1:$((23700 + i))" \
            --advertise-client-urls "http://127.0.0.1:$((23700 + i))" \
            --listen-peer-urls "http://127.0.0.1:$((23800 + i))" \
            --initial-advertise-peer-urls "http://127.0.0.1:$((23800 + i))" \
            --initial-cluster "${cluster%,}" --initial-cluster-state new \
            --initial-cluster-token bench >"$dir/etcd/e$i.log" 2>&1 &
        pids+=($!)
    done
    local all="http://127.0.0.1:23701,http://127.0.0.1:23702,http://127.0.0.1:23703"
    until ETCDCTL_API=3 etcdctl --endpoints="$all" put ready 1 >/dev/null 2>&1; do sleep 0.2; done
    leader=$(ETCDCTL_API=3 etcdctl --endpoints="$all" endpoint status | awk -F', ' '$5 == "true" { print $1 }')
}

start_flotilla() {
    rm -rf "$dir/fl"
    "$flotilla" cluster init --nodes 3 --dir "$dir/fl" >/dev/null
    local i
    for i in 1 2 3; do
        "$flotilla" serve --config "$dir/fl/node$i.toml" 2>"$dir/fl/node$i.log" &
        pids+=($!)
    done
    until "$flotilla" put ready 1 --cluster "$dir/fl" >/dev/null 2>&1; do sleep 0.2; done
}

results="$dir/results"
: >"$results"
for round in $(seq "$rounds"); do
    for spec in "put 1 3000" "put 64 30000" "put 256 30000" "get 64 30000"; do
        read -r workload clients ops <<<"$spec"
        start_etcd
        line=$("$driver" --endpoints "$leader" --workload "$workload" --clients "$clients" --ops "$ops")
        stop
        echo "round $round etcd:     $line"
        echo "$workload $clients etcd $line" >>"$results"
        start_flotilla
        line=$("$flotilla" bench --cluster "$dir/fl" --workload "$workload" --clients "$clients" --ops "$ops")
        stop
        echo "round $round flotilla: $line"
        echo "$workload $clients flotilla $line" >>"$results"
    done
done
python3 - "$results" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    workload, clients, engine = line.split()[:3]
    rate = float(re.search(r'ops_per_sec=([\d.]+)', line).group(1))
    p50 = float(re.search(r'p50_ms=([\d.]+)', line).group(1))
    runs.setdefault((workload, int(clients)), {}).setdefault(engine, []).append((rate, p50))
print('| workload | clients | etcd ops/s (p50 ms) | flotilla ops/s (p50 ms) | ratio of medians | ratio per round |')
print('|---|---|---|---|---|---|')
for (workload, clients), by in runs.items():
    med = {e: (statistics.median(r for r, _ in v), statistics.median(p for _, p in v)) for e, v in by.items()}
    (er, ep), (fr, fp) = med['etcd'], med['flotilla']
    # Each round ran etcd and flotilla back to back: their ratio is the
    # least disturbed by the machine's drift.
    per_round = [f / e for (e, _), (f, _) in zip(by['etcd'], by['flotilla'])]
    spread = f'{min(per_round):.2f}–{max(per_round):.2f}'
    print(f'| {workload} | {clients} | {er:,.0f} ({ep:.2f}) | {fr:,.0f} ({fp:.2f}) | {fr / er:.2f} | {spread} |')
PY
