//! `vxnet network ...`: overlay networks as the control daemon keeps them,
//! in the shape of `docker network`.

use crate::dp::CliError;
use crate::output::{Format, Table};
use crate::swarm::{ControlSocket, FormatArg, json, short, write};
use clap::{Args, Subcommand};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use vxnet_control::containers::NetworkRequest;
use vxnet_control::daemon::api::{ContainerView, CtlRequest, NetworkInspectView};
use vxnet_control::model::Network;
use vxnet_control::networks::{CreateNetwork, NetworkFilter};

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  vxnet network create -d overlay --attachable test-net
  vxnet network ls
  vxnet network inspect test-net
  vxnet network rm test-net")]
pub struct NetworkArgs {
    #[command(flatten)]
    pub socket: ControlSocket,
    #[command(subcommand)]
    pub command: NetworkCommand,
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create an overlay network.
    #[command(after_help = "\
Examples:
  vxnet network create -d overlay --attachable test-net
  vxnet network create -d overlay --attachable --opt encrypted --subnet 10.9.0.0/24 secure-net
  vxnet network create -d overlay --opt mtu=1400 --ip-range 10.9.0.128/25 --subnet 10.9.0.0/24 n2")]
    Create(CreateArgs),
    /// List networks.
    #[command(
        alias = "list",
        after_help = "\
Examples:
  vxnet network ls
  vxnet network ls --filter name=test --format json"
    )]
    Ls {
        /// name=SUBSTRING or id=PREFIX.
        #[arg(long, value_name = "KEY=VALUE")]
        filter: Vec<String>,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Show a network with its containers (on this host) and peers (hosts).
    #[command(after_help = "\
Example:
  vxnet network inspect test-net")]
    Inspect {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks (refused while containers use them).
    #[command(
        alias = "remove",
        after_help = "\
Example:
  vxnet network rm test-net"
    )]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Attach a running container to another network, or another
    /// runtime's container (by its namespace or its veth) under NAME.
    #[command(after_help = "\
Examples:
  vxnet network connect --ip 10.0.1.9 test-net c1
  vxnet network connect --netns /proc/4242/ns/net test-net web
  vxnet network connect --veth veth1a2b3c --mac 02:42:ac:11:00:02 test-net db")]
    Connect {
        /// Address on that network (default: the next free one).
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// Another runtime's container: its network namespace (a name
        /// under /run/netns or a path such as /proc/PID/ns/net).
        #[arg(long, value_name = "PATH", conflicts_with = "veth")]
        netns: Option<String>,
        /// Another runtime's container: the host side of its veth, bridged
        /// to the network (needs --mac).
        #[arg(long, value_name = "IF", requires = "mac")]
        veth: Option<String>,
        /// The endpoint's MAC (default: derived from its address; for
        /// --veth the MAC of the container's end).
        #[arg(long, value_name = "MAC")]
        mac: Option<String>,
        network: String,
        container: String,
    },
    /// Detach a container from a network.
    #[command(after_help = "\
Example:
  vxnet network disconnect test-net c1")]
    Disconnect { network: String, container: String },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Network driver (only overlay).
    #[arg(short = 'd', long, default_value = "overlay")]
    pub driver: String,
    /// Standalone containers may join.
    #[arg(long)]
    pub attachable: bool,
    /// Make this the swarm's ingress network.
    #[arg(long)]
    pub ingress: bool,
    /// Driver options: encrypted, mtu=N.
    #[arg(short = 'o', long = "opt", value_name = "KEY[=VALUE]")]
    pub opts: Vec<String>,
    #[arg(long, value_name = "CIDR")]
    pub subnet: Vec<ipnet::IpNet>,
    #[arg(long, value_name = "IP")]
    pub gateway: Vec<IpAddr>,
    #[arg(long, value_name = "CIDR")]
    pub ip_range: Vec<ipnet::IpNet>,
    pub name: String,
}

impl CreateArgs {
    pub fn request(&self) -> CreateNetwork {
        let options: BTreeMap<String, String> = self
            .opts
            .iter()
            .map(|o| match o.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (o.clone(), String::new()),
            })
            .collect();
        CreateNetwork {
            name: self.name.clone(),
            driver: Some(self.driver.clone()),
            attachable: self.attachable,
            ingress: self.ingress,
            options,
            subnets: self.subnet.clone(),
            gateways: self.gateway.clone(),
            ip_ranges: self.ip_range.clone(),
        }
    }
}

pub fn parse_filter(filters: &[String]) -> Result<NetworkFilter, CliError> {
    let mut f = NetworkFilter::default();
    for x in filters {
        match x.split_once('=') {
            Some(("name", v)) => f.name = Some(v.to_owned()),
            Some(("id", v)) => f.id = Some(v.to_owned()),
            _ => {
                return Err(CliError::Usage(format!(
                    "unknown filter '{x}'; use name=SUBSTRING or id=PREFIX"
                )));
            }
        }
    }
    Ok(f)
}

/// Docker-shaped inspect output: `Containers` are this host's endpoints.
pub fn inspect_json(v: &NetworkInspectView) -> serde_json::Value {
    let n = &v.details.network;
    let containers: serde_json::Map<String, serde_json::Value> = v
        .details
        .containers
        .iter()
        .filter(|c| v.self_node.as_ref().is_none_or(|me| *me == c.node))
        .map(|c| {
            (
                c.container_id.clone(),
                json!({
                    "Name": c.name,
                    "MacAddress": c.mac,
                    "IPv4Address": format!("{}/{}", c.ipv4, n.ipv4.subnet.prefix_len()),
                    "IPv6Address": c.ipv6.map(|a| a.to_string()).unwrap_or_default(),
                }),
            )
        })
        .collect();
    let mut config = vec![json!({
        "Subnet": n.ipv4.subnet.to_string(),
        "Gateway": n.ipv4.gateway.to_string(),
        "IPRange": n.ipv4.ip_range.map(|r| r.to_string()).unwrap_or_default(),
    })];
    if let Some(c) = &n.ipv6 {
        config.push(json!({
            "Subnet": c.subnet.to_string(),
            "Gateway": c.gateway.to_string(),
            "IPRange": c.ip_range.map(|r| r.to_string()).unwrap_or_default(),
        }));
    }
    let mut options = serde_json::Map::new();
    options.insert(
        "com.docker.network.driver.overlay.vxlanid_list".into(),
        json!(n.vni.to_string()),
    );
    options.insert(
        "com.docker.network.driver.mtu".into(),
        json!(n.mtu.to_string()),
    );
    if n.encrypted {
        options.insert("encrypted".into(), json!(""));
    }
    json!({
        "Name": n.name,
        "Id": n.id,
        "Created": n.created,
        "Scope": "swarm",
        "Driver": n.driver,
        "IPAM": { "Driver": "default", "Config": config },
        "Attachable": n.attachable,
        "Ingress": n.ingress,
        "Containers": containers,
        "Options": options,
        "Peers": v.details.peers.iter().map(|p| json!({
            "Name": p.hostname,
            "IP": p.data_path_addr.to_string(),
        })).collect::<Vec<_>>(),
    })
}

/// The daemon request of `network connect`.
pub fn connect_request(cmd: &NetworkCommand) -> Result<CtlRequest, CliError> {
    let NetworkCommand::Connect {
        ip,
        netns,
        veth,
        mac,
        network,
        container,
    } = cmd
    else {
        return Err(CliError::Usage("not a connect command".into()));
    };
    Ok(CtlRequest::NetworkConnect {
        container: container.clone(),
        network: NetworkRequest {
            network: network.clone(),
            ipv4: *ip,
            ipv6: None,
            mac: mac.clone(),
        },
        netns: netns.clone(),
        veth: veth.clone(),
    })
}

pub fn run(args: &NetworkArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let s = &args.socket;
    match &args.command {
        NetworkCommand::Create(c) => {
            let n: Network = s.call(&CtlRequest::NetworkCreate(c.request()))?;
            write(out, &format!("{}\n", n.id))
        }
        NetworkCommand::Ls { filter, format } => {
            let filter = parse_filter(filter)?;
            let nets: Vec<Network> = s.call(&CtlRequest::NetworkLs { filter })?;
            if format.format == Format::Json {
                return json(out, &nets);
            }
            let mut t = Table::new(&[
                "NETWORK ID",
                "NAME",
                "DRIVER",
                "SCOPE",
                "VNI",
                "SUBNET",
                "ATTACHABLE",
                "ENCRYPTED",
            ]);
            for n in &nets {
                t.row(vec![
                    short(&n.id).to_owned(),
                    n.name.clone(),
                    n.driver.clone(),
                    "swarm".into(),
                    n.vni.to_string(),
                    n.ipv4.subnet.to_string(),
                    n.attachable.to_string(),
                    n.encrypted.to_string(),
                ]);
            }
            write(out, &t.render())
        }
        NetworkCommand::Inspect { networks } => {
            let mut all = Vec::new();
            for n in networks {
                let v: NetworkInspectView =
                    s.call(&CtlRequest::NetworkInspect { network: n.clone() })?;
                all.push(inspect_json(&v));
            }
            json(out, &all)
        }
        NetworkCommand::Rm { networks } => {
            for n in networks {
                let _: Network = s.call(&CtlRequest::NetworkRm { network: n.clone() })?;
                write(out, &format!("{n}\n"))?;
            }
            Ok(())
        }
        NetworkCommand::Connect { .. } => {
            let _: ContainerView = s.call(&connect_request(&args.command)?)?;
            Ok(())
        }
        NetworkCommand::Disconnect { network, container } => {
            let _: ContainerView = s.call(&CtlRequest::NetworkDisconnect {
                container: container.clone(),
                network: network.clone(),
            })?;
            Ok(())
        }
    }
}
