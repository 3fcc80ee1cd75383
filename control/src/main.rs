//! vxnet-control: the per-host control plane process. Serves the `vxnet
//! swarm|node|network|container` commands on a Unix socket, keeps the state
//! in a redb store under --state-dir, and reconciles the host and its
//! dataplane (through the dataplane's API socket) with it: on every change
//! and every --reconcile-interval, which also covers a dataplane restart.
//!
//! Run it in the host's own mount namespace (not under `ip netns exec`,
//! which gives a private one): the container namespaces it creates under
//! /run/netns must be visible to the dataplane and the CLI. It reaches the
//! dataplane through its socket, so it need not share its network
//! namespace.
//!
//! Threads: the API server's (one per connection), the reconciler (the only
//! writer to the dataplane), the roles loop (which starts and stops gossip,
//! the management server and a worker's agent as the swarm comes and goes),
//! a small tokio runtime for the management plane (TCP 2377, mutual TLS:
//! served on a manager, called by a worker), and the main thread waiting
//! for SIGINT/SIGTERM.

use std::fs::DirBuilder;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use vxnet_api::ctl::{CtlRequest, DEFAULT_SOCKET, DEFAULT_STATE_DIR};
use vxnet_api::server;
use vxnet_control::daemon::dataplane::SocketDataplane;
use vxnet_control::daemon::host::SystemHost;
use vxnet_control::daemon::reconcile::Reconciler;
use vxnet_control::daemon::roles::Roles;
use vxnet_control::daemon::worker::TokioLink;
use vxnet_control::daemon::{Config, Daemon};
use vxnet_control::dns::{DnsConfig, DnsServer, upstreams_from_resolv_conf};
use vxnet_control::store::RedbStore;
use vxnet_dataplane::sys::signal;

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The local API socket (`vxnet` talks to it).
    #[arg(long, default_value = DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    /// Where the state (redb store) and container logs live.
    #[arg(long, default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    state_dir: PathBuf,
    /// The local dataplane's API socket.
    #[arg(long, default_value = vxnet_api::dp::DEFAULT_SOCKET, value_name = "PATH")]
    dataplane_socket: PathBuf,
    /// Address for management (2377) and gossip (7946), unless `swarm
    /// init|join` gives one.
    #[arg(long, value_name = "IP")]
    advertise_addr: Option<IpAddr>,
    /// Address for VXLAN traffic, unless `swarm init|join` gives one.
    #[arg(long, value_name = "IP")]
    data_path_addr: Option<IpAddr>,
    /// This node's name in `node ls` (default: the kernel's hostname).
    #[arg(long)]
    hostname: Option<String>,
    /// Prepended to container names to name their network namespaces.
    #[arg(long, default_value = "", value_name = "PREFIX")]
    netns_prefix: String,
    /// Seconds between reconciliations when nothing changed.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=3600))]
    reconcile_interval: u64,
    /// The subnet of the dataplane's host link (`vxnet0`), through which
    /// published ports come in and containers reach the outside; pick one
    /// the host's networks do not use. At least a /22.
    #[arg(long, default_value = vxnet_control::daemon::DEFAULT_HOST_LINK_SUBNET, value_name = "CIDR")]
    host_link_subnet: vxnet_api::Ipv4Net,
    /// No host link: no published ports and no egress on this host, and
    /// nothing changed in its firewall.
    #[arg(long)]
    no_host_link: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (off by default).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// How often a manager rotates the gossip key (`12h`, `30m`, `90s`).
    #[arg(long, default_value = "12h", value_parser = parse_duration, value_name = "DURATION")]
    gossip_key_rotation: Duration,
}

/// A duration such as `12h`, `15m` or `30s` (humantime's syntax; a bare
/// number is seconds), from 1 s to 365 days.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<u64>() {
        Ok(n) => Duration::from_secs(n),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is not a duration such as 30s, 15m or 12h ({e})"))?,
    };
    if d < Duration::from_secs(1) || d > Duration::from_secs(365 * 86_400) {
        return Err(format!("{s:?} is out of range (1s to 365d)"));
    }
    Ok(d)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        // Colours only on a terminal: logs usually go to a file or journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            // The dataplane's variable, so one setting covers both daemons.
            tracing_subscriber::EnvFilter::try_from_env("VXNET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vxnet-control: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn run(args: Args) -> Result<(), String> {
    signal::block_termination().map_err(|e| format!("cannot block signals: {e}"))?;
    let logs = args.state_dir.join("logs");
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&logs)
        .map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
    let db = args.state_dir.join("state.redb");
    let store = RedbStore::open(&db).map_err(|e| format!("cannot open {}: {e}", db.display()))?;
    let mut cfg = Config::new(args.hostname.unwrap_or_else(hostname), logs);
    cfg.advertise_addr = args.advertise_addr;
    cfg.data_path_addr = args.data_path_addr;
    cfg.netns_prefix = args.netns_prefix;
    cfg.key_rotation = args.gossip_key_rotation.as_secs().max(1);
    cfg.host_link_subnet = (!args.no_host_link).then_some(args.host_link_subnet.trunc());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vxnet-mgmt")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the management runtime: {e}"))?;
    let link = Arc::new(TokioLink::new(rt.handle().clone()));
    let daemon = Arc::new(Daemon::new(
        store,
        SocketDataplane::new(&args.dataplane_socket),
        cfg,
        link,
    ));
    let stop = Arc::new(AtomicBool::new(false));

    // The embedded DNS server answers in every container's namespace and
    // forwards the rest to this host's resolvers.
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let dns = DnsServer::start(
        rt.handle().clone(),
        DnsConfig::new(upstreams_from_resolv_conf(&host_resolv)),
    );
    let mut reconciler = Reconciler::new(
        Arc::clone(&daemon),
        SocketDataplane::new(&args.dataplane_socket),
        SystemHost::default().with_exit_notify({
            let d = Arc::clone(&daemon);
            move || d.poke()
        }),
    )
    .with_dns(dns);
    let interval = Duration::from_secs(args.reconcile_interval);
    let stop_r = Arc::clone(&stop);
    let reconcile = std::thread::Builder::new()
        .name("vxnet-reconcile".into())
        .spawn(move || reconciler.run(interval, &stop_r))
        .map_err(|e| format!("cannot start the reconciler: {e}"))?;

    let mut roles = Roles::new(Arc::clone(&daemon), rt.handle().clone());
    let stop_o = Arc::clone(&stop);
    let roles = std::thread::Builder::new()
        .name("vxnet-roles".into())
        .spawn(move || roles.run(&stop_o))
        .map_err(|e| format!("cannot start the roles loop: {e}"))?;

    let handler = Arc::clone(&daemon);
    let api = server::serve(
        &args.socket,
        Arc::new(move |req: CtlRequest| handler.handle(req)),
    )
    .map_err(|e| format!("cannot serve on {}: {e}", args.socket.display()))?;

    let _metrics = match args.metrics {
        Some(addr) => {
            let d = Arc::clone(&daemon);
            let registry =
                vxnet_control::daemon::metrics::registry(Arc::new(move || d.metrics_view()))
                    .map_err(|e| format!("cannot set up metrics: {e}"))?;
            Some(
                vxnet_dataplane::metrics::serve_registry(addr, registry)
                    .map_err(|e| e.to_string())?,
            )
        }
        None => None,
    };
    tracing::info!(
        socket = %args.socket.display(),
        state_dir = %args.state_dir.display(),
        dataplane = %args.dataplane_socket.display(),
        "control daemon running"
    );
    let sig = signal::wait_termination().map_err(|e| format!("waiting for signals failed: {e}"))?;
    tracing::info!(signal = sig, "shutting down");
    drop(api);
    stop.store(true, Ordering::SeqCst);
    // Wake both loops at once.
    daemon.poke();
    let _ = reconcile.join();
    let _ = roles.join();
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_parse() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        let a = Args::try_parse_from(["vxnet-control", "--socket", "/tmp/c.sock"]).unwrap();
        assert_eq!(a.socket, PathBuf::from("/tmp/c.sock"));
        assert_eq!(a.reconcile_interval, 1);
        assert!(Args::try_parse_from(["vxnet-control", "--reconcile-interval", "0"]).is_err());
        assert_eq!(a.gossip_key_rotation, Duration::from_secs(12 * 3600));
        let r = |v: &str| {
            Args::try_parse_from(["vxnet-control", "--gossip-key-rotation", v])
                .map(|a| a.gossip_key_rotation.as_secs())
        };
        assert_eq!(r("5").unwrap(), 5);
        assert_eq!(r("5s").unwrap(), 5);
        assert_eq!(r("15m").unwrap(), 900);
        assert_eq!(r("1d").unwrap(), 86_400);
        assert_eq!(r("1h 30m").unwrap(), 5400);
        for bad in ["0", "", "h", "5x", "-1", "400d"] {
            assert!(r(bad).is_err(), "{bad}");
        }
    }
}
