//! `vxnet container ...`: a network namespace as the container, made and
//! attached by the control daemon; the command itself is started here,
//! inside the namespace as `ip netns exec` would start it (with the
//! container's resolv.conf bind-mounted), so its output, exit code and a
//! failure to start reach the caller. A detached
//! command leads its own process group and writes to the container's log.

use crate::dp::CliError;
use crate::output::{Format, Table};
use crate::swarm::{ControlSocket, FormatArg, json, short, write};
use clap::{Args, Subcommand};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use vxnet_control::containers::NetworkRequest;
use vxnet_control::daemon::api::{ContainerView, CtlRequest};

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
  vxnet container run --name c1 --network test-net -- ping -c 3 10.0.1.3
  vxnet container run -d --name c2 --network test-net --network other --ip 10.0.1.9 -- sleep infinity")]
    Run(RunArgs),
    /// Run a command in a container.
    #[command(after_help = "\
Example:
  vxnet container exec c1 -- ip addr")]
    Exec {
        container: String,
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// List this host's containers.
    #[command(
        alias = "list",
        after_help = "\
Examples:
  vxnet container ls
  vxnet container ls --format json"
    )]
    Ls {
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
    /// their addresses.
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
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run in the background and print the container id.
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long)]
    pub name: String,
    /// Networks to join; the first is the primary (default route).
    #[arg(long = "network", required = true, value_name = "NET")]
    pub networks: Vec<String>,
    /// Address on the first network (default: the next free one).
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl RunArgs {
    pub fn request(&self) -> CtlRequest {
        CtlRequest::ContainerCreate {
            name: self.name.clone(),
            networks: self
                .networks
                .iter()
                .enumerate()
                .map(|(i, n)| NetworkRequest {
                    network: n.clone(),
                    ipv4: if i == 0 { self.ip } else { None },
                    ipv6: None,
                    mac: None,
                })
                .collect(),
        }
    }
}

/// `CMD...` set up to start inside the container's network namespace, with
/// its `/etc/netns/NS/resolv.conf` and `/sys`, as `ip netns exec NS` would.
/// Done in the child rather than by running `ip netns exec`, so that a
/// command that cannot start fails `spawn()` with its own error (and is
/// reported here) instead of starting `ip` and dying in the log.
fn in_netns(netns: &str, cmd: &[String]) -> Result<Command, CliError> {
    let Some((program, args)) = cmd.split_first() else {
        return Err(CliError::Failed("no command given".into()));
    };
    let mut c = Command::new(program);
    c.args(args);
    vxnet_dataplane::sys::netns::exec_in(&mut c, netns)
        .map_err(|e| CliError::Failed(format!("cannot enter the container's namespace: {e}")))?;
    Ok(c)
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

/// Leaves nothing behind for a container whose command never started.
fn forget(s: &ControlSocket, v: &ContainerView) {
    let _: Result<ContainerView, _> = s.call(&CtlRequest::ContainerRm {
        container: v.id.clone(),
        force: true,
    });
}

fn run_container(s: &ControlSocket, r: &RunArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    let v: ContainerView = s.call(&r.request())?;
    let mut cmd = match in_netns(&v.netns, &r.command) {
        Ok(c) => c,
        Err(e) => {
            forget(s, &v);
            return Err(e);
        }
    };
    if r.detach {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&v.log_path)
            .map_err(failed(&format!("cannot open the log {}", v.log_path)))?;
        let log2 = log.try_clone().map_err(failed("cannot open the log"))?;
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            forget(s, &v);
            return Err(CliError::Failed(format!(
                "cannot start {}: {e}",
                r.command.first().map_or("the command", String::as_str)
            )));
        }
    };
    let _: ContainerView = s.call(&CtlRequest::ContainerStarted {
        container: v.id.clone(),
        pid: child.id(),
    })?;
    if r.detach {
        write(out, &format!("{}\n", v.id))?;
        return Ok(0);
    }
    let st = child.wait().map_err(failed("waiting for the command"))?;
    Ok(exit_code(st))
}

pub fn run(args: &ContainerArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    let s = &args.socket;
    match &args.command {
        ContainerCommand::Run(r) => run_container(s, r, out),
        ContainerCommand::Exec { container, command } => {
            let v: ContainerView = s.call(&CtlRequest::ContainerInspect {
                container: container.clone(),
            })?;
            let st = in_netns(&v.netns, command)?
                .status()
                .map_err(failed(&format!(
                    "cannot start {}",
                    command.first().map_or("the command", String::as_str)
                )))?;
            Ok(exit_code(st))
        }
        ContainerCommand::Ls { format } => {
            let list: Vec<ContainerView> = s.call(&CtlRequest::ContainerLs)?;
            if format.format == Format::Json {
                json(out, &list)?;
                return Ok(0);
            }
            let mut t = Table::new(&["CONTAINER ID", "NAME", "STATUS", "PID", "NETWORKS"]);
            for c in &list {
                t.row(vec![
                    short(&c.id).to_owned(),
                    c.name.clone(),
                    c.status.clone(),
                    c.pid.map_or("-".into(), |p| p.to_string()),
                    c.networks
                        .iter()
                        .map(|n| format!("{}:{}={}", n.network, n.ifname, n.ipv4))
                        .collect::<Vec<_>>()
                        .join(","),
                ]);
            }
            write(out, &t.render())?;
            Ok(0)
        }
        ContainerCommand::Inspect { containers } => {
            let mut all = Vec::new();
            for c in containers {
                let v: ContainerView = s.call(&CtlRequest::ContainerInspect {
                    container: c.clone(),
                })?;
                all.push(v);
            }
            json(out, &all)?;
            Ok(0)
        }
        ContainerCommand::Rm { force, containers } => {
            for c in containers {
                let _: ContainerView = s.call(&CtlRequest::ContainerRm {
                    container: c.clone(),
                    force: *force,
                })?;
                write(out, &format!("{c}\n"))?;
            }
            Ok(0)
        }
    }
}
