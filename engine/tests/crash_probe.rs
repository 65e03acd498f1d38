//! A test binary that dies on purpose, for the test command's self-check
//! (`scripts/check-test-script.sh`): built only with the `crash-probe`
//! feature, it ends the way `FLOTILLA_CRASH_PROBE` says. A binary killed by
//! a signal prints no `test result` line, so only the exit status shows it
//! failed; the self-check requires the test command to count it.

#[test]
fn ends_the_way_it_is_told() {
    match std::env::var("FLOTILLA_CRASH_PROBE").as_deref() {
        // SIGABRT, as a failed C++ assertion in RocksDB or an OOM abort.
        Ok("abort") => std::process::abort(),
        // SIGSEGV raised by the kernel's default action for a stack
        // overflow: Rust's guard page handler reports it and aborts.
        Ok("overflow") => {
            #[allow(unconditional_recursion)]
            fn deeper(n: u64) -> u64 {
                let frame = [n; 512];
                std::hint::black_box(&frame);
                deeper(n + 1) + frame[0]
            }
            std::hint::black_box(deeper(0));
        }
        // The exit a test binary makes when it passes: the counting must
        // not turn every suite into a failure either.
        Ok("pass") => {}
        other => panic!("FLOTILLA_CRASH_PROBE must be abort, overflow or pass, not {other:?}"),
    }
}
