//! vxnet end to end: two hosts with dataplanes, containers on one VNI;
//! jumbo underlay; interop with kernel VXLAN; sidecar attach.

mod common;

use std::net::IpAddr;
use vxnet_testbed::DataplaneOptions;
use vxnet_testbed::vxnet::StatsExt;

use common::{MIN_IPERF_BYTES, dp_opts, root_or_skip, tcp_transfer_intact, testbed};
use vxnet_testbed::kernel_vxlan::configure_eth0;
use vxnet_testbed::scenario::{DEMO_VNI, VXLAN_PORT, numbered_endpoint, overlay_mtu};
use vxnet_testbed::topology::sh_in;

/// (a) ping both ways over IPv4 and IPv6, MTU-sized ping with DF, iperf3 TCP.
#[test]
fn two_hosts_ping_tcp_mtu() -> anyhow::Result<()> {
    if !root_or_skip("two_hosts_ping_tcp_mtu") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let p = tb.vxnet_pair(DEMO_VNI, &dp_opts(), ("c1", "c2"))?;
    let (a, b) = (&p.c1.ns, &p.c2.ns);
    let (a4, b4) = (
        p.ep1.v4().unwrap_or_default(),
        p.ep2.v4().unwrap_or_default(),
    );
    let (a6, b6) = (
        p.ep1.v6().unwrap_or_default(),
        p.ep2.v6().unwrap_or_default(),
    );
    tb.ping_ok(a, b4, 3, None)?;
    tb.ping_ok(b, a4, 3, None)?;
    tb.ping_ok(a, b6, 3, None)?;
    tb.ping_ok(b, a6, 3, None)?;
    // The dataplane made eth0 with the requested MTU and MAC.
    let link = tb.exec_ok(a, &["ip", "-d", "-o", "link", "show", "eth0"])?;
    assert!(link.stdout.contains("mtu 1450"), "{}", link.stdout);
    assert!(link.stdout.contains(&p.ep1.mac), "{}", link.stdout);
    // TSO frames sized to leave in one UDP GSO send (44 x 1472 bytes).
    assert!(link.stdout.contains("gso_max_segs 44 "), "{}", link.stdout);
    // 1422 + 8 (ICMP) + 20 (IPv4) = 1450 = the container MTU, DF set.
    tb.ping_ok(a, b4, 3, Some(1422))?;
    tb.ping_ok(b, a4, 3, Some(1422))?;
    // TCP both ways; the receiver must have got the bytes.
    let t = tb.iperf(b, b4, a, 3, false)?;
    assert!(t.received_bytes > MIN_IPERF_BYTES, "c1->c2 {t:?}");
    let t = tb.iperf(a, a4, b, 3, false)?;
    assert!(t.received_bytes > MIN_IPERF_BYTES, "c2->c1 {t:?}");
    // The traffic went through the dataplanes, not around them, and every
    // TSO frame read from a TAP left in at most one GSO send.
    for dp in [&p.dp1, &p.dp2] {
        let s = dp.stats()?;
        let frames = s.counter("tap_rx_gso_frames").unwrap_or(0);
        let sends = s.counter("udp_tx_gso_messages").unwrap_or(0);
        assert!(frames > 100, "few TSO frames from the TAP: {s:?}");
        assert!(sends <= frames, "a TSO frame took several sends: {s:?}");
    }
    Ok(())
}

/// The bytes a container receives over TCP are the bytes sent (IPv4 and
/// IPv6): received frames are written to the TAP straight from the receive
/// buffers, coalesced, and a wrong reference would go unnoticed by TCP.
#[test]
fn tcp_payload_arrives_intact() -> anyhow::Result<()> {
    if !root_or_skip("tcp_payload_arrives_intact") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let p = tb.vxnet_pair(DEMO_VNI, &dp_opts(), ("c1", "c2"))?;
    let (a, b) = (&p.c1.ns, &p.c2.ns);
    let b4 = p.ep2.v4().unwrap_or_default();
    let a6 = p.ep1.v6().unwrap_or_default();
    tb.ping_ok(a, b4, 1, None)?;
    tcp_transfer_intact(b, b4, a)?;
    tcp_transfer_intact(a, a6, b)?;
    for dp in [&p.dp1, &p.dp2] {
        let s = dp.stats()?;
        assert!(
            s.counter("tap_tx_gso_frames").unwrap_or(0) > 100,
            "coalesced writes: {s:?}"
        );
        assert_eq!(s.drop_count("io", "bad_ref"), Some(0), "{s:?}");
    }
    Ok(())
}

/// Outer IPv6: both dataplanes use their hosts' IPv6 underlay addresses as
/// VTEPs; inner IPv4 and IPv6 flow over it, with the MTU the 40-byte outer
/// header leaves (1430 on a 1500 underlay).
#[test]
fn two_hosts_over_ipv6_underlay() -> anyhow::Result<()> {
    if !root_or_skip("two_hosts_over_ipv6_underlay") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let opts = DataplaneOptions {
        underlay_v6: true,
        ..dp_opts()
    };
    let p = tb.vxnet_pair(DEMO_VNI, &opts, ("c1", "c2"))?;
    let (a, b) = (&p.c1.ns, &p.c2.ns);
    let b4 = p.ep2.v4().unwrap_or_default();
    let a6 = p.ep1.v6().unwrap_or_default();
    tb.ping_ok(a, b4, 3, None)?;
    tb.ping_ok(b, a6, 3, None)?;
    let link = tb.exec_ok(a, &["ip", "-o", "link", "show", "eth0"])?;
    assert!(link.stdout.contains("mtu 1430"), "{}", link.stdout);
    // 1402 + 8 + 20 = 1430: the largest unfragmented packet fits.
    tb.ping_ok(a, b4, 3, Some(1402))?;
    let t = tb.iperf(b, b4, a, 3, false)?;
    assert!(t.received_bytes > MIN_IPERF_BYTES, "c1->c2 over IPv6 {t:?}");
    let show = p.dp1.show()?;
    assert_eq!(
        show["local_vtep"], "2001:db8::11",
        "VTEP is the IPv6 address: {show}"
    );
    Ok(())
}

/// (b) 9000-byte underlay, container MTU 8950.
#[test]
fn jumbo_underlay() -> anyhow::Result<()> {
    if !root_or_skip("jumbo_underlay") {
        return Ok(());
    }
    let tb = testbed(2, 9000)?;
    let p = tb.vxnet_pair(DEMO_VNI, &dp_opts(), ("c1", "c2"))?;
    assert_eq!(p.ep1.mtu, 8950);
    let (a, b) = (&p.c1.ns, &p.c2.ns);
    let (a4, b4) = (
        p.ep1.v4().unwrap_or_default(),
        p.ep2.v4().unwrap_or_default(),
    );
    let link = tb.exec_ok(a, &["ip", "-o", "link", "show", "eth0"])?;
    assert!(link.stdout.contains("mtu 8950"), "{}", link.stdout);
    // 8922 + 8 + 20 = 8950.
    tb.ping_ok(a, b4, 3, Some(8922))?;
    tb.ping_ok(b, a4, 3, Some(8922))?;
    let t = tb.iperf(b, b4, a, 3, false)?;
    assert!(t.received_bytes > MIN_IPERF_BYTES, "{t:?}");
    Ok(())
}

/// (c) host1: vxnet container; host2: kernel vxlan + bridge container, same
/// VNI. ping and TCP both ways.
#[test]
fn interop_with_kernel_vxlan() -> anyhow::Result<()> {
    if !root_or_skip("interop_with_kernel_vxlan") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let (h1, h2) = (tb.host(1).clone(), tb.host(2).clone());
    let mtu = overlay_mtu(&tb);
    let vx = numbered_endpoint(44, 2, mtu);
    let kern = numbered_endpoint(44, 3, mtu);

    let dp = tb.start_dataplane(&h1, &dp_opts())?;
    let c1 = tb.add_container(&h1, "c1")?;
    dp.attach(&c1, DEMO_VNI, &vx)?;
    // The kernel container is a known peer, and broadcasts/unknowns (ARP from
    // vxnet's side for anything else) go to host2, as a kernel VTEP expects.
    dp.peer_add(DEMO_VNI, &kern, &h2.underlay_v4.to_string())?;
    dp.flood_add(DEMO_VNI, &h2.underlay_v4.to_string())?;

    let kv = tb.kernel_vxlan(&h2, DEMO_VNI, VXLAN_PORT, &[IpAddr::V4(h1.underlay_v4)])?;
    // As a real NIC would: finished inner checksums from the kernel side.
    tb.wire_checksums(&h2)?;
    let k2 = tb.add_container(&h2, "k2")?;
    tb.kernel_attach(&kv, &k2, &kern)?;

    let (v4, k4) = (vx.v4().unwrap_or_default(), kern.v4().unwrap_or_default());
    let (v6, k6) = (vx.v6().unwrap_or_default(), kern.v6().unwrap_or_default());
    tb.ping_ok(&c1.ns, k4, 3, None)?;
    tb.ping_ok(&k2.ns, v4, 3, None)?;
    tb.ping_ok(&c1.ns, k6, 3, None)?;
    tb.ping_ok(&k2.ns, v6, 3, None)?;
    tb.ping_ok(&c1.ns, k4, 2, Some(1422))?;
    tb.ping_ok(&k2.ns, v4, 2, Some(1422))?;
    let t = tb.iperf(&k2.ns, k4, &c1.ns, 3, false)?;
    assert!(t.received_bytes > MIN_IPERF_BYTES, "vxnet->kernel {t:?}");
    let t = tb.iperf(&c1.ns, v4, &k2.ns, 3, false)?;
    assert!(t.received_bytes > MIN_IPERF_BYTES, "kernel->vxnet {t:?}");
    Ok(())
}

/// (f) a container made by someone else (veth pair, eth0 configured by us)
/// joins through `attach --veth`, and reaches a native container on host2.
#[test]
fn sidecar_attach() -> anyhow::Result<()> {
    if !root_or_skip("sidecar_attach") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let (h1, h2) = (tb.host(1).clone(), tb.host(2).clone());
    let mtu = overlay_mtu(&tb);
    let side = numbered_endpoint(44, 2, mtu);
    let native = numbered_endpoint(44, 3, mtu);

    let dp1 = tb.start_dataplane(&h1, &dp_opts())?;
    let dp2 = tb.start_dataplane(&h2, &dp_opts())?;
    let s1 = tb.add_container(&h1, "s1")?;
    let mtu_s = mtu.to_string();
    sh_in(
        &h1.ns,
        &[
            "ip", "link", "add", "vs1", "mtu", &mtu_s, "type", "veth", "peer", "name", "eth0",
            "mtu", &mtu_s, "netns", &s1.ns,
        ],
    )?;
    sh_in(&h1.ns, &["ip", "link", "set", "vs1", "up"])?;
    configure_eth0(&s1.ns, &side)?;
    let vni = DEMO_VNI.to_string();
    let mut args = vec!["attach", "--veth", "vs1", "--vni", &vni, "--mac", &side.mac];
    for ip in &side.ips {
        args.extend(["--ip", ip.as_str()]);
    }
    dp1.cli_ok(&args)?;

    let c2 = tb.add_container(&h2, "c2")?;
    dp2.attach(&c2, DEMO_VNI, &native)?;
    dp1.peer_add(DEMO_VNI, &native, &h2.underlay_v4.to_string())?;
    dp2.peer_add(DEMO_VNI, &side, &h1.underlay_v4.to_string())?;

    let eps = dp1.endpoints()?.to_string();
    assert!(eps.contains("vs1") && eps.contains(&side.mac), "{eps}");
    tb.ping_ok(&s1.ns, native.v4().unwrap_or_default(), 3, None)?;
    tb.ping_ok(&c2.ns, side.v4().unwrap_or_default(), 3, None)?;
    tb.ping_ok(&s1.ns, native.v6().unwrap_or_default(), 3, None)?;
    Ok(())
}
