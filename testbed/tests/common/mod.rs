//! Shared helpers for the testbed's integration tests.
#![allow(dead_code)]

use vxnet_testbed::process;
use vxnet_testbed::{DataplaneOptions, Testbed, TestbedConfig};

/// True when the test can run; otherwise says why it is skipped.
pub fn root_or_skip(test: &str) -> bool {
    if !process::is_root() {
        eprintln!(
            "SKIPPED {test}: needs root to create network namespaces (CI runs as root; try sudo -E cargo test)"
        );
        return false;
    }
    true
}

pub fn testbed(hosts: usize, underlay_mtu: u32) -> anyhow::Result<Testbed> {
    Testbed::new(TestbedConfig {
        hosts,
        underlay_mtu,
    })
}

/// Dataplane options for tests: one worker each, adaptive polling, so that
/// parallel tests on a small machine do not starve each other.
pub fn dp_opts() -> DataplaneOptions {
    DataplaneOptions {
        workers: Some(1),
        poll: Some("adaptive".into()),
        ..Default::default()
    }
}

/// Our namespaces that still exist.
pub fn leftover(names: &[String]) -> Vec<String> {
    let now = vxnet_testbed::topology::list_netns().unwrap_or_default();
    names.iter().filter(|n| now.contains(n)).cloned().collect()
}

/// At least this much must cross in an iperf3 test (a few seconds of even a
/// slow debug-build dataplane moves far more).
pub const MIN_IPERF_BYTES: u64 = 10_000_000;
