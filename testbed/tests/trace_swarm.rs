//! `vxnet trace` on a two-host swarm (issue 11): the control plane runs
//! the source half on the source container's host and asks the host the
//! packet reaches, over the management channel, for the other half (a
//! worker through its manager, the manager through the worker's
//! assignment watch). A working path, plain and encrypted and through a
//! VIP, traces to `delivered` on the remote host; broken setups stop at
//! the right stage with the right reason on the right host.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use common::swarm::{container, create_network, run_sleeper, swarm};
use common::{root_or_skip, testbed};
use serde_json::Value;
use vxnet_testbed::process;
use vxnet_testbed::swarm::Control;

/// `vxnet trace ARGS --format json` on `c`.
fn trace(c: &Control, args: &[&str]) -> Result<Value> {
    Ok(common::swarm::trace_json(c, args)?.0)
}

/// (host, stage, reason) of the first drop.
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

/// (host, stage) of every step.
fn path(r: &Value) -> Vec<(String, String)> {
    r["steps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["host"].as_str().unwrap_or_default().to_owned(),
                        s["stage"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn delivered_on(r: &Value, host: &str) -> bool {
    r["verdict"] == "delivered"
        && r["steps"]
            .as_array()
            .and_then(|a| a.last())
            .is_some_and(|s| s["stage"] == "tap_tx" && s["host"] == host)
}

/// Polls `f` until it gives `Some`, for at most `within`.
fn wait_for<T>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if start.elapsed() > within {
            bail!("{what} not within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn swarm_trace_paths_and_failures() -> Result<()> {
    if !root_or_skip("swarm_trace_paths_and_failures") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let sw = swarm(&tb)?;
    let (m, w) = (&sw.controls[0], &sw.controls[1]);
    create_network(m, "plain", &["--subnet", "10.61.0.0/24"])?;
    create_network(
        m,
        "secure",
        &["--opt", "encrypted", "--subnet", "10.62.0.0/24"],
    )?;
    run_sleeper(m, "c1", &["plain", "secure"])?;
    run_sleeper(w, "c2", &["plain", "secure"])?;
    let (ns1, _) = container(m, "c1")?;
    let (ns2, ip2) = container(w, "c2")?;
    // The peers are programmed once a ping crosses both ways.
    for (ns, to) in [(&ns1, "c2"), (&ns2, "c1")] {
        wait_for("ping", Duration::from_secs(20), || {
            let ok = tb
                .exec(ns, &["ping", "-c", "1", "-W", "1", to])?
                .status
                .success();
            let ok2 = tb
                .exec(ns, &["ping", "-c", "1", "-W", "1", &format!("{to}.secure")])?
                .status
                .success();
            Ok((ok && ok2).then_some(()))
        })?;
    }

    // Plain, from the manager: by name, the DNS step first; the remote
    // half on host2 (asked through its assignment watch).
    let r = trace(m, &["--from", "c1", "--to", "c2", "--network", "plain"])?;
    assert!(delivered_on(&r, "host2"), "{r:#}");
    let p = path(&r);
    assert_eq!(p[0], ("host1".into(), "dns".into()), "{r:#}");
    for want in [
        ("host1", "fdb"),
        ("host1", "outer"),
        ("host2", "wire_rx"),
        ("host2", "endpoint"),
    ] {
        assert!(
            p.contains(&(want.0.into(), want.1.into())),
            "{want:?} {r:#}"
        );
    }
    // Containers are named as the user named them, on both hosts, not by
    // their network namespaces.
    let details: Vec<&str> = r["steps"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["detail"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        details.iter().any(|d| d.ends_with(&format!("{ip2} in c2")))
            && details.iter().any(|d| d.contains(" in c1"))
            && !details.iter().any(|d| d.contains(&ns1) || d.contains(&ns2)),
        "{r:#}"
    );
    // The table people read says the same.
    let table = m.ok(&["trace", "--from", "c1", "--to", "c2", "--network", "plain"])?;
    eprintln!("{table}");
    assert!(table.contains("delivered on host2"), "{table}");
    // Encrypted, from the worker (the remote half through its manager).
    let r = trace(w, &["--from", "c2", "--to", "c1", "--network", "secure"])?;
    assert!(delivered_on(&r, "host1"), "{r:#}");
    eprintln!(
        "{}",
        w.ok(&["trace", "--from", "c2", "--to", "c1", "--network", "secure"])?
    );
    let p = path(&r);
    assert!(p.contains(&("host2".into(), "sa".into())), "{r:#}");
    assert!(p.contains(&("host1".into(), "decrypt".into())), "{r:#}");

    // Through a VIP: a global service with a task on each host.
    m.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--mode",
        "global",
        "--network",
        "plain",
        "--",
        "sleep",
        "600",
    ])?;
    let r = wait_for(
        "a trace to the VIP delivered",
        Duration::from_secs(20),
        || {
            let r = trace(
                m,
                &[
                    "--from", "c1", "--to", "web", "--proto", "tcp", "--dport", "80",
                ],
            )?;
            Ok((r["verdict"] == "delivered").then_some(r))
        },
    )?;
    assert!(path(&r).contains(&("host1".into(), "vip".into())), "{r:#}");
    assert!(
        path(&r).contains(&("host1".into(), "conntrack".into())),
        "{r:#}"
    );
    // The task it reached is named as `service ps` names it, on whichever
    // host it runs (each host names its own tasks).
    let reached = r["steps"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|s| s["detail"].as_str())
        .unwrap_or_default();
    assert!(reached.contains(" in web."), "{r:#}");

    // A service with no running task: its VIP refuses, at the VIP, host1.
    m.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "dead",
        "--replicas",
        "0",
        "--network",
        "plain",
        "--",
        "sleep",
        "600",
    ])?;
    let r = wait_for("the dead service's VIP", Duration::from_secs(20), || {
        let r = trace(
            m,
            &[
                "--from", "c1", "--to", "dead", "--proto", "tcp", "--dport", "80",
            ],
        );
        Ok(r.ok().filter(|r| first_failure(r).is_some()))
    })?;
    assert_eq!(
        first_failure(&r),
        Some(("host1".into(), "vip".into(), "lb/no_backend".into())),
        "{r:#}"
    );
    let out = m.cli(&[
        "trace", "--from", "c1", "--to", "dead", "--proto", "tcp", "--dport", "80",
    ])?;
    eprintln!("{}", out.stdout);
    assert_eq!(out.status.code(), Some(1), "a dropped trace exits 1");
    assert!(out.stdout.contains("fix: "), "{}", out.stdout);

    // An address that belongs to no endpoint: ARP unanswered, host1.
    let r = trace(m, &["--from", "c1", "--to", "10.61.0.250"])?;
    assert_eq!(
        first_failure(&r),
        Some(("host1".into(), "arp_nd".into(), "arp_nd/no_answer".into())),
        "{r:#}"
    );

    // No peer for the destination: host2 dies, its endpoints leave
    // host1's dataplane while the swarm still lists c2 there. c1 still
    // has c2's MAC: unknown unicast, flooded to host1's other endpoints
    // only, which the trace calls fdb/no_peer.
    process::kill_pid(w.pid, libc::SIGKILL);
    process::kill_pid(sw.dataplanes[1].pid, libc::SIGKILL);
    // Right away host2 is not Down yet: the trace reaches for its half,
    // which never comes, and shows host1's steps, ending `sent`.
    let (r, code) =
        common::swarm::trace_json(m, &["--from", "c1", "--to", &ip2, "--network", "plain"])?;
    let last = r["steps"].as_array().and_then(|a| a.last());
    assert!(
        r["verdict"] == "sent"
            && code == Some(6)
            && path(&r).iter().any(|(h, s)| h == "host1" && s == "outer")
            && last.is_some_and(|s| s["host"] == "host2"
                && s["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("did not come back"))),
        "a trace whose remote half never comes: {code:?} {r:#}"
    );
    let r = wait_for(
        "host2's endpoints withdrawn",
        Duration::from_secs(20),
        || {
            // Until gossip says so, the trace reaches for host2, which no
            // longer answers.
            let r = trace(m, &["--from", "c1", "--to", &ip2, "--network", "plain"]);
            Ok(r.ok()
                .filter(|r| first_failure(r).is_some_and(|f| f.2 == "fdb/no_peer")))
        },
    )?;
    assert_eq!(
        first_failure(&r),
        Some(("host1".into(), "fdb".into(), "fdb/no_peer".into())),
        "{r:#}"
    );
    let fix = r["steps"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["verdict"] == "drop"))
        .and_then(|s| s["fix"].as_str())
        .unwrap_or_default();
    assert!(fix.contains("host host2 is Down"), "{r:#}");
    Ok(())
}
