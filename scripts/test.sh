#!/usr/bin/env bash
# The full test command: formatting, lints, every test, and the randomized
# simulator over 1,000 seeds. README.md and .ci/run both run exactly this.
# The last line sums up every test run: "tests: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace 2>&1 | tee "$log"
echo "== simulator, 1000 seeds"
cargo run --release -p flotilla-engine --example sim -- --seeds 1000 2>&1 | tee -a "$log"

passed=$(grep -oE '^test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
# The simulator counts as one test: it passed if its summary shows no violations.
if grep -qE '^seeds=[0-9]+ violations=0 ' "$log"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
echo "tests: ${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
