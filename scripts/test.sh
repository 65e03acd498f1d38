#!/usr/bin/env bash
# The full test command: formatting, lints, the test command's own
# self-check, every test, the randomized simulator over the regression seeds
# and a window of 1,000 fresh seeds, and the SIGKILL crash test of the
# RocksDB store over 100 cycles. README.md and .ci/run both run exactly this.
#
# Seeds move: the window and the crash test's seed derive from the commit and
# the time, and are printed first; FLOTILLA_SEED=N reruns a window exactly.
# Every suite counts by its exit status (scripts/suites.sh): a test binary
# killed by a signal fails the run even though it printed no result line.
# The last line sums up: "tests: N passed, M failed; seeds ...".
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/suites.sh
source scripts/suites.sh
trap 'rm -f "$suites_log"' EXIT

if [ -n "${FLOTILLA_SEED:-}" ]; then
    seed=$FLOTILLA_SEED
else
    # 48 bits of a hash of the commit and the time: far from the small
    # seeds every earlier run covered, and new on every run.
    commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
    seed=$((16#$(printf '%s %s' "$commit" "$(date +%s%N)" | sha256sum | cut -c1-12)))
fi
sim_seeds=1000
seed_window="simulator seeds ${seed}..$((seed + sim_seeds - 1)) plus the regression seeds, crash test seed ${seed}"
echo "== seeds: ${seed_window}"
echo "   rerun this window: FLOTILLA_SEED=${seed} bash scripts/test.sh"
echo "   one simulator seed: cargo run --release -p flotilla-engine --example sim -- --seed S --trace"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# From here on every suite runs even if an earlier one fails, so the summary
# counts them all.
set +e
echo "== the test command's self-check"
run_checked "self-check (scripts/check-test-script.sh)" no_gate bash scripts/check-test-script.sh
echo "== cargo test"
# --no-fail-fast: a failing test binary must not hide the others' results.
run_cargo_tests "cargo test" cargo test --workspace --no-fail-fast
echo "== simulator, regression seeds and ${sim_seeds} fresh seeds from ${seed}"
run_checked "simulator" sim_gate \
    cargo run --release -p flotilla-engine --example sim -- \
    --first "$seed" --seeds "$sim_seeds" --regression
# The crash test runs the binary `cargo test --workspace` built: a release
# build, or a `cargo run -p flotilla-wal` build with other features unified,
# would compile RocksDB's C++ once more.
echo "== crash test, 100 cycles, seed ${seed}"
run_checked "crash test" crash_gate \
    "${CARGO_TARGET_DIR:-target}/debug/examples/crashtest" --cycles 100 --seed "$seed"
set -e

if [ -n "$failed_suites" ]; then
    echo "failed suites:"
    printf '%s' "$failed_suites"
fi
echo "tests: ${tests_passed} passed, ${tests_failed} failed; ${seed_window}"
[ "$tests_failed" -eq 0 ] && [ -z "$failed_suites" ]
