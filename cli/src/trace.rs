//! `vxnet trace` and `vxnet dp trace`: the packet's arguments, and the
//! stages rendered one per line, the failing one with its reason and fix.

use crate::output::Table;
use clap::Args;
use std::fmt::Write as _;
use vxnet_api::trace::{PacketSpec, StepVerdict, TraceProto, TraceReport};

/// What the traced packet is (shared by `vxnet trace` and `vxnet dp trace`).
#[derive(Debug, Args, Clone)]
pub struct PacketArgs {
    /// Transport: icmp (an echo request), tcp (a SYN) or udp.
    #[arg(long, default_value = "icmp", value_name = "PROTO")]
    pub proto: TraceProto,
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
    pub fn spec(&self, dst: std::net::IpAddr) -> PacketSpec {
        PacketSpec {
            dst,
            proto: self.proto,
            sport: self.sport,
            dport: self.dport,
            size: self.size,
            df: self.df,
            dst_mac: None,
        }
    }

    /// Ports make sense for TCP and UDP only.
    pub fn validate(&self) -> Result<(), String> {
        if self.proto == TraceProto::Icmp && (self.sport.is_some() || self.dport.is_some()) {
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
  vxnet trace --from alpine1 --to alpine2 --format json")]
pub struct TraceArgs {
    #[command(flatten)]
    pub socket: crate::swarm::ControlSocket,
    /// The source: a container on this host (name, ID or address).
    #[arg(long, value_name = "CONTAINER|IP")]
    pub from: String,
    /// The destination: an address, or a name the source's DNS answers
    /// (a container, a service, tasks.SERVICE, an alias).
    #[arg(long, value_name = "NAME|IP")]
    pub to: String,
    /// The source's network, when it has several (default: the one the
    /// destination is on).
    #[arg(long, value_name = "NETWORK")]
    pub network: Option<String>,
    #[command(flatten)]
    pub packet: PacketArgs,
    #[command(flatten)]
    pub format: crate::swarm::FormatArg,
}

/// Runs `vxnet trace`: exit 0 when the packet is delivered or answered,
/// 1 when it is dropped (so scripts can test a path).
pub fn run(args: &TraceArgs, out: &mut dyn std::io::Write) -> Result<u8, crate::dp::CliError> {
    args.packet.validate().map_err(crate::dp::CliError::Usage)?;
    let p = &args.packet;
    let report = args.socket.call(vxnet_api::trace::SwarmTrace {
        from: args.from.clone(),
        to: args.to.clone(),
        network: args.network.clone(),
        proto: p.proto,
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
