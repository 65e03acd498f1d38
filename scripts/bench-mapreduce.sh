#!/usr/bin/env bash
# MapReduce word count over ~130 MB of generated text stored in an embedded
# store: prints the job's MB/s, a single-threaded count of the same stored
# data for the ratio (checked to agree), and peak RSS.
# With --cluster, first the same word count on a 3-node loopback cluster
# (every member runs workers), with each member's peak RSS.
# Usage: bash scripts/bench-mapreduce.sh [MB] [--cluster]   (default 130)
set -euo pipefail
cd "$(dirname "$0")/.."
mb="${1:-130}"
mode="${2:-}"
cargo build --release --bin flotilla
bin="${CARGO_TARGET_DIR:-target}/release/flotilla"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir "$dir/corpus"
# 1 MB files of Zipf-distributed words from a 300,000-word vocabulary with
# letters outside ASCII, capitals and punctuation.
python3 - "$dir/corpus" "$mb" <<'PY'
import itertools, random, sys
out_dir, mb = sys.argv[1], int(sys.argv[2])
random.seed(7)
letters = 'abcdefghijklmnopqrstuvwxyzéüßøåΩσλ'
vocab = [''.join(random.choice(letters) for _ in range(random.randint(2, 12)))
         for _ in range(300000)]
cum = list(itertools.accumulate(1.0 / (i + 1) ** 0.9 for i in range(len(vocab))))
for f in range(mb):
    words = random.choices(vocab, cum_weights=cum, k=135000)
    parts = []
    for i, w in enumerate(words):
        parts.append(w.capitalize() if i % 17 == 0 else w)
        parts.append('\n' if i % 12 == 11 else (', ' if i % 7 == 0 else ' '))
    with open(f'{out_dir}/book{f:03}.txt', 'w') as fh:
        fh.write(''.join(parts))
PY
if [ "$mode" = "--cluster" ]; then
    "$bin" cluster init --nodes 3 --dir "$dir/cl" >/dev/null
    pids=()
    for i in 1 2 3; do
        "$bin" serve --config "$dir/cl/node$i.toml" 2>"$dir/node$i.log" &
        pids+=($!)
    done
    trap 'kill -9 "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
    until "$bin" put bench-ready 1 --cluster "$dir/cl" 2>/dev/null; do sleep 0.2; done
    echo "== 3-node cluster"
    "$bin" import "$dir"/corpus/*.txt --prefix books/ --cluster "$dir/cl"
    "$bin" mr run wc --input books/ --output wc/ --reduce 10 --workers 2 --cluster "$dir/cl"
    for i in 0 1 2; do
        echo "node$((i + 1)) $(grep VmHWM "/proc/${pids[$i]}/status" | tr -s ' ')"
    done
    kill -TERM "${pids[@]}"
    wait "${pids[@]}" || true
    echo "== embedded store, with the sequential count"
fi
"$bin" import "$dir"/corpus/*.txt --prefix books/ --data "$dir/db"
/usr/bin/time -f "peak_rss_kb=%M" "$bin" mr run wc --input books/ --output wc/ \
    --reduce 10 --workers 2 --compare-sequential --data "$dir/db"
