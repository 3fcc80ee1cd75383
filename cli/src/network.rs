//! `vxnet network ...`: overlay networks as the control daemon keeps them,
//! in the shape of `docker network`.

use crate::dp::CliError;
use crate::output::{Format, Table};
use crate::swarm::{ControlSocket, FormatArg, json, short, write};
use clap::{Args, Subcommand};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use vxnet_api::MacAddr;
use vxnet_api::ctl::{
    self, EndpointRequest, External, NetworkCreate, NetworkFilter, NetworkInspectView,
};
use vxnet_api::model::Driver;

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
        /// name=SUBSTRING, id=PREFIX or driver=overlay.
        #[arg(short = 'f', long, value_name = "KEY=VALUE")]
        filter: Vec<String>,
        /// Only the network ids.
        #[arg(short, long)]
        quiet: bool,
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
        /// IPv6 address on that network (if it has an IPv6 subnet).
        #[arg(long)]
        ip6: Option<Ipv6Addr>,
        /// Another name for the container on this network (repeat for
        /// more).
        #[arg(long = "alias", value_name = "NAME")]
        aliases: Vec<String>,
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
        #[arg(long, value_name = "MAC", value_parser = crate::dp::parse_unicast_mac)]
        mac: Option<MacAddr>,
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
    #[arg(short = 'd', long, default_value = "overlay", value_parser = parse_driver)]
    pub driver: Driver,
    /// Standalone containers may join.
    #[arg(long)]
    pub attachable: bool,
    /// Make this the swarm's ingress network.
    #[arg(long)]
    pub ingress: bool,
    /// No access to the outside (no egress, no published ports).
    #[arg(long)]
    pub internal: bool,
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
    pub fn request(&self) -> NetworkCreate {
        let options: BTreeMap<String, String> = self
            .opts
            .iter()
            .map(|o| match o.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (o.clone(), String::new()),
            })
            .collect();
        NetworkCreate {
            name: self.name.clone(),
            driver: self.driver,
            attachable: self.attachable,
            ingress: self.ingress,
            internal: self.internal,
            options,
            subnets: self.subnet.clone(),
            gateways: self.gateway.clone(),
            ip_ranges: self.ip_range.clone(),
        }
    }
}

fn parse_driver(s: &str) -> Result<Driver, String> {
    match s {
        "overlay" => Ok(Driver::Overlay),
        other => Err(format!(
            "network driver '{other}' is not supported; vxnet networks use `-d overlay`"
        )),
    }
}

pub fn parse_filter(filters: &[String]) -> Result<NetworkFilter, CliError> {
    let mut f = NetworkFilter::default();
    for x in filters {
        match x.split_once('=') {
            Some(("name", v)) => f.name = Some(v.to_owned()),
            Some(("id", v)) => f.id = Some(v.to_owned()),
            Some(("driver", v)) => f.driver = Some(parse_driver(v).map_err(CliError::Usage)?),
            _ => {
                return Err(CliError::Usage(format!(
                    "unknown filter '{x}'; use name=SUBSTRING, id=PREFIX or driver=overlay"
                )));
            }
        }
    }
    Ok(f)
}

/// Docker-shaped inspect output: `Containers` are this host's endpoints.
pub fn inspect_json(v: &NetworkInspectView) -> serde_json::Value {
    let n = &v.network;
    let containers: serde_json::Map<String, serde_json::Value> = v
        .containers
        .iter()
        .filter(|c| v.self_node.as_ref().is_none_or(|me| *me == c.node))
        .map(|c| {
            (
                c.container_id.clone(),
                json!({
                    "Name": c.name,
                    "MacAddress": c.mac.to_string(),
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
        "Internal": n.internal,
        "Containers": containers,
        "Options": options,
        "Peers": v.peers.iter().map(|p| json!({
            "Name": p.hostname,
            "IP": p.data_path_addr.to_string(),
        })).collect::<Vec<_>>(),
    })
}

/// The daemon request of `network connect`.
pub fn connect_request(cmd: &NetworkCommand) -> Result<ctl::NetworkConnect, CliError> {
    let NetworkCommand::Connect {
        ip,
        ip6,
        aliases,
        netns,
        veth,
        mac,
        network,
        container,
    } = cmd
    else {
        return Err(CliError::Usage("not a connect command".into()));
    };
    let external = match (netns, veth) {
        (Some(n), None) => Some(External::Netns(n.clone())),
        (None, Some(v)) => Some(External::Veth(v.clone())),
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err(CliError::Usage("give --netns or --veth, not both".into()));
        }
    };
    Ok(ctl::NetworkConnect {
        container: container.clone(),
        endpoint: EndpointRequest {
            network: network.clone(),
            ipv4: *ip,
            ipv6: *ip6,
            mac: *mac,
            aliases: aliases.clone(),
        },
        external,
    })
}

pub fn run(args: &NetworkArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let s = &args.socket;
    match &args.command {
        NetworkCommand::Create(c) => {
            let n = s.call(c.request())?;
            write(out, &format!("{}\n", n.id))
        }
        NetworkCommand::Ls {
            filter,
            quiet,
            format,
        } => {
            let filter = parse_filter(filter)?;
            let nets = s.call(ctl::NetworkLs { filter })?;
            if *quiet {
                // Short ids, as `docker network ls -q` prints them.
                for n in &nets {
                    write(out, &format!("{}\n", short(&n.id)))?;
                }
                return Ok(());
            }
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
                    n.driver.to_string(),
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
                let v = s.call(ctl::NetworkInspect { network: n.clone() })?;
                all.push(inspect_json(&v));
            }
            json(out, &all)
        }
        NetworkCommand::Rm { networks } => {
            for n in networks {
                s.call(ctl::NetworkRm { network: n.clone() })?;
                write(out, &format!("{n}\n"))?;
            }
            Ok(())
        }
        NetworkCommand::Connect { .. } => {
            s.call(connect_request(&args.command)?)?;
            Ok(())
        }
        NetworkCommand::Disconnect { network, container } => {
            s.call(ctl::NetworkDisconnect {
                container: container.clone(),
                network: network.clone(),
            })?;
            Ok(())
        }
    }
}
