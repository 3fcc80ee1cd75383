//! vxnet-control: the per-host control plane process. Serves the `vxnet
//! swarm|node|network|container` commands on a Unix socket, keeps the state
//! in a redb store under --state-dir, programs the local dataplane through
//! its API socket and reconciles it (at start and every
//! --reconcile-interval, which also covers a dataplane restart).
//!
//! Run it in the host's own mount namespace (not under `ip netns exec`,
//! which gives a private one): the container namespaces it creates under
//! /run/netns must be visible to the dataplane and the CLI. It reaches the
//! dataplane through its socket, so it need not share its network
//! namespace.
//!
//! A manager rotates the gossip key every --gossip-key-rotation (12h),
//! workers poll it for their keys over mutual TLS
//! ([`vxnet_control::daemon::keys`]).
//!
//! Threads: the API server's (one per connection), one reconciler (which
//! also starts and stops gossip and the management server as the swarm
//! comes and goes), a small tokio runtime for the management plane (TCP
//! 2377, mutual TLS: served on a manager, called by a worker), and the
//! main thread waiting for SIGINT/SIGTERM. All requests and reconciliation
//! go through one lock in [`Daemon`].
use std::fs::DirBuilder;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use clap::Parser;
use std::net::UdpSocket;
use vxnet_control::daemon::api::CtlRequest;
use vxnet_control::daemon::api::{DEFAULT_SOCKET, DEFAULT_STATE_DIR};
use vxnet_control::daemon::dataplane::SocketDataplane;
use vxnet_control::daemon::gossip::{self, GossipCmd, GossipHandle};
use vxnet_control::daemon::host::SystemHost;
use vxnet_control::daemon::swarm::{DaemonHandler, TokioLink};
use vxnet_control::daemon::{Config, Daemon};
use vxnet_control::gossip::{GossipConfig, Membership};
use vxnet_control::mgmt::{MGMT_PORT, MgmtServer};
use vxnet_control::model::Role;
use vxnet_control::store::RedbStore;
use vxnet_dataplane::server;
use vxnet_dataplane::sys::signal;

/// Until `swarm init` makes the CA (whose digest then goes into tokens).
const NO_CA_DIGEST: &str = "noca";

/// vxnet control plane: swarm, overlay networks and containers for this host.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Unix socket the `vxnet` CLI talks to.
    #[arg(long, default_value = DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    /// Directory of the state store (created mode 0700).
    #[arg(long, default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    state_dir: PathBuf,
    /// The local dataplane's API socket.
    #[arg(long, default_value = vxnet_dataplane::api::DEFAULT_SOCKET, value_name = "PATH")]
    dataplane_socket: PathBuf,
    /// Address for management and gossip (default: the data path address).
    #[arg(long, value_name = "IP")]
    advertise_addr: Option<IpAddr>,
    /// Address for VXLAN traffic (default: the dataplane's local VTEP).
    #[arg(long, value_name = "IP")]
    data_path_addr: Option<IpAddr>,
    /// This node's name (default: the kernel's hostname).
    #[arg(long)]
    hostname: Option<String>,
    /// Prefix of the network namespaces made for containers (their name
    /// follows), for several hosts' daemons on one machine.
    #[arg(long, default_value = "", value_name = "PREFIX")]
    netns_prefix: String,
    /// Seconds between reconciliations of the dataplane with the store.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    reconcile_interval: u64,
    /// How often a manager rotates the gossip encryption key: a number of
    /// seconds, or a number with a unit s, m, h or d (`12h`).
    #[arg(long, default_value = "12h", value_parser = parse_duration, value_name = "DURATION")]
    gossip_key_rotation: Duration,
}

/// `90`, `90s`, `15m`, `12h`, `1d`: at least one second, at most a year.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30s, 15m or 12h"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use s, m, h or d")),
    };
    let secs = n.saturating_mul(scale);
    if !(1..=365 * 86_400).contains(&secs) {
        return Err(format!("{s:?} is out of range (1s to 365d)"));
    }
    Ok(Duration::from_secs(secs))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        // Colours only on a terminal: logs usually go to a file or journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
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
    // Shared: the gossip driver reads it without the daemon's lock.
    let store = Arc::new(store);
    let cfg = Config {
        hostname: args.hostname.unwrap_or_else(hostname),
        advertise_addr: args.advertise_addr,
        data_path_addr: args.data_path_addr,
        ca_digest: NO_CA_DIGEST.to_owned(),
        netns_prefix: args.netns_prefix,
        log_dir: logs,
    };
    let daemon = Arc::new(Daemon::new(
        store,
        SocketDataplane::new(&args.dataplane_socket),
        SystemHost::default(),
        cfg,
    ));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vxnet-mgmt")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the management runtime: {e}"))?;
    daemon.set_manager_link(Arc::new(TokioLink::new(rt.handle().clone())));
    daemon.set_gossip_key_rotation(args.gossip_key_rotation);

    let first = daemon.reconcile();
    tracing::info!(report = ?first, "initial reconciliation");

    // The reconciler waits on a channel so that shutdown wakes it at once,
    // and a swarm init/join starts gossip and the management server at once.
    let (stop_tx, stop_rx) = mpsc::channel::<Tick>();
    let wake = stop_tx.clone();
    let handler = Arc::clone(&daemon);
    let api = server::serve_json(
        &args.socket,
        Arc::new(move |req: CtlRequest| {
            let swarm_change = matches!(
                req,
                CtlRequest::SwarmInit { .. }
                    | CtlRequest::SwarmJoin { .. }
                    | CtlRequest::SwarmLeave { .. }
            );
            let r = handler.handle(req);
            if swarm_change {
                let _ = wake.send(Tick::Wake);
            }
            r
        }),
    )
    .map_err(|e| format!("cannot serve on {}: {e}", args.socket.display()))?;
    let interval = Duration::from_secs(args.reconcile_interval);
    let rec_daemon = Arc::clone(&daemon);
    let gossip_cfg = GossipStarter {
        dataplane_socket: args.dataplane_socket.clone(),
        generation: generation(),
    };
    let rt_handle = rt.handle().clone();
    let reconciler = std::thread::Builder::new()
        .name("vxnet-reconcile".into())
        .spawn(move || {
            let mut last_errors = Vec::new();
            let mut gossip = None;
            let mut gossip_error = String::new();
            let mut mgmt = None;
            let mut mgmt_error = String::new();
            let mut keys = KeySync::default();
            loop {
                // Gossip and the management server run while the swarm
                // exists (it may be created or left while the daemon runs).
                gossip_cfg.tend(&rec_daemon, &mut gossip, &mut gossip_error);
                tend_mgmt(&rec_daemon, &rt_handle, &mut mgmt, &mut mgmt_error);
                if let Some(g) = &gossip {
                    keys.tend(&rec_daemon, g);
                } else {
                    keys = KeySync::default();
                }
                match stop_rx.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(Tick::Wake) => continue,
                    Ok(Tick::Stop) | Err(RecvTimeoutError::Disconnected) => {
                        rec_daemon.set_announcer(None);
                        if let Some(m) = mgmt.take() {
                            m.abort();
                        }
                        // A restart is not a departure: no leave message.
                        drop(gossip);
                        return;
                    }
                }
                let r = rec_daemon.reconcile();
                if r.changed() {
                    tracing::info!(report = ?r, "reconciled the dataplane");
                }
                // Log a persistent problem once, not every interval.
                if r.errors != last_errors {
                    for e in &r.errors {
                        tracing::warn!(error = %e, "reconciliation");
                    }
                    last_errors = r.errors;
                }
            }
        })
        .map_err(|e| format!("cannot start the reconciler: {e}"))?;

    tracing::info!(
        socket = %args.socket.display(),
        state_dir = %args.state_dir.display(),
        dataplane = %args.dataplane_socket.display(),
        "control daemon running"
    );
    let sig = signal::wait_termination().map_err(|e| format!("waiting for signals failed: {e}"))?;
    tracing::info!(signal = sig, "shutting down");
    drop(api);
    let _ = stop_tx.send(Tick::Stop);
    drop(stop_tx);
    let _ = reconciler.join();
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Gossip key rotation on the reconciler's ticks: a manager takes the next
/// rotation step, a worker polls its manager when told to; both hand the
/// wanted keyring to their gossip driver.
#[derive(Default)]
struct KeySync {
    /// When a worker polls next (`None`: at once).
    next_poll: Option<std::time::Instant>,
    /// What the driver was last given, so it is told only of changes.
    sent: Vec<vxnet_control::model::StoredGossipKey>,
    last_error: String,
}

impl KeySync {
    fn tend(&mut self, d: &Arc<ControlDaemon>, g: &GossipHandle) {
        // A manager has no manager of its own to poll.
        let manager = d.mgmt_state().is_some_and(|st| st.manager.is_none());
        let keys = if manager {
            match d.tend_gossip_keys() {
                Some(keys) => keys,
                None => return,
            }
        } else {
            let now = std::time::Instant::now();
            if self.next_poll.is_some_and(|t| now < t) {
                return;
            }
            match d.sync_gossip_keys() {
                Ok((keys, after)) => {
                    self.next_poll = Some(now + after);
                    self.last_error.clear();
                    keys
                }
                Err(e) => {
                    // Retry soon; log a persistent problem once.
                    self.next_poll = Some(now + Duration::from_secs(5));
                    if self.last_error != e {
                        tracing::warn!(error = %e, "gossip keys not synced with the manager");
                        self.last_error = e;
                    }
                    return;
                }
            }
        };
        if keys != self.sent {
            g.send(GossipCmd::Keys(keys.clone()));
            self.sent = keys;
        }
    }
}

/// What wakes the reconciler before its interval.
enum Tick {
    /// The swarm changed: start or stop gossip and the management server.
    Wake,
    Stop,
}

/// Serves the management port while this node is a manager; stops it when
/// the swarm is left. A failure to bind is logged once and retried.
fn tend_mgmt(
    d: &Arc<ControlDaemon>,
    rt: &tokio::runtime::Handle,
    running: &mut Option<tokio::task::JoinHandle<()>>,
    last_error: &mut String,
) {
    let manager = d
        .mgmt_state()
        .filter(|s| s.identity.role == Role::Manager && s.manager.is_none());
    let addr = d
        .gossip_setup(0)
        .map(|(id, _)| SocketAddr::new(id.gossip_addr.ip(), MGMT_PORT));
    match (manager.zip(addr), running.is_some()) {
        (Some((st, addr)), false) => {
            let handler = Arc::new(DaemonHandler(Arc::clone(d)));
            match rt.block_on(MgmtServer::bind(addr, &st.identity, handler)) {
                Ok(server) => {
                    tracing::info!(addr = %addr, "management server running");
                    last_error.clear();
                    *running = Some(rt.spawn(server.serve()));
                }
                Err(e) => {
                    let e = e.to_string();
                    if *last_error != e {
                        tracing::warn!(error = %e, "management server not running");
                        *last_error = e;
                    }
                }
            }
        }
        (None, true) => {
            if let Some(h) = running.take() {
                h.abort();
            }
            tracing::info!("management server stopped: not a manager");
        }
        _ => {}
    }
}

/// The gossip generation: the start time in seconds, so a restarted
/// daemon's identity and records win over its previous life's.
fn generation() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| (d.as_secs() & u64::from(u32::MAX)) as u32)
}

struct GossipStarter {
    dataplane_socket: PathBuf,
    generation: u32,
}

type ControlDaemon = Daemon<Arc<RedbStore>, SocketDataplane, SystemHost>;

impl GossipStarter {
    /// Starts the gossip driver when the swarm exists and it is not
    /// running, stops it when the swarm is gone. A failure to start (say,
    /// the advertise address is not on this host) is logged once and
    /// retried on the next tick.
    fn tend(
        &self,
        d: &Arc<ControlDaemon>,
        running: &mut Option<GossipHandle>,
        last_error: &mut String,
    ) {
        let setup = d.gossip_setup(self.generation);
        match (setup, running.is_some()) {
            (Some((identity, keyring)), false) => {
                let addr = identity.gossip_addr;
                let started = UdpSocket::bind(addr)
                    .map_err(|e| format!("cannot bind gossip to {addr}: {e}"))
                    .and_then(|sock| {
                        let mut seed = [0u8; 32];
                        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
                        let m = Membership::new(identity, GossipConfig::default(), keyring, seed);
                        let (vni_of, hook) = d.gossip_hooks();
                        gossip::spawn_with_hook(
                            sock,
                            m,
                            SocketDataplane::new(&self.dataplane_socket),
                            vni_of,
                            hook,
                        )
                        .map_err(|e| format!("cannot start gossip: {e}"))
                    });
                match started {
                    Ok(h) => {
                        for cmd in d.local_endpoints() {
                            h.send(cmd);
                        }
                        if let Some(seed) = d.gossip_seed() {
                            h.send(GossipCmd::Join(seed));
                        }
                        let tx = h.sender();
                        d.set_announcer(Some(Box::new(tx)));
                        d.set_gossip_status(Some(h.status_cell()));
                        tracing::info!(addr = %addr, "gossip running");
                        last_error.clear();
                        *running = Some(h);
                    }
                    Err(e) => {
                        if *last_error != e {
                            tracing::warn!(error = %e, "gossip not running");
                            *last_error = e;
                        }
                    }
                }
            }
            (None, true) => {
                d.set_announcer(None);
                d.set_gossip_status(None);
                if let Some(h) = running.take() {
                    h.stop(true);
                }
                tracing::info!("gossip stopped: no swarm");
            }
            _ => {}
        }
    }
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
        assert_eq!(a.reconcile_interval, 2);
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
        for bad in ["0", "", "h", "5x", "-1", "400d"] {
            assert!(r(bad).is_err(), "{bad}");
        }
    }
}
