//! Ready-made two-host setups shared by the demo, the benchmark and the
//! integration tests: one container per host on one VNI, either through vxnet
//! dataplanes or through kernel VXLAN.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Result;

use crate::kernel_vxlan::{KernelVxlan, VXLAN_OVERHEAD_V4};
use crate::topology::{Container, Testbed};
use crate::vxnet::{Dataplane, DataplaneOptions, EndpointSpec};

/// The VNI of the demo and of most tests.
pub const DEMO_VNI: u32 = 4096;

/// The VNI of the encrypted-overlay tests.
pub const ENCRYPTED_VNI: u32 = 4097;

/// What ESP adds inside the outer UDP header, for a frame whose ESP payload
/// needs no padding: ESP header 8, IV 8, inner UDP 8, pad length and next
/// header 2, ICV 16.
pub const ESP_OVERHEAD: u32 = 42;

/// How long a first handshake or a rotation may take (it completes within
/// milliseconds; this is the safety net for a loaded machine).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The standard VXLAN port.
pub const VXLAN_PORT: u16 = 4789;

/// Endpoint `n` of overlay `net`: MAC 02:<net>:00:00:00:<n>, 10.<net>.0.<n>/24
/// and fd<net>::<n>/64 (both numbers printed in decimal).
pub fn numbered_endpoint(net: u8, n: u8, mtu: u32) -> EndpointSpec {
    EndpointSpec {
        mac: format!("02:{net:02}:00:00:00:{n:02}"),
        ips: vec![format!("10.{net}.0.{n}/24"), format!("fd{net}::{n}/64")],
        mtu,
    }
}

/// The container MTU that fits the testbed's underlay.
pub fn overlay_mtu(tb: &Testbed) -> u32 {
    tb.underlay_mtu() - VXLAN_OVERHEAD_V4
}

/// The container MTU of an encrypted network on the testbed's underlay
/// (1408 on a 1500 underlay, the dataplane's default).
pub fn encrypted_overlay_mtu(tb: &Testbed) -> u32 {
    overlay_mtu(tb) - ESP_OVERHEAD
}

/// Two vxnet containers, `c1` on host1 and `c2` on host2, each told about
/// the other with `peer add`.
#[derive(Debug)]
pub struct VxnetPair {
    pub vni: u32,
    pub dp1: Dataplane,
    pub dp2: Dataplane,
    pub c1: Container,
    pub c2: Container,
    pub ep1: EndpointSpec,
    pub ep2: EndpointSpec,
}

/// Two kernel-VXLAN containers, one per host.
#[derive(Debug)]
pub struct KernelPair {
    pub vni: u32,
    pub k1: KernelVxlan,
    pub k2: KernelVxlan,
    pub c1: Container,
    pub c2: Container,
    pub ep1: EndpointSpec,
    pub ep2: EndpointSpec,
}

impl KernelPair {
    /// Removes both kernel VXLAN devices and bridges (frees the UDP port for
    /// a dataplane).
    pub fn delete(&self) -> Result<()> {
        self.k1.delete()?;
        self.k2.delete()
    }
}

impl Testbed {
    /// Starts dataplanes on host1 and host2, attaches containers `names.0`
    /// and `names.1` (endpoints 2 and 3 of overlay 44) and programs peers.
    pub fn vxnet_pair(
        &self,
        vni: u32,
        opts: &DataplaneOptions,
        names: (&str, &str),
    ) -> Result<VxnetPair> {
        let mtu = if opts.underlay_v6 {
            overlay_mtu(self) - (40 - 20)
        } else {
            overlay_mtu(self)
        };
        let dp1 = self.start_dataplane(self.host(1), opts)?;
        let dp2 = self.start_dataplane(self.host(2), opts)?;
        self.attach_pair(dp1, dp2, vni, 44, mtu, opts, names)
    }

    /// The VTEP address of `host` the dataplanes use with `opts`.
    fn vtep_of(host: &crate::Host, opts: &DataplaneOptions) -> String {
        if opts.underlay_v6 {
            host.underlay_v6.to_string()
        } else {
            host.underlay_v4.to_string()
        }
    }

    /// Containers `names` on host1 and host2, endpoints 2 and 3 of overlay
    /// `net`, attached to the running dataplanes and made peers.
    #[allow(clippy::too_many_arguments)]
    fn attach_pair(
        &self,
        dp1: Dataplane,
        dp2: Dataplane,
        vni: u32,
        net: u8,
        mtu: u32,
        opts: &DataplaneOptions,
        names: (&str, &str),
    ) -> Result<VxnetPair> {
        let (h1, h2) = (self.host(1).clone(), self.host(2).clone());
        let c1 = self.add_container(&h1, names.0)?;
        let c2 = self.add_container(&h2, names.1)?;
        let ep1 = numbered_endpoint(net, 2, mtu);
        let ep2 = numbered_endpoint(net, 3, mtu);
        dp1.attach(&c1, vni, &ep1)?;
        dp2.attach(&c2, vni, &ep2)?;
        dp1.peer_add(vni, &ep2, &Self::vtep_of(&h2, opts))?;
        dp2.peer_add(vni, &ep1, &Self::vtep_of(&h1, opts))?;
        Ok(VxnetPair {
            vni,
            dp1,
            dp2,
            c1,
            c2,
            ep1,
            ep2,
        })
    }

    /// [`Testbed::vxnet_pair`] on an encrypted network: both dataplanes get
    /// `network add --vni N --encrypted`, containers are attached with
    /// [`encrypted_overlay_mtu`] and peers programmed, then each dataplane
    /// gets the other's public key and the handshake is awaited (`vtep ls`
    /// shows both sides established). `opts.allow_key_export` is needed for
    /// `sa --show-keys`.
    pub fn vxnet_encrypted_pair(
        &self,
        vni: u32,
        opts: &DataplaneOptions,
        names: (&str, &str),
    ) -> Result<VxnetPair> {
        let p = self.vxnet_encrypted_pair_without_keys(vni, opts, names)?;
        let (v1, v2) = (
            Self::vtep_of(self.host(1), opts),
            Self::vtep_of(self.host(2), opts),
        );
        let (k1, k2) = (p.dp1.public_key()?, p.dp2.public_key()?);
        p.dp1.vtep_add(&v2, &k2)?;
        p.dp2.vtep_add(&v1, &k1)?;
        p.dp1.wait_vtep(&v2, 0, HANDSHAKE_TIMEOUT)?;
        p.dp2.wait_vtep(&v1, 0, HANDSHAKE_TIMEOUT)?;
        Ok(p)
    }

    /// [`Testbed::vxnet_encrypted_pair`] before `vtep add`: neither
    /// dataplane knows the other's key, so no SA exists and nothing crosses
    /// until the test adds the keys.
    pub fn vxnet_encrypted_pair_without_keys(
        &self,
        vni: u32,
        opts: &DataplaneOptions,
        names: (&str, &str),
    ) -> Result<VxnetPair> {
        let (h1, h2) = (self.host(1).clone(), self.host(2).clone());
        let mut mtu = encrypted_overlay_mtu(self);
        if opts.underlay_v6 {
            mtu -= 40 - 20;
        }
        let dp1 = self.start_dataplane(&h1, opts)?;
        let dp2 = self.start_dataplane(&h2, opts)?;
        dp1.network_add(vni, true)?;
        dp2.network_add(vni, true)?;
        self.attach_pair(dp1, dp2, vni, 46, mtu, opts, names)
    }

    /// Kernel VXLAN on host1 and host2 flooding to each other, containers
    /// `names.0` and `names.1` (endpoints 2 and 3 of overlay 45).
    pub fn kernel_pair(&self, vni: u32, port: u16, names: (&str, &str)) -> Result<KernelPair> {
        let (h1, h2) = (self.host(1).clone(), self.host(2).clone());
        let mtu = overlay_mtu(self);
        let k1 = self.kernel_vxlan(&h1, vni, port, &[IpAddr::V4(h2.underlay_v4)])?;
        let k2 = self.kernel_vxlan(&h2, vni, port, &[IpAddr::V4(h1.underlay_v4)])?;
        let c1 = self.add_container(&h1, names.0)?;
        let c2 = self.add_container(&h2, names.1)?;
        let ep1 = numbered_endpoint(45, 2, mtu);
        let ep2 = numbered_endpoint(45, 3, mtu);
        self.kernel_attach(&k1, &c1, &ep1)?;
        self.kernel_attach(&k2, &c2, &ep2)?;
        Ok(KernelPair {
            vni,
            k1,
            k2,
            c1,
            c2,
            ep1,
            ep2,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_endpoints() {
        let e = numbered_endpoint(44, 3, 1450);
        assert_eq!(e.mac, "02:44:00:00:00:03");
        assert_eq!(e.ips, vec!["10.44.0.3/24", "fd44::3/64"]);
        assert_eq!(e.mtu, 1450);
        // 1500 - 50 (VXLAN over IPv4) - 42 (ESP) = the dataplane's default.
        assert_eq!(1500 - VXLAN_OVERHEAD_V4 - ESP_OVERHEAD, 1408);
    }
}
