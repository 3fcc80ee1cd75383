//! `vxnet service ...`: services and their tasks, in the shape of
//! `docker service` (managers only).

mod converge;

use crate::dp::CliError;
use crate::output::{Format, Table};
use crate::swarm::{ControlSocket, FormatArg, json, short, write};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use std::io::Write;
use vxnet_api::ctl::{self, PortRequest, ServiceNetworkRequest, ServiceView, TaskView};
use vxnet_api::model::{EndpointMode, PortProtocol, PublishMode, RestartCondition, ServiceMode};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  vxnet service create --name web --replicas 3 --network app -- python3 -m http.server 80
  vxnet service ls
  vxnet service ps web
  vxnet service scale web=5
  vxnet service rm web")]
pub struct ServiceArgs {
    #[command(flatten)]
    pub socket: ControlSocket,
    #[command(subcommand)]
    pub command: ServiceCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Replicated,
    Global,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EndpointModeArg {
    Vip,
    Dnsrr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestartArg {
    Any,
    OnFailure,
    None,
}

impl From<RestartArg> for RestartCondition {
    fn from(r: RestartArg) -> Self {
        match r {
            RestartArg::Any => RestartCondition::Any,
            RestartArg::OnFailure => RestartCondition::OnFailure,
            RestartArg::None => RestartCondition::None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service: tasks running COMMAND, spread over the swarm.
    #[command(after_help = "\
Examples:
  vxnet service create --name web --replicas 3 --network app -- python3 -m http.server 80
  vxnet service create --name web --replicas 2 --network app -p 8080:80 -- python3 -m http.server 80
  vxnet service create --name dns --network app --publish published=5353,target=53,protocol=udp -- ./dns
  vxnet service create --name mon --mode global --network app --publish published=9100,target=9100,mode=host -- ./exporter
  vxnet service create --name db --endpoint-mode dnsrr --network app --env ROLE=db -- sleep infinity

A published port (mode=ingress, the default) answers on every node of the swarm, whether
or not a task runs there, and the task sees the client's own address. mode=host answers
only on the nodes that run a task. Without published=, a port from 30000-32767 is chosen.")]
    Create(CreateArgs),
    /// List services.
    #[command(
        alias = "list",
        after_help = "\
Examples:
  vxnet service ls
  vxnet service ls --format json"
    )]
    Ls {
        /// Only the service ids.
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        format: FormatArg,
    },
    /// List a service's tasks: where they run and how they are.
    #[command(after_help = "\
Example:
  vxnet service ps web")]
    Ps {
        service: String,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Show services in detail (JSON, as `docker service inspect`).
    #[command(after_help = "\
Example:
  vxnet service inspect web")]
    Inspect {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Set the number of tasks of replicated services.
    #[command(after_help = "\
Example:
  vxnet service scale web=5 api=2")]
    Scale {
        /// SERVICE=REPLICAS
        #[arg(required = true, value_parser = parse_scale)]
        targets: Vec<(String, u64)>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Change a service. Replicas, networks and published ports change
    /// without touching the running tasks; a new command, environment or
    /// restart condition replaces them (as does the first port published
    /// through the routing mesh, or the last one removed: the tasks join or
    /// leave the ingress network, which must be their first).
    #[command(after_help = "\
Examples:
  vxnet service update --replicas 4 web
  vxnet service update --network-add app2 --network-rm app web
  vxnet service update --publish-add 8081:81 --publish-rm 80 web
  vxnet service update --env-add MODE=fast web")]
    Update(UpdateArgs),
    /// Remove services and their tasks.
    #[command(
        alias = "remove",
        after_help = "\
Example:
  vxnet service rm web"
    )]
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Print the output of a service's tasks, from whichever node runs them.
    #[command(after_help = "\
Example:
  vxnet service logs --tail 20 web")]
    Logs {
        /// Only the last N lines of each task.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        service: String,
    },
}

/// Whether a command waits for the service to converge.
#[derive(Debug, Args, Clone, Copy)]
pub struct WaitArgs {
    /// Return at once instead of waiting for the tasks to run (or stop).
    #[arg(short, long)]
    pub detach: bool,
}

impl WaitArgs {
    /// Waits (unless detached) with progress on stderr.
    fn wait(&self, socket: &ControlSocket, service: &str) -> Result<(), CliError> {
        if self.detach {
            return Ok(());
        }
        converge::wait(
            socket,
            service,
            converge::DEFAULT_TIMEOUT,
            &mut std::io::stderr(),
        )
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(long)]
    pub name: String,
    /// replicated (default) or global (one task per node).
    #[arg(long, value_enum, default_value_t = ModeArg::Replicated)]
    pub mode: ModeArg,
    /// Tasks of a replicated service.
    #[arg(long, default_value_t = 1, conflicts_with = "mode")]
    pub replicas: u64,
    /// Overlay networks to join (repeat for more).
    #[arg(long = "network", value_name = "NET")]
    pub networks: Vec<String>,
    /// Other names for the service on its networks.
    #[arg(long = "network-alias", value_name = "NAME")]
    pub aliases: Vec<String>,
    /// vip (default: a virtual IP, balanced) or dnsrr (DNS round robin).
    #[arg(long, value_enum, default_value_t = EndpointModeArg::Vip)]
    pub endpoint_mode: EndpointModeArg,
    /// Environment variable, K=V (repeat for more).
    #[arg(short, long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// When a task's command is started again after it ends.
    #[arg(long, value_enum, default_value_t = RestartArg::Any)]
    pub restart_condition: RestartArg,
    /// Publish a port: published=P,target=T[,protocol=tcp|udp][,mode=ingress|host],
    /// or P:T[/udp] (repeat for more).
    #[arg(short = 'p', long = "publish", value_name = "PORT", value_parser = parse_publish)]
    pub publish: Vec<PortRequest>,
    #[command(flatten)]
    pub wait: WaitArgs,
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl CreateArgs {
    pub fn request(&self) -> ctl::ServiceCreate {
        ctl::ServiceCreate {
            name: self.name.clone(),
            mode: match self.mode {
                ModeArg::Replicated => ServiceMode::Replicated {
                    replicas: self.replicas,
                },
                ModeArg::Global => ServiceMode::Global,
            },
            endpoint_mode: match self.endpoint_mode {
                EndpointModeArg::Vip => EndpointMode::Vip,
                EndpointModeArg::Dnsrr => EndpointMode::Dnsrr,
            },
            networks: self
                .networks
                .iter()
                .map(|n| ServiceNetworkRequest {
                    network: n.clone(),
                    aliases: self.aliases.clone(),
                })
                .collect(),
            command: self.command.clone(),
            env: self.env.clone(),
            restart: self.restart_condition.into(),
            ports: self.publish.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Join another network.
    #[arg(long, value_name = "NET")]
    pub network_add: Vec<String>,
    /// Leave a network.
    #[arg(long, value_name = "NET")]
    pub network_rm: Vec<String>,
    /// Add or change an environment variable, K=V.
    #[arg(long, value_name = "K=V")]
    pub env_add: Vec<String>,
    /// Remove an environment variable.
    #[arg(long, value_name = "K")]
    pub env_rm: Vec<String>,
    #[arg(long, value_enum)]
    pub restart_condition: Option<RestartArg>,
    /// Publish a port (as `create --publish`).
    #[arg(long, value_name = "PORT", value_parser = parse_publish)]
    pub publish_add: Vec<PortRequest>,
    /// Unpublish a port: its target port (`80`, `53/udp`), or exactly
    /// (`8080:80`, `published=8080,target=80`).
    #[arg(long, value_name = "PORT", value_parser = parse_publish)]
    pub publish_rm: Vec<PortRequest>,
    #[command(flatten)]
    pub wait: WaitArgs,
    pub service: String,
}

impl UpdateArgs {
    pub fn request(&self) -> ctl::ServiceUpdate {
        ctl::ServiceUpdate {
            service: self.service.clone(),
            replicas: self.replicas,
            network_add: self
                .network_add
                .iter()
                .map(|n| ServiceNetworkRequest {
                    network: n.clone(),
                    aliases: vec![],
                })
                .collect(),
            network_rm: self.network_rm.clone(),
            env_add: self.env_add.clone(),
            env_rm: self.env_rm.clone(),
            command: None,
            restart: self.restart_condition.map(Into::into),
            publish_add: self.publish_add.clone(),
            publish_rm: self.publish_rm.clone(),
        }
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("'{s}' is not a port (1-65535)")),
    }
}

/// Docker's `--publish`: `published=P,target=T[,protocol=tcp|udp][,mode=ingress|host]`
/// or the short form `[P:]T[/tcp|/udp]`.
pub fn parse_publish(s: &str) -> Result<PortRequest, String> {
    let mut r = PortRequest {
        protocol: PortProtocol::Tcp,
        target_port: 0,
        published_port: None,
        publish_mode: PublishMode::Ingress,
    };
    if s.contains('=') {
        for kv in s.split(',') {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("'{kv}' is not KEY=VALUE (in '{s}')"))?;
            match k.trim() {
                "published" => r.published_port = Some(parse_port(v)?),
                "target" => r.target_port = parse_port(v)?,
                "protocol" => {
                    r.protocol = match v {
                        "tcp" => PortProtocol::Tcp,
                        "udp" => PortProtocol::Udp,
                        _ => return Err(format!("protocol '{v}' is not tcp or udp")),
                    }
                }
                "mode" => {
                    r.publish_mode = match v {
                        "ingress" => PublishMode::Ingress,
                        "host" => PublishMode::Host,
                        _ => return Err(format!("mode '{v}' is not ingress or host")),
                    }
                }
                other => {
                    return Err(format!(
                        "unknown key '{other}'; use published=, target=, protocol= and mode="
                    ));
                }
            }
        }
        if r.target_port == 0 {
            return Err(format!(
                "'{s}' has no target=: the port the tasks listen on"
            ));
        }
        return Ok(r);
    }
    let (ports, proto) = match s.split_once('/') {
        Some((p, "tcp")) => (p, PortProtocol::Tcp),
        Some((p, "udp")) => (p, PortProtocol::Udp),
        Some((_, other)) => return Err(format!("protocol '{other}' is not tcp or udp")),
        None => (s, PortProtocol::Tcp),
    };
    r.protocol = proto;
    match ports.split_once(':') {
        Some((p, t)) => {
            r.published_port = Some(parse_port(p)?);
            r.target_port = parse_port(t)?;
        }
        None => r.target_port = parse_port(ports)?,
    }
    Ok(r)
}

/// `SERVICE=REPLICAS`.
pub fn parse_scale(s: &str) -> Result<(String, u64), String> {
    let (name, n) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not SERVICE=REPLICAS"))?;
    let n: u64 = n
        .parse()
        .map_err(|_| format!("'{n}' is not a number of replicas"))?;
    if name.is_empty() {
        return Err(format!("'{s}' has no service name"));
    }
    Ok((name.to_owned(), n))
}

fn mode_text(v: &ServiceView) -> &'static str {
    match v.service.mode {
        ServiceMode::Replicated { .. } => "replicated",
        ServiceMode::Global => "global",
    }
}

/// Docker-shaped `service inspect` output.
pub fn inspect_json(v: &ServiceView) -> serde_json::Value {
    let s = &v.service;
    let mode = match s.mode {
        ServiceMode::Replicated { replicas } => json!({ "Replicated": { "Replicas": replicas } }),
        ServiceMode::Global => json!({ "Global": {} }),
    };
    json!({
        "ID": s.id,
        "CreatedAt": s.created,
        "UpdatedAt": s.updated,
        "Version": { "Index": s.version },
        "Spec": {
            "Name": s.name,
            "Mode": mode,
            "TaskTemplate": {
                "ContainerSpec": { "Command": s.command, "Env": s.env },
                "RestartPolicy": { "Condition": serde_json::to_value(s.restart).unwrap_or_default() },
                "Networks": s.networks.iter().zip(&v.network_names).map(|(n, name)| json!({
                    "Target": n.network,
                    "Name": name,
                    "Aliases": n.aliases,
                })).collect::<Vec<_>>(),
            },
            "EndpointSpec": {
                "Mode": serde_json::to_value(s.endpoint_mode).unwrap_or_default(),
                "Ports": s.ports,
            },
        },
        "Endpoint": {
            "Spec": { "Ports": s.ports },
            "Ports": s.ports,
            "VirtualIPs": v.virtual_ips.iter().map(|x| json!({
                "NetworkID": x.network_id,
                "NetworkName": x.network,
                "Addr": x.addr,
                "Addr6": x.addr6,
            })).collect::<Vec<_>>(),
        },
        "ServiceStatus": { "RunningTasks": v.running, "DesiredTasks": v.desired },
    })
}

fn ps_table(tasks: &[TaskView]) -> String {
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "NODE",
        "DESIRED STATE",
        "CURRENT STATE",
        "ERROR",
    ]);
    for x in tasks {
        let desired = match x.desired {
            vxnet_api::model::DesiredState::Running => "Running",
            vxnet_api::model::DesiredState::Stopped => "Stopped",
            vxnet_api::model::DesiredState::Removed => "Shutdown",
        };
        let mut error = x.error.clone().unwrap_or_default();
        if error.is_empty() {
            if let Some(code) = x.exit_code.filter(|c| *c != 0) {
                error = format!("task: non-zero exit ({code})");
            }
        }
        t.row(vec![
            short(&x.id).to_owned(),
            x.name.clone(),
            x.node.clone(),
            desired.into(),
            x.state.to_string(),
            error,
        ]);
    }
    t.render()
}

pub fn run(args: &ServiceArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let s = &args.socket;
    match &args.command {
        ServiceCommand::Create(c) => {
            let v = s.call(c.request())?;
            write(out, &format!("{}\n", v.service.id))?;
            c.wait.wait(s, &v.service.name)
        }
        ServiceCommand::Ls { quiet, format } => {
            let list = s.call(ctl::ServiceLs {})?;
            if *quiet {
                for v in &list {
                    write(out, &format!("{}\n", v.service.id))?;
                }
                return Ok(());
            }
            if format.format == Format::Json {
                return json(out, &list);
            }
            let mut t = Table::new(&["ID", "NAME", "MODE", "REPLICAS", "PORTS", "COMMAND"]);
            for v in &list {
                // Docker's `*:8080->80/tcp`.
                let ports: Vec<String> = v
                    .service
                    .ports
                    .iter()
                    .map(|p| format!("*:{}->{}/{}", p.published_port, p.target_port, p.protocol))
                    .collect();
                t.row(vec![
                    short(&v.service.id).to_owned(),
                    v.service.name.clone(),
                    mode_text(v).into(),
                    format!("{}/{}", v.running, v.desired),
                    ports.join(", "),
                    v.service.command.join(" "),
                ]);
            }
            write(out, &t.render())
        }
        ServiceCommand::Ps { service, format } => {
            let tasks = s.call(ctl::ServicePs {
                service: service.clone(),
            })?;
            if format.format == Format::Json {
                return json(out, &tasks);
            }
            write(out, &ps_table(&tasks))
        }
        ServiceCommand::Inspect { services } => {
            let mut all = Vec::new();
            for name in services {
                let v = s.call(ctl::ServiceInspect {
                    service: name.clone(),
                })?;
                all.push(inspect_json(&v));
            }
            json(out, &all)
        }
        ServiceCommand::Scale { targets, wait } => {
            for (name, n) in targets {
                s.call(ctl::ServiceScale {
                    service: name.clone(),
                    replicas: *n,
                })?;
                write(out, &format!("{name} scaled to {n}\n"))?;
            }
            for (name, _) in targets {
                wait.wait(s, name)?;
            }
            Ok(())
        }
        ServiceCommand::Update(u) => {
            s.call(u.request())?;
            write(out, &format!("{}\n", u.service))?;
            u.wait.wait(s, &u.service)
        }
        ServiceCommand::Rm { services } => {
            for name in services {
                s.call(ctl::ServiceRm {
                    service: name.clone(),
                })?;
                write(out, &format!("{name}\n"))?;
            }
            Ok(())
        }
        ServiceCommand::Logs { tail, service } => {
            let logs = s.call(ctl::ServiceLogs {
                service: service.clone(),
                tail: *tail,
            })?;
            for l in &logs {
                if let Some(e) = &l.error {
                    eprintln!("{}@{}: {e}", l.task, l.node);
                }
                for line in l.text.lines() {
                    write(out, &format!("{}@{}    | {line}\n", l.task, l.node))?;
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vxnet").chain(args.iter().copied()))
    }

    fn service(args: &[&str]) -> ServiceCommand {
        match parse(args).unwrap().command {
            Command::Service(s) => s.command,
            other => panic!("not service: {other:?}"),
        }
    }

    #[test]
    fn publish_forms_are_dockers() {
        let r = parse_publish("8080:80").unwrap();
        assert_eq!(
            (r.published_port, r.target_port, r.protocol, r.publish_mode),
            (Some(8080), 80, PortProtocol::Tcp, PublishMode::Ingress)
        );
        let r = parse_publish("53/udp").unwrap();
        assert_eq!(
            (r.published_port, r.target_port, r.protocol),
            (None, 53, PortProtocol::Udp)
        );
        let r = parse_publish("published=9100,target=9100,protocol=udp,mode=host").unwrap();
        assert_eq!(
            (r.published_port, r.protocol, r.publish_mode),
            (Some(9100), PortProtocol::Udp, PublishMode::Host)
        );
        for (bad, want) in [
            ("8080:0", "not a port"),
            ("70000:80", "not a port"),
            ("8080:80/sctp", "not tcp or udp"),
            ("published=8080", "no target="),
            ("published=8080,target=80,mode=mesh", "not ingress or host"),
            ("src=1,target=2", "unknown key 'src'"),
            ("published8080", "not a port"),
        ] {
            let e = parse_publish(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
        let ServiceCommand::Create(c) = service(&[
            "service",
            "create",
            "--name",
            "web",
            "-p",
            "8080:80",
            "--publish",
            "published=5353,target=53,protocol=udp",
            "--",
            "true",
        ]) else {
            panic!("not create");
        };
        assert_eq!(c.request().ports.len(), 2);
        let ServiceCommand::Update(u) = service(&[
            "service",
            "update",
            "--publish-add",
            "8081:81",
            "--publish-rm",
            "80",
            "web",
        ]) else {
            panic!("not update");
        };
        let r = u.request();
        assert_eq!(r.publish_add[0].published_port, Some(8081));
        assert_eq!(
            (r.publish_rm[0].target_port, r.publish_rm[0].published_port),
            (80, None)
        );
        assert!(
            parse(&[
                "service", "create", "--name", "w", "-p", "x:80", "--", "true"
            ])
            .is_err()
        );
    }

    #[test]
    fn create_forms() {
        let ServiceCommand::Create(c) = service(&[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "3",
            "--network",
            "a",
            "--network",
            "b",
            "--network-alias",
            "www",
            "--endpoint-mode",
            "dnsrr",
            "--env",
            "K=V",
            "--restart-condition",
            "on-failure",
            "--",
            "python3",
            "-m",
            "http.server",
        ]) else {
            panic!("not create")
        };
        let r = c.request();
        assert_eq!(r.mode, ServiceMode::Replicated { replicas: 3 });
        assert_eq!(r.endpoint_mode, EndpointMode::Dnsrr);
        assert_eq!(r.networks.len(), 2);
        assert_eq!(r.networks[1].aliases, ["www"]);
        assert_eq!(r.restart, RestartCondition::OnFailure);
        assert_eq!(r.command, ["python3", "-m", "http.server"]);
        let ServiceCommand::Create(g) = service(&[
            "service", "create", "--name", "mon", "--mode", "global", "--", "sleep", "9",
        ]) else {
            panic!("not create")
        };
        assert_eq!(g.request().mode, ServiceMode::Global);
        // --replicas with --mode, no command, a bad restart condition.
        assert!(
            parse(&[
                "service",
                "create",
                "--name",
                "x",
                "--mode",
                "global",
                "--replicas",
                "2",
                "--",
                "true"
            ])
            .is_err()
        );
        assert!(parse(&["service", "create", "--name", "x"]).is_err());
        assert_eq!(
            parse(&[
                "service",
                "create",
                "--name",
                "x",
                "--restart-condition",
                "sometimes",
                "--",
                "true"
            ])
            .unwrap_err()
            .kind(),
            ErrorKind::InvalidValue
        );
    }

    #[test]
    fn scale_and_update() {
        let ServiceCommand::Scale { targets, wait } =
            service(&["service", "scale", "web=5", "api=0"])
        else {
            panic!("not scale")
        };
        assert_eq!(targets, [("web".to_owned(), 5), ("api".to_owned(), 0)]);
        assert!(!wait.detach, "waits for convergence by default");
        let ServiceCommand::Scale { wait, .. } = service(&["service", "scale", "-d", "web=1"])
        else {
            panic!("not scale")
        };
        assert!(wait.detach);
        assert!(parse(&["service", "scale", "web"]).is_err());
        assert!(parse(&["service", "scale", "web=x"]).is_err());
        let ServiceCommand::Update(u) = service(&[
            "service",
            "update",
            "--network-add",
            "b",
            "--network-rm",
            "a",
            "--env-add",
            "A=1",
            "web",
        ]) else {
            panic!("not update")
        };
        let r = u.request();
        assert_eq!(r.network_add[0].network, "b");
        assert_eq!(r.network_rm, ["a"]);
        assert_eq!(r.env_add, ["A=1"]);
        assert_eq!(r.replicas, None);
    }

    #[test]
    fn help_everywhere() {
        for args in [
            &["service", "--help"][..],
            &["service", "create", "--help"],
            &["service", "ls", "--help"],
            &["service", "ps", "--help"],
            &["service", "inspect", "--help"],
            &["service", "scale", "--help"],
            &["service", "update", "--help"],
            &["service", "rm", "--help"],
            &["service", "logs", "--help"],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::DisplayHelp, "{args:?}");
            assert!(e.to_string().contains("Example"), "{args:?}");
        }
    }
}
