//! Shared helpers for the testbed's integration tests.
#![allow(dead_code)]

pub mod frames;
pub mod swarm;
pub mod udp;

use std::time::Duration;
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

/// Sends 24 MB of pseudo-random bytes over one TCP connection from
/// `client_ns` to `server_ip` in `server_ns` and checks that the same bytes
/// arrive. iperf3 never looks at the data (and `iperf3 -F` itself loses
/// bytes on partial sends), and the kernel trusts the checksum of a
/// coalesced GSO frame on local delivery, so only this catches a TAP write
/// made of the wrong bytes. The sockets are opened in the namespaces from
/// this process (setns on a helper thread).
pub fn tcp_transfer_intact(
    server_ns: &str,
    server_ip: &str,
    client_ns: &str,
) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
    use vxnet_dataplane::sys::netns;

    const LEN: usize = 24 << 20;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..LEN / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let ip: IpAddr = server_ip.parse()?;
    let listener = netns::run_in(&netns::resolve(server_ns)?, move || {
        TcpListener::bind(SocketAddr::new(ip, 0))
    })??;
    let to = listener.local_addr()?;
    let client = netns::resolve(client_ns)?;
    let sent = data.clone();
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut s = netns::run_in(&client, move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(5))
        })??;
        s.set_write_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(&sent)?;
        s.shutdown(std::net::Shutdown::Write)
    });
    let (mut conn, _) = listener.accept()?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut got = Vec::with_capacity(LEN);
    if let Err(e) = conn.read_to_end(&mut got) {
        anyhow::bail!("receiving stalled after {} of {LEN} bytes: {e}", got.len());
    }
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))?
        .map_err(|e| anyhow::anyhow!("sending: {e}"))?;
    anyhow::ensure!(got.len() == LEN, "received {} of {LEN} bytes", got.len());
    if let Some(at) = got.iter().zip(&data).position(|(a, b)| a != b) {
        // Where the wrong bytes came from, if they were sent at all.
        let probe = &got[at..LEN.min(at + 64)];
        let from = data.windows(probe.len()).position(|w| w == probe);
        let run = got[at..]
            .iter()
            .zip(&data[at..])
            .take_while(|(a, b)| a != b)
            .count();
        anyhow::bail!(
            "received bytes differ from the sent ones at offset {at} for {run} bytes; \
             they were sent at {from:?}"
        );
    }
    Ok(())
}

/// Captures `n` ESP datagrams host1 sends on its underlay while `from`
/// pings `to` (bounded: 20 rounds of 2 pings), and writes their UDP
/// payloads as hex lines (what `vxnet-testbed inject --from` reads) to the
/// state dir; returns that file's path.
pub fn capture_esp_from_host1(
    tb: &Testbed,
    from: &str,
    to: &str,
    n: u64,
) -> anyhow::Result<String> {
    let pcap = tb.state_dir().join("flow.pcap");
    let filter = vxnet_testbed::capture::esp_filter(&tb.host(1).underlay_v4.to_string());
    let packets = u32::try_from(n)?;
    let mut cap = tb.capture(&tb.host(1).ns, "eth0", &filter, packets, &pcap)?;
    for _ in 0..20 {
        tb.ping_ok(from, to, 2, None)?;
        if cap.finished() {
            break;
        }
    }
    cap.wait(Duration::from_secs(10))?;
    let hex = tb.udp_payloads_hex(&pcap)?;
    let captured = vxnet_testbed::inject::parse_hex_lines(&hex)?;
    anyhow::ensure!(captured.len() as u64 == n, "captured:\n{hex}");
    let hex_file = tb.state_dir().join("flow.hex");
    std::fs::write(&hex_file, &hex)?;
    Ok(hex_file.display().to_string())
}
