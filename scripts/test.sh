#!/usr/bin/env bash
# The full test command: formatting, lints, every test, and the randomized
# simulator over 1,000 seeds. README.md and .ci/run both run exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
echo "== simulator, 1000 seeds"
cargo run --release -p flotilla-engine --example sim -- --seeds 1000
