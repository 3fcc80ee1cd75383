//! `vxnet-testbed bench`: single-stream TCP throughput and RTT between two
//! hosts' containers for each data path. The paths are measured in rounds:
//! each round builds a fresh two-host topology and measures every path once,
//! one after the other, so the rows compare like with like and host noise
//! spreads over all paths. A row reports its median round and the spread
//! over rounds; ratios between paths are also taken per round, from the two
//! paths measured back to back.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::ValueEnum;
use serde::Serialize;

use crate::cpu::{CpuSample, CpuUse};
use crate::measure::{IPERF_PORT, IperfResult, PingResult, parse_iperf};
use crate::process;
use crate::scenario::{DEMO_VNI, ENCRYPTED_VNI, VXLAN_PORT};
use crate::swarm::Control;
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
    /// vxnet-plain with `vxnet trace --live` (no filter, one packet in 64
    /// sampled, every drop) watching both dataplanes: what live trace
    /// costs while it is on (issue 11: at most 5%).
    VxnetPlainTraced,
    /// vxnet dataplane, encrypted network (ESP, AES-GCM-128).
    VxnetEncrypted,
    /// vxnet dataplane, plain VXLAN, with the control plane in charge: a
    /// swarm of the two hosts, an attachable overlay network and a
    /// container on each host made with `vxnet container run -d`.
    VxnetSwarm,
    /// The same swarm, to a service's VIP: the client's dataplane picks
    /// the task (on the other host) and NATs the flow (issue 9). Its RTT is
    /// to the VIP, which the client host's dataplane answers itself.
    VxnetVip,
    /// The routing mesh (issue 10): from a client outside the swarm (on
    /// the underlay) to a published port of host1, which runs no task; the
    /// flow crosses to the task on host2 over the ingress network and its
    /// replies come back through host1. Its RTT is to host1's address,
    /// which the host answers itself.
    VxnetMesh,
    /// The same published port on host2, the task's own node: the direct
    /// path to the task, without the overlay hop.
    VxnetMeshDirect,
}

impl Path {
    pub const ALL: [Path; 9] = [
        Path::Underlay,
        Path::KernelVxlan,
        Path::VxnetPlain,
        Path::VxnetPlainTraced,
        Path::VxnetEncrypted,
        Path::VxnetSwarm,
        Path::VxnetVip,
        Path::VxnetMesh,
        Path::VxnetMeshDirect,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Path::Underlay => "underlay",
            Path::KernelVxlan => "kernel-vxlan",
            Path::VxnetPlain => "vxnet-plain",
            Path::VxnetPlainTraced => "vxnet-plain-traced",
            Path::VxnetEncrypted => "vxnet-encrypted",
            Path::VxnetSwarm => "vxnet-swarm",
            Path::VxnetVip => "vxnet-vip",
            Path::VxnetMesh => "vxnet-mesh",
            Path::VxnetMeshDirect => "vxnet-mesh-direct",
        }
    }
}

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// How many times every path is measured (at least 1).
    pub rounds: u32,
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

/// What one round of one path measured.
#[derive(Debug, Clone)]
pub struct Sample {
    pub tcp: IperfResult,
    pub ping: PingResult,
    /// Machine-wide CPU use while iperf3 ran.
    pub cpu: CpuUse,
}

/// A round in which a path could not be measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundError {
    /// 1-based.
    pub round: u32,
    pub error: String,
}

/// One measured path over all rounds.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub path: Path,
    /// The round that `tcp`, `ping` and the `rtt_*` fields come from
    /// (1-based): the median by Gbit/s of the rounds that succeeded, with an
    /// even number of them the lower of the two middle ones. `None` when no
    /// round succeeded.
    pub median_round: Option<u32>,
    pub tcp: Option<IperfResult>,
    pub ping: Option<PingResult>,
    pub rtt_avg_ms: Option<f64>,
    pub rtt_p99_ms: Option<f64>,
    pub rtt_mdev_ms: Option<f64>,
    /// The median round's machine-wide CPU use while iperf3 ran: what the
    /// path costs, all of it (TCP stacks, iperf3, dataplanes or kernel
    /// VXLAN, softirqs) on this one machine.
    pub cpu: Option<CpuUse>,
    /// The median round's CPU-seconds per gigabyte received.
    pub cpu_s_per_gb: Option<f64>,
    /// Receiver Gbit/s of every round, in round order; `None` (JSON `null`)
    /// where the round failed, so index `i` is round `i + 1`.
    pub rounds_gbit: Vec<Option<f64>>,
    /// The rounds that failed, and why.
    pub round_errors: Vec<RoundError>,
    /// Why the row could not be measured: set only when no round succeeded
    /// (the first round's error).
    pub error: Option<String>,
}

impl BenchRow {
    /// Builds the row from each round's outcome, in round order.
    pub fn from_rounds(path: Path, rounds: Vec<Result<Sample, String>>) -> BenchRow {
        let rounds_gbit: Vec<Option<f64>> = rounds
            .iter()
            .map(|r| r.as_ref().ok().map(|s| s.tcp.gbit_per_second()))
            .collect();
        let median = median_index(&rounds_gbit);
        let mut row = BenchRow {
            path,
            median_round: None,
            tcp: None,
            ping: None,
            rtt_avg_ms: None,
            rtt_p99_ms: None,
            rtt_mdev_ms: None,
            cpu: None,
            cpu_s_per_gb: None,
            rounds_gbit,
            round_errors: Vec::new(),
            error: None,
        };
        for (i, (round, r)) in (1u32..).zip(rounds).enumerate() {
            match r {
                Ok(s) if Some(i) == median => {
                    row.median_round = Some(round);
                    row.rtt_avg_ms = s.ping.avg_ms();
                    row.rtt_p99_ms = s.ping.p99_ms();
                    row.rtt_mdev_ms = s.ping.mdev_ms();
                    row.cpu_s_per_gb = s.cpu.seconds_per_gb(s.tcp.received_bytes);
                    row.cpu = Some(s.cpu);
                    row.tcp = Some(s.tcp);
                    row.ping = Some(s.ping);
                }
                Ok(_) => {}
                Err(error) => row.round_errors.push(RoundError { round, error }),
            }
        }
        if median.is_none() {
            row.error = Some(match row.round_errors.first() {
                Some(e) => e.error.clone(),
                None => "not measured (no round ran)".to_string(),
            });
        }
        row
    }

    /// The median round's Gbit/s.
    pub fn gbit(&self) -> Option<f64> {
        self.tcp.as_ref().map(IperfResult::gbit_per_second)
    }

    /// The lowest and highest Gbit/s over the rounds that succeeded.
    pub fn spread(&self) -> Option<(f64, f64)> {
        let ok = || self.rounds_gbit.iter().flatten().copied();
        Some((ok().reduce(f64::min)?, ok().reduce(f64::max)?))
    }
}

/// Index of the median of the values that are present: sorted by value
/// (ties in index order), the middle one, or with an even count the lower of
/// the two middle ones, so it always names a round that was measured.
pub fn median_index(values: &[Option<f64>]) -> Option<usize> {
    let mut ok: Vec<(usize, f64)> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| (i, v)))
        .collect();
    ok.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    let n = ok.len();
    if n == 0 {
        return None;
    }
    ok.get((n - 1) / 2).map(|&(i, _)| i)
}

/// The median of `values`; with an even count, the mean of the two middle
/// ones.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => v.get(n / 2).copied(),
        _ => Some((v.get(n / 2 - 1)? + v.get(n / 2)?) / 2.0),
    }
}

/// A throughput ratio between two paths that the report checks against a
/// target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatioSpec {
    pub numerator: Path,
    pub denominator: Path,
    pub target: f64,
}

/// The issue-3 target for vxnet-encrypted / vxnet-plain.
pub const ENCRYPTED_RATIO_TARGET: f64 = 0.75;

/// The target for vxnet-plain / kernel-vxlan: at least the kernel's own VXLAN.
pub const PLAIN_VS_KERNEL_RATIO_TARGET: f64 = 1.0;

/// vxnet-encrypted / vxnet-plain.
pub const ENCRYPTED_RATIO: RatioSpec = RatioSpec {
    numerator: Path::VxnetEncrypted,
    denominator: Path::VxnetPlain,
    target: ENCRYPTED_RATIO_TARGET,
};

/// The issue-9 target for vxnet-vip / vxnet-swarm.
pub const VIP_RATIO_TARGET: f64 = 0.95;

/// vxnet-vip / vxnet-swarm: the same swarm and plain network, to the VIP
/// rather than to the container's own address.
pub const VIP_RATIO: RatioSpec = RatioSpec {
    numerator: Path::VxnetVip,
    denominator: Path::VxnetSwarm,
    target: VIP_RATIO_TARGET,
};

/// Our target for vxnet-mesh / vxnet-mesh-direct (the issue sets none):
/// the extra overlay hop (a VXLAN send and receive, conntrack on both
/// nodes) should cost at most a quarter.
pub const MESH_RATIO_TARGET: f64 = 0.75;

/// vxnet-mesh / vxnet-mesh-direct: to the same task through a node
/// without it, and through its own node.
pub const MESH_RATIO: RatioSpec = RatioSpec {
    numerator: Path::VxnetMesh,
    denominator: Path::VxnetMeshDirect,
    target: MESH_RATIO_TARGET,
};

/// The issue-11 target for vxnet-plain-traced / vxnet-plain: live trace
/// on costs at most 5%.
pub const LIVE_TRACE_RATIO_TARGET: f64 = 0.95;

/// vxnet-plain-traced / vxnet-plain.
pub const LIVE_TRACE_RATIO: RatioSpec = RatioSpec {
    numerator: Path::VxnetPlainTraced,
    denominator: Path::VxnetPlain,
    target: LIVE_TRACE_RATIO_TARGET,
};

/// vxnet-plain / kernel-vxlan.
pub const PLAIN_VS_KERNEL_RATIO: RatioSpec = RatioSpec {
    numerator: Path::VxnetPlain,
    denominator: Path::KernelVxlan,
    target: PLAIN_VS_KERNEL_RATIO_TARGET,
};

/// One ratio, computed two ways.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ratio {
    /// The rows' (median-round) Gbit/s divided.
    pub of_medians: Option<f64>,
    /// Each round's ratio, from the two paths measured in that round;
    /// `None` where either failed.
    pub rounds: Vec<Option<f64>>,
    /// The median of the per-round ratios. On a noisy host this is the
    /// fairer figure: the two paths of a round ran back to back.
    pub round_median: Option<f64>,
}

impl Ratio {
    /// The value the table prints and judges: the median of per-round
    /// ratios, or the ratio of medians when no round measured both paths.
    pub fn headline(&self) -> Option<f64> {
        self.round_median.or(self.of_medians)
    }
}

/// Computes `spec` over `rows`; all `None` unless both paths were measured.
pub fn ratio(rows: &[BenchRow], spec: RatioSpec) -> Ratio {
    let row = |p: Path| rows.iter().find(|r| r.path == p);
    let (Some(num), Some(den)) = (row(spec.numerator), row(spec.denominator)) else {
        return Ratio::default();
    };
    let div = |n: Option<f64>, d: Option<f64>| match (n, d) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    };
    let rounds: Vec<Option<f64>> = num
        .rounds_gbit
        .iter()
        .zip(&den.rounds_gbit)
        .map(|(n, d)| div(*n, *d))
        .collect();
    let paired: Vec<f64> = rounds.iter().flatten().copied().collect();
    Ratio {
        of_medians: div(num.gbit(), den.gbit()),
        round_median: median(&paired),
        rounds,
    }
}

/// Everything `bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub machine: Machine,
    /// How many rounds measured every path.
    pub rounds: u32,
    pub seconds: u32,
    pub underlay_mtu: u32,
    pub rows: Vec<BenchRow>,
    /// vxnet-encrypted / vxnet-plain of the rows' median Gbit/s, when both
    /// were measured.
    pub encrypted_ratio: Option<f64>,
    /// vxnet-encrypted / vxnet-plain in each round (`null` where either
    /// failed).
    pub encrypted_ratio_rounds: Vec<Option<f64>>,
    /// The median of `encrypted_ratio_rounds`: what the table prints.
    pub encrypted_ratio_round_median: Option<f64>,
    /// vxnet-plain / kernel-vxlan of the rows' median Gbit/s, when both were
    /// measured.
    pub plain_vs_kernel_ratio: Option<f64>,
    /// vxnet-plain / kernel-vxlan in each round.
    pub plain_vs_kernel_ratio_rounds: Vec<Option<f64>>,
    /// The median of `plain_vs_kernel_ratio_rounds`: what the table prints.
    pub plain_vs_kernel_ratio_round_median: Option<f64>,
    /// vxnet-vip / vxnet-swarm of the rows' median Gbit/s.
    pub vip_ratio: Option<f64>,
    /// vxnet-vip / vxnet-swarm in each round.
    pub vip_ratio_rounds: Vec<Option<f64>>,
    /// The median of `vip_ratio_rounds`: what the table prints.
    pub vip_ratio_round_median: Option<f64>,
    /// vxnet-mesh / vxnet-mesh-direct of the rows' median Gbit/s.
    pub mesh_ratio: Option<f64>,
    /// vxnet-mesh / vxnet-mesh-direct in each round.
    pub mesh_ratio_rounds: Vec<Option<f64>>,
    /// The median of `mesh_ratio_rounds`: what the table prints.
    pub mesh_ratio_round_median: Option<f64>,
    /// vxnet-plain-traced / vxnet-plain of the rows' median Gbit/s.
    pub live_trace_ratio: Option<f64>,
    /// vxnet-plain-traced / vxnet-plain in each round.
    pub live_trace_ratio_rounds: Vec<Option<f64>>,
    /// The median of `live_trace_ratio_rounds`: what the table prints.
    pub live_trace_ratio_round_median: Option<f64>,
}

impl BenchReport {
    /// A report over `rows`, with the ratios filled in.
    pub fn new(
        machine: Machine,
        rounds: u32,
        seconds: u32,
        underlay_mtu: u32,
        rows: Vec<BenchRow>,
    ) -> BenchReport {
        let enc = ratio(&rows, ENCRYPTED_RATIO);
        let pvk = ratio(&rows, PLAIN_VS_KERNEL_RATIO);
        let vip = ratio(&rows, VIP_RATIO);
        let mesh = ratio(&rows, MESH_RATIO);
        let live = ratio(&rows, LIVE_TRACE_RATIO);
        BenchReport {
            machine,
            rounds,
            seconds,
            underlay_mtu,
            rows,
            encrypted_ratio: enc.of_medians,
            encrypted_ratio_rounds: enc.rounds,
            encrypted_ratio_round_median: enc.round_median,
            plain_vs_kernel_ratio: pvk.of_medians,
            plain_vs_kernel_ratio_rounds: pvk.rounds,
            plain_vs_kernel_ratio_round_median: pvk.round_median,
            vip_ratio: vip.of_medians,
            vip_ratio_rounds: vip.rounds,
            vip_ratio_round_median: vip.round_median,
            mesh_ratio: mesh.of_medians,
            mesh_ratio_rounds: mesh.rounds,
            mesh_ratio_round_median: mesh.round_median,
            live_trace_ratio: live.of_medians,
            live_trace_ratio_rounds: live.rounds,
            live_trace_ratio_round_median: live.round_median,
        }
    }
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

/// Runs `cfg.rounds` rounds. Each round builds a fresh two-host testbed and
/// measures every configured path once, in order, so noise on the host
/// spreads over all paths instead of hitting whichever ran during a busy
/// spell. A path that fails in a round records the error for that round;
/// its other rounds and the other paths still run. Fails only when no
/// round could build its topology.
pub fn run(
    cfg: &BenchConfig,
    tb_slot: &dyn Fn(&str),
    progress: &dyn Fn(&str),
) -> Result<BenchReport> {
    anyhow::ensure!(
        cfg.rounds >= 1,
        "rounds must be at least 1 (every round measures each path once)"
    );
    let n = cfg.rounds;
    let mut outcomes: Vec<Vec<Result<Sample, String>>> =
        cfg.paths.iter().map(|_| Vec::new()).collect();
    let mut topology_error = None;
    let mut built_any = false;
    for round in 1..=n {
        let prefix = crate::topology::next_prefix();
        tb_slot(&prefix);
        let tb = Testbed::with_prefix(
            prefix,
            TestbedConfig {
                hosts: 2,
                underlay_mtu: cfg.underlay_mtu,
            },
        )
        .map_err(|e| format!("round {round}/{n}: topology: {e:#}"));
        match &tb {
            Ok(tb) => {
                built_any = true;
                progress(&format!(
                    "round {round}/{n}: topology {}: 2 hosts, underlay MTU {}",
                    tb.prefix(),
                    cfg.underlay_mtu
                ));
            }
            Err(e) => {
                progress(e);
                topology_error = Some(e.clone());
            }
        }
        for (path, out) in cfg.paths.iter().zip(outcomes.iter_mut()) {
            let label = path.label();
            let r = match &tb {
                Ok(tb) => {
                    progress(&format!(
                        "round {round}/{n}: measuring {label} ({} s TCP, {} pings)",
                        cfg.seconds, cfg.ping_count
                    ));
                    run_path(tb, *path, cfg).map_err(|e| format!("{e:#}"))
                }
                Err(e) => Err(e.clone()),
            };
            match (&r, &tb) {
                (Ok(s), _) => progress(&format!(
                    "round {round}/{n}: {label}: {:.2} Gbit/s, rtt avg {} ms",
                    s.tcp.gbit_per_second(),
                    opt(s.ping.avg_ms(), 3)
                )),
                (Err(e), Ok(_)) => progress(&format!("round {round}/{n}: {label}: {e}")),
                (Err(_), Err(_)) => {}
            }
            out.push(r);
        }
        drop(tb);
    }
    if !built_any && let Some(e) = topology_error {
        anyhow::bail!(e);
    }
    let rows = cfg
        .paths
        .iter()
        .zip(outcomes)
        .map(|(path, rounds)| BenchRow::from_rounds(*path, rounds))
        .collect();
    Ok(BenchReport::new(
        machine(),
        n,
        cfg.seconds,
        cfg.underlay_mtu,
        rows,
    ))
}

fn measure(
    tb: &Testbed,
    client_ns: &str,
    server_ns: &str,
    server_ip: &str,
    cfg: &BenchConfig,
) -> Result<Sample> {
    measure_via(tb, client_ns, server_ns, server_ip, server_ip, cfg)
}

/// [`measure`] with the client aiming at `target` (a VIP) while the server
/// listens on `server_ip`.
fn measure_via(
    tb: &Testbed,
    client_ns: &str,
    server_ns: &str,
    server_ip: &str,
    target: &str,
    cfg: &BenchConfig,
) -> Result<Sample> {
    tb.wait_reachable(client_ns, target, Duration::from_secs(10))?;
    let ping = tb.ping(
        client_ns,
        target,
        cfg.ping_count,
        Duration::from_millis(10),
        None,
        false,
    )?;
    let _server = tb.iperf_server(server_ns, server_ip)?;
    let before = CpuSample::now()?;
    let out = tb.iperf_client(client_ns, target, cfg.seconds, &[])?;
    let cpu = before.until(&CpuSample::now()?);
    let tcp = parse_iperf(&out.stdout)
        .with_context(|| format!("iperf3 client stderr: {}", out.stderr))?;
    Ok(Sample { tcp, ping, cpu })
}

fn run_path(tb: &Testbed, path: Path, cfg: &BenchConfig) -> Result<Sample> {
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
        Path::VxnetPlainTraced => {
            let pair = tb.vxnet_pair(DEMO_VNI, &cfg.dataplane, ("t1", "t2"))?;
            let ip = pair.ep2.v4().unwrap_or_default().to_string();
            let r = live_traced(tb, &[&pair.dp1, &pair.dp2], cfg).and_then(|live| {
                let sample = measure(tb, &pair.c1.ns, &pair.c2.ns, &ip, cfg)?;
                // The row is honest only if live trace saw the traffic.
                for (name, p) in &live {
                    let log = crate::process::log_tail(&tb.log_path(name), 100_000);
                    if !log
                        .lines()
                        .any(|l| l.starts_with(|c: char| c.is_ascii_digit()))
                    {
                        anyhow::bail!("{name} reported no packet: {}", p.log_tail(2000));
                    }
                }
                Ok(sample)
            });
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
        Path::VxnetSwarm => swarm_path(tb, cfg, Row::Containers),
        Path::VxnetVip => swarm_path(tb, cfg, Row::Vip),
        Path::VxnetMesh => swarm_path(tb, cfg, Row::Mesh { via: 1 }),
        Path::VxnetMeshDirect => swarm_path(tb, cfg, Row::Mesh { via: 2 }),
    }
}

/// What a swarm row measures.
#[derive(Clone, Copy)]
enum Row {
    /// Container to container.
    Containers,
    /// Container to a one-task service's VIP.
    Vip,
    /// An outside client to a one-task service's published port on host
    /// `via`.
    Mesh { via: usize },
}

/// Starts `vxnet trace --live` on each of `dps` (defaults: every drop and
/// one packet in 64), bounded well past the measurement, and waits until
/// each is watching. They stop when the returned processes (with their
/// log names) drop.
fn live_traced(
    tb: &Testbed,
    dps: &[&crate::vxnet::Dataplane],
    cfg: &BenchConfig,
) -> Result<Vec<(String, crate::process::BackgroundProc)>> {
    let cli = crate::vxnet::find_binary("vxnet")?.display().to_string();
    let count = vxnet_api::observe::MAX_COUNT.to_string();
    let duration = format!("{}s", cfg.seconds + 120);
    let mut procs = Vec::new();
    for dp in dps {
        let name = format!("live-trace-{}", dp.host);
        let socket = dp.socket.display().to_string();
        let argv = [
            cli.as_str(),
            "trace",
            "--live",
            "--socket",
            &socket,
            "-c",
            &count,
            "--duration",
            &duration,
        ];
        let p = tb.spawn_proc(&dp.ns, &name, &argv)?;
        let log = tb.log_path(&name);
        if !crate::process::wait_until(Duration::from_secs(10), || {
            crate::process::log_tail(&log, 4000).contains("watching")
        }) {
            anyhow::bail!("live trace did not start: {}", p.log_tail(2000));
        }
        procs.push((name, p));
    }
    Ok(procs)
}

/// The [`Path::VxnetSwarm`] row: nothing is programmed by hand; the
/// control daemons place the containers and program both dataplanes. The
/// [`Path::VxnetVip`] row: a one-task service on host2 (host1 drained),
/// measured from host1's container through the VIP. The mesh rows: the
/// same service publishing the iperf3 port, measured from a client
/// outside the swarm through host1 (no task) or host2 (the task's node).
fn swarm_path(tb: &Testbed, cfg: &BenchConfig, row: Row) -> Result<Sample> {
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
        match row {
            Row::Containers => measure(tb, ns1, ns2, ip2, cfg),
            Row::Vip => {
                let (task_ns, task_ip, vip) = vip_task(c1, c2, &[])?;
                measure_via(tb, ns1, &task_ns, &task_ip, &vip, cfg)
            }
            Row::Mesh { via } => {
                let port = format!("{IPERF_PORT}:{IPERF_PORT}");
                let (task_ns, task_ip, _) = vip_task(c1, c2, &["-p", &port])?;
                let outside = tb.add_external(1)?;
                let node = tb.host(via).underlay_v4.to_string();
                // The published port answers once every node programmed it.
                let ready = crate::process::wait_until(Duration::from_secs(20), || {
                    vxnet_ctl(&c1.socket, &["service", "ls"]).is_ok()
                        && tb
                            .exec(
                                &tb.host(via).ns,
                                &["nft", "list", "set", "ip", "vxnet", "tcp_ports"],
                            )
                            .is_ok_and(|o| o.stdout.contains(&IPERF_PORT.to_string()))
                });
                anyhow::ensure!(ready, "port {IPERF_PORT} never published on host{via}");
                measure_via(tb, &outside.ns, &task_ns, &task_ip, &node, cfg)
            }
        }
    })();
    // Stop the control daemons first (they would re-create what the
    // dataplanes' stop removes), then free UDP 4789 for later rows. The
    // containers' namespaces go with the testbed.
    let pids: Vec<u32> = controls.iter().map(|c| c.pid).collect();
    tb.stop_pids(&pids);
    tb.stop_dataplanes(&dps.iter().collect::<Vec<_>>());
    // The next swarm row starts afresh: no swarm state, no containers, no
    // outside client.
    let _ = crate::topology::destroy_netns(&format!("{}-x1", tb.prefix()));
    for h in tb.hosts() {
        let _ = std::fs::remove_dir_all(tb.state_dir().join(format!("{}-control", h.name)));
        let mine = format!("{}-", h.ns);
        for ns in crate::topology::list_netns().unwrap_or_default() {
            if ns.starts_with(&mine) {
                let _ = crate::topology::destroy_netns(&ns);
            }
        }
    }
    r
}

/// A one-task service `bench-vip` on the bench network (with `extra`
/// options), placed on `c2`'s host: its task's namespace and address, and
/// the VIP.
fn vip_task(c1: &Control, c2: &Control, extra: &[&str]) -> Result<(String, String, String)> {
    c1.ok(&["node", "update", "--availability", "drain", "host1"])?;
    let mut args = vec![
        "service",
        "create",
        "--name",
        "bench-vip",
        "--network",
        "bench",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sleep", "3600"]);
    c1.ok(&args)?;
    let tasks = c1.json(&["service", "ps", "bench-vip", "--format", "json"])?;
    let task = tasks
        .as_array()
        .and_then(|t| t.iter().find(|t| t["desired"] == "running"))
        .with_context(|| format!("no task of bench-vip: {tasks}"))?;
    let name = task["container"].as_str().unwrap_or_default();
    let c = c2.json(&["container", "inspect", name])?;
    let ns = c[0]["netns"].as_str().unwrap_or_default().to_owned();
    let ip = c[0]["networks"][0]["ipv4"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let s = c1.json(&["service", "inspect", "bench-vip"])?;
    let vip = s[0]["Endpoint"]["VirtualIPs"][0]["Addr"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(
        !ns.is_empty() && !ip.is_empty() && !vip.is_empty(),
        "bench-vip: no task namespace, address or VIP ({task}, {s})"
    );
    Ok((ns, ip, vip))
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.prec$}"))
}

/// Whether `ratio` meets `target`.
pub fn verdict(ratio: f64, target: f64) -> &'static str {
    if ratio >= target { "meets" } else { "below" }
}

/// The table line for one ratio, if both of its paths were measured: the
/// median of per-round ratios (or the ratio of medians when no round
/// measured both paths), its verdict, and how it was computed.
pub fn ratio_line(spec: RatioSpec, r: &Ratio) -> Option<String> {
    let value = r.headline()?;
    let mut s = format!(
        "{} / {} = {:.2} ({} the {:.2} target)",
        spec.numerator.label(),
        spec.denominator.label(),
        // Truncated, not rounded: 0.7495 must not print as a "0.75" that
        // is below the 0.75 target.
        (value * 100.0).floor() / 100.0,
        verdict(value, spec.target),
        spec.target
    );
    let paired: Vec<f64> = r.rounds.iter().flatten().copied().collect();
    match (
        paired.iter().copied().reduce(f64::min),
        paired.iter().copied().reduce(f64::max),
    ) {
        (Some(lo), Some(hi)) => {
            let _ = write!(
                s,
                "  median of {} per-round ratio{} ({lo:.2}-{hi:.2}); ratio of medians {}",
                paired.len(),
                if paired.len() == 1 { "" } else { "s" },
                opt(r.of_medians, 2)
            );
        }
        _ => s.push_str("  ratio of medians (no round measured both paths)"),
    }
    Some(s)
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
        "single-stream TCP, {} round{} x {} s (every path once per round, in order), underlay MTU {}",
        r.rounds,
        if r.rounds == 1 { "" } else { "s" },
        r.seconds,
        r.underlay_mtu
    );
    let _ = writeln!(
        s,
        "Gbit/s, retrans, rtt, cpu: each path's median round (even count: the lower middle); min-max: Gbit/s over its rounds"
    );
    let _ = writeln!(
        s,
        "cpu %: busy share of all {} CPUs while iperf3 ran; cpu s/GB: CPU-seconds (every process and softirq) per GB received",
        m.nproc
    );
    let _ = writeln!(
        s,
        "{:<18} {:>9} {:>11} {:>9} {:>12} {:>12} {:>12} {:>6} {:>9}",
        "path",
        "Gbit/s",
        "min-max",
        "retrans",
        "rtt avg ms",
        "rtt p99 ms",
        "rtt mdev ms",
        "cpu %",
        "cpu s/GB"
    );
    for row in &r.rows {
        let _ = write!(
            s,
            "{:<18} {:>9} {:>11} {:>9} {:>12} {:>12} {:>12} {:>6} {:>9}",
            row.path.label(),
            opt(row.gbit(), 2),
            row.spread()
                .map_or_else(|| "-".to_string(), |(lo, hi)| format!("{lo:.2}-{hi:.2}")),
            row.tcp
                .as_ref()
                .map_or_else(|| "-".to_string(), |t| t.retransmits.to_string()),
            opt(row.rtt_avg_ms, 3),
            opt(row.rtt_p99_ms, 3),
            opt(row.rtt_mdev_ms, 3),
            opt(row.cpu.map(|c| c.busy_percent()), 0),
            opt(row.cpu_s_per_gb, 2),
        );
        if let Some(e) = &row.error {
            let first = e.lines().next().unwrap_or_default();
            let _ = write!(s, "  error: {first}");
        } else if let Some(first) = row.round_errors.first() {
            let failed: Vec<String> = row
                .round_errors
                .iter()
                .map(|e| e.round.to_string())
                .collect();
            let _ = write!(
                s,
                "  failed in round {}: {}",
                failed.join(", "),
                first.error.lines().next().unwrap_or_default()
            );
        }
        s.push('\n');
    }
    for spec in [
        ENCRYPTED_RATIO,
        PLAIN_VS_KERNEL_RATIO,
        VIP_RATIO,
        MESH_RATIO,
        LIVE_TRACE_RATIO,
    ] {
        if let Some(line) = ratio_line(spec, &ratio(&r.rows, spec)) {
            let _ = writeln!(s, "{line}");
        }
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

    fn machine() -> Machine {
        Machine {
            nproc: 2,
            kernel: "6.1".into(),
            cpu: "x".into(),
        }
    }

    /// A round that measured `gbit` with `retrans` retransmits and one RTT
    /// of `rtt_ms`.
    /// A one-second round; its CPU use (retrans / 10 CPU-seconds of 10)
    /// differs per round so the median round's can be told apart.
    fn ok(gbit: f64, retrans: u64, rtt_ms: f64) -> Result<Sample, String> {
        Ok(Sample {
            tcp: IperfResult {
                bits_per_second: gbit * 1e9,
                received_bytes: (gbit * 1e9 / 8.0) as u64,
                retransmits: retrans,
                ..Default::default()
            },
            cpu: CpuUse {
                busy_s: retrans as f64 / 10.0,
                total_s: 10.0,
                steal_s: 0.0,
            },
            ping: PingResult {
                transmitted: 1,
                received: 1,
                rtts_ms: vec![rtt_ms],
            },
        })
    }

    fn failed(e: &str) -> Result<Sample, String> {
        Err(e.to_string())
    }

    /// A row measured once per value, `None` meaning a failed round.
    fn row(path: Path, gbits: &[Option<f64>]) -> BenchRow {
        let rounds = gbits
            .iter()
            .map(|g| g.map_or_else(|| failed("down"), |g| ok(g, 0, 0.1)))
            .collect();
        BenchRow::from_rounds(path, rounds)
    }

    fn report(rows: Vec<BenchRow>) -> BenchReport {
        let rounds = rows.first().map_or(0, |r| r.rounds_gbit.len() as u32);
        BenchReport::new(machine(), rounds, 5, 1500, rows)
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[2.0]), Some(2.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median_index(&[]), None);
        assert_eq!(median_index(&[None, None]), None);
        assert_eq!(median_index(&[Some(5.0), Some(3.0), Some(4.0)]), Some(2));
        // Even: the lower of the two middle values, a round that ran.
        assert_eq!(
            median_index(&[Some(5.0), Some(3.0), Some(4.0), Some(6.0)]),
            Some(2)
        );
        assert_eq!(median_index(&[Some(5.0), Some(3.0)]), Some(1));
        // Ties go to the earlier round.
        assert_eq!(median_index(&[Some(1.0), Some(1.0), Some(1.0)]), Some(1));
        // Failed rounds do not count.
        assert_eq!(median_index(&[None, Some(5.0), None, Some(3.0)]), Some(3));
    }

    #[test]
    fn row_reports_the_median_round() {
        let r = BenchRow::from_rounds(
            Path::Underlay,
            vec![ok(5.0, 50, 0.5), ok(3.0, 30, 0.3), ok(4.0, 40, 0.4)],
        );
        assert_eq!(r.median_round, Some(3));
        assert!(close(r.gbit(), 4.0), "{r:?}");
        assert_eq!(r.tcp.as_ref().map(|t| t.retransmits), Some(40));
        assert!(close(r.rtt_avg_ms, 0.4), "{r:?}");
        // 4 CPU-seconds for 0.5 GB.
        assert!(close(r.cpu_s_per_gb, 8.0), "{r:?}");
        assert!(close(r.cpu.map(|c| c.busy_percent()), 40.0), "{r:?}");
        assert_eq!(r.ping.as_ref().map(|p| p.rtts_ms.clone()), Some(vec![0.4]));
        assert_eq!(r.rounds_gbit, vec![Some(5.0), Some(3.0), Some(4.0)]);
        assert_eq!(r.spread(), Some((3.0, 5.0)));
        assert!(r.error.is_none() && r.round_errors.is_empty(), "{r:?}");

        // Even count: the lower middle (4.0 of 3, 4, 5, 6).
        let r = BenchRow::from_rounds(
            Path::Underlay,
            vec![
                ok(6.0, 60, 0.6),
                ok(4.0, 40, 0.4),
                ok(3.0, 30, 0.3),
                ok(5.0, 50, 0.5),
            ],
        );
        assert_eq!(r.median_round, Some(2));
        assert!(close(r.gbit(), 4.0) && close(r.rtt_avg_ms, 0.4), "{r:?}");
    }

    #[test]
    fn a_failed_round_is_recorded_and_the_others_count() {
        let r = BenchRow::from_rounds(
            Path::VxnetPlain,
            vec![
                ok(4.0, 0, 0.3),
                failed("no dataplane\nlog"),
                ok(2.0, 0, 0.2),
            ],
        );
        // Two rounds left: the lower middle is 2.0, round 3.
        assert_eq!(r.median_round, Some(3));
        assert!(close(r.gbit(), 2.0), "{r:?}");
        assert_eq!(r.rounds_gbit, vec![Some(4.0), None, Some(2.0)]);
        assert_eq!(r.spread(), Some((2.0, 4.0)));
        assert_eq!(
            r.round_errors,
            vec![RoundError {
                round: 2,
                error: "no dataplane\nlog".into()
            }]
        );
        assert!(r.error.is_none(), "{r:?}");
        let t = table(&report(vec![r]));
        assert!(
            t.contains("2.00   2.00-4.00") && t.contains("failed in round 2: no dataplane"),
            "{t}"
        );
        assert!(!t.contains("log"), "{t}");

        // No round succeeded: the row shows the error, as before rounds.
        let r = BenchRow::from_rounds(Path::VxnetPlain, vec![failed("first"), failed("second")]);
        assert_eq!(r.median_round, None);
        assert!(r.tcp.is_none() && r.ping.is_none() && r.spread().is_none());
        assert_eq!(r.error.as_deref(), Some("first"));
        assert_eq!(r.round_errors.len(), 2);
    }

    #[test]
    fn table_shows_rows_and_errors() {
        let r = BenchReport::new(
            machine(),
            1,
            10,
            1500,
            vec![
                BenchRow::from_rounds(Path::Underlay, vec![ok(25.5, 3, 0.021)]),
                BenchRow::from_rounds(Path::VxnetPlain, vec![failed("no dataplane\nmore")]),
            ],
        );
        let t = table(&r);
        assert!(t.contains("nproc=2"), "{t}");
        assert!(t.contains("1 round x 10 s"), "{t}");
        assert!(t.contains("min-max"), "{t}");
        assert!(
            t.contains("underlay") && t.contains("25.50") && t.contains("25.50-25.50"),
            "{t}"
        );
        assert!(t.contains("0.021"), "{t}");
        // 0.3 CPU-seconds for 3.19 GB; 3% of the CPUs.
        assert!(t.contains("cpu s/GB") && t.contains(" 0.09"), "{t}");
        assert!(
            t.contains("vxnet-plain") && t.contains("error: no dataplane"),
            "{t}"
        );
        assert!(!t.contains("more") && !t.contains("failed in round"), "{t}");
        assert!(!t.contains("vxnet-encrypted / vxnet-plain"), "{t}");
        assert!(!t.contains("vxnet-plain / kernel-vxlan"), "{t}");
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["rows"][0]["path"], "underlay");
        assert_eq!(j["rows"][1]["path"], "vxnet-plain");
        assert_eq!(j["rows"][1]["error"], "no dataplane\nmore");
        assert!(j["rows"][0]["cpu_s_per_gb"].as_f64().is_some(), "{j}");
        assert!(j["rows"][0]["cpu"]["busy_s"].as_f64().is_some(), "{j}");
        assert!(j["rows"][1]["cpu_s_per_gb"].is_null(), "{j}");
    }

    #[test]
    fn encrypted_ratio_line() {
        let mut r = report(vec![
            row(Path::VxnetPlain, &[Some(2.0)]),
            row(Path::VxnetEncrypted, &[Some(1.6)]),
        ]);
        assert!(close(r.encrypted_ratio, 0.8), "{r:?}");
        assert!(close(r.encrypted_ratio_round_median, 0.8), "{r:?}");
        let t = table(&r);
        assert!(
            t.contains("vxnet-encrypted / vxnet-plain = 0.80 (meets the 0.75 target)"),
            "{t}"
        );
        assert!(
            t.contains("median of 1 per-round ratio (0.80-0.80); ratio of medians 0.80"),
            "{t}"
        );
        r.rows[1] = row(Path::VxnetEncrypted, &[Some(1.0)]);
        assert!(table(&r).contains("= 0.50 (below the 0.75 target)"));
        // Just under the target shows as under it, not as "0.75 (below".
        r.rows[1] = BenchRow::from_rounds(Path::VxnetEncrypted, vec![ok(1.499, 0, 0.1)]);
        assert!(table(&r).contains("= 0.74 (below"), "{}", table(&r));
        r.rows.truncate(1);
        assert_eq!(ratio(&r.rows, ENCRYPTED_RATIO), Ratio::default());
        assert!(!table(&r).contains(" / "));
        assert_eq!(
            serde_json::to_value(Path::VxnetEncrypted).unwrap(),
            "vxnet-encrypted"
        );
    }

    #[test]
    fn live_trace_line_is_traced_over_plain_against_five_percent() {
        // Per round: 0.96, 0.90 -> the lower middle, 0.90.
        let r = report(vec![
            row(Path::VxnetPlain, &[Some(5.0), Some(4.0)]),
            row(Path::VxnetPlainTraced, &[Some(4.8), Some(3.6)]),
        ]);
        assert_eq!(r.live_trace_ratio_rounds.len(), 2);
        let t = table(&r);
        assert!(
            t.contains("vxnet-plain-traced / vxnet-plain = 0.9") && t.contains("the 0.95 target"),
            "{t}"
        );
        assert_eq!(
            serde_json::to_value(Path::VxnetPlainTraced).unwrap(),
            "vxnet-plain-traced"
        );
    }

    #[test]
    fn plain_vs_kernel_line_prints_the_median_of_per_round_ratios() {
        // Per round: 0.8, 1.1, 0.9 -> median 0.9; the medians (3.6 and
        // 4.0) happen to agree.
        let r = report(vec![
            row(Path::KernelVxlan, &[Some(5.0), Some(3.0), Some(4.0)]),
            row(Path::VxnetPlain, &[Some(4.0), Some(3.3), Some(3.6)]),
        ]);
        let p = ratio(&r.rows, PLAIN_VS_KERNEL_RATIO);
        assert!(close(p.of_medians, 3.6 / 4.0), "{p:?}");
        assert!(close(p.round_median, 3.6 / 4.0), "{p:?}");
        assert_eq!(p.rounds.len(), 3);
        assert!(close(p.rounds[1], 1.1), "{p:?}");
        let t = table(&r);
        assert!(
            t.contains("vxnet-plain / kernel-vxlan = 0.90 (below the 1.00 target)"),
            "{t}"
        );
        assert!(
            t.contains("median of 3 per-round ratios (0.80-1.10)"),
            "{t}"
        );

        // Pairing differs from the ratio of medians: kernel 5, 3, 4 and
        // plain 5.5, 2.5, 4.5 give per-round 1.1, 0.83, 1.125 (median 1.1)
        // but medians 4.5 / 4.0 = 1.125.
        let r = report(vec![
            row(Path::KernelVxlan, &[Some(5.0), Some(3.0), Some(4.0)]),
            row(Path::VxnetPlain, &[Some(5.5), Some(2.5), Some(4.5)]),
        ]);
        assert!(close(r.plain_vs_kernel_ratio, 1.125), "{r:?}");
        assert!(close(r.plain_vs_kernel_ratio_round_median, 1.1), "{r:?}");
        let t = table(&r);
        assert!(
            t.contains("vxnet-plain / kernel-vxlan = 1.10 (meets the 1.00 target)"),
            "{t}"
        );
        assert!(t.contains("ratio of medians 1.12"), "{t}");

        // Even count of paired rounds: the mean of the two middle ratios.
        let r = report(vec![
            row(Path::KernelVxlan, &[Some(4.0), Some(4.0)]),
            row(Path::VxnetPlain, &[Some(3.0), Some(4.0)]),
        ]);
        assert!(close(r.plain_vs_kernel_ratio_round_median, 0.875), "{r:?}");
        assert!(close(r.plain_vs_kernel_ratio, 0.75), "{r:?}");
    }

    #[test]
    fn ratio_pairs_only_rounds_where_both_paths_ran() {
        let r = report(vec![
            row(Path::KernelVxlan, &[Some(4.0), None, Some(5.0)]),
            row(Path::VxnetPlain, &[Some(3.0), Some(9.0), None]),
        ]);
        let p = ratio(&r.rows, PLAIN_VS_KERNEL_RATIO);
        assert_eq!(p.rounds, vec![Some(0.75), None, None]);
        assert!(close(p.round_median, 0.75), "{p:?}");
        assert!(
            table(&r).contains("= 0.75 (below the 1.00 target)  median of 1 per-round ratio"),
            "{}",
            table(&r)
        );

        // No round measured both: fall back to the ratio of medians, and say so.
        let r = report(vec![
            row(Path::KernelVxlan, &[Some(4.0), None]),
            row(Path::VxnetPlain, &[None, Some(4.4)]),
        ]);
        let p = ratio(&r.rows, PLAIN_VS_KERNEL_RATIO);
        assert_eq!(p.round_median, None);
        assert!(close(p.headline(), 1.1), "{p:?}");
        let t = table(&r);
        assert!(
            t.contains(
                "vxnet-plain / kernel-vxlan = 1.10 (meets the 1.00 target)  ratio of medians (no round measured both paths)"
            ),
            "{t}"
        );
    }

    #[test]
    fn verdicts_at_the_targets() {
        assert_eq!(verdict(0.75, ENCRYPTED_RATIO_TARGET), "meets");
        assert_eq!(verdict(0.7499, ENCRYPTED_RATIO_TARGET), "below");
        assert_eq!(verdict(1.0, PLAIN_VS_KERNEL_RATIO_TARGET), "meets");
        assert_eq!(verdict(0.99, PLAIN_VS_KERNEL_RATIO_TARGET), "below");
    }

    #[test]
    fn json_has_rounds_and_both_ratios() {
        let r = report(vec![
            row(Path::KernelVxlan, &[Some(5.0), Some(4.0), Some(4.5)]),
            row(Path::VxnetPlain, &[Some(4.0), None, Some(4.5)]),
            row(Path::VxnetEncrypted, &[Some(3.0), Some(3.5), Some(3.6)]),
        ]);
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["rounds"], 3);
        assert_eq!(j["seconds"], 5);
        let plain = &j["rows"][1];
        assert_eq!(plain["path"], "vxnet-plain");
        assert_eq!(plain["rounds_gbit"], serde_json::json!([4.0, null, 4.5]));
        assert_eq!(plain["median_round"], 1);
        assert_eq!(plain["round_errors"][0]["round"], 2);
        assert_eq!(plain["round_errors"][0]["error"], "down");
        assert!(plain["error"].is_null(), "{plain}");
        assert_eq!(plain["tcp"]["bits_per_second"], 4e9);
        assert!(plain["rtt_avg_ms"].is_f64(), "{plain}");
        assert_eq!(
            j["rows"][0]["rounds_gbit"],
            serde_json::json!([5.0, 4.0, 4.5])
        );
        // Medians: kernel 4.5, plain 4.0, encrypted 3.5.
        let f = |k: &str| j[k].as_f64();
        assert!(close(f("plain_vs_kernel_ratio"), 4.0 / 4.5), "{j}");
        assert!(close(f("encrypted_ratio"), 3.5 / 4.0), "{j}");
        // Per round: plain/kernel 0.8, -, 1.0; encrypted/plain 0.75, -, 0.8.
        assert_eq!(
            j["plain_vs_kernel_ratio_rounds"][1],
            serde_json::Value::Null
        );
        assert!(
            close(j["plain_vs_kernel_ratio_rounds"][0].as_f64(), 0.8),
            "{j}"
        );
        assert!(close(f("plain_vs_kernel_ratio_round_median"), 0.9), "{j}");
        assert!(close(f("encrypted_ratio_round_median"), 0.775), "{j}");
        assert_eq!(
            j["encrypted_ratio_rounds"].as_array().map(Vec::len),
            Some(3)
        );

        // Without the paths, the ratios are null and their round lists empty.
        let j = serde_json::to_value(report(vec![row(Path::Underlay, &[Some(9.0)])])).unwrap();
        for k in [
            "encrypted_ratio",
            "encrypted_ratio_round_median",
            "plain_vs_kernel_ratio",
            "plain_vs_kernel_ratio_round_median",
        ] {
            assert!(j[k].is_null(), "{k}: {j}");
        }
        assert_eq!(j["plain_vs_kernel_ratio_rounds"], serde_json::json!([]));
    }
}
