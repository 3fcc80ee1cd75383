//! `vxnet`: the command-line interface.
//!
//! One module per area of commands: [`dp`] talks to the local dataplane;
//! [`swarm`] (with `node`), [`network`] and [`container`] talk to the
//! control daemon. [`output`] renders results as tables or JSON.
//!
//! Exit codes (from the API's error codes, [`vxnet_api::ErrorCode`]):
//! 0 success; 1 an internal failure; 2 a usage error or an invalid
//! argument (nothing was changed); 3 not found; 4 already exists or not
//! possible in the current state; 5 permission denied (say, a worker asked
//! a manager-only question); 6 a daemon is unreachable or timed out.

mod capture;
mod container;
mod dp;
mod network;
mod output;
mod service;
mod swarm;
mod trace;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "vxnet",
    version,
    about = "vxnet: a userspace VXLAN overlay network",
    long_about = "vxnet: a userspace VXLAN overlay network.\n\n\
                  `vxnet dp` configures and inspects the dataplane running on this host.",
    propagate_version = true,
    after_help = "Examples:\n  vxnet dp show\n  vxnet dp endpoints\n  vxnet dp stats --all"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Configure and inspect the local dataplane (endpoints, peers, stats).
    Dp(dp::DpArgs),
    /// Create, join and leave a swarm; join tokens.
    Swarm(swarm::SwarmArgs),
    /// List the swarm's nodes.
    Node(swarm::NodeArgs),
    /// Overlay networks: create, ls, inspect, rm, connect, disconnect.
    Network(network::NetworkArgs),
    /// Containers on overlay networks: run, exec, ls, inspect, rm, stop, start, logs.
    Container(container::ContainerArgs),
    /// Services: replicated or global tasks behind a VIP or DNS round robin.
    Service(service::ServiceArgs),
    /// Where did my packet go: trace one packet from a container through
    /// both hosts' dataplanes, stage by stage, sending nothing.
    Trace(trace::TraceArgs),
    /// Capture a network's inner frames and/or outer datagrams to pcapng.
    Capture(capture::CaptureArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    let result = match &cli.command {
        Command::Dp(args) => dp::run(args, &mut stdout),
        Command::Swarm(args) => swarm::run_swarm(args, &mut stdout).map(|()| 0),
        Command::Node(args) => swarm::run_node(args, &mut stdout).map(|()| 0),
        Command::Network(args) => network::run(args, &mut stdout).map(|()| 0),
        Command::Container(args) => container::run(args, &mut stdout),
        Command::Service(args) => service::run(args, &mut stdout).map(|()| 0),
        Command::Trace(args) => trace::run(args, &mut stdout),
        Command::Capture(args) => capture::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(dp::CliError::Usage(msg)) => {
            // Formatted and exited (code 2) like clap's own usage errors,
            // with the usage line of the subcommand that was run.
            let mut cmd = Cli::command();
            cmd.build();
            let sub = match &cli.command {
                Command::Dp(args) => cmd
                    .find_subcommand_mut("dp")
                    .and_then(|dp| dp.find_subcommand_mut(args.command.name())),
                Command::Swarm(_) => cmd.find_subcommand_mut("swarm"),
                Command::Node(_) => cmd.find_subcommand_mut("node"),
                Command::Network(_) => cmd.find_subcommand_mut("network"),
                Command::Container(_) => cmd.find_subcommand_mut("container"),
                Command::Service(_) => cmd.find_subcommand_mut("service"),
                Command::Trace(_) => cmd.find_subcommand_mut("trace"),
                Command::Capture(_) => cmd.find_subcommand_mut("capture"),
            };
            match sub {
                Some(sub) => sub
                    .error(clap::error::ErrorKind::ArgumentConflict, msg)
                    .exit(),
                None => cmd
                    .error(clap::error::ErrorKind::ArgumentConflict, msg)
                    .exit(),
            }
        }
        Err(dp::CliError::Failed(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
        Err(dp::CliError::Api(e)) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.code.exit_status())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dp::{DpCommand, FloodCommand, PeerCommand};
    use crate::output::Format;
    use clap::error::ErrorKind;
    use vxnet_api::dp::{self as api, AttachTarget, DetachTarget, Request};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vxnet").chain(args.iter().copied()))
    }

    fn dp(args: &[&str]) -> dp::DpArgs {
        match parse(args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
        {
            Command::Dp(d) => d,
            other => panic!("not dp: {other:?}"),
        }
    }

    fn err(args: &[&str]) -> clap::Error {
        parse(args)
            .err()
            .unwrap_or_else(|| panic!("{args:?} should fail"))
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn attach_netns() {
        let d = dp(&[
            "dp",
            "attach",
            "--netns",
            "web1",
            "--vni",
            "4096",
            "--ip",
            "10.0.0.2/24",
            "--ip",
            "fd00::2/64",
            "--gateway",
            "10.0.0.1",
            "--mtu",
            "1400",
            "--mac",
            "02:42:0a:00:00:02",
            "--ifname",
            "eth1",
            "--format",
            "json",
        ]);
        assert!(d.command.validate().is_ok());
        let Request::Attach(a) = d.command.request() else {
            panic!("not an attach")
        };
        assert_eq!(a.target, AttachTarget::Netns("web1".into()));
        assert_eq!(a.vni.get(), 4096);
        assert_eq!(a.ips.len(), 2);
        assert_eq!(a.ips[1].to_string(), "fd00::2/64");
        assert_eq!(a.mtu, Some(1400));
        assert_eq!(a.ifname.as_deref(), Some("eth1"));
        assert_eq!(a.mac.unwrap().to_string(), "02:42:0a:00:00:02");
        assert_eq!(
            a.gateways,
            vec!["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(matches!(d.command, DpCommand::Attach(ref x) if x.format.format == Format::Json));
    }

    #[test]
    fn attach_veth() {
        let d = dp(&[
            "dp",
            "attach",
            "--veth",
            "veth1",
            "--vni",
            "5",
            "--ip",
            "10.0.0.5/24",
        ]);
        let Request::Attach(a) = d.command.request() else {
            panic!("not an attach")
        };
        assert_eq!(a.target, AttachTarget::Veth("veth1".into()));
        assert_eq!(a.mac, None);
    }

    #[test]
    fn attach_rejects_bad_input() {
        let base = [
            "dp",
            "attach",
            "--netns",
            "n",
            "--vni",
            "5",
            "--ip",
            "10.0.0.2/24",
        ];
        fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
            base.iter().chain(extra.iter()).copied().collect()
        }
        let with = |extra: &[&'static str]| with(&base, extra);
        // Both or neither of --netns/--veth.
        assert_eq!(
            err(&with(&["--veth", "v1"])).kind(),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            err(&["dp", "attach", "--vni", "5", "--ip", "10.0.0.2/24"]).kind(),
            ErrorKind::MissingRequiredArgument
        );
        // --ip is required and needs a prefix.
        assert_eq!(
            err(&["dp", "attach", "--netns", "n", "--vni", "5"]).kind(),
            ErrorKind::MissingRequiredArgument
        );
        let e = err(&[
            "dp", "attach", "--netns", "n", "--vni", "5", "--ip", "10.0.0.2",
        ]);
        assert!(e.to_string().contains("needs a prefix length"), "{e}");
        // VNI range and format.
        assert!(
            parse(&[
                "dp",
                "attach",
                "--netns",
                "n",
                "--vni",
                "-1",
                "--ip",
                "10.0.0.2/24"
            ])
            .is_err()
        );
        for vni in ["0", "16777216", "abc", " "] {
            let e = err(&[
                "dp",
                "attach",
                "--netns",
                "n",
                "--vni",
                vni,
                "--ip",
                "10.0.0.2/24",
            ]);
            assert_eq!(e.kind(), ErrorKind::ValueValidation, "{vni}");
        }
        let e = err(&[
            "dp",
            "attach",
            "--netns",
            "n",
            "--vni",
            "0",
            "--ip",
            "10.0.0.2/24",
        ]);
        assert!(e.to_string().contains("outside 1..=16777215"), "{e}");
        // MAC must be a unicast address.
        assert!(
            err(&with(&["--mac", "02:42:0a:00:00"]))
                .to_string()
                .contains("not a MAC")
        );
        assert!(
            err(&with(&["--mac", "ff:ff:ff:ff:ff:ff"]))
                .to_string()
                .contains("unicast")
        );
        assert!(
            err(&with(&["--mac", "00:00:00:00:00:00"]))
                .to_string()
                .contains("usable")
        );
        // MTU range, interface names.
        assert_eq!(
            err(&with(&["--mtu", "20"])).kind(),
            ErrorKind::ValueValidation
        );
        assert!(
            err(&with(&["--ifname", "a/b"]))
                .to_string()
                .contains("interface name")
        );
        assert!(
            err(&with(&["--ifname", "sixteen-chars-xx"]))
                .to_string()
                .contains("interface name")
        );
        // Sidecar attach takes no namespace-side options.
        let e = err(&[
            "dp",
            "attach",
            "--veth",
            "v",
            "--vni",
            "5",
            "--ip",
            "10.0.0.2/24",
            "--mtu",
            "1400",
        ]);
        assert_eq!(e.kind(), ErrorKind::ArgumentConflict);
        // Cross-argument checks run before any request.
        let d = dp(&with(&["--gateway", "10.0.0.1", "--gateway", "10.0.0.254"]));
        assert!(
            d.command
                .validate()
                .unwrap_err()
                .contains("at most one IPv4")
        );
        let d = dp(&with(&["--gateway", "fd00::1"]));
        assert!(
            d.command
                .validate()
                .unwrap_err()
                .contains("same address family")
        );
        let d = dp(&with(&["--ip", "10.0.0.2/16"]));
        assert!(d.command.validate().unwrap_err().contains("given twice"));
    }

    #[test]
    fn detach_forms() {
        let r = dp(&["dp", "detach", "--id", "3"]).command.request();
        assert_eq!(
            r,
            Request::Detach(api::Detach {
                target: DetachTarget::Id(3)
            })
        );
        let r = dp(&["dp", "detach", "--netns", "web1", "--ifname", "eth1"])
            .command
            .request();
        assert_eq!(
            r,
            Request::Detach(api::Detach {
                target: DetachTarget::Netns {
                    netns: "web1".into(),
                    ifname: Some("eth1".into())
                }
            })
        );
        let r = dp(&["dp", "detach", "--veth", "v1"]).command.request();
        assert_eq!(
            r,
            Request::Detach(api::Detach {
                target: DetachTarget::Veth("v1".into())
            })
        );
        assert_eq!(
            err(&["dp", "detach"]).kind(),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            err(&["dp", "detach", "--id", "1", "--veth", "v"]).kind(),
            ErrorKind::ArgumentConflict
        );
        // --ifname only makes sense with --netns.
        let d = dp(&["dp", "detach", "--veth", "v", "--ifname", "eth0"]);
        assert!(d.command.validate().unwrap_err().contains("--ifname"));
    }

    #[test]
    fn peer_and_flood() {
        let d = dp(&[
            "dp",
            "peer",
            "add",
            "--vni",
            "4096",
            "--mac",
            "02:42:0a:00:00:03",
            "--ip",
            "10.0.0.3",
            "--ip",
            "fd00::3",
            "--vtep",
            "192.0.2.2",
        ]);
        let Request::PeerAdd(p) = d.command.request() else {
            panic!("not peer_add")
        };
        assert_eq!(p.ips.len(), 2);
        assert_eq!(p.vtep.to_string(), "192.0.2.2");
        assert!(matches!(
            d.command,
            DpCommand::Peer(PeerCommand::Add { .. })
        ));
        let r = dp(&[
            "dp",
            "peer",
            "del",
            "--vni",
            "1",
            "--mac",
            "02:00:00:00:00:01",
        ])
        .command
        .request();
        assert!(matches!(r, Request::PeerDel(api::PeerDel { vni, .. }) if vni.get() == 1));
        let e = err(&[
            "dp",
            "peer",
            "add",
            "--vni",
            "1",
            "--mac",
            "02:00:00:00:00:01",
            "--vtep",
            "0.0.0.0",
        ]);
        assert!(e.to_string().contains("cannot be a VTEP"), "{e}");
        assert_eq!(
            err(&[
                "dp",
                "peer",
                "add",
                "--vni",
                "1",
                "--mac",
                "02:00:00:00:00:01"
            ])
            .kind(),
            ErrorKind::MissingRequiredArgument
        );
        let d = dp(&["dp", "flood", "add", "--vni", "7", "--vtep", "2001:db8::1"]);
        assert!(matches!(d.command, DpCommand::Flood(FloodCommand::Add(_))));
        assert!(
            matches!(d.command.request(), Request::FloodAdd(api::FloodAdd { vni, .. }) if vni.get() == 7)
        );
        let r = dp(&["dp", "flood", "del", "--vni", "7", "--vtep", "192.0.2.9"])
            .command
            .request();
        assert!(matches!(r, Request::FloodDel(_)));
        for bad in ["224.0.0.1", "255.255.255.255", "::"] {
            assert!(
                err(&["dp", "flood", "add", "--vni", "7", "--vtep", bad])
                    .to_string()
                    .contains("cannot be a VTEP"),
                "{bad}"
            );
        }
    }

    #[test]
    fn listings_and_socket() {
        let d = dp(&["dp", "stats", "--all", "--format", "json"]);
        assert!(
            matches!(d.command, DpCommand::Stats { all: true, format } if format.format == Format::Json)
        );
        assert_eq!(d.command.request(), Request::Stats(api::Stats {}));
        let d = dp(&["dp", "--socket", "/tmp/x.sock", "fdb", "--vni", "9"]);
        assert_eq!(d.socket, std::path::PathBuf::from("/tmp/x.sock"));
        assert!(
            matches!(d.command.request(), Request::Fdb(api::Fdb { vni: Some(v) }) if v.get() == 9)
        );
        // --socket is global: it may follow the subcommand too.
        let d = dp(&["dp", "endpoints", "--socket", "/tmp/y.sock"]);
        assert_eq!(d.socket, std::path::PathBuf::from("/tmp/y.sock"));
        assert_eq!(
            dp(&["dp", "show"]).command.request(),
            Request::Show(api::Show {})
        );
        assert_eq!(
            err(&["dp", "stats", "--format", "xml"]).kind(),
            ErrorKind::InvalidValue
        );
        assert_eq!(err(&["dp", "nope"]).kind(), ErrorKind::InvalidSubcommand);
    }

    #[test]
    fn help_is_available_everywhere() {
        for args in [
            &["--help"][..],
            &["dp", "--help"],
            &["dp", "attach", "--help"],
            &["dp", "detach", "--help"],
            &["dp", "peer", "add", "--help"],
            &["dp", "flood", "del", "--help"],
            &["dp", "stats", "--help"],
            &["dp", "service", "set", "--help"],
            &["dp", "service", "del", "--help"],
            &["dp", "services", "--help"],
            &["dp", "conntrack", "--help"],
        ] {
            let e = err(args);
            assert_eq!(e.kind(), ErrorKind::DisplayHelp, "{args:?}");
            let text = e.to_string();
            assert!(text.contains("Usage:"), "{args:?}");
            if args.len() > 2 {
                assert!(text.contains("Example"), "{args:?}: {text}");
            }
        }
    }

    #[test]
    fn service_commands() {
        let d = dp(&[
            "dp",
            "service",
            "set",
            "--vni",
            "4096",
            "--vip",
            "fd00::100",
            "--backend",
            "fd00::2",
            "--backend",
            "fd00::3,02:42:0a:00:00:03",
        ]);
        assert!(d.command.validate().is_ok());
        let Request::ServiceSet(s) = d.command.request() else {
            panic!("not a service_set")
        };
        assert_eq!(s.vip.to_string(), "fd00::100");
        assert_eq!(s.owner, api::Owner::User);
        assert_eq!(s.backends[0].mac, None);
        assert_eq!(
            s.backends[1].mac.map(|m| m.to_string()).as_deref(),
            Some("02:42:0a:00:00:03")
        );
        // An empty set is a valid request (new connections are refused).
        let d = dp(&["dp", "service", "set", "--vni", "1", "--vip", "10.0.0.9"]);
        assert!(matches!(d.command.request(), Request::ServiceSet(ref s) if s.backends.is_empty()));
        for (bad, want) in [
            (
                vec!["--backend", "10.0.0.2", "--backend", "10.0.0.2"],
                "given twice",
            ),
            (vec!["--backend", "fd00::2"], "different address families"),
        ] {
            let mut args = vec!["dp", "service", "set", "--vni", "1", "--vip", "10.0.0.9"];
            args.extend(bad);
            let e = dp(&args).command.validate().unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        for bad in ["10.0.0.300", "10.0.0.2,ff:ff:ff:ff:ff:ff", "10.0.0.2,02:42"] {
            let e = err(&[
                "dp",
                "service",
                "set",
                "--vni",
                "1",
                "--vip",
                "10.0.0.9",
                "--backend",
                bad,
            ]);
            assert_eq!(e.kind(), ErrorKind::ValueValidation, "{bad}");
        }
        assert_eq!(
            dp(&["dp", "service", "del", "--vni", "1", "--vip", "10.0.0.9"])
                .command
                .request(),
            Request::ServiceDel(api::ServiceDel {
                vni: vxnet_api::Vni::new(1).unwrap(),
                vip: "10.0.0.9".parse().unwrap()
            })
        );
        assert_eq!(
            dp(&["dp", "conntrack", "--vni", "7", "--limit", "5"])
                .command
                .request(),
            Request::Conntrack(api::Conntrack {
                vni: vxnet_api::Vni::new(7),
                limit: Some(5)
            })
        );
        assert_eq!(
            dp(&["dp", "services"]).command.request(),
            Request::Services(api::Services { vni: None })
        );
    }

    #[test]
    fn stream_bounds_are_checked_with_the_flag_named() {
        for (args, flag) in [
            (&["capture", "-c", "0", "-w", "x"][..], "--count"),
            (&["capture", "-c", "10000001", "-w", "x"], "--count"),
            (&["capture", "-c", "-5", "-w", "x"], "--count"),
            (&["trace", "--live", "-c", "-1"], "--count"),
            (&["capture", "--max-bytes", "-1", "-w", "x"], "--max-bytes"),
            (&["capture", "--snaplen", "-64", "-w", "x"], "--snaplen"),
            (&["capture", "--duration", "-1s", "-w", "x"], "--duration"),
            (&["trace", "--live", "--sample", "-1"], "--sample"),
            (&["trace", "--live", "-c", "0"], "--count"),
            (&["capture", "--max-bytes", "0", "-w", "x"], "--max-bytes"),
            (
                &["capture", "--max-bytes", "1073741825", "-w", "x"],
                "--max-bytes",
            ),
            (&["capture", "--snaplen", "63", "-w", "x"], "--snaplen"),
            (&["capture", "--snaplen", "262145", "-w", "x"], "--snaplen"),
            (&["capture", "--duration", "61m", "-w", "x"], "--duration"),
            (&["trace", "--live", "--duration", "0s"], "--duration"),
        ] {
            let e = err(args);
            assert_eq!(e.kind(), ErrorKind::ValueValidation, "{args:?}");
            assert!(e.to_string().contains(flag), "{args:?}: {e}");
        }
        for args in [
            &["capture", "-c", "10000000", "-w", "x"][..],
            &[
                "capture",
                "--max-bytes",
                "1073741824",
                "--snaplen",
                "64",
                "-w",
                "x",
            ],
            &[
                "capture",
                "--snaplen",
                "262144",
                "--duration",
                "1h",
                "-w",
                "x",
            ],
        ] {
            assert!(parse(args).is_ok(), "{args:?}");
        }
    }
}
