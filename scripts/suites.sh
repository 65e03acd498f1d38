# Counting for the test command (sourced by scripts/test.sh and by its
# self-check, scripts/check-test-script.sh). Every suite counts by its exit
# status first: a test binary killed by a signal (a segfault in the RocksDB
# bindings, a stack overflow, an OOM kill, an abort) prints no result line,
# so counting result lines alone reported such a run as passing.
#
# State: suites_log (everything the suites printed), tests_passed,
# tests_failed, failed_suites (one line per failed suite, with the reason).

suites_log=$(mktemp)
tests_passed=0
tests_failed=0
failed_suites=""

# Appends "NAME: WHY" to the failed suites.
suite_failed() {
    failed_suites="${failed_suites}  $1: $2"$'\n'
}

# The reason a command ended with STATUS, in words.
exit_reason() {
    local status=$1
    if [ "$status" -gt 128 ] && [ "$status" -lt 160 ]; then
        echo "killed by signal $((status - 128)) ($(kill -l "$((status - 128))" 2>/dev/null || echo '?'))"
    else
        echo "exit status $status"
    fi
}

# run_cargo_tests NAME CMD...: runs a `cargo test` command, counts its
# result lines, and counts the suite as failed if it exits non-zero, naming
# each test target cargo reports as failed (with the signal that killed it,
# if one did) that printed no failing test of its own.
run_cargo_tests() {
    local name=$1
    shift
    local out status
    out=$(mktemp)
    "$@" 2>&1 | tee "$out"
    status=${PIPESTATUS[0]}
    cat "$out" >>"$suites_log"
    local passed failed
    passed=$(grep -oE '^test result: [a-zA-Z]+\. [0-9]+ passed' "$out" | awk '{s+=$4} END {print s+0}')
    failed=$(grep -oE '[0-9]+ failed;' "$out" | awk '{s+=$1} END {print s+0}')
    tests_passed=$((tests_passed + passed))
    tests_failed=$((tests_failed + failed))
    if grep -qE '^error: could not compile' "$out"; then
        tests_failed=$((tests_failed + 1))
        suite_failed "$name" "a target does not compile"
    fi
    if [ "$status" -ne 0 ]; then
        # cargo names every failed target: "error: test failed, to rerun
        # pass `-p crate --test name`", followed by how its process ended.
        local targets
        targets=$(grep -oE 'to rerun pass `[^`]*`' "$out" | sed -E 's/to rerun pass `(.*)`/\1/')
        local crashed
        crashed=$(grep -oE "process didn't exit successfully: .*\(signal: [0-9]+[^)]*\)" "$out" |
            sed -E 's/.*\((signal: [^)]*)\)/\1/' | sort | uniq -c | awk '{$1=$1; print}')
        if [ "$failed" -eq 0 ]; then
            # No test reported a failure, yet the suite failed: a binary
            # died without a result line, or cargo itself failed.
            tests_failed=$((tests_failed + 1))
        fi
        suite_failed "$name" "$(exit_reason "$status"); failed targets: ${targets:-none named}${crashed:+; crashed: $crashed}"
    fi
    rm -f "$out"
}

# run_checked NAME GATE CMD...: runs a command that prints one summary line
# (the simulator, the crash test) and counts it as one test, passed only if
# it exits 0 and GATE (a function given the output file) accepts its output.
run_checked() {
    local name=$1 gate=$2
    shift 2
    local out status
    out=$(mktemp)
    "$@" 2>&1 | tee "$out"
    status=${PIPESTATUS[0]}
    cat "$out" >>"$suites_log"
    local why=""
    if [ "$status" -ne 0 ]; then
        why=$(exit_reason "$status")
    fi
    local gate_why
    if ! gate_why=$("$gate" "$out"); then
        why="${why:+$why; }$gate_why"
    fi
    if [ -z "$why" ]; then
        tests_passed=$((tests_passed + 1))
    else
        tests_failed=$((tests_failed + 1))
        suite_failed "$name" "$why"
    fi
    rm -f "$out"
}

# The value of KEY=N in the last line of FILE starting with FIRST_KEY=.
summary_value() {
    local file=$1 first_key=$2 key=$3
    grep -E "^${first_key}=" "$file" | tail -n 1 | grep -oE "(^| )${key}=[0-9]+" | head -n 1 | cut -d= -f2
}

# The simulator passes only with no violations, having run its seeds, and
# having elected leaders and committed entries on them, and its clients
# having had appends acknowledged and reads answered: a run that did
# nothing must not pass.
sim_gate() {
    local file=$1 seeds violations commits elections appends reads
    seeds=$(summary_value "$file" seeds seeds)
    violations=$(summary_value "$file" seeds violations)
    commits=$(summary_value "$file" seeds commits)
    elections=$(summary_value "$file" seeds elections)
    appends=$(summary_value "$file" seeds kv_appends)
    reads=$(summary_value "$file" seeds kv_reads)
    if [ -z "$seeds" ] || [ -z "$violations" ] || [ -z "$commits" ] || [ -z "$elections" ] ||
        [ -z "$appends" ] || [ -z "$reads" ]; then
        echo "no summary line (seeds=N violations=V commits=C elections=E ... kv_appends=A kv_reads=R)"
        return 1
    fi
    if [ "$violations" -ne 0 ]; then
        echo "$violations violations"
        return 1
    fi
    if [ "$seeds" -eq 0 ] || [ "$commits" -lt "$seeds" ] || [ "$elections" -lt "$seeds" ] ||
        [ "$appends" -lt "$seeds" ] || [ "$reads" -lt "$seeds" ]; then
        echo "the run did too little to count: $seeds seeds, $commits commits, $elections elections, $appends client appends, $reads client reads (at least one of each per seed)"
        return 1
    fi
}

# The crash test passes only with nothing lost or torn, having acknowledged
# writes and having killed the child at fail points: with neither, a clean
# result proves nothing.
crash_gate() {
    local file=$1 lost torn acked kills
    lost=$(summary_value "$file" cycles lost)
    torn=$(summary_value "$file" cycles torn)
    acked=$(summary_value "$file" cycles acked_writes)
    kills=$(summary_value "$file" cycles failpoint_kills)
    if [ -z "$lost" ] || [ -z "$torn" ] || [ -z "$acked" ] || [ -z "$kills" ]; then
        echo "no summary line (cycles=N lost=L torn=T acked_writes=A ... failpoint_kills=K)"
        return 1
    fi
    if [ "$lost" -ne 0 ] || [ "$torn" -ne 0 ]; then
        echo "lost=$lost torn=$torn"
        return 1
    fi
    if [ "$acked" -eq 0 ] || [ "$kills" -eq 0 ]; then
        echo "the run proves nothing: acked_writes=$acked failpoint_kills=$kills (both must be above 0)"
        return 1
    fi
}

# The self-check passes on its exit status alone.
no_gate() {
    return 0
}
