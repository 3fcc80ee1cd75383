//! GSO segmentation: the from_tap half of the offloads. This module owns
//! cutting one TAP GSO frame (TCPv4, TCPv6, UDP L4) into wire-sized frames
//! laid out back to back in one buffer, ready for a single UDP_SEGMENT send,
//! and completing partial checksums (NEEDS_CSUM) of non-GSO frames.
//!
//! Segments are cut at the frame's `gso_size`, or smaller when that would
//! not fit the underlay ([`segment_within`]): a container whose MTU is
//! larger than the path still gets its data through, and is told so by the
//! engine (an ICMP "too big") so that its TCP adapts.
use super::{ETH_LEN, IpInfo, OffloadError, PROTO_TCP, PROTO_UDP, tcp_header_len};
use crate::wire::checksum;
use crate::wire::vnet::{GsoType, VnetHdr};

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// The shape of what [`segment`] appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segmented {
    /// Number of segments written.
    pub count: usize,
    /// Length of each segment including prefix and tailroom, except the last
    /// which may be shorter: exactly what UDP_SEGMENT wants.
    pub stride: usize,
    /// Total bytes appended.
    pub total: usize,
    /// The segments were cut smaller than the frame's `gso_size` asked, to
    /// fit the `max_frame` given to [`segment_within`].
    pub capped: bool,
}

/// Cuts the GSO `frame` (Ethernet + IPv4/IPv6 + TCP/UDP + payload as read
/// from a TAP, described by `hdr`) into frames of at most `hdr.gso_size`
/// payload bytes with fixed-up headers (IP length/ID/checksum, TCP seq,
/// flags, complete L4 checksum) and appends each to `out` as
/// `prefix ‖ frame ‖ tailroom zero bytes`.
/// A frame with gso_type None is appended as one segment (its checksum
/// completed if NEEDS_CSUM). On error nothing is appended.
///
/// Header lengths come from the packet, not from `hdr.hdr_len`/`csum_start`.
/// The number of segments is `ceil(payload / gso_size)`; a caller that must
/// respect a per-send segment limit splits the result at `stride`.
pub fn segment(
    hdr: &VnetHdr,
    frame: &[u8],
    prefix: &[u8],
    tailroom: usize,
    out: &mut Vec<u8>,
) -> Result<Segmented, OffloadError> {
    segment_within(hdr, frame, prefix, tailroom, usize::MAX, out)
}

/// [`segment`], with the segments of a GSO frame at most `max_frame` bytes
/// long (headers included, prefix and tailroom not): the payload per
/// segment is `min(gso_size, max_frame - headers)`, and
/// [`Segmented::capped`] says whether that was less than `gso_size`. A
/// frame without GSO is appended whole whatever its length (the caller
/// decides what to do with one that is too long).
pub fn segment_within(
    hdr: &VnetHdr,
    frame: &[u8],
    prefix: &[u8],
    tailroom: usize,
    max_frame: usize,
    out: &mut Vec<u8>,
) -> Result<Segmented, OffloadError> {
    let start = out.len();
    let r = match hdr.gso_type {
        GsoType::None => single(hdr, frame, prefix, tailroom, out),
        GsoType::TcpV4 => gso(hdr, frame, prefix, tailroom, max_frame, out, Some(false)),
        GsoType::TcpV6 => gso(hdr, frame, prefix, tailroom, max_frame, out, Some(true)),
        GsoType::UdpL4 => gso(hdr, frame, prefix, tailroom, max_frame, out, None),
        GsoType::Unknown(_) => Err(OffloadError::Unsupported),
    };
    if r.is_err() {
        out.truncate(start);
    }
    r
}

fn single(
    hdr: &VnetHdr,
    frame: &[u8],
    prefix: &[u8],
    tailroom: usize,
    out: &mut Vec<u8>,
) -> Result<Segmented, OffloadError> {
    let start = out.len();
    out.extend_from_slice(prefix);
    let f = out.len();
    out.extend_from_slice(frame);
    complete_checksum(hdr, &mut out[f..])?;
    out.resize(out.len() + tailroom, 0);
    let total = out.len() - start;
    Ok(Segmented {
        count: 1,
        stride: total,
        total,
        capped: false,
    })
}

/// `tcp_v6`: `Some(v6)` for TCP GSO of that IP version, `None` for USO.
fn gso(
    hdr: &VnetHdr,
    frame: &[u8],
    prefix: &[u8],
    tailroom: usize,
    max_frame: usize,
    out: &mut Vec<u8>,
    tcp_v6: Option<bool>,
) -> Result<Segmented, OffloadError> {
    let ip = IpInfo::parse(frame)?;
    if ip.fragment {
        return Err(OffloadError::Malformed);
    }
    let (proto, l4_hl) = match tcp_v6 {
        Some(v6) => {
            if v6 != ip.v6 || ip.proto != PROTO_TCP {
                return Err(OffloadError::Malformed);
            }
            (PROTO_TCP, tcp_header_len(frame, ip.l4, ip.end)?)
        }
        None => {
            if ip.proto != PROTO_UDP || ip.l4 + 8 > ip.end {
                return Err(OffloadError::Malformed);
            }
            (PROTO_UDP, 8)
        }
    };
    if hdr.gso_size == 0 {
        return Err(OffloadError::BadHeader);
    }
    let hl = ip.l4 + l4_hl;
    let mss = usize::from(hdr.gso_size).min(max_frame.saturating_sub(hl));
    if mss == 0 {
        // Not even the headers fit.
        return Err(OffloadError::Malformed);
    }
    let capped = mss < usize::from(hdr.gso_size);
    let headers = frame.get(..hl).ok_or(OffloadError::Malformed)?;
    let payload = frame.get(hl..ip.end).ok_or(OffloadError::Malformed)?;
    let count = payload.len().div_ceil(mss).max(1);
    let stride = prefix.len() + hl + mss + tailroom;
    out.reserve(count * stride);

    let ip_id = u16::from_be_bytes([frame[ETH_LEN + 4], frame[ETH_LEN + 5]]);
    let l4 = ip.l4;
    let seq = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]);
    let start = out.len();
    for (i, chunk) in payload
        .chunks(mss)
        .chain(
            // A GSO frame without payload still goes out, as one segment.
            std::iter::once(&[][..]).take(usize::from(payload.is_empty())),
        )
        .enumerate()
    {
        out.extend_from_slice(prefix);
        let f = out.len();
        out.extend_from_slice(headers);
        out.extend_from_slice(chunk);
        let s = &mut out[f..];
        let l4_len = l4_hl + chunk.len();
        // Lengths fit: each segment is shorter than the original packet,
        // whose length fields are 16 bits.
        if ip.v6 {
            s[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        } else {
            let total = (ip.hl + l4_len) as u16;
            s[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&total.to_be_bytes());
            let id = ip_id.wrapping_add(i as u16);
            s[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&id.to_be_bytes());
            s[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&[0, 0]);
            let c = checksum::ipv4_header(&s[ETH_LEN..ETH_LEN + ip.hl]);
            s[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&c.to_be_bytes());
        }
        let csum_at = if proto == PROTO_TCP {
            let seg_seq = seq.wrapping_add((i * mss) as u32);
            s[l4 + 4..l4 + 8].copy_from_slice(&seg_seq.to_be_bytes());
            if i + 1 < count {
                s[l4 + 13] &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                s[l4 + 13] &= !TCP_CWR;
            }
            l4 + 16
        } else {
            s[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            l4 + 6
        };
        s[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
        let pseudo = ip.pseudo(s, proto, l4_len);
        let mut c = checksum::finish(checksum::sum(&s[l4..], pseudo));
        if proto == PROTO_UDP && c == 0 {
            // 0 means "no checksum" in UDP; its one's-complement twin is sent.
            c = 0xffff;
        }
        s[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        out.resize(out.len() + tailroom, 0);
    }
    Ok(Segmented {
        count,
        stride,
        total: out.len() - start,
        capped,
    })
}

/// Completes the partial checksum of a non-GSO frame (NEEDS_CSUM) in place:
/// sums `frame[csum_start..]` (whose checksum field already holds the
/// pseudo-header sum) and stores the result at `csum_start + csum_offset`.
/// A frame without NEEDS_CSUM is left alone.
pub fn complete_checksum(hdr: &VnetHdr, frame: &mut [u8]) -> Result<(), OffloadError> {
    if !hdr.needs_csum() {
        return Ok(());
    }
    let start = hdr.csum_start as usize;
    let at = start + hdr.csum_offset as usize;
    if at + 2 > frame.len() {
        return Err(OffloadError::BadHeader);
    }
    let mut c = checksum::finish(checksum::sum(&frame[start..], 0));
    if c == 0 {
        // As Linux's skb_checksum_help: never emit 0, which would mean "no
        // checksum" for UDP; 0xffff is the same value in one's complement.
        c = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::testutil::{assert_valid, payload, tcp};
    use crate::wire::vnet::F_NEEDS_CSUM;

    /// Turns a frame with a full checksum into what a TAP hands over with
    /// NEEDS_CSUM: the L4 checksum field holds the folded pseudo-header sum.
    pub(crate) fn as_partial(frame: &mut [u8], gso_type: GsoType, gso_size: u16) -> VnetHdr {
        let ip = IpInfo::parse(frame).unwrap();
        let (off, hl) = if ip.proto == PROTO_TCP {
            (16, tcp_header_len(frame, ip.l4, ip.end).unwrap())
        } else {
            (6, 8)
        };
        let p = ip.pseudo(frame, ip.proto, ip.end - ip.l4);
        frame[ip.l4 + off..ip.l4 + off + 2].copy_from_slice(&checksum::fold(p).to_be_bytes());
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            gso_ecn: false,
            hdr_len: (ip.l4 + hl) as u16,
            gso_size,
            csum_start: ip.l4 as u16,
            csum_offset: off as u16,
        }
    }

    fn check_tcp_segments(v6: bool, len: usize, mss: u16, prefix: &[u8], tail: usize) {
        check_tcp_segments_within(v6, len, mss, usize::MAX, prefix, tail);
    }

    fn check_tcp_segments_within(
        v6: bool,
        len: usize,
        mss: u16,
        max_frame: usize,
        prefix: &[u8],
        tail: usize,
    ) {
        let data = payload(len);
        let mut frame = tcp(v6, 1_000_000, &data, true);
        frame[ETH_LEN + if v6 { 0 } else { 1 }] |= 0; // keep TOS/TC as built
        let l4 = if v6 { 54 } else { 34 };
        frame[l4 + 13] |= TCP_CWR;
        let t = if v6 { GsoType::TcpV6 } else { GsoType::TcpV4 };
        let hdr = as_partial(&mut frame, t, mss);
        let mut out = vec![0xee; 3]; // existing content is kept
        let s = segment_within(&hdr, &frame, prefix, tail, max_frame, &mut out).unwrap();
        assert_eq!(&out[..3], &[0xee; 3]);
        let hl = l4 + 32;
        let asked = mss as usize;
        let mss = asked.min(max_frame.saturating_sub(hl));
        assert_eq!(s.capped, mss < asked);
        if s.capped {
            assert!(s.stride - prefix.len() - tail <= max_frame, "segments fit");
        }
        assert_eq!(s.count, len.div_ceil(mss).max(1));
        assert_eq!(s.stride, prefix.len() + hl + mss + tail);
        assert_eq!(s.total, out.len() - 3);
        let mut joined = Vec::new();
        let segs: Vec<&[u8]> = out[3..].chunks(s.stride).collect();
        assert_eq!(segs.len(), s.count);
        for (i, seg) in segs.iter().enumerate() {
            assert_eq!(&seg[..prefix.len()], prefix);
            assert!(seg[seg.len() - tail..].iter().all(|&b| b == 0));
            let f = &seg[prefix.len()..seg.len() - tail];
            let p = assert_valid(f);
            let last = i + 1 == s.count;
            assert!(last || p.len() == mss, "all but the last are full");
            let flags = f[l4 + 13];
            assert_eq!(flags & TCP_PSH != 0, last, "PSH only on the last");
            assert_eq!(flags & TCP_CWR != 0, i == 0, "CWR only on the first");
            let seq = u32::from_be_bytes(f[l4 + 4..l4 + 8].try_into().unwrap());
            assert_eq!(seq, 1_000_000 + (i * mss) as u32);
            if !v6 {
                let id = u16::from_be_bytes([f[18], f[19]]);
                let id0 = u16::from_be_bytes([frame[18], frame[19]]);
                assert_eq!(id, id0.wrapping_add(i as u16));
            }
            joined.extend_from_slice(&p);
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn tcpv4_64k() {
        check_tcp_segments(false, 65535 - 20 - 32, 1398, &[], 0);
    }

    #[test]
    fn tcpv6_with_prefix_and_tailroom() {
        check_tcp_segments(true, 30000, 1388, &[1, 2, 3, 4, 5, 6, 7, 8], 16);
    }

    #[test]
    fn segments_are_capped_to_what_fits() {
        // A 1450-MTU container over a 1400 underlay: 1364-byte frames fit.
        check_tcp_segments_within(false, 60000, 1398, 1364, &[], 0);
        check_tcp_segments_within(true, 60000, 1378, 1364, &[7; 8], 21);
        // Already small enough: not capped.
        check_tcp_segments_within(false, 10000, 1000, 1364, &[], 0);
        // Not even the headers fit: refused, nothing appended.
        let mut frame = tcp(false, 1, &payload(3000), true);
        let hdr = as_partial(&mut frame, GsoType::TcpV4, 1400);
        let mut out = Vec::new();
        assert!(segment_within(&hdr, &frame, &[], 0, 60, &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn tcp_exact_multiple_and_single() {
        check_tcp_segments(false, 1400 * 3, 1400, &[9; 50], 0);
        check_tcp_segments(true, 100, 1400, &[], 0);
        check_tcp_segments(false, 0, 1400, &[], 0);
    }

    fn udp_frame(v6: bool, data: &[u8]) -> Vec<u8> {
        use etherparse::PacketBuilder;
        let b = PacketBuilder::ethernet2([2; 6], [4; 6]);
        let b = if v6 {
            b.ipv6([0xfd; 16], [0xfe; 16], 64)
        } else {
            b.ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
        };
        let b = b.udp(5000, 6000);
        let mut out = Vec::new();
        b.write(&mut out, data).unwrap();
        out
    }

    #[test]
    fn udp_l4() {
        for v6 in [false, true] {
            let data = payload(5000);
            let mut frame = udp_frame(v6, &data);
            let hdr = as_partial(&mut frame, GsoType::UdpL4, 1200);
            let mut out = Vec::new();
            let s = segment(&hdr, &frame, &[], 0, &mut out).unwrap();
            assert_eq!(s.count, 5);
            let mut joined = Vec::new();
            for seg in out.chunks(s.stride) {
                let p = assert_valid(seg);
                let ip = IpInfo::parse(seg).unwrap();
                let udp_len = u16::from_be_bytes([seg[ip.l4 + 4], seg[ip.l4 + 5]]) as usize;
                assert_eq!(udp_len, 8 + p.len());
                joined.extend_from_slice(&p);
            }
            assert_eq!(joined, data);
        }
    }

    #[test]
    fn none_with_needs_csum_completes_checksum() {
        for v6 in [false, true] {
            let mut frame = tcp(v6, 5, &payload(333), true);
            let hdr = as_partial(&mut frame, GsoType::None, 0);
            let mut out = Vec::new();
            let s = segment(&hdr, &frame, &[7; 4], 2, &mut out).unwrap();
            assert_eq!(s.count, 1);
            assert_eq!(s.total, 4 + frame.len() + 2);
            assert_eq!(assert_valid(&out[4..4 + frame.len()]), payload(333));

            let mut udp = udp_frame(v6, &payload(77));
            let hdr = as_partial(&mut udp, GsoType::None, 0);
            complete_checksum(&hdr, &mut udp).unwrap();
            assert_eq!(assert_valid(&udp), payload(77));
        }
        // Without NEEDS_CSUM the frame is copied untouched.
        let frame = tcp(false, 5, &payload(10), false);
        let mut out = Vec::new();
        segment(&VnetHdr::NONE, &frame, &[], 0, &mut out).unwrap();
        assert_eq!(out, frame);
    }

    #[test]
    fn errors_append_nothing() {
        let data = payload(4000);
        let mut frame = tcp(false, 1, &data, false);
        let hdr = as_partial(&mut frame, GsoType::TcpV4, 1000);
        let mut out = vec![1, 2, 3];
        let mut expect_err = |h: &VnetHdr, f: &[u8], e: OffloadError| {
            assert_eq!(segment(h, f, &[0; 8], 4, &mut out), Err(e));
            assert_eq!(out, [1, 2, 3]);
        };
        // Every truncation of a GSO frame is refused, never a panic.
        for n in 0..frame.len() - 1 {
            let r = segment(&hdr, &frame[..n], &[0; 8], 4, &mut Vec::new());
            assert!(r.is_err(), "truncated to {n}");
        }
        expect_err(&hdr, &frame[..frame.len() - 1], OffloadError::Malformed);
        expect_err(
            &VnetHdr { gso_size: 0, ..hdr },
            &frame,
            OffloadError::BadHeader,
        );
        expect_err(
            &VnetHdr {
                gso_type: GsoType::TcpV6,
                ..hdr
            },
            &frame,
            OffloadError::Malformed,
        );
        expect_err(
            &VnetHdr {
                gso_type: GsoType::UdpL4,
                ..hdr
            },
            &frame,
            OffloadError::Malformed,
        );
        expect_err(
            &VnetHdr {
                gso_type: GsoType::Unknown(3),
                ..hdr
            },
            &frame,
            OffloadError::Unsupported,
        );
        let mut bad_doff = frame.clone();
        bad_doff[34 + 12] = 0x40; // 16-byte TCP header
        expect_err(&hdr, &bad_doff, OffloadError::Malformed);
        let mut frag = frame.clone();
        frag[20] = 0x20; // MF
        expect_err(&hdr, &frag, OffloadError::Malformed);
        let none = VnetHdr {
            gso_type: GsoType::None,
            csum_start: 5000,
            ..hdr
        };
        expect_err(&none, &frame, OffloadError::BadHeader);
        let none = VnetHdr {
            gso_type: GsoType::None,
            csum_offset: 65535,
            ..hdr
        };
        expect_err(&none, &frame, OffloadError::BadHeader);
    }

    #[test]
    fn ignores_lying_hdr_len_and_csum_start() {
        let data = payload(3000);
        let mut frame = tcp(false, 1, &data, false);
        let hdr = as_partial(&mut frame, GsoType::TcpV4, 1000);
        let lying = VnetHdr {
            hdr_len: 9999,
            csum_start: 1,
            csum_offset: 3,
            ..hdr
        };
        let mut a = Vec::new();
        let mut b = Vec::new();
        segment(&hdr, &frame, &[], 0, &mut a).unwrap();
        segment(&lying, &frame, &[], 0, &mut b).unwrap();
        assert_eq!(a, b);
    }
}
