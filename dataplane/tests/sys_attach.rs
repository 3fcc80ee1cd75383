//! Attach and detach through the dataplane's request handler against the
//! real kernel (root only): what netlink configured is read back, and a
//! detach leaves no device behind.
use std::net::IpAddr;
use std::sync::Arc;
use vxnet_api::Response;
use vxnet_api::dp::{self, Attach, AttachTarget, DetachTarget, Owner, Request};
use vxnet_dataplane::control::{Config, Dataplane};
use vxnet_dataplane::sys::netns::testutil::{TestNetns, root_or_skip};
use vxnet_proto::wire::{MacAddr, Vni};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn dataplane() -> Dataplane {
    Dataplane::start(Config::loopback_for_tests()).unwrap()
}

fn ok(r: Response) -> serde_json::Value {
    assert!(r.ok, "{r:?}");
    r.result.unwrap_or_default()
}

#[test]
fn native_attach_configures_the_container_side() {
    if !root_or_skip("native_attach_configures_the_container_side") {
        return;
    }
    let dp = dataplane();
    let ns = TestNetns::new().unwrap();
    let mac: MacAddr = "02:00:0a:63:00:02".parse().unwrap();
    let info = ok(dp.handle(Request::Attach(Attach {
        target: AttachTarget::Netns(ns.name().into()),
        vni: Vni::new(4096).unwrap(),
        ips: vec![
            "10.99.0.2/24".parse().unwrap(),
            "fd99::2/64".parse().unwrap(),
        ],
        mac: Some(mac),
        mtu: Some(1400),
        gateways: vec![ip("10.99.0.1"), ip("fd99::1")],
        ifname: None,
        owner: Owner::User,
    })));
    assert_eq!(info["ifname"], "eth0");

    let mut nl = ns.netlink().unwrap();
    let eth0 = nl.link("eth0").unwrap();
    assert_eq!((eth0.mtu, eth0.mac, eth0.up), (1400, Some(mac), true));
    // 1400 + 14 + 8 bytes per datagram: 46 fill one UDP GSO send.
    assert_eq!(eth0.gso_max_segs, Some(46));
    let addrs = nl.addresses().unwrap();
    for (a, p) in [(ip("10.99.0.2"), 24), (ip("fd99::2"), 64)] {
        assert!(
            addrs
                .iter()
                .any(|x| x.ifindex == eth0.index && x.addr == a && x.prefix == p),
            "{a}/{p} in {addrs:?}"
        );
    }
    let gateways: Vec<IpAddr> = nl
        .routes()
        .unwrap()
        .into_iter()
        .filter(|r| r.prefix == 0 && r.ifindex == Some(eth0.index))
        .filter_map(|r| r.gateway)
        .collect();
    assert!(
        gateways.contains(&ip("10.99.0.1")) && gateways.contains(&ip("fd99::1")),
        "{gateways:?}"
    );

    // A second attach of the same interface is refused and changes nothing.
    let again = dp.handle(Request::Attach(Attach {
        target: AttachTarget::Netns(ns.name().into()),
        vni: Vni::new(4096).unwrap(),
        ips: vec!["10.99.0.3/24".parse().unwrap()],
        mac: None,
        mtu: None,
        gateways: vec![],
        ifname: None,
        owner: Owner::User,
    }));
    assert!(!again.ok);
    assert!(again.error.unwrap().message.contains("eth0 already exists"));
    assert_eq!(
        ok(dp.handle(Request::Endpoints(dp::Endpoints {})))
            .as_array()
            .unwrap()
            .len(),
        1
    );

    ok(dp.handle(Request::Detach(dp::Detach {
        target: DetachTarget::Id(info["id"].as_u64().unwrap() as u32),
    })));
    assert!(
        !nl.link_exists("eth0").unwrap(),
        "the TAP goes with the endpoint"
    );
    assert_eq!(
        ok(dp.handle(Request::Fdb(dp::Fdb { vni: None }))),
        serde_json::json!([])
    );
    dp.shutdown();
}

#[test]
fn sidecar_attach_makes_and_removes_the_bridge() {
    if !root_or_skip("sidecar_attach_makes_and_removes_the_bridge") {
        return;
    }
    // The bridge is made in the caller's namespace: run the requests inside
    // a scratch one, never on the host.
    let ns = TestNetns::new().unwrap();
    let mut nl = ns.netlink().unwrap();
    nl.add_veth("vs1", "vs1c").unwrap();
    nl.add_veth("vs2", "vs2c").unwrap();
    let dp = Arc::new(dataplane());
    let req = |veth: &str, addr: &str, mac: &str| {
        Request::Attach(Attach {
            target: AttachTarget::Veth(veth.into()),
            vni: Vni::new(77).unwrap(),
            ips: vec![addr.parse().unwrap()],
            mac: Some(mac.parse().unwrap()),
            mtu: Some(1400),
            gateways: vec![],
            ifname: None,
            owner: Owner::User,
        })
    };
    let first = req("vs1", "10.77.0.2/24", "02:00:00:00:77:02");
    let second = req("vs2", "10.77.0.3/24", "02:00:00:00:77:03");
    let handler = Arc::clone(&dp);
    let (a, b) = ns
        .run(move || (handler.handle(first), handler.handle(second)))
        .unwrap();
    let (a, b) = (ok(a), ok(b));
    assert_eq!(a["location"], "vxbr77");
    let br = nl.link("vxbr77").unwrap();
    assert_eq!(br.mtu, 1400);
    for dev in ["vs1", "vs2", "vxtap77"] {
        let l = nl.link(dev).unwrap();
        assert_eq!(
            (l.controller, l.mtu, l.up),
            (Some(br.index), 1400, true),
            "{dev}"
        );
    }

    let handler = Arc::clone(&dp);
    let ids = [a["id"].as_u64().unwrap(), b["id"].as_u64().unwrap()];
    ns.run(move || {
        for id in ids {
            ok(handler.handle(Request::Detach(dp::Detach {
                target: DetachTarget::Id(id as u32),
            })));
        }
    })
    .unwrap();
    assert!(
        !nl.link_exists("vxbr77").unwrap(),
        "the last detach removes the bridge"
    );
    assert!(!nl.link_exists("vxtap77").unwrap());
    assert_eq!(nl.link("vs1").unwrap().controller, None);
    dp.shutdown();
}
