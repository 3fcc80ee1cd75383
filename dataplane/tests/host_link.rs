//! The host link against the real kernel and nftables, in a namespace made
//! for the test (the dataplane runs inside it, so its "host" is that
//! namespace): the TAP and its address, vxnet's firewall table and its
//! port sets, no duplicates when set again, and nothing left after
//! `host_link_del` or a shutdown. Needs root and `nft`.
use std::process::Command;
use vxnet_api::Call;
use vxnet_api::dp::{self, HostLinkSet, IngressEndpoint, Owner, PortProtocol, PortTo};
use vxnet_dataplane::control::{Config, Dataplane};
use vxnet_dataplane::sys::netns::testutil::{TestNetns, root_or_skip};
use vxnet_proto::wire::Vni;

fn nft(args: &[&str]) -> (bool, String) {
    let out = Command::new("nft").args(args).output().expect("nft runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn call<C: Call<Request = dp::Request>>(d: &Dataplane, c: C) -> Result<C::Reply, String> {
    d.handle(c.into_request())
        .decode::<C>()
        .map_err(|e| e.message)
}

#[test]
fn the_host_link_programs_only_its_own_table_and_removes_it() {
    if !root_or_skip("the_host_link_programs_only_its_own_table_and_removes_it") {
        return;
    }
    if Command::new("nft").arg("--version").output().is_err() {
        eprintln!("SKIPPED: nft is not installed (scripts/setup.sh installs it)");
        return;
    }
    let ns = TestNetns::new().unwrap();
    let r = ns
        .run(|| -> Result<(), String> {
            // Someone else's table, which must stay untouched.
            let (ok, _) = nft(&["add", "table", "inet", "theirs"]);
            assert!(ok);
            let d = Dataplane::start(Config::loopback_for_tests()).map_err(|e| e.to_string())?;
            let vni = Vni::new(4096).unwrap();
            call(
                &d,
                dp::NetworkAdd {
                    vni,
                    encrypted: false,
                    gateways: vec!["10.0.0.1".parse().unwrap()],
                    egress: true,
                    ingress: true,
                    flood: true,
                    flood_rate: None,
                    owner: Owner::Control,
                },
            )?;
            let set = HostLinkSet {
                ifname: None,
                subnet: "198.18.0.0/16".parse().unwrap(),
                mtu: Some(1450),
                ingress: Some(IngressEndpoint {
                    vni,
                    ip: "10.0.0.2".parse().unwrap(),
                }),
                owner: Owner::Control,
            };
            // Refused without a host link, naming what to do.
            let e = call(
                &d,
                dp::PortSet {
                    protocol: PortProtocol::Tcp,
                    published: 8080,
                    target: 80,
                    vni,
                    to: PortTo::Vip("10.0.0.100".parse().unwrap()),
                    owner: Owner::Control,
                },
            )
            .unwrap_err();
            assert!(e.contains("host-link set"), "{e}");
            let info = call(&d, set.clone())?;
            assert!(info.firewall_ok, "{info:?}");
            // Refused, naming what to add, while what it leads to is
            // missing: the network, then the VIP. Nothing is published.
            let port_to = |vni, vip: &str| dp::PortSet {
                protocol: PortProtocol::Tcp,
                published: 8080,
                target: 80,
                vni,
                to: PortTo::Vip(vip.parse().unwrap()),
                owner: Owner::Control,
            };
            let e = call(&d, port_to(Vni::new(4097).unwrap(), "10.0.0.100")).unwrap_err();
            assert!(e.contains("network add --vni 4097"), "{e}");
            let e = call(&d, port_to(vni, "10.0.0.100")).unwrap_err();
            assert!(e.contains("service set --vni 4096 --vip 10.0.0.100"), "{e}");
            let e = call(&d, port_to(vni, "fd00::100")).unwrap_err();
            assert!(e.contains("IPv4 addresses only"), "{e}");
            call(
                &d,
                dp::PeerAdd {
                    vni,
                    mac: "02:42:0a:00:00:09".parse().unwrap(),
                    ips: vec!["10.0.0.9".parse().unwrap()],
                    vtep: "127.0.0.2".parse().unwrap(),
                    owner: Owner::User,
                },
            )?;
            let e = call(&d, port_to(vni, "0.0.0.0")).unwrap_err();
            assert!(e.contains("cannot be a VIP"), "{e}");
            let e = call(&d, port_to(vni, "10.0.0.9")).unwrap_err();
            assert!(
                e.contains("an endpoint's address on VNI 4096, not a service VIP"),
                "{e}"
            );
            assert!(call(&d, dp::Ports {})?.is_empty());
            let (_, table) = nft(&["list", "table", "ip", "vxnet"]);
            assert!(!table.contains("8080"), "{table}");
            let add_vip = || {
                call(
                    &d,
                    dp::ServiceSet {
                        vni,
                        vip: "10.0.0.100".parse().unwrap(),
                        backends: Vec::new(),
                        owner: Owner::Control,
                    },
                )
            };
            add_vip()?;
            assert_eq!(info.mac.to_string(), "02:42:0a:00:00:02");
            // The TAP is there with its address.
            let out = Command::new("ip")
                .args(["-br", "addr", "show", "vxnet0"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("198.18.0.1/16"), "{text}");
            for (proto, port) in [(PortProtocol::Tcp, 8080), (PortProtocol::Udp, 5353)] {
                call(
                    &d,
                    dp::PortSet {
                        protocol: proto,
                        published: port,
                        target: 80,
                        vni,
                        to: PortTo::Vip("10.0.0.100".parse().unwrap()),
                        owner: Owner::Control,
                    },
                )?;
            }
            let ports = call(&d, dp::Ports {})?;
            assert_eq!(ports.len(), 2);
            // The network and its service stay while ports lead there.
            call(
                &d,
                dp::ServiceDel {
                    vni,
                    vip: "10.0.0.100".parse().unwrap(),
                },
            )?;
            let e = call(&d, dp::NetworkDel { vni }).unwrap_err();
            assert!(e.contains("port 8080 leads into VNI 4096"), "{e}");
            add_vip()?;
            assert!(ports.iter().all(|p| p.in_firewall), "{ports:?}");
            let (_, table) = nft(&["list", "table", "ip", "vxnet"]);
            assert!(table.contains("8080") && table.contains("5353"), "{table}");
            assert!(table.contains("dnat to 198.18.0.2"), "{table}");
            assert!(table.contains("masquerade"), "{table}");
            // Set again (a control-plane restart): no second table, no
            // duplicated rule, the ports kept.
            call(&d, set.clone())?;
            let (_, all) = nft(&["list", "ruleset"]);
            assert_eq!(all.matches("table ip vxnet").count(), 1, "{all}");
            // Prerouting's and output's, for TCP and UDP.
            assert_eq!(all.matches("dnat to 198.18.0.2").count(), 4, "{all}");
            assert!(all.contains("hook output"), "{all}");
            assert!(all.contains("8080"));
            // Someone flushes a set: the listing says so.
            nft(&["flush", "set", "ip", "vxnet", "tcp_ports"]);
            let ports = call(&d, dp::Ports {})?;
            assert!(ports.iter().any(|p| !p.in_firewall));
            // Unpublished: the element goes at once.
            call(
                &d,
                dp::PortDel {
                    protocol: PortProtocol::Udp,
                    published: 5353,
                },
            )?;
            let (_, table) = nft(&["list", "table", "ip", "vxnet"]);
            assert!(!table.contains("5353"), "{table}");
            // A network that holds nothing but a port's service: the port
            // still keeps it after the service goes. A declared, empty
            // network takes a host-mode port.
            let v2 = Vni::new(5010).unwrap();
            for vni in [v2, Vni::new(5011).unwrap()] {
                call(
                    &d,
                    dp::NetworkAdd {
                        vni,
                        encrypted: false,
                        gateways: Vec::new(),
                        egress: false,
                        ingress: false,
                        flood: true,
                        flood_rate: None,
                        owner: Owner::User,
                    },
                )?;
            }
            let vip2 = "10.9.0.2".parse().unwrap();
            let service2 = dp::ServiceSet {
                vni: v2,
                vip: vip2,
                backends: Vec::new(),
                owner: Owner::User,
            };
            call(&d, service2)?;
            call(&d, port_to(v2, "10.9.0.2"))?;
            let to_vip = dp::PortSet {
                published: 9097,
                to: PortTo::Backends(vec![dp::BackendSpec {
                    ip: vip2,
                    mac: Some("02:42:0a:09:00:02".parse().unwrap()),
                }]),
                ..port_to(v2, "10.9.0.2")
            };
            let e = call(&d, to_vip).unwrap_err();
            assert!(e.contains("backend 10.9.0.2 is a service VIP"), "{e}");
            call(&d, dp::ServiceDel { vni: v2, vip: vip2 })?;
            let e = call(&d, dp::NetworkDel { vni: v2 }).unwrap_err();
            assert!(e.contains("port 8080 leads into VNI 5010"), "{e}");
            call(
                &d,
                dp::PortSet {
                    protocol: PortProtocol::Tcp,
                    published: 9096,
                    target: 80,
                    vni: Vni::new(5011).unwrap(),
                    to: PortTo::Backends(vec![dp::BackendSpec {
                        ip: "10.9.1.3".parse().unwrap(),
                        mac: Some("02:42:0a:09:01:03".parse().unwrap()),
                    }]),
                    owner: Owner::User,
                },
            )?;
            call(&d, dp::HostLinkDel {})?;
            let (gone, _) = nft(&["list", "table", "ip", "vxnet"]);
            assert!(!gone, "the table is removed");
            let out = Command::new("ip")
                .args(["link", "show", "vxnet0"])
                .output()
                .unwrap();
            assert!(!out.status.success(), "the TAP is gone");
            // A shutdown removes what a host link made, too.
            call(&d, set)?;
            d.shutdown();
            let (gone, _) = nft(&["list", "table", "ip", "vxnet"]);
            assert!(!gone, "the table is removed at shutdown");
            let (theirs, _) = nft(&["list", "table", "inet", "theirs"]);
            assert!(theirs, "another table is left alone");
            Ok(())
        })
        .unwrap();
    r.unwrap();
}
