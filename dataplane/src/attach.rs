//! Attaching endpoints.
//!
//! - Native: the TAP is created *inside* the container's network namespace
//!   (from a thread that entered it), named `eth0` there, while its file
//!   descriptor stays with the dataplane. If any configuration step fails
//!   the descriptor is closed, which deletes the device: nothing is left.
//! - Sidecar: a container made by another runtime already has a veth; its
//!   host side is enslaved to a per-VNI Linux bridge `vxbr<VNI>` that also
//!   holds the dataplane's TAP `vxtap<VNI>` for that network.

use crate::sys::netlink::Netlink;
use crate::sys::netns;
use crate::sys::tap::Tap;
use crate::sys::udp;
use std::net::IpAddr;
use std::sync::Arc;
use vxnet_api::IpNet;
use vxnet_api::dp::{Attach, AttachTarget};
use vxnet_proto::fdb::PortId;
use vxnet_proto::wire::{MacAddr, Vni};

/// Smallest MTU Linux accepts for an IPv4-only interface.
const MIN_MTU: u32 = 68;
/// Smallest MTU of an interface with an IPv6 address (RFC 8200 §5).
const MIN_MTU_IPV6: u32 = 1280;
/// Largest inner MTU: a 9000-byte underlay minus 50 bytes of VXLAN, with
/// room for bigger underlays (the path MTU rule never gives more).
pub const MAX_MTU: u32 = 65_000;

/// A validated attach request.
#[derive(Debug, Clone)]
pub struct Plan {
    pub vni: Vni,
    pub mac: MacAddr,
    pub ips: Vec<IpNet>,
    pub mtu: u32,
    pub gateways: Vec<IpAddr>,
    pub ifname: String,
    /// TCP segments per TSO frame the container's kernel may hand over: as
    /// many as one UDP GSO send carries, so a frame read from the TAP leaves
    /// in one send and arrives as one GRO buffer instead of a full send and
    /// a runt of two or three segments.
    pub gso_max_segs: usize,
}

impl Plan {
    /// Checks everything that can be checked without touching the system.
    /// `wire_overhead` is what the network adds to each inner packet of MTU
    /// size on the wire (Ethernet, VXLAN and, when encrypted, ESP).
    pub fn validate(req: &Attach, default_mtu: u32, wire_overhead: u32) -> Result<Plan, String> {
        let Some(first) = req.ips.first() else {
            return Err("an endpoint needs at least one address (--ip ADDR/PLEN)".into());
        };
        for (i, a) in req.ips.iter().enumerate() {
            if req.ips[..i].iter().any(|b| b.addr() == a.addr()) {
                return Err(format!("address {} is given twice", a.addr()));
            }
            if a.addr().is_unspecified() || a.addr().is_multicast() || a.addr().is_loopback() {
                return Err(format!("{a} is not a usable unicast address"));
            }
        }
        let mac = req.mac.unwrap_or_else(|| MacAddr::from_ip(first.addr()));
        if mac.is_multicast() || mac.is_zero() {
            return Err(format!(
                "MAC {mac} is multicast or zero; an endpoint needs a unicast MAC"
            ));
        }
        let mtu = req.mtu.unwrap_or(default_mtu);
        let min = if req.ips.iter().any(|n| n.addr().is_ipv6()) {
            MIN_MTU_IPV6
        } else {
            MIN_MTU
        };
        if !(min..=MAX_MTU).contains(&mtu) {
            return Err(format!(
                "MTU {mtu} is outside {min}..={MAX_MTU}{}",
                if min == MIN_MTU_IPV6 {
                    " (an IPv6 address needs at least 1280, RFC 8200)"
                } else {
                    ""
                }
            ));
        }
        let ifname = req.ifname.clone().unwrap_or_else(|| "eth0".into());
        if ifname.is_empty()
            || ifname.len() > 15
            || ifname == "."
            || ifname == ".."
            || !ifname
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(format!(
                "interface name '{ifname}' is invalid: use 1 to 15 letters, digits, '-', '_' or '.'"
            ));
        }
        for (i, gw) in req.gateways.iter().enumerate() {
            if req.gateways[..i]
                .iter()
                .any(|g| g.is_ipv4() == gw.is_ipv4())
            {
                return Err(format!(
                    "more than one {} gateway given",
                    if gw.is_ipv4() { "IPv4" } else { "IPv6" }
                ));
            }
            if !req
                .ips
                .iter()
                .any(|n| n.addr().is_ipv4() == gw.is_ipv4() && in_subnet(n, *gw))
            {
                return Err(format!(
                    "gateway {gw} is not inside any of the endpoint's subnets ({})",
                    crate::control::describe_ips(&req.ips)
                ));
            }
        }
        if let AttachTarget::Veth(v) = &req.target {
            if req.mac.is_none() {
                return Err(format!(
                    "sidecar attach of {v} needs --mac: the MAC of the container's side of the veth"
                ));
            }
            if !req.gateways.is_empty() {
                return Err("--gateway applies to native attach only; a sidecar container's routes are its runtime's".into());
            }
        }
        Ok(Plan {
            vni: req.vni,
            mac,
            ips: req.ips.clone(),
            mtu,
            gateways: req.gateways.clone(),
            ifname,
            gso_max_segs: udp::segments_per_send((mtu + wire_overhead) as usize),
        })
    }
}

/// True when `ip` is in the subnet of `net` (and is not `net`'s own address).
fn in_subnet(net: &IpNet, ip: IpAddr) -> bool {
    if ip == net.addr() {
        return false;
    }
    let (a, b, bits) = match (net.addr(), ip) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    let host_bits = bits - u32::from(net.prefix_len());
    if host_bits >= 128 {
        return true;
    }
    (a >> host_bits) == (b >> host_bits)
}

/// Creates and configures the TAP inside namespace `ns`; returns it and the
/// namespace as given. On failure nothing is left: the TAP goes with its
/// descriptor.
pub fn native(ns: &str, plan: &Plan) -> Result<(Tap, String), String> {
    let path = netns::resolve(ns).map_err(|e| e.to_string())?;
    let mut nl = Netlink::open_in(&path)
        .map_err(|e| format!("cannot enter network namespace '{ns}': {e}"))?;
    let ifname = plan.ifname.clone();
    if nl.link_exists(&ifname).map_err(|e| e.to_string())? {
        return Err(format!(
            "interface {ifname} already exists in network namespace '{ns}'"
        ));
    }
    let tap = netns::run_in(&path, move || Tap::create(&ifname))
        .map_err(|e| format!("cannot enter network namespace '{ns}': {e}"))?
        .map_err(|e| format!("cannot create TAP {}: {e}", plan.ifname))?;
    configure(&mut nl, plan)
        .map_err(|e| format!("configuring {} in '{ns}' failed: {e}", plan.ifname))?;
    Ok((tap, ns.to_string()))
}

/// The container's side: MAC, MTU, addresses, TSO size, up, routes.
fn configure(nl: &mut Netlink, plan: &Plan) -> std::io::Result<()> {
    let dev = plan.ifname.as_str();
    nl.set_mac(dev, plan.mac)?;
    nl.set_mtu(dev, plan.mtu)?;
    for n in &plan.ips {
        nl.add_address(dev, n.addr(), n.prefix_len())?;
    }
    // Only an optimisation, and kernels before 5.19 refuse it: the endpoint
    // works without it.
    let segs = u32::try_from(plan.gso_max_segs).unwrap_or(u32::MAX);
    if let Err(e) = nl.set_gso_max_segs(dev, segs) {
        tracing::warn!(dev, error = %e, "cannot limit TSO frames to one UDP GSO send");
    }
    nl.set_up(dev)?;
    for gw in &plan.gateways {
        nl.replace_default_route(dev, *gw)?;
    }
    Ok(())
}

/// The per-VNI bridge of sidecar endpoints and the TAP that joins it.
pub struct Bridge {
    pub vni: Vni,
    pub name: String,
    pub tap: Arc<Tap>,
    pub port: PortId,
    pub members: usize,
}

/// `vxbr<VNI>`: the bridge of the sidecar endpoints of `vni`.
pub fn bridge_name(vni: Vni) -> String {
    format!("vxbr{vni}")
}

impl Bridge {
    /// Creates `vxbr<VNI>` with the TAP `vxtap<VNI>` in the calling thread's
    /// namespace (the dataplane's). Neither gets IPv6 link-local addresses:
    /// they are plumbing, not hosts, and must not send frames of their own
    /// into the overlay. On failure nothing is left.
    pub fn create(vni: Vni, port: PortId, mtu: u32) -> Result<Bridge, String> {
        let name = bridge_name(vni);
        let tap_name = format!("vxtap{vni}");
        let mut nl = Netlink::open().map_err(|e| e.to_string())?;
        nl.add_bridge(&name)
            .map_err(|e| format!("cannot create bridge {name}: {e}"))?;
        let made = (|| {
            nl.set_addr_gen_mode_none(&name)?;
            nl.set_mtu(&name, mtu)?;
            nl.set_up(&name)?;
            let tap = Tap::create(&tap_name).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot create TAP {tap_name}: {e}"))
            })?;
            nl.set_addr_gen_mode_none(&tap_name)?;
            nl.set_mtu(&tap_name, mtu)?;
            nl.set_controller(&tap_name, &name)?;
            nl.set_up(&tap_name)?;
            Ok::<_, std::io::Error>(tap)
        })();
        match made {
            Ok(tap) => Ok(Bridge {
                vni,
                name,
                tap: Arc::new(tap),
                port,
                members: 0,
            }),
            Err(e) => {
                // The TAP (if made) is gone with its descriptor already.
                let _ = nl.del_link(&name);
                Err(format!("cannot set up bridge {name}: {e}"))
            }
        }
    }

    pub fn destroy(self) {
        drop(self.tap);
        if let Err(e) = Netlink::open().and_then(|mut nl| nl.del_link(&self.name)) {
            tracing::warn!(bridge = %self.name, error = %e, "cannot delete bridge");
        }
    }
}

/// Puts the host side of a container's veth on the bridge `bridge`, with
/// the network's MTU, and brings it up.
pub fn enslave(bridge: &str, veth: &str, mtu: u32) -> Result<(), String> {
    let mut nl = Netlink::open().map_err(|e| e.to_string())?;
    match nl.link_exists(veth) {
        Ok(true) => {}
        Ok(false) => {
            return Err(format!(
                "veth {veth} does not exist in the dataplane's network namespace"
            ));
        }
        Err(e) => return Err(e.to_string()),
    }
    nl.set_mtu(veth, mtu)
        .and_then(|()| nl.set_controller(veth, bridge))
        .and_then(|()| nl.set_up(veth))
        .map_err(|e| format!("cannot put {veth} on bridge {bridge}: {e}"))
}

/// Takes a veth off its bridge (it may already be gone with its container).
pub fn release(veth: &str) {
    if let Ok(mut nl) = Netlink::open() {
        let _ = nl.release(veth);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ips: &[&str]) -> Attach {
        Attach {
            target: AttachTarget::Netns("c1".into()),
            vni: Vni::new(4096).unwrap(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            mac: None,
            mtu: None,
            gateways: vec![],
            ifname: None,
            owner: Default::default(),
        }
    }

    #[test]
    fn defaults() {
        let p = Plan::validate(&req(&["10.0.0.2/24"]), 1450, 22).unwrap();
        assert_eq!(p.mtu, 1450);
        assert_eq!(p.ifname, "eth0");
        assert_eq!(p.mac.to_string(), "02:42:0a:00:00:02");
        // 1472-byte datagrams: 44 fill a send (64,768 bytes), 45 do not.
        assert_eq!(p.gso_max_segs, 44);
    }

    #[test]
    fn tso_frames_fit_one_send() {
        let jumbo = Attach {
            mtu: Some(8950),
            ..req(&["10.0.0.2/24"])
        };
        assert_eq!(Plan::validate(&jumbo, 1450, 22).unwrap().gso_max_segs, 7);
        let encrypted = Plan::validate(&req(&["10.0.0.2/24"]), 1408, 64).unwrap();
        assert_eq!(encrypted.gso_max_segs, 44);
    }

    #[test]
    fn refusals_say_what_to_fix() {
        let cases: Vec<(Attach, &str)> = vec![
            (req(&[]), "at least one address"),
            (req(&["10.0.0.2/24", "10.0.0.2/24"]), "twice"),
            (
                Attach {
                    mtu: Some(67),
                    ..req(&["10.0.0.2/24"])
                },
                "MTU 67 is outside 68..",
            ),
            (
                Attach {
                    mtu: Some(1200),
                    ..req(&["10.0.0.2/24", "fd00::2/64"])
                },
                "RFC 8200",
            ),
            (
                Attach {
                    ifname: Some("a/b".into()),
                    ..req(&["10.0.0.2/24"])
                },
                "interface name",
            ),
            (
                Attach {
                    ifname: Some("x".repeat(16)),
                    owner: Default::default(),
                    ..req(&["10.0.0.2/24"])
                },
                "interface name",
            ),
            (
                Attach {
                    gateways: vec!["10.0.1.1".parse().unwrap()],
                    ..req(&["10.0.0.2/24"])
                },
                "not inside",
            ),
            (
                Attach {
                    mac: Some(MacAddr::BROADCAST),
                    ..req(&["10.0.0.2/24"])
                },
                "unicast",
            ),
            (
                Attach {
                    target: AttachTarget::Veth("v1".into()),
                    ..req(&["10.0.0.2/24"])
                },
                "--mac",
            ),
        ];
        for (r, word) in cases {
            let e = Plan::validate(&r, 1450, 22).unwrap_err();
            assert!(e.contains(word), "'{e}' should mention '{word}'");
        }
        let ok = Attach {
            gateways: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            ..req(&["10.0.0.2/24", "fd00::2/64"])
        };
        assert!(Plan::validate(&ok, 1450, 22).is_ok());
    }

    #[test]
    fn subnet_membership() {
        let n: IpNet = "10.0.0.2/24".parse().unwrap();
        assert!(in_subnet(&n, "10.0.0.1".parse().unwrap()));
        assert!(!in_subnet(&n, "10.0.1.1".parse().unwrap()));
        assert!(!in_subnet(&n, "10.0.0.2".parse().unwrap()));
        let z: IpNet = "10.0.0.2/0".parse().unwrap();
        assert!(in_subnet(&z, "192.0.2.1".parse().unwrap()));
        let v6: IpNet = "fd00::2/64".parse().unwrap();
        assert!(in_subnet(&v6, "fd00::1".parse().unwrap()));
        assert!(!in_subnet(&v6, "10.0.0.1".parse().unwrap()));
    }
}
