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
        if self.sport == Some(0) || self.dport == Some(0) {
            return Err("port 0 is not a port a packet can carry; give one from 1 to 65535".into());
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
            // A trace cut short (another host's half did not come back)
            // says what to check.
            if let Some(fix) = r.steps.last().and_then(|s| s.fix.as_ref()) {
                let _ = writeln!(out, "fix: {fix}");
            }
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
    #[arg(long, value_name = "N", requires = "live", allow_negative_numbers = true,
          value_parser = clap::builder::RangedI64ValueParser::<u32>::new().range(0..=i64::from(u32::MAX)))]
    pub sample: Option<u32>,
    #[command(flatten)]
    pub format: crate::swarm::FormatArg,
}

impl TraceArgs {
    /// Flags that belong to the other mode are refused, not ignored: a
    /// trace of one packet has no filters or bounds, a live trace has no
    /// packet to describe. (clap's `requires = "live"` cannot tell: the
    /// flag `--live` always has a value.)
    fn validate(&self) -> Result<(), String> {
        let s = &self.scope;
        let p = &self.packet;
        if self.live {
            let packet_only = [
                ("--sport", p.sport.is_some()),
                ("--dport", p.dport.is_some()),
                ("--size", p.size.is_some()),
                ("--df", p.df),
            ];
            if let Some((flag, _)) = packet_only.iter().find(|(_, given)| *given) {
                return Err(format!(
                    "{flag} describes the packet of a one-packet trace; --live watches real packets (filter them with --port, --proto, --addr, --container)"
                ));
            }
            if self.port == Some(0) {
                return Err("--port 0 matches no packet; give a port from 1 to 65535".into());
            }
            if self.port.is_some() && p.proto_given() == Some(TraceProto::Icmp) {
                return Err("--port needs --proto tcp or udp (or no --proto)".into());
            }
            if self.drops && self.sample.is_some() {
                return Err("--drops shows only drops; --sample applies to the packets that are not dropped".into());
            }
            return Ok(());
        }
        let live_only = [
            ("--addr", self.addr.is_some()),
            ("--port", self.port.is_some()),
            ("--drops", self.drops),
            ("--sample", self.sample.is_some()),
            ("--container", s.container.is_some()),
            ("--vni", s.vni.is_some()),
            ("-c/--count", s.count.is_some()),
            ("--duration", s.duration.is_some()),
        ];
        if let Some((flag, _)) = live_only.iter().find(|(_, given)| *given) {
            return Err(format!(
                "{flag} applies to --live only; a one-packet trace takes --from, --to, --network and the packet's --proto, --sport, --dport, --size, --df"
            ));
        }
        p.validate()
    }
}

/// Runs `vxnet trace`: exit 0 when the packet is delivered or answered,
/// 1 when it is dropped (so scripts can test a path), 6 (unavailable)
/// when it was sent to another host whose half of the trace did not come
/// back (the report shows what is known).
pub fn run(args: &TraceArgs, out: &mut dyn std::io::Write) -> Result<u8, crate::dp::CliError> {
    args.validate().map_err(crate::dp::CliError::Usage)?;
    if args.live {
        return live(args, out);
    }
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
        // A swarm trace follows the packet to the host that receives it:
        // ending `sent` means that host's half is missing.
        vxnet_api::trace::TraceVerdict::Sent => vxnet_api::ErrorCode::Unavailable.exit_status(),
        _ => 0,
    })
}

/// `vxnet trace --live`: one line per event (JSON lines with
/// `--format json`), a summary on stderr.
fn live(args: &TraceArgs, out: &mut dyn std::io::Write) -> Result<u8, crate::dp::CliError> {
    use vxnet_api::observe::{LiveMsg, LiveTrace};
    let s = &args.scope;
    let vni = s.vni()?;
    let endpoints = s.addresses(vni)?;
    let req = LiveTrace {
        vni,
        endpoints,
        addr: args.addr,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        trace: TraceArgs,
    }

    fn check(args: &[&str]) -> Result<(), String> {
        let cmd = Cmd::try_parse_from(std::iter::once("trace").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cmd.trace.validate()
    }

    /// A flag of the other mode is refused with what the mode takes, not
    /// silently ignored (`--vni` on a one-packet trace traced another
    /// network than the user asked for).
    #[test]
    fn flags_of_the_other_mode_are_refused() {
        let one = ["--from", "c1", "--to", "c2"];
        assert_eq!(check(&one), Ok(()));
        for extra in [
            &["--addr", "10.0.0.1"][..],
            &["--port", "80"],
            &["--drops"],
            &["--sample", "3"],
            &["-c", "5"],
            &["--duration", "5s"],
            &["--container", "c4"],
            &["--vni", "4098"],
        ] {
            let args = [&one[..], extra].concat();
            let e = check(&args).expect_err("refused");
            assert!(e.contains("applies to --live only"), "{extra:?}: {e}");
            assert!(e.contains(extra[0]), "names the flag: {e}");
        }
        for extra in [
            &["--size", "100"][..],
            &["--df"],
            &["--dport", "80", "--proto", "tcp"],
        ] {
            let args = [&["--live"][..], extra].concat();
            let e = check(&args).expect_err("refused");
            assert!(e.contains("--live watches real packets"), "{extra:?}: {e}");
        }
        assert_eq!(check(&["--live", "--port", "80", "--proto", "tcp"]), Ok(()));
        assert!(check(&["--live", "--port", "0"]).is_err());
        assert!(check(&["--live", "--port", "80", "--proto", "icmp"]).is_err());
        assert!(check(&["--live", "--drops", "--sample", "1"]).is_err());
        assert!(check(&[&one[..], &["--proto", "tcp", "--dport", "0"]].concat()).is_err());
        assert_eq!(check(&[&one[..], &["--proto", "TCP"]].concat()), Ok(()));
    }

    /// A trace cut short says how it ended and what to check.
    #[test]
    fn a_partial_trace_renders_its_end_and_fix() {
        use vxnet_api::trace::{StepVerdict, TraceStage, TraceStep, TraceVerdict};
        let step = |host: &str, stage, fix: Option<&str>| TraceStep {
            host: host.into(),
            stage,
            verdict: StepVerdict::Pass,
            detail: "d".into(),
            reason: None,
            fix: fix.map(str::to_owned),
        };
        let r = TraceReport {
            steps: vec![
                step("host1", TraceStage::Outer, None),
                step("host2", TraceStage::WireRx, Some("check host2")),
            ],
            verdict: TraceVerdict::Sent,
            outer: None,
        };
        let text = render(&r);
        assert!(text.contains("sent on host2\nfix: check host2"), "{text}");
    }
}
