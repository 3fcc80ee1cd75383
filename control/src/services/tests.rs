//! Service records: VIPs come from the networks' IPAM and go back, and a
//! refused request changes nothing.

use super::*;
use crate::cluster::tests::init;
use crate::model::RestartCondition;
use crate::model::test_rng::TestRng;
use crate::networks::{CreateNetwork, INGRESS_NAME, create_network};
use crate::store::MemStore;

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
