//! Issue 12, the data path on real underlays, with dataplanes programmed
//! by hand: the MTU from the path on 1400- and 9000-byte underlays over
//! IPv4 and IPv6, plain and encrypted; "too big" answered back; the MTU
//! of an underlay that changes while running; broadcast and multicast to
//! three hosts, and not with flooding off; a MAC change learned at once;
//! every kind of frame delivered or counted. Needs root (skipped
//! otherwise); the testbed removes everything on drop, also on failure.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::udp::{self, Listener};
use common::{dp_opts, root_or_skip, tcp_transfer_intact, testbed};
use vxnet_testbed::scenario::{HANDSHAKE_TIMEOUT, numbered_endpoint};
use vxnet_testbed::vxnet::{Dataplane, EndpointSpec, StatsExt};
use vxnet_testbed::{Container, DataplaneOptions, Host, Testbed};

const VNI: u32 = 4444;

/// The rule of the issue, written out: the underlay's MTU minus the outer
/// headers of its family (50 bytes over IPv4, 70 over IPv6), minus ESP's
/// 42 on an encrypted network (kept a multiple of 4 there).
fn rule(underlay: u32, v6: bool, encrypted: bool) -> u32 {
    let plain = underlay - if v6 { 70 } else { 50 };
    if encrypted { (plain - 42) & !3 } else { plain }
}

fn vtep(h: &Host, v6: bool) -> String {
    if v6 {
        h.underlay_v6.to_string()
    } else {
        h.underlay_v4.to_string()
    }
}

/// Dataplanes on every host of `tb`, one container each (`c1`, ... on
/// overlay 44), all peers of each other on [`VNI`], keys exchanged when
/// encrypted. Endpoints get the MTU the underlay carries (no `--mtu`).
struct Mesh {
    dps: Vec<Dataplane>,
    cs: Vec<Container>,
    eps: Vec<EndpointSpec>,
}

fn mesh(tb: &Testbed, opts: &DataplaneOptions, encrypted: bool) -> Result<Mesh> {
    let v6 = opts.underlay_v6;
    let mut m = Mesh {
        dps: Vec::new(),
        cs: Vec::new(),
        eps: Vec::new(),
    };
    for h in tb.hosts() {
        let dp = tb.start_dataplane(h, opts)?;
        if encrypted {
            dp.network_add(VNI, true)?;
        }
        let c = tb.add_container(h, &format!("c{}", h.index))?;
        let ep = numbered_endpoint(44, h.index as u8 + 1, 0);
        dp.attach_path_mtu(&c, VNI, &ep)?;
        m.dps.push(dp);
        m.cs.push(c);
        m.eps.push(ep);
    }
    for (i, dp) in m.dps.iter().enumerate() {
        for (j, h) in tb.hosts().iter().enumerate() {
            if i != j {
                dp.peer_add(VNI, &m.eps[j], &vtep(h, v6))?;
            }
        }
    }
    if encrypted {
        let keys: Vec<String> = m
            .dps
            .iter()
            .map(Dataplane::public_key)
            .collect::<Result<_>>()?;
        for (i, dp) in m.dps.iter().enumerate() {
            for (j, h) in tb.hosts().iter().enumerate() {
                if i != j {
                    dp.vtep_add(&vtep(h, v6), &keys[j])?;
                }
            }
        }
        for (i, dp) in m.dps.iter().enumerate() {
            for (j, h) in tb.hosts().iter().enumerate() {
                if i != j {
                    dp.wait_vtep(&vtep(h, v6), 0, HANDSHAKE_TIMEOUT)?;
                }
            }
        }
    }
    Ok(m)
}

fn link_mtu(tb: &Testbed, ns: &str) -> Result<u32> {
    let out = tb.exec_ok(ns, &["ip", "-o", "link", "show", "eth0"])?;
    out.stdout
        .split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("no MTU in {}", out.stdout))
}

fn count(dp: &Dataplane, name: &str) -> Result<u64> {
    Ok(dp.stats()?.counter(name).unwrap_or(0))
}

/// Every drop of a dataplane, by (stage, reason).
fn drops(dp: &Dataplane) -> Result<BTreeMap<(String, String), u64>> {
    Ok(dp
        .stats()?
        .drops
        .into_iter()
        .filter(|d| d.count > 0)
        .map(|d| ((d.stage, d.reason), d.count))
        .collect())
}

fn io_drops(dp: &Dataplane) -> Result<u64> {
    Ok(drops(dp)?
        .iter()
        .filter(|((stage, _), _)| stage == "io")
        .map(|(_, n)| n)
        .sum())
}

/// One DF ping from `ns` to `dst` of `size` bytes of payload: its output.
fn df_ping(tb: &Testbed, ns: &str, dst: &str, size: u32) -> Result<String> {
    let size = size.to_string();
    let out = tb.exec(
        ns,
        &[
            "ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", &size, dst,
        ],
    )?;
    Ok(out.combined())
}

/// One underlay: containers get the MTU the rule gives, 24 MB of TCP
/// cross intact with it, a DF ping one byte too large is answered with the
/// MTU, and with their interfaces' MTU set above what the path carries,
/// TCP still crosses intact: its segments are cut to fit and it is told.
fn mtu_from_the_path(underlay: u32, v6: bool, encrypted: bool) -> Result<()> {
    let what = format!("underlay {underlay}, IPv6 {v6}, encrypted {encrypted}");
    let tb = testbed(2, underlay)?;
    let opts = DataplaneOptions {
        underlay_v6: v6,
        ..dp_opts()
    };
    let m = mesh(&tb, &opts, encrypted)?;
    let mtu = rule(underlay, v6, encrypted);
    let (c1, c2) = (&m.cs[0].ns, &m.cs[1].ns);
    let (v4_1, v4_2) = (
        m.eps[0].v4().unwrap_or_default(),
        m.eps[1].v4().unwrap_or_default(),
    );
    let v6_2 = m.eps[1].v6().unwrap_or_default();
    assert_eq!(link_mtu(&tb, c1)?, mtu, "{what}");
    assert_eq!(m.dps[0].show()?["underlay_mtu"], underlay, "{what}");
    assert_eq!(m.dps[0].networks()?[0].mtu, mtu, "{what}");
    tb.ping_ok(c1, v4_2, 3, Some(mtu - 28))?;
    tcp_transfer_intact(c2, v4_2, c1).with_context(|| what.clone())?;
    for dp in &m.dps {
        assert_eq!(io_drops(dp)?, 0, "{what}: {:?}", drops(dp)?);
        assert_eq!(
            count(dp, "gso_capped")?,
            0,
            "{what}: nothing needed cutting"
        );
    }

    // Interfaces set larger than the path. Neither side has learned the
    // path's MTU yet (both would advertise a smaller MSS): c2's first TSO
    // frames are cut to fit, it is told, and nothing is lost.
    let bigger = (mtu + 100).to_string();
    for c in [c1, c2] {
        tb.exec_ok(c, &["ip", "link", "set", "eth0", "mtu", &bigger])?;
    }
    tcp_transfer_intact(c1, v4_1, c2).with_context(|| format!("{what}, larger interfaces"))?;
    assert!(
        count(&m.dps[1], "gso_capped")? > 0,
        "{what}: {:?}",
        m.dps[1].stats()?
    );
    assert!(count(&m.dps[1], "too_big_replies")? > 0, "{what}");
    // c1 has not sent anything too big to c2: a DF ping one byte over the
    // path's MTU is answered by the dataplane, with that MTU.
    let out = df_ping(&tb, c1, v4_2, mtu - 28 + 1)?;
    assert!(out.contains(&format!("mtu = {mtu}")), "{what}: {out}");
    let out = df_ping(&tb, c1, v6_2, mtu - 48 + 1)?;
    assert!(out.contains(&format!("mtu={mtu}")), "{what}: {out}");
    let answered = m.dps[0].stats()?.drop_count("tap", "too_big").unwrap_or(0);
    assert_eq!(answered, 2, "{what}: counted as too big");
    for dp in &m.dps {
        assert_eq!(io_drops(dp)?, 0, "{what}: {:?}", drops(dp)?);
    }
    Ok(())
}

#[test]
fn mtu_from_the_path_1400_ipv4() -> Result<()> {
    if !root_or_skip("mtu_from_the_path_1400_ipv4") {
        return Ok(());
    }
    mtu_from_the_path(1400, false, false)?;
    mtu_from_the_path(1400, false, true)
}

#[test]
fn mtu_from_the_path_1400_ipv6() -> Result<()> {
    if !root_or_skip("mtu_from_the_path_1400_ipv6") {
        return Ok(());
    }
    mtu_from_the_path(1400, true, false)?;
    mtu_from_the_path(1400, true, true)
}

#[test]
fn mtu_from_the_path_9000_ipv4() -> Result<()> {
    if !root_or_skip("mtu_from_the_path_9000_ipv4") {
        return Ok(());
    }
    mtu_from_the_path(9000, false, false)?;
    mtu_from_the_path(9000, false, true)
}

#[test]
fn mtu_from_the_path_9000_ipv6() -> Result<()> {
    if !root_or_skip("mtu_from_the_path_9000_ipv6") {
        return Ok(());
    }
    mtu_from_the_path(9000, true, false)?;
    mtu_from_the_path(9000, true, true)
}

/// The underlay's MTU drops from 1500 to 1400 while containers run: the
/// dataplane sees it within seconds, reports the endpoint attached before
/// (its MTU 1450 is now more than the path's 1350), gives a new endpoint
/// 1350, and the old one's TCP still crosses intact.
#[test]
fn an_underlay_mtu_change_is_picked_up_and_reported() -> Result<()> {
    if !root_or_skip("an_underlay_mtu_change_is_picked_up_and_reported") {
        return Ok(());
    }
    let mut tb = testbed(2, 1500)?;
    let m = mesh(&tb, &dp_opts(), false)?;
    assert_eq!(link_mtu(&tb, &m.cs[0].ns)?, 1450);
    tb.set_underlay_mtu(1400)?;
    let seen = vxnet_testbed::process::wait_until(Duration::from_secs(5), || {
        m.dps
            .iter()
            .all(|dp| dp.show().is_ok_and(|s| s["underlay_mtu"] == 1400))
    });
    assert!(seen, "underlay MTU not picked up: {}", m.dps[0].show()?);
    let eps = m.dps[0].endpoints()?;
    assert_eq!(eps[0]["mtu"], 1450);
    assert_eq!(eps[0]["path_mtu"], 1350, "reported: {eps}");
    let table = m.dps[0].cli_ok(&["endpoints"])?.stdout;
    assert!(table.contains("1450 (path 1350)"), "{table}");
    // A new endpoint gets what the path carries now.
    let c3 = tb.add_container(tb.host(1), "c3")?;
    m.dps[0].attach_path_mtu(&c3, VNI, &numbered_endpoint(44, 9, 0))?;
    assert_eq!(link_mtu(&tb, &c3.ns)?, 1350);
    // The old endpoint's bulk TCP (MTU 1450 over a 1350 path) goes through.
    let v4_2 = m.eps[1].v4().unwrap_or_default();
    tb.ping_ok(&m.cs[0].ns, v4_2, 1, None)?;
    tcp_transfer_intact(&m.cs[1].ns, v4_2, &m.cs[0].ns)?;
    assert!(count(&m.dps[0], "gso_capped")? > 0);
    assert_eq!(io_drops(&m.dps[0])?, 0, "{:?}", drops(&m.dps[0])?);
    Ok(())
}

/// Per receiving container: how many of the test's datagrams arrived.
fn received(listeners: &[Listener], mark: &[u8], want: usize) -> Vec<usize> {
    listeners
        .iter()
        .map(|l| l.count(mark, want, Duration::from_millis(1500)))
        .collect()
}

/// How many hosts' containers answer one ping to all-nodes from `ns` (the
/// sender's own included): the most distinct sources that answered the
/// same echo, and ping's output. Counted per echo, because one container
/// may answer two echoes from two addresses (seen: the first from its
/// global address, the next from its link-local one, as the sender's
/// source address changed between them).
fn all_nodes_responders(tb: &Testbed, ns: &str) -> Result<(usize, String)> {
    let out = tb.exec(
        ns,
        &[
            "ping",
            "-6",
            "-n",
            "-c",
            "2",
            "-i",
            "0.5",
            "-W",
            "2",
            "ff02::1%eth0",
        ],
    )?;
    // "64 bytes from fe80::44:ff:fe00:3%eth0: icmp_seq=1 ttl=64 ..."
    let mut replies: Vec<(&str, &str)> = out
        .stdout
        .lines()
        .filter_map(|l| l.split(" from ").nth(1))
        .filter_map(|rest| rest.split_once(": icmp_seq="))
        .map(|(from, rest)| (rest.split(' ').next().unwrap_or_default(), from))
        .collect();
    replies.sort_unstable();
    replies.dedup();
    let most = replies
        .chunk_by(|a, b| a.0 == b.0)
        .map(<[_]>::len)
        .max()
        .unwrap_or(0);
    Ok((most, out.combined()))
}

/// Broadcast (to the subnet's and to 255.255.255.255), an IPv4 multicast
/// group, IPv6 all-nodes (UDP and ping) from the container on host1 reach
/// the containers on host2 and host3; with flooding off they reach nobody
/// and every frame is counted; a storm is held to the flood rate.
fn flooding_reaches_three_hosts(v6: bool, encrypted: bool) -> Result<()> {
    let what = format!("IPv6 underlay {v6}, encrypted {encrypted}");
    let tb = testbed(3, 1500)?;
    let opts = DataplaneOptions {
        underlay_v6: v6,
        ..dp_opts()
    };
    let m = mesh(&tb, &opts, encrypted)?;
    let group = Ipv4Addr::new(239, 1, 2, 3);
    let local = |i: usize| m.eps[i].v4().and_then(|a| a.parse().ok());
    let l4: Vec<Listener> = (1..3)
        .map(|i| Listener::open(&m.cs[i].ns, 7000, false, &[group], local(i)))
        .collect::<Result<_>>()?;
    let l6: Vec<Listener> = (1..3)
        .map(|i| Listener::open(&m.cs[i].ns, 7006, true, &[], None))
        .collect::<Result<_>>()?;
    let c1 = &m.cs[0].ns;
    let targets: [(&str, SocketAddr, &[Listener]); 4] = [
        ("subnet broadcast", "10.44.0.255:7000".parse()?, &l4),
        ("limited broadcast", "255.255.255.255:7000".parse()?, &l4),
        ("IPv4 multicast", "239.1.2.3:7000".parse()?, &l4),
        ("IPv6 all-nodes", "[ff02::1]:7006".parse()?, &l6),
    ];
    for (kind, to, listeners) in &targets {
        let mark = format!("on {kind}");
        udp::send(c1, "eth0", *to, mark.as_bytes(), 5)?;
        assert_eq!(
            received(listeners, mark.as_bytes(), 5),
            [5, 5],
            "{what}, {kind}"
        );
    }
    let (answered, out) = all_nodes_responders(&tb, c1)?;
    assert_eq!(answered, 3, "{what}: ping ff02::1\n{out}");
    let flooding = m.dps[0].networks()?[0].flooding;
    assert!(
        flooding.frames >= 20 && flooding.copies >= 40,
        "{what}: {flooding:?}"
    );

    // Flooding off on every host: nothing crosses, and it is counted.
    for dp in &m.dps {
        dp.network_flood(VNI, encrypted, false, None)?;
    }
    let before = m.dps[0]
        .stats()?
        .drop_count("tap", "flood_off")
        .unwrap_or(0);
    for (kind, to, listeners) in &targets {
        let mark = format!("off {kind}");
        udp::send(c1, "eth0", *to, mark.as_bytes(), 5)?;
        assert_eq!(
            received(listeners, mark.as_bytes(), 5),
            [0, 0],
            "{what}, {kind}"
        );
    }
    let after = m.dps[0]
        .stats()?
        .drop_count("tap", "flood_off")
        .unwrap_or(0);
    assert!(after - before >= 20, "{what}: {} counted", after - before);
    assert!(m.dps[0].networks()?[0].flooding.suppressed >= 20, "{what}");
    let (answered, out) = all_nodes_responders(&tb, c1)?;
    assert_eq!(answered, 1, "{what}: only itself\n{out}");

    // On again, with a rate of 20 frames a second: a storm of 300 is held
    // to it, and what does not go is counted.
    for dp in &m.dps {
        dp.network_flood(VNI, encrypted, true, Some(20))?;
    }
    std::thread::sleep(Duration::from_millis(1100));
    let before = m.dps[0]
        .stats()?
        .drop_count("tap", "flood_rate")
        .unwrap_or(0);
    let start = Instant::now();
    udp::send(c1, "eth0", "10.44.0.255:7000".parse()?, b"storm", 300)?;
    let elapsed = start.elapsed().as_secs_f64();
    let got = received(&l4, b"storm", 300);
    let limited = m.dps[0]
        .stats()?
        .drop_count("tap", "flood_rate")
        .unwrap_or(0)
        - before;
    let allowed = 20 + (20.0 * elapsed).ceil() as usize;
    for n in &got {
        assert!(
            *n >= 10 && *n <= allowed,
            "{what}: {got:?} arrived, {allowed} allowed"
        );
        assert!(
            *n as u64 + limited >= 300,
            "{what}: {n} + {limited} limited"
        );
    }
    Ok(())
}

#[test]
fn flooding_reaches_three_hosts_ipv4() -> Result<()> {
    if !root_or_skip("flooding_reaches_three_hosts_ipv4") {
        return Ok(());
    }
    flooding_reaches_three_hosts(false, false)?;
    flooding_reaches_three_hosts(false, true)
}

#[test]
fn flooding_reaches_three_hosts_ipv6() -> Result<()> {
    if !root_or_skip("flooding_reaches_three_hosts_ipv6") {
        return Ok(());
    }
    flooding_reaches_three_hosts(true, false)?;
    flooding_reaches_three_hosts(true, true)
}

/// The container on host2 goes and comes back with the same addresses and
/// another MAC. Host1's container, which knew the old MAC, reaches the new
/// one within a second of host1's dataplane learning it: it was told
/// (gratuitous ARP, unsolicited NA), not left to wait ~50 s for its
/// neighbour entry to expire.
#[test]
fn a_mac_change_behind_an_address_is_reachable_at_once() -> Result<()> {
    if !root_or_skip("a_mac_change_behind_an_address_is_reachable_at_once") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let m = mesh(&tb, &dp_opts(), false)?;
    let (c1, c2) = (&m.cs[0].ns, &m.cs[1].ns);
    let (v4, v6) = (
        m.eps[1].v4().unwrap_or_default(),
        m.eps[1].v6().unwrap_or_default(),
    );
    tb.ping_ok(c1, v4, 2, None)?;
    tb.ping_ok(c1, v6, 2, None)?;
    let neigh = tb
        .exec_ok(c1, &["ip", "neigh", "show", "dev", "eth0"])?
        .stdout;
    assert!(neigh.contains(&m.eps[1].mac), "{neigh}");

    m.dps[1].cli_ok(&["detach", "--netns", c2])?;
    let moved = EndpointSpec {
        mac: "02:44:00:00:09:03".into(),
        ..m.eps[1].clone()
    };
    m.dps[1].attach_path_mtu(&m.cs[1], VNI, &moved)?;
    m.dps[0].cli_ok(&[
        "peer",
        "del",
        "--vni",
        &VNI.to_string(),
        "--mac",
        &m.eps[1].mac,
    ])?;
    m.dps[0].peer_add(VNI, &moved, &tb.host(2).underlay_v4.to_string())?;
    let learned = Instant::now();
    for dst in [v4, v6] {
        let reached = vxnet_testbed::process::wait_until(Duration::from_secs(1), || {
            tb.exec(c1, &["ping", "-n", "-c", "1", "-W", "1", dst])
                .is_ok_and(|o| o.success())
        });
        assert!(
            reached && learned.elapsed() < Duration::from_secs(1),
            "{dst} not reachable within 1 s of the change ({:?})",
            learned.elapsed()
        );
    }
    let neigh = tb
        .exec_ok(c1, &["ip", "neigh", "show", "dev", "eth0"])?
        .stdout;
    assert!(
        neigh.contains(&moved.mac) && !neigh.contains(&m.eps[1].mac),
        "{neigh}"
    );
    assert!(count(&m.dps[0], "neighbour_announced")? >= 2);
    Ok(())
}

/// The frames of the accounting test: a name and the bytes, with c1's MAC
/// as source. `to` is c2's MAC, `unknown` a MAC nobody has.
fn frames(c1: [u8; 6], to: [u8; 6]) -> Vec<(&'static str, Vec<u8>)> {
    use etherparse::{Icmpv6Type, PacketBuilder};
    let unknown = [2, 0x44, 0, 0, 9, 9];
    let bcast = [0xff; 6];
    let udp4 = |dst: [u8; 6], dst_ip: [u8; 4], payload: usize, df: bool| {
        let mut f = Vec::new();
        let _ = PacketBuilder::ethernet2(c1, dst)
            .ipv4([10, 44, 0, 2], dst_ip, 64)
            .udp(1000, 7999)
            .write(&mut f, &vec![0x5a; payload]);
        f[20] = if df { 0x40 } else { 0 };
        f[24] = 0;
        f[25] = 0;
        let c = ipv4_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f
    };
    let ip6 = |s: &str| {
        s.parse::<std::net::Ipv6Addr>()
            .map(|a| a.octets())
            .unwrap_or_default()
    };
    let udp6 = |dst: [u8; 6], dst_ip: &str, payload: usize| {
        let mut f = Vec::new();
        let _ = PacketBuilder::ethernet2(c1, dst)
            .ipv6(ip6("fd44::2"), ip6(dst_ip), 64)
            .udp(1000, 7999)
            .write(&mut f, &vec![0x5a; payload]);
        f
    };
    let icmp6 = |dst: [u8; 6], src_ip: &str, dst_ip: &str, t: u8, body: &[u8]| {
        let mut f = Vec::new();
        let _ = PacketBuilder::ethernet2(c1, dst)
            .ipv6(ip6(src_ip), ip6(dst_ip), 255)
            .icmpv6(Icmpv6Type::Unknown {
                type_u8: t,
                code_u8: 0,
                bytes5to8: [0; 4],
            })
            .write(&mut f, body);
        f
    };
    let arp = |op: u8, sender: [u8; 4], target: [u8; 4], dst: [u8; 6]| {
        let mut f = dst.to_vec();
        f.extend_from_slice(&c1);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, op]);
        f.extend_from_slice(&c1);
        f.extend_from_slice(&sender);
        f.extend_from_slice(&if op == 2 { to } else { [0; 6] });
        f.extend_from_slice(&target);
        f
    };
    let ns = |target: &str, src: &str, slla: bool| {
        let t = ip6(target);
        let mut body = t.to_vec();
        if slla {
            body.extend_from_slice(&[1, 1]);
            body.extend_from_slice(&c1);
        }
        let snm = format!("ff02::1:ff{:02x}:{:02x}{:02x}", t[13], t[14], t[15]);
        icmp6(
            [0x33, 0x33, 0xff, t[13], t[14], t[15]],
            src,
            &snm,
            135,
            &body,
        )
    };
    let all_nodes = [0x33, 0x33, 0, 0, 0, 1];
    let mut options = udp4(to, [10, 44, 0, 3], 20, false);
    options[14] = 0x46;
    options.splice(34..34, [1, 1, 1, 0]);
    options[16..18].copy_from_slice(&52u16.to_be_bytes());
    options[24] = 0;
    options[25] = 0;
    let c = ipv4_checksum(&options[14..38]);
    options[24..26].copy_from_slice(&c.to_be_bytes());
    let mut vlan = udp4(to, [10, 44, 0, 3], 20, false);
    vlan.splice(12..12, [0x81, 0, 0, 5]);
    let mut hop_by_hop = udp6(to, "fd44::3", 20);
    hop_by_hop[20] = 0;
    hop_by_hop.splice(54..54, [17, 0, 1, 4, 0, 0, 0, 0]);
    hop_by_hop[18..20].copy_from_slice(&36u16.to_be_bytes());
    let mut spoofed = udp4(to, [10, 44, 0, 3], 20, false);
    spoofed[6..12].copy_from_slice(&unknown);
    vec![
        (
            "unicast to a known MAC",
            udp4(to, [10, 44, 0, 3], 20, false),
        ),
        (
            "unicast to an unknown MAC",
            udp4(unknown, [10, 44, 0, 9], 20, false),
        ),
        ("broadcast", udp4(bcast, [10, 44, 0, 255], 20, false)),
        (
            "IPv4 multicast",
            udp4([1, 0, 0x5e, 1, 2, 3], [239, 1, 2, 3], 20, false),
        ),
        ("IPv6 multicast", udp6(all_nodes, "ff02::1", 20)),
        (
            "ARP request, known address",
            arp(1, [10, 44, 0, 2], [10, 44, 0, 3], bcast),
        ),
        (
            "ARP request, unknown address",
            arp(1, [10, 44, 0, 2], [10, 44, 0, 99], bcast),
        ),
        ("ARP probe", arp(1, [0; 4], [10, 44, 0, 3], bcast)),
        (
            "ARP announcement",
            arp(1, [10, 44, 0, 2], [10, 44, 0, 2], bcast),
        ),
        ("ARP reply", arp(2, [10, 44, 0, 2], [10, 44, 0, 3], to)),
        (
            "neighbour solicitation, known",
            ns("fd44::3", "fd44::2", true),
        ),
        (
            "neighbour solicitation, unknown",
            ns("fd44::99", "fd44::2", true),
        ),
        ("neighbour solicitation, DAD", ns("fd44::3", "::", false)),
        (
            "neighbour advertisement",
            icmp6(all_nodes, "fd44::2", "ff02::1", 136, &ip6("fd44::2")),
        ),
        (
            "router solicitation",
            icmp6([0x33, 0x33, 0, 0, 0, 2], "fe80::2", "ff02::2", 133, &[0; 4]),
        ),
        (
            "router advertisement",
            icmp6(all_nodes, "fe80::2", "ff02::1", 134, &[0; 12]),
        ),
        ("redirect", icmp6(to, "fe80::2", "fd44::3", 137, &[0; 36])),
        ("IPv4 with options", options),
        ("IPv6 with a hop-by-hop header", hop_by_hop),
        ("VLAN-tagged", vlan),
        ("jumbo, DF", udp4(to, [10, 44, 0, 3], 4000, true)),
        ("jumbo, may fragment", udp4(to, [10, 44, 0, 3], 4000, false)),
        ("jumbo IPv6", udp6(to, "fd44::3", 4000)),
        (
            "runt: an Ethernet header alone",
            udp4(to, [10, 44, 0, 3], 0, false)[..14].to_vec(),
        ),
        ("spoofed source MAC", spoofed),
    ]
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut s: u32 = h
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn mac_bytes(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (b, p) in m.iter_mut().zip(s.split(':')) {
        *b = u8::from_str_radix(p, 16).unwrap_or(0);
    }
    m
}

/// One of each kind of frame the engine can see, sent from a container:
/// per kind, the frames delivered to the other container, answered by the
/// ARP/ND proxy and counted as dropped (on either host) add up to the
/// frames sent. The containers are made quiet (no addresses, no IPv6) so
/// that only the test's frames move.
#[test]
fn every_frame_is_delivered_answered_or_counted() -> Result<()> {
    if !root_or_skip("every_frame_is_delivered_answered_or_counted") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let m = mesh(&tb, &dp_opts(), false)?;
    let (c1, c2) = (&m.cs[0].ns, &m.cs[1].ns);
    for c in [c1, c2] {
        tb.exec_ok(c, &["ip", "addr", "flush", "dev", "eth0"])?;
        tb.exec_ok(c, &["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"])?;
    }
    // Frames larger than the path leave c1 (a packet socket sends up to
    // the interface MTU).
    tb.exec_ok(c1, &["ip", "link", "set", "eth0", "mtu", "9000"])?;
    let (mac1, mac2) = (mac_bytes(&m.eps[0].mac), mac_bytes(&m.eps[1].mac));
    let tx = common::frames::RawPort::open(c1, "eth0")?;
    let rx = common::frames::RawPort::open(c2, "eth0")?;
    // Whatever setup left in flight (announcements) settles first.
    std::thread::sleep(Duration::from_millis(500));
    let _ = rx.received(Duration::from_millis(300), Duration::from_secs(2), |_| {
        false
    });
    const N: u64 = 3;
    let total_drops = |dp: &Dataplane| -> Result<u64> { Ok(drops(dp)?.values().sum()) };
    let proxied = |dp: &Dataplane| -> Result<u64> {
        Ok(count(dp, "arp_proxied")? + count(dp, "nd_proxied")?)
    };
    let mut report = Vec::new();
    for (kind, frame) in frames(mac1, mac2) {
        let before = (
            count(&m.dps[0], "tap_rx_frames")?,
            proxied(&m.dps[0])?,
            total_drops(&m.dps[0])? + total_drops(&m.dps[1])?,
        );
        for _ in 0..N {
            tx.send(&frame).with_context(|| format!("sending {kind}"))?;
        }
        let delivered = rx
            .received(Duration::from_millis(400), Duration::from_secs(3), |f| {
                f.get(6..12) == Some(&mac1[..])
            })
            .len() as u64;
        let seen = count(&m.dps[0], "tap_rx_frames")? - before.0;
        let answered = proxied(&m.dps[0])? - before.1;
        let dropped = total_drops(&m.dps[0])? + total_drops(&m.dps[1])? - before.2;
        report.push(format!(
            "{kind}: sent {N}, seen {seen}, delivered {delivered}, answered {answered}, dropped {dropped}"
        ));
        ensure!(
            seen == N && delivered + answered + dropped == N,
            "{}\nnow: {:?} {:?}",
            report.join("\n"),
            drops(&m.dps[0])?,
            drops(&m.dps[1])?
        );
    }
    eprintln!("{}", report.join("\n"));
    Ok(())
}
