#!/usr/bin/env bash
# The full test command: formatting, lints, every test, the randomized
# simulator over 1,000 seeds, and the SIGKILL crash test of the RocksDB store
# over 100 cycles. README.md and .ci/run both run exactly this.
# The last line sums up every test run: "tests: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# From here on every suite runs even if an earlier one fails, so the summary
# counts them all.
set +e
echo "== cargo test"
# --no-fail-fast: a failing test binary must not hide the others' results.
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
echo "== simulator, 1000 seeds"
cargo run --release -p flotilla-engine --example sim -- --seeds 1000 2>&1 | tee -a "$log"
# The crash test runs the binary `cargo test --workspace` built: a release
# build, or a `cargo run -p flotilla-wal` build with other features unified,
# would compile RocksDB's C++ once more.
echo "== crash test, 100 cycles"
"${CARGO_TARGET_DIR:-target}/debug/examples/crashtest" --cycles 100 2>&1 | tee -a "$log"
set -e

passed=$(grep -oE '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
# A test target that does not compile prints no result line.
if grep -qE '^error: could not compile' "$log"; then failed=$((failed + 1)); fi
# The simulator and the crash test count as one test each, passed if their
# summary line shows no violations / nothing lost or torn.
if grep -qE '^seeds=[0-9]+ violations=0 ' "$log"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
if grep -qE '^cycles=[0-9]+ lost=0 torn=0 ' "$log"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
echo "tests: ${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
