#!/usr/bin/env bash
# Installs what vxnet needs, builds it, and runs the two-host demo in
# network namespaces (ping and iperf3 between containers on two hosts,
# then everything is removed).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace --bins
exec ./target/release/vxnet-testbed demo "$@"
