//! `vxnet-testbed`: build, use and remove a namespace testbed; run the demo
//! and the benchmark.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use vxnet_testbed::bench::{self, BenchConfig, Path};
use vxnet_testbed::inject::{self, InjectKind};
use vxnet_testbed::process;
use vxnet_testbed::scenario::DEMO_VNI;
use vxnet_testbed::state::{UpHost, UpState};
use vxnet_testbed::topology::{self, Testbed, TestbedConfig};
use vxnet_testbed::vxnet::{self, DataplaneOptions};

/// Hosts and containers as network namespaces, for vxnet tests, demos and benchmarks.
#[derive(Parser, Debug)]
#[command(name = "vxnet-testbed", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create hosts and underlay, start a dataplane and vxnet-control per host forming a swarm (host1 manager), and leave them running.
    Up {
        /// Number of hosts.
        #[arg(long, default_value_t = 2)]
        hosts: usize,
        /// Underlay MTU (9000 for jumbo frames).
        #[arg(long, default_value_t = 1500)]
        underlay_mtu: u32,
        /// Only build the topology; start no dataplane.
        #[arg(long)]
        no_dataplane: bool,
        /// Run no vxnet-control: dataplanes only, programmed by hand with
        /// `vxnet dp`. By default every host runs vxnet-control and they
        /// form a swarm (host1 manager, the others workers).
        #[arg(long)]
        no_swarm: bool,
        /// The default; kept so that older scripts still work.
        #[arg(long, hide = true, conflicts_with_all = ["no_dataplane", "no_swarm"])]
        swarm: bool,
        /// Run over the IPv6 underlay: each dataplane's VTEP is its host's
        /// IPv6 address, and the swarm advertises those (management, gossip
        /// and data path over IPv6).
        #[arg(long)]
        underlay_v6: bool,
        #[command(flatten)]
        dp: DpArgs,
    },
    /// Run a command in a host's namespace (VXNET_SOCKET set to its dataplane).
    Exec {
        /// "host1", "1" or the namespace name.
        host: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Remove namespaces and processes left by earlier runs.
    Down {
        /// Also remove testbeds whose owning process is still alive (e.g. running tests).
        #[arg(long)]
        all: bool,
    },
    /// Two hosts, a container each on VNI 4096 over vxnet: ping v4/v6, iperf3, stats.
    Demo {
        /// iperf3 duration.
        #[arg(long, default_value_t = 3)]
        seconds: u32,
        #[command(flatten)]
        dp: DpArgs,
    },
    /// Single-stream TCP and RTT for underlay, kernel VXLAN, vxnet plain, encrypted and swarm, side by side, in interleaved rounds.
    Bench {
        /// Rounds: each measures every path once, in order; rows report
        /// the median round and the min-max spread.
        #[arg(long, default_value_t = 3, value_parser = parse_rounds)]
        rounds: u32,
        /// iperf3 duration per path and round.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Pings per path and round (10 ms apart).
        #[arg(long, default_value_t = 50)]
        pings: u32,
        #[arg(long, default_value_t = 1500)]
        underlay_mtu: u32,
        /// Paths to measure (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        paths: Vec<Path>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[command(flatten)]
        dp: DpArgs,
    },
    /// Send malformed VXLAN datagrams or forged ESP (for robustness tests; run inside a netns).
    #[command(hide = true)]
    Inject {
        /// Destination, e.g. 192.0.2.12:4789.
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, value_enum)]
        kind: InjectKind,
        #[arg(long, default_value_t = 10)]
        count: u64,
        /// VNI written into the header.
        #[arg(long, default_value_t = 4096)]
        vni: u32,
        /// Captured UDP payloads, hex, one per line (for replay and flip).
        #[arg(long, value_name = "PATH")]
        from: Option<std::path::PathBuf>,
        /// Source address to send from, also one this namespace does not own
        /// (IP_TRANSPARENT): replays that look like they come from their host.
        #[arg(long)]
        src: Option<std::net::IpAddr>,
    },
}

/// Dataplane options passed through to `vxnet-dataplane`.
#[derive(clap::Args, Debug, Clone)]
struct DpArgs {
    /// --poll for the dataplanes (busy|adaptive|interrupt).
    #[arg(long)]
    poll: Option<String>,
    /// --workers for the dataplanes.
    #[arg(long)]
    workers: Option<usize>,
    /// Let the dataplanes export SA keys (`vxnet dp sa --show-keys`).
    #[arg(long)]
    allow_key_export: bool,
    /// --rekey-interval for the dataplanes (e.g. 30s).
    #[arg(long)]
    rekey_interval: Option<String>,
    /// Any other `vxnet-dataplane` option, passed as is; repeat for more
    /// (e.g. `--dataplane-arg=--spin-us=200`).
    #[arg(long = "dataplane-arg", value_name = "ARG", allow_hyphen_values = true)]
    dataplane_args: Vec<String>,
}

impl DpArgs {
    fn options(&self) -> DataplaneOptions {
        DataplaneOptions {
            poll: self.poll.clone(),
            workers: self.workers,
            allow_key_export: self.allow_key_export,
            rekey_interval: self.rekey_interval.clone(),
            extra: self.dataplane_args.clone(),
            ..Default::default()
        }
    }
}

/// `--rounds`: a count of at least 1.
fn parse_rounds(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("must be at least 1 (each round measures every path once)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a round count: {e}")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// The run prefix the signal handler must tear down, if any.
static ACTIVE: Mutex<Option<String>> = Mutex::new(None);

fn set_active(prefix: Option<String>) {
    *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = prefix;
}

/// On SIGINT/SIGTERM/SIGHUP: remove the active testbed, then exit. The
/// `Testbed` value lives on the main thread and cannot be dropped from here,
/// so this removes by prefix (processes in its namespaces, then namespaces).
fn install_signal_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        let prefix = ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(p) = prefix {
            eprintln!("vxnet-testbed: interrupted, tearing down {p}");
            topology::destroy_prefix(&p);
        }
        std::process::exit(130);
    })
    .context("installing the signal handler")
}

fn progress(msg: &str) {
    println!("[vxnet-testbed] {msg}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vxnet-testbed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Up {
            hosts,
            underlay_mtu,
            no_dataplane,
            no_swarm,
            swarm: _,
            underlay_v6,
            dp,
        } => up(
            hosts,
            underlay_mtu,
            no_dataplane,
            // Without a dataplane there is nothing for a control plane to drive.
            !no_swarm && !no_dataplane,
            &DataplaneOptions {
                underlay_v6,
                ..dp.options()
            },
        ),
        Cmd::Exec { host, cmd } => exec(&host, &cmd),
        Cmd::Down { all } => {
            let r = topology::down(all, None)?;
            for n in &r.namespaces {
                println!("removed {n}");
            }
            for n in &r.skipped_live {
                println!("kept {n} (its process is alive; --all removes it)");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo { seconds, dp } => demo(seconds, &dp.options()),
        Cmd::Bench {
            rounds,
            seconds,
            pings,
            underlay_mtu,
            paths,
            format,
            dp,
        } => {
            bench::preflight()?;
            install_signal_handler()?;
            let cfg = BenchConfig {
                rounds,
                seconds,
                ping_count: pings,
                underlay_mtu,
                paths: if paths.is_empty() {
                    Path::ALL.to_vec()
                } else {
                    paths
                },
                dataplane: dp.options(),
            };
            let quiet = format == Format::Json;
            let report = bench::run(&cfg, &|p| set_active(Some(p.to_string())), &|m| {
                if quiet {
                    eprintln!("[vxnet-testbed] {m}");
                } else {
                    progress(m);
                }
            })?;
            set_active(None);
            match format {
                Format::Table => print!("{}", bench::table(&report)),
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Inject {
            to,
            kind,
            count,
            vni,
            from,
            src,
        } => {
            let n = match (&from, kind.needs_capture()) {
                (Some(path), _) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let captured = inject::parse_hex_lines(&text)?;
                    if captured.is_empty() {
                        bail!("{} holds no datagram", path.display());
                    }
                    inject::send_captured(to, src, kind, &captured, count)?
                }
                (None, true) => bail!("--kind {} needs --from CAPTURE", kind.as_arg()),
                (None, false) => inject::send(to, src, kind, vni, count)?,
            };
            println!("sent {n} {kind:?} datagrams to {to}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn up(
    hosts: usize,
    underlay_mtu: u32,
    no_dataplane: bool,
    swarm: bool,
    opts: &DataplaneOptions,
) -> Result<ExitCode> {
    if let Some(st) = UpState::load()? {
        bail!(
            "a testbed ({}) is already up; run `vxnet-testbed down` first",
            st.prefix
        );
    }
    install_signal_handler()?;
    let prefix = topology::next_prefix();
    set_active(Some(prefix.clone()));
    let tb = Testbed::with_prefix(
        prefix,
        TestbedConfig {
            hosts,
            underlay_mtu,
        },
    )?;
    let mut up_hosts = Vec::new();
    for h in tb.hosts() {
        let (socket, pid) = if no_dataplane {
            (None, None)
        } else {
            let dp = tb.start_dataplane_detached(h, opts)?;
            (Some(dp.socket), Some(dp.pid))
        };
        let control = match (&socket, swarm) {
            (Some(s), true) => Some(tb.start_control_detached(h, s)?),
            _ => None,
        };
        up_hosts.push(UpHost {
            host: h.clone(),
            socket,
            dataplane_pid: pid,
            control_socket: control.as_ref().map(|c| c.socket.clone()),
            control_pid: control.map(|c| c.pid),
        });
    }
    if swarm {
        let controls: Vec<_> = up_hosts
            .iter()
            .filter_map(|h| {
                Some(vxnet_testbed::swarm::Control {
                    host: h.host.index,
                    socket: h.control_socket.clone()?,
                    pid: h.control_pid?,
                })
            })
            .collect();
        tb.form_swarm_with(&controls, opts.underlay_v6)?;
    }
    let st = UpState {
        prefix: tb.prefix().to_string(),
        underlay_ns: tb.underlay_ns().to_string(),
        hosts: up_hosts,
    };
    st.save()?;
    println!(
        "underlay: netns {} (bridge br0, MTU {underlay_mtu})",
        st.underlay_ns
    );
    for h in &st.hosts {
        print!(
            "{}: netns {}  eth0 {} {}",
            h.host.name, h.host.ns, h.host.underlay_v4, h.host.underlay_v6
        );
        if let (Some(s), Some(p)) = (&h.control_socket, h.control_pid) {
            print!("  control pid {p} socket {}", s.display());
        }
        if let (Some(s), Some(p)) = (&h.socket, h.dataplane_pid) {
            print!("  dataplane pid {p} socket {}", s.display());
        }
        println!();
    }
    println!("state: {}", UpState::path().display());
    println!("try: vxnet-testbed exec host1 -- vxnet dp show;  remove with: vxnet-testbed down");
    tb.detach();
    set_active(None);
    Ok(ExitCode::SUCCESS)
}

fn exec(host: &str, cmd: &[String]) -> Result<ExitCode> {
    let st = UpState::load()?.context("no testbed is up (run `vxnet-testbed up` first)")?;
    let h = st
        .host(host)
        .with_context(|| format!("no host {host:?} in testbed {}", st.prefix))?;
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", &h.host.ns]).args(cmd);
    if let Some(s) = &h.socket {
        c.env("VXNET_SOCKET", s);
    }
    if let Some(s) = &h.control_socket {
        c.env("VXNET_CONTROL_SOCKET", s);
    }
    // Let `vxnet` and `vxnet-dataplane` from our target dir be found by name.
    if let Ok(cli) = vxnet::find_binary(vxnet::CLI_BIN)
        && let Some(dir) = cli.parent()
    {
        let mut paths = vec![dir.to_path_buf()];
        if let Some(p) = std::env::var_os("PATH") {
            paths.extend(std::env::split_paths(&p));
        }
        c.env("PATH", std::env::join_paths(paths)?);
    }
    let status = c.status().context("running ip netns exec")?;
    Ok(ExitCode::from(
        status
            .code()
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(1),
    ))
}

fn demo(seconds: u32, opts: &DataplaneOptions) -> Result<ExitCode> {
    if !process::is_root() {
        bail!("demo needs root (network namespaces)");
    }
    install_signal_handler()?;
    let prefix = topology::next_prefix();
    set_active(Some(prefix.clone()));
    progress(&format!(
        "creating 2 hosts ({prefix}-h1, {prefix}-h2) and the underlay"
    ));
    let tb = Testbed::with_prefix(prefix, TestbedConfig::default())?;
    progress("starting dataplanes, attaching c1 (host1) and c2 (host2) on VNI 4096, adding peers");
    let pair = tb.vxnet_pair(DEMO_VNI, opts, ("c1", "c2"))?;
    let (ip1, ip2) = (
        pair.ep1.v4().unwrap_or_default(),
        pair.ep2.v4().unwrap_or_default(),
    );
    let (ip61, ip62) = (
        pair.ep1.v6().unwrap_or_default(),
        pair.ep2.v6().unwrap_or_default(),
    );
    for (from, to, what) in [
        (&pair.c1.ns, ip2, "c1 -> c2 IPv4"),
        (&pair.c2.ns, ip1, "c2 -> c1 IPv4"),
        (&pair.c1.ns, ip62, "c1 -> c2 IPv6"),
        (&pair.c2.ns, ip61, "c2 -> c1 IPv6"),
    ] {
        let r = tb.ping_ok(from, to, 5, None)?;
        progress(&format!(
            "ping {what}: {}/{} replies, avg {:.3} ms",
            r.received,
            r.transmitted,
            r.avg_ms().unwrap_or(0.0)
        ));
    }
    progress(&format!("iperf3 c1 -> c2, {seconds} s"));
    let t = tb.iperf(&pair.c2.ns, ip2, &pair.c1.ns, seconds, false)?;
    progress(&format!(
        "iperf3: {:.2} Gbit/s, {} retransmits, {} MB received",
        t.gbit_per_second(),
        t.retransmits,
        t.received_bytes / 1_000_000
    ));
    for dp in [&pair.dp1, &pair.dp2] {
        let s = dp.stats()?;
        let nonzero: Vec<String> = s
            .counters
            .iter()
            .filter(|c| c.value > 0)
            .map(|c| format!("{}={}", c.name, c.value))
            .chain(
                s.drops
                    .iter()
                    .filter(|d| d.count > 0)
                    .map(|d| format!("drop:{}/{}={}", d.stage, d.reason, d.count)),
            )
            .collect();
        progress(&format!("host{} stats: {}", dp.host, nonzero.join(" ")));
    }
    progress("tearing down");
    drop(pair);
    drop(tb);
    set_active(None);
    progress("done");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench(args: &[&str]) -> Result<Cmd, clap::Error> {
        let argv = ["vxnet-testbed", "bench"].iter().chain(args);
        Cli::try_parse_from(argv).map(|c| c.cmd)
    }

    #[test]
    fn bench_defaults_to_three_rounds_of_five_seconds() {
        let Ok(Cmd::Bench {
            rounds, seconds, ..
        }) = bench(&[])
        else {
            panic!("bench did not parse");
        };
        assert_eq!((rounds, seconds), (3, 5));
        let Ok(Cmd::Bench {
            rounds, seconds, ..
        }) = bench(&["--rounds", "1", "--seconds", "2"])
        else {
            panic!("bench did not parse");
        };
        assert_eq!((rounds, seconds), (1, 2));
    }

    #[test]
    fn bench_refuses_zero_rounds() {
        let e = bench(&["--rounds", "0"]).err().map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(e.contains("--rounds") && e.contains("at least 1"), "{e}");
        let e = bench(&["--rounds", "x"]).err().map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("not a round count"));
    }
}
