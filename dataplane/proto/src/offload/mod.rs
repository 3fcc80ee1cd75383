//! Offloads done in userspace: the TAP hands us 64 KB TCP (or UDP) GSO
//! frames that we cut into wire-sized frames ([`segment`]), and received
//! TCP segments of one flow are merged back into one GSO frame per TAP write
//! ([`coalesce`]).
//!
//! Both sides read header lengths from the packet itself rather than from
//! the virtio-net header (`hdr_len`, `csum_start` are hints a guest may get
//! wrong), the way wireguard-go's `tun/offload_linux.go` does.

pub mod coalesce;
pub mod segment;

/// Why a frame from the TAP could not be segmented or checksummed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// vnet header offsets point outside the frame or are inconsistent.
    BadHeader,
    /// GSO type we do not implement.
    Unsupported,
    /// Frame headers could not be parsed as Ethernet/IP/TCP|UDP.
    Malformed,
}

impl std::fmt::Display for OffloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OffloadError::BadHeader => "bad vnet header",
            OffloadError::Unsupported => "unsupported offload",
            OffloadError::Malformed => "malformed frame",
        })
    }
}

impl std::error::Error for OffloadError {}

pub(crate) const ETH_LEN: usize = 14;
pub(crate) const ETHERTYPE_IPV4: u16 = 0x0800;
pub(crate) const ETHERTYPE_IPV6: u16 = 0x86dd;
pub(crate) const PROTO_TCP: u8 = 6;
pub(crate) const PROTO_UDP: u8 = 17;

/// The IP layer of an Ethernet frame, as offsets into the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpInfo {
    pub v6: bool,
    /// IP header length (IPv6: the fixed 40 bytes).
    pub hl: usize,
    /// Offset of the L4 header in the frame.
    pub l4: usize,
    /// End of the IP packet in the frame (Ethernet padding excluded).
    pub end: usize,
    /// IPv4 protocol or IPv6 next header.
    pub proto: u8,
    /// IPv4 fragment (MF set or a non-zero offset).
    pub fragment: bool,
}

impl IpInfo {
    /// Reads Ethernet + IPv4/IPv6 from `frame`. Lengths are checked against
    /// the frame; IPv6 extension headers are reported as their next-header
    /// value in `proto` (callers only accept TCP/UDP directly).
    pub fn parse(frame: &[u8]) -> Result<IpInfo, OffloadError> {
        let eth = frame.get(..ETH_LEN).ok_or(OffloadError::Malformed)?;
        match u16::from_be_bytes([eth[12], eth[13]]) {
            ETHERTYPE_IPV4 => {
                let ip = frame
                    .get(ETH_LEN..ETH_LEN + 20)
                    .ok_or(OffloadError::Malformed)?;
                let hl = (ip[0] & 0x0f) as usize * 4;
                let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
                if ip[0] >> 4 != 4 || hl < 20 || total < hl || ETH_LEN + total > frame.len() {
                    return Err(OffloadError::Malformed);
                }
                let frag = u16::from_be_bytes([ip[6], ip[7]]);
                Ok(IpInfo {
                    v6: false,
                    hl,
                    l4: ETH_LEN + hl,
                    end: ETH_LEN + total,
                    proto: ip[9],
                    fragment: frag & 0x3fff != 0,
                })
            }
            ETHERTYPE_IPV6 => {
                let ip = frame
                    .get(ETH_LEN..ETH_LEN + 40)
                    .ok_or(OffloadError::Malformed)?;
                let payload = u16::from_be_bytes([ip[4], ip[5]]) as usize;
                if ip[0] >> 4 != 6 || ETH_LEN + 40 + payload > frame.len() {
                    return Err(OffloadError::Malformed);
                }
                Ok(IpInfo {
                    v6: true,
                    hl: 40,
                    l4: ETH_LEN + 40,
                    end: ETH_LEN + 40 + payload,
                    proto: ip[6],
                    fragment: false,
                })
            }
            _ => Err(OffloadError::Unsupported),
        }
    }

    /// Pseudo-header sum for `proto` over `l4_len` bytes.
    pub fn pseudo(&self, frame: &[u8], proto: u8, l4_len: usize) -> u64 {
        use crate::wire::checksum;
        if self.v6 {
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&frame[ETH_LEN + 8..ETH_LEN + 24]);
            d.copy_from_slice(&frame[ETH_LEN + 24..ETH_LEN + 40]);
            checksum::pseudo_v6(s.into(), d.into(), proto, l4_len as u32)
        } else {
            let a = &frame[ETH_LEN + 12..ETH_LEN + 20];
            checksum::pseudo_v4(
                [a[0], a[1], a[2], a[3]].into(),
                [a[4], a[5], a[6], a[7]].into(),
                proto,
                l4_len as u16,
            )
        }
    }
}

/// TCP header length of the segment starting at `frame[l4..end]`.
pub(crate) fn tcp_header_len(frame: &[u8], l4: usize, end: usize) -> Result<usize, OffloadError> {
    let tcp = frame.get(l4..end).ok_or(OffloadError::Malformed)?;
    let doff = tcp.get(12).ok_or(OffloadError::Malformed)?;
    let hl = (doff >> 4) as usize * 4;
    if hl < 20 || hl > tcp.len() {
        return Err(OffloadError::Malformed);
    }
    Ok(hl)
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Frames for the offload tests, built with etherparse.
    use etherparse::{PacketBuilder, TcpOptionElement};

    pub const SRC_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0, 0, 2];
    pub const DST_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0, 0, 3];

    pub fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// A TCP frame with a full, valid checksum and timestamps option.
    pub fn tcp(v6: bool, seq: u32, data: &[u8], psh: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC);
        let b = if v6 {
            b.ipv6(
                [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3],
                64,
            )
        } else {
            b.ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
        };
        let mut t = b.tcp(40000, 5201, seq, 502).ack(77);
        if psh {
            t = t.psh();
        }
        let t = t
            .options(&[
                TcpOptionElement::Noop,
                TcpOptionElement::Noop,
                TcpOptionElement::Timestamp(1000, 2000),
            ])
            .expect("options fit");
        let mut out = Vec::with_capacity(t.size(data.len()));
        t.write(&mut out, data).expect("buildable");
        if !v6 {
            // DF, as Linux sets it on TCP.
            out[20] |= 0x40;
            out[24] = 0;
            out[25] = 0;
            let c = crate::wire::checksum::ipv4_header(&out[14..34]);
            out[24..26].copy_from_slice(&c.to_be_bytes());
        }
        out
    }

    /// Checks IP header and TCP/UDP checksums with etherparse; returns the
    /// transport payload.
    pub fn assert_valid(frame: &[u8]) -> Vec<u8> {
        use etherparse::{NetSlice, SlicedPacket, TransportSlice};
        let p = SlicedPacket::from_ethernet(frame).expect("parses");
        let (src, dst, v6) = match &p.net {
            Some(NetSlice::Ipv4(ip)) => {
                let h = ip.header().to_header();
                assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
                (
                    ip.header().source().to_vec(),
                    ip.header().destination().to_vec(),
                    false,
                )
            }
            Some(NetSlice::Ipv6(ip)) => (
                ip.header().source().to_vec(),
                ip.header().destination().to_vec(),
                true,
            ),
            other => panic!("not IP: {other:?}"),
        };
        match &p.transport {
            Some(TransportSlice::Tcp(t)) => {
                let h = t.to_header();
                let want = if v6 {
                    h.calc_checksum_ipv6_raw(
                        src.try_into().unwrap(),
                        dst.try_into().unwrap(),
                        t.payload(),
                    )
                } else {
                    h.calc_checksum_ipv4_raw(
                        src.try_into().unwrap(),
                        dst.try_into().unwrap(),
                        t.payload(),
                    )
                }
                .unwrap();
                assert_eq!(t.checksum(), want, "TCP checksum");
                t.payload().to_vec()
            }
            Some(TransportSlice::Udp(u)) => {
                let h = u.to_header();
                let want = if v6 {
                    h.calc_checksum_ipv6_raw(
                        src.try_into().unwrap(),
                        dst.try_into().unwrap(),
                        u.payload(),
                    )
                } else {
                    h.calc_checksum_ipv4_raw(
                        src.try_into().unwrap(),
                        dst.try_into().unwrap(),
                        u.payload(),
                    )
                }
                .unwrap();
                assert_eq!(u.checksum(), want, "UDP checksum");
                u.payload().to_vec()
            }
            other => panic!("not TCP/UDP: {other:?}"),
        }
    }
}
