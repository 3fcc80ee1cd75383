//! What the dataplane holds and when traffic flows: a restart of the
//! dataplane (item 1), its API (item 7), and how soon a new container is
//! reachable (item 9).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use vxnet_testbed::Dataplane;
use vxnet_testbed::process;
use vxnet_testbed::vxnet::StatsExt;

use super::common::swarm::{container, create_network, dp_json, log_of, run_sleeper, swarm};
use super::common::{dp_opts, root_or_skip, testbed};
use super::*;

/// A steady ping's outcome: how many were sent and which sequence numbers
/// got a reply.
struct SteadyPing {
    sent: u32,
    replied: Vec<u32>,
}

impl SteadyPing {
    fn parse(out: &str) -> Result<SteadyPing> {
        let r = vxnet_testbed::measure::parse_ping(out)?;
        let replied = out
            .lines()
            .filter(|l| l.contains("time="))
            .filter_map(|l| {
                let s = l.split("icmp_seq=").nth(1)?;
                s.split_whitespace().next()?.parse().ok()
            })
            .collect();
        Ok(SteadyPing {
            sent: r.transmitted,
            replied,
        })
    }

    fn lost(&self) -> u32 {
        self.sent.saturating_sub(self.replied.len() as u32)
    }
}

/// Interval of the steady pings across a dataplane restart.
const STEADY_INTERVAL: Duration = Duration::from_millis(50);

/// Their count (8 s).
const STEADY_COUNT: u32 = 160;

/// How soon after the restarted dataplane opens its socket its host must
/// have the other host's peers and key back and a ping get through: the
/// reconciler's 1 s timer, a handshake and an ARP, with margin.
const RESUME_WITHIN: Duration = Duration::from_secs(3);

/// Item 1: a dataplane restart does not cut its host off. Two hosts, a
/// container on each on an encrypted and a plain network; `vxnet-dataplane`
/// on host2 is killed (SIGKILL) and started again while host1's container
/// pings host2's steadily on both networks. Within [`RESUME_WITHIN`] of
/// the restart host2's dataplane holds host1's container as a remote peer
/// on both networks and host1's public key, and pings get through both
/// ways; the steady pings' loss is printed and the last of them are
/// answered.
#[test]
fn dataplane_restart_restores_peers_keys_and_traffic() -> Result<()> {
    if !root_or_skip("dataplane_restart_restores_peers_keys_and_traffic") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let s = swarm(&tb)?;
    let (c1, c2) = (&s.controls[0], &s.controls[1]);
    let (dp1, dp2) = (&s.dataplanes[0], &s.dataplanes[1]);
    create_network(c1, "enc", &["--opt", "encrypted"])?;
    create_network(c1, "pln", &[])?;
    run_sleeper(c1, "a", &["enc", "pln"])?;
    run_sleeper(c2, "b", &["enc", "pln"])?;
    let nets = ["enc", "pln"];
    let a: Vec<Ep> = nets
        .iter()
        .map(|n| endpoint(c1, "a", n))
        .collect::<Result<_>>()?;
    let b: Vec<Ep> = nets
        .iter()
        .map(|n| endpoint(c2, "b", n))
        .collect::<Result<_>>()?;
    for (ea, eb) in a.iter().zip(&b) {
        tb.wait_reachable(&ea.netns, &eb.ipv4, Duration::from_secs(15))?;
        tb.wait_reachable(&eb.netns, &ea.ipv4, Duration::from_secs(15))?;
    }
    let vtep1 = tb.host(1).underlay_v4.to_string();
    let key1 = dp1.public_key()?;

    let interval = format!("{}", STEADY_INTERVAL.as_secs_f64());
    let count = STEADY_COUNT.to_string();
    let (steady, resumed) = std::thread::scope(|s| -> Result<_> {
        let pings: Vec<_> = b
            .iter()
            .map(|eb| {
                let (tb, ns, ip) = (&tb, &a[0].netns, eb.ipv4.clone());
                let (interval, count) = (&interval, &count);
                s.spawn(move || {
                    tb.exec_timeout(
                        ns,
                        &["ping", "-n", "-i", interval, "-c", count, "-W", "1", &ip],
                        Duration::from_secs(60),
                    )
                })
            })
            .collect();
        // Steady traffic reaches host2's container (20 frames written to
        // its TAPs), then the kill.
        let written = || {
            dp2.stats()
                .ok()
                .and_then(|s| s.counter("tap_tx_frames"))
                .unwrap_or(0)
        };
        let before = written();
        within(
            Duration::from_secs(10),
            "steady pings reaching host2",
            || written() >= before + 20,
        )?;
        let killed = Instant::now();
        process::kill_pid(dp2.pid, libc::SIGKILL);
        tb.stop_pids(&[dp2.pid]);
        let dp2 = tb.start_dataplane(tb.host(2), &dp_opts())?;
        let restarted = Instant::now();
        eprintln!(
            "item 1: host2's dataplane killed and serving again after {:?}",
            restarted - killed
        );
        // Back by itself: peers (both networks) and host1's key.
        let peers = within(RESUME_WITHIN, "host1's peers back on host2", || {
            a.iter()
                .all(|ea| has_remote(&tb, 2, &ea.mac, &vtep1, &[&ea.ipv4]))
        })
        .with_context(|| format!("fdb {:?}\n{}", fdb(&tb, 2), log_of(&tb, "control-host2")))?;
        let key = within(RESUME_WITHIN, "host1's key back on host2", || {
            dp2.vteps()
                .is_ok_and(|v| v.iter().any(|v| v.vtep == vtep1 && v.established))
                && dp_json(&tb, 2, &["vtep", "ls"]).is_ok_and(|v| {
                    v.as_array().is_some_and(|a| {
                        a.iter()
                            .any(|e| e["vtep"] == vtep1.as_str() && e["pubkey"] == key1.as_str())
                    })
                })
        })
        .with_context(|| format!("{:?}", dp2.vteps()))?;
        let mut resumed = Vec::new();
        for (ea, eb) in a.iter().zip(&b) {
            tb.wait_reachable(&eb.netns, &ea.ipv4, RESUME_WITHIN)
                .with_context(|| log_of(&tb, "control-host2"))?;
            resumed.push(killed.elapsed());
        }
        eprintln!(
            "item 1: after the restart, peers back in {peers:?}, key in {key:?}; \
             pings host2 -> host1 through (encrypted, plain) {:?} after the kill",
            resumed
        );
        let mut steady = Vec::new();
        for p in pings {
            let out = p
                .join()
                .map_err(|_| anyhow::anyhow!("ping thread panicked"))??;
            steady.push(SteadyPing::parse(&out.stdout)?);
        }
        Ok((steady, resumed))
    })?;
    for ((net, p), resumed) in nets.iter().zip(&steady).zip(&resumed) {
        eprintln!(
            "item 1: steady ping host1 -> host2 on {net} ({} ms apart): {} of {} lost \
             across the dataplane restart ({:.0} ms of traffic)",
            STEADY_INTERVAL.as_millis(),
            p.lost(),
            p.sent,
            f64::from(p.lost()) * STEADY_INTERVAL.as_secs_f64() * 1000.0
        );
        assert_eq!(p.sent, STEADY_COUNT, "{net}");
        // Traffic flows again to the end, and no more was lost than the
        // outage explains (kill, restart, reconcile, handshake).
        let last = p.replied.iter().max().copied().unwrap_or(0);
        assert!(last + 2 >= STEADY_COUNT, "{net}: last reply {last}");
        let explained = (resumed.as_secs_f64() / STEADY_INTERVAL.as_secs_f64()) as u32 + 2;
        assert!(p.lost() <= explained, "{net}: lost {}", p.lost());
    }
    Ok(())
}

/// One raw JSON line to a dataplane's API socket; the parsed reply.
fn dp_raw(dp: &Dataplane, line: &str) -> Result<Value> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&dp.socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(s, "{line}")?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    serde_json::from_str(&reply).with_context(|| format!("reply {reply:?}"))
}

/// Item 7, on bare dataplanes. A `peer_add` with `"ip"` where the field is
/// `"ips"` is refused, naming the field, and adds nothing. A `peer add` of
/// an IPv6 address for a MAC the FDB holds with its IPv4 one keeps both:
/// `dp fdb` lists both, and host1's container reaches host2's over IPv4
/// and IPv6 (the ARP and ND proxies answer both with that MAC).
#[test]
fn dataplane_api_refuses_unknown_fields_and_merges_peer_addresses() -> Result<()> {
    if !root_or_skip("dataplane_api_refuses_unknown_fields_and_merges_peer_addresses") {
        return Ok(());
    }
    use vxnet_testbed::EndpointSpec;
    let tb = testbed(2, 1500)?;
    let (h1, h2) = (tb.host(1), tb.host(2));
    let dp1 = tb.start_dataplane(h1, &dp_opts())?;
    let dp2 = tb.start_dataplane(h2, &dp_opts())?;
    let a = tb.add_container(h1, "a")?;
    let b = tb.add_container(h2, "b")?;
    let vni = 4242;
    let spec = |n: u8| EndpointSpec {
        mac: format!("02:42:0a:2a:00:{n:02x}"),
        ips: vec![format!("10.42.0.{n}/24"), format!("fd42::{n}/64")],
        mtu: 1450,
    };
    let (ea, eb) = (spec(2), spec(3));
    dp1.attach(&a, vni, &ea)?;
    dp2.attach(&b, vni, &eb)?;
    let (v1, v2) = (h1.underlay_v4.to_string(), h2.underlay_v4.to_string());

    let line = format!(
        r#"{{"op":"peer_add","vni":{vni},"mac":"{}","ip":"10.42.0.3","vtep":"{v2}"}}"#,
        eb.mac
    );
    let r = dp_raw(&dp1, &line)?;
    assert_eq!(r["ok"], false, "{r}");
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("unknown field") && msg.contains("`ip`"), "{r}");
    assert_eq!(r["error"]["code"], "invalid_argument", "{r}");
    let held = dp1.fdb()?;
    assert!(
        !held.to_string().contains(&eb.mac),
        "a refused peer_add added {}: {held}",
        eb.mac
    );

    // host2 learns a's addresses at once; host1 learns b's IPv4 first,
    // its IPv6 later.
    dp2.peer_add(vni, &ea, &v1)?;
    let (b4, b6) = (eb.v4().context("v4")?, eb.v6().context("v6")?);
    dp1.cli_ok(&[
        "peer", "add", "--vni", "4242", "--mac", &eb.mac, "--ip", b4, "--vtep", &v2,
    ])?;
    dp1.cli_ok(&[
        "peer", "add", "--vni", "4242", "--mac", &eb.mac, "--ip", b6, "--vtep", &v2,
    ])?;
    assert!(
        has_remote(&tb, 1, &eb.mac, &v2, &[b4, b6]),
        "host1's FDB lost an address of {}: {:?}",
        eb.mac,
        fdb(&tb, 1)
    );
    for ip in [b4, b6] {
        tb.wait_reachable(&a.ns, ip, Duration::from_secs(10))?;
        let neigh = tb.exec_ok(&a.ns, &["ip", "neigh", "show", ip])?.stdout;
        assert!(neigh.contains(&eb.mac), "{ip}: {neigh}");
    }
    Ok(())
}

/// New containers measured.
const NEW_CONTAINERS: usize = 10;

/// min / median / max of some durations, in ms.
fn distribution(v: &[Duration]) -> String {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    match (ms.first(), ms.get(ms.len() / 2), ms.last()) {
        (Some(min), Some(med), Some(max)) => {
            format!("min {min:.0} / median {med:.0} / max {max:.0} ms")
        }
        _ => "none".into(),
    }
}

/// Item 9: a new container is reachable from every Ready host within
/// [`REACHABLE_WITHIN`] of `container run -d` returning. Three hosts, a
/// container on hosts 2 and 3; ten times a new container is run on host1,
/// and the moment `run -d` returns, hosts 2 and 3's containers ping it
/// (each one ping, answered or not within the deadline). The pinging
/// containers send ARP again every 20 ms rather than the kernel's 1 s, so
/// what is measured is when the dataplane can answer, not the kernel's
/// retry timer. Prints the distribution of the time to the first reply.
#[test]
fn new_container_reachable_from_every_host_at_once() -> Result<()> {
    if !root_or_skip("new_container_reachable_from_every_host_at_once") {
        return Ok(());
    }
    let tb = testbed(3, 1500)?;
    let cs = swarm(&tb)?.controls;
    create_network(&cs[0], "qnet", &["--subnet", "10.99.0.0/24"])?;
    run_sleeper(&cs[0], "q1", &["qnet"])?;
    let (_, q1_ip) = container(&cs[0], "q1")?;
    let mut pingers = Vec::new();
    for (i, c) in cs.iter().enumerate().skip(1) {
        let name = format!("q{}", i + 1);
        run_sleeper(c, &name, &["qnet"])?;
        let (ns, _) = container(c, &name)?;
        tb.wait_reachable(&ns, &q1_ip, Duration::from_secs(15))?;
        fast_arp(&tb, &ns)?;
        pingers.push(ns);
    }

    let mut times = Vec::new();
    for n in 0..NEW_CONTAINERS {
        let name = format!("n{n}");
        let ip = format!("10.99.0.{}", 100 + n);
        run_at(&cs[0], &name, "qnet", &ip)?;
        let returned = Instant::now();
        let got: Vec<Result<Duration>> = std::thread::scope(|s| {
            let hs: Vec<_> = pingers
                .iter()
                .map(|ns| {
                    let (tb, ip) = (&tb, &ip);
                    s.spawn(move || -> Result<Duration> {
                        let out = tb.exec_timeout(
                            ns,
                            &["ping", "-n", "-c", "1", "-W", "1", ip],
                            Duration::from_secs(5),
                        )?;
                        ensure!(out.success(), "{ns} -> {ip}: {}", out.combined());
                        Ok(returned.elapsed())
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("ping thread panicked"))?
                })
                .collect()
        });
        for (host, t) in [2, 3].iter().zip(got) {
            let t = t.with_context(|| format!("{name} from host{host}: {:?}", fdb(&tb, *host)))?;
            times.push(t);
        }
    }
    eprintln!(
        "item 9: {NEW_CONTAINERS} new containers on host1, first ping reply on hosts 2 and 3 \
         after `run -d` returned: {} ({} pings)",
        distribution(&times),
        times.len()
    );
    let slow: Vec<_> = times.iter().filter(|t| **t > REACHABLE_WITHIN).collect();
    assert!(
        slow.is_empty(),
        "not reachable within {REACHABLE_WITHIN:?}: {slow:?}"
    );
    Ok(())
}
