//! IPv6 neighbour discovery (RFC 4861): neighbour solicitation in, neighbour
//! advertisement out, for the local ND proxy. This module owns the parsing of
//! solicitations from whole Ethernet frames and the construction of
//! advertisements: replies, and the unsolicited ones that tell neighbours
//! an address moved.
//!
//! ```text
//! Ethernet (14) | IPv6 (40, next header 58, hop limit 255) | ICMPv6:
//!  0                   1                   2                   3
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     Type      |     Code      |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|S|O|                     Reserved (NS: all reserved)         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       Target Address (16)                     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   Options: type (1 = source, 2 = target link-layer address),  |
//! |   length in units of 8 bytes, value ...                       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
use super::checksum;
use super::{MacAddr, WireError};
use std::net::Ipv6Addr;

pub const ETHERTYPE: u16 = 0x86dd;
const NEXT_HEADER_ICMPV6: u8 = 58;
const TYPE_NS: u8 = 135;
const TYPE_NA: u8 = 136;
const OPT_SOURCE_LLA: u8 = 1;
const OPT_TARGET_LLA: u8 = 2;
const NS_LEN: usize = 24;
/// Ethernet + IPv6 + NA with a target link-layer address option.
pub const ADVERT_LEN: usize = 14 + 40 + 24 + 8;
const FLAG_SOLICITED: u8 = 0x40;
const FLAG_OVERRIDE: u8 = 0x20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Solicit {
    /// Where the answer goes: the source link-layer address option when the
    /// solicitation has one, else the Ethernet source.
    pub src_mac: MacAddr,
    /// Source IPv6 address (may be unspecified for DAD).
    pub src_ip: Ipv6Addr,
    pub target: Ipv6Addr,
}

fn ip6(b: &[u8]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[..16]);
    Ipv6Addr::from(o)
}

/// Reads a neighbour solicitation from a whole Ethernet frame (Ethernet,
/// IPv6 with hop limit 255, ICMPv6 type 135). `Ok(None)` for other valid
/// IPv6 frames and for frames of another EtherType. A solicitation that
/// breaks RFC 4861 section 7.1.1 (hop limit, code, length, checksum,
/// multicast target, options) is an error, and must not be answered.
pub fn parse_solicit(frame: &[u8]) -> Result<Option<Solicit>, WireError> {
    let eth = frame.get(..14).ok_or(WireError::Truncated)?;
    if u16::from_be_bytes([eth[12], eth[13]]) != ETHERTYPE {
        return Ok(None);
    }
    let ip = frame.get(14..54).ok_or(WireError::Truncated)?;
    if ip[0] >> 4 != 6 {
        return Err(WireError::Malformed);
    }
    if ip[6] != NEXT_HEADER_ICMPV6 {
        // Extension headers before ICMPv6 are not followed: an NS never
        // needs them.
        return Ok(None);
    }
    let payload_len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    let icmp = frame
        .get(54..54 + payload_len)
        .ok_or(WireError::Truncated)?;
    let Some(&icmp_type) = icmp.first() else {
        return Err(WireError::Truncated);
    };
    if icmp_type != TYPE_NS {
        return Ok(None);
    }
    if icmp.len() < NS_LEN {
        return Err(WireError::Truncated);
    }
    if ip[7] != 255 || icmp[1] != 0 {
        return Err(WireError::Malformed);
    }
    let src_ip = ip6(&ip[8..24]);
    let dst_ip = ip6(&ip[24..40]);
    let pseudo = checksum::pseudo_v6(src_ip, dst_ip, NEXT_HEADER_ICMPV6, icmp.len() as u32);
    if checksum::finish(checksum::sum(icmp, pseudo)) != 0 {
        return Err(WireError::Malformed);
    }
    let target = ip6(&icmp[8..24]);
    if target.is_multicast() {
        return Err(WireError::Malformed);
    }
    let mut src_mac = MacAddr([eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]]);
    // Options: bounded by the payload, each at least 8 bytes long.
    let mut opts = &icmp[NS_LEN..];
    while !opts.is_empty() {
        let (Some(&kind), Some(&units)) = (opts.first(), opts.get(1)) else {
            return Err(WireError::Truncated);
        };
        let len = units as usize * 8;
        if len == 0 {
            return Err(WireError::Malformed);
        }
        let opt = opts.get(..len).ok_or(WireError::Truncated)?;
        if kind == OPT_SOURCE_LLA {
            if src_ip.is_unspecified() {
                // RFC 4861 7.1.1: DAD solicitations carry no source address.
                return Err(WireError::Malformed);
            }
            let m = opt.get(2..8).ok_or(WireError::Truncated)?;
            src_mac = MacAddr([m[0], m[1], m[2], m[3], m[4], m[5]]);
        }
        opts = &opts[len..];
    }
    if src_ip.is_unspecified() && !is_solicited_node(dst_ip) {
        return Err(WireError::Malformed);
    }
    Ok(Some(Solicit {
        src_mac,
        src_ip,
        target,
    }))
}

/// ff02::1:ffXX:XXXX
fn is_solicited_node(a: Ipv6Addr) -> bool {
    let o = a.octets();
    o[..13] == [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff]
}

/// Writes a complete Ethernet frame holding a solicited neighbour
/// advertisement for `sol.target` at `answer` (with target link-layer
/// address option and a valid ICMPv6 checksum); returns its length
/// ([`ADVERT_LEN`]).
///
/// The IPv6 source is the target; the destination is the solicitation's
/// source, or all-nodes (ff02::1) when that was unspecified (DAD), in which
/// case the Solicited flag is clear as RFC 4861 7.2.4 requires.
///
/// # Panics
/// If `out` is shorter than [`ADVERT_LEN`] (a caller's sizing mistake).
pub fn emit_advert(sol: &Solicit, answer: MacAddr, out: &mut [u8]) -> usize {
    let dad = sol.src_ip.is_unspecified();
    let (dst_mac, dst_ip) = if dad {
        (ALL_NODES_MAC, ALL_NODES)
    } else {
        (sol.src_mac, sol.src_ip)
    };
    let flags = FLAG_OVERRIDE | if dad { 0 } else { FLAG_SOLICITED };
    write_advert(dst_mac, dst_ip, sol.target, answer, flags, out)
}

/// Writes a complete Ethernet frame holding an unsolicited neighbour
/// advertisement "`target` is at `mac`" to all nodes (ff02::1), with the
/// Override flag set and Solicited clear (RFC 4861 7.2.6), so that
/// neighbours holding an entry for `target` replace its link-layer address
/// at once; returns its length ([`ADVERT_LEN`]). The IPv6 source is
/// `target` itself.
///
/// # Panics
/// If `out` is shorter than [`ADVERT_LEN`] (a caller's sizing mistake).
pub fn emit_unsolicited_advert(target: Ipv6Addr, mac: MacAddr, out: &mut [u8]) -> usize {
    write_advert(ALL_NODES_MAC, ALL_NODES, target, mac, FLAG_OVERRIDE, out)
}

/// ff02::1, and the Ethernet address it maps to (RFC 2464 section 7).
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES_MAC: MacAddr = MacAddr([0x33, 0x33, 0, 0, 0, 1]);

fn write_advert(
    dst_mac: MacAddr,
    dst_ip: Ipv6Addr,
    target: Ipv6Addr,
    answer: MacAddr,
    flags: u8,
    out: &mut [u8],
) -> usize {
    let f = &mut out[..ADVERT_LEN];
    f[0..6].copy_from_slice(&dst_mac.0);
    f[6..12].copy_from_slice(&answer.0);
    f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    let icmp_len = (ADVERT_LEN - 54) as u16;
    let [l0, l1] = icmp_len.to_be_bytes();
    f[14..22].copy_from_slice(&[0x60, 0, 0, 0, l0, l1, NEXT_HEADER_ICMPV6, 255]);
    f[22..38].copy_from_slice(&target.octets());
    f[38..54].copy_from_slice(&dst_ip.octets());
    f[54..62].copy_from_slice(&[TYPE_NA, 0, 0, 0, flags, 0, 0, 0]);
    f[62..78].copy_from_slice(&target.octets());
    f[78..80].copy_from_slice(&[OPT_TARGET_LLA, 1]);
    f[80..86].copy_from_slice(&answer.0);
    let pseudo = checksum::pseudo_v6(target, dst_ip, NEXT_HEADER_ICMPV6, icmp_len as u32);
    let c = checksum::finish(checksum::sum(&f[54..], pseudo));
    f[56..58].copy_from_slice(&c.to_be_bytes());
    ADVERT_LEN
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// NS from fd00::2 (02:42:0a:00:00:02) for fd00::3, to the
    /// solicited-node address ff02::1:ff00:3, with a source link-layer
    /// address option: what Linux sends when it resolves a neighbour.
    pub(crate) fn solicit_frame(src: Ipv6Addr, target: Ipv6Addr, with_slla: bool) -> Vec<u8> {
        let t = target.octets();
        let dst = Ipv6Addr::from([
            0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, t[13], t[14], t[15],
        ]);
        let mut icmp = vec![TYPE_NS, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&t);
        if with_slla {
            icmp.extend_from_slice(&[1, 1, 0x02, 0x42, 0x0a, 0, 0, 0x02]);
        }
        let c = checksum::finish(checksum::sum(
            &icmp,
            checksum::pseudo_v6(src, dst, 58, icmp.len() as u32),
        ));
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut f = vec![0x33, 0x33, 0xff, t[13], t[14], t[15]];
        f.extend_from_slice(&[0x02, 0x42, 0x0a, 0, 0, 0x02, 0x86, 0xdd]);
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, icmp.len() as u8, 58, 255]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&icmp);
        f
    }

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_solicit_with_slla() {
        let f = solicit_frame(a("fd00::2"), a("fd00::3"), true);
        assert_eq!(f.len(), 86);
        let s = parse_solicit(&f).unwrap().unwrap();
        assert_eq!(s.src_ip, a("fd00::2"));
        assert_eq!(s.target, a("fd00::3"));
        assert_eq!(s.src_mac, "02:42:0a:00:00:02".parse().unwrap());
    }

    fn check_advert(
        f: &[u8],
        dst_ip: Ipv6Addr,
        target: Ipv6Addr,
        answer: MacAddr,
        solicited: bool,
    ) {
        use etherparse::{Icmpv6Type, NetSlice, SlicedPacket, TransportSlice};
        let p = SlicedPacket::from_ethernet(f).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not IPv6")
        };
        let h = ip.header();
        assert_eq!(h.hop_limit(), 255);
        assert_eq!(h.source_addr(), target);
        assert_eq!(h.destination_addr(), dst_ip);
        let Some(TransportSlice::Icmpv6(icmp)) = &p.transport else {
            panic!("not ICMPv6")
        };
        assert!(icmp.is_checksum_valid(h.source(), h.destination()));
        assert_eq!(
            icmp.icmp_type(),
            Icmpv6Type::Unknown {
                type_u8: 136,
                code_u8: 0,
                bytes5to8: [if solicited { 0x60 } else { 0x20 }, 0, 0, 0],
            }
        );
        let body = icmp.payload();
        assert_eq!(&body[..16], &target.octets());
        assert_eq!(&body[16..18], &[2, 1], "target link-layer address option");
        assert_eq!(&body[18..24], &answer.0);
        assert_eq!(&f[6..12], &answer.0);
    }

    #[test]
    fn advert_to_solicitor() {
        let f = solicit_frame(a("fd00::2"), a("fd00::3"), true);
        let s = parse_solicit(&f).unwrap().unwrap();
        let answer: MacAddr = "02:42:0a:00:00:03".parse().unwrap();
        let mut out = [0u8; 100];
        let n = emit_advert(&s, answer, &mut out);
        assert_eq!(n, ADVERT_LEN);
        check_advert(&out[..n], a("fd00::2"), a("fd00::3"), answer, true);
        assert_eq!(&out[0..6], &s.src_mac.0);
        // An advertisement is valid IPv6 ND but not a solicitation.
        assert_eq!(parse_solicit(&out[..n]), Ok(None));
    }

    #[test]
    fn advert_for_dad_goes_to_all_nodes() {
        let f = solicit_frame(Ipv6Addr::UNSPECIFIED, a("fd00::3"), false);
        let s = parse_solicit(&f).unwrap().unwrap();
        assert_eq!(s.src_mac, "02:42:0a:00:00:02".parse().unwrap());
        let answer: MacAddr = "02:42:0a:00:00:03".parse().unwrap();
        let mut out = [0u8; ADVERT_LEN];
        let n = emit_advert(&s, answer, &mut out);
        check_advert(&out[..n], a("ff02::1"), a("fd00::3"), answer, false);
        assert_eq!(&out[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
    }

    #[test]
    fn unsolicited_advert_overrides_at_all_nodes() {
        let mac: MacAddr = "02:42:0a:00:00:09".parse().unwrap();
        let mut out = [0u8; ADVERT_LEN];
        let n = emit_unsolicited_advert(a("fd00::3"), mac, &mut out);
        check_advert(&out[..n], a("ff02::1"), a("fd00::3"), mac, false);
        assert_eq!(&out[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(
            out[58], FLAG_OVERRIDE,
            "override, not solicited, not router"
        );
    }

    #[test]
    fn rejects_bad_solicits() {
        let good = solicit_frame(a("fd00::2"), a("fd00::3"), true);
        for n in 0..good.len() {
            assert!(parse_solicit(&good[..n]).is_err(), "truncated to {n}");
        }
        let mutate = |i: usize, v: u8| {
            let mut f = good.clone();
            f[i] = v;
            parse_solicit(&f)
        };
        assert_eq!(mutate(21, 64), Err(WireError::Malformed), "hop limit");
        assert_eq!(mutate(55, 1), Err(WireError::Malformed), "code");
        assert_eq!(
            mutate(57, good[57] ^ 1),
            Err(WireError::Malformed),
            "checksum"
        );
        assert_eq!(mutate(14, 0x40), Err(WireError::Malformed), "version");
        assert_eq!(mutate(20, 17), Ok(None), "UDP, not ICMPv6");
        assert_eq!(mutate(12, 0x08), Ok(None), "IPv4 EtherType");
        // A zero-length option would loop forever; it is an error.
        let mut zero_opt = good.clone();
        zero_opt[79] = 0;
        fix_icmp_checksum(&mut zero_opt);
        assert_eq!(parse_solicit(&zero_opt), Err(WireError::Malformed));
        // Option longer than the packet.
        let mut long_opt = good.clone();
        long_opt[79] = 2;
        fix_icmp_checksum(&mut long_opt);
        assert_eq!(parse_solicit(&long_opt), Err(WireError::Truncated));
        // Multicast target.
        let mut mc = good.clone();
        mc[62] = 0xff;
        fix_icmp_checksum(&mut mc);
        assert_eq!(parse_solicit(&mc), Err(WireError::Malformed));
        // DAD with a source link-layer option is invalid.
        let mut dad = solicit_frame(Ipv6Addr::UNSPECIFIED, a("fd00::3"), true);
        fix_icmp_checksum(&mut dad);
        assert_eq!(parse_solicit(&dad), Err(WireError::Malformed));
    }

    fn fix_icmp_checksum(f: &mut [u8]) {
        f[56] = 0;
        f[57] = 0;
        let p = checksum::pseudo_v6(ip6(&f[22..]), ip6(&f[38..]), 58, (f.len() - 54) as u32);
        let c = checksum::finish(checksum::sum(&f[54..], p));
        f[56..58].copy_from_slice(&c.to_be_bytes());
    }
}
