#!/usr/bin/env bash
# Checks CI runs after `make test` (called from .ci/run).
#
# - The crash-safety check, short form: 5 kills, about half a minute (the long form is
#   `make crash-test`, 20 kills; see scripts/crash-test.sh). It uses the release binaries
#   target/release/dilemma and target/release/dilemma-mock, which `make test` has just built
#   (both crates have integration tests, so `cargo test --release --workspace` builds their
#   binaries). They are built here only when missing, so that this script also works alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ! -x target/release/dilemma || ! -x target/release/dilemma-mock ]]; then
    # The same build `make test` does, so llama.cpp is not compiled twice.
    ${CARGO:-cargo} test --release --workspace --locked --no-run
fi
start=$(date +%s)
bash scripts/crash-test.sh --kills 5
echo "ci-extra: crash-test (5 kills) finished in $(( $(date +%s) - start )) s"

# The benchmarks' smoke run (bench/run.sh --smoke): each workload at a small size, no
# thresholds, without Inspect (its venv takes about 100 s of pip install); the full
# benchmark is `make bench`.
start=$(date +%s)
bash bench/run.sh --smoke
echo "ci-extra: bench smoke finished in $(( $(date +%s) - start )) s"
