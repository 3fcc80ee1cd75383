//! virtio-net header as exchanged with a TAP opened with IFF_VNET_HDR
//! (10 bytes, little-endian: the TAP is set to little-endian on every host
//! vxnet supports). This module owns its layout; what the offsets mean for a
//! frame is [`crate::offload`]'s business.
//!
//! ```text
//!  0       1       2               4               6               8              10
//! +-------+-------+---------------+---------------+---------------+---------------+
//! | flags |gso_typ|   hdr_len     |   gso_size    |  csum_start   |  csum_offset  |
//! +-------+-------+---------------+---------------+---------------+---------------+
//! ```
//! Offsets (`hdr_len`, `csum_start`) count from the start of the Ethernet
//! header for a TAP.
use super::WireError;

pub const LEN: usize = 10;
pub const F_NEEDS_CSUM: u8 = 1;
pub const F_DATA_VALID: u8 = 2;

pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
/// Legacy UFO (IP fragmentation of UDP): not supported, kept as Unknown(3).
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoType {
    None,
    TcpV4,
    TcpV6,
    /// UDP L4 segmentation (USO).
    UdpL4,
    Unknown(u8),
}

impl From<u8> for GsoType {
    /// From the gso_type byte without its ECN bit.
    fn from(v: u8) -> Self {
        match v {
            GSO_NONE => GsoType::None,
            GSO_TCPV4 => GsoType::TcpV4,
            GSO_TCPV6 => GsoType::TcpV6,
            GSO_UDP_L4 => GsoType::UdpL4,
            x => GsoType::Unknown(x),
        }
    }
}

impl From<GsoType> for u8 {
    fn from(t: GsoType) -> u8 {
        match t {
            GsoType::None => GSO_NONE,
            GsoType::TcpV4 => GSO_TCPV4,
            GsoType::TcpV6 => GSO_TCPV6,
            GsoType::UdpL4 => GSO_UDP_L4,
            GsoType::Unknown(x) => x,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: GsoType,
    /// ECN bit of gso_type (0x80).
    pub gso_ecn: bool,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// A header that asks nothing of the kernel: no GSO, no checksum offload.
    pub const NONE: VnetHdr = VnetHdr {
        flags: 0,
        gso_type: GsoType::None,
        gso_ecn: false,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Reads the first [`LEN`] bytes of `buf`. Any gso_type is accepted
    /// (unknown ones as [`GsoType::Unknown`]); whether it can be handled is
    /// decided by the offload code.
    pub fn parse(buf: &[u8]) -> Result<VnetHdr, WireError> {
        let b = buf.get(..LEN).ok_or(WireError::Truncated)?;
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(VnetHdr {
            flags: b[0],
            gso_type: GsoType::from(b[1] & !GSO_ECN),
            gso_ecn: b[1] & GSO_ECN != 0,
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }

    /// Writes the header into `buf[..LEN]`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`LEN`] (a caller's sizing mistake).
    pub fn emit(&self, buf: &mut [u8]) {
        let t = u8::from(self.gso_type) | if self.gso_ecn { GSO_ECN } else { 0 };
        let [h0, h1] = self.hdr_len.to_le_bytes();
        let [g0, g1] = self.gso_size.to_le_bytes();
        let [s0, s1] = self.csum_start.to_le_bytes();
        let [o0, o1] = self.csum_offset.to_le_bytes();
        buf[..LEN].copy_from_slice(&[self.flags, t, h0, h1, g0, g1, s0, s1, o0, o1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read from a TAP with TSO4 on: NEEDS_CSUM, TCPV4, hdr_len 66,
    /// gso_size 1448, csum_start 34, csum_offset 16.
    const CAPTURED_TSO4: [u8; 10] = [0x01, 0x01, 0x42, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00];

    #[test]
    fn parse_captured() {
        let h = VnetHdr::parse(&CAPTURED_TSO4).unwrap();
        assert_eq!(
            h,
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GsoType::TcpV4,
                gso_ecn: false,
                hdr_len: 66,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16,
            }
        );
        assert!(h.needs_csum());
        let mut out = [0u8; LEN];
        h.emit(&mut out);
        assert_eq!(out, CAPTURED_TSO4);
    }

    #[test]
    fn every_gso_type_roundtrips() {
        for t in 0..=255u8 {
            let mut b = CAPTURED_TSO4;
            b[1] = t;
            let h = VnetHdr::parse(&b).unwrap();
            assert_eq!(h.gso_ecn, t & 0x80 != 0);
            let mut out = [0u8; LEN];
            h.emit(&mut out);
            assert_eq!(out, b, "gso_type {t:#x}");
        }
        assert_eq!(GsoType::from(GSO_UDP), GsoType::Unknown(3));
        assert_eq!(GsoType::from(4), GsoType::TcpV6);
        assert_eq!(GsoType::from(5), GsoType::UdpL4);
        assert_eq!(GsoType::from(0), GsoType::None);
    }

    #[test]
    fn truncated_and_none() {
        assert_eq!(VnetHdr::parse(&[0; 9]), Err(WireError::Truncated));
        assert_eq!(VnetHdr::parse(&[0; 10]), Ok(VnetHdr::NONE));
        let mut out = [0xffu8; 12];
        VnetHdr::NONE.emit(&mut out);
        assert_eq!(out, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
    }
}
