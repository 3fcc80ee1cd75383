//! `vxnet swarm ...` and `vxnet node ...`: the swarm as the control daemon
//! keeps it. Also the pieces the other control-plane commands share: the
//! daemon's socket option and the call helper.

use crate::dp::CliError;
use crate::output::{Format, Table};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use vxnet_api::Call;
use vxnet_api::client::{Client, Server, transport_error};
use vxnet_api::ctl::{self, CtlRequest, DEFAULT_SOCKET, JoinTokenView, MANAGEMENT_PORT, NodeView};
use vxnet_api::model::{Availability, Role};

/// The control daemon's socket, accepted by every control-plane command.
#[derive(Debug, Args, Clone)]
pub struct ControlSocket {
    /// Path of the control daemon's socket.
    #[arg(long = "control-socket", global = true, env = "VXNET_CONTROL_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub path: PathBuf,
}

/// How long the CLI waits for the control daemon: creating a container or
/// leaving a swarm waits for the host to be set up.
const CONTROL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

impl ControlSocket {
    /// Sends one request and decodes its reply; a refusal becomes
    /// [`CliError::Api`] with the daemon's words and code.
    pub fn call<C: Call<Request = CtlRequest>>(&self, c: C) -> Result<C::Reply, CliError> {
        let mut client = Client::connect(Server::Control, &self.path).map_err(transport_error)?;
        client
            .set_timeout(CONTROL_TIMEOUT)
            .map_err(transport_error)?;
        Ok(client.call(c)?)
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
        /// role=manager or role=worker.
        #[arg(short = 'f', long, value_name = "KEY=VALUE")]
        filter: Vec<String>,
        /// Only the node ids.
        #[arg(short, long)]
        quiet: bool,
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
        "PublicKey": n.public_key.to_string(),
    });
    if let Some(r) = &n.down_reason {
        out["Status"]["Message"] = serde_json::json!(r);
    }
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

pub fn join_command(t: &JoinTokenView) -> String {
    format!("vxnet swarm join --token {} {}", t.token, t.manager_addr)
}

/// `node ls --filter`: role=manager|worker.
pub fn parse_node_filter(filters: &[String]) -> Result<Option<Role>, CliError> {
    let mut role = None;
    for f in filters {
        role = Some(match f.split_once('=') {
            Some(("role", "manager")) => Role::Manager,
            Some(("role", "worker")) => Role::Worker,
            _ => {
                return Err(CliError::Usage(format!(
                    "unknown filter '{f}'; use role=manager or role=worker"
                )));
            }
        });
    }
    Ok(role)
}

pub fn run_swarm(args: &SwarmArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let s = &args.socket;
    match &args.command {
        SwarmCommand::Init {
            advertise_addr,
            data_path_addr,
            data_path_port,
        } => {
            let v = s.call(ctl::SwarmInit {
                advertise_addr: *advertise_addr,
                data_path_addr: *data_path_addr,
                data_path_port: *data_path_port,
            })?;
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
        SwarmCommand::Join {
            token,
            advertise_addr,
            data_path_addr,
            remote,
        } => {
            let v = s.call(ctl::SwarmJoin {
                token: token.clone(),
                remote: remote.clone(),
                advertise_addr: *advertise_addr,
                data_path_addr: *data_path_addr,
            })?;
            write(out, &format!("This node joined a swarm as a {}.\n", v.role))
        }
        SwarmCommand::JoinToken {
            quiet,
            rotate,
            role,
        } => {
            let t = s.call(ctl::JoinToken {
                role: (*role).into(),
                rotate: *rotate,
            })?;
            if *quiet {
                return write(out, &format!("{}\n", t.token));
            }
            let role = t.role;
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
        SwarmCommand::Leave { force } => {
            let v = s.call(ctl::SwarmLeave { force: *force })?;
            if !v.removed_containers.is_empty() {
                write(
                    out,
                    &format!("Removed containers: {}\n", v.removed_containers.join(", ")),
                )?;
            }
            write(out, "Node left the swarm.\n")
        }
    }
}

pub fn run_node(args: &NodeArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let s = &args.socket;
    match &args.command {
        NodeCommand::Ls {
            filter,
            quiet,
            format,
        } => {
            let role = parse_node_filter(filter)?;
            let nodes = s.call(ctl::NodeLs { role })?;
            if *quiet {
                for n in &nodes {
                    write(out, &format!("{}\n", n.node.id))?;
                }
                return Ok(());
            }
            if format.format == Format::Json {
                return json(out, &nodes);
            }
            let mut t = Table::new(&["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"]);
            for n in &nodes {
                let manager = if n.node.role == Role::Manager {
                    "Leader"
                } else {
                    ""
                };
                t.row(vec![
                    format!("{}{}", n.node.id, if n.is_self { " *" } else { "" }),
                    n.node.hostname.clone(),
                    capitalize(&word(n.node.status)),
                    capitalize(&word(n.node.availability)),
                    manager.into(),
                ]);
            }
            write(out, &t.render())
        }
        NodeCommand::Inspect { nodes } => {
            let mut all = Vec::new();
            for n in nodes {
                let v = s.call(ctl::NodeInspect { node: n.clone() })?;
                all.push(node_json(&v));
            }
            json(out, &all)
        }
        NodeCommand::Rm { force, nodes } => {
            for n in nodes {
                s.call(ctl::NodeRm {
                    node: n.clone(),
                    force: *force,
                })?;
                write(out, &format!("{n}\n"))?;
            }
            Ok(())
        }
        NodeCommand::Update { availability, node } => {
            s.call(ctl::NodeUpdate {
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
mod tests;
