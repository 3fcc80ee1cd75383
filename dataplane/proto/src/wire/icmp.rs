//! "Too big" answers: ICMP destination unreachable / fragmentation needed
//! (RFC 792, with the next-hop MTU of RFC 1191 section 4) and ICMPv6
//! packet too big (RFC 4443 section 3.2), built in answer to an inner frame
//! that does not fit the underlay after encapsulation. This module owns
//! reading the few header fields that decide whether a frame may be
//! answered, and writing the answer as a whole Ethernet frame.
//!
//! It does what Linux's bridge and VXLAN do for the same case
//! (`iptunnel_pmtud_check_icmp[v6]` and `iptunnel_pmtud_build_icmp[v6]` in
//! net/ipv4/ip_tunnel_core.c): the answer goes from the original
//! destination to the original source, at both Ethernet and IP level (so
//! the sender's stack takes it as coming from the path), with the original
//! TTL or hop limit, quoting as much of the original packet as fits in 576
//! bytes (IPv4) or in the IPv6 minimum MTU of 1280 bytes.
//!
//! ```text
//! Ethernet (14) | IPv4 (20, DF, proto 1) | type 3 | code 4 | checksum | unused (2) | MTU (2) | quoted IPv4 packet
//! Ethernet (14) | IPv6 (40, next 58)     | type 2 | code 0 | checksum |        MTU (4)       | quoted IPv6 packet
//! ```
//!
//! Not answered, as in Linux: IPv4 without DF or that is a fragment, to a
//! broadcast or multicast address or from an unusable source (0.0.0.0/8,
//! loopback, broadcast, multicast); IPv6 from the unspecified, loopback or
//! a multicast address, or a non-first fragment; ICMP and ICMPv6 errors; an
//! MTU below the family's minimum (576 and 1280). Such a frame is sent as
//! it is and the outer datagram is fragmented.

use super::checksum;
use std::net::{Ipv4Addr, Ipv6Addr};

const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;
const IPV4_DF: u16 = 0x4000;
/// An IPv4 ICMP error is at most this long (RFC 1812 section 4.3.2.3).
const MAX_V4_ERROR: usize = 576;
/// An ICMPv6 error is at most the IPv6 minimum MTU (RFC 4443 section 2.4).
const MAX_V6_ERROR: usize = 1280;
/// The smallest MTU answered: the IPv4 minimum datagram every host
/// accepts (Linux does not answer below it either).
pub const MIN_MTU_V4: u32 = 576;
/// The IPv6 minimum link MTU (RFC 8200 section 5).
pub const MIN_MTU_V6: u32 = 1280;
/// The longest answer: Ethernet plus the longest ICMPv6 error.
pub const MAX_LEN: usize = ETH_HLEN + MAX_V6_ERROR;

/// Writes into `out` a complete Ethernet frame telling the sender of
/// `frame` (a whole inner Ethernet frame) that it is too big and that
/// `mtu` bytes of IP packet fit; returns the answer's length. `None` when
/// the frame must not be answered (see the module docs) or is not an IP
/// packet with a readable header.
pub fn emit_too_big(frame: &[u8], mtu: u32, out: &mut [u8; MAX_LEN]) -> Option<usize> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    match ethertype {
        ETHERTYPE_IPV4 => v4(frame, mtu, out),
        ETHERTYPE_IPV6 => v6(frame, mtu, out),
        _ => None,
    }
}

/// The Ethernet header of the answer: back to the sender, from the MAC the
/// frame was sent to.
fn reverse_ethernet(frame: &[u8], ethertype: u16, out: &mut [u8]) {
    out[0..6].copy_from_slice(&frame[6..12]);
    out[6..12].copy_from_slice(&frame[0..6]);
    out[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

fn v4(frame: &[u8], mtu: u32, out: &mut [u8; MAX_LEN]) -> Option<usize> {
    let ip = frame.get(ETH_HLEN..)?;
    let h = ip.get(..20)?;
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || ihl < 20 || ip.len() < ihl {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let frag = u16::from_be_bytes([h[6], h[7]]);
    if mtu < MIN_MTU_V4 || frag != IPV4_DF {
        return None;
    }
    let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
    let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
    let bad_src = src.octets()[0] == 0 || src.is_loopback() || src.is_broadcast();
    if dst.is_broadcast() || dst.is_multicast() || bad_src || src.is_multicast() {
        return None;
    }
    if h[9] == PROTO_ICMP && is_icmp_error(*ip.get(ihl)?) {
        return None;
    }
    // Ethernet padding is not part of the packet; a TSO frame's total
    // length may exceed what is there (or be 0): quote what is there.
    let len = if total >= ihl {
        total.min(ip.len())
    } else {
        ip.len()
    };
    let quoted = len.min(MAX_V4_ERROR - 20 - 8);
    let icmp_len = 8 + quoted;
    let n = ETH_HLEN + 20 + icmp_len;
    reverse_ethernet(frame, ETHERTYPE_IPV4, out);
    let o = &mut out[ETH_HLEN..n];
    let [t0, t1] = ((20 + icmp_len) as u16).to_be_bytes();
    o[..20].copy_from_slice(&[
        0x45, 0, t0, t1, 0, 0, 0x40, 0, h[8], PROTO_ICMP, 0, 0, h[16], h[17], h[18], h[19], h[12],
        h[13], h[14], h[15],
    ]);
    let c = checksum::ipv4_header(&o[..20]);
    o[10..12].copy_from_slice(&c.to_be_bytes());
    let next_hop = u16::try_from(mtu).unwrap_or(u16::MAX).to_be_bytes();
    o[20..28].copy_from_slice(&[3, 4, 0, 0, 0, 0, next_hop[0], next_hop[1]]);
    o[28..].copy_from_slice(&ip[..quoted]);
    let c = checksum::finish(checksum::sum(&o[20..], 0));
    o[22..24].copy_from_slice(&c.to_be_bytes());
    Some(n)
}

/// ICMP types that are errors (RFC 792, RFC 1122 section 3.2.2): never
/// answered with another error.
fn is_icmp_error(t: u8) -> bool {
    matches!(t, 3 | 4 | 5 | 11 | 12)
}

fn v6(frame: &[u8], mtu: u32, out: &mut [u8; MAX_LEN]) -> Option<usize> {
    let ip = frame.get(ETH_HLEN..)?;
    let h = ip.get(..40)?;
    if h[0] >> 4 != 6 || mtu < MIN_MTU_V6 {
        return None;
    }
    let src = ipv6_at(&h[8..24]);
    if src.is_unspecified() || src.is_loopback() || src.is_multicast() {
        return None;
    }
    // Extension headers up to the upper layer (Linux: ipv6_skip_exthdr);
    // each is at least 8 bytes long, so this ends.
    let mut next = h[6];
    let mut at = 40;
    loop {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-byte
            // units after the first 8.
            0 | 43 | 60 => {
                let e = ip.get(at..at + 2)?;
                next = e[0];
                at += (usize::from(e[1]) + 1) * 8;
            }
            // Fragment: only a first fragment (offset 0) is answered.
            44 => {
                let e = ip.get(at..at + 8)?;
                if u16::from_be_bytes([e[2], e[3]]) & !0x7 != 0 {
                    return None;
                }
                next = e[0];
                at += 8;
            }
            // Authentication header: length in 4-byte units after the first 8.
            51 => {
                let e = ip.get(at..at + 2)?;
                next = e[0];
                at += (usize::from(e[1]) + 2) * 4;
            }
            _ => break,
        }
    }
    // ICMPv6 types below 128 are errors (RFC 4443 section 2.1).
    if next == PROTO_ICMPV6 && *ip.get(at)? < 128 {
        return None;
    }
    let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let len = (40 + payload).min(ip.len());
    let quoted = len.min(MAX_V6_ERROR - 40 - 8);
    let icmp_len = 8 + quoted;
    let n = ETH_HLEN + 40 + icmp_len;
    reverse_ethernet(frame, ETHERTYPE_IPV6, out);
    let o = &mut out[ETH_HLEN..n];
    let [l0, l1] = (icmp_len as u16).to_be_bytes();
    o[..8].copy_from_slice(&[0x60, 0, 0, 0, l0, l1, PROTO_ICMPV6, h[7]]);
    o[8..24].copy_from_slice(&h[24..40]);
    o[24..40].copy_from_slice(&h[8..24]);
    o[40..44].copy_from_slice(&[2, 0, 0, 0]);
    o[44..48].copy_from_slice(&mtu.to_be_bytes());
    o[48..].copy_from_slice(&ip[..quoted]);
    let dst = ipv6_at(&h[24..40]);
    let pseudo = checksum::pseudo_v6(dst, src, PROTO_ICMPV6, icmp_len as u32);
    let c = checksum::finish(checksum::sum(&o[40..], pseudo));
    o[42..44].copy_from_slice(&c.to_be_bytes());
    Some(n)
}

fn ipv6_at(b: &[u8]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[..16]);
    Ipv6Addr::from(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{
        Icmpv4Type, Icmpv6Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice,
    };

    const SRC_MAC: [u8; 6] = [2, 0x42, 10, 0, 0, 2];
    const DST_MAC: [u8; 6] = [2, 0x42, 10, 0, 0, 3];

    /// A TCP segment of `payload` bytes from 10.0.0.2 to 10.0.0.3 with DF,
    /// as a container's stack sends it.
    fn tcp4(payload: usize) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
            .tcp(40000, 5201, 7, 64000)
            .write(&mut v, &vec![0xab; payload])
            .unwrap();
        v[20] = 0x40;
        v[24..26].copy_from_slice(&[0, 0]);
        let c = checksum::ipv4_header(&v[14..34]);
        v[24..26].copy_from_slice(&c.to_be_bytes());
        v
    }

    fn tcp6(payload: usize) -> Vec<u8> {
        let mut v = Vec::new();
        let a = |last: u8| {
            let mut o = [0u8; 16];
            o[0] = 0xfd;
            o[15] = last;
            o
        };
        PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .ipv6(a(2), a(3), 64)
            .tcp(40000, 5201, 7, 64000)
            .write(&mut v, &vec![0xab; payload])
            .unwrap();
        v
    }

    #[test]
    fn fragmentation_needed_for_a_df_packet() {
        let f = tcp4(1400);
        let mut out = [0u8; MAX_LEN];
        let n = emit_too_big(&f, 1350, &mut out).unwrap();
        assert_eq!(n, 14 + 576, "quotes up to 576 bytes of IP");
        let a = &out[..n];
        assert_eq!(&a[0..6], &SRC_MAC, "back to the sender");
        assert_eq!(&a[6..12], &DST_MAC, "from the MAC it was sent to");
        let p = SlicedPacket::from_ethernet(a).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not IPv4")
        };
        let h = ip.header();
        assert_eq!(h.source(), [10, 0, 0, 3]);
        assert_eq!(h.destination(), [10, 0, 0, 2]);
        assert_eq!(h.ttl(), 64);
        assert!(h.to_header().calc_header_checksum() == h.header_checksum());
        let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else {
            panic!("not ICMP")
        };
        assert_eq!(
            checksum::finish(checksum::sum(&a[34..], 0)),
            0,
            "ICMP checksum"
        );
        assert_eq!(
            icmp.icmp_type(),
            Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1350
                }
            )
        );
        assert_eq!(icmp.payload(), &f[14..14 + 548], "the original packet");
    }

    #[test]
    fn packet_too_big_for_ipv6() {
        let f = tcp6(1400);
        let mut out = [0u8; MAX_LEN];
        let n = emit_too_big(&f, 1330, &mut out).unwrap();
        assert_eq!(n, 14 + 1280, "quotes up to the IPv6 minimum MTU");
        let p = SlicedPacket::from_ethernet(&out[..n]).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not IPv6")
        };
        let h = ip.header();
        assert_eq!(h.source()[15], 3);
        assert_eq!(h.destination()[15], 2);
        assert_eq!(h.hop_limit(), 64);
        let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!("not ICMPv6")
        };
        assert!(icmp.is_checksum_valid(h.source(), h.destination()));
        assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1330 });
        assert_eq!(icmp.payload(), &f[14..14 + 1232]);
        // A short packet is quoted whole.
        let small = tcp6(100);
        let n = emit_too_big(&small, 1330, &mut out).unwrap();
        assert_eq!(n, 14 + 48 + small.len() - 14);
    }

    #[test]
    fn what_linux_does_not_answer() {
        let mut out = [0u8; MAX_LEN];
        let f = tcp4(1400);
        let mutate = |i: usize, v: u8| {
            let mut g = f.clone();
            g[i] = v;
            g
        };
        let mut o = [0u8; MAX_LEN];
        assert!(
            emit_too_big(&mutate(20, 0), 1350, &mut o).is_none(),
            "no DF"
        );
        assert!(
            emit_too_big(&mutate(20, 0x60), 1350, &mut o).is_none(),
            "DF+MF"
        );
        assert!(
            emit_too_big(&mutate(30, 224), 1350, &mut o).is_none(),
            "multicast"
        );
        assert!(
            emit_too_big(&mutate(26, 127), 1350, &mut o).is_none(),
            "loopback src"
        );
        assert!(
            emit_too_big(&mutate(26, 0), 1350, &mut o).is_none(),
            "0.0.0.0/8 src"
        );
        assert!(emit_too_big(&f, 575, &mut out).is_none(), "MTU below 576");
        assert!(
            emit_too_big(&mutate(12, 0x86), 1350, &mut o).is_none(),
            "ARP"
        );
        // An ICMP error is not answered; an echo request is.
        let mut icmp = mutate(23, PROTO_ICMP);
        icmp[34] = 3;
        assert!(emit_too_big(&icmp, 1350, &mut o).is_none());
        icmp[34] = 8;
        assert!(emit_too_big(&icmp, 1350, &mut o).is_some());
        let v6 = tcp6(1400);
        assert!(emit_too_big(&v6, 1279, &mut o).is_none(), "below 1280");
        let mut mc_src = v6.clone();
        mc_src[22] = 0xff;
        assert!(emit_too_big(&mc_src, 1330, &mut o).is_none());
        let mut err6 = v6.clone();
        err6[20] = PROTO_ICMPV6;
        err6[54] = 1;
        assert!(emit_too_big(&err6, 1330, &mut o).is_none(), "ICMPv6 error");
        err6[54] = 128;
        assert!(emit_too_big(&err6, 1330, &mut o).is_some(), "echo request");
        for n in 0..54 {
            if n < 34 {
                assert!(emit_too_big(&f[..n], 1350, &mut o).is_none(), "cut at {n}");
            }
            assert!(emit_too_big(&v6[..n], 1330, &mut o).is_none(), "cut at {n}");
        }
        // The IP header alone is enough to answer (and is all it quotes).
        let n = emit_too_big(&f[..34], 1350, &mut o).unwrap();
        assert_eq!(n, 14 + 28 + 20);
    }

    #[test]
    fn ipv6_extension_headers_are_followed() {
        // Hop-by-hop (8 bytes) then a fragment header, then TCP.
        let base = tcp6(200);
        let with = |frag_off: u16| {
            let mut g = base[..54].to_vec();
            g[20] = 0; // next: hop-by-hop
            g.extend_from_slice(&[44, 0, 1, 4, 0, 0, 0, 0]);
            let [o0, o1] = frag_off.to_be_bytes();
            g.extend_from_slice(&[6, 0, o0, o1, 0, 0, 0, 1]);
            g.extend_from_slice(&base[54..]);
            let plen = (g.len() - 54) as u16;
            g[18..20].copy_from_slice(&plen.to_be_bytes());
            g
        };
        let mut o = [0u8; MAX_LEN];
        assert!(
            emit_too_big(&with(1), 1330, &mut o).is_some(),
            "first fragment (M)"
        );
        assert!(
            emit_too_big(&with(8), 1330, &mut o).is_none(),
            "later fragment"
        );
        // An extension header running past the end.
        let mut cut = with(0);
        cut.truncate(60);
        assert!(emit_too_big(&cut, 1330, &mut o).is_none());
    }
}
