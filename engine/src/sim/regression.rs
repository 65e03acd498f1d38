//! Seeds that once failed, each for the bug named. The test command runs
//! them every time (`sim --regression`, and `regression_seeds` in
//! `tests/sim_determinism.rs`) beside a window of fresh seeds. A seed's path
//! changes as the code does, so each bug also has a targeted core test.

/// (seed, the bug it found).
pub const REGRESSION_SEEDS: &[(u64, &str)] = &[
    (
        9115,
        "snapshot install discarded acknowledged entries; probe loop amplified by duplicates",
    ),
    (
        1925,
        "cores seeded by XOR drew identical election timeouts and split every vote",
    ),
    (
        563,
        "refusing a stale candidate's vote reset the election timer, starving able candidates",
    ),
    (
        19811,
        "checker flagged a stale leader for lacking an entry committed in a later term",
    ),
    (
        7_000_282,
        "a removed voter that missed its removal campaigned on and deposed every leader",
    ),
    (
        7_002_648,
        "new members that knew no configuration yet ignored the candidates that needed their votes",
    ),
    (
        7_002_193,
        "removed nodes being re-added ignored the candidate that needed their votes",
    ),
    (
        9_075_098,
        "PreVote off: voters able to win kept their old timeout on granting a vote and lost every race to doomed candidates for over 10 timeouts",
    ),
    (
        9_005_490,
        "client scenario: a client that followed every leader hint bounced between two nodes outside the group",
    ),
    (
        9_146_348,
        "client scenario: a client that rotated on from where a hint took it bounced between two nodes",
    ),
];
