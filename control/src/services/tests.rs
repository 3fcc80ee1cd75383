//! Service records: VIPs come from the networks' IPAM and go back, and a
//! refused request changes nothing.

use super::*;
use crate::cluster::tests::init;
use crate::model::RestartCondition;
use crate::model::test_rng::TestRng;
use crate::networks::resolve_network;
use crate::networks::{CreateNetwork, INGRESS_NAME, create_network};
use crate::store::MemStore;
use vxnet_api::ctl::PortRequest;

fn net(s: &MemStore, name: &str) -> Network {
    let r = CreateNetwork {
        name: name.into(),
        ..CreateNetwork::default()
    };
    create_network(s, &r, 1, &mut TestRng::from_name(name)).unwrap()
}

fn req(name: &str, nets: &[&str]) -> ServiceCreate {
    ServiceCreate {
        name: name.into(),
        mode: ServiceMode::Replicated { replicas: 3 },
        endpoint_mode: EndpointMode::Vip,
        networks: nets
            .iter()
            .map(|n| ServiceNetworkRequest {
                network: (*n).into(),
                aliases: vec![],
            })
            .collect(),
        command: vec!["sleep".into(), "600".into()],
        env: vec![],
        restart: RestartCondition::Any,
        ports: vec![],
    }
}

fn vips_of(s: &MemStore, id: &str) -> usize {
    s.list::<AddressAlloc>()
        .unwrap()
        .iter()
        .filter(|a| a.owner == AddressOwner::Service(id.to_owned()))
        .count()
}

#[test]
fn a_vip_per_network_from_its_ipam_and_back() {
    let s = MemStore::new();
    init(&s);
    let a = net(&s, "a");
    let b = net(&s, "b");
    let svc = create_service(&s, &req("web", &["a"]), 1, &mut TestRng(1)).unwrap();
    assert_eq!(svc.vips.len(), 1);
    assert!(a.ipv4.subnet.contains(&svc.vips[0].ipv4));
    assert_ne!(svc.vips[0].ipv4, a.ipv4.gateway);
    assert_eq!(vips_of(&s, &svc.id), 1);
    // Network added and removed: a VIP comes and goes with it.
    let upd = ServiceUpdate {
        service: "web".into(),
        network_add: vec![ServiceNetworkRequest {
            network: "b".into(),
            aliases: vec!["www".into()],
        }],
        network_rm: vec!["a".into()],
        ..Default::default()
    };
    let svc = update_service(&s, &upd, 2).unwrap();
    assert_eq!(svc.networks.len(), 1);
    assert_eq!(svc.networks[0].network, b.id);
    assert_eq!(svc.networks[0].aliases, ["www"]);
    assert!(b.ipv4.subnet.contains(&svc.vip(&b.id).unwrap().ipv4));
    assert_eq!(svc.version, 1, "networks do not replace tasks");
    assert_eq!(vips_of(&s, &svc.id), 1);
    remove_service(&s, "web").unwrap();
    assert_eq!(vips_of(&s, &svc.id), 0);
    assert!(s.list::<Service>().unwrap().is_empty());
}

#[test]
fn dnsrr_has_no_vip_and_template_changes_bump_the_version() {
    let s = MemStore::new();
    init(&s);
    net(&s, "a");
    let mut r = req("db", &["a"]);
    r.endpoint_mode = EndpointMode::Dnsrr;
    let svc = create_service(&s, &r, 1, &mut TestRng(2)).unwrap();
    assert!(svc.vips.is_empty());
    let svc = update_service(
        &s,
        &ServiceUpdate {
            service: "db".into(),
            replicas: Some(5),
            ..Default::default()
        },
        2,
    )
    .unwrap();
    assert_eq!(svc.mode, ServiceMode::Replicated { replicas: 5 });
    assert_eq!(svc.version, 1);
    let svc = update_service(
        &s,
        &ServiceUpdate {
            service: "db".into(),
            env_add: vec!["A=1".into(), "B=2".into()],
            ..Default::default()
        },
        3,
    )
    .unwrap();
    assert_eq!(svc.version, 2);
    let svc = update_service(
        &s,
        &ServiceUpdate {
            service: "db".into(),
            env_add: vec!["A=9".into()],
            env_rm: vec!["B".into()],
            ..Default::default()
        },
        4,
    )
    .unwrap();
    assert_eq!(svc.env, ["A=9"]);
    assert_eq!(svc.version, 3);
}

#[test]
fn refusals_change_nothing() {
    let s = MemStore::new();
    init(&s);
    net(&s, "a");
    let before = s.list::<AddressAlloc>().unwrap().len();
    for (r, want) in [
        (req("bad name", &["a"]), "invalid service name"),
        (req("web", &[INGRESS_NAME]), "ingress network"),
        (req("web", &["nope"]), "not found"),
        (req("web", &["a", "a"]), "given twice"),
        (
            ServiceCreate {
                command: vec![],
                ..req("web", &["a"])
            },
            "needs a command",
        ),
        (
            ServiceCreate {
                env: vec!["=x".into()],
                ..req("web", &["a"])
            },
            "not K=V",
        ),
        (
            ServiceCreate {
                mode: ServiceMode::Replicated {
                    replicas: MAX_REPLICAS + 1,
                },
                ..req("web", &["a"])
            },
            "replicas",
        ),
    ] {
        let e = create_service(&s, &r, 1, &mut TestRng(3)).unwrap_err();
        assert!(e.to_string().contains(want), "{want}: {e}");
    }
    assert!(s.list::<Service>().unwrap().is_empty());
    assert_eq!(s.list::<AddressAlloc>().unwrap().len(), before);
    create_service(&s, &req("web", &["a"]), 1, &mut TestRng(4)).unwrap();
    let e = create_service(&s, &req("web", &["a"]), 1, &mut TestRng(5)).unwrap_err();
    assert!(matches!(e, ControlError::ServiceNameInUse { .. }));
    let mut g = req("mon", &["a"]);
    g.mode = ServiceMode::Global;
    create_service(&s, &g, 1, &mut TestRng(6)).unwrap();
    let e = update_service(
        &s,
        &ServiceUpdate {
            service: "mon".into(),
            replicas: Some(2),
            ..Default::default()
        },
        2,
    )
    .unwrap_err();
    assert!(matches!(e, ControlError::ScaleGlobal(_)));
}

fn publish(target: u16, published: Option<u16>) -> PortRequest {
    PortRequest {
        protocol: crate::model::PortProtocol::Tcp,
        target_port: target,
        published_port: published,
        publish_mode: crate::model::PublishMode::Ingress,
    }
}

fn ingress_vips(s: &MemStore, svc: &Service) -> usize {
    let ingress = resolve_network(s, INGRESS_NAME).unwrap();
    s.list::<AddressAlloc>()
        .unwrap()
        .iter()
        .filter(|a| a.network == ingress.id && a.owner == AddressOwner::Service(svc.id.clone()))
        .count()
}

#[test]
fn published_ports_get_an_ingress_vip_and_give_it_back() {
    let s = MemStore::new();
    init(&s);
    net(&s, "a");
    let mut r = req("web", &["a"]);
    r.ports = vec![publish(80, Some(8080))];
    let web = create_service(&s, &r, 1, &mut TestRng(7)).unwrap();
    assert_eq!(web.ports[0].published_port, 8080);
    assert_eq!(web.vips.len(), 2, "its network's VIP and the ingress one");
    assert_eq!(ingress_vips(&s, &web), 1);
    // A second service asking for 8080 is refused, naming the first.
    let mut r2 = req("api", &["a"]);
    r2.ports = vec![publish(80, Some(8080))];
    let e = create_service(&s, &r2, 1, &mut TestRng(8)).unwrap_err();
    assert!(e.to_string().contains("service web"), "{e}");
    assert!(resolve_service(&s, "api").is_err(), "nothing was made");
    // Unpublished: the ingress VIP goes; published again: it comes back.
    let upd = |add: Vec<PortRequest>, rm: Vec<PortRequest>| ServiceUpdate {
        service: "web".into(),
        publish_add: add,
        publish_rm: rm,
        ..Default::default()
    };
    let web = update_service(&s, &upd(vec![], vec![publish(80, None)]), 2).unwrap();
    assert!(web.ports.is_empty());
    assert_eq!(web.vips.len(), 1);
    assert_eq!(ingress_vips(&s, &web), 0);
    let web = update_service(&s, &upd(vec![publish(80, None)], vec![]), 3).unwrap();
    assert_eq!(web.ports[0].published_port, 30000, "allocated");
    assert_eq!(ingress_vips(&s, &web), 1);
    // Removing a port it does not publish is refused and changes nothing.
    let e = update_service(&s, &upd(vec![], vec![publish(81, None)]), 4).unwrap_err();
    assert!(
        e.to_string()
            .contains("publishes no tcp port with target 81"),
        "{e}"
    );
    assert_eq!(resolve_service(&s, "web").unwrap().ports.len(), 1);
    remove_service(&s, "web").unwrap();
    assert_eq!(ingress_vips(&s, &web), 0);
}

#[test]
fn internal_networks_and_dnsrr_do_not_publish_through_the_mesh() {
    let s = MemStore::new();
    init(&s);
    let internal = CreateNetwork {
        name: "private".into(),
        internal: true,
        ..CreateNetwork::default()
    };
    create_network(&s, &internal, 1, &mut TestRng::from_name("private")).unwrap();
    net(&s, "a");
    let before = s.list::<AddressAlloc>().unwrap().len();
    let mut r = req("web", &["private"]);
    r.ports = vec![publish(80, Some(8080))];
    let e = create_service(&s, &r, 1, &mut TestRng(9)).unwrap_err();
    assert!(e.to_string().contains("--internal"), "{e}");
    let mut r = req("web", &["a"]);
    r.endpoint_mode = EndpointMode::Dnsrr;
    r.ports = vec![publish(80, Some(8080))];
    let e = create_service(&s, &r, 1, &mut TestRng(10)).unwrap_err();
    assert!(e.to_string().contains("dnsrr"), "{e}");
    // Host mode is fine with DNSRR, and needs a published port.
    r.ports[0].publish_mode = crate::model::PublishMode::Host;
    r.ports[0].published_port = None;
    let e = create_service(&s, &r, 1, &mut TestRng(11)).unwrap_err();
    assert!(e.to_string().contains("published="), "{e}");
    r.ports[0].published_port = Some(8080);
    let svc = create_service(&s, &r, 1, &mut TestRng(12)).unwrap();
    assert!(svc.vips.is_empty());
    assert_eq!(s.list::<AddressAlloc>().unwrap().len(), before);
}
