#!/usr/bin/env bash
# Installs what vxnet needs on a Debian/Ubuntu host (run as root):
# iproute2 (ip, bridge), iperf3, ping, tshark, dig, ethtool, python3 (the
# services tests' task server), curl, nft (the dataplane's host link
# programs the host's firewall with it), promtool (from Debian's
# prometheus package: the metrics tests check both daemons' /metrics with
# it), a Rust toolchain if there is none, and cargo-fuzz (scripts/fuzz.sh).
# A C++ compiler too: libFuzzer is built from source.
set -euo pipefail

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip || need_pkgs+=(iproute2)
have bridge || need_pkgs+=(iproute2)
have iperf3 || need_pkgs+=(iperf3)
have ping || need_pkgs+=(iputils-ping)
have tshark || need_pkgs+=(tshark)
have dig || need_pkgs+=(dnsutils)
have ethtool || need_pkgs+=(ethtool)
have nft || need_pkgs+=(nftables)
have cc || need_pkgs+=(gcc libc6-dev)
have c++ || need_pkgs+=(g++)
have curl || need_pkgs+=(curl ca-certificates)
have python3 || need_pkgs+=(python3)
have promtool || need_pkgs+=(prometheus)

if [ "${#need_pkgs[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: need root to install: ${need_pkgs[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture; answer for it.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if ! have cargo && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! have cargo; then
    echo "setup: installing the Rust toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
fi
# cargo-fuzz for scripts/fuzz.sh (coverage-guided fuzzing on stable with
# --sanitizer none), from the crates registry.
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "setup: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi
# The kernel modules the testbed and the host link (nftables NAT) use;
# built in on many kernels, so a failure here is not fatal (the tests say
# what is missing).
for m in tun veth bridge vxlan nf_tables nf_nat; do modprobe -q "$m" 2>/dev/null || true; done
echo "setup: ok ($(cargo --version))"
