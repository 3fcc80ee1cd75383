//! The Linux kernel's own VXLAN, set up the way Docker's overlay driver does
//! it: per VNI a bridge `br<VNI>` holding a `vxlan<VNI>` device, containers
//! attached by a veth into the bridge. Used as the interop peer and as the
//! benchmark baseline.
//!
//! Learning stays on: the bridge and the vxlan device learn a remote MAC's
//! VTEP from received packets, so replies to a flooded ARP go unicast without
//! per-peer entries. Flooding (broadcast, unknown unicast) goes to every VTEP
//! given with an all-zero FDB entry (head-end replication, no multicast
//! group). Static per-MAC entries can be added for a vxnet peer that should
//! not depend on flooding.

use std::net::IpAddr;

use anyhow::{Result, bail};

use crate::topology::{Container, Host, Testbed, sh_in};
use crate::vxnet::EndpointSpec;

/// VXLAN overhead on an IPv4 underlay: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD_V4: u32 = 50;

/// A kernel VXLAN segment on one host.
#[derive(Debug, Clone)]
pub struct KernelVxlan {
    /// Namespace of the host it lives in.
    pub ns: String,
    pub vni: u32,
    pub port: u16,
    /// `br<VNI>`.
    pub bridge: String,
    /// `vxlan<VNI>`.
    pub dev: String,
    /// MTU of the vxlan device (underlay MTU - 50).
    pub mtu: u32,
}

impl Testbed {
    /// Creates `br<VNI>` + `vxlan<VNI>` in `host`, local VTEP = the host's
    /// underlay IPv4, flooding to each of `remotes`.
    pub fn kernel_vxlan(
        &self,
        host: &Host,
        vni: u32,
        port: u16,
        remotes: &[IpAddr],
    ) -> Result<KernelVxlan> {
        if vni == 0 || vni > 0x00ff_ffff {
            bail!("VNI {vni} out of range 1..=16777215");
        }
        let ns = host.ns.as_str();
        let bridge = format!("br{vni}");
        let dev = format!("vxlan{vni}");
        let mtu = self.underlay_mtu() - VXLAN_OVERHEAD_V4;
        let (vni_s, port_s, mtu_s, local) = (
            vni.to_string(),
            port.to_string(),
            mtu.to_string(),
            host.underlay_v4.to_string(),
        );
        sh_in(ns, &["ip", "link", "add", &bridge, "type", "bridge"])?;
        sh_in(ns, &["ip", "link", "set", &bridge, "mtu", &mtu_s, "up"])?;
        sh_in(
            ns,
            &[
                "ip", "link", "add", &dev, "mtu", &mtu_s, "type", "vxlan", "id", &vni_s, "local",
                &local, "dstport", &port_s, "dev", "eth0",
            ],
        )?;
        sh_in(ns, &["ip", "link", "set", &dev, "master", &bridge, "up"])?;
        let kv = KernelVxlan {
            ns: ns.to_string(),
            vni,
            port,
            bridge,
            dev,
            mtu,
        };
        for r in remotes {
            kv.flood_add(*r)?;
        }
        Ok(kv)
    }

    /// Attaches `c` to the segment: a veth `v<name>` in the host, enslaved to
    /// the bridge, its peer `eth0` in the container with `ep`'s MAC, addresses
    /// (IPv6 without DAD) and MTU.
    pub fn kernel_attach(&self, kv: &KernelVxlan, c: &Container, ep: &EndpointSpec) -> Result<()> {
        let port = format!("v{}", c.name);
        if port.len() > 15 {
            bail!("container name {} too long for an interface name", c.name);
        }
        let mtu = ep.mtu.to_string();
        sh_in(
            &kv.ns,
            &[
                "ip", "link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name", "eth0",
                "mtu", &mtu, "netns", &c.ns,
            ],
        )?;
        sh_in(
            &kv.ns,
            &["ip", "link", "set", &port, "master", &kv.bridge, "up"],
        )?;
        configure_eth0(&c.ns, ep)
    }
}

impl Testbed {
    /// Makes `host` put complete inner checksums on the wire, as a host with a
    /// real NIC does. Needed on a kernel-VXLAN host that talks to vxnet: over
    /// a veth underlay the kernel leaves the inner TCP/UDP checksum of an
    /// encapsulated packet unfinished (CHECKSUM_PARTIAL travels with the skb
    /// to the peer namespace), which a kernel receiver handles but a
    /// userspace receiver cannot see, so the container would drop every TCP
    /// segment with a checksum error. Turns off `tx-checksum-ip-generic` on
    /// the host's underlay `eth0` (needs `ethtool`).
    pub fn wire_checksums(&self, host: &Host) -> Result<()> {
        sh_in(
            &host.ns,
            &["ethtool", "-K", "eth0", "tx-checksum-ip-generic", "off"],
        )?;
        Ok(())
    }
}

/// Sets MAC and addresses on an existing `eth0` in `ns` and brings it up.
pub fn configure_eth0(ns: &str, ep: &EndpointSpec) -> Result<()> {
    sh_in(ns, &["ip", "link", "set", "eth0", "address", &ep.mac])?;
    sh_in(
        ns,
        &["ip", "link", "set", "eth0", "mtu", &ep.mtu.to_string()],
    )?;
    for ip in &ep.ips {
        if ip.contains(':') {
            sh_in(ns, &["ip", "addr", "add", ip, "dev", "eth0", "nodad"])?;
        } else {
            sh_in(ns, &["ip", "addr", "add", ip, "dev", "eth0"])?;
        }
    }
    sh_in(ns, &["ip", "link", "set", "eth0", "up"])?;
    Ok(())
}

impl KernelVxlan {
    /// Floods broadcast and unknown unicast to `vtep` too.
    pub fn flood_add(&self, vtep: IpAddr) -> Result<()> {
        let v = vtep.to_string();
        sh_in(
            &self.ns,
            &[
                "bridge",
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                &self.dev,
                "dst",
                &v,
            ],
        )?;
        Ok(())
    }

    /// A static entry: `mac` is behind `vtep`.
    pub fn peer_add(&self, mac: &str, vtep: IpAddr) -> Result<()> {
        let v = vtep.to_string();
        sh_in(
            &self.ns,
            &[
                "bridge",
                "fdb",
                "replace",
                mac,
                "dev",
                &self.dev,
                "dst",
                &v,
                "self",
                "permanent",
            ],
        )?;
        Ok(())
    }

    /// Removes the device and the bridge (their veths stay, detached).
    pub fn delete(&self) -> Result<()> {
        sh_in(&self.ns, &["ip", "link", "del", &self.dev])?;
        sh_in(&self.ns, &["ip", "link", "del", &self.bridge])?;
        Ok(())
    }
}
