//! The netlink module and namespace creation against the real kernel (root
//! only). Each test works in scratch namespaces that are removed when it
//! ends, also on failure; what netlink set is read back with netlink and,
//! where it matters, with the `ip` tool people would check with.
use std::net::IpAddr;
use std::process::{Command, Stdio};
use vxnet_dataplane::sys::netlink::{self, Netlink, Route};
use vxnet_dataplane::sys::netns::testutil::{TestNetns, root_or_skip};
use vxnet_dataplane::sys::netns::{self, ETC_NETNS_DIR};
use vxnet_proto::wire::MacAddr;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `ip -n NS ARGS...` output.
fn ip_out(ns: &TestNetns, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", ns.name()])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn links_are_made_configured_read_back_and_deleted() {
    if !root_or_skip("links_are_made_configured_read_back_and_deleted") {
        return;
    }
    let ns = TestNetns::new().unwrap();
    let mut nl = ns.netlink().unwrap();
    assert_eq!(nl.place(), format!("namespace {}", ns.name()));
    assert!(nl.link("lo").unwrap().up, "TestNetns brings lo up");

    nl.add_veth("d0", "d0p").unwrap();
    let mac = MacAddr([0x02, 0, 0, 0, 0, 0x2a]);
    nl.set_mac("d0", mac).unwrap();
    nl.set_mtu("d0", 1400).unwrap();
    nl.set_gso_max_segs("d0", 44).unwrap();
    let d0 = nl.link("d0").unwrap();
    assert_eq!((d0.mtu, d0.mac, d0.up), (1400, Some(mac), false));
    assert_eq!(d0.gso_max_segs, Some(44));
    nl.set_up("d0").unwrap();
    assert!(nl.link("d0").unwrap().up);
    let shown = ip_out(&ns, &["-d", "link", "show", "dev", "d0"]);
    assert!(
        shown.contains("mtu 1400") && shown.contains("02:00:00:00:00:2a"),
        "{shown}"
    );
    assert!(shown.contains("gso_max_segs 44"), "{shown}");
    nl.set_down("d0").unwrap();
    assert!(!nl.link("d0").unwrap().up);

    // A bridge with a veth enslaved, then released.
    nl.add_bridge("br0").unwrap();
    nl.set_addr_gen_mode_none("br0").unwrap();
    nl.add_veth("v0", "v1").unwrap();
    let br = nl.link("br0").unwrap();
    nl.set_controller("v0", "br0").unwrap();
    assert_eq!(nl.link("v0").unwrap().controller, Some(br.index));
    assert!(ip_out(&ns, &["link", "show", "dev", "v0"]).contains("master br0"));
    nl.release("v0").unwrap();
    assert_eq!(nl.link("v0").unwrap().controller, None);
    assert!(ip_out(&ns, &["-d", "link", "show", "dev", "br0"]).contains("addrgenmode none"));

    let names: Vec<String> = nl.links().unwrap().into_iter().map(|l| l.name).collect();
    for n in ["lo", "d0", "d0p", "br0", "v0", "v1"] {
        assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
    }

    // Deleting one end of a veth takes the other along.
    nl.del_link("v0").unwrap();
    assert!(!nl.link_exists("v1").unwrap());
    nl.del_link("br0").unwrap();
    assert!(!nl.link_exists("br0").unwrap());
}

#[test]
fn errors_name_the_interface_the_namespace_and_the_errno() {
    if !root_or_skip("errors_name_the_interface_the_namespace_and_the_errno") {
        return;
    }
    let ns = TestNetns::new().unwrap();
    let mut nl = ns.netlink().unwrap();
    let e = nl.link("eth9").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(
        e.to_string(),
        format!("interface eth9 not found in namespace {}", ns.name())
    );
    assert_eq!(
        nl.set_mtu("eth9", 1400).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    nl.add_bridge("d0").unwrap();
    let e = nl.add_bridge("d0").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
    assert!(e.to_string().contains("d0 already exists"), "{e}");
    // The kernel refuses an MTU below the minimum: its errno text is kept.
    let e = nl.set_mtu("d0", 20).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot set MTU 20 on d0 in namespace")
            && e.to_string().contains("Invalid argument"),
        "{e}"
    );
    let e = nl.add_address("d0", ip("10.0.0.1"), 33).unwrap_err();
    assert!(e.to_string().contains("/33"), "{e}");
}

#[test]
fn addresses_and_default_routes_of_both_families() {
    if !root_or_skip("addresses_and_default_routes_of_both_families") {
        return;
    }
    let ns = TestNetns::new().unwrap();
    let mut nl = ns.netlink().unwrap();
    // A veth with both ends up has a carrier, so its routes are live.
    nl.add_veth("d0", "d0p").unwrap();
    nl.set_up("d0p").unwrap();
    nl.set_up("d0").unwrap();
    let d0 = nl.link("d0").unwrap().index;
    nl.add_address("d0", ip("10.77.0.2"), 24).unwrap();
    nl.add_address("d0", ip("fd77::2"), 64).unwrap();
    let e = nl.add_address("d0", ip("10.77.0.2"), 24).unwrap_err();
    assert!(e.to_string().contains("File exists"), "{e}");

    let addrs = nl.addresses().unwrap();
    assert!(
        addrs
            .iter()
            .any(|a| a.ifindex == d0 && a.addr == ip("10.77.0.2") && a.prefix == 24)
    );
    assert!(
        addrs
            .iter()
            .any(|a| a.ifindex == d0 && a.addr == ip("fd77::2") && a.prefix == 64)
    );
    // nodad: usable at once, never "tentative".
    let v6 = ip_out(&ns, &["-6", "-o", "addr", "show", "dev", "d0"]);
    let line = v6
        .lines()
        .find(|l| l.contains("fd77::2/64"))
        .unwrap_or_default();
    assert!(
        line.contains("nodad") && !line.contains("tentative"),
        "{v6}"
    );

    nl.replace_default_route("d0", ip("10.77.0.1")).unwrap();
    nl.replace_default_route("d0", ip("fd77::1")).unwrap();
    // Replacing, not adding: a second gateway takes the first one's place.
    nl.replace_default_route("d0", ip("10.77.0.254")).unwrap();
    let defaults: Vec<Route> = nl
        .routes()
        .unwrap()
        .into_iter()
        .filter(|r| r.prefix == 0 && r.destination.is_none())
        .collect();
    let gateways: Vec<Option<IpAddr>> = defaults.iter().map(|r| r.gateway).collect();
    assert_eq!(defaults.len(), 2, "{defaults:?}");
    assert!(gateways.contains(&Some(ip("10.77.0.254"))), "{defaults:?}");
    assert!(gateways.contains(&Some(ip("fd77::1"))), "{defaults:?}");
    assert!(defaults.iter().all(|r| r.ifindex == Some(d0)));
    let shown = ip_out(&ns, &["route", "show", "default"]);
    // Exactly what `ip route replace` makes ("proto boot" is not shown).
    assert_eq!(shown.trim(), "default via 10.77.0.254 dev d0");

    nl.del_address("d0", ip("10.77.0.2"), 24).unwrap();
    assert!(
        !nl.addresses()
            .unwrap()
            .iter()
            .any(|a| a.addr == ip("10.77.0.2"))
    );

    // The host-wide helpers read the namespace of the calling thread.
    nl.set_mtu("d0", 1380).unwrap();
    let (all, mtu, none) = ns
        .run(|| {
            (
                netlink::local_addresses().unwrap(),
                netlink::interface_mtu_of_address(ip("fd77::2")).unwrap(),
                netlink::interface_mtu_of_address(ip("192.0.2.1")).unwrap(),
            )
        })
        .unwrap();
    assert!(
        all.contains(&("d0".to_string(), ip("fd77::2"), 64)),
        "{all:?}"
    );
    assert!(
        all.contains(&("lo".to_string(), ip("127.0.0.1"), 8)),
        "{all:?}"
    );
    assert_eq!(mtu, Some(1380));
    assert_eq!(none, None);
}

#[test]
fn a_link_moves_to_another_namespace() {
    if !root_or_skip("a_link_moves_to_another_namespace") {
        return;
    }
    let a = TestNetns::new().unwrap();
    let b = TestNetns::new().unwrap();
    let mut nl_a = a.netlink().unwrap();
    nl_a.add_veth("va", "vb").unwrap();
    let target = std::fs::File::open(b.path()).unwrap();
    nl_a.move_to_netns("vb", &target).unwrap();
    assert!(!nl_a.link_exists("vb").unwrap());
    let mut nl_b = b.netlink().unwrap();
    assert!(nl_b.link_exists("vb").unwrap());
    // The pair still works across the namespaces.
    nl_a.add_address("va", ip("10.78.0.1"), 24).unwrap();
    nl_b.add_address("vb", ip("10.78.0.2"), 24).unwrap();
    nl_a.set_up("va").unwrap();
    nl_b.set_up("vb").unwrap();
    let ping = Command::new("ip")
        .args(["netns", "exec", a.name(), "ping", "-c1", "-W2", "10.78.0.2"])
        .output()
        .unwrap();
    assert!(ping.status.success(), "{ping:?}");
}

#[test]
fn namespaces_are_added_and_deleted_like_ip_netns_does() {
    if !root_or_skip("namespaces_are_added_and_deleted_like_ip_netns_does") {
        return;
    }
    let name = format!("vxt-{}-add", std::process::id());
    let path = netns::add(&name).unwrap();
    // `ip` sees it, and it is a namespace of its own with only `lo`.
    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let mut nl = Netlink::open_in(&path);
    let links = nl.as_mut().map(|nl| nl.links());
    let again = netns::add(&name);
    netns::delete(&name).unwrap();
    assert!(
        listed
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&name)),
        "{listed}"
    );
    let links = links.unwrap().unwrap();
    assert_eq!(links.len(), 1, "{links:?}");
    assert!(
        !links[0].up,
        "a new namespace's lo is down, as the kernel makes it"
    );
    assert_eq!(again.unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
    assert!(!path.exists());
    assert_eq!(
        netns::delete(&name).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    assert!(netns::add("a/b").is_err());
    assert!(netns::add("..").is_err());
}

/// Removes `/etc/netns/NAME` when dropped.
struct EtcNetns(std::path::PathBuf);

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn exec_in_enters_the_namespace_with_its_resolv_conf() {
    if !root_or_skip("exec_in_enters_the_namespace_with_its_resolv_conf") {
        return;
    }
    let ns = TestNetns::new().unwrap();
    let etc = EtcNetns(std::path::Path::new(ETC_NETNS_DIR).join(ns.name()));
    std::fs::create_dir_all(&etc.0).unwrap();
    let resolv = "nameserver 192.0.2.53\n";
    std::fs::write(etc.0.join("resolv.conf"), resolv).unwrap();
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap();

    let mut cmd = Command::new("sh");
    cmd.args(["-c", "cat /etc/resolv.conf; ls /sys/class/net"]);
    netns::exec_in(&mut cmd, ns.name()).unwrap();
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text, format!("{resolv}lo\n"), "its resolv.conf, its /sys");
    // Nothing leaked into the caller's mounts.
    assert_eq!(
        std::fs::read_to_string("/etc/resolv.conf").unwrap(),
        host_resolv
    );

    // A command that cannot start fails spawn() itself.
    let mut bad = Command::new("/nonexistent/binary");
    netns::exec_in(&mut bad, ns.name()).unwrap();
    let e = bad.stdout(Stdio::null()).spawn().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);

    let e = netns::exec_in(&mut Command::new("true"), "vxt-no-such-ns").unwrap_err();
    assert!(e.to_string().contains("vxt-no-such-ns"), "{e}");
}
