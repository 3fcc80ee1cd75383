//! Containers across hosts: removal from the manager (item 3),
//! addresses that move or are reused (item 12), network options (item 13),
//! a command that cannot start (item 10) and the container life cycle.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use vxnet_testbed::process;
use vxnet_testbed::swarm::vxnet_ctl;

use super::common::swarm::{create_network, log_of, ok, ok_json, run_sleeper, swarm};
use super::common::{root_or_skip, testbed};
use super::*;

/// How soon a replaced container's new MAC must be what every other host
/// holds for its address.
const NEW_MAC_WITHIN: Duration = Duration::from_secs(1);

/// Items 3 and 12 (first two bullets). On the manager, `network rm` of a
/// network only a container on host2 uses is refused, naming it; `container
/// rm -f` of that container removes it on host2 (process, namespace,
/// dataplane endpoint), after which `network rm` is accepted and a
/// container with the same address runs on host2. A container removed on
/// host2 and at once run with the same address on host1 starts without a
/// refusal and answers host2. Another runtime's container replaced by one
/// with the same address and another MAC is held with the new MAC by
/// host1 within [`NEW_MAC_WITHIN`], and host1's container reaches it.
#[test]
fn remote_remove_and_address_reuse() -> Result<()> {
    if !root_or_skip("remote_remove_and_address_reuse") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let s = swarm(&tb)?;
    let (c1, c2) = (&s.controls[0], &s.controls[1]);
    for (name, subnet) in [("rnet", "10.98.0.0/24"), ("xnet", "10.97.0.0/24")] {
        create_network(c1, name, &["--subnet", subnet])?;
    }
    run_sleeper(c1, "r1", &["rnet"])?;
    run_sleeper(c2, "r2", &["rnet", "xnet"])?;
    let r1 = endpoint(c1, "r1", "rnet")?;
    let r2 = endpoint(c2, "r2", "rnet")?;
    let r2_pid = ok_json(c2, &["container", "inspect", "r2"])?[0]["pid"]
        .as_u64()
        .context("r2's pid")?;
    tb.wait_reachable(&r1.netns, &r2.ipv4, Duration::from_secs(15))?;

    // Item 3.
    refused(c1, &["network", "rm", "xnet"], &["in use", "r2"])?;
    ok(c1, &["container", "rm", "-f", "r2"])?;
    assert!(!process::pid_alive(r2_pid as u32), "r2's process runs on");
    assert!(!netns_exists(&r2.netns), "r2's namespace is left");
    assert!(
        !endpoints(&tb, 2).contains(&r2.mac),
        "{}",
        endpoints(&tb, 2)
    );
    refused(c2, &["container", "inspect", "r2"], &["r2"])?;
    ok(c1, &["network", "rm", "xnet"])?;
    run_at(c2, "r2b", "rnet", &r2.ipv4).context("the same address again on host2")?;
    tb.wait_reachable(&r1.netns, &r2.ipv4, Duration::from_secs(5))
        .with_context(|| {
            format!(
                "fdb1 {:?}\nfdb2 {:?}\n{}",
                fdb(&tb, 1),
                fdb(&tb, 2),
                log_of(&tb, "control-host2")
            )
        })?;

    // Item 12, first bullet: host2 -> host1 at once, same address (and
    // so the same MAC).
    run_sleeper(c2, "r4", &["rnet"])?;
    let r4 = endpoint(c2, "r4", "rnet")?;
    fast_arp(&tb, &r4.netns)?;
    ok(c2, &["container", "rm", "-f", "r2b"])?;
    run_at(c1, "r3", "rnet", &r2.ipv4).context("the address that just left host2, on host1")?;
    let t = Instant::now();
    let reply = tb.exec_timeout(
        &r4.netns,
        &["ping", "-n", "-c", "1", "-W", "1", &r2.ipv4],
        Duration::from_secs(5),
    )?;
    let t = t.elapsed();
    ensure!(
        reply.success() && t <= REACHABLE_WITHIN,
        "the address that moved to host1, from host2 after {t:?}: {}; fdb {:?}",
        reply.combined(),
        fdb(&tb, 2)
    );
    eprintln!("item 12: an address moved from host2 to host1 answered host2 after {t:?}");

    // Item 12, second bullet: another runtime's container on host2 with a
    // MAC of its own, replaced by one with the same address and another
    // MAC.
    let ext = format!("{}-ext", tb.host(2).ns);
    for cmd in [
        vec!["ip", "netns", "add", ext.as_str()],
        vec!["ip", "-n", ext.as_str(), "link", "set", "lo", "up"],
    ] {
        process::run(None, &cmd, Duration::from_secs(5))?.check()?;
    }
    let ip = "10.98.0.200";
    let (mac_a, mac_b) = ("02:aa:00:00:00:0a", "02:aa:00:00:00:0b");
    let connect = |name: &str, mac: &str| {
        ok(
            c2,
            &[
                "network", "connect", "--netns", &ext, "--ip", ip, "--mac", mac, "rnet", name,
            ],
        )
    };
    let holds = |mac: &str| {
        let f = fdb(&tb, 1);
        let at = |m: &str| {
            f.iter().any(|e| {
                e["mac"] == m
                    && e["ips"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == ip))
            })
        };
        at(mac) && !at(if mac == mac_a { mac_b } else { mac_a })
    };
    connect("ea", mac_a)?;
    within(Duration::from_secs(5), "the first MAC on host1", || {
        holds(mac_a)
    })?;
    ok(c2, &["network", "disconnect", "rnet", "ea"])?;
    connect("eb", mac_b)?;
    let t = within(NEW_MAC_WITHIN, "the new MAC on host1", || holds(mac_b))
        .with_context(|| format!("{:?}", fdb(&tb, 1)))?;
    eprintln!("item 12: host1 held the replacement's MAC {t:?} after `network connect`");
    tb.wait_reachable(&r1.netns, ip, Duration::from_secs(5))?;
    let neigh = tb.exec_ok(&r1.netns, &["ip", "neigh", "show", ip])?.stdout;
    assert!(neigh.contains(mac_b), "{neigh}");
    ok(c2, &["network", "disconnect", "rnet", "eb"])?;
    process::run(None, &["ip", "netns", "del", &ext], Duration::from_secs(5))?.check()?;
    Ok(())
}

/// Items 10, 12 (third bullet) and 13, and from "Also expected" `container
/// stop|start|logs` and `run --rm`, on the worker. `run -d` of a binary
/// that does not exist fails with the exec error and leaves no container,
/// namespace or endpoint. A network created with Docker's MTU option has
/// that MTU on the container's interface; an MTU out of range is refused
/// saying so. On a network with an IPv4 and an IPv6 subnet, host1's
/// dataplane holds both addresses of host2's container and both pings
/// cross. A stopped container leaves the network and keeps its log; started
/// again it answers and logs again; `run --rm` leaves nothing.
#[test]
fn container_lifecycle_mtu_and_dual_stack() -> Result<()> {
    if !root_or_skip("container_lifecycle_mtu_and_dual_stack") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let s = swarm(&tb)?;
    let (c1, c2) = (&s.controls[0], &s.controls[1]);
    let prefix2 = format!("{}-", tb.host(2).ns);

    // Item 13.
    create_network(c1, "mnet", &["--opt", "com.docker.network.driver.mtu=1200"])?;
    refused(
        c1,
        &[
            "network",
            "create",
            "-d",
            "overlay",
            "--opt",
            "com.docker.network.driver.mtu=99999",
            "bignet",
        ],
        &["out of range"],
    )?;
    refused(c1, &["network", "inspect", "bignet"], &["bignet"])?;

    // Item 10, on the worker.
    let o = vxnet_ctl(
        &c2.socket,
        &[
            "container",
            "run",
            "-d",
            "--name",
            "nobin",
            "--network",
            "mnet",
            "--",
            "/nonexistent/binary",
        ],
    )?;
    assert!(
        !o.success(),
        "run of a missing binary exited 0: {}",
        o.stdout
    );
    assert!(
        o.stderr.contains("/nonexistent/binary")
            && o.stderr.to_lowercase().contains("no such file"),
        "{}",
        o.stderr
    );
    refused(c2, &["container", "inspect", "nobin"], &["nobin"])?;
    assert!(!netns_exists(&format!("{prefix2}nobin")));
    assert!(
        !endpoints(&tb, 2).contains("nobin"),
        "{}",
        endpoints(&tb, 2)
    );

    run_sleeper(c2, "m2", &["mnet"])?;
    let m2 = endpoint(c2, "m2", "mnet")?;
    let link = tb
        .exec_ok(&m2.netns, &["ip", "link", "show", "eth0"])?
        .stdout;
    assert!(link.contains("mtu 1200 "), "{link}");

    // Item 12, third bullet.
    create_network(
        c1,
        "dual",
        &["--subnet", "10.96.0.0/24", "--subnet", "fd96::/64"],
    )?;
    run_sleeper(c1, "d1", &["dual"])?;
    run_sleeper(c2, "d2", &["dual"])?;
    let d1 = endpoint(c1, "d1", "dual")?;
    let d2 = endpoint(c2, "d2", "dual")?;
    let d2_v6 = d2.ipv6.clone().context("d2 has no IPv6 address")?;
    let vtep2 = tb.host(2).underlay_v4.to_string();
    within(
        Duration::from_secs(5),
        "both of d2's addresses on host1",
        || has_remote(&tb, 1, &d2.mac, &vtep2, &[&d2.ipv4, &d2_v6]),
    )
    .with_context(|| format!("{:?}", fdb(&tb, 1)))?;
    tb.wait_reachable(&d1.netns, &d2.ipv4, Duration::from_secs(10))?;
    tb.wait_reachable(&d1.netns, &d2_v6, Duration::from_secs(10))?;

    // stop, logs, start; run --rm.
    ok(
        c2,
        &[
            "container",
            "run",
            "-d",
            "--name",
            "talker",
            "--network",
            "dual",
            "--",
            "sh",
            "-c",
            "echo hello-from-talker; exec sleep 600",
        ],
    )?;
    let talker = endpoint(c2, "talker", "dual")?;
    // Its command gets SIGTERM (`container stop`): no signal is blocked,
    // though the daemon that started it blocks the termination signals.
    let pid = ok_json(c2, &["container", "inspect", "talker"])?[0]["pid"]
        .as_u64()
        .context("talker's pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let blocked = status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .map(str::trim)
        .unwrap_or_default();
    ensure!(
        blocked.chars().all(|c| c == '0'),
        "talker starts with signals blocked: SigBlk {blocked}"
    );
    let logs = || ok(c2, &["container", "logs", "talker"]).unwrap_or_default();
    within(Duration::from_secs(5), "talker's output in its log", || {
        logs().contains("hello-from-talker")
    })?;
    tb.wait_reachable(&d1.netns, &talker.ipv4, Duration::from_secs(10))?;
    // The embedded DNS on the other host answers the name only while the
    // container runs (Docker drops a stopped container's records).
    let resolve = |name: &str| -> String {
        tb.exec_timeout(
            &d1.netns,
            &["dig", "+short", "+time=2", "+tries=1", name, "A"],
            Duration::from_secs(10),
        )
        .map(|o| o.stdout.trim().to_owned())
        .unwrap_or_default()
    };
    within(Duration::from_secs(10), "talker resolved on host1", || {
        resolve("talker") == talker.ipv4
    })?;
    ok(c2, &["container", "stop", "-t", "1", "talker"])?;
    let v = ok_json(c2, &["container", "inspect", "talker"])?;
    assert_eq!(v[0]["state"], "stopped", "{v}");
    assert!(
        !endpoints(&tb, 2).contains(&talker.mac),
        "{}",
        endpoints(&tb, 2)
    );
    within(
        Duration::from_secs(10),
        "no answer for stopped talker",
        || resolve("talker").is_empty(),
    )?;
    // Its endpoint is withdrawn from the other host's FDB too, so a packet
    // for it stops at the sender (`tap/no_receivers`), not on the wire.
    within(
        Duration::from_secs(10),
        "talker's MAC gone from host1",
        || !fdb(&tb, 1).iter().any(|e| e["mac"] == talker.mac.as_str()),
    )
    .with_context(|| format!("{:?}", fdb(&tb, 1)))?;
    // `vxnet trace` to it from host1 says why and what to do.
    let (r, code) = super::common::swarm::trace_json(c1, &["--from", "d1", "--to", &talker.ipv4])?;
    let fix = r["steps"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["verdict"] == "drop"))
        .and_then(|s| s["fix"].as_str())
        .unwrap_or_default()
        .to_owned();
    ensure!(
        code == Some(1) && fix.contains("talker on host2 is stopped"),
        "a trace to a stopped container on another host: {r:#}"
    );
    let by_name = c1.cli(&["trace", "--from", "d1", "--to", "talker"])?;
    ensure!(
        by_name.status.code() == Some(4) && by_name.stderr.contains("talker on host2 is stopped"),
        "a trace to a stopped container's name: {}",
        by_name.combined()
    );
    ok(c2, &["container", "start", "talker"])?;
    tb.wait_reachable(&d1.netns, &talker.ipv4, Duration::from_secs(10))?;
    within(Duration::from_secs(10), "talker resolved again", || {
        resolve("talker") == talker.ipv4
    })?;
    within(Duration::from_secs(5), "talker's second output", || {
        logs().matches("hello-from-talker").count() == 2
    })?;

    let out = ok(
        c2,
        &[
            "container",
            "run",
            "--rm",
            "--name",
            "once",
            "--network",
            "dual",
            "--",
            "ping",
            "-c",
            "1",
            "-W",
            "5",
            &d1.ipv4,
        ],
    )?;
    assert!(out.contains("1 received"), "{out}");
    // --rm on a worker: the manager records the removal, and the container
    // may show as `removing` for a moment (under load) before it is gone.
    within(Duration::from_secs(5), "once removed", || {
        refused(c2, &["container", "inspect", "once"], &["once"]).is_ok()
    })?;
    assert!(!netns_exists(&format!("{prefix2}once")));
    Ok(())
}
