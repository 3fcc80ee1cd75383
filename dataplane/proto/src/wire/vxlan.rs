//! VXLAN header (RFC 7348). CONTRACT STUB: to be implemented.
//!
//! ```text
//!  0                   1                   2                   3
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
use super::{Vni, WireError};

pub const HEADER_LEN: usize = 8;

/// A VXLAN datagram (UDP payload) over a borrowed buffer.
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks length, the I flag and a non-zero VNI.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let _ = &buffer;
        todo!()
    }
    pub fn vni(&self) -> Vni {
        todo!()
    }
    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

/// Writes a VXLAN header with the I flag and `vni` into `buf[..8]`.
pub fn write_header(buf: &mut [u8], vni: Vni) {
    let _ = (buf, vni);
    todo!()
}
