//! Named crash points for the crash-consistency test. A process started with
//! `FLOTILLA_FAILPOINT=<name>` kills itself with SIGKILL the first time it
//! reaches that point; without the variable every point is a cheap no-op.

use std::sync::OnceLock;

/// Before a batch is written to the log (nothing of it is durable).
pub const BEFORE_LOG_WRITE: &str = "before-log-write";
/// After the batch is written and synced, before anyone is told.
pub const AFTER_LOG_SYNC: &str = "after-log-sync";
/// Before a batch that carries a hard-state change is written.
pub const BEFORE_HARD_STATE_WRITE: &str = "before-hard-state-write";
/// After a batch that carries a hard-state change is synced.
pub const AFTER_HARD_STATE_WRITE: &str = "after-hard-state-write";
/// Before a batch that compacts a log is written.
pub const BEFORE_COMPACTION: &str = "before-compaction";
/// After a batch that compacts a log is synced.
pub const AFTER_COMPACTION: &str = "after-compaction";

/// Before a received snapshot chunk is staged.
pub const BEFORE_SNAPSHOT_STAGE: &str = "before-snapshot-stage";
/// After a received snapshot chunk is staged and synced.
pub const AFTER_SNAPSHOT_STAGE: &str = "after-snapshot-stage";
/// Before the batch installing a staged snapshot is written.
pub const BEFORE_SNAPSHOT_INSTALL: &str = "before-snapshot-install";
/// After the batch installing a staged snapshot is synced.
pub const AFTER_SNAPSHOT_INSTALL: &str = "after-snapshot-install";

/// Every fail point, for tests that pick one at random.
pub const ALL: [&str; 10] = [
    BEFORE_LOG_WRITE,
    AFTER_LOG_SYNC,
    BEFORE_HARD_STATE_WRITE,
    AFTER_HARD_STATE_WRITE,
    BEFORE_COMPACTION,
    AFTER_COMPACTION,
    BEFORE_SNAPSHOT_STAGE,
    AFTER_SNAPSHOT_STAGE,
    BEFORE_SNAPSHOT_INSTALL,
    AFTER_SNAPSHOT_INSTALL,
];

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var("FLOTILLA_FAILPOINT").ok())
        .as_deref()
}

/// Kills the process with SIGKILL if `name` is the armed fail point.
pub fn hit(name: &str) {
    if armed() == Some(name) {
        kill_self();
    }
}

fn kill_self() -> ! {
    #[cfg(unix)]
    {
        // SAFETY: kill(2) on our own pid with a valid signal number has no
        // memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
    std::process::abort()
}
