//! Service VIP load balancing end to end, on bare dataplanes programmed by
//! hand with `vxnet dp service set`: a client on host1, backend `b1` on
//! host1 (same host as the client: TAP to TAP both ways) and backend `b2`
//! on host2 (over VXLAN). Each backend runs a small TCP and UDP server
//! (python3) that answers with its own name and then echoes.
//!
//! The client's sockets are opened from this process inside the client's
//! namespace, so the test reads each answer itself. A TCP connection or a
//! connected UDP socket that gets an answer at all proves the reverse
//! translation: the kernel only accepts replies from the VIP it talked to.

mod common;

use anyhow::{Context, Result, bail, ensure};
use common::{dp_opts, root_or_skip, testbed};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;
use vxnet_dataplane::sys::netns;
use vxnet_testbed::process::wait_until;
use vxnet_testbed::scenario::{DEMO_VNI, numbered_endpoint, overlay_mtu};
use vxnet_testbed::vxnet::{Dataplane, StatsExt};

const VIP: &str = "10.44.0.100";
const VIP6: &str = "fd44::100";
const PORT: u16 = 8080;
const B1: &str = "10.44.0.4";
const B2: &str = "10.44.0.3";

/// Answers every TCP connection and UDP datagram on PORT with its name
/// (argv[1]) and a newline; a TCP connection then echoes what it gets.
const SERVER: &str = r#"
import socket, sys, threading
name = sys.argv[1].encode() + b"\n"
def tcp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", 8080)); s.listen(256)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
def serve(c):
    try:
        c.sendall(name)
        while True:
            d = c.recv(65536)
            if not d: break
            c.sendall(d)
    except OSError:
        pass
    finally:
        c.close()
def udp():
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.bind(("::", 8080))
    while True:
        _, peer = u.recvfrom(2048)
        u.sendto(name, peer)
threading.Thread(target=udp, daemon=True).start()
tcp()
"#;

/// Runs `f` in the network namespace `ns` (sockets it opens stay there).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = netns::resolve(ns).with_context(|| format!("namespace {ns}"))?;
    Ok(netns::run_in(&path, f)?)
}

fn connect(ns: &str, to: SocketAddr) -> Result<TcpStream> {
    let s = in_ns(ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3))
    })?
    .with_context(|| format!("connecting to {to}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// Connects to `to` and returns the name the backend answers with.
fn who_answers(ns: &str, to: SocketAddr) -> Result<(TcpStream, String)> {
    let s = connect(ns, to)?;
    let mut line = String::new();
    BufReader::new(s.try_clone()?)
        .read_line(&mut line)
        .with_context(|| format!("reading the name from {to}"))?;
    ensure!(line.ends_with('\n'), "no name from {to}: {line:?}");
    Ok((s, line.trim().to_string()))
}

/// One UDP request to `to` from a connected socket; the answer's text.
fn udp_ask(ns: &str, to: SocketAddr) -> Result<String> {
    let local: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let u = in_ns(ns, move || UdpSocket::bind(local))??;
    u.connect(to)?;
    u.set_read_timeout(Some(Duration::from_secs(3)))?;
    u.send(b"who")?;
    let mut buf = [0u8; 64];
    let n = u
        .recv(&mut buf)
        .with_context(|| format!("UDP answer from {to}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

fn set_backends(dp: &Dataplane, vip: &str, backends: &[&str]) -> Result<()> {
    let vni = DEMO_VNI.to_string();
    let mut args = vec!["service", "set", "--vni", &vni, "--vip", vip];
    for b in backends {
        args.extend(["--backend", b]);
    }
    dp.cli_ok(&args)?;
    Ok(())
}

/// Sends a line on the long-lived connection and checks that it comes back.
fn echo(s: &mut TcpStream, msg: &str) -> Result<()> {
    s.write_all(msg.as_bytes())?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)
        .with_context(|| format!("echo of {msg:?} on the long-lived connection"))?;
    ensure!(got == msg.as_bytes(), "echo {got:?} for {msg:?}");
    Ok(())
}

#[test]
fn vip_balances_keeps_flows_and_refuses_without_backends() -> Result<()> {
    if !root_or_skip("vip_balances_keeps_flows_and_refuses_without_backends") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    // cl (10.44.0.2) on host1, b2 (10.44.0.3) on host2, peers of each other.
    let p = tb.vxnet_pair(DEMO_VNI, &dp_opts(), ("cl", "b2"))?;
    let (client, dp1) = (p.c1.ns.clone(), &p.dp1);
    // b1 (10.44.0.4) on host1 beside the client; host2 learns of it too.
    let b1 = tb.add_container(tb.host(1), "b1")?;
    let ep_b1 = numbered_endpoint(44, 4, overlay_mtu(&tb));
    dp1.attach(&b1, DEMO_VNI, &ep_b1)?;
    p.dp2
        .peer_add(DEMO_VNI, &ep_b1, &tb.host(1).underlay_v4.to_string())?;
    for (ns, name) in [(&b1.ns, "b1"), (&p.c2.ns, "b2")] {
        tb.spawn(
            ns,
            &format!("server-{name}"),
            &["python3", "-c", SERVER, name],
        )?;
    }
    // Both servers answer on their own addresses before the VIP exists.
    for ip in [B1, B2] {
        let to = SocketAddr::new(ip.parse()?, PORT);
        let up = wait_until(Duration::from_secs(20), || who_answers(&client, to).is_ok());
        ensure!(up, "the server on {ip} did not come up");
    }
    set_backends(dp1, VIP, &[B1, B2])?;
    set_backends(dp1, VIP6, &["fd44::4", "fd44::3"])?;

    // 100 new connections spread over both backends.
    let vip = SocketAddr::new(VIP.parse()?, PORT);
    let mut per: HashMap<String, u32> = HashMap::new();
    for _ in 0..100 {
        let (_, name) = who_answers(&client, vip)?;
        *per.entry(name).or_default() += 1;
    }
    for b in ["b1", "b2"] {
        let n = per.get(b).copied().unwrap_or(0);
        ensure!(n >= 20, "{b} answered {n} of 100 connections: {per:?}");
    }
    // UDP and IPv6 too.
    let udp_names: Vec<String> = (0..10)
        .map(|_| udp_ask(&client, vip))
        .collect::<Result<_>>()?;
    ensure!(
        udp_names.iter().all(|n| n == "b1" || n == "b2"),
        "{udp_names:?}"
    );
    let vip6 = SocketAddr::new(VIP6.parse()?, PORT);
    for _ in 0..10 {
        let (_, name) = who_answers(&client, vip6)?;
        ensure!(name == "b1" || name == "b2", "{name}");
    }
    // Ping to the VIP is answered by the dataplane.
    tb.ping_ok(&client, VIP, 3, None)?;
    let s = dp1.stats()?;
    ensure!(s.counter("lb_echo_replies").unwrap_or(0) >= 3, "{s:?}");
    ensure!(s.counter("lb_new_flows").unwrap_or(0) >= 120, "{s:?}");
    ensure!(s.counter("lb_reverse_nat").unwrap_or(0) > 0, "{s:?}");

    // A long-lived connection survives the other backend leaving and
    // coming back; meanwhile no new connection goes to the one that left.
    let (mut long, kept) = who_answers(&client, vip)?;
    let (other, other_ip, kept_ip) = if kept == "b1" {
        ("b2", B2, B1)
    } else {
        ("b1", B1, B2)
    };
    echo(&mut long, "before\n")?;
    set_backends(dp1, VIP, &[kept_ip])?;
    echo(&mut long, "scaled down\n")?;
    for _ in 0..20 {
        let (_, name) = who_answers(&client, vip)?;
        ensure!(
            name == kept,
            "a new connection went to {name} after {other} left"
        );
    }
    set_backends(dp1, VIP, &[B1, B2])?;
    echo(&mut long, "scaled up\n")?;
    // Listings: the flow is tracked, established, to the kept backend.
    let ct = dp1.cli_ok(&[
        "conntrack",
        "--vni",
        &DEMO_VNI.to_string(),
        "--format",
        "json",
    ])?;
    let ct: serde_json::Value = serde_json::from_str(&ct.stdout)?;
    let local_port = long.local_addr()?.port();
    let entry = ct["entries"]
        .as_array()
        .and_then(|es| {
            es.iter()
                .find(|e| e["client_port"] == local_port && e["proto"] == "tcp")
        })
        .with_context(|| format!("no conntrack entry for port {local_port}: {ct}"))?;
    ensure!(entry["state"] == "established", "{entry}");
    ensure!(entry["backend"] == kept_ip, "{entry}");
    let services = dp1.cli_ok(&["services", "--format", "json"])?;
    let services: serde_json::Value = serde_json::from_str(&services.stdout)?;
    let flows_to_kept = services
        .as_array()
        .and_then(|l| l.iter().find(|s| s["vip"] == VIP))
        .and_then(|s| s["backends"].as_array().cloned())
        .and_then(|bs| bs.into_iter().find(|b| b["ip"] == kept_ip))
        .and_then(|b| b["flows"].as_u64())
        .with_context(|| format!("no flow count for {kept_ip}: {services}"))?;
    ensure!(flows_to_kept >= 1, "{services}");
    let table = dp1.cli_ok(&["services"])?;
    ensure!(
        table.stdout.contains(VIP) && table.stdout.contains(other_ip),
        "{}",
        table.stdout
    );
    drop(long);

    // No backend: connections are refused at once (reset from the VIP).
    set_backends(dp1, VIP, &[])?;
    let client_ns = client.clone();
    let refused = in_ns(&client_ns, move || {
        TcpStream::connect_timeout(&vip, Duration::from_secs(3))
    })?;
    match refused {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        Err(e) => bail!("connecting to a VIP without backends failed with {e}, not a refusal"),
        Ok(_) => bail!("a VIP without backends accepted a connection"),
    }
    ensure!(
        udp_ask(&client, vip).is_err(),
        "UDP answered without backends"
    );
    let s = dp1.stats()?;
    ensure!(s.drop_count("lb", "no_backend").unwrap_or(0) >= 2, "{s:?}");
    ensure!(s.counter("lb_resets").unwrap_or(0) >= 1, "{s:?}");
    // And the service goes away entirely.
    dp1.cli_ok(&[
        "service",
        "del",
        "--vni",
        &DEMO_VNI.to_string(),
        "--vip",
        VIP,
    ])?;
    let left = dp1.cli_ok(&["services", "--format", "json"])?;
    ensure!(
        !left.stdout.contains(&format!("\"{VIP}\"")),
        "{}",
        left.stdout
    );
    Ok(())
}
