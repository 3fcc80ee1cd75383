//! virtio-net header as exchanged with a TAP opened with IFF_VNET_HDR
//! (10 bytes, little-endian on x86). CONTRACT STUB: to be implemented.
use super::WireError;

pub const LEN: usize = 10;
pub const F_NEEDS_CSUM: u8 = 1;
pub const F_DATA_VALID: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoType {
    None,
    TcpV4,
    TcpV6,
    /// UDP L4 segmentation (USO).
    UdpL4,
    Unknown(u8),
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

    pub fn parse(buf: &[u8]) -> Result<VnetHdr, WireError> {
        let _ = buf;
        todo!()
    }

    /// Writes the header into `buf[..LEN]`.
    pub fn emit(&self, buf: &mut [u8]) {
        let _ = buf;
        todo!()
    }
}
