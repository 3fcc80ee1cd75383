#!/usr/bin/env bash
# Installs what the tests need, builds every binary and runs all tests.
# Tests that need root (network namespaces, TAP devices) run when this runs
# as root and skip with a message otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --workspace --bins
# Two test threads: end-to-end tests run real iperf3/ping between
# namespaces and share this machine's cores.
# --no-fail-fast: one failing test binary does not hide the others.
cargo test --workspace --no-fail-fast -- --test-threads=2
# The fuzz targets' bodies over their seed corpora and bounded mutations
# (coverage-guided fuzzing is scripts/fuzz.sh, which .ci/run runs next).
(cd fuzz && cargo test)
