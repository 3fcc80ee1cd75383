//! `vxnet-testbed bench`: single-stream TCP throughput and RTT between two
//! hosts' containers for each data path, one after the other in the same
//! topology, so the rows compare like with like.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use clap::ValueEnum;
use serde::Serialize;

use crate::measure::{IperfResult, PingResult};
use crate::process;
use crate::scenario::{DEMO_VNI, ENCRYPTED_VNI, VXLAN_PORT};
use crate::topology::{Testbed, TestbedConfig};
use crate::vxnet::DataplaneOptions;

/// A data path to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Path {
    /// Host namespace to host namespace over the underlay, no overlay.
    Underlay,
    /// Linux kernel VXLAN + bridge.
    KernelVxlan,
    /// vxnet dataplane, plain VXLAN.
    VxnetPlain,
    /// vxnet dataplane, encrypted network (ESP, AES-GCM-128).
    VxnetEncrypted,
    /// vxnet dataplane, plain VXLAN, with the control plane in charge: a
    /// swarm of the two hosts, an attachable overlay network and a
    /// container on each host made with `vxnet container run -d`.
    VxnetSwarm,
}

impl Path {
    pub const ALL: [Path; 5] = [
        Path::Underlay,
        Path::KernelVxlan,
        Path::VxnetPlain,
        Path::VxnetEncrypted,
        Path::VxnetSwarm,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Path::Underlay => "underlay",
            Path::KernelVxlan => "kernel-vxlan",
            Path::VxnetPlain => "vxnet-plain",
            Path::VxnetEncrypted => "vxnet-encrypted",
            Path::VxnetSwarm => "vxnet-swarm",
        }
    }
}

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub seconds: u32,
    pub ping_count: u32,
    pub underlay_mtu: u32,
    pub paths: Vec<Path>,
    pub dataplane: DataplaneOptions,
}

/// The machine the numbers come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub kernel: String,
    pub cpu: String,
}

/// One measured path.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub path: Path,
    pub tcp: Option<IperfResult>,
    pub ping: Option<PingResult>,
    pub rtt_avg_ms: Option<f64>,
    pub rtt_p99_ms: Option<f64>,
    pub rtt_mdev_ms: Option<f64>,
    /// Why the row could not be measured.
    pub error: Option<String>,
}

/// Everything `bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub machine: Machine,
    pub seconds: u32,
    pub underlay_mtu: u32,
    pub rows: Vec<BenchRow>,
    /// vxnet-encrypted / vxnet-plain throughput, when both were measured.
    pub encrypted_ratio: Option<f64>,
}

/// Reads nproc, kernel release and CPU model.
pub fn machine() -> Machine {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    Machine { nproc, kernel, cpu }
}

/// Runs every configured path on one fresh two-host testbed. A path that
/// fails gets a row with `error` set; the others still run.
pub fn run(
    cfg: &BenchConfig,
    tb_slot: &dyn Fn(&str),
    progress: &dyn Fn(&str),
) -> Result<BenchReport> {
    let prefix = crate::topology::next_prefix();
    tb_slot(&prefix);
    let tb = Testbed::with_prefix(
        prefix,
        TestbedConfig {
            hosts: 2,
            underlay_mtu: cfg.underlay_mtu,
        },
    )?;
    progress(&format!(
        "topology {}: 2 hosts, underlay MTU {}",
        tb.prefix(),
        cfg.underlay_mtu
    ));
    let mut rows = Vec::new();
    for path in &cfg.paths {
        progress(&format!(
            "measuring {} ({} s TCP, {} pings)",
            path.label(),
            cfg.seconds,
            cfg.ping_count
        ));
        let row = match run_path(&tb, *path, cfg) {
            Ok((tcp, ping)) => BenchRow {
                path: *path,
                rtt_avg_ms: ping.avg_ms(),
                rtt_p99_ms: ping.p99_ms(),
                rtt_mdev_ms: ping.mdev_ms(),
                tcp: Some(tcp),
                ping: Some(ping),
                error: None,
            },
            Err(e) => {
                progress(&format!("{}: {e:#}", path.label()));
                BenchRow {
                    path: *path,
                    tcp: None,
                    ping: None,
                    rtt_avg_ms: None,
                    rtt_p99_ms: None,
                    rtt_mdev_ms: None,
                    error: Some(format!("{e:#}")),
                }
            }
        };
        rows.push(row);
    }
    drop(tb);
    let mut report = BenchReport {
        machine: machine(),
        seconds: cfg.seconds,
        underlay_mtu: cfg.underlay_mtu,
        rows,
        encrypted_ratio: None,
    };
    report.encrypted_ratio = encrypted_ratio(&report);
    Ok(report)
}

fn measure(
    tb: &Testbed,
    client_ns: &str,
    server_ns: &str,
    server_ip: &str,
    cfg: &BenchConfig,
) -> Result<(IperfResult, PingResult)> {
    tb.wait_reachable(client_ns, server_ip, Duration::from_secs(10))?;
    let ping = tb.ping(
        client_ns,
        server_ip,
        cfg.ping_count,
        Duration::from_millis(10),
        None,
        false,
    )?;
    let tcp = tb.iperf(server_ns, server_ip, client_ns, cfg.seconds, false)?;
    Ok((tcp, ping))
}

fn run_path(tb: &Testbed, path: Path, cfg: &BenchConfig) -> Result<(IperfResult, PingResult)> {
    match path {
        Path::Underlay => {
            let (h1, h2) = (tb.host(1), tb.host(2));
            measure(tb, &h1.ns, &h2.ns, &h2.underlay_v4.to_string(), cfg)
        }
        Path::KernelVxlan => {
            let pair = tb.kernel_pair(DEMO_VNI, VXLAN_PORT, ("k1", "k2"))?;
            let ip = pair.ep2.v4().unwrap_or_default().to_string();
            let r = measure(tb, &pair.c1.ns, &pair.c2.ns, &ip, cfg);
            // Free UDP 4789 in the hosts for the dataplane rows.
            pair.delete()?;
            r
        }
        Path::VxnetPlain => {
            let pair = tb.vxnet_pair(DEMO_VNI, &cfg.dataplane, ("c1", "c2"))?;
            let ip = pair.ep2.v4().unwrap_or_default().to_string();
            let r = measure(tb, &pair.c1.ns, &pair.c2.ns, &ip, cfg);
            // Free UDP 4789 for the encrypted row's dataplanes.
            tb.stop_dataplanes(&[&pair.dp1, &pair.dp2]);
            r
        }
        Path::VxnetEncrypted => {
            let pair = tb.vxnet_encrypted_pair(ENCRYPTED_VNI, &cfg.dataplane, ("e1", "e2"))?;
            let ip = pair.ep2.v4().unwrap_or_default().to_string();
            let r = measure(tb, &pair.c1.ns, &pair.c2.ns, &ip, cfg);
            tb.stop_dataplanes(&[&pair.dp1, &pair.dp2]);
            r
        }
        Path::VxnetSwarm => swarm_path(tb, cfg),
    }
}

/// The [`Path::VxnetSwarm`] row: nothing is programmed by hand; the
/// control daemons place the containers and program both dataplanes.
fn swarm_path(tb: &Testbed, cfg: &BenchConfig) -> Result<(IperfResult, PingResult)> {
    use crate::swarm::vxnet_ctl;
    let mut dps = Vec::new();
    let mut controls = Vec::new();
    let r = (|| {
        for h in tb.hosts() {
            let dp = tb.start_dataplane(h, &cfg.dataplane)?;
            controls.push(tb.start_control(h, &dp.socket)?);
            dps.push(dp);
        }
        tb.form_swarm(&controls)?;
        let (c1, c2) = match controls.as_slice() {
            [a, b, ..] => (a, b),
            _ => anyhow::bail!("the swarm row needs two hosts"),
        };
        vxnet_ctl(
            &c1.socket,
            &[
                "network",
                "create",
                "-d",
                "overlay",
                "--attachable",
                "bench",
            ],
        )?
        .check()?;
        let mut ends = Vec::new();
        for (c, name) in [(c1, "s1"), (c2, "s2")] {
            vxnet_ctl(
                &c.socket,
                &[
                    "container",
                    "run",
                    "-d",
                    "--name",
                    name,
                    "--network",
                    "bench",
                    "--",
                    "sleep",
                    "3600",
                ],
            )?
            .check()?;
            let out = vxnet_ctl(&c.socket, &["container", "inspect", name])?.check()?;
            let v: serde_json::Value = serde_json::from_str(&out.stdout)?;
            let ns = v[0]["netns"].as_str().unwrap_or_default().to_owned();
            let ip = v[0]["networks"][0]["ipv4"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            anyhow::ensure!(
                !ns.is_empty() && !ip.is_empty(),
                "container {name}: no namespace or address in {v}"
            );
            ends.push((ns, ip));
        }
        let (Some((ns1, _)), Some((ns2, ip2))) = (ends.first(), ends.get(1)) else {
            anyhow::bail!("containers missing");
        };
        measure(tb, ns1, ns2, ip2, cfg)
    })();
    // Stop the control daemons first (they would re-create what the
    // dataplanes' stop removes), then free UDP 4789 for later rows. The
    // containers' namespaces go with the testbed.
    let pids: Vec<u32> = controls.iter().map(|c| c.pid).collect();
    tb.stop_pids(&pids);
    tb.stop_dataplanes(&dps.iter().collect::<Vec<_>>());
    r
}

/// Throughput of vxnet encrypted over vxnet plain in the same run, if both
/// rows were measured.
pub fn encrypted_ratio(r: &BenchReport) -> Option<f64> {
    let gbit = |p: Path| {
        r.rows
            .iter()
            .find(|row| row.path == p)
            .and_then(|row| row.tcp.as_ref())
            .map(IperfResult::gbit_per_second)
    };
    let (plain, enc) = (gbit(Path::VxnetPlain)?, gbit(Path::VxnetEncrypted)?);
    (plain > 0.0).then(|| enc / plain)
}

/// The issue-3 target for [`encrypted_ratio`].
pub const ENCRYPTED_RATIO_TARGET: f64 = 0.75;

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.prec$}"))
}

/// The human-readable table.
pub fn table(r: &BenchReport) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "machine: nproc={} kernel={} cpu={}",
        m.nproc, m.kernel, m.cpu
    );
    let _ = writeln!(
        s,
        "single-stream TCP, {} s, underlay MTU {}",
        r.seconds, r.underlay_mtu
    );
    let _ = writeln!(
        s,
        "{:<16} {:>9} {:>9} {:>12} {:>12} {:>12}",
        "path", "Gbit/s", "retrans", "rtt avg ms", "rtt p99 ms", "rtt mdev ms"
    );
    for row in &r.rows {
        let _ = write!(
            s,
            "{:<16} {:>9} {:>9} {:>12} {:>12} {:>12}",
            row.path.label(),
            opt(row.tcp.as_ref().map(IperfResult::gbit_per_second), 2),
            row.tcp
                .as_ref()
                .map_or_else(|| "-".to_string(), |t| t.retransmits.to_string()),
            opt(row.rtt_avg_ms, 3),
            opt(row.rtt_p99_ms, 3),
            opt(row.rtt_mdev_ms, 3),
        );
        if let Some(e) = &row.error {
            let first = e.lines().next().unwrap_or_default();
            let _ = write!(s, "  error: {first}");
        }
        s.push('\n');
    }
    if let Some(ratio) = encrypted_ratio(r) {
        let verdict = if ratio >= ENCRYPTED_RATIO_TARGET {
            "meets"
        } else {
            "below"
        };
        let _ = writeln!(
            s,
            "vxnet-encrypted / vxnet-plain = {ratio:.2} ({verdict} the {ENCRYPTED_RATIO_TARGET:.2} target)"
        );
    }
    s
}

/// Whether the process can run a benchmark at all.
pub fn preflight() -> Result<()> {
    if !process::is_root() {
        anyhow::bail!("bench needs root (network namespaces)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_rows_and_errors() {
        let r = BenchReport {
            machine: Machine {
                nproc: 2,
                kernel: "6.1".into(),
                cpu: "x".into(),
            },
            seconds: 10,
            underlay_mtu: 1500,
            encrypted_ratio: None,
            rows: vec![
                BenchRow {
                    path: Path::Underlay,
                    tcp: Some(IperfResult {
                        bits_per_second: 25.5e9,
                        retransmits: 3,
                        ..Default::default()
                    }),
                    ping: None,
                    rtt_avg_ms: Some(0.021),
                    rtt_p99_ms: Some(0.05),
                    rtt_mdev_ms: Some(0.004),
                    error: None,
                },
                BenchRow {
                    path: Path::VxnetPlain,
                    tcp: None,
                    ping: None,
                    rtt_avg_ms: None,
                    rtt_p99_ms: None,
                    rtt_mdev_ms: None,
                    error: Some("no dataplane\nmore".into()),
                },
            ],
        };
        let t = table(&r);
        assert!(t.contains("nproc=2"), "{t}");
        assert!(
            t.contains("underlay") && t.contains("25.50") && t.contains("0.021"),
            "{t}"
        );
        assert!(
            t.contains("vxnet-plain") && t.contains("error: no dataplane"),
            "{t}"
        );
        assert!(!t.contains("vxnet-encrypted / vxnet-plain"), "{t}");
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["rows"][0]["path"], "underlay");
        assert_eq!(j["rows"][1]["path"], "vxnet-plain");
    }

    #[test]
    fn encrypted_ratio_line() {
        let row = |path, gbit: f64| BenchRow {
            path,
            tcp: Some(IperfResult {
                bits_per_second: gbit * 1e9,
                ..Default::default()
            }),
            ping: None,
            rtt_avg_ms: None,
            rtt_p99_ms: None,
            rtt_mdev_ms: None,
            error: None,
        };
        let mut r = BenchReport {
            machine: Machine {
                nproc: 2,
                kernel: "6.1".into(),
                cpu: "x".into(),
            },
            seconds: 5,
            underlay_mtu: 1500,
            encrypted_ratio: None,
            rows: vec![row(Path::VxnetPlain, 2.0), row(Path::VxnetEncrypted, 1.6)],
        };
        let ratio = encrypted_ratio(&r).unwrap();
        assert!((ratio - 0.8).abs() < 1e-9, "{ratio}");
        let t = table(&r);
        assert!(t.contains("vxnet-encrypted"), "{t}");
        assert!(
            t.contains("vxnet-encrypted / vxnet-plain = 0.80 (meets the 0.75 target)"),
            "{t}"
        );
        r.rows[1] = row(Path::VxnetEncrypted, 1.0);
        assert!(table(&r).contains("= 0.50 (below the 0.75 target)"));
        r.rows.truncate(1);
        assert_eq!(encrypted_ratio(&r), None);
        assert_eq!(
            serde_json::to_value(Path::VxnetEncrypted).unwrap(),
            "vxnet-encrypted"
        );
    }
}
