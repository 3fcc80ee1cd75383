//! `vxnet container ...`: a network namespace as the container, made and
//! attached by the control daemon.
//!
//! A detached command (`run -d`) is started by the daemon, which answers
//! only once it runs (a command that cannot start is refused, and nothing
//! is left behind) and keeps its output in the container's log. A
//! foreground command is started here with `ip netns exec` (which also
//! bind-mounts the container's resolv.conf), so its output and exit code
//! reach the caller; `--rm` removes the container when it ends.

use crate::dp::CliError;
use crate::output::{Format, Table};
use crate::swarm::{ControlSocket, FormatArg, json, short, write};
use clap::{Args, Subcommand};
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use vxnet_api::ctl::{self, ContainerState, EndpointRequest};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  vxnet container run -d --name c1 --network test-net -- sleep infinity
  vxnet container exec c1 -- ping -c 2 10.0.1.3
  vxnet container ls
  vxnet container rm -f c1")]
pub struct ContainerArgs {
    #[command(flatten)]
    pub socket: ControlSocket,
    #[command(subcommand)]
    pub command: ContainerCommand,
}

#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// Create a container (a network namespace) on overlay networks and run
    /// a command in it.
    #[command(after_help = "\
Examples:
  vxnet container run --rm --name c1 --network test-net -- ping -c 3 10.0.1.3
  vxnet container run -d --name c2 --network test-net --network other --ip 10.0.1.9 -- sleep infinity")]
    Run(RunArgs),
    /// Run a command in a running container of this host.
    #[command(after_help = "\
Example:
  vxnet container exec c1 -- ip addr")]
    Exec {
        container: String,
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// List this host's containers (running ones; -a for all).
    #[command(
        alias = "list",
        alias = "ps",
        after_help = "\
Examples:
  vxnet container ls
  vxnet container ls -a --format json"
    )]
    Ls {
        /// Stopped and exited containers too.
        #[arg(short, long)]
        all: bool,
        /// Only the container ids.
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Show containers as JSON.
    #[command(after_help = "\
Example:
  vxnet container inspect c1")]
    Inspect {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers: detach them, delete their namespaces, release
    /// their addresses. On a manager, a container of another node is
    /// removed by that node.
    #[command(
        alias = "remove",
        after_help = "\
Example:
  vxnet container rm -f c1 c2"
    )]
    Rm {
        /// Kill a running command first.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop containers: SIGTERM, then SIGKILL after the grace period; their
    /// endpoints leave the network, their addresses are kept.
    #[command(after_help = "\
Example:
  vxnet container stop -t 2 c1")]
    Stop {
        /// Seconds to wait before SIGKILL.
        #[arg(short = 't', long = "time", value_name = "SECONDS")]
        time: Option<u64>,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Start stopped containers again.
    #[command(after_help = "\
Example:
  vxnet container start c1")]
    Start {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Print a detached container's output.
    #[command(after_help = "\
Example:
  vxnet container logs --tail 20 c1")]
    Logs {
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        container: String,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run in the background and print the container id.
    #[arg(short, long, conflicts_with = "rm")]
    pub detach: bool,
    /// Remove the container when its (foreground) command ends.
    #[arg(long)]
    pub rm: bool,
    #[arg(long)]
    pub name: String,
    /// Networks to join; the first is the primary (default route).
    #[arg(long = "network", required = true, value_name = "NET")]
    pub networks: Vec<String>,
    /// Address on the first network (default: the next free one).
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    /// IPv6 address on the first network.
    #[arg(long)]
    pub ip6: Option<Ipv6Addr>,
    /// Other names for the container on its first network.
    #[arg(long = "network-alias", value_name = "NAME")]
    pub aliases: Vec<String>,
    /// Environment variable for the command, K=V (repeat for more).
    #[arg(short, long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<String>,
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

fn parse_env(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() && !k.contains(char::is_whitespace) => Ok(s.to_owned()),
        _ => Err(format!("'{s}' is not K=V")),
    }
}

impl RunArgs {
    /// The daemon request: with -d the daemon runs the command.
    pub fn request(&self) -> ctl::ContainerCreate {
        ctl::ContainerCreate {
            name: self.name.clone(),
            networks: self
                .networks
                .iter()
                .enumerate()
                .map(|(i, n)| EndpointRequest {
                    network: n.clone(),
                    ipv4: if i == 0 { self.ip } else { None },
                    ipv6: if i == 0 { self.ip6 } else { None },
                    mac: None,
                    aliases: if i == 0 {
                        self.aliases.clone()
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
            command: if self.detach {
                self.command.clone()
            } else {
                Vec::new()
            },
            env: self.env.clone(),
        }
    }
}

/// `ip netns exec NS CMD...`.
fn in_netns(netns: &str, cmd: &[String]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns]).args(cmd);
    c
}

/// The shell's convention: the exit code, or 128 + the signal.
fn exit_code(st: std::process::ExitStatus) -> u8 {
    match (st.code(), st.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(s)) => u8::try_from(128 + s).unwrap_or(1),
        _ => 1,
    }
}

fn failed(what: &str) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |e| CliError::Failed(format!("{what}: {e}"))
}

fn run_container(s: &ControlSocket, r: &RunArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    let v = s.call(r.request())?;
    if r.detach {
        write(out, &format!("{}\n", v.id))?;
        return Ok(0);
    }
    let remove = |s: &ControlSocket| {
        s.call(ctl::ContainerRm {
            container: v.id.clone(),
            force: true,
        })
    };
    let mut child = match in_netns(&v.netns, &r.command).spawn() {
        Ok(c) => c,
        Err(e) => {
            // Leave nothing behind for a command that never started.
            let _ = remove(s);
            return Err(CliError::Failed(format!("cannot start the command: {e}")));
        }
    };
    s.call(ctl::ContainerStarted {
        container: v.id.clone(),
        pid: child.id(),
    })?;
    let st = child.wait().map_err(failed("waiting for the command"))?;
    if r.rm {
        remove(s)?;
    }
    Ok(exit_code(st))
}

pub fn run(args: &ContainerArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    let s = &args.socket;
    match &args.command {
        ContainerCommand::Run(r) => run_container(s, r, out),
        ContainerCommand::Exec { container, command } => {
            let v = s.call(ctl::ContainerInspect {
                container: container.clone(),
            })?;
            // Like `docker exec`: only into a running container, and only
            // on its own host (its namespace is there, nowhere else).
            if v.state == ContainerState::Remote {
                return Err(CliError::Failed(format!(
                    "container {} runs on node {}, not on this host: run the command there",
                    v.name, v.node
                )));
            }
            if let Some(why) = v.not_running() {
                return Err(CliError::Failed(why));
            }
            let st = in_netns(&v.netns, command)
                .status()
                .map_err(failed("cannot run ip netns exec"))?;
            Ok(exit_code(st))
        }
        ContainerCommand::Ls { all, quiet, format } => {
            let list = s.call(ctl::ContainerLs { all: *all })?;
            if *quiet {
                for c in &list {
                    write(out, &format!("{}\n", short(&c.id)))?;
                }
                return Ok(0);
            }
            if format.format == Format::Json {
                json(out, &list)?;
                return Ok(0);
            }
            let mut t = Table::new(&["CONTAINER ID", "NAME", "STATUS", "PID", "NETWORKS"]);
            for c in &list {
                t.row(vec![
                    short(&c.id).to_owned(),
                    c.name.clone(),
                    c.status(),
                    c.pid.map_or("-".into(), |p| p.to_string()),
                    networks_cell(&c.networks),
                ]);
            }
            write(out, &t.render())?;
            Ok(0)
        }
        ContainerCommand::Inspect { containers } => {
            let mut all = Vec::new();
            for c in containers {
                all.push(s.call(ctl::ContainerInspect {
                    container: c.clone(),
                })?);
            }
            json(out, &all)?;
            Ok(0)
        }
        ContainerCommand::Rm { force, containers } => {
            for c in containers {
                s.call(ctl::ContainerRm {
                    container: c.clone(),
                    force: *force,
                })?;
                write(out, &format!("{c}\n"))?;
            }
            Ok(0)
        }
        ContainerCommand::Stop { time, containers } => {
            for c in containers {
                s.call(ctl::ContainerStop {
                    container: c.clone(),
                    timeout_secs: *time,
                })?;
                write(out, &format!("{c}\n"))?;
            }
            Ok(0)
        }
        ContainerCommand::Start { containers } => {
            for c in containers {
                s.call(ctl::ContainerStart {
                    container: c.clone(),
                })?;
                write(out, &format!("{c}\n"))?;
            }
            Ok(0)
        }
        ContainerCommand::Logs { tail, container } => {
            let l = s.call(ctl::ContainerLogs {
                container: container.clone(),
                tail: *tail,
            })?;
            write(out, &l.text)?;
            Ok(0)
        }
    }
}

/// `container ls`'s NETWORKS cell: `NETWORK:IFNAME=IPV4[,IPV6]` per
/// network, networks separated by a space.
fn networks_cell(networks: &[vxnet_api::ctl::AttachmentView]) -> String {
    networks
        .iter()
        .map(|n| match n.ipv6 {
            Some(v6) => format!("{}:{}={},{v6}", n.network, n.ifname, n.ipv4),
            None => format!("{}:{}={}", n.network, n.ifname, n.ipv4),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_networks_cell_shows_both_families() {
        let v4 = vxnet_api::ctl::AttachmentView {
            network_id: "n1".into(),
            network: "front".into(),
            ifname: "eth0".into(),
            ipv4: "10.0.1.3".parse().unwrap(),
            prefix: 24,
            ipv6: None,
            mac: "02:42:0a:00:01:03".parse().unwrap(),
            gateway: "10.0.1.1".parse().unwrap(),
            mtu: 1450,
            aliases: Vec::new(),
        };
        let dual = vxnet_api::ctl::AttachmentView {
            network: "dual".into(),
            ifname: "eth1".into(),
            ipv4: "10.96.0.2".parse().unwrap(),
            ipv6: Some("fd96::2".parse().unwrap()),
            ..v4.clone()
        };
        assert_eq!(
            networks_cell(&[v4, dual]),
            "front:eth0=10.0.1.3 dual:eth1=10.96.0.2,fd96::2"
        );
        assert_eq!(networks_cell(&[]), "");
    }
}
