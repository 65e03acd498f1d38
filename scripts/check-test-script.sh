#!/usr/bin/env bash
# The test command's self-check (run by scripts/test.sh before the suites):
# feeds the counting in scripts/suites.sh runs it must count as failed — a
# test binary killed by SIGABRT, one killed by a stack overflow, a simulator
# run that elected and committed nothing, a crash test that acknowledged
# nothing or never hit a fail point, a simulator whose clients completed
# nothing — and runs it must count as passed, and
# exits non-zero if any is counted wrongly. The crashing binary is
# engine/tests/crash_probe.rs, built only with the `crash-probe` feature.
set -uo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/suites.sh
source scripts/suites.sh
trap 'rm -f "$suites_log"' EXIT

mistakes=0
reset_counts() {
    tests_passed=0
    tests_failed=0
    failed_suites=""
}

# expect CASE WANT_PASSED WANT_FAILED [PATTERN]: the counts after a case, and
# a pattern the failed-suite report must contain.
expect() {
    local case=$1 want_passed=$2 want_failed=$3 pattern=${4:-}
    local ok=1
    [ "$tests_passed" -eq "$want_passed" ] || ok=0
    [ "$tests_failed" -eq "$want_failed" ] || ok=0
    if [ -n "$pattern" ] && ! grep -qE "$pattern" <<<"$failed_suites"; then
        ok=0
    fi
    if [ "$want_failed" -eq 0 ] && [ -n "$failed_suites" ]; then
        ok=0
    fi
    if [ "$ok" -eq 1 ]; then
        echo "self-check ok: $case (passed=$tests_passed failed=$tests_failed)"
    else
        echo "self-check WRONG: $case: passed=$tests_passed failed=$tests_failed (wanted $want_passed and $want_failed${pattern:+, report matching /$pattern/}); report: ${failed_suites:-none}"
        mistakes=$((mistakes + 1))
    fi
}

probe() {
    FLOTILLA_CRASH_PROBE=$1 cargo test -p flotilla-engine --features crash-probe --test crash_probe
}

echo "-- a test binary that passes"
reset_counts
run_cargo_tests "probe" probe pass >/dev/null
expect "a passing test binary counts as passed" 1 0

echo "-- a test binary killed by SIGABRT"
reset_counts
run_cargo_tests "probe" probe abort >/dev/null
expect "an aborted test binary fails its suite, named" 0 1 \
    'probe: exit status [0-9]+; failed targets: -p flotilla-engine --test crash_probe; crashed: .*SIGABRT'

echo "-- a test binary that overflows its stack"
reset_counts
run_cargo_tests "probe" probe overflow >/dev/null
expect "a stack overflow fails its suite, named" 0 1 'probe: .*--test crash_probe; crashed: .*signal'

echo "-- simulator summaries"
reset_counts
run_checked "sim" sim_gate printf 'seeds=1000 violations=0 commits=40000 elections=3000 membership_changes=10 kv_appends=9000 kv_reads=9000 kv_retries=100 trace=0\n' >/dev/null
expect "a simulator run that did its work passes" 1 0
reset_counts
run_checked "sim" sim_gate printf 'seeds=1000 violations=0 commits=0 elections=0 membership_changes=0 kv_appends=0 kv_reads=0 kv_retries=0 trace=0\n' >/dev/null
expect "a simulator run that committed nothing fails" 0 1 'sim: the run did too little'
reset_counts
run_checked "sim" sim_gate printf 'seeds=1000 violations=0 commits=40000 elections=3000 membership_changes=10 kv_appends=0 kv_reads=0 kv_retries=0 trace=0\n' >/dev/null
expect "a simulator run whose clients completed nothing fails" 0 1 'sim: the run did too little'
reset_counts
run_checked "sim" sim_gate printf 'seeds=1000 violations=2 commits=40000 elections=3000 membership_changes=10 kv_appends=9000 kv_reads=9000 kv_retries=100 trace=0\n' >/dev/null
expect "a simulator run with violations fails" 0 1 'sim: 2 violations'
reset_counts
run_checked "sim" sim_gate sh -c 'echo "seeds=1000 violations=0 commits=40000 elections=3000 kv_appends=9000 kv_reads=9000"; exit 1' >/dev/null
expect "a simulator that exits non-zero fails" 0 1 'sim: exit status 1'
reset_counts
run_checked "sim" sim_gate sh -c 'kill -SEGV $$' >/dev/null
expect "a simulator killed by a signal fails" 0 1 'sim: killed by signal 11 \(SEGV\)'

echo "-- crash test summaries"
reset_counts
run_checked "crash" crash_gate printf 'cycles=100 lost=0 torn=0 acked_writes=900 acked_snapshot_ops=40 failpoint_kills=30 seconds=1.0\n' >/dev/null
expect "a crash test that acknowledged and killed passes" 1 0
reset_counts
run_checked "crash" crash_gate printf 'cycles=100 lost=0 torn=0 acked_writes=0 acked_snapshot_ops=0 failpoint_kills=30 seconds=1.0\n' >/dev/null
expect "a crash test that acknowledged nothing fails" 0 1 'crash: the run proves nothing'
reset_counts
run_checked "crash" crash_gate printf 'cycles=100 lost=0 torn=0 acked_writes=900 acked_snapshot_ops=40 failpoint_kills=0 seconds=1.0\n' >/dev/null
expect "a crash test no fail point fired in fails" 0 1 'crash: the run proves nothing'
reset_counts
run_checked "crash" crash_gate printf 'cycles=100 lost=3 torn=0 acked_writes=900 acked_snapshot_ops=40 failpoint_kills=30 seconds=1.0\n' >/dev/null
expect "a crash test that lost writes fails" 0 1 'crash: lost=3'

if [ "$mistakes" -ne 0 ]; then
    echo "self-check: the test command miscounted ${mistakes} case(s)"
    exit 1
fi
echo "self-check: every case counted as it should"
