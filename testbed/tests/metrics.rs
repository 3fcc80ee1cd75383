//! Both daemons' `/metrics` pass `promtool check metrics` (issue 11), and
//! the control daemon's show the swarm: members, nodes, networks, tasks,
//! reconcile runs, gossip packets, build info and process metrics. Needs
//! root, curl and promtool (scripts/setup.sh installs them).

mod common;

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use common::swarm::create_network;
use common::{dp_opts, root_or_skip, testbed};
use vxnet_testbed::DataplaneOptions;
use vxnet_testbed::process;

const DP_METRICS: &str = "127.0.0.1:9477";
const CTL_METRICS: &str = "127.0.0.1:9478";

/// The exposition at `addr` inside namespace `ns`, checked by promtool.
fn scrape_and_check(tb: &vxnet_testbed::Testbed, ns: &str, addr: &str) -> Result<String> {
    let out = tb.exec_ok(ns, &["curl", "-sf", &format!("http://{addr}/metrics")])?;
    let file = tb
        .state_dir()
        .join(format!("metrics-{}.txt", addr.replace([':', '.'], "_")));
    std::fs::write(&file, &out.stdout)?;
    let check = process::run(
        None,
        &[
            "sh",
            "-c",
            &format!("promtool check metrics < {}", file.display()),
        ],
        Duration::from_secs(30),
    )?;
    ensure!(
        check.status.success(),
        "promtool refused {addr}'s metrics: {}{}",
        check.stdout,
        check.stderr
    );
    Ok(out.stdout)
}

/// The value of series `series` (exact name and labels) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn both_daemons_pass_promtool() -> Result<()> {
    if !root_or_skip("both_daemons_pass_promtool") {
        return Ok(());
    }
    if process::run(None, &["promtool", "--version"], Duration::from_secs(10)).is_err() {
        bail!("promtool is missing: run scripts/setup.sh (Debian's prometheus package ships it)");
    }
    let tb = testbed(2, 1500)?;
    let opts = DataplaneOptions {
        metrics: Some(DP_METRICS.into()),
        ..dp_opts()
    };
    let mut controls = Vec::new();
    for h in tb.hosts() {
        let dp = tb.start_dataplane(h, &opts)?;
        controls.push(tb.start_control_with(h, &dp.socket, &["--metrics", CTL_METRICS])?);
    }
    tb.form_swarm(&controls)?;
    create_network(&controls[0], "metered", &[])?;
    controls[0].ok(&[
        "service",
        "create",
        "--name",
        "m",
        "--mode",
        "global",
        "--network",
        "metered",
        "--",
        "sleep",
        "600",
    ])?;

    let manager_ns = tb.host(1).ns.clone();
    let dp = scrape_and_check(&tb, &manager_ns, DP_METRICS)?;
    for s in [
        "vxnet_tap_rx_frames_total",
        "vxnet_drops_total{reason=\"runt\",stage=\"tap\"}",
        "process_cpu_seconds_total",
        "vxnet_build_info{daemon=\"vxnet-dataplane\"",
    ] {
        ensure!(
            dp.contains(s),
            "{s} missing from the dataplane's metrics:\n{dp}"
        );
    }
    // The control daemon's: wait until gossip holds the other member.
    let start = std::time::Instant::now();
    let ctl = loop {
        let text = scrape_and_check(&tb, &manager_ns, CTL_METRICS)?;
        if value(&text, "vxnet_control_members") == Some(1.0)
            && value(&text, "vxnet_control_tasks{state=\"running\"}") == Some(2.0)
        {
            break text;
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("the manager's metrics never showed 1 member and 2 running tasks:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for (series, want) in [
        ("vxnet_control_manager", 1.0),
        ("vxnet_control_nodes{status=\"ready\"}", 2.0),
        ("vxnet_control_networks", 2.0),
        ("vxnet_control_services", 1.0),
    ] {
        ensure!(
            value(&ctl, series) == Some(want),
            "{series} is not {want}:\n{ctl}"
        );
    }
    for series in [
        "vxnet_control_reconcile_runs_total",
        "vxnet_control_gossip_packets_total{direction=\"rx\"}",
    ] {
        let v = value(&ctl, series).with_context(|| format!("{series} missing:\n{ctl}"))?;
        ensure!(v > 0.0, "{series} is {v}");
    }
    ensure!(
        ctl.contains("vxnet_control_gossip_key_rotations_total 0"),
        "{ctl}"
    );
    ensure!(
        ctl.contains("vxnet_build_info{daemon=\"vxnet-control\""),
        "{ctl}"
    );
    ensure!(ctl.contains("process_resident_memory_bytes"), "{ctl}");
    // A worker serves its own.
    let worker = scrape_and_check(&tb, &tb.host(2).ns, CTL_METRICS)?;
    ensure!(
        value(&worker, "vxnet_control_manager") == Some(0.0),
        "{worker}"
    );
    Ok(())
}
