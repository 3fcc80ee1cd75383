//! Answers the dataplane gives in a VIP's own name, without a backend:
//! echo replies (`ping VIP` works, as it does in Docker, where the VIP is
//! an address of the load balancer's namespace) and TCP resets for a VIP
//! with no backend (like kube-proxy's REJECT for a service without
//! endpoints, so a client fails at once instead of after its SYN
//! retries; Docker's IPVS drops).
use super::nat::{L4, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP};
use crate::wire::{MacAddr, checksum};

const ETH: usize = 14;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
const TTL: u8 = 64;

/// True if `p` is an ICMP (IPv4) or ICMPv6 (IPv6) echo request.
pub fn is_echo_request(p: &L4) -> bool {
    match (p.v6, p.proto) {
        (false, PROTO_ICMP) => p.icmp_type == ICMP_ECHO_REQUEST,
        (true, PROTO_ICMPV6) => p.icmp_type == ICMPV6_ECHO_REQUEST,
        _ => false,
    }
}

fn icmp_sum(frame: &[u8], p: &L4) -> u64 {
    let msg = &frame[p.l4..p.end];
    let pseudo = if p.v6 {
        let a = |o: usize| {
            let mut b = [0u8; 16];
            b.copy_from_slice(&frame[ETH + o..ETH + o + 16]);
            std::net::Ipv6Addr::from(b)
        };
        checksum::pseudo_v6(a(8), a(24), PROTO_ICMPV6, msg.len() as u32)
    } else {
        0
    };
    checksum::sum(msg, pseudo)
}

/// Turns the echo request `p` (parsed from `frame`) into its reply, in
/// place: addresses swapped, TTL/hop limit 64, type echo reply, checksums
/// recomputed, destination MAC the requester's and source MAC `vip_mac`.
/// Returns the reply's length (Ethernet padding cut), or `None` if `p` is
/// no echo request or its checksum does not verify (left unchanged then).
pub fn echo_reply(frame: &mut [u8], p: &L4, vip_mac: MacAddr) -> Option<usize> {
    if !is_echo_request(p) || frame.len() < p.end || p.end < p.l4 + 4 {
        return None;
    }
    if checksum::finish(icmp_sum(frame, p)) != 0 {
        return None;
    }
    frame.copy_within(6..12, 0);
    frame[6..12].copy_from_slice(&vip_mac.0);
    if p.v6 {
        let mut src = [0u8; 16];
        src.copy_from_slice(&frame[ETH + 8..ETH + 24]);
        frame.copy_within(ETH + 24..ETH + 40, ETH + 8);
        frame[ETH + 24..ETH + 40].copy_from_slice(&src);
        frame[ETH + 7] = TTL;
        frame[p.l4] = ICMPV6_ECHO_REPLY;
    } else {
        let hl = p.l4 - ETH;
        let mut src = [0u8; 4];
        src.copy_from_slice(&frame[ETH + 12..ETH + 16]);
        frame.copy_within(ETH + 16..ETH + 20, ETH + 12);
        frame[ETH + 16..ETH + 20].copy_from_slice(&src);
        frame[ETH + 8] = TTL;
        frame[ETH + 10..ETH + 12].copy_from_slice(&[0, 0]);
        let c = checksum::ipv4_header(&frame[ETH..ETH + hl]);
        frame[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
        frame[p.l4] = ICMP_ECHO_REPLY;
    }
    frame[p.l4 + 2..p.l4 + 4].copy_from_slice(&[0, 0]);
    let c = checksum::finish(icmp_sum(frame, p));
    frame[p.l4 + 2..p.l4 + 4].copy_from_slice(&c.to_be_bytes());
    Some(p.end)
}

/// Longest reset [`tcp_reset`] writes (Ethernet, IPv6, TCP).
pub const RESET_LEN: usize = ETH + 40 + 20;

/// Writes into `out` the TCP reset that answers segment `p` of `frame` from
/// its destination (the VIP), as a closed port answers (RFC 9293 section
/// 3.10.7.1): with the segment's ACK number as sequence number if it has
/// one, otherwise sequence 0 and an ACK of everything it occupied. Returns
/// the reset's length, or `None` for a segment that must not be answered
/// (a reset itself) or when `out` is shorter than [`RESET_LEN`].
pub fn tcp_reset(frame: &[u8], p: &L4, vip_mac: MacAddr, out: &mut [u8]) -> Option<usize> {
    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;
    if p.proto != PROTO_TCP || p.tcp_flags & RST != 0 || out.len() < RESET_LEN {
        return None;
    }
    let t = frame.get(p.l4..p.end)?;
    if t.len() < 20 {
        return None;
    }
    let be32 = |o: usize| u32::from_be_bytes([t[o], t[o + 1], t[o + 2], t[o + 3]]);
    let (seq, ack, flags) = if p.tcp_flags & ACK != 0 {
        (be32(8), 0, RST)
    } else {
        let hl = usize::from(t[12] >> 4) * 4;
        let mut len = t.len().saturating_sub(hl) as u32;
        len += u32::from(p.tcp_flags & SYN != 0) + u32::from(p.tcp_flags & FIN != 0);
        (0, be32(4).wrapping_add(len), RST | ACK)
    };
    out[0..6].copy_from_slice(&frame[6..12]);
    out[6..12].copy_from_slice(&vip_mac.0);
    out[12..14].copy_from_slice(&frame[12..14]);
    let (l4, pseudo) = if p.v6 {
        let ip = &mut out[ETH..ETH + 40];
        ip[..8].copy_from_slice(&[0x60, 0, 0, 0, 0, 20, PROTO_TCP, TTL]);
        ip[8..24].copy_from_slice(&frame[ETH + 24..ETH + 40]);
        ip[24..40].copy_from_slice(&frame[ETH + 8..ETH + 24]);
        let a = |b: &[u8]| {
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            std::net::Ipv6Addr::from(o)
        };
        let pseudo = checksum::pseudo_v6(a(&ip[8..24]), a(&ip[24..40]), PROTO_TCP, 20);
        (ETH + 40, pseudo)
    } else {
        let ip = &mut out[ETH..ETH + 20];
        ip[..12].copy_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, TTL, PROTO_TCP, 0, 0]);
        ip[12..16].copy_from_slice(&frame[ETH + 16..ETH + 20]);
        ip[16..20].copy_from_slice(&frame[ETH + 12..ETH + 16]);
        let c = checksum::ipv4_header(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let a = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        let pseudo = checksum::pseudo_v4(a(&ip[12..16]), a(&ip[16..20]), PROTO_TCP, 20);
        (ETH + 20, pseudo)
    };
    let tcp = &mut out[l4..l4 + 20];
    tcp[0..2].copy_from_slice(&p.dport.to_be_bytes());
    tcp[2..4].copy_from_slice(&p.sport.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12..20].copy_from_slice(&[5 << 4, flags, 0, 0, 0, 0, 0, 0]);
    let c = checksum::finish(checksum::sum(tcp, pseudo));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    Some(l4 + 20)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::nat::{parse, tests::tcp_frame};
    use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, SlicedPacket, TransportSlice};
    use std::net::IpAddr;

    const VMAC: MacAddr = MacAddr([6, 0x56, 10, 0, 0, 100]);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ping(v6: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0x42, 10, 0, 0, 2], VMAC.0);
        let mut out = Vec::new();
        if v6 {
            b.ipv6(ip6("fd00::2"), ip6("fd00::100"), 64)
                .icmpv6_echo_request(7, 3)
                .write(&mut out, b"abcdefgh")
                .unwrap();
        } else {
            b.ipv4([10, 0, 0, 2], [10, 0, 0, 100], 64)
                .icmpv4_echo_request(7, 3)
                .write(&mut out, b"abcdefgh")
                .unwrap();
        }
        out
    }

    fn ip6(s: &str) -> [u8; 16] {
        s.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn echo_is_answered_with_valid_checksums() {
        for v6 in [false, true] {
            let mut f = ping(v6);
            f.extend_from_slice(&[0; 6]); // Ethernet padding
            let p = parse(&f).unwrap();
            assert!(is_echo_request(&p));
            let n = echo_reply(&mut f, &p, VMAC).unwrap();
            let r = &f[..n];
            assert_eq!(&r[..6], &[2, 0x42, 10, 0, 0, 2]);
            assert_eq!(&r[6..12], &VMAC.0);
            let q = parse(r).unwrap();
            assert_eq!((q.src, q.dst), (p.dst, p.src));
            let s = SlicedPacket::from_ethernet(r).unwrap();
            match s.transport {
                Some(TransportSlice::Icmpv4(i)) => {
                    assert!(
                        matches!(i.icmp_type(), Icmpv4Type::EchoReply(e) if e.id == 7 && e.seq == 3)
                    );
                    let h = i.header();
                    assert_eq!(h.checksum, h.icmp_type.calc_checksum(i.payload()));
                    let ip = etherparse::Ipv4HeaderSlice::from_slice(&r[14..]).unwrap();
                    assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());
                }
                Some(TransportSlice::Icmpv6(i)) => {
                    assert!(matches!(i.icmp_type(), Icmpv6Type::EchoReply(e) if e.id == 7));
                    let h = i.header();
                    let want = h
                        .icmp_type
                        .calc_checksum(ip6("fd00::100"), ip6("fd00::2"), i.payload())
                        .unwrap();
                    assert_eq!(h.checksum, want);
                }
                other => panic!("{other:?}"),
            }
        }
        // A request with a bad checksum is not answered.
        let mut f = ping(false);
        f[40] ^= 0xff;
        let p = parse(&f).unwrap();
        let before = f.clone();
        assert_eq!(echo_reply(&mut f, &p, VMAC), None);
        assert_eq!(f, before);
    }

    #[test]
    fn reset_answers_a_syn() {
        for (c, v) in [("10.0.0.2", "10.0.0.100"), ("fd00::2", "fd00::100")] {
            let f = tcp_frame(ip(c), ip(v), true, b"");
            let p = parse(&f).unwrap();
            let mut out = [0u8; RESET_LEN];
            let n = tcp_reset(&f, &p, VMAC, &mut out).unwrap();
            let r = &out[..n];
            crate::offload::testutil::assert_valid(r);
            let q = parse(r).unwrap();
            assert_eq!((q.src, q.dst, q.sport, q.dport), (ip(v), ip(c), 80, 40000));
            assert_eq!(q.tcp_flags, 0x14, "RST|ACK");
            let t = &r[q.l4..];
            assert_eq!(u32::from_be_bytes([t[4], t[5], t[6], t[7]]), 0);
            assert_eq!(
                u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
                1001,
                "SYN's seq + 1"
            );
            // Never a reset for a reset.
            let rst = r.to_vec();
            let p = parse(&rst).unwrap();
            assert_eq!(tcp_reset(&rst, &p, VMAC, &mut out), None);
        }
        // A segment with ACK: the reset takes its sequence from the ACK.
        let f = tcp_frame(ip("10.0.0.2"), ip("10.0.0.100"), false, b"data");
        let p = parse(&f).unwrap();
        let mut out = [0u8; RESET_LEN];
        let n = tcp_reset(&f, &p, VMAC, &mut out).unwrap();
        let q = parse(&out[..n]).unwrap();
        assert_eq!(q.tcp_flags, 0x04, "RST");
        let t = &out[q.l4..n];
        assert_eq!(u32::from_be_bytes([t[4], t[5], t[6], t[7]]), 5);
    }
}
