//! `vxnet-dataplane`: the per-host VXLAN engine.
use clap::Parser;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use vxnet_api::dp::DEFAULT_SOCKET;
use vxnet_api::server;
use vxnet_dataplane::control::{Config, Dataplane};
use vxnet_dataplane::keyfile;
use vxnet_dataplane::metrics::{self, MetricsView};
use vxnet_dataplane::sys::signal;
use vxnet_dataplane::worker::PollMode;
use vxnet_proto::lb::{conntrack, maglev};

/// Userspace VXLAN dataplane: reads containers' frames from TAP devices,
/// encapsulates them in VXLAN over UDP and delivers them to the right host.
///
/// Program it with `vxnet dp ...` over the API socket.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// This host's underlay address (the VTEP); IPv4 or IPv6.
    #[arg(long, value_name = "IP")]
    local_vtep: IpAddr,
    /// UDP port of VXLAN traffic.
    #[arg(long, default_value_t = 4789, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// Unix socket of the local API.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET, env = "VXNET_SOCKET")]
    socket: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9477).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// How workers wait for packets: busy (spin, lowest latency), adaptive
    /// (spin briefly after traffic, then sleep) or interrupt (always sleep).
    #[arg(long, value_name = "MODE", default_value = "adaptive")]
    poll: PollMode,
    /// Adaptive mode: microseconds to keep spinning after the last packet
    /// (yielding to runnable threads) before sleeping. Long enough to
    /// bridge the gaps between a TCP flow's bursts, so the worker is not
    /// woken (an IPI, a VM exit on a VM) for each of them.
    #[arg(long, value_name = "US", default_value_t = 250)]
    spin_us: u64,
    /// Worker threads (each with its own UDP socket on the port).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// Outer UDP source ports per worker, chosen by inner-flow hash (ECMP entropy).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    src_ports: u16,
    /// MTU of endpoints attached without one, in place of the one the
    /// underlay carries: the MTU of the interface holding --local-vtep minus
    /// 50 bytes (IPv4 VTEP) or 70 (IPv6), read again every second
    /// (1450 and 1430 on a 1500-byte underlay). Encrypted networks get 42
    /// bytes less either way.
    #[arg(long)]
    mtu: Option<u32>,
    /// Broadcast, multicast and unknown-unicast frames per second each
    /// network may flood to other hosts (per host; a network may say
    /// otherwise). The burst is one second's worth.
    #[arg(long, value_name = "FRAMES", default_value_t = vxnet_proto::replication::DEFAULT_RATE,
          value_parser = clap::value_parser!(u32).range(1..))]
    flood_rate: u32,
    /// This host's X25519 key; created (mode 0600) if missing.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/lib/vxnet/dataplane.key"
    )]
    key_file: PathBuf,
    /// How often each host pair rotates its encryption keys (e.g. 12h, 30m, 10s).
    #[arg(long, value_name = "DURATION", default_value = "12h", value_parser = parse_duration)]
    rekey_interval: Duration,
    /// Let `vxnet dp sa --show-keys` print keys and salts (for decoding
    /// captures with a dissector; never in production).
    #[arg(long)]
    allow_key_export: bool,
    /// Flows to service VIPs each worker tracks (conntrack). Allocated
    /// when the first service is programmed, about 200 bytes per flow.
    #[arg(long, value_name = "FLOWS", default_value_t = conntrack::DEFAULT_CAPACITY,
          value_parser = clap::value_parser!(u32).range(i64::from(conntrack::MIN_CAPACITY)..=i64::from(conntrack::MAX_CAPACITY)))]
    conntrack_size: u32,
    /// Entries of each service's Maglev table: a prime from 251 to
    /// 1048573. Flows spread evenly when it is about 100 times the largest
    /// backend set or more (16381, or 65537 for hundreds of backends).
    #[arg(long, value_name = "PRIME", default_value_t = maglev::DEFAULT_TABLE_SIZE, value_parser = parse_maglev_size)]
    maglev_size: u32,
}

fn parse_maglev_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number; give a prime such as 16381 or 65537"))?;
    maglev::Maglev::check_size(n).map_err(|e| e.to_string())?;
    Ok(n)
}

/// A seed for the conntrack index hash that differs per process (std's
/// hasher keys come from the OS's randomness).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// Parses `12h`, `30m`, `10s`, `250ms` or a plain number of seconds; at
/// least one second.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 12h, 30m or 10s"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("unit '{unit}' in '{s}' is not one of ms, s, m, h")),
    };
    if d < Duration::from_secs(1) {
        return Err(format!(
            "'{s}' is too short; the rekey interval is at least 1s"
        ));
    }
    Ok(d)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        // Colours only on a terminal: logs usually go to a file or journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VXNET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vxnet-dataplane: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    signal::block_termination().map_err(|e| format!("cannot block signals: {e}"))?;
    let (keypair, created) = keyfile::load_or_create(&args.key_file)
        .map_err(|e| format!("cannot use key file {}: {e}", args.key_file.display()))?;
    if created {
        tracing::info!(path = %args.key_file.display(), "created a new host key");
    }
    tracing::info!(public_key = %keypair.public(), "host key");
    let cfg = Config {
        local_vtep: args.local_vtep,
        port: args.port,
        workers: usize::from(args.workers),
        src_ports: usize::from(args.src_ports),
        poll: args.poll,
        spin: Duration::from_micros(args.spin_us),
        mtu: args.mtu,
        flood_rate: args.flood_rate,
        keypair: Arc::new(keypair),
        rekey_interval: args.rekey_interval,
        allow_key_export: args.allow_key_export,
        conntrack: conntrack::ConntrackConfig {
            capacity: args.conntrack_size,
            seed: random_seed(),
            ..conntrack::ConntrackConfig::default()
        },
        maglev_size: args.maglev_size,
    };
    let dp = Arc::new(Dataplane::start(cfg).map_err(|e| {
        format!(
            "cannot listen on {}: {e} (is {} an address of this host, and is another dataplane using the port?)",
            SocketAddr::new(args.local_vtep, args.port),
            args.local_vtep
        )
    })?);
    dp.watch_underlay(vxnet_dataplane::control::UNDERLAY_WATCH_INTERVAL)
        .map_err(|e| format!("cannot start the underlay watcher: {e}"))?;
    let handler_dp = Arc::clone(&dp);
    let api = server::serve_streaming(
        &args.socket,
        Arc::new(move |req| handler_dp.handle_reply(req)),
    )
    .map_err(|e| format!("cannot serve the API on {}: {e}", args.socket.display()))?;
    let _metrics = match args.metrics {
        Some(addr) => {
            let view_dp = Arc::clone(&dp);
            let view = Arc::new(move || {
                let (endpoints, vnis) = view_dp.sizes();
                MetricsView {
                    snapshot: view_dp.snapshot(),
                    endpoints,
                    vnis,
                    workers: view_dp.worker_count(),
                    flooding: view_dp.flood_counts(),
                }
            });
            Some(
                metrics::serve_metrics(addr, view)
                    .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?,
            )
        }
        None => None,
    };
    tracing::info!(
        local_vtep = %args.local_vtep,
        port = args.port,
        socket = %args.socket.display(),
        workers = args.workers,
        poll = %args.poll,
        "dataplane running"
    );
    let sig = signal::wait_termination().map_err(|e| format!("waiting for signals failed: {e}"))?;
    tracing::info!(signal = sig, "shutting down");
    drop(api);
    dp.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1_500)));
        for bad in ["", "h", "10x", "500ms", "-1s", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn maglev_sizes() {
        assert_eq!(parse_maglev_size("65537"), Ok(65_537));
        for bad in ["16380", "x", "2", "2000003"] {
            assert!(parse_maglev_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn help_parses() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
