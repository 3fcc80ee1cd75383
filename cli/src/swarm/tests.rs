//! The control-plane commands parse into the requests the daemon expects.

use super::*;
use crate::container::ContainerCommand;
use crate::network::NetworkCommand;
use crate::{Cli, Command};
use clap::Parser;
use clap::error::ErrorKind;
use vxnet_api::ctl::External;
use vxnet_api::model::{Node, NodeStatus};

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("vxnet").chain(args.iter().copied()))
}

#[test]
fn swarm_arguments() {
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
    let SwarmCommand::Init {
        advertise_addr,
        data_path_port,
        ..
    } = s.command
    else {
        panic!("not init")
    };
    assert_eq!(advertise_addr, Some("192.0.2.1".parse().unwrap()));
    assert_eq!(data_path_port, Some(4790));
    assert_eq!(
        parse(&["swarm", "join-token", "admin"]).unwrap_err().kind(),
        ErrorKind::InvalidValue
    );
    assert!(parse(&["swarm", "init", "--advertise-addr", "nope"]).is_err());
}

#[test]
fn node_ls_filters_and_quiet() {
    let Command::Node(n) = parse(&["node", "ls", "-q", "--filter", "role=worker"])
        .unwrap()
        .command
    else {
        panic!("not node")
    };
    let NodeCommand::Ls { filter, quiet, .. } = n.command else {
        panic!("not ls")
    };
    assert!(quiet);
    assert_eq!(parse_node_filter(&filter).unwrap(), Some(Role::Worker));
    assert_eq!(
        parse_node_filter(&["role=manager".into()]).unwrap(),
        Some(Role::Manager)
    );
    assert!(matches!(
        parse_node_filter(&["role=admin".into()]),
        Err(CliError::Usage(_))
    ));
    assert!(matches!(
        parse_node_filter(&["name=x".into()]),
        Err(CliError::Usage(_))
    ));
}

#[test]
fn network_create_options() {
    let Command::Network(n) = parse(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--attachable",
        "--internal",
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
    assert!(r.attachable && !r.ingress && r.internal);
    assert_eq!(r.options.get("encrypted").map(String::as_str), Some(""));
    assert_eq!(r.options.get("mtu").map(String::as_str), Some("1400"));
    assert_eq!(r.subnets[0].to_string(), "10.9.0.0/24");
    assert_eq!(r.ip_ranges[0].to_string(), "10.9.0.128/25");
    assert!(parse(&["network", "create", "--subnet", "10.9.0.0", "x"]).is_err());
    assert!(parse(&["network", "create", "-d", "bridge", "x"]).is_err());
    assert!(crate::network::parse_filter(&["color=red".into()]).is_err());
    let f = crate::network::parse_filter(&["name=te".into(), "driver=overlay".into()]).unwrap();
    assert_eq!(f.name.as_deref(), Some("te"));
    assert!(f.driver.is_some());
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
        "--network-alias",
        "web",
        "-e",
        "A=1",
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
    let req = r.request();
    assert_eq!(req.name, "c1");
    assert_eq!(req.networks.len(), 2);
    assert_eq!(req.networks[0].ipv4, Some("10.0.0.9".parse().unwrap()));
    assert_eq!(req.networks[0].aliases, ["web"]);
    assert_eq!(req.networks[1].ipv4, None);
    // Detached: the daemon runs the command.
    assert_eq!(req.command, ["ping", "-c", "1", "10.0.0.1"]);
    assert_eq!(req.env, ["A=1"]);
    // A command and a network are required; -d and --rm exclude each other.
    assert!(parse(&["container", "run", "--name", "c1", "--network", "a"]).is_err());
    assert!(parse(&["container", "run", "--name", "c1", "--", "true"]).is_err());
    assert!(
        parse(&[
            "container",
            "run",
            "-d",
            "--rm",
            "--name",
            "c",
            "--network",
            "a",
            "--",
            "true"
        ])
        .is_err()
    );
    assert!(
        parse(&[
            "container",
            "run",
            "-e",
            "=x",
            "--name",
            "c",
            "--network",
            "a",
            "--",
            "true"
        ])
        .is_err()
    );
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
            status: NodeStatus::Ready,
            advertise_addr: "192.0.2.1".parse().unwrap(),
            data_path_addr: "198.51.100.1".parse().unwrap(),
            data_path_port: 4789,
            public_key: vxnet_api::PublicKey::from_bytes([1; 32]),
            created: 1,
            down_reason: None,
            ingress_ipv4: None,
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
    assert_eq!(
        j["PublicKey"],
        "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
    );
}

#[test]
fn network_connect_of_another_runtime() {
    let connect = |args: &[&str]| -> Result<ctl::NetworkConnect, String> {
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
    assert_eq!(r.container, "web");
    assert_eq!(r.endpoint.network, "n");
    assert_eq!(r.external, Some(External::Netns("/proc/9/ns/net".into())));
    let r = connect(&[
        "network",
        "connect",
        "--veth",
        "veth1",
        "--mac",
        "02:00:00:00:00:09",
        "--ip",
        "10.0.0.9",
        "--alias",
        "db2",
        "n",
        "db",
    ])
    .unwrap();
    assert_eq!(r.external, Some(External::Veth("veth1".into())));
    assert_eq!(
        r.endpoint.mac.map(|m| m.to_string()).as_deref(),
        Some("02:00:00:00:00:09")
    );
    assert_eq!(r.endpoint.ipv4, Some("10.0.0.9".parse().unwrap()));
    assert_eq!(r.endpoint.aliases, ["db2"]);
    // --veth needs --mac; --netns and --veth exclude each other; a
    // multicast MAC is refused before anything is sent.
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
    assert!(
        connect(&[
            "network",
            "connect",
            "--veth",
            "v",
            "--mac",
            "01:00:5e:00:00:01",
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
        &["swarm", "join", "--help"],
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
        &["container", "stop", "--help"],
        &["container", "start", "--help"],
        &["container", "logs", "--help"],
    ] {
        let e = parse(args).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DisplayHelp, "{args:?}");
        assert!(e.to_string().contains("Example"), "{args:?}");
    }
}
