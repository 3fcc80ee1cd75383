//! A swarm on the testbed: `vxnet-control` beside each host's dataplane,
//! formed and driven with the `vxnet` CLI. Needs root (skipped otherwise)
//! and the workspace's binaries (`cargo build -p vxnet-dataplane -p
//! vxnet-cli -p vxnet-control`). The testbed removes everything on drop,
//! also on failure (daemons, hosts, the containers' namespaces).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::swarm::{
    container, control_call, create_network, daemons, dp, log_of, network_vni, ok, run_sleeper,
    sleeper_args, swarm, vni_declared,
};
use common::{dp_opts, root_or_skip, testbed};
use vxnet_testbed::process;
use vxnet_testbed::swarm::{Control, vxnet_ctl};

/// Docker's overlay tutorial: init on host1, a bad token refused on host2
/// with nothing changed, join host2, an attachable network created on
/// host1 used by a container on each host, the containers ping each other,
/// and the network leaves host2's dataplane with its last container there.
#[test]
fn two_host_walkthrough() -> Result<()> {
    if !root_or_skip("two_host_walkthrough") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let d = daemons(&tb)?;
    let (c1, c2) = (&d[0].0, &d[1].0);
    let ip1 = tb.host(1).underlay_v4.to_string();
    ok(c1, &["swarm", "init", "--advertise-addr", &ip1])?;
    let token = ok(c1, &["swarm", "join-token", "-q", "worker"])?
        .trim()
        .to_owned();
    let remote = format!("{ip1}:2377");

    // A token with the right CA digest but a wrong secret: refused by the
    // manager, clearly, and nothing changes on either side.
    let (digest_part, _) = token.rsplit_once('-').context("token shape")?;
    let bad = format!("{digest_part}-0123456789abcdefghijklmno");
    let o = vxnet_ctl(&c2.socket, &["swarm", "join", "--token", &bad, &remote])?;
    assert!(!o.success(), "a bad token must be refused");
    assert!(o.stderr.contains("token"), "unclear refusal: {}", o.stderr);
    let o = vxnet_ctl(&c2.socket, &["container", "ls"])?;
    assert!(!o.success(), "host2 must still be outside any swarm");
    let nodes = ok(c1, &["node", "ls"])?;
    assert!(!nodes.contains("host2"), "{nodes}");

    let out = ok(c2, &["swarm", "join", "--token", &token, &remote])?;
    assert!(out.contains("joined a swarm as a worker"), "{out}");
    let nodes = ok(c1, &["node", "ls"])?;
    assert!(
        nodes.contains("host2") && nodes.contains("Ready"),
        "{nodes}"
    );

    create_network(c1, "tnet", &[])?;
    let vni = network_vni(c1, "tnet")?;
    run_sleeper(c1, "ca", &["tnet"])?;
    // The network is not on host2 until a container there needs it.
    assert!(!vni_declared(&tb, 2, vni)?);
    run_sleeper(c2, "cb", &["tnet"])?;
    assert!(vni_declared(&tb, 2, vni)?);
    let (ns_a, ip_a) = container(c1, "ca")?;
    let (ns_b, ip_b) = container(c2, "cb")?;
    // The same name again on the worker: refused for its name (not for
    // the namespace the first one holds).
    let o = vxnet_ctl(&c2.socket, &sleeper_args("cb", &["tnet"]))?;
    assert!(
        !o.success() && o.stderr.contains("container name 'cb' is already used"),
        "{}",
        o.stderr
    );
    // `container exec` on another host than the container's is refused
    // (on the testbed every namespace is visible, on real hosts it is not).
    let o = vxnet_ctl(&c1.socket, &["container", "exec", "cb", "--", "true"])?;
    assert!(
        !o.success() && o.stderr.contains("runs on node host2"),
        "{}",
        o.stderr
    );
    assert_ne!(ip_a, ip_b, "the manager allocates addresses swarm-wide");

    tb.wait_reachable(&ns_b, &ip_a, Duration::from_secs(10))
        .with_context(|| log_of(&tb, "control-host2"))?;
    let r = tb.ping_ok(&ns_a, &ip_b, 3, None)?;
    assert_eq!(r.received, 3, "host1 -> host2");
    let r = tb.ping_ok(&ns_b, &ip_a, 3, None)?;
    assert_eq!(r.received, 3, "host2 -> host1");

    // Another runtime's container on the worker (a namespace made here,
    // named under the host's prefix so teardown removes it on failure)
    // joins by `network connect --netns`, gets its address from the
    // manager and reaches host1; with its last network it is forgotten
    // and its namespace is left to its owner.
    let ext = format!("{}-ext", tb.host(2).ns);
    process::run(None, &["ip", "netns", "add", &ext], Duration::from_secs(5))?.check()?;
    process::run(
        None,
        &["ip", "-n", &ext, "link", "set", "lo", "up"],
        Duration::from_secs(5),
    )?
    .check()?;
    ok(c2, &["network", "connect", "--netns", &ext, "tnet", "ext"])?;
    let (_, ip_ext) = container(c2, "ext")?;
    assert!(ip_ext != ip_a && ip_ext != ip_b, "{ip_ext}");
    tb.wait_reachable(&ext, &ip_a, Duration::from_secs(10))
        .with_context(|| log_of(&tb, "control-host2"))?;
    let r = tb.ping_ok(&ns_a, &ip_ext, 3, None)?;
    assert_eq!(r.received, 3, "host1 -> external container on host2");
    ok(c2, &["network", "disconnect", "tnet", "ext"])?;
    assert!(!vxnet_ctl(&c2.socket, &["container", "inspect", "ext"])?.success());
    assert!(Path::new("/run/netns").join(&ext).exists());
    process::run(None, &["ip", "netns", "del", &ext], Duration::from_secs(5))?.check()?;

    ok(c2, &["container", "rm", "-f", "cb"])?;
    assert!(
        process::wait_until(Duration::from_secs(5), || !vni_declared(&tb, 2, vni)
            .unwrap_or(true)),
        "the network stayed on host2's dataplane: {}",
        dp(&tb, 2, &["network", "ls"]).unwrap_or_default()
    );
    assert!(!Path::new("/run/netns").join(&ns_b).exists());
    // Still on host1, which runs a container on it.
    assert!(vni_declared(&tb, 1, vni)?);
    Ok(())
}

/// A host killed (control and dataplane) is marked Down on the manager and
/// its endpoints leave the manager's dataplane within 5 s.
#[test]
fn dead_host_marked_down_and_withdrawn() -> Result<()> {
    if !root_or_skip("dead_host_marked_down_and_withdrawn") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let s = swarm(&tb)?;
    let (c1, c2) = (&s.controls[0], &s.controls[1]);
    create_network(c1, "dnet", &[])?;
    run_sleeper(c1, "da", &["dnet"])?;
    run_sleeper(c2, "db", &["dnet"])?;
    let (_, ip_b) = container(c2, "db")?;
    let fdb1 = || dp(&tb, 1, &["fdb", "--format", "json"]).unwrap_or_default();
    assert!(
        process::wait_until(Duration::from_secs(10), || fdb1().contains(&ip_b)),
        "host2's endpoint never reached host1: {}",
        fdb1()
    );

    let killed = Instant::now();
    for pid in [c2.pid, s.dataplanes[1].pid] {
        process::kill_pid(pid, libc::SIGKILL);
    }
    let down = || {
        ok(c1, &["node", "ls"])
            .is_ok_and(|s| s.lines().any(|l| l.contains("host2") && l.contains("Down")))
    };
    assert!(
        process::wait_until(Duration::from_secs(5), || down() && !fdb1().contains(&ip_b)),
        "after {:?}: node ls {:?}, fdb {}",
        killed.elapsed(),
        ok(c1, &["node", "ls"]),
        fdb1()
    );
    assert!(killed.elapsed() <= Duration::from_secs(5));
    eprintln!("host2 Down and withdrawn after {:?}", killed.elapsed());

    // The manager shows the dead node and removes it (not itself).
    let v: serde_json::Value = serde_json::from_str(&ok(c1, &["node", "inspect", "host2"])?)?;
    assert_eq!(v[0]["Status"]["State"], "down", "{v}");
    assert_eq!(v[0]["Description"]["Hostname"], "host2", "{v}");
    let e = vxnet_ctl(&c1.socket, &["node", "rm", "host1"])?;
    assert!(
        !e.success() && e.stderr.contains("cannot remove itself"),
        "{e:?}"
    );
    ok(c1, &["node", "rm", "host2"])?;
    let nodes = ok(c1, &["node", "ls"])?;
    assert!(!nodes.contains("host2"), "{nodes}");
    Ok(())
}

/// A host killed (control and dataplane) and restarted on the same state
/// resyncs: the endpoint host1 announced long before is pulled over TCP
/// 7946 from the seed (SWIM alone would not repeat it), reaches host2's
/// new dataplane, and the containers talk again.
#[test]
fn restarted_host_resyncs_endpoints() -> Result<()> {
    if !root_or_skip("restarted_host_resyncs_endpoints") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let s = swarm(&tb)?;
    let (c1, c2) = (&s.controls[0], &s.controls[1]);
    create_network(c1, "rnet", &[])?;
    for (c, name) in [(c1, "ra"), (c2, "rb")] {
        run_sleeper(c, name, &["rnet"])?;
    }
    let (_, ip_a) = container(c1, "ra")?;
    let (ns_b, _) = container(c2, "rb")?;
    let fdb2 = || dp(&tb, 2, &["fdb", "--format", "json"]).unwrap_or_default();
    assert!(
        process::wait_until(Duration::from_secs(10), || fdb2().contains(&ip_a)),
        "host1's endpoint never reached host2: {}",
        fdb2()
    );

    for pid in [c2.pid, s.dataplanes[1].pid] {
        process::kill_pid(pid, libc::SIGKILL);
    }
    let down = || {
        ok(c1, &["node", "ls"])
            .is_ok_and(|s| s.lines().any(|l| l.contains("host2") && l.contains("Down")))
    };
    assert!(
        process::wait_until(Duration::from_secs(10), down),
        "host2 never marked Down: {:?}",
        ok(c1, &["node", "ls"])
    );

    // Same host, same state dir: the helpers start them as before.
    let h2 = tb.host(2);
    let dp2 = tb.start_dataplane(h2, &dp_opts())?;
    let _c2 = tb.start_control(h2, &dp2.socket)?;
    let restarted = Instant::now();
    assert!(
        process::wait_until(Duration::from_secs(20), || fdb2().contains(&ip_a)),
        "host1's endpoint not resynced to host2: fdb {}\n{}",
        fdb2(),
        log_of(&tb, "control-host2")
    );
    eprintln!("host2 resynced after {:?}", restarted.elapsed());
    let fdb1 = || dp(&tb, 1, &["fdb", "--format", "json"]).unwrap_or_default();
    tb.wait_reachable(&ns_b, &ip_a, Duration::from_secs(15))
        .with_context(|| format!("fdb1 {}\n{}", fdb1(), log_of(&tb, "control-host1")))?;
    let r = tb.ping_ok(&ns_b, &ip_a, 3, None)?;
    assert_eq!(r.received, 3, "host2 -> host1 after the restart");
    Ok(())
}

/// An encrypted attachable network across three hosts: every pair of
/// containers talks, and what crosses the underlay is ESP (the hosts'
/// keys came from gossip, not from `vxnet dp vtep add`).
#[test]
fn encrypted_network_across_three_hosts() -> Result<()> {
    if !root_or_skip("encrypted_network_across_three_hosts") {
        return Ok(());
    }
    let tb = testbed(3, 1500)?;
    let controls = swarm(&tb)?.controls;
    create_network(&controls[0], "enet", &["--opt", "encrypted"])?;
    let mut eps = Vec::new();
    for (i, c) in controls.iter().enumerate() {
        let name = format!("e{}", i + 1);
        run_sleeper(c, &name, &["enet"])?;
        eps.push(container(c, &name)?);
    }
    for (i, (ns, _)) in eps.iter().enumerate() {
        for (j, (_, ip)) in eps.iter().enumerate() {
            if i == j {
                continue;
            }
            tb.wait_reachable(ns, ip, Duration::from_secs(15))
                .with_context(|| {
                    format!("e{} -> e{}: {}", i + 1, j + 1, log_of(&tb, "control-host1"))
                })?;
        }
    }
    // The traffic was encrypted: each host has security associations.
    for h in 1..=3 {
        let sa = dp(&tb, h, &["sa"])?;
        assert!(
            tb.hosts()
                .iter()
                .filter(|o| o.index != h)
                .all(|o| sa.contains(&o.underlay_v4.to_string())),
            "host{h} lacks SAs with the others: {sa}"
        );
    }
    Ok(())
}

/// The manager rotates the gossip key every 3 s: across several rotations
/// every host follows (installed, then primary, then the oldest removed,
/// never more than three keys), no host drops a packet for an unknown key,
/// and no node is ever seen Down.
#[test]
fn gossip_key_rotation_keeps_membership() -> Result<()> {
    if !root_or_skip("gossip_key_rotation_keeps_membership") {
        return Ok(());
    }
    let tb = testbed(3, 1500)?;
    let mut controls = Vec::new();
    for h in tb.hosts() {
        let dp = tb.start_dataplane(h, &dp_opts())?;
        controls.push(tb.start_control_with(h, &dp.socket, &["--gossip-key-rotation", "3s"])?);
    }
    tb.form_swarm(&controls)?;
    let status = |c: &Control| control_call(c, &serde_json::json!({"op": "gossip_status"}));
    let all_ready =
        || ok(&controls[0], &["node", "ls"]).is_ok_and(|s| s.matches("Ready").count() == 3);
    assert!(
        process::wait_until(Duration::from_secs(20), all_ready),
        "{:?}",
        ok(&controls[0], &["node", "ls"])
    );
    let gossiping = || {
        controls
            .iter()
            .all(|c| status(c).is_ok_and(|s| s["members"] == 2))
    };
    assert!(
        process::wait_until(Duration::from_secs(20), gossiping),
        "gossip never formed: {:?}",
        controls.iter().map(|c| status(c).ok()).collect::<Vec<_>>()
    );
    let target = 5; // key 1 at init, then four rotations
    let end = Instant::now() + Duration::from_secs(90);
    let mut primaries = Vec::new();
    loop {
        primaries.clear();
        for (i, c) in controls.iter().enumerate() {
            let st = status(c).with_context(|| format!("host{}", i + 1))?;
            assert_eq!(st["rx_unknown_key"], 0, "host{}: {st}", i + 1);
            let keys = st["key_ids"].as_array().map_or(0, Vec::len);
            assert!((1..=3).contains(&keys), "host{}: {st}", i + 1);
            assert_eq!(st["members"], 2, "host{}: {st}", i + 1);
            primaries.push(st["primary"].as_u64().unwrap_or(0));
        }
        let nodes = ok(&controls[0], &["node", "ls"])?;
        assert!(!nodes.contains("Down"), "{nodes}");
        if primaries.iter().all(|p| *p >= target) || Instant::now() > end {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        primaries.iter().all(|p| *p >= target),
        "rotation stalled: primaries {primaries:?}; manager log: {}",
        log_of(&tb, "control-host1")
    );
    // Gossip still carries news under the newest key: an endpoint made now
    // reaches the manager's dataplane (which has a container on the
    // network, so the network is declared there).
    create_network(&controls[0], "knet", &[])?;
    run_sleeper(&controls[0], "k1", &["knet"])?;
    run_sleeper(&controls[2], "k3", &["knet"])?;
    let (_, ip3) = container(&controls[2], "k3")?;
    let fdb1 = || dp(&tb, 1, &["fdb", "--format", "json"]).unwrap_or_default();
    assert!(
        process::wait_until(Duration::from_secs(10), || fdb1().contains(&ip3)),
        "host3's endpoint never reached host1: {}",
        fdb1()
    );
    for c in &controls {
        assert_eq!(status(c)?["rx_unknown_key"], 0);
    }
    Ok(())
}
