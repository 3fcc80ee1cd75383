//! The path MTU rule (issue 12), in one place for the control plane, for
//! `vxnet dp attach` and for the engine's "too big" check.
//!
//! An endpoint's MTU is the MTU of the underlay interface that carries the
//! VTEP address, minus what encapsulation adds in front of the inner IP
//! packet, minus ESP on an encrypted network; an explicit network `mtu`
//! option wins over it (the caller decides that).
//!
//! ```text
//!  plain:     outer IP (20 | 40) │ UDP 8 │ VXLAN 8 │ Ethernet 14 │ inner IP packet
//!             = 50 bytes over IPv4, 70 over IPv6 (the kernel's VXLAN_HEADROOM)
//!  encrypted: outer IP │ UDP 8 │ ESP hdr+IV 16 │ UDP 8 │ VXLAN 8 │ Ethernet 14 │ inner IP │ pad 0-3 │ 2 │ ICV 16
//!             = 42 bytes more, padding to 4 bytes included by keeping the MTU a multiple of 4
//! ```
//!
//! [`Underlay::max_frame`] is the exact counterpart for one inner Ethernet
//! frame: the longest frame whose datagram still fits the underlay MTU. A
//! frame of the endpoint MTU plus its Ethernet header is always within it.

use crate::crypto::esp;
use crate::wire::vxlan;

/// Outer IPv4 + UDP + VXLAN + inner Ethernet header: 1500 - 50 = 1450.
pub const OVERHEAD_V4: u32 = 50;
/// Outer IPv6 + UDP + VXLAN + inner Ethernet header: 1500 - 70 = 1430.
pub const OVERHEAD_V6: u32 = 70;
/// What ESP adds on top (header and IV 16, inner UDP header 8, pad length
/// and next header 2, ICV 16) for an inner packet whose length is a
/// multiple of 4 (no padding): 1450 - 42 = 1408.
pub const ESP_OVERHEAD: u32 = 42;
/// The underlay MTU assumed when the interface of the VTEP address is not
/// known (Ethernet's).
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;

const ETH_HLEN: usize = 14;
const UDP_HLEN: usize = 8;

/// What carries the VXLAN datagrams: the MTU of the interface holding the
/// VTEP address, and the VTEP's address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Underlay {
    /// Bytes, the interface MTU (outer IP packet).
    pub mtu: u32,
    /// The VTEP is an IPv6 address (40-byte outer header).
    pub ipv6: bool,
}

impl Underlay {
    /// No limit: every frame fits. What a table has before the dataplane
    /// knows its underlay (and what unit tests use).
    pub const UNLIMITED: Underlay = Underlay {
        mtu: u32::MAX,
        ipv6: false,
    };

    pub fn new(mtu: u32, ipv6: bool) -> Underlay {
        Underlay { mtu, ipv6 }
    }

    fn outer_ip(self) -> usize {
        if self.ipv6 { 40 } else { 20 }
    }

    /// The endpoint MTU (inner IP packet, bytes) this underlay carries:
    /// 1450 plain and 1408 encrypted over a 1500-byte IPv4 underlay, 1430
    /// and 1388 over IPv6. Encrypted MTUs are rounded down to a multiple of
    /// 4 so that ESP needs no padding at full size. Saturates at 0 (the
    /// caller refuses MTUs too small to use).
    pub fn endpoint_mtu(self, encrypted: bool) -> u32 {
        let overhead = if self.ipv6 { OVERHEAD_V6 } else { OVERHEAD_V4 };
        let plain = self.mtu.saturating_sub(overhead);
        if encrypted {
            plain.saturating_sub(ESP_OVERHEAD) & !3
        } else {
            plain
        }
    }

    /// The longest inner Ethernet frame (bytes, from its destination MAC to
    /// the end of its payload) whose datagram fits this underlay's MTU.
    pub fn max_frame(self, encrypted: bool) -> usize {
        if self.mtu == u32::MAX {
            return usize::MAX;
        }
        let room = (self.mtu as usize).saturating_sub(self.outer_ip() + UDP_HLEN);
        if encrypted {
            // ESP header ‖ E(UDP ‖ VXLAN ‖ frame ‖ pad ‖ 2) ‖ ICV, with the
            // encrypted part padded to a multiple of 4.
            let sealed = room.saturating_sub(esp::HEADER_LEN + esp::ICV_LEN) & !3;
            sealed.saturating_sub(UDP_HLEN + vxlan::HEADER_LEN + 2)
        } else {
            room.saturating_sub(vxlan::HEADER_LEN)
        }
    }

    /// The inner IP MTU a "too big" answer reports for frames of a VNI:
    /// what [`Underlay::max_frame`] leaves after the Ethernet header.
    pub fn path_mtu(self, encrypted: bool) -> u32 {
        u32::try_from(self.max_frame(encrypted).saturating_sub(ETH_HLEN)).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes a frame of `len` becomes on the underlay, outer IP header
    /// included, built the way the engine builds it.
    fn wire_len(u: Underlay, encrypted: bool, len: usize) -> usize {
        let udp_payload = if encrypted {
            esp::sealed_len(UDP_HLEN + vxlan::HEADER_LEN + len)
        } else {
            vxlan::HEADER_LEN + len
        };
        u.outer_ip() + UDP_HLEN + udp_payload
    }

    #[test]
    fn the_rule_on_common_underlays() {
        let v4 = |mtu| Underlay::new(mtu, false);
        let v6 = |mtu| Underlay::new(mtu, true);
        assert_eq!(v4(1500).endpoint_mtu(false), 1450, "Docker's default");
        assert_eq!(v4(1500).endpoint_mtu(true), 1408);
        assert_eq!(v6(1500).endpoint_mtu(false), 1430);
        assert_eq!(v6(1500).endpoint_mtu(true), 1388);
        assert_eq!(v4(1400).endpoint_mtu(false), 1350, "issue 12's underlay");
        assert_eq!(v4(1400).endpoint_mtu(true), 1308);
        assert_eq!(v6(9000).endpoint_mtu(false), 8930);
        assert_eq!(v4(9000).endpoint_mtu(true), 8908);
        assert_eq!(v4(40).endpoint_mtu(true), 0, "saturates");
    }

    #[test]
    fn max_frame_is_exact() {
        for mtu in [1280, 1400, 1401, 1402, 1403, 1500, 9000] {
            for ipv6 in [false, true] {
                for encrypted in [false, true] {
                    let u = Underlay::new(mtu, ipv6);
                    let max = u.max_frame(encrypted);
                    assert!(wire_len(u, encrypted, max) <= mtu as usize);
                    assert!(
                        wire_len(u, encrypted, max + 1) > mtu as usize,
                        "{mtu} v6={ipv6} enc={encrypted}: {max} is not the largest"
                    );
                    // A frame of the endpoint MTU always fits.
                    let mtu_frame = u.endpoint_mtu(encrypted) as usize + ETH_HLEN;
                    assert!(mtu_frame <= max, "{mtu} v6={ipv6} enc={encrypted}");
                    assert!(u.path_mtu(encrypted) >= u.endpoint_mtu(encrypted));
                }
            }
        }
        assert_eq!(Underlay::UNLIMITED.max_frame(true), usize::MAX);
    }
}
