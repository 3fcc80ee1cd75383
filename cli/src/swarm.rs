//! `vxnet swarm ...` and `vxnet node ...`: the swarm as the control daemon
//! keeps it. Also the pieces the other control-plane commands share: the
//! daemon's socket option and the call helper.

use crate::dp::CliError;
use crate::output::{Format, Table};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use vxnet_control::daemon::api::{
    CtlRequest, DEFAULT_SOCKET, InitView, JoinTokenView, MANAGEMENT_PORT, NodeView,
};
use vxnet_control::daemon::client::CtlClient;
use vxnet_control::model::{Availability, Node, Role};

/// The control daemon's socket, accepted by every control-plane command.
#[derive(Debug, Args, Clone)]
pub struct ControlSocket {
    /// Path of the control daemon's socket.
    #[arg(long = "control-socket", global = true, env = "VXNET_CONTROL_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub path: PathBuf,
}

impl ControlSocket {
    /// Sends one request; a refusal becomes [`CliError::Failed`] with the
    /// daemon's words.
    pub fn call<T: DeserializeOwned>(&self, req: &CtlRequest) -> Result<T, CliError> {
        let mut c = CtlClient::connect(&self.path).map_err(|e| CliError::Failed(e.to_string()))?;
        c.request(req).map_err(CliError::Failed)
    }
}

#[derive(Debug, Args, Clone, Copy)]
pub struct FormatArg {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub fn write(out: &mut dyn Write, s: &str) -> Result<(), CliError> {
    out.write_all(s.as_bytes())
        .map_err(|e| CliError::Failed(format!("cannot write the output: {e}")))
}

pub fn json(out: &mut dyn Write, v: &impl Serialize) -> Result<(), CliError> {
    let s = serde_json::to_string_pretty(v)
        .map_err(|e| CliError::Failed(format!("cannot print the answer: {e}")))?;
    write(out, &format!("{s}\n"))
}

/// The first 12 characters of an id, as `docker ... ls` shows them.
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Worker,
    Manager,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Worker => Role::Worker,
            RoleArg::Manager => Role::Manager,
        }
    }
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  vxnet swarm init --advertise-addr 192.0.2.1
  vxnet swarm join-token worker
  vxnet swarm leave --force")]
pub struct SwarmArgs {
    #[command(flatten)]
    pub socket: ControlSocket,
    #[command(subcommand)]
    pub command: SwarmCommand,
}

#[derive(Debug, Subcommand)]
pub enum SwarmCommand {
    /// Make this host a swarm manager and print the join commands.
    #[command(after_help = "\
Example:
  vxnet swarm init --advertise-addr 192.0.2.1 --data-path-addr 198.51.100.1")]
    Init {
        /// Address for management and gossip traffic.
        #[arg(long, value_name = "IP")]
        advertise_addr: Option<IpAddr>,
        /// Address for VXLAN data traffic.
        #[arg(long, value_name = "IP")]
        data_path_addr: Option<IpAddr>,
        /// UDP port for VXLAN data traffic (1024-49151).
        #[arg(long, value_name = "PORT")]
        data_path_port: Option<u16>,
    },
    /// Join a swarm as a worker or manager, through a manager's TCP 2377.
    #[command(after_help = "\
Example:
  vxnet swarm join --token SWMTKN-1-... 192.0.2.1:2377")]
    Join {
        #[arg(long)]
        token: String,
        #[arg(long, value_name = "IP")]
        advertise_addr: Option<IpAddr>,
        #[arg(long, value_name = "IP")]
        data_path_addr: Option<IpAddr>,
        /// The manager, HOST:PORT.
        remote: String,
    },
    /// Print (or rotate) the command that joins a worker or a manager.
    #[command(
        name = "join-token",
        after_help = "\
Examples:
  vxnet swarm join-token worker
  vxnet swarm join-token --rotate manager"
    )]
    JoinToken {
        #[arg(value_enum)]
        role: RoleArg,
        /// Replace the token; the old one stops working.
        #[arg(long)]
        rotate: bool,
        /// Print the token only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Leave the swarm (on the only manager this removes the swarm).
    #[command(after_help = "\
Example:
  vxnet swarm leave --force")]
    Leave {
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  vxnet node ls")]
pub struct NodeArgs {
    #[command(flatten)]
    pub socket: ControlSocket,
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the swarm's nodes.
    #[command(
        alias = "list",
        after_help = "\
Examples:
  vxnet node ls
  vxnet node ls --format json"
    )]
    Ls {
        #[command(flatten)]
        format: FormatArg,
    },
    /// Show nodes in detail (JSON, as `docker node inspect`).
    #[command(after_help = "\
Example:
  vxnet node inspect host2")]
    Inspect {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove nodes from the swarm (a Ready node only with --force).
    #[command(
        alias = "remove",
        after_help = "\
Examples:
  vxnet node rm host2
  vxnet node rm --force host2"
    )]
    Rm {
        /// Remove a node that is not Down.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Change a node's availability.
    #[command(after_help = "\
Example:
  vxnet node update --availability drain host2")]
    Update {
        #[arg(long, value_enum)]
        availability: AvailabilityArg,
        node: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AvailabilityArg {
    Active,
    Pause,
    Drain,
}

impl From<AvailabilityArg> for Availability {
    fn from(a: AvailabilityArg) -> Self {
        match a {
            AvailabilityArg::Active => Availability::Active,
            AvailabilityArg::Pause => Availability::Pause,
            AvailabilityArg::Drain => Availability::Drain,
        }
    }
}

/// Docker-shaped `node inspect` output.
pub fn node_json(v: &NodeView) -> serde_json::Value {
    let n = &v.node;
    let mut out = serde_json::json!({
        "ID": n.id,
        "CreatedAt": n.created,
        "Self": v.is_self,
        "Spec": {
            "Role": word(n.role),
            "Availability": word(n.availability),
        },
        "Description": { "Hostname": n.hostname },
        "Status": {
            "State": word(n.status),
            "Addr": n.advertise_addr.to_string(),
        },
        "DataPathAddr": n.data_path_addr.to_string(),
        "DataPathPort": n.data_path_port,
        "PublicKey": n.public_key,
    });
    if n.role == Role::Manager {
        out["ManagerStatus"] = serde_json::json!({
            "Leader": true,
            "Reachability": "reachable",
            "Addr": format!("{}:{}", n.advertise_addr, MANAGEMENT_PORT),
        });
    }
    out
}

/// The lowercase word the model serializes an enum as ("ready", "drain").
fn word(v: impl Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl SwarmCommand {
    pub fn request(&self) -> CtlRequest {
        match self {
            SwarmCommand::Init {
                advertise_addr,
                data_path_addr,
                data_path_port,
            } => CtlRequest::SwarmInit {
                advertise_addr: *advertise_addr,
                data_path_addr: *data_path_addr,
                data_path_port: *data_path_port,
            },
            SwarmCommand::Join {
                token,
                advertise_addr,
                data_path_addr,
                remote,
            } => CtlRequest::SwarmJoin {
                token: token.clone(),
                remote: remote.clone(),
                advertise_addr: *advertise_addr,
                data_path_addr: *data_path_addr,
            },
            SwarmCommand::JoinToken { role, rotate, .. } => CtlRequest::JoinToken {
                role: (*role).into(),
                rotate: *rotate,
            },
            SwarmCommand::Leave { force } => CtlRequest::SwarmLeave { force: *force },
        }
    }
}

pub fn join_command(t: &JoinTokenView) -> String {
    format!("vxnet swarm join --token {} {}", t.token, t.manager_addr)
}

pub fn run_swarm(args: &SwarmArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let req = args.command.request();
    match &args.command {
        SwarmCommand::Init { .. } => {
            let v: InitView = args.socket.call(&req)?;
            let worker = JoinTokenView {
                role: Role::Worker,
                token: v.worker_token.clone(),
                manager_addr: v.manager_addr,
            };
            write(
                out,
                &format!(
                    "Swarm initialized: current node ({}) is now a manager.\n\n\
                     To add a worker to this swarm, run the following command:\n\n    {}\n\n\
                     To add a manager to this swarm, run 'vxnet swarm join-token manager' and follow the instructions.\n",
                    v.node_id,
                    join_command(&worker)
                ),
            )
        }
        SwarmCommand::Join { .. } => {
            let msg: String = args.socket.call(&req)?;
            write(out, &format!("{msg}\n"))
        }
        SwarmCommand::JoinToken { quiet, rotate, .. } => {
            let t: JoinTokenView = args.socket.call(&req)?;
            if *quiet {
                return write(out, &format!("{}\n", t.token));
            }
            let role = match t.role {
                Role::Worker => "worker",
                Role::Manager => "manager",
            };
            let rotated = if *rotate {
                format!("Successfully rotated {role} join token.\n\n")
            } else {
                String::new()
            };
            write(
                out,
                &format!(
                    "{rotated}To add a {role} to this swarm, run the following command:\n\n    {}\n",
                    join_command(&t)
                ),
            )
        }
        SwarmCommand::Leave { .. } => {
            let msg: String = args.socket.call(&req)?;
            write(out, &format!("{msg}\n"))
        }
    }
}

pub fn run_node(args: &NodeArgs, out: &mut dyn Write) -> Result<(), CliError> {
    match &args.command {
        NodeCommand::Ls { format } => {
            let nodes: Vec<NodeView> = args.socket.call(&CtlRequest::NodeLs)?;
            if format.format == Format::Json {
                return json(out, &nodes);
            }
            let mut t = Table::new(&["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"]);
            for n in &nodes {
                let v = serde_json::to_value(&n.node).unwrap_or_default();
                let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
                let status = field("status");
                let manager = if n.node.role == Role::Manager {
                    "Leader"
                } else {
                    ""
                };
                t.row(vec![
                    format!("{}{}", n.node.id, if n.is_self { " *" } else { "" }),
                    n.node.hostname.clone(),
                    capitalize(&status),
                    capitalize(&field("availability")),
                    manager.into(),
                ]);
            }
            write(out, &t.render())
        }
        NodeCommand::Inspect { nodes } => {
            let mut all = Vec::new();
            for n in nodes {
                let v: NodeView = args
                    .socket
                    .call(&CtlRequest::NodeInspect { node: n.clone() })?;
                all.push(node_json(&v));
            }
            json(out, &all)
        }
        NodeCommand::Rm { force, nodes } => {
            for n in nodes {
                let _: Node = args.socket.call(&CtlRequest::NodeRm {
                    node: n.clone(),
                    force: *force,
                })?;
                write(out, &format!("{n}\n"))?;
            }
            Ok(())
        }
        NodeCommand::Update { availability, node } => {
            let _: Node = args.socket.call(&CtlRequest::NodeUpdate {
                node: node.clone(),
                availability: (*availability).into(),
            })?;
            write(out, &format!("{node}\n"))
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::ContainerCommand;
    use crate::network::NetworkCommand;
    use crate::{Cli, Command};
    use clap::Parser;
    use clap::error::ErrorKind;
    use vxnet_control::daemon::api::CtlRequest;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vxnet").chain(args.iter().copied()))
    }

    #[test]
    fn swarm_requests() {
        let Command::Swarm(s) = parse(&[
            "swarm",
            "init",
            "--advertise-addr",
            "192.0.2.1",
            "--data-path-port",
            "4790",
        ])
        .unwrap()
        .command
        else {
            panic!("not swarm")
        };
        assert_eq!(
            s.command.request(),
            CtlRequest::SwarmInit {
                advertise_addr: Some("192.0.2.1".parse().unwrap()),
                data_path_addr: None,
                data_path_port: Some(4790),
            }
        );
        let Command::Swarm(s) = parse(&["swarm", "join-token", "--rotate", "manager"])
            .unwrap()
            .command
        else {
            panic!("not swarm")
        };
        assert_eq!(
            s.command.request(),
            CtlRequest::JoinToken {
                role: vxnet_control::model::Role::Manager,
                rotate: true
            }
        );
        assert_eq!(
            parse(&["swarm", "join-token", "admin"]).unwrap_err().kind(),
            ErrorKind::InvalidValue
        );
        assert!(parse(&["swarm", "init", "--advertise-addr", "nope"]).is_err());
    }

    #[test]
    fn network_create_options() {
        let Command::Network(n) = parse(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--attachable",
            "--opt",
            "encrypted",
            "--opt",
            "mtu=1400",
            "--subnet",
            "10.9.0.0/24",
            "--gateway",
            "10.9.0.1",
            "--ip-range",
            "10.9.0.128/25",
            "secure",
        ])
        .unwrap()
        .command
        else {
            panic!("not network")
        };
        let NetworkCommand::Create(c) = n.command else {
            panic!("not create")
        };
        let r = c.request();
        assert_eq!(r.name, "secure");
        assert!(r.attachable && !r.ingress);
        assert_eq!(r.options.get("encrypted").map(String::as_str), Some(""));
        assert_eq!(r.options.get("mtu").map(String::as_str), Some("1400"));
        assert_eq!(r.subnets[0].to_string(), "10.9.0.0/24");
        assert_eq!(r.ip_ranges[0].to_string(), "10.9.0.128/25");
        assert!(parse(&["network", "create", "--subnet", "10.9.0.0", "x"]).is_err());
        assert!(crate::network::parse_filter(&["color=red".into()]).is_err());
        let f = crate::network::parse_filter(&["name=te".into()]).unwrap();
        assert_eq!(f.name.as_deref(), Some("te"));
    }

    #[test]
    fn container_run_takes_a_command_after_dashes() {
        let Command::Container(c) = parse(&[
            "container",
            "run",
            "-d",
            "--name",
            "c1",
            "--network",
            "a",
            "--network",
            "b",
            "--ip",
            "10.0.0.9",
            "--",
            "ping",
            "-c",
            "1",
            "10.0.0.1",
        ])
        .unwrap()
        .command
        else {
            panic!("not container")
        };
        let ContainerCommand::Run(r) = c.command else {
            panic!("not run")
        };
        assert!(r.detach);
        assert_eq!(r.command, ["ping", "-c", "1", "10.0.0.1"]);
        let CtlRequest::ContainerCreate { name, networks } = r.request() else {
            panic!("not create")
        };
        assert_eq!(name, "c1");
        assert_eq!(networks.len(), 2);
        assert_eq!(networks[0].ipv4, Some("10.0.0.9".parse().unwrap()));
        assert_eq!(networks[1].ipv4, None);
        // A command and a network are required.
        assert!(parse(&["container", "run", "--name", "c1", "--network", "a"]).is_err());
        assert!(parse(&["container", "run", "--name", "c1", "--", "true"]).is_err());
    }

    #[test]
    fn node_commands_and_inspect_shape() {
        let Command::Node(n) = parse(&["node", "rm", "-f", "h2", "h3"]).unwrap().command else {
            panic!("not node")
        };
        let NodeCommand::Rm { force, nodes } = n.command else {
            panic!("not rm")
        };
        assert!(force);
        assert_eq!(nodes, ["h2", "h3"]);
        let Command::Node(n) = parse(&["node", "update", "--availability", "drain", "h2"])
            .unwrap()
            .command
        else {
            panic!("not node")
        };
        let NodeCommand::Update { availability, node } = n.command else {
            panic!("not update")
        };
        assert_eq!(Availability::from(availability), Availability::Drain);
        assert_eq!(node, "h2");
        assert!(parse(&["node", "update", "--availability", "gone", "h2"]).is_err());
        assert!(parse(&["node", "rm"]).is_err());

        let v = NodeView {
            node: Node {
                id: "abc".into(),
                hostname: "h1".into(),
                role: Role::Manager,
                availability: Availability::Active,
                status: vxnet_control::model::NodeStatus::Ready,
                advertise_addr: "192.0.2.1".parse().unwrap(),
                data_path_addr: "198.51.100.1".parse().unwrap(),
                data_path_port: 4789,
                public_key: "pk".into(),
                created: 1,
            },
            is_self: true,
        };
        let j = node_json(&v);
        assert_eq!(j["ID"], "abc");
        assert_eq!(j["Description"]["Hostname"], "h1");
        assert_eq!(j["Status"]["State"], "ready");
        assert_eq!(j["Spec"]["Availability"], "active");
        assert_eq!(j["Spec"]["Role"], "manager");
        assert_eq!(j["ManagerStatus"]["Addr"], "192.0.2.1:2377");
        assert_eq!(j["DataPathAddr"], "198.51.100.1");
        assert_eq!(j["PublicKey"], "pk");
    }

    #[test]
    fn network_connect_of_another_runtime() {
        let connect = |args: &[&str]| -> Result<CtlRequest, String> {
            let Command::Network(n) = parse(args).map_err(|e| e.to_string())?.command else {
                panic!("not network")
            };
            crate::network::connect_request(&n.command).map_err(|e| format!("{e:?}"))
        };
        let r = connect(&[
            "network",
            "connect",
            "--netns",
            "/proc/9/ns/net",
            "n",
            "web",
        ])
        .unwrap();
        let CtlRequest::NetworkConnect {
            container,
            network,
            netns,
            veth,
        } = r
        else {
            panic!("not connect")
        };
        assert_eq!(container, "web");
        assert_eq!(network.network, "n");
        assert_eq!(netns.as_deref(), Some("/proc/9/ns/net"));
        assert_eq!(veth, None);
        let r = connect(&[
            "network",
            "connect",
            "--veth",
            "veth1",
            "--mac",
            "02:00:00:00:00:09",
            "--ip",
            "10.0.0.9",
            "n",
            "db",
        ])
        .unwrap();
        let CtlRequest::NetworkConnect { network, veth, .. } = r else {
            panic!("not connect")
        };
        assert_eq!(veth.as_deref(), Some("veth1"));
        assert_eq!(network.mac.as_deref(), Some("02:00:00:00:00:09"));
        assert_eq!(network.ipv4, Some("10.0.0.9".parse().unwrap()));
        // --veth needs --mac; --netns and --veth exclude each other.
        assert!(connect(&["network", "connect", "--veth", "v", "n", "db"]).is_err());
        assert!(
            connect(&[
                "network",
                "connect",
                "--veth",
                "v",
                "--mac",
                "02:00:00:00:00:09",
                "--netns",
                "x",
                "n",
                "db"
            ])
            .is_err()
        );
    }

    #[test]
    fn help_everywhere() {
        for args in [
            &["swarm", "--help"][..],
            &["swarm", "init", "--help"],
            &["swarm", "join-token", "--help"],
            &["swarm", "leave", "--help"],
            &["node", "ls", "--help"],
            &["node", "inspect", "--help"],
            &["node", "rm", "--help"],
            &["node", "update", "--help"],
            &["network", "--help"],
            &["network", "create", "--help"],
            &["network", "ls", "--help"],
            &["network", "inspect", "--help"],
            &["network", "rm", "--help"],
            &["network", "connect", "--help"],
            &["network", "disconnect", "--help"],
            &["container", "--help"],
            &["container", "run", "--help"],
            &["container", "exec", "--help"],
            &["container", "ls", "--help"],
            &["container", "inspect", "--help"],
            &["container", "rm", "--help"],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::DisplayHelp, "{args:?}");
            assert!(e.to_string().contains("Example"), "{args:?}");
        }
    }
}
