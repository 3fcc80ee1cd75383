//! `vxnet trace` and `vxnet dp trace`: the packet's arguments, and the
//! stages rendered one per line, the failing one with its reason and fix.

use crate::output::Table;
use clap::Args;
use std::fmt::Write as _;
use std::net::IpAddr;
use vxnet_api::trace::{PacketSpec, StepVerdict, TraceProto, TraceReport};

/// What the traced packet is (shared by `vxnet trace` and `vxnet dp trace`).
#[derive(Debug, Args, Clone)]
pub struct PacketArgs {
    /// Transport: icmp (an echo request, the default), tcp (a SYN) or udp.
    #[arg(long = "proto", value_name = "PROTO")]
    pub proto_arg: Option<TraceProto>,
    /// Source port (tcp, udp).
    #[arg(long, value_name = "N")]
    pub sport: Option<u16>,
    /// Destination port (tcp, udp; 80 by default).
    #[arg(long, value_name = "N")]
    pub dport: Option<u16>,
    /// IP packet size in bytes, headers included (84, ping's, by default).
    #[arg(long, value_name = "BYTES")]
    pub size: Option<u32>,
    /// Set IPv4 Don't Fragment.
    #[arg(long)]
    pub df: bool,
}

impl PacketArgs {
    /// The protocol, icmp unless given.
    pub fn proto(&self) -> TraceProto {
        self.proto_arg.unwrap_or_default()
    }

    /// The protocol if given (a live trace's filter).
    pub fn proto_given(&self) -> Option<TraceProto> {
        self.proto_arg
    }

    pub fn spec(&self, dst: std::net::IpAddr) -> PacketSpec {
        PacketSpec {
            dst,
            proto: self.proto(),
            sport: self.sport,
            dport: self.dport,
            size: self.size,
            df: self.df,
            dst_mac: None,
        }
    }

    /// Ports make sense for TCP and UDP only.
    pub fn validate(&self) -> Result<(), String> {
        if self.proto() == TraceProto::Icmp && (self.sport.is_some() || self.dport.is_some()) {
            return Err("--sport and --dport need --proto tcp or udp".into());
        }
        Ok(())
    }
}

/// The stages as a table, then how it ended.
pub fn render(r: &TraceReport) -> String {
    let mut t = Table::new(&["HOST", "STAGE", "VERDICT", "DETAIL"]);
    for s in &r.steps {
        t.row(vec![
            s.host.clone(),
            s.stage.name().to_string(),
            s.verdict.to_string(),
            s.detail.clone(),
        ]);
    }
    let mut out = t.render();
    match r.first_failure() {
        Some(f) => {
            let _ = writeln!(
                out,
                "\ndropped on {} at {}: {}",
                f.host,
                f.stage.name(),
                f.reason.as_deref().unwrap_or("?")
            );
            if let Some(fix) = &f.fix {
                let _ = writeln!(out, "fix: {fix}");
            }
        }
        None => {
            let last = r
                .steps
                .iter()
                .rev()
                .find(|s| s.verdict != StepVerdict::Pass);
            let host = last.or(r.steps.last()).map_or("", |s| s.host.as_str());
            let _ = writeln!(out, "\n{} on {host}", r.verdict);
        }
    }
    out
}

/// `vxnet trace`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  vxnet trace --from alpine1 --to alpine2
  vxnet trace --from alpine1 --to web --proto tcp --dport 80
  vxnet trace --from 10.0.1.2 --to 10.0.1.3 --size 1450 --df
  vxnet trace --from alpine1 --to alpine2 --format json
  vxnet trace --live --network test-net --drops
  vxnet trace --live --container alpine1 --proto tcp --port 80 --sample 1 -c 20")]
pub struct TraceArgs {
    /// The source: a container on this host (name, ID or address).
    #[arg(long, value_name = "CONTAINER|IP", required_unless_present = "live")]
    pub from: Option<String>,
    /// The destination: an address, or a name the source's DNS answers
    /// (a container, a service, tasks.SERVICE, an alias).
    #[arg(long, value_name = "NAME|IP", required_unless_present = "live")]
    pub to: Option<String>,
    /// Watch real packets' verdicts on this host instead (every drop that
    /// matches, and one packet in --sample of the others), until -c or
    /// --duration.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub live: bool,
    #[command(flatten)]
    pub packet: PacketArgs,
    #[command(flatten)]
    pub scope: crate::capture::Scope,
    /// --live: only packets from or to this address.
    #[arg(long, value_name = "IP", requires = "live")]
    pub addr: Option<IpAddr>,
    /// --live: only packets from or to this transport port.
    #[arg(long, value_name = "N", requires = "live")]
    pub port: Option<u16>,
    /// --live: only drops.
    #[arg(long, requires = "live")]
    pub drops: bool,
    /// --live: report one packet in N that is not dropped (64; 0: none).
    #[arg(long, value_name = "N", requires = "live")]
    pub sample: Option<u32>,
    #[command(flatten)]
    pub format: crate::swarm::FormatArg,
}

/// Runs `vxnet trace`: exit 0 when the packet is delivered or answered,
/// 1 when it is dropped (so scripts can test a path).
pub fn run(args: &TraceArgs, out: &mut dyn std::io::Write) -> Result<u8, crate::dp::CliError> {
    if args.live {
        return live(args, out);
    }
    args.packet.validate().map_err(crate::dp::CliError::Usage)?;
    let p = &args.packet;
    let report = args.scope.control.call(vxnet_api::trace::SwarmTrace {
        from: args.from.clone().unwrap_or_default(),
        to: args.to.clone().unwrap_or_default(),
        network: args.scope.network.clone(),
        proto: p.proto(),
        sport: p.sport,
        dport: p.dport,
        size: p.size,
        df: p.df,
    })?;
    if args.format.format == crate::output::Format::Json {
        crate::swarm::json(out, &report)?;
    } else {
        crate::swarm::write(out, &render(&report))?;
    }
    Ok(match report.verdict {
        vxnet_api::trace::TraceVerdict::Dropped => 1,
        _ => 0,
    })
}

/// `vxnet trace --live`: one line per event (JSON lines with
/// `--format json`), a summary on stderr.
fn live(args: &TraceArgs, out: &mut dyn std::io::Write) -> Result<u8, crate::dp::CliError> {
    use vxnet_api::observe::{LiveMsg, LiveTrace};
    let s = &args.scope;
    let vni = s.vni()?;
    let addrs = s.addresses(vni)?;
    let addr = args.addr.or_else(|| addrs.first().copied());
    let req = LiveTrace {
        vni,
        addr,
        port: args.port,
        proto: args.packet.proto_given(),
        drops: args.drops,
        sample: args.sample,
        count: s.count,
        duration_ms: s.duration_ms(),
    };
    let json = args.format.format == crate::output::Format::Json;
    for msg in s.dataplane()?.stream(req)? {
        match msg? {
            LiveMsg::Start { local_vtep } => eprintln!("watching {local_vtep}"),
            LiveMsg::Event(e) => {
                let line = if json {
                    serde_json::to_string(&e).unwrap_or_default()
                } else {
                    live_line(&e)
                };
                crate::swarm::write(out, &format!("{line}\n"))?;
                let _ = out.flush();
            }
            LiveMsg::End(end) => eprintln!(
                "{} events, {} dropped (reader too slow); stopped by {}",
                end.sent, end.dropped, end.why
            ),
        }
    }
    Ok(0)
}

/// `time host stage verdict|reason flow vni outer`.
fn live_line(e: &vxnet_api::observe::LiveEvent) -> String {
    let secs = e.ts_ns / 1_000_000_000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let ms = (e.ts_ns / 1_000_000) % 1000;
    let what = e.reason.clone().unwrap_or_else(|| e.verdict.to_string());
    let flow = e.flow.as_ref().map_or_else(
        || "-".to_owned(),
        |f| {
            let port = |ip: IpAddr, p: Option<u16>| match (ip, p) {
                (IpAddr::V6(_), Some(p)) => format!("[{ip}]:{p}"),
                (_, Some(p)) => format!("{ip}:{p}"),
                (_, None) => ip.to_string(),
            };
            format!(
                "{} {} > {}",
                f.proto,
                port(f.src, f.sport),
                port(f.dst, f.dport)
            )
        },
    );
    let vni = e.vni.map_or_else(|| "-".to_owned(), |v| format!("vni {v}"));
    let outer = match (e.outer_src, e.outer_dst) {
        (Some(s), Some(d)) => format!("{s} > {d}"),
        _ => "-".to_owned(),
    };
    format!(
        "{h:02}:{m:02}:{s:02}.{ms:03}  {}  {}  {what}  {flow}  {vni}  {outer}",
        e.host,
        e.stage.name()
    )
}
