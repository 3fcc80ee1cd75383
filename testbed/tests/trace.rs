//! `vxnet dp trace` on two bare dataplanes (issue 11): each broken setup
//! gives a trace whose first failing stage and reason are the right ones,
//! on the right host, and a working path traces to `delivered` on the
//! remote host. The remote half runs as `vxnet trace` runs it: the
//! datagram the sending host would put on the wire, through the receiving
//! host's real receive path (`dp trace-wire`). Traces send nothing: the
//! counters do not move.

mod common;

use anyhow::{Context, Result, bail};
use common::{dp_opts, root_or_skip, testbed};
use serde_json::Value;
use vxnet_testbed::Dataplane;
use vxnet_testbed::process::CmdOutput;
use vxnet_testbed::scenario::{ENCRYPTED_VNI, numbered_endpoint};
use vxnet_testbed::vxnet::StatsExt;

/// `vxnet dp trace ... --format json` on `dp`.
fn trace(dp: &Dataplane, args: &[&str]) -> Result<Value> {
    let mut argv = vec!["trace"];
    argv.extend_from_slice(args);
    argv.extend(["--format", "json"]);
    report(dp.cli(&argv)?)
}

/// A trace's JSON report, checking its exit status: 1 exactly when the
/// packet was dropped (as `vxnet trace`), else 0.
fn report(out: CmdOutput) -> Result<Value> {
    let v: Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("{} {}", out.stdout, out.stderr))?;
    let dropped = v["verdict"] == "dropped";
    if out.success() == dropped {
        bail!(
            "exit status {:?} for verdict {}: {}",
            out.status,
            v["verdict"],
            out.stderr
        );
    }
    Ok(v)
}

/// The remote half on `dp` of a local trace that ended `sent`.
fn remote_half(dp: &Dataplane, local: &Value) -> Result<Value> {
    if local["verdict"] != "sent" {
        bail!("the local half did not leave the host: {local:#}");
    }
    let outer = &local["outer"];
    let src = outer["src"].as_str().unwrap_or_default();
    let datagram = outer["datagram"].as_str().unwrap_or_default();
    let out = dp.cli(&[
        "trace-wire",
        "--src",
        src,
        "--datagram",
        datagram,
        "--format",
        "json",
    ])?;
    report(out)
}

/// (host, stage, reason) of the first step that dropped.
fn first_failure(r: &Value) -> Option<(String, String, String)> {
    let s = r["steps"]
        .as_array()?
        .iter()
        .find(|s| s["verdict"] == "drop")?;
    Some((
        s["host"].as_str()?.to_owned(),
        s["stage"].as_str()?.to_owned(),
        s["reason"].as_str()?.to_owned(),
    ))
}

fn stages(r: &Value) -> Vec<String> {
    r["steps"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["stage"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn host_vtep(tb: &vxnet_testbed::Testbed, n: usize) -> String {
    tb.host(n).underlay_v4.to_string()
}

/// Plain network: a delivered path on both hosts, and the broken setups
/// a plain network has (no endpoint, no peer, a VNI only one side has).
#[test]
fn dp_trace_plain_paths_and_failures() -> Result<()> {
    if !root_or_skip("dp_trace_plain_paths_and_failures") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let p = tb.vxnet_pair(44, &dp_opts(), ("tc1", "tc2"))?;
    let (a4, b4) = (
        p.ep1.v4().unwrap_or_default(),
        p.ep2.v4().unwrap_or_default(),
    );
    let (h1, h2) = (host_vtep(&tb, 1), host_vtep(&tb, 2));
    // The containers' own kernels send now and then (IPv6 router and
    // neighbour solicitations, MLD), so a window with traces in it may see
    // their frames; a trace that counted would move every window.
    let counters = [
        "tap_rx_frames",
        "udp_tx_datagrams",
        "udp_rx_datagrams",
        "tap_tx_frames",
    ];
    let mut quiet_window = false;
    for _ in 0..5 {
        let before = (p.dp1.stats()?, p.dp2.stats()?);

        // Working path, v4 and v6, ICMP and TCP.
        for (from, to, proto) in [
            (a4, b4, "icmp"),
            (a4, b4, "tcp"),
            (
                p.ep1.v6().unwrap_or_default(),
                p.ep2.v6().unwrap_or_default(),
                "udp",
            ),
        ] {
            let local = trace(&p.dp1, &["--from", from, "--to", to, "--proto", proto])?;
            assert_eq!(first_failure(&local), None, "{local:#}");
            assert_eq!(
                stages(&local),
                ["arp_nd", "tap_rx", "anti_spoof", "fdb", "outer"],
                "{local:#}"
            );
            assert_eq!(local["outer"]["dst"], h2.as_str(), "{local:#}");
            let remote = remote_half(&p.dp2, &local)?;
            assert_eq!(remote["verdict"], "delivered", "{remote:#}");
            assert_eq!(
                stages(&remote),
                ["wire_rx", "vni", "endpoint", "tap_tx"],
                "{remote:#}"
            );
            assert!(remote["steps"][0]["host"] == h2.as_str(), "{remote:#}");
        }
        // Nothing was sent or counted by the traces.
        let after = (p.dp1.stats()?, p.dp2.stats()?);
        let moved: Vec<&str> = [(&before.0, &after.0), (&before.1, &after.1)]
            .iter()
            .flat_map(|(b, a)| counters.iter().filter(|c| b.counter(c) != a.counter(c)))
            .copied()
            .collect();
        if moved.is_empty() {
            quiet_window = true;
            break;
        }
        eprintln!("moved while tracing (retrying): {moved:?}");
    }
    assert!(quiet_window, "every window of traces moved counters");
    // And the path the trace showed is the one a ping takes.
    tb.ping_ok(&p.c1.ns, b4, 1, None)?;

    // An address that belongs to no endpoint: ARP gets no answer, host1.
    let r = trace(&p.dp1, &["--from", a4, "--to", "10.44.0.99"])?;
    assert_eq!(
        first_failure(&r),
        Some((h1.clone(), "arp_nd".into(), "arp_nd/no_answer".into())),
        "{r:#}"
    );
    assert_eq!(r["verdict"], "dropped");

    // No peer for the destination (a neighbour cache still holds its MAC):
    // the FDB has no entry and nobody else is on the VNI to flood it to, host1.
    p.dp1
        .cli_ok(&["peer", "del", "--vni", "44", "--mac", &p.ep2.mac])?;
    let r = trace(&p.dp1, &["--from", a4, "--to", b4, "--dst-mac", &p.ep2.mac])?;
    assert_eq!(
        first_failure(&r),
        Some((h1.clone(), "fdb".into(), "tap/no_receivers".into())),
        "{r:#}"
    );
    assert!(
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["fix"].as_str().is_some_and(|f| f.contains("peer add"))),
        "{r:#}"
    );

    // A VNI only host1 has: host2 drops it, at the VNI stage.
    let c3 = tb.add_container(tb.host(1), "tc3")?;
    let ep3 = numbered_endpoint(47, 2, 1450);
    let ghost = numbered_endpoint(47, 3, 1450);
    p.dp1.attach(&c3, 47, &ep3)?;
    p.dp1.peer_add(47, &ghost, &h2)?;
    let local = trace(
        &p.dp1,
        &[
            "--from",
            ep3.v4().unwrap_or_default(),
            "--to",
            ghost.v4().unwrap_or_default(),
        ],
    )?;
    let remote = remote_half(&p.dp2, &local)?;
    assert_eq!(
        first_failure(&remote),
        Some((h2.clone(), "vni".into(), "wire/unknown_vni".into())),
        "{remote:#}"
    );
    Ok(())
}

/// Encrypted network: SA and SPI on the way out, decrypt on the way in,
/// delivered; then the receiving host forgets the sender's key and the
/// trace stops at decrypt on host2 with `wire/unknown_spi`.
#[test]
fn dp_trace_encrypted_and_unknown_key() -> Result<()> {
    if !root_or_skip("dp_trace_encrypted_and_unknown_key") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let p = tb.vxnet_encrypted_pair(ENCRYPTED_VNI, &dp_opts(), ("te1", "te2"))?;
    let (a4, b4) = (
        p.ep1.v4().unwrap_or_default(),
        p.ep2.v4().unwrap_or_default(),
    );
    let (h1, h2) = (host_vtep(&tb, 1), host_vtep(&tb, 2));
    let local = trace(&p.dp1, &["--from", a4, "--to", b4])?;
    assert_eq!(
        stages(&local),
        ["arp_nd", "tap_rx", "anti_spoof", "fdb", "sa", "outer"],
        "{local:#}"
    );
    let remote = remote_half(&p.dp2, &local)?;
    assert_eq!(remote["verdict"], "delivered", "{remote:#}");
    assert_eq!(
        stages(&remote),
        ["wire_rx", "decrypt", "vni", "endpoint", "tap_tx"],
        "{remote:#}"
    );
    // The trace used up one sequence number; real traffic does not mind.
    tb.ping_ok(&p.c1.ns, b4, 2, None)?;
    tb.ping_ok(&p.c2.ns, a4, 2, None)?;

    // host2 forgets host1's key; host1 still holds its SAs.
    p.dp2.vtep_del(&h1)?;
    let local = trace(&p.dp1, &["--from", a4, "--to", b4])?;
    assert_eq!(first_failure(&local), None, "{local:#}");
    let remote = remote_half(&p.dp2, &local)?;
    assert_eq!(
        first_failure(&remote),
        Some((h2, "decrypt".into(), "wire/unknown_spi".into())),
        "{remote:#}"
    );
    Ok(())
}

/// A DF packet that fits the endpoint (MTU 1450) but not the 1400-byte
/// underlay once encapsulated: host1 drops it at the outer header with
/// `tap/too_big` (and answers the sender with the MTU that fits).
#[test]
fn dp_trace_too_big_for_the_underlay() -> Result<()> {
    if !root_or_skip("dp_trace_too_big_for_the_underlay") {
        return Ok(());
    }
    let tb = testbed(2, 1400)?;
    let dp1 = tb.start_dataplane(tb.host(1), &dp_opts())?;
    let dp2 = tb.start_dataplane(tb.host(2), &dp_opts())?;
    let c1 = tb.add_container(tb.host(1), "tb1")?;
    let c2 = tb.add_container(tb.host(2), "tb2")?;
    let (e1, e2) = (
        numbered_endpoint(48, 2, 1450),
        numbered_endpoint(48, 3, 1450),
    );
    dp1.attach(&c1, 48, &e1)?;
    dp2.attach(&c2, 48, &e2)?;
    dp1.peer_add(48, &e2, &host_vtep(&tb, 2))?;
    dp2.peer_add(48, &e1, &host_vtep(&tb, 1))?;
    let (a4, b4) = (e1.v4().unwrap_or_default(), e2.v4().unwrap_or_default());
    let small = trace(&dp1, &["--from", a4, "--to", b4, "--size", "1300", "--df"])?;
    assert_eq!(first_failure(&small), None, "{small:#}");
    let r = trace(&dp1, &["--from", a4, "--to", b4, "--size", "1450", "--df"])?;
    assert_eq!(
        first_failure(&r),
        Some((host_vtep(&tb, 1), "outer".into(), "tap/too_big".into())),
        "{r:#}"
    );
    // The sender is told the MTU that fits (1400 - 50 of VXLAN), and the
    // drop says how to fix it.
    let steps = r["steps"].as_array().cloned().unwrap_or_default();
    assert!(
        steps.iter().any(|s| s["stage"] == "outer"
            && s["verdict"] == "answered"
            && s["detail"].as_str().is_some_and(|d| d.contains("MTU 1350"))),
        "{r:#}"
    );
    assert!(
        steps.iter().any(|s| s["fix"]
            .as_str()
            .is_some_and(|f| f.contains("ICMP") && f.contains("MTU"))),
        "{r:#}"
    );
    // Bigger than the endpoint itself: its own kernel refuses it.
    let r = trace(&dp1, &["--from", a4, "--to", b4, "--size", "1500", "--df"])?;
    assert_eq!(
        first_failure(&r).map(|f| f.2),
        Some("tap/endpoint_mtu".into()),
        "{r:#}"
    );
    Ok(())
}
