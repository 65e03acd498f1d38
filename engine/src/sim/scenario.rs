//! Randomized fault scenarios.
