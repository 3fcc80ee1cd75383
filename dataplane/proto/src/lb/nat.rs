//! Address (and port) translation of one Ethernet frame in place, with
//! incremental checksum updates (RFC 1624): the IPv4 header checksum, the
//! TCP/UDP checksum (whose pseudo header covers the addresses) and the
//! ICMPv6 checksum (likewise). The ICMPv4 checksum covers no address and
//! is left alone.
//!
//! Frames read from a TAP with NEEDS_CSUM (every TSO/GSO frame, and small
//! ones when checksum offload is on) carry in their L4 checksum field only
//! the folded pseudo-header sum (CHECKSUM_PARTIAL); whoever completes it
//! later (our segmentation, or the receiving kernel) sums the L4 header
//! and payload onto it. For those, `partial` is true: an address change
//! moves the field by the same difference but uncomplemented, and a port
//! change does not touch it (the port is summed later, where it lies).
//!
//! The VIP path translates addresses only (Docker's VIP mode keeps the
//! port); port translation is here for the ingress mesh (published port →
//! target port).
use crate::offload::IpInfo;
use crate::wire::{MacAddr, checksum};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

const ETH: usize = 14;

/// Why a frame cannot be translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatError {
    /// Not IPv4/IPv6, or lengths that do not add up.
    Malformed,
    /// An IPv4 fragment (no ports to go by).
    Fragment,
    /// The new address is of the other family.
    Family,
}

/// The addresses and ports of an IP frame, and where its headers lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L4 {
    pub v6: bool,
    /// Offset of the L4 header in the frame.
    pub l4: usize,
    /// End of the IP packet in the frame (Ethernet padding excluded).
    pub end: usize,
    /// IPv4 protocol or IPv6 next header (extension headers are not
    /// followed: they show here as their own number).
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TCP/UDP ports; 0 for other protocols.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags; 0 for other protocols.
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type; 0 for other protocols.
    pub icmp_type: u8,
}

/// Reads an Ethernet frame's IP and TCP/UDP/ICMP headers. Lengths are
/// checked: the L4 header must lie within the IP packet. IPv4 fragments
/// are an error (only the first carries ports).
#[inline]
pub fn parse(frame: &[u8]) -> Result<L4, NatError> {
    let ip = IpInfo::parse(frame).map_err(|_| NatError::Malformed)?;
    if ip.fragment {
        return Err(NatError::Fragment);
    }
    let (src, dst) = if ip.v6 {
        let a = |o: usize| {
            let mut b = [0u8; 16];
            b.copy_from_slice(&frame[ETH + o..ETH + o + 16]);
            IpAddr::V6(Ipv6Addr::from(b))
        };
        (a(8), a(24))
    } else {
        let a = |o: usize| {
            let b = &frame[ETH + o..ETH + o + 4];
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        };
        (a(12), a(16))
    };
    let l4 = &frame[ip.l4..ip.end];
    let mut p = L4 {
        v6: ip.v6,
        l4: ip.l4,
        end: ip.end,
        proto: ip.proto,
        src,
        dst,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
    };
    let need = match ip.proto {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        PROTO_ICMP | PROTO_ICMPV6 => 4,
        _ => 0,
    };
    if l4.len() < need {
        return Err(NatError::Malformed);
    }
    match ip.proto {
        PROTO_TCP | PROTO_UDP => {
            p.sport = u16::from_be_bytes([l4[0], l4[1]]);
            p.dport = u16::from_be_bytes([l4[2], l4[3]]);
            if ip.proto == PROTO_TCP {
                p.tcp_flags = l4[13];
            }
        }
        PROTO_ICMP | PROTO_ICMPV6 => p.icmp_type = l4[0],
        _ => {}
    }
    Ok(p)
}

/// Which address of a packet to translate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

/// Offset of the L4 checksum field, if the protocol's checksum covers the
/// pseudo header.
fn l4_checksum_at(p: &L4) -> Option<usize> {
    match p.proto {
        PROTO_TCP => Some(p.l4 + 16),
        PROTO_UDP => Some(p.l4 + 6),
        PROTO_ICMPV6 if p.v6 => Some(p.l4 + 2),
        _ => None,
    }
}

/// Moves the 16-bit checksum at `at` for `old` → `new` bytes.
#[inline]
fn adjust(frame: &mut [u8], at: usize, old: &[u8], new: &[u8], partial: bool, udp: bool) {
    let c = u16::from_be_bytes([frame[at], frame[at + 1]]);
    let c = if partial {
        checksum::update_partial(c, old, new)
    } else {
        if udp && c == 0 {
            // IPv4 UDP without a checksum stays without one.
            return;
        }
        let c = checksum::update(c, old, new);
        if udp && c == 0 { 0xffff } else { c }
    };
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Rewrites the `side` address of the packet `p` (parsed from `frame`) to
/// `addr`, and for TCP/UDP its port to `port` if given, fixing every
/// checksum that covers them. `partial`: the frame's L4 checksum field
/// holds a partial sum (NEEDS_CSUM). `p` describes the frame as it was;
/// call [`parse`] again for the new values.
#[inline]
pub fn rewrite(
    frame: &mut [u8],
    p: &L4,
    side: Side,
    addr: IpAddr,
    port: Option<u16>,
    partial: bool,
) -> Result<(), NatError> {
    let mut new = [0u8; 16];
    let (at, len) = match (addr, p.v6) {
        (IpAddr::V4(a), false) => {
            new[..4].copy_from_slice(&a.octets());
            (ETH + if side == Side::Src { 12 } else { 16 }, 4)
        }
        (IpAddr::V6(a), true) => {
            new.copy_from_slice(&a.octets());
            (ETH + if side == Side::Src { 8 } else { 24 }, 16)
        }
        _ => return Err(NatError::Family),
    };
    if frame.len() < p.end || p.end < p.l4 {
        return Err(NatError::Malformed);
    }
    let new = &new[..len];
    let mut old = [0u8; 16];
    old[..len].copy_from_slice(&frame[at..at + len]);
    let old = &old[..len];
    let udp = p.proto == PROTO_UDP && !p.v6;
    if !p.v6 {
        adjust(frame, ETH + 10, old, new, false, false);
    }
    let l4_sum = l4_checksum_at(p);
    if let Some(c) = l4_sum {
        adjust(frame, c, old, new, partial, udp);
    }
    frame[at..at + len].copy_from_slice(new);
    if let Some(port) = port.filter(|_| matches!(p.proto, PROTO_TCP | PROTO_UDP)) {
        let o = p.l4 + if side == Side::Src { 0 } else { 2 };
        let old = [frame[o], frame[o + 1]];
        let new = port.to_be_bytes();
        if let (Some(c), false) = (l4_sum, partial) {
            adjust(frame, c, &old, &new, false, udp);
        }
        frame[o..o + 2].copy_from_slice(&new);
    }
    Ok(())
}

/// Sets a frame's destination MAC.
#[inline]
pub fn set_dst_mac(frame: &mut [u8], mac: MacAddr) {
    if let Some(d) = frame.get_mut(0..6) {
        d.copy_from_slice(&mac.0);
    }
}

/// Sets a frame's source MAC.
#[inline]
pub fn set_src_mac(frame: &mut [u8], mac: MacAddr) {
    if let Some(s) = frame.get_mut(6..12) {
        s.copy_from_slice(&mac.0);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::offload::testutil::assert_valid;
    use etherparse::PacketBuilder;

    pub(crate) fn tcp_frame(src: IpAddr, dst: IpAddr, flags_syn: bool, data: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0x42, 10, 0, 0, 2], [6, 0x56, 10, 0, 0, 100]);
        let b = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
            _ => panic!("mixed families"),
        };
        let mut t = b.tcp(40000, 80, 1000, 65535);
        if flags_syn {
            t = t.syn();
        } else {
            t = t.ack(5);
        }
        let mut out = Vec::new();
        t.write(&mut out, data).unwrap();
        out
    }

    fn udp_frame(src: IpAddr, dst: IpAddr, data: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2; 6], [4; 6]);
        let b = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => b.ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => b.ipv6(s.octets(), d.octets(), 64),
            _ => panic!("mixed families"),
        };
        let mut out = Vec::new();
        b.udp(5353, 53).write(&mut out, data).unwrap();
        out
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_reads_addresses_ports_and_flags() {
        let f = tcp_frame(ip("10.0.0.2"), ip("10.0.0.100"), true, b"");
        let p = parse(&f).unwrap();
        assert_eq!((p.src, p.dst), (ip("10.0.0.2"), ip("10.0.0.100")));
        assert_eq!((p.proto, p.sport, p.dport), (PROTO_TCP, 40000, 80));
        assert_eq!(p.tcp_flags & 0x02, 0x02);
        assert_eq!(p.end, f.len());
        // Cut inside the TCP header: refused, never read out of bounds.
        let mut cut = f.clone();
        cut[16..18].copy_from_slice(&30u16.to_be_bytes()); // IPv4 total 30
        assert_eq!(parse(&cut), Err(NatError::Malformed));
        let mut frag = f.clone();
        frag[20] = 0x20; // MF
        assert_eq!(parse(&frag), Err(NatError::Fragment));
        assert_eq!(parse(&f[..20]), Err(NatError::Malformed));
        for n in 0..f.len() {
            let _ = parse(&f[..n]);
        }
    }

    #[test]
    fn full_checksums_stay_valid_both_ways() {
        for (src, vip, backend) in [
            ("10.0.0.2", "10.0.0.100", "10.0.0.7"),
            ("fd00::2", "fd00::100", "fd00::7"),
        ] {
            for frame in [
                tcp_frame(ip(src), ip(vip), true, b""),
                tcp_frame(ip(src), ip(vip), false, &[7u8; 999]),
                udp_frame(ip(src), ip(vip), b"query"),
            ] {
                let mut f = frame.clone();
                let p = parse(&f).unwrap();
                rewrite(&mut f, &p, Side::Dst, ip(backend), None, false).unwrap();
                assert_valid(&f);
                let q = parse(&f).unwrap();
                assert_eq!((q.src, q.dst), (ip(src), ip(backend)));
                assert_eq!((q.sport, q.dport), (p.sport, p.dport), "ports kept");
                // And back: the reply's source becomes the VIP again.
                rewrite(&mut f, &q, Side::Dst, ip(vip), None, false).unwrap();
                assert_eq!(f, frame, "translating back restores every byte");
                // Ports too (the ingress mesh's published → target port).
                let mut g = frame.clone();
                rewrite(&mut g, &p, Side::Dst, ip(backend), Some(8080), false).unwrap();
                assert_valid(&g);
                assert_eq!(parse(&g).unwrap().dport, 8080);
                let q = parse(&g).unwrap();
                rewrite(&mut g, &q, Side::Src, ip(backend), Some(1), false).unwrap();
                assert_valid(&g);
            }
        }
    }

    #[test]
    fn udp_without_checksum_stays_without() {
        let mut f = udp_frame(ip("10.0.0.2"), ip("10.0.0.100"), b"x");
        f[40..42].copy_from_slice(&[0, 0]);
        let p = parse(&f).unwrap();
        rewrite(&mut f, &p, Side::Dst, ip("10.0.0.7"), None, false).unwrap();
        assert_eq!(&f[40..42], &[0, 0]);
        let h = etherparse::Ipv4HeaderSlice::from_slice(&f[14..]).unwrap();
        assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
    }

    #[test]
    fn partial_checksum_moves_with_the_pseudo_header() {
        use crate::offload::segment::complete_checksum;
        use crate::wire::vnet::{F_NEEDS_CSUM, GsoType, VnetHdr};
        for (src, vip, backend) in [
            ("10.0.0.2", "10.0.0.100", "10.0.0.7"),
            ("fd00::2", "fd00::100", "fd00::7"),
        ] {
            let mut f = tcp_frame(ip(src), ip(vip), false, &[3u8; 500]);
            let p = parse(&f).unwrap();
            // What a TAP with checksum offload hands over: the pseudo sum.
            let info = IpInfo::parse(&f).unwrap();
            let sum = info.pseudo(&f, PROTO_TCP, p.end - p.l4);
            f[p.l4 + 16..p.l4 + 18].copy_from_slice(&checksum::fold(sum).to_be_bytes());
            rewrite(&mut f, &p, Side::Dst, ip(backend), Some(8080), true).unwrap();
            let hdr = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GsoType::None,
                gso_ecn: false,
                hdr_len: 0,
                gso_size: 0,
                csum_start: p.l4 as u16,
                csum_offset: 16,
            };
            // The kernel (or our segmentation) completes it: valid.
            complete_checksum(&hdr, &mut f).unwrap();
            assert_valid(&f);
            assert_eq!(parse(&f).unwrap().dst, ip(backend));
        }
    }

    #[test]
    fn family_mismatch_and_macs() {
        let mut f = tcp_frame(ip("10.0.0.2"), ip("10.0.0.100"), true, b"");
        let before = f.clone();
        let p = parse(&f).unwrap();
        assert_eq!(
            rewrite(&mut f, &p, Side::Dst, ip("fd00::7"), None, false),
            Err(NatError::Family)
        );
        assert_eq!(f, before, "a refused rewrite changes nothing");
        set_dst_mac(&mut f, MacAddr([2, 0x42, 10, 0, 0, 7]));
        set_src_mac(&mut f, MacAddr([6, 0x56, 10, 0, 0, 100]));
        assert_eq!(&f[..12], &[2, 0x42, 10, 0, 0, 7, 6, 0x56, 10, 0, 0, 100]);
    }
}
